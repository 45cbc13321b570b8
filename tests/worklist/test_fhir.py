"""FHIR R4 transaction Bundles: content, validity (fhirclient's R4 models), identifiers."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from config.schema import FhirNotifyConfig, Priority
from tests.worklist import support
from worklist import fhir
from worklist.facts import AlgorithmFailure

CONFIG = FhirNotifyConfig(
    base_url="https://fhir.example.org/r4",
    patient_identifier_system="urn:oid:1.2.3.4.5",
    accession_identifier_system="urn:oid:1.2.3.4.6",
)


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def codings(concept: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c.get("system", ""), c["code"]) for c in concept["coding"]]


def test_flagged_pe_gives_an_observation_a_finding_and_a_stat_task() -> None:
    notification = support.notification(support.positive(support.pe_finding(0.93)))

    bundle = fhir.build_transaction(notification, CONFIG)

    assert bundle["type"] == "transaction"
    study, finding = resources(bundle, "Observation")
    [task] = resources(bundle, "Task")
    assert study["status"] == "preliminary"
    assert codings(study["category"][0]) == [
        ("http://terminology.hl7.org/CodeSystem/observation-category", "imaging")
    ]
    assert codings(study["code"]) == [("http://snomed.info/sct", "59282003")]
    assert codings(study["valueCodeableConcept"]) == [("http://snomed.info/sct", "52101004")]
    assert study["derivedFrom"] == [
        {
            "type": "ImagingStudy",
            "identifier": {
                "system": "urn:dicom:uid",
                "value": f"urn:oid:{support.STUDY.study_instance_uid}",
            },
        }
    ]
    assert study["basedOn"][0]["identifier"]["value"] == "ACC-2025-0042"
    assert study["subject"]["identifier"] == {"system": "urn:oid:1.2.3.4.5", "value": "PAT-000123"}
    assert study["device"]["display"] == "Test PE Detector 1.2.0"
    notes = [note["text"] for note in study["note"]]
    assert notification.decision.reason in notes
    assert any(n.startswith("AI-generated result, not verified") for n in notes)
    assert study["hasMember"] == [
        {"reference": bundle["entry"][1]["fullUrl"], "type": "Observation"}
    ]
    assert codings(finding["code"]) == [("http://dicom.nema.org/resources/ontology/DCM", "121071")]
    assert codings(finding["bodySite"]) == [("http://snomed.info/sct", "266005")]
    certainty = finding["component"][0]["valueQuantity"]
    assert (certainty["value"], certainty["code"]) == (93.0, "%")
    assert task["status"] == "requested"
    assert task["intent"] == "order"
    assert task["priority"] == "stat"
    assert task["description"] == notification.decision.reason
    assert task["focus"] == study["derivedFrom"][0]
    assert task["reasonReference"]["reference"] == bundle["entry"][0]["fullUrl"]


def test_every_entry_is_a_conditional_create_on_its_own_identifier() -> None:
    bundle = fhir.build_transaction(
        support.notification(support.positive(support.pe_finding(0.93))), CONFIG
    )

    for entry in bundle["entry"]:
        [identifier] = entry["resource"]["identifier"]
        assert identifier == {"system": "urn:ietf:rfc:3986", "value": entry["fullUrl"]}
        assert entry["request"] == {
            "method": "POST",
            "url": entry["resource"]["resourceType"],
            "ifNoneExist": f"identifier=urn:ietf:rfc:3986|{entry['fullUrl']}",
        }


def test_identifiers_are_the_same_on_a_retry_and_differ_between_results() -> None:
    outcome = support.positive(support.pe_finding(0.93))
    first = fhir.build_transaction(support.notification(outcome), CONFIG)
    again = fhir.build_transaction(support.notification(outcome), CONFIG)
    other = fhir.build_transaction(
        support.notification(outcome, notification_id="result-2"), CONFIG
    )

    urls = [e["fullUrl"] for e in first["entry"]]
    assert urls == [e["fullUrl"] for e in again["entry"]]
    assert not set(urls) & {e["fullUrl"] for e in other["entry"]}


def test_unflagged_result_has_no_task_unless_configured() -> None:
    notification = support.notification(support.NEGATIVE)

    default = fhir.build_transaction(notification, CONFIG)
    always = fhir.build_transaction(notification, CONFIG.model_copy(update={"task": "always"}))
    never = fhir.build_transaction(
        support.notification(support.positive(support.pe_finding(0.99))),
        CONFIG.model_copy(update={"task": "never"}),
    )

    assert not resources(default, "Task")
    assert [t["priority"] for t in resources(always, "Task")] == ["routine"]
    assert not resources(never, "Task")
    assert codings(resources(default, "Observation")[0]["valueCodeableConcept"]) == [
        ("http://snomed.info/sct", "272519000")
    ]


def test_urgent_lane_maps_to_urgent_or_asap_as_configured() -> None:
    assert fhir.request_priority(Priority.URGENT, CONFIG) == "urgent"
    assert (
        fhir.request_priority(Priority.URGENT, CONFIG.model_copy(update={"urgent_as": "asap"}))
        == "asap"
    )
    assert fhir.request_priority(Priority.ROUTINE, CONFIG) == "routine"


def test_failed_algorithm_is_an_observation_with_data_absent_reason_error() -> None:
    bundle = fhir.build_transaction(support.notification(AlgorithmFailure("model crashed")), CONFIG)

    [study] = resources(bundle, "Observation")
    assert "valueCodeableConcept" not in study
    assert codings(study["dataAbsentReason"]) == [
        ("http://terminology.hl7.org/CodeSystem/data-absent-reason", "error")
    ]
    assert "Algorithm failed: model crashed" in [n["text"] for n in study["note"]]


def test_not_assessed_is_undetermined_with_the_reason_in_a_note() -> None:
    bundle = fhir.build_transaction(support.notification(support.NOT_ASSESSED), CONFIG)

    [study] = resources(bundle, "Observation")
    assert codings(study["valueCodeableConcept"]) == [("http://snomed.info/sct", "373068000")]
    assert "Not assessed: slices too thick (5 mm)" in [n["text"] for n in study["note"]]


def test_study_without_patient_id_or_accession_leaves_those_references_out() -> None:
    study = dataclasses.replace(support.STUDY, patient_id="", accession_number="")

    bundle = fhir.build_transaction(support.notification(support.NEGATIVE, study=study), CONFIG)

    [observation] = resources(bundle, "Observation")
    assert "subject" not in observation and "basedOn" not in observation


def test_check_bundle_names_structural_errors_and_wrong_codes() -> None:
    good = fhir.build_transaction(
        support.notification(support.positive(support.pe_finding(0.93))), CONFIG
    )
    unknown_element = copy.deepcopy(good)
    unknown_element["entry"][0]["resource"]["valueFoo"] = 1
    bad_date = copy.deepcopy(good)
    bad_date["entry"][0]["resource"]["issued"] = "yesterday"
    bad_status = copy.deepcopy(good)
    bad_status["entry"][2]["resource"]["priority"] = "high"

    fhir.check_bundle(good)
    with pytest.raises(fhir.FhirError, match="valueFoo"):
        fhir.check_bundle(unknown_element)
    with pytest.raises(fhir.FhirError, match="issued"):
        fhir.check_bundle(bad_date)
    with pytest.raises(fhir.FhirError, match=r"entry\[2\]\.Task\.priority 'high'"):
        fhir.check_bundle(bad_status)


def test_response_locations_come_from_a_transaction_response() -> None:
    response = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": "201 Created", "location": "Observation/1/_history/1"}}],
    }

    assert fhir.response_locations(response) == ("Observation/1/_history/1",)
    with pytest.raises(fhir.FhirError, match="transaction-response"):
        fhir.response_locations({**response, "type": "batch-response"})
