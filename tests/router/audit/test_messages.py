"""Every kind of audit message radrouter writes is valid against the DICOM schema, reads back
as it was written, and is one line."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from router.audit.compose import Composer, LocalNode, ReceivedStudy
from router.audit.events import (
    Actor,
    ApplicationStarted,
    ApplicationStopped,
    AssociationRefused,
    AuditEvent,
    ConfigChanged,
    FeedbackExported,
    FeedbackGiven,
    QuerySent,
    QueueKind,
    ReadKind,
    RemoteNode,
    RestrictedFunctionRefused,
    RetrieveRequested,
    RetryRequested,
    SendFinished,
    SendStarted,
    StudyPurged,
    StudyRead,
    UserAuthenticated,
)
from router.audit.messages import (
    Action,
    ActiveParticipant,
    AuditMessage,
    AuditSource,
    EventId,
    EventType,
    ObjectIdType,
    ObjectRole,
    ObjectType,
    Outcome,
    ParticipantObject,
)
from router.audit.subjects import StudySubject
from tests.router.audit.schema import schema_errors

AT = 1_780_000_000.25
STUDY = "1.2.826.0.1.3680043.8.498.1"
PATIENT = "PID-0042"
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PACS = RemoteNode("PACS", "10.0.0.5", 104)
READER = Actor("dr.house", ("radiologist",), "10.0.0.77")


def composer() -> Composer:
    node = LocalNode("RADROUTER", "router.example", AuditSource("RADROUTER", "HOSP"), "svc", 4711)
    subjects = {STUDY: StudySubject(PATIENT, "ACC-1")}
    return Composer(node, subjects.get, lambda _queue, _id: STUDY)


EVENTS: dict[str, AuditEvent] = {
    "application start": ApplicationStarted(AT),
    "application stop": ApplicationStopped(AT),
    "association refused (called AE)": AssociationRefused(
        "PACS", "OTHER", "10.0.0.5", "called AE title 'OTHER' is not this node's", AT
    ),
    "send started": SendStarted(PACS, "RADROUTER", STUDY, {SR: 1}, AT),
    "send finished": SendFinished(PACS, "RADROUTER", STUDY, {SR: 1}, None, AT),
    "send failed": SendFinished(PACS, "RADROUTER", STUDY, {SR: 1}, "unreachable: refused", AT),
    "query": QuerySent(
        PACS,
        "RADROUTER",
        FIND,
        b"\x08\x00R\x00CS\x06\x00STUDY ",
        "1.2.840.10008.1.2.1",
        PATIENT,
        None,
        None,
        AT,
    ),
    "series query": QuerySent(
        PACS, "RADROUTER", FIND, b"\x00", "1.2.840.10008.1.2.1", PATIENT, STUDY, None, AT
    ),
    "retrieve": RetrieveRequested(PACS, "RADROUTER", "RADROUTER", "1.2.3.4", PATIENT, 20, None, AT),
    "study view": StudyRead(READER, STUDY, ReadKind.STUDY_VIEW, AT),
    "worklist entry": StudyRead(Actor.anonymous("127.0.0.1"), STUDY, ReadKind.WORKLIST_ENTRY, AT),
    "key image": StudyRead(READER, STUDY, ReadKind.KEY_IMAGE, AT),
    "feedback export": FeedbackExported(READER, (STUDY,), AT),
    "feedback": FeedbackGiven(READER, STUDY, 7, False, AT),
    "retry of one": RetryRequested(READER, QueueKind.DISPATCH, 3, 1, AT),
    "retry of all": RetryRequested(READER, QueueKind.DELIVERY, None, 0, AT),
    "config accepted": ConfigChanged(
        Path("/etc/radrouter/routing.yaml"), "admin", "-a: 1\n+a: 2\n", True, "", AT
    ),
    "config refused": ConfigChanged(
        Path("/etc/radrouter/routing.yaml"), "admin", "", False, "line 3: unknown key", AT
    ),
    "study purged": StudyPurged(STUDY, 131, "storage.keep_finished_days", AT),
    "login": UserAuthenticated(READER, True, True, "", AT),
    "logout": UserAuthenticated(READER, False, True, "", AT),
    "login refused": UserAuthenticated(Actor.anonymous("10.9.9.9"), True, False, "bad token", AT),
    "role refused": RestrictedFunctionRefused(READER, "403 role: POST /jobs/1/retry", AT),
}


def all_messages() -> dict[str, AuditMessage]:
    built = composer()
    messages: dict[str, AuditMessage] = {}
    for name, event in EVENTS.items():
        for index, message in enumerate(built.compose(event)):
            messages[f"{name} #{index + 1}"] = message
    received = ReceivedStudy("CT1", "RADROUTER", "10.0.0.9", STUDY, {CT: 120}, 0, "released", AT)
    messages["instances stored"] = built.received(received)
    refused = ReceivedStudy("CT1", "RADROUTER", "10.0.0.9", None, {}, 2, "aborted", AT)
    messages["instances refused, study unknown"] = built.received(refused)
    messages["log started"] = built.log_started(AT, None, None)
    messages["log continued"] = built.log_started(AT, "audit-000001.log", "ab" * 32)
    messages["messages lost"] = built.lost(AT, 12, "the audit queue was full")
    messages["audit log used"] = built.log_used(AT, READER, "/var/audit", "study=1.2.3")
    return messages


MESSAGES = all_messages()


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_kind_validates_against_the_dicom_schema(name: str) -> None:
    assert schema_errors(MESSAGES[name].to_xml()) == []


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_reads_back_as_written(name: str) -> None:
    message = MESSAGES[name]
    assert AuditMessage.from_xml(message.to_xml()) == message


def test_each_event_id_radrouter_uses_is_covered() -> None:
    used = {message.event_id for message in MESSAGES.values()}
    assert used == set(EventId)


def test_a_study_names_its_patient_by_id_with_the_roles_the_standard_gives() -> None:
    message = MESSAGES["study view #1"]
    study, patient = message.objects
    assert (study.object_id, study.type_code, study.role) == (
        STUDY,
        ObjectType.SYSTEM_OBJECT,
        ObjectRole.REPORT,
    )
    assert study.id_type.code == "110180" and study.accession_numbers == ("ACC-1",)
    assert (patient.object_id, patient.type_code, patient.role) == (
        PATIENT,
        ObjectType.PERSON,
        ObjectRole.PATIENT,
    )
    assert message.requestors()[0].user_id == "dr.house"


def test_a_refused_login_is_also_a_security_alert() -> None:
    assert MESSAGES["login refused #1"].event_id is EventId.USER_AUTHENTICATION
    assert MESSAGES["login refused #1"].outcome is Outcome.MINOR_FAILURE
    assert MESSAGES["login refused #2"].event_id is EventId.SECURITY_ALERT


def test_a_message_is_one_line_whatever_its_text_holds() -> None:
    message = composer().compose(
        ConfigChanged(Path("/x.yaml"), "a\x00b", "-x\n+y\r\n", False, "one\ntwo\x1b[31m", at=AT)
    )[0]
    xml = message.to_xml()
    assert b"\n" not in xml and b"\r" not in xml
    assert schema_errors(xml) == []
    back = AuditMessage.from_xml(xml)
    assert back.outcome_description is not None and "one\ntwo" in back.outcome_description
    assert back.objects[0].details[0][1] == b"-x\n+y\r\n"


def test_the_schema_check_rejects_what_the_standard_does_not_allow() -> None:
    xml = MESSAGES["study view #1"].to_xml()
    assert schema_errors(xml.replace(b'EventOutcomeIndicator="0"', b'EventOutcomeIndicator="1"'))
    assert schema_errors(xml.replace(b"originalText=", b"meaning="))


def test_a_participant_object_needs_a_name_or_a_query_not_both() -> None:
    with pytest.raises(ValueError, match="exactly one of name and query"):
        ParticipantObject(
            "1.2",
            ObjectIdType.STUDY_INSTANCE_UID.value,
            ObjectType.SYSTEM_OBJECT,
            ObjectRole.REPORT,
        )
    with pytest.raises(ValueError, match="exactly one of name and query"):
        ParticipantObject(
            "1.2",
            ObjectIdType.STUDY_INSTANCE_UID.value,
            ObjectType.SYSTEM_OBJECT,
            ObjectRole.REPORT,
            name="x",
            query=b"q",
        )


def test_a_message_needs_a_participant_and_an_aware_time() -> None:
    when = datetime.datetime(2026, 5, 1, tzinfo=datetime.UTC)
    source = AuditSource("RADROUTER")
    with pytest.raises(ValueError, match="active participant"):
        AuditMessage(EventId.QUERY, Action.EXECUTE, when, Outcome.SUCCESS, (), source)
    with pytest.raises(ValueError, match="timezone-aware"):
        AuditMessage(
            EventId.QUERY,
            Action.EXECUTE,
            when.replace(tzinfo=None),
            Outcome.SUCCESS,
            (ActiveParticipant("x", True),),
            source,
        )


def test_radrouter_event_types_use_a_private_coding_scheme() -> None:
    assert EventType.STUDY_VIEW.value.scheme.startswith("99")
