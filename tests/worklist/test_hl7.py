"""ORU^R01 building and reading (hl7apy, v2.5.1 STRICT), ACKs, escaping."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.contract import AlgorithmResult, Code, Verdict
from config.schema import Hl7NotifyConfig, Priority
from tests.worklist import support
from worklist import codes, hl7
from worklist.facts import AlgorithmFailure
from worklist.notification import Notification

CONFIG = Hl7NotifyConfig(
    host="127.0.0.1",
    port=2575,
    receiving_application="RIS",
    receiving_facility="RADIOLOGY",
    sending_facility="HOSP",
)


def round_trip(notification: Notification) -> hl7.OruR01:
    return hl7.parse_oru_r01(hl7.build_oru_r01(notification, CONFIG))


def only(message: hl7.OruR01, identifier: Code, sub_id: str | None = None) -> hl7.ObservationRow:
    rows = message.rows(identifier, sub_id)
    assert len(rows) == 1, rows
    return rows[0]


def test_pe_result_carries_patient_order_priority_and_the_coded_finding() -> None:
    notification = support.notification(support.positive(support.pe_finding(0.93)))

    message = round_trip(notification)

    assert message.version == "2.5.1"
    assert message.control_id == hl7.message_control_id("result-1")
    assert (message.sending_application, message.receiving_application) == ("RADROUTER", "RIS")
    assert (message.patient_id, message.patient_id_authority) == ("PAT-000123", "HOSP")
    assert message.placer_order_number == message.filler_order_number == "ACC-2025-0042"
    assert message.universal_service == Code("pe", codes.LOCAL_SYSTEM, "Test PE Detector")
    assert (message.priority, message.result_status) == ("S", "P")
    assert only(message, support.PULMONARY_EMBOLISM).coded_value() == codes.PRESENT
    assert only(message, codes.FINDING, "1").coded_value() == support.PULMONARY_EMBOLISM
    assert only(message, codes.FINDING_SITE, "1").coded_value() == support.RIGHT_LOWER_LOBE
    assert only(message, support.LATERALITY, "1").coded_value() == support.RIGHT
    certainty = only(message, codes.CERTAINTY_OF_FINDING, "1")
    assert (certainty.value_type, certainty.value, certainty.units) == ("NM", "93", codes.PERCENT)
    assert only(message, codes.WORKLIST_PRIORITY).coded_value() == hl7.TQ1_PRIORITIES[Priority.STAT]
    assert only(message, codes.PRIORITY_FLAG).coded_value() == hl7.YES
    assert only(message, codes.PRIORITY_REASON).value == notification.decision.reason
    assert only(message, codes.ALGORITHM_NAME).value == "Test PE Detector"
    assert only(message, codes.ALGORITHM_VERSION).value == "1.2.0"
    assert only(message, codes.AI_STATEMENT).value.startswith("AI-generated result, not verified")
    assert only(message, codes.STUDY_INSTANCE_UID).value == support.STUDY.study_instance_uid
    assert not message.rows(codes.OUTCOME_STATEMENT)
    assert {row.status for row in message.observations} == {"P"}


def test_nodule_measurements_keep_their_ucum_units() -> None:
    notification = support.notification(
        support.positive(support.nodule(12.5, 0.875), probability=0.9),
        support.NODULE_DETECTOR,
    )

    message = round_trip(notification)

    long_axis = only(message, Code("103339001", "SCT", "Long axis"), "1")
    assert (long_axis.value, long_axis.units) == ("12.5", Code("mm", "UCUM", "millimeter"))
    assert only(message, codes.CERTAINTY_OF_FINDING, "1").value == "87.5"
    assert only(message, codes.CERTAINTY_OF_FINDING, "").value == "90"
    assert only(message, codes.TRACKING_IDENTIFIER, "1").value == "Nodule 1"
    assert message.priority == "A"
    assert only(message, codes.AI_STATEMENT).value.endswith("Not for clinical use.")


def test_negative_result_states_absent_and_no_flag() -> None:
    message = round_trip(support.notification(support.NEGATIVE))

    assert only(message, support.PULMONARY_EMBOLISM).coded_value() == codes.ABSENT
    assert only(message, codes.PRIORITY_FLAG).coded_value() == hl7.NO
    assert message.priority == "R"
    assert not message.rows(codes.FINDING)


def test_not_assessed_states_undetermined_and_why() -> None:
    message = round_trip(support.notification(support.NOT_ASSESSED))

    assert only(message, support.PULMONARY_EMBOLISM).coded_value() == codes.UNDETERMINED
    assert only(message, codes.OUTCOME_STATEMENT).value == "Not assessed: slices too thick (5 mm)"
    assert only(message, codes.PRIORITY_REASON).value.startswith("AI: PE not assessed: slices")


def test_failure_has_no_verdict_value_and_status_x() -> None:
    message = round_trip(support.notification(AlgorithmFailure("model crashed")))

    verdict = only(message, support.PULMONARY_EMBOLISM)
    assert (verdict.value, verdict.status) == ("", "X")
    assert only(message, codes.OUTCOME_STATEMENT).value == "Algorithm failed: model crashed"


def test_text_with_hl7_delimiters_survives_the_round_trip() -> None:
    awkward = "A|B^C&D~E\\F\\G"
    study = dataclasses.replace(
        support.STUDY, accession_number="ACC|^&~\\1", patient_id=awkward, issuer_of_patient_id="I&J"
    )
    outcome = AlgorithmResult(Verdict.NOT_ASSESSED, reason=f"odd {awkward} text")

    message = round_trip(support.notification(outcome, study=study))

    assert (message.patient_id, message.patient_id_authority) == (awkward, "I&J")
    assert message.placer_order_number == "ACC|^&~\\1"
    assert only(message, codes.OUTCOME_STATEMENT).value == f"Not assessed: odd {awkward} text"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"])))
def test_escape_and_unescape_are_inverse(text: str) -> None:
    assert hl7.unescape_text(hl7.escape_text(text)) == text


def test_control_id_is_stable_per_notification_and_fits_msh_10() -> None:
    first = hl7.message_control_id("result-1")

    assert first == hl7.message_control_id("result-1")
    assert first != hl7.message_control_id("result-2")
    assert len(first) == 20


def test_person_name_moves_dicom_prefix_and_suffix_to_their_hl7_places() -> None:
    assert hl7.person_name("Muster^Erika^Maria^Dr.^PhD") == "Muster^Erika^Maria^PhD^Dr."
    assert hl7.person_name("Yamada^Tarou=山田^太郎") == "Yamada^Tarou"
    assert hl7.person_name("") == ""


def test_study_without_patient_id_is_refused() -> None:
    study = dataclasses.replace(support.STUDY, patient_id="")

    with pytest.raises(hl7.Hl7Error, match="PatientID"):
        hl7.build_oru_r01(support.notification(support.NEGATIVE, study=study), CONFIG)


def test_reading_refuses_a_message_that_breaks_the_oru_r01_structure() -> None:
    er7 = hl7.build_oru_r01(support.notification(support.NEGATIVE), CONFIG)
    without_obr = "\r".join(s for s in er7.split("\r") if not s.startswith("OBR"))

    with pytest.raises(hl7.Hl7Error, match="ORU"):
        hl7.parse_oru_r01(without_obr)


def test_ack_round_trip_keeps_code_control_id_and_error_text() -> None:
    er7 = hl7.build_oru_r01(support.notification(support.NEGATIVE), CONFIG)

    accepted = hl7.parse_ack(hl7.build_ack(er7, "AA"))
    refused = hl7.parse_ack(hl7.build_ack(er7, "AE", "unknown order | try later"))

    assert accepted.accepted and accepted.control_id == hl7.message_control_id("result-1")
    assert (refused.code, refused.accepted) == ("AE", False)
    assert "unknown order | try later" in refused.text


def test_ack_of_an_older_hl7_version_is_read() -> None:
    ack = "MSH|^~\\&|RIS|X|RADROUTER|Y|20250101000000||ACK|42|P|2.3\rMSA|AR|ABC|Unsupported message type"

    answer = hl7.parse_ack(ack)

    assert (answer.code, answer.control_id, answer.text) == (
        "AR",
        "ABC",
        "Unsupported message type",
    )


def test_answer_without_msa_is_not_an_acknowledgement() -> None:
    with pytest.raises(hl7.Hl7Error):
        hl7.parse_ack("MSH|^~\\&|RIS|X|RADROUTER|Y|20250101000000||ACK|42|P|2.5.1")
    with pytest.raises(hl7.Hl7Error):
        hl7.parse_ack("HTTP/1.1 400 Bad Request")


def test_long_free_text_is_shortened_in_st_and_kept_whole_in_tx() -> None:
    reason = "scanner " * 100
    message = round_trip(support.notification(AlgorithmResult(Verdict.NOT_ASSESSED, reason=reason)))

    short = only(message, codes.PRIORITY_REASON).value
    assert len(short) <= hl7.ST_LENGTH and short.endswith("...")
    assert only(message, codes.OUTCOME_STATEMENT).value == f"Not assessed: {reason}"


def test_configured_authority_wins_and_a_too_long_issuer_is_left_out() -> None:
    long_issuer = dataclasses.replace(support.STUDY, issuer_of_patient_id="I" * 21)
    configured = CONFIG.model_copy(update={"patient_id_authority": "MPI"})

    from_config = hl7.parse_oru_r01(
        hl7.build_oru_r01(support.notification(support.NEGATIVE), configured)
    )
    left_out = round_trip(support.notification(support.NEGATIVE, study=long_issuer))

    assert from_config.patient_id_authority == "MPI"
    assert (left_out.patient_id, left_out.patient_id_authority) == ("PAT-000123", "")


def test_validation_errors_do_not_quote_patient_data() -> None:
    study = dataclasses.replace(support.STUDY, patient_name="Verylongfamilyname" * 12)

    with pytest.raises(hl7.Hl7Error) as caught:
        hl7.build_oru_r01(support.notification(support.NEGATIVE, study=study), CONFIG)

    assert "longer than its maximum of" in str(caught.value)
    assert "Verylong" not in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab |^&~\\"), max_size=700), st.integers(5, 60))
def test_text_lines_fit_the_limit_and_join_back(text: str, limit: int) -> None:
    lines = hl7.text_lines(text, limit)

    assert "".join(lines) == text
    assert all(len(hl7.escape_text(line)) <= limit for line in lines)
    assert len(hl7.escape_text(hl7.fit(text, limit))) <= limit


def test_control_characters_never_reach_the_wire() -> None:
    outcome = AlgorithmResult(Verdict.NOT_ASSESSED, reason="bad\x0bframe\x1cend\x00\nnext")

    er7 = hl7.build_oru_r01(support.notification(outcome), CONFIG)

    assert not set(er7) & {"\x0b", "\x1c", "\x00", "\n"}
    statement = only(hl7.parse_oru_r01(er7), codes.OUTCOME_STATEMENT).value
    assert statement == "Not assessed: bad frame end  next"
