"""docs/worklist.md stays true: its YAML loads, its HL7 message and FHIR Bundle are valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

from config.loader import default_config_text, load_default_config, parse_config
from config.schema import FhirNotifyConfig, Hl7NotifyConfig, Priority
from tests.worklist import support
from worklist import codes, fhir, hl7

DOC = Path(__file__).resolve().parents[2] / "docs" / "worklist.md"


def blocks(language: str) -> list[str]:
    """The fenced code blocks of the document in ``language`` ("" for plain blocks)."""
    fenced = re.findall(r"^```(\w*)\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)
    return [body for lang, body in fenced if lang == language]


EXAMPLE = support.notification(
    support.positive(support.pe_finding(0.93)), key_images=(support.PE_IMAGE,)
)
"""What the examples show: the PE test notification (its finding on series 4 image 120), made
at ``support.CREATED_AT``."""
EXAMPLE_HL7 = Hl7NotifyConfig(
    host="ris.example",
    port=2575,
    receiving_application="RIS",
    receiving_facility="RADIOLOGY",
    sending_facility="HOSP",
)
EXAMPLE_FHIR = FhirNotifyConfig(
    base_url="https://fhir.example.org/r4", patient_identifier_system="urn:oid:1.2.3.4.5"
)


def example_message() -> str:
    return hl7.build_oru_r01(EXAMPLE, EXAMPLE_HL7, now=support.CREATED_AT)


def test_configuration_example_loads() -> None:
    [example] = blocks("yaml")

    config = parse_config(example, str(DOC))

    worklist = config.worklist
    assert worklist.priority_policy["pe"][0].raise_to is Priority.STAT
    assert worklist.notify.hl7 is not None and worklist.notify.hl7.port == 2575
    assert worklist.notify.fhir is not None and worklist.notify.fhir.task == "flagged"


def test_example_message_is_a_valid_oru_r01_with_its_ack() -> None:
    message, ack = blocks("")

    oru = hl7.parse_oru_r01(message.strip().replace("\n", "\r"))
    answer = hl7.parse_ack(ack.strip().replace("\n", "\r"))

    assert message.strip() == example_message().replace("\r", "\n")
    assert oru.priority == "S"
    assert oru.rows(codes.PRIORITY_REASON)[0].value.startswith("AI: suspected PE")
    assert (answer.code, answer.control_id) == ("AA", oru.control_id)


def test_example_bundle_is_valid_fhir_r4() -> None:
    [bundle] = blocks("json")

    model = fhir.check_bundle(json.loads(bundle))

    assert json.loads(bundle) == fhir.build_transaction(EXAMPLE, EXAMPLE_FHIR)
    assert [entry.resource.resource_type for entry in model.entry] == [
        "Observation",
        "Observation",
        "Task",
    ]


def test_commented_example_in_the_shipped_default_is_valid_once_uncommented() -> None:
    text = default_config_text()
    start = text.index("\nworklist:")
    following = re.search(r"\n[a-z_]+:", text[start + 1 :])  # the next top-level key
    section = text[start : None if following is None else start + 1 + following.start()]
    lines = [
        "  " + line[len("  #") :] if line.startswith("  #  ") else line
        for line in section.splitlines()
    ]
    uncommented = "\n".join(lines).replace("priority_policy: {}", "priority_policy:")
    uncommented = uncommented.replace("notify: {}", "notify:")

    worklist = parse_config(uncommented, "default.yaml, uncommented").worklist

    assert worklist.priority_policy["lung_nodule"][0].raise_to is Priority.URGENT
    assert worklist.notify.hl7 is not None and worklist.notify.fhir is not None
    assert load_default_config().worklist.notify.hl7 is None
