"""radrouter's own C-FIND and C-MOVE are recorded with what was asked and how it ended, and
the responses pass through unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from router.audit.dimse import AuditedAssociation
from router.audit.events import AuditEvent, QuerySent, RemoteNode, RetrieveRequested

FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
PACS = RemoteNode("PACS", "10.0.0.5", 104)


@dataclass
class _Status:
    Status: int
    NumberOfCompletedSuboperations: int = 0


class _Association:
    """A pynetdicom association as far as the wrapper uses it."""

    is_established = True

    def __init__(self, statuses: list[_Status]) -> None:
        self.statuses = statuses

    def send_c_find(self, _identifier: Dataset, _model: Any) -> Iterator[tuple[Any, Any]]:
        for status in self.statuses:
            yield status, Dataset() if status.Status == 0xFF00 else None

    def send_c_move(
        self, _identifier: Dataset, _destination: str, _model: Any
    ) -> Iterator[tuple[Any, Any]]:
        for status in self.statuses:
            yield status, None


def _wrapped(statuses: list[_Status]) -> tuple[AuditedAssociation, list[AuditEvent]]:
    recorded: list[AuditEvent] = []

    class Recorder:
        def record(self, event: AuditEvent) -> None:
            recorded.append(event)

    return AuditedAssociation(
        _Association(statuses), Recorder(), PACS, "RADROUTER", "PID-1"
    ), recorded


def _query() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = "1.2.3"
    return query


def test_a_find_is_recorded_with_its_identifier_and_passes_responses_through() -> None:
    assoc, recorded = _wrapped([_Status(0xFF00), _Status(0xFF00), _Status(0x0000)])
    responses = list(assoc.send_c_find(_query(), FIND_MODEL))
    assert len(responses) == 3 and assoc.is_established
    (event,) = recorded
    assert isinstance(event, QuerySent)
    assert (event.error, event.study_uid, event.patient_id) == (None, "1.2.3", "PID-1")
    assert event.sop_class_uid == FIND_MODEL and b"SERIES" in event.query


def test_a_failed_find_is_recorded_as_failed() -> None:
    assoc, recorded = _wrapped([_Status(0xA700)])
    list(assoc.send_c_find(_query(), FIND_MODEL))
    (event,) = recorded
    assert isinstance(event, QuerySent) and event.error == "C-FIND ended with 0xA700"


def test_a_move_is_recorded_with_what_it_sent() -> None:
    assoc, recorded = _wrapped([_Status(0xFF00, 5), _Status(0x0000, 12)])
    list(assoc.send_c_move(_query(), "RADROUTER", "1.2.840.10008.5.1.4.1.2.2.2"))
    (event,) = recorded
    assert isinstance(event, RetrieveRequested)
    assert (event.completed, event.error, event.destination_ae) == (12, None, "RADROUTER")
