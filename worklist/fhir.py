"""FHIR R4 resources for a worklist notification: Observations and a Task in a transaction Bundle.

Validated with ``fhirclient`` (SMART Health IT), whose models are generated from FHIR 4.0.1
(R4) itself: structure, data types, cardinality, required elements and date formats. The
``fhir.resources`` package was not chosen because its current releases model R5 and R4B
(4.3.0) only, not R4. fhirclient does not check value-set bindings, so the required bindings
of the codes written here are checked in :func:`check_bundle`.

What is sent (one transaction, so the Task never exists without its Observation):

- an Observation of the study-level answer: ``code`` = the algorithm's target, value Present /
  Absent / Undetermined (``dataAbsentReason`` error when the algorithm failed), status
  preliminary, category imaging, ``derivedFrom`` the ImagingStudy and ``basedOn`` the
  ServiceRequest, both by identifier (Study Instance UID, accession number), ``device`` the
  algorithm (by its DICOM device UID), notes with the reason and "AI-generated, not verified",
  and ``hasMember`` the finding Observations;
- one Observation per finding: ``code`` (121071, DCM, "Finding"), the finding type as value,
  ``bodySite``, and components for certainty (%), measurements, qualifiers, tracking ID;
- a Task carrying the worklist priority (``config.task`` says when): status requested, intent
  order, ``focus`` the ImagingStudy, ``reasonReference`` the Observation, the reason as
  ``description``.

Every resource has an identifier derived from the notification id, and every entry is a
conditional create (``ifNoneExist``) on it, so a retried delivery creates nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fhirclient.models.bundle import Bundle
from fhirclient.models.fhirabstractbase import FHIRValidationError

from algorithms.contract import AlgorithmResult, Code, Finding, Measurement
from config.schema import FhirNotifyConfig, Priority
from worklist import codes
from worklist.facts import AlgorithmFailure
from worklist.hl7 import ai_statement, outcome_statement
from worklist.notification import Notification

FHIR_VERSION = "4.0.1"
CONTENT_TYPE = "application/fhir+json"
IDENTIFIER_SYSTEM = "urn:ietf:rfc:3986"
"""Identifier values are ``urn:uuid:...`` URIs, globally unique by themselves."""
DICOM_UID_SYSTEM = "urn:dicom:uid"
ACCESSION_TYPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
}
IMAGING_CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging",
            "display": "Imaging",
        }
    ]
}
DATA_ABSENT_ERROR = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "error",
            "display": "Error",
        }
    ]
}
TASK_CODE = {
    "coding": [
        {
            "system": codes.FHIR_SYSTEMS[codes.LOCAL_SYSTEM],
            "code": "ai-worklist-priority",
            "display": "Worklist priority set from an AI result",
        }
    ]
}
NAMESPACE = uuid.UUID("0f6b1e5c-2d4f-5c47-9a43-6b1d3e8a7c21")
"""uuid5 namespace of radrouter's resource identifiers."""

REQUIRED_BINDINGS: Mapping[tuple[str, str], frozenset[str]] = {
    ("Bundle", "type"): frozenset(
        {
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
        }
    ),
    ("Observation", "status"): frozenset(
        {
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("Task", "status"): frozenset(
        {
            "draft",
            "requested",
            "received",
            "accepted",
            "rejected",
            "ready",
            "cancelled",
            "in-progress",
            "on-hold",
            "failed",
            "completed",
            "entered-in-error",
        }
    ),
    ("Task", "intent"): frozenset(
        {
            "unknown",
            "proposal",
            "plan",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        }
    ),
    ("Task", "priority"): frozenset({"routine", "urgent", "asap", "stat"}),
}
"""Required value-set bindings (FHIR R4) of the coded elements this module writes."""


class FhirError(ValueError):
    """A Bundle is not valid FHIR R4; the text names the element and the rule."""


def resource_uuid(notification_id: str, role: str) -> str:
    """``urn:uuid:...`` of one resource of a notification, the same on every retry."""
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'{notification_id}/{role}')}"


def request_priority(priority: Priority, config: FhirNotifyConfig) -> str:
    """Lane -> FHIR request priority (``routine | urgent | asap | stat``)."""
    return {Priority.STAT: "stat", Priority.URGENT: config.urgent_as}.get(priority, "routine")


def concept(code: Code) -> dict[str, Any]:
    """A contract code as a CodeableConcept (the coding system as its FHIR URI)."""
    coding: dict[str, Any] = {"code": code.value, "display": code.meaning}
    system = codes.FHIR_SYSTEMS.get(code.scheme_designator)
    if system is not None:
        coding = {"system": system, **coding}
    return {"coding": [coding], "text": code.meaning}


def quantity(value: float, unit: Code) -> dict[str, Any]:
    if unit.scheme_designator == "UCUM":
        return {
            "value": value,
            "unit": unit.value,
            "system": codes.FHIR_SYSTEMS["UCUM"],
            "code": unit.value,
        }
    return {"value": value, "unit": unit.meaning}


def build_transaction(notification: Notification, config: FhirNotifyConfig) -> dict[str, Any]:
    """The transaction Bundle for ``notification`` as JSON, checked by :func:`check_bundle`."""
    outcome = notification.outcome
    findings = outcome.findings if isinstance(outcome, AlgorithmResult) else ()
    finding_urls = [
        resource_uuid(notification.notification_id, f"finding/{n}") for n in range(len(findings))
    ]
    observation_url = resource_uuid(notification.notification_id, "observation")
    entries = [_entry(observation_url, _study_observation(notification, config, finding_urls))]
    entries.extend(
        _entry(url, _finding_observation(notification, config, finding))
        for url, finding in zip(finding_urls, findings, strict=True)
    )
    wants_task = config.task == "always" or (
        config.task == "flagged" and notification.decision.flag_raised
    )
    if wants_task:
        task_url = resource_uuid(notification.notification_id, "task")
        entries.append(_entry(task_url, _task(notification, config, observation_url)))
    bundle = {
        "resourceType": "Bundle",
        "identifier": {
            "system": IDENTIFIER_SYSTEM,
            "value": resource_uuid(notification.notification_id, "bundle"),
        },
        "type": "transaction",
        "entry": entries,
    }
    check_bundle(bundle)
    return bundle


def _entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    resource["identifier"] = [{"system": IDENTIFIER_SYSTEM, "value": full_url}]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": f"identifier={IDENTIFIER_SYSTEM}|{full_url}",
        },
    }


def _common(notification: Notification, config: FhirNotifyConfig) -> dict[str, Any]:
    """Elements every Observation of the notification has."""
    study = notification.study
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [IMAGING_CATEGORY],
    }
    subject = _patient(notification, config)
    if subject is not None:
        resource["subject"] = subject
    if study.study_date:
        d = study.study_date
        resource["effectiveDateTime"] = f"{d[:4]}-{d[4:6]}-{d[6:]}"
    resource["issued"] = notification.created_at.isoformat()
    resource["device"] = _device(notification)
    resource["derivedFrom"] = [_imaging_study(notification)]
    order = _service_request(notification, config)
    if order is not None:
        resource["basedOn"] = [order]
    return resource


def _study_observation(
    notification: Notification, config: FhirNotifyConfig, finding_urls: list[str]
) -> dict[str, Any]:
    outcome = notification.outcome
    resource = _common(notification, config)
    resource["code"] = concept(notification.algorithm.target)
    if isinstance(outcome, AlgorithmFailure):
        resource["dataAbsentReason"] = DATA_ABSENT_ERROR
    else:
        resource["valueCodeableConcept"] = concept(codes.VERDICT_VALUES[outcome.verdict])
    notes = [
        notification.decision.reason,
        ai_statement(notification),
        outcome_statement(notification),
    ]
    resource["note"] = [{"text": text} for text in notes if text]
    components: list[dict[str, Any]] = []
    if isinstance(outcome, AlgorithmResult):
        if outcome.probability is not None:
            components.append(_certainty(outcome.probability))
        components.extend(_measurement(m) for m in outcome.measurements)
    if components:
        resource["component"] = components
    if finding_urls:
        resource["hasMember"] = [{"reference": url, "type": "Observation"} for url in finding_urls]
    return resource


def _finding_observation(
    notification: Notification, config: FhirNotifyConfig, finding: Finding
) -> dict[str, Any]:
    resource = _common(notification, config)
    resource["code"] = concept(codes.FINDING)
    resource["valueCodeableConcept"] = concept(finding.finding_type)
    if finding.finding_site is not None:
        resource["bodySite"] = concept(finding.finding_site)
    components = [_certainty(finding.probability)]
    components.extend(_measurement(m) for m in finding.measurements)
    components.extend(
        {"code": concept(q.name), "valueCodeableConcept": concept(q.value)}
        for q in finding.qualifiers
    )
    if finding.tracking_id:
        components.append(
            {"code": concept(codes.TRACKING_IDENTIFIER), "valueString": finding.tracking_id}
        )
    resource["component"] = components
    resource["note"] = [{"text": ai_statement(notification)}]
    return resource


def _task(
    notification: Notification, config: FhirNotifyConfig, observation_url: str
) -> dict[str, Any]:
    decision = notification.decision
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "priority": request_priority(decision.priority, config),
        "code": TASK_CODE,
        "description": decision.reason,
        "focus": _imaging_study(notification),
    }
    subject = _patient(notification, config)
    if subject is not None:
        resource["for"] = subject
    order = _service_request(notification, config)
    if order is not None:
        resource["basedOn"] = [order]
    resource["authoredOn"] = notification.created_at.isoformat()
    resource["requester"] = _device(notification)
    resource["reasonCode"] = {"text": decision.reason}
    resource["reasonReference"] = {"reference": observation_url, "type": "Observation"}
    resource["note"] = [{"text": ai_statement(notification)}]
    return resource


def _certainty(probability: float) -> dict[str, Any]:
    return {
        "code": concept(codes.CERTAINTY_OF_FINDING),
        "valueQuantity": quantity(
            round(probability * codes.PERCENT_PER_PROBABILITY, 4), codes.PERCENT
        ),
    }


def _measurement(measurement: Measurement) -> dict[str, Any]:
    return {
        "code": concept(measurement.name),
        "valueQuantity": quantity(measurement.value, measurement.unit),
    }


def _patient(notification: Notification, config: FhirNotifyConfig) -> dict[str, Any] | None:
    patient_id = notification.study.patient_id
    if not patient_id:
        return None
    identifier: dict[str, Any] = {"value": patient_id}
    if config.patient_identifier_system:
        identifier = {"system": config.patient_identifier_system, **identifier}
    return {"type": "Patient", "identifier": identifier}


def _imaging_study(notification: Notification) -> dict[str, Any]:
    uid = notification.study.study_instance_uid
    return {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"},
    }


def _service_request(notification: Notification, config: FhirNotifyConfig) -> dict[str, Any] | None:
    accession = notification.study.accession_number
    if not accession:
        return None
    identifier: dict[str, Any] = {"type": ACCESSION_TYPE, "value": accession}
    if config.accession_identifier_system:
        identifier["system"] = config.accession_identifier_system
    return {"type": "ServiceRequest", "identifier": identifier}


def _device(notification: Notification) -> dict[str, Any]:
    algorithm = notification.algorithm
    return {
        "type": "Device",
        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{algorithm.device_uid}"},
        "display": f"{algorithm.display_name} {algorithm.version}",
    }


def check_bundle(bundle: Mapping[str, Any]) -> Bundle:
    """Validate a Bundle as FHIR R4 (fhirclient's R4 models plus the required bindings of
    :data:`REQUIRED_BINDINGS`); return the model or raise :class:`FhirError`."""
    try:
        model = Bundle(dict(bundle), strict=True)
    except FHIRValidationError as exc:
        raise FhirError(f"not a valid FHIR R4 Bundle: {' '.join(str(exc).split())}") from exc
    problems = _binding_problems("Bundle", bundle)
    for index, entry in enumerate(bundle.get("entry", [])):
        resource = entry.get("resource") or {}
        kind = str(resource.get("resourceType", ""))
        problems.extend(f"entry[{index}].{p}" for p in _binding_problems(kind, resource))
    if problems:
        raise FhirError("not a valid FHIR R4 Bundle: " + "; ".join(problems))
    return model


def _binding_problems(kind: str, resource: Mapping[str, Any]) -> list[str]:
    problems = []
    for (resource_type, element), allowed in REQUIRED_BINDINGS.items():
        if resource_type == kind and element in resource and resource[element] not in allowed:
            problems.append(
                f"{kind}.{element} {resource[element]!r} is not one of {', '.join(sorted(allowed))}"
            )
    return problems


def response_locations(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``response.location`` of each entry of a transaction-response Bundle."""
    check_bundle(body)
    if body.get("type") != "transaction-response":
        raise FhirError(f"expected a transaction-response Bundle, got type {body.get('type')!r}")
    return tuple(
        str(entry["response"]["location"])
        for entry in body.get("entry", [])
        if entry.get("response", {}).get("location")
    )
