"""The way back: a vendor's answer that references de-identified instances is re-identified
from the mapping; the mapping is protected, kept for its time, then purged."""

from __future__ import annotations

import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid

from router.deidentify import (
    Deidentifier,
    DeidKeys,
    DeidOptions,
    MappingStore,
    ReidentificationError,
    deidentify_series,
    reidentify,
)
from router.deidentify.elements import walk_elements
from router.deidentify.mapping import DAY_S, MappingError
from tests.router.deidentify.conftest import SECRET
from tests.router.deidentify.identified import MARKERS, ct_series

VENDOR_ROOT = "1.2.826.0.1.3680043.10.777."


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = sop_instance
    return ref


def _vendor_answer(sent: list[Dataset]) -> Dataset:
    """What a vendor returns: an SR in the de-identified study, its own series and instance,
    referencing the de-identified images in every place a result object does."""
    first = sent[0]
    sop_class = first.SOPClassUID
    answer = Dataset()
    answer.file_meta = FileMetaDataset()
    answer.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    answer.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    answer.SOPClassUID = ComprehensiveSRStorage
    answer.SOPInstanceUID = generate_uid(prefix=VENDOR_ROOT)
    answer.file_meta.MediaStorageSOPInstanceUID = answer.SOPInstanceUID
    answer.SeriesInstanceUID = generate_uid(prefix=VENDOR_ROOT)
    answer.Modality = "SR"
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyTime"):
        setattr(answer, keyword, first.get(keyword))
    answer.AccessionNumber = ""
    answer.PatientIdentityRemoved = "YES"
    answer.DeidentificationMethod = "copied by the vendor"
    answer.FrameOfReferenceUID = first.FrameOfReferenceUID
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence(
        [_reference(sop_class, ds.SOPInstanceUID) for ds in sent]
    )
    evidence = Dataset()
    evidence.StudyInstanceUID = first.StudyInstanceUID
    evidence.ReferencedSeriesSequence = Sequence([series])
    answer.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    answer.ReferencedSeriesSequence = Sequence([series])  # as a SEG has it
    answer.ReferencedImageSequence = Sequence([_reference(sop_class, sent[1].SOPInstanceUID)])
    answer.SourceImageSequence = Sequence([_reference(sop_class, sent[2].SOPInstanceUID)])
    derivation = Dataset()
    derivation.SourceImageSequence = Sequence([_reference(sop_class, sent[3].SOPInstanceUID)])
    answer.DerivationImageSequence = Sequence([derivation])
    image = Dataset()
    image.RelationshipType = "CONTAINS"
    image.ValueType = "IMAGE"
    image.ReferencedSOPSequence = Sequence([_reference(sop_class, sent[0].SOPInstanceUID)])
    group = Dataset()
    group.RelationshipType = "CONTAINS"
    group.ValueType = "CONTAINER"
    group.ContentSequence = Sequence([image])
    answer.ContentSequence = Sequence([group])
    return answer


def test_a_vendor_answer_comes_back_with_every_reference_and_the_identity(
    keys: DeidKeys, store: MappingStore
) -> None:
    source = ct_series(4)
    done = deidentify_series(source, Deidentifier(DeidOptions(), keys), store)
    answer = _vendor_answer([d.dataset for d in done])
    vendor_own = {answer.SOPInstanceUID, answer.SeriesInstanceUID}

    result = reidentify(answer, store, scope="vendor-a")
    back = result.dataset

    original = source[0]
    assert back.StudyInstanceUID == original.StudyInstanceUID
    assert back.FrameOfReferenceUID == original.FrameOfReferenceUID
    assert (back.PatientName, back.PatientID) == (MARKERS["patient name"], MARKERS["patient id"])
    assert back.PatientBirthDate == MARKERS["birth date"]
    assert back.IssuerOfPatientID == MARKERS["issuer"]
    assert back.AccessionNumber == MARKERS["accession"]
    assert back.StudyDate == MARKERS["original date"] and back.StudyTime == original.StudyTime
    assert back.StudyID == MARKERS["study id"]
    assert back.ReferringPhysicianName == MARKERS["referring"]
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod"):
        assert keyword not in back
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == original.StudyInstanceUID
    originals = {ds.SOPInstanceUID for ds in source}
    for sequence in (evidence.ReferencedSeriesSequence, back.ReferencedSeriesSequence):
        assert sequence[0].SeriesInstanceUID == original.SeriesInstanceUID
        assert {r.ReferencedSOPInstanceUID for r in sequence[0].ReferencedSOPSequence} == originals
    assert back.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source[1].SOPInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source[2].SOPInstanceUID
    derived = back.DerivationImageSequence[0].SourceImageSequence[0]
    assert derived.ReferencedSOPInstanceUID == source[3].SOPInstanceUID
    image = back.ContentSequence[0].ContentSequence[0].ReferencedSOPSequence[0]
    assert image.ReferencedSOPInstanceUID == source[0].SOPInstanceUID
    # Every UID is an original or the vendor's own; none of the de-identified ones is left.
    sent = {uid for d in done for uid in d.uids}
    left = {
        str(v) for e in walk_elements(back) if e.VR == "UI" for v in [e.value] if str(v) in sent
    }
    assert left == set()
    assert back.SOPInstanceUID == answer.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPInstanceUID == answer.SOPInstanceUID
    assert set(result.kept_uids) == vendor_own
    assert result.restored_uids >= 4 + 4 + 4  # the evidence, the series list, the references


def test_answers_that_are_not_ours_are_refused(keys: DeidKeys, store: MappingStore) -> None:
    done = deidentify_series(ct_series(4), Deidentifier(DeidOptions(), keys), store)
    answer = _vendor_answer([d.dataset for d in done])
    with pytest.raises(ReidentificationError, match="another vendor"):
        reidentify(answer, store, scope="vendor-b")
    stranger = _vendor_answer([d.dataset for d in done])
    stranger.StudyInstanceUID = generate_uid()
    with pytest.raises(ReidentificationError, match="not one radrouter de-identified"):
        reidentify(stranger, store)
    del stranger.StudyInstanceUID
    with pytest.raises(ReidentificationError, match="no Study Instance UID"):
        reidentify(stranger, store)


def test_the_mapping_is_private_encrypted_and_purged_after_its_time(
    keys: DeidKeys, store: MappingStore, tmp_path: Path
) -> None:
    source = ct_series(4)
    deidentifier = Deidentifier(DeidOptions(), keys)
    done = [deidentifier.deidentify(ds) for ds in source]
    long_ago = 1_000_000_000.0
    store.record("vendor-a", done, now=long_ago)
    store.record("vendor-a", done, now=long_ago)  # a re-send: the same rows, renewed

    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    on_disk = b"".join(p.read_bytes() for p in store.path.parent.glob(store.path.name + "*"))
    for value in (MARKERS["patient name"], MARKERS["patient id"], source[0].SOPInstanceUID):
        assert value.encode() not in on_disk

    answer = _vendor_answer([d.dataset for d in done])
    assert reidentify(answer, store).dataset.PatientID == MARKERS["patient id"]

    purged = store.purge(now=long_ago + 29 * DAY_S)
    assert (purged.patients, purged.studies, purged.uids) == (0, 0, 0)
    purged = store.purge(now=long_ago + 31 * DAY_S)
    assert (purged.patients, purged.studies) == (1, 1)
    assert purged.uids == len({u for d in done for u in d.uids})
    with pytest.raises(ReidentificationError, match="purged"):
        reidentify(answer, store)


def test_another_site_secret_cannot_read_the_mapping(keys: DeidKeys, store: MappingStore) -> None:
    done = deidentify_series(ct_series(4), Deidentifier(DeidOptions(), keys), store)
    other = DeidKeys(b"another site secret, also thirty-two bytes long", "vendor-a")
    stolen = MappingStore(store.path, other.storage_key(), keep_days=30)
    with pytest.raises(MappingError):
        reidentify(_vendor_answer([d.dataset for d in done]), stolen)
    assert SECRET != b"another site secret, also thirty-two bytes long"


def test_the_answer_passed_in_is_not_changed(keys: DeidKeys, store: MappingStore) -> None:
    done = deidentify_series(ct_series(4), Deidentifier(DeidOptions(), keys), store)
    answer = _vendor_answer([d.dataset for d in done])
    before = pydicom.Dataset(answer).to_json()
    reidentify(answer, store)
    assert answer.to_json() == before
