"""QA, phantom and calibration series: recognised by ``qa.signs``, never given to a clinical
algorithm whatever the rules say, and the only series a quality-control algorithm gets."""

from __future__ import annotations

import pytest

from algorithms.contract import Purpose
from config.loader import ConfigError, parse_config
from config.schema import RouterConfig
from router.route.matching import qa_sign, route
from tests.router.route.test_matching import facts

PURPOSES = {"lung_nodule": Purpose.CLINICAL, "ct_water_qa": Purpose.QUALITY_CONTROL}
LOOSE_RULES = """\
rules:
  - name: every-ct
    when: {Modality: CT}
    run: lung_nodule
    continue: true
  - name: water-qa
    when: {Modality: CT}
    run: ct_water_qa
"""


def config(extra: str = "") -> RouterConfig:
    return parse_config(LOOSE_RULES + extra, "qa.yaml")


@pytest.mark.parametrize(
    "attributes",
    [
        {"BodyPartExamined": "PHANTOM"},
        {"PatientName": "QA^CT1"},
        {"PatientName": "Water^Phantom"},
        {"PatientID": "QC-0001"},
        {"StudyDescription": "DAILY QA"},
        {"StudyDescription": "CT constancy"},
        {"SeriesDescription": "Calibration 120kV"},
    ],
    ids=lambda a: next(iter(a)),
)
def test_the_default_signs_recognise_the_usual_qa_scans(attributes: dict[str, str]) -> None:
    assert qa_sign(config().qa, facts(Modality="CT", **attributes)) is not None


@pytest.mark.parametrize(
    "attributes",
    [
        {"StudyDescription": "CT CHEST WITH CONTRAST", "BodyPartExamined": "CHEST"},
        {"StudyDescription": "CT THORAX QUALITATIVE"},  # a word that only starts with "qa"
        {"PatientName": "Qaderi^Amina"},
        {"PatientID": "MRN-4711"},
    ],
)
def test_patients_series_show_no_sign(attributes: dict[str, str]) -> None:
    assert qa_sign(config().qa, facts(Modality="CT", **attributes)) is None


def test_a_phantom_gets_only_the_quality_control_algorithm_and_the_explanation_says_why() -> None:
    decision = route(config(), facts(Modality="CT", StudyDescription="DAILY QA WATER"), PURPOSES)

    assert [a.run for a in decision.actions] == ["ct_water_qa"]
    (withheld,) = decision.withheld
    assert withheld.action.run == "lung_nodule"
    assert "clinical algorithm never runs on a QA" in withheld.reason
    explanation = decision.explain()
    assert explanation.startswith("QA series (sign 'QA study description')")
    assert "lung_nodule withheld" in explanation
    assert "StudyDescription: found DAILY QA WATER" in explanation


def test_a_patient_never_gets_the_quality_control_algorithm() -> None:
    decision = route(config(), facts(Modality="CT", StudyDescription="CT CHEST"), PURPOSES)

    assert [a.run for a in decision.actions] == ["lung_nodule"]
    (withheld,) = decision.withheld
    assert withheld.action.run == "ct_water_qa"
    assert decision.qa is None


def test_the_patient_name_of_a_qa_sign_is_not_printed() -> None:
    decision = route(config(), facts(Modality="CT", PatientName="QA^CT1"), PURPOSES)
    assert decision.qa is not None
    assert "QA^CT1" not in decision.explain()


def test_a_site_sets_its_own_signs_station_and_time_of_day() -> None:
    site = config(
        "qa:\n"
        "  signs:\n"
        "    - name: morning QA on CT1\n"
        "      when: {StationName: CT1, StudyTime: {min: 60000, max: 73000}}\n"
    )
    morning = facts(Modality="CT", StationName="CT1", StudyTime="064500")
    noon = facts(Modality="CT", StationName="CT1", StudyTime="120000")

    assert qa_sign(site.qa, morning) is not None
    assert qa_sign(site.qa, noon) is None
    # the site's list replaces the defaults
    assert qa_sign(site.qa, facts(Modality="CT", BodyPartExamined="PHANTOM")) is None


def test_no_signs_turns_recognition_off() -> None:
    decision = route(config("qa: {signs: []}\n"), facts(BodyPartExamined="PHANTOM", Modality="CT"))
    assert decision.qa is None


def test_a_sign_needs_a_condition() -> None:
    with pytest.raises(ConfigError, match="signs"):
        config("qa:\n  signs:\n    - {name: empty, when: {}}\n")
