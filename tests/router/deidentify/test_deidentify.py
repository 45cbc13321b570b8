"""De-identification checked against Table E.1-1: nothing the profile removes, empties or
replaces survives anywhere; private attributes go; the method is declared; the objects stay
valid (dciodvfy); UIDs are replaced consistently."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from router.deidentify import Deidentifier, DeidKeys, DeidOptions
from router.deidentify.elements import holds_instance_uids, walk_elements
from router.deidentify.plan import Action, plan
from testing.dicom_tools import DCIODVFY, run_dciodvfy
from tests.router.deidentify.conftest import SECRET
from tests.router.deidentify.identified import (
    MARKERS,
    RETAINED_BY_OPTIONS,
    ct_series,
    mr_series,
    sr_instance,
)

BASIC_ONLY = DeidOptions(
    retain_longitudinal_modified_dates=False,
    retain_device_identity=False,
    retain_patient_characteristics=False,
    clean_descriptors=False,
)
OPTION_SETS = {"default options": DeidOptions(), "basic profile only": BASIC_ONLY}


def _elements(dataset: Dataset) -> Iterator[DataElement]:
    yield from walk_elements(dataset)


def _text(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


def _encoded(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _assert_profile_applied(source: Dataset, output: Dataset, options: DeidOptions) -> None:
    """Every row of the table the plan does not keep: no original value survives."""
    originals: dict[int, set[str]] = {}
    for element in _elements(source):
        if element.VR != "SQ":
            originals.setdefault(int(element.tag), set()).update(
                v for v in _text(element.value) if v.strip()
            )
    present: dict[int, list[DataElement]] = {}
    for element in _elements(output):
        present.setdefault(int(element.tag), []).append(element)
        assert not element.tag.is_private, f"private attribute {element.tag} survived"
    checked = 0
    for item in plan(options):
        tag = item.row.tag
        if item.action is Action.KEEP or (tag not in originals and tag not in present):
            continue
        checked += 1
        found = present.get(tag, [])
        where = f"{item.row.keyword} ({item.because})"
        if item.action is Action.REMOVE:
            assert found == [], f"{where} should be removed"
        elif item.action is Action.EMPTY and item.row.vr != "SQ":
            assert all(not _text(e.value) or _text(e.value) == [""] for e in found), where
        elif item.action is Action.EMPTY:
            assert all(len(e.value) == 0 for e in found), where
        elif item.row.vr != "SQ" and item.action is not Action.CLEAN_DESCRIPTOR:
            for element in found:
                survived = set(_text(element.value)) & originals.get(tag, set())
                assert not survived, f"{where} kept its original value"
    assert checked > 40


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_ct_series_keeps_nothing_the_profile_removes_or_replaces(
    keys: DeidKeys, options: DeidOptions
) -> None:
    source = ct_series()
    deidentifier = Deidentifier(options, keys)
    for original in source:
        before = _encoded(original)
        output = deidentifier.deidentify(original).dataset
        assert _encoded(original) == before, "the source dataset must not change"
        _assert_profile_applied(original, output, options)
        encoded = _encoded(output)
        for what, marker in MARKERS.items():
            assert marker.encode() not in encoded, f"{what} ({marker}) was sent"
        for what, marker in RETAINED_BY_OPTIONS.items():
            retained = options.retain_device_identity and what in ("station", "serial")
            assert (marker.encode() in encoded) == retained, what
        for element in _elements(original):
            if holds_instance_uids(element):
                for uid in _text(element.value):
                    assert uid.encode() not in encoded, f"{element.keyword} {uid} was sent"


def test_mr_and_sr_keep_nothing_the_profile_removes_or_replaces(
    keys: DeidKeys, tmp_path: Path
) -> None:
    source = [*mr_series(tmp_path, pydicom.uid.generate_uid()), sr_instance("1.2.3.4.5")]
    deidentifier = Deidentifier(DeidOptions(), keys)
    for original in source:
        output = deidentifier.deidentify(original).dataset
        _assert_profile_applied(original, output, DeidOptions())
        encoded = _encoded(output)
        for what, marker in MARKERS.items():
            assert marker.encode() not in encoded, f"{what} ({marker}) was sent"


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_the_method_and_options_are_declared(keys: DeidKeys, options: DeidOptions) -> None:
    output = Deidentifier(options, keys).deidentify(ct_series(1)[0]).dataset
    assert output.PatientIdentityRemoved == "YES"
    assert "Basic Profile" in output.DeidentificationMethod[0]
    declared = {
        (i.CodingSchemeDesignator, i.CodeValue) for i in output.DeidentificationMethodCodeSequence
    }
    expected = {("DCM", "113100")}
    if options.retain_longitudinal_modified_dates:
        expected |= {("DCM", "113107")}
    if options.retain_device_identity:
        expected |= {("DCM", "113109")}
    if options.retain_patient_characteristics:
        expected |= {("DCM", "113108")}
    if options.clean_descriptors:
        expected |= {("DCM", "113105")}
    assert declared == expected
    modified = "MODIFIED" if options.retain_longitudinal_modified_dates else "REMOVED"
    assert output.LongitudinalTemporalInformationModified == modified


def test_options_decide_dates_characteristics_and_descriptors(keys: DeidKeys) -> None:
    source = ct_series(1)[0]
    source.SeriesDescription = "Chest for JOHANNA follow-up"
    source.ProtocolName = "Chest routine"
    kept = Deidentifier(DeidOptions(), keys).deidentify(source)
    out = kept.dataset
    shifted = pydicom.valuerep.DA(out.StudyDate)
    original = pydicom.valuerep.DA(MARKERS["original date"])
    assert (shifted - original).days == kept.date_offset_days
    assert -1000 <= kept.date_offset_days <= -100
    assert out.StudyTime == source.StudyTime
    assert (out.PatientSex, out.PatientAge, out.PatientWeight) == ("F", "076Y", 58)
    assert out.PatientName == out.PatientID == kept.pseudonym
    assert out.PatientBirthDate in ("", None)
    assert out.SeriesDescription in ("", None), "a descriptor naming the patient is emptied"
    assert out.ProtocolName == "Chest routine"
    assert out.StationName == RETAINED_BY_OPTIONS["station"]

    basic = Deidentifier(BASIC_ONLY, keys).deidentify(source).dataset
    assert basic.StudyDate in ("", None)
    assert basic.SeriesDate == "19000101"  # X/D: a dummy
    assert "PatientAge" not in basic and "PatientWeight" not in basic
    assert basic.PatientSex in ("", None)
    assert "ProtocolName" not in basic or basic.ProtocolName in ("ANONYMIZED", "")
    assert basic.StationName == "ANONYMIZED"


def test_safe_private_keeps_only_the_listed_private_attributes(keys: DeidKeys) -> None:
    options = DeidOptions(
        retain_safe_private=True, safe_private=frozenset({("ACME PRIVATE", 0x02)})
    )
    output = Deidentifier(options, keys).deidentify(ct_series(1)[0]).dataset
    block = output.private_block(0x0029, "ACME PRIVATE")
    assert block[0x02].value == "safe-looking value"
    assert block.get_tag(0x01) not in output
    assert ("DCM", "113111") in {
        (i.CodingSchemeDesignator, i.CodeValue) for i in output.DeidentificationMethodCodeSequence
    }


def test_uids_are_replaced_consistently_across_series_objects_and_resends(
    keys: DeidKeys, tmp_path: Path
) -> None:
    ct = ct_series(4)
    mr = mr_series(tmp_path, ct[0].StudyInstanceUID)
    sr = _sr_referencing(ct)
    deidentifier = Deidentifier(DeidOptions(), keys)
    out_ct = [deidentifier.deidentify(ds) for ds in ct]
    out_mr = [deidentifier.deidentify(ds) for ds in mr]
    out_sr = deidentifier.deidentify(sr)
    study = {o.dataset.StudyInstanceUID for o in [*out_ct, *out_mr, out_sr]}
    assert len(study) == 1 and study != {ct[0].StudyInstanceUID}
    assert len({o.dataset.SeriesInstanceUID for o in out_ct}) == 1
    assert len({o.dataset.FrameOfReferenceUID for o in out_ct}) == 1
    assert len({o.pseudonym for o in [*out_ct, *out_mr, out_sr]}) == 1
    assert len({o.date_offset_days for o in [*out_ct, *out_mr, out_sr]}) == 1
    last = out_ct[-1].dataset
    for o in out_ct:
        assert o.dataset.file_meta.MediaStorageSOPInstanceUID == o.dataset.SOPInstanceUID
        assert o.uids[o.dataset.SOPInstanceUID] in {ds.SOPInstanceUID for ds in ct}
    for o in out_ct[:-1]:
        assert o.dataset.ReferencedImageSequence[0].ReferencedSOPInstanceUID == last.SOPInstanceUID
        assert o.dataset.SourceImageSequence[0].ReferencedSOPInstanceUID == last.SOPInstanceUID

    sent = {o.dataset.SOPInstanceUID for o in out_ct}
    evidence = out_sr.dataset.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == last.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == last.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence} == sent
    everywhere = {
        e.value for e in walk_elements(out_sr.dataset) if e.keyword == "ReferencedSOPInstanceUID"
    }
    assert everywhere == sent  # the evidence and the content tree's image references

    again = Deidentifier(DeidOptions(), DeidKeys(SECRET, "vendor-a")).deidentify(ct[0])
    assert again.dataset.SOPInstanceUID == out_ct[0].dataset.SOPInstanceUID
    other_vendor = Deidentifier(DeidOptions(), DeidKeys(SECRET, "vendor-b")).deidentify(ct[0])
    assert other_vendor.dataset.SOPInstanceUID != out_ct[0].dataset.SOPInstanceUID
    assert other_vendor.pseudonym != out_ct[0].pseudonym


def test_uids_go_under_a_configured_root(keys: DeidKeys) -> None:
    options = DeidOptions(uid_root="1.2.826.0.1.3680043.10.999.")
    output = Deidentifier(options, keys).deidentify(ct_series(1)[0]).dataset
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        uid = output[keyword].value
        assert uid.startswith(options.uid_root) and len(uid) <= 64 and uid.is_valid


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools' dciodvfy is not installed")
def test_output_passes_dciodvfy_without_new_errors(keys: DeidKeys, tmp_path: Path) -> None:
    ct = ct_series(2)
    source = [ct[0], *mr_series(tmp_path, ct[0].StudyInstanceUID)[:1], _sr_referencing(ct)]
    for options in OPTION_SETS.values():
        deidentifier = Deidentifier(options, keys)
        for number, original in enumerate(source):
            before = tmp_path / f"in{number}.dcm"
            after = tmp_path / f"out{number}.dcm"
            pydicom.dcmwrite(before, original, enforce_file_format=True)
            pydicom.dcmwrite(
                after, deidentifier.deidentify(original).dataset, enforce_file_format=True
            )
            errors_before = set(run_dciodvfy(before).errors)
            report = run_dciodvfy(after)
            assert set(report.errors) <= errors_before, report.output


def _sr_referencing(ct: list[Dataset]) -> Dataset:
    """The SR fixture, pointed at ``ct`` (study, series, instances, frame of reference)."""
    sr = sr_instance(ct[0].StudyInstanceUID)
    sops = [ds.SOPInstanceUID for ds in ct]
    references = []
    for uid in sops:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ct[0].SOPClassUID
        ref.ReferencedSOPInstanceUID = uid
        references.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = ct[0].SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence(references)
    evidence = Dataset()
    evidence.StudyInstanceUID = ct[0].StudyInstanceUID
    evidence.ReferencedSeriesSequence = Sequence([series])
    sr.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    count = 0
    for element in walk_elements(sr):
        if element.keyword == "ReferencedSOPInstanceUID":
            element.value = sops[count % len(sops)]
            count += 1
        elif element.keyword == "ReferencedFrameOfReferenceUID":
            element.value = ct[0].FrameOfReferenceUID
    for name in ("PertinentOtherEvidenceSequence",):
        if name in sr:
            del sr[name]
    return sr
