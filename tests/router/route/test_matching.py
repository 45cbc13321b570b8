"""Rule evaluation on real pydicom datasets: operators, multi-values, absence, order, fallback."""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from config.loader import parse_config
from config.schema import Priority, RouterConfig
from router.route.matching import RoutingDecision, SeriesFacts, route

BASE_YAML = """\
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
  archive: {ae_title: ARCHIVE, host: 127.0.0.1, port: 4243}
"""


def read_back(**attributes: Any) -> pydicom.Dataset:
    """A CT header with ``attributes``, written to bytes and read back, so values have the
    types pydicom gives when reading files (DSfloat, IS, MultiValue, PersonName)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-4711"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer, stop_before_pixels=True)


def facts(calling_ae: str = "PACS", called_ae: str = "RADROUTER", **attributes: Any) -> SeriesFacts:
    return SeriesFacts.from_dataset(read_back(**attributes), calling_ae, called_ae)


def config_with(rules_yaml: str, fallback_yaml: str = "") -> RouterConfig:
    return parse_config(BASE_YAML + "rules:\n" + rules_yaml + fallback_yaml, "rules.yaml")


def one_rule(when_yaml: str) -> RouterConfig:
    return config_with(f"  - name: r\n    when: {when_yaml}\n    run: algo\n")


def matches(when_yaml: str, series: SeriesFacts) -> bool:
    decision = route(one_rule(when_yaml), series)
    assert decision.outcomes[0].matched == (not decision.used_fallback)
    return not decision.used_fallback


# --------------------------------------------------------------------------------------------
# SeriesFacts


def test_facts_hold_header_values_as_pydicom_reads_them() -> None:
    series = facts(Modality="CT", SliceThickness="1.25", ImageType=["ORIGINAL", "PRIMARY"])
    assert series.attributes["Modality"] == "CT"
    assert isinstance(series.attributes["SliceThickness"], float)
    assert list(series.attributes["ImageType"]) == ["ORIGINAL", "PRIMARY"]  # type: ignore[call-overload]
    assert series.attributes["TransferSyntaxUID"] == ExplicitVRLittleEndian
    assert series.value("CallingAE") == "PACS"
    assert series.value("CalledAE") == "RADROUTER"
    assert series.value("BodyPartExamined") is None


def test_facts_skip_sequences_and_binary() -> None:
    ds = read_back(Modality="CT")
    ds.ReferencedImageSequence = [Dataset()]
    ds.add_new(0x7FE00010, "OW", b"\x00\x00")
    series = SeriesFacts.from_dataset(ds, "A", "B")
    assert "ReferencedImageSequence" not in series.attributes
    assert "PixelData" not in series.attributes


# --------------------------------------------------------------------------------------------
# Operators


def test_bare_value_means_equals_and_is_case_sensitive() -> None:
    assert matches("{Modality: CT}", facts(Modality="CT"))
    assert not matches("{Modality: CT}", facts(Modality="MR"))
    assert not matches("{Modality: ct}", facts(Modality="CT"))


def test_equals_ignores_dicom_padding() -> None:
    # An odd-length value is padded with a space on disk.
    assert matches("{BodyPartExamined: CHEST}", facts(BodyPartExamined="CHEST"))
    assert matches("{StationName: {equals: CT1}}", facts(StationName="CT1 "))


def test_in_operator() -> None:
    when = "{BodyPartExamined: {in: [CHEST, THORAX, LUNG]}}"
    assert matches(when, facts(BodyPartExamined="THORAX"))
    assert not matches(when, facts(BodyPartExamined="ABDOMEN"))


def test_regex_searches_and_case_insensitive_flag() -> None:
    when = "{SeriesDescription: {regex: '(?i)chest|lung'}}"
    assert matches(when, facts(SeriesDescription="Thorax CHEST 1.25mm"))
    assert matches(when, facts(SeriesDescription="low-dose lung"))
    assert not matches(when, facts(SeriesDescription="Head"))
    assert not matches("{SeriesDescription: {regex: '^Lung$'}}", facts(SeriesDescription="lung"))


def test_numeric_strings_compare_numerically() -> None:
    series = facts(SliceThickness="1.25", SeriesNumber="3")
    assert matches("{SliceThickness: 1.25}", series)
    assert matches("{SliceThickness: {equals: '1.250'}}", series)
    assert matches("{SeriesNumber: 3}", series)
    assert matches("{SeriesNumber: {in: [1, 2, 3]}}", series)
    assert not matches("{SliceThickness: 1.2}", series)


@pytest.mark.parametrize(
    ("when", "thickness", "expected"),
    [
        ("{SliceThickness: {max: 3}}", "3", True),
        ("{SliceThickness: {max: 3}}", "3.0001", False),
        ("{SliceThickness: {min: 0.5}}", "0.5", True),
        ("{SliceThickness: {min: 0.5}}", "0.49", False),
        ("{SliceThickness: {min: 1, max: 2}}", "1.5", True),
        ("{SliceThickness: {min: 1, max: 2}}", "2.5", False),
    ],
)
def test_min_max_are_inclusive(when: str, thickness: str, expected: bool) -> None:
    assert matches(when, facts(SliceThickness=thickness)) is expected


def test_min_max_need_a_number_and_say_so() -> None:
    config = one_rule("{SliceThickness: {max: 3}}")
    series = facts(SliceThickness="1")
    series = SeriesFacts({**series.attributes, "SliceThickness": "thin"}, "PACS", "RADROUTER")
    decision = route(config, series)
    assert decision.used_fallback
    (check,) = decision.outcomes[0].checks
    assert not check.matched
    assert check.actual == "thin (not a number)"
    assert "not a number" in decision.explain()


def test_multi_valued_image_type_matches_if_any_value_does() -> None:
    series = facts(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    assert matches("{ImageType: AXIAL}", series)
    assert matches("{ImageType: {in: [LOCALIZER, AXIAL]}}", series)
    assert matches("{ImageType: {regex: '^PRIM'}}", series)
    assert not matches("{ImageType: LOCALIZER}", series)
    decision = route(one_rule("{ImageType: AXIAL}"), series)
    assert decision.outcomes[0].checks[0].actual == "ORIGINAL\\PRIMARY\\AXIAL"


def test_min_max_on_multi_values_need_every_value_in_range() -> None:
    assert matches("{PixelSpacing: {max: 1}}", facts(PixelSpacing=["0.7", "0.7"]))
    assert not matches("{PixelSpacing: {max: 1}}", facts(PixelSpacing=["0.7", "1.2"]))


def test_absent_attribute_fails_everything_but_exists_false() -> None:
    series = facts(Modality="CT")
    for when in (
        "{BodyPartExamined: CHEST}",
        "{BodyPartExamined: {in: [CHEST]}}",
        "{BodyPartExamined: {regex: '.*'}}",
        "{SliceThickness: {max: 100}}",
        "{SliceThickness: {min: -100}}",
        "{BodyPartExamined: {exists: true}}",
    ):
        assert not matches(when, series), when
    assert matches("{BodyPartExamined: {exists: false}}", series)
    assert matches("{Modality: {exists: true}}", series)
    decision = route(one_rule("{BodyPartExamined: CHEST}"), series)
    assert decision.outcomes[0].checks[0].actual == "(absent)"


def test_empty_value_counts_as_absent() -> None:
    series = facts(Modality="CT", BodyPartExamined="")
    assert matches("{BodyPartExamined: {exists: false}}", series)
    assert not matches("{BodyPartExamined: {regex: '^$'}}", series)


def test_calling_and_called_ae_matchers() -> None:
    when = "{CallingAE: {in: [CT_SCANNER_1, PACS]}, CalledAE: RADROUTER}"
    assert matches(when, facts(calling_ae="CT_SCANNER_1", Modality="CT"))
    assert not matches(when, facts(calling_ae="INTRUDER", Modality="CT"))
    assert not matches(when, facts(calling_ae="PACS", called_ae="OTHER", Modality="CT"))


def test_all_operators_of_a_matcher_must_hold() -> None:
    when = "{SliceThickness: {min: 1, max: 3, exists: true, regex: '^1'}}"
    assert matches(when, facts(SliceThickness="1.5"))
    assert not matches(when, facts(SliceThickness="2.5"))


def test_empty_when_matches_everything() -> None:
    assert matches("{}", facts(Modality="OT"))


# --------------------------------------------------------------------------------------------
# Order, continue, disabled, fallback


RULES = """\
  - name: copy-ct
    when: {Modality: CT}
    send_to: [archive]
    continue: true
  - name: off
    enabled: false
    when: {Modality: CT}
    run: never
  - name: chest
    when: {Modality: CT, BodyPartExamined: CHEST}
    run: lung_nodule
    priority: stat
    send_to: [pacs]
  - name: any-ct
    when: {Modality: CT}
    run: other
"""


def test_continue_lets_later_rules_fire_and_first_match_wins_after() -> None:
    decision = route(config_with(RULES), facts(Modality="CT", BodyPartExamined="CHEST"))
    assert not decision.used_fallback
    assert [a.rule_name for a in decision.actions] == ["copy-ct", "chest"]
    forward, run = decision.actions
    assert (forward.run, forward.send_to) == (None, ("archive",))
    assert (run.run, run.priority, run.send_to) == ("lung_nodule", Priority.STAT, ("pacs",))
    assert [o.rule_name for o in decision.outcomes] == ["copy-ct", "off", "chest"]
    assert decision.stopped_at == "chest"
    assert "any-ct" not in decision.explain()


def test_disabled_rule_is_skipped() -> None:
    decision = route(config_with(RULES), facts(Modality="CT", BodyPartExamined="HEAD"))
    assert [a.rule_name for a in decision.actions] == ["copy-ct", "any-ct"]
    off = decision.outcomes[1]
    assert off.disabled and not off.matched and off.checks == ()
    assert "'off': skipped (disabled)" in decision.explain()


def test_fallback_unrouted_when_nothing_matches() -> None:
    decision = route(config_with(RULES), facts(Modality="MR"))
    assert decision.used_fallback
    assert decision.actions == ()
    assert decision.unrouted
    text = decision.explain()
    assert text.splitlines()[0] == "no rule matched -> fallback: unrouted"
    assert "found MR, expected equals CT" in text


def test_fallback_with_an_action() -> None:
    config = config_with(RULES, "fallback:\n  send_to: [archive]\n  priority: urgent\n")
    decision = route(config, facts(Modality="MR"))
    assert decision.used_fallback and not decision.unrouted
    (action,) = decision.actions
    assert (action.rule_name, action.run, action.send_to) == ("fallback", None, ("archive",))
    assert action.priority is Priority.URGENT


def test_a_continue_rule_alone_does_not_trigger_the_fallback() -> None:
    config = config_with(RULES, "fallback:\n  run: triage\n")
    decision = route(config.model_copy(update={"rules": config.rules[:1]}), facts(Modality="CT"))
    assert not decision.used_fallback
    assert [a.rule_name for a in decision.actions] == ["copy-ct"]


def test_rule_without_action_ignores_the_series() -> None:
    config = config_with("  - name: ignore-scouts\n    when: {ImageType: LOCALIZER}\n" + RULES)
    decision = route(config, facts(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    (action,) = decision.actions
    assert (action.rule_name, action.run, action.send_to) == ("ignore-scouts", None, ())
    assert not decision.used_fallback
    assert "ignore" in decision.explain().splitlines()[0]


# --------------------------------------------------------------------------------------------
# Explanations


def test_explain_shows_each_check_with_actual_and_expected() -> None:
    config = config_with(
        "  - name: chest\n"
        "    when:\n"
        "      Modality: CT\n"
        "      BodyPartExamined: {in: [CHEST, THORAX]}\n"
        "      SliceThickness: {max: 3}\n"
        "    run: lung_nodule\n"
        "    send_to: [pacs]\n"
    )
    decision = route(config, facts(Modality="CT", BodyPartExamined="THORAX", SliceThickness="5"))
    assert isinstance(decision, RoutingDecision)
    text = decision.explain()
    assert "BodyPartExamined: found THORAX, expected in [CHEST, THORAX]" in text
    assert "[FAIL] SliceThickness: found 5, expected max 3" in text
    assert "'chest': did not match" in text
    decision = route(config, facts(Modality="CT", BodyPartExamined="CHEST", SliceThickness="1"))
    first = decision.explain().splitlines()[0]
    assert first == "rule 'chest' fired -> run lung_nodule (routine), send to pacs"


def test_explain_never_prints_patient_identifiers() -> None:
    config = one_rule("{PatientName: {regex: Doe}, PatientID: {exists: true}}")
    decision = route(config, facts(Modality="CT"))
    text = decision.explain()
    assert not decision.used_fallback
    assert "Doe^Jane" not in text and "MRN-4711" not in text
    assert "hidden" in text
