"""The trail is an observer: recording never blocks or raises, nothing is lost silently,
associations are folded per study, repeated reads written once per window."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from router.audit.events import (
    Actor,
    AssociationEnded,
    InstanceReceived,
    QueueKind,
    ReadKind,
    RetryRequested,
    StudyRead,
)
from router.audit.log import AuditLog
from router.audit.messages import AuditMessage, EventId, EventType, Outcome, SopClassCount
from router.audit.trail import AuditTrail
from router.service import wait_for
from tests.router.audit.test_messages import CT, SR, STUDY, composer

OTHER_STUDY = "1.2.826.0.1.3680043.8.498.2"


def _trail(folder: Path, *, queue_size: int = 100, repeat_window_s: float = 300) -> AuditTrail:
    built = composer()
    log = AuditLog(folder, 10**6, lambda p, d: built.log_started(1.0, p, d).to_xml())
    return AuditTrail(log, built, queue_size=queue_size, repeat_window_s=repeat_window_s)


def _messages(trail: AuditTrail) -> list[AuditMessage]:
    """What the trail wrote, without each file's opening message."""
    return [
        m
        for m in trail.log.messages()
        if EventType.AUDIT_RECORDING_STARTED.value not in m.event_types
    ]


def _stored(study: str | None, sop_class: str, stored: bool = True) -> InstanceReceived:
    return InstanceReceived("assoc-1", "CT1", "RADROUTER", "10.0.0.9", study, sop_class, stored)


def test_an_association_is_one_message_per_study_with_its_sop_classes(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    trail.start()
    for event in (
        _stored(STUDY, CT),
        _stored(STUDY, CT),
        _stored(STUDY, SR),
        _stored(STUDY, CT, stored=False),
        _stored(OTHER_STUDY, CT),
    ):
        trail.record(event)
    assert trail.flush()
    assert _messages(trail) == []  # nothing until the association ends
    trail.record(AssociationEnded("assoc-1", "released"))
    trail.stop()
    first, second = _messages(trail)
    assert first.event_id is EventId.INSTANCES_TRANSFERRED
    assert first.study_uids() == (STUDY,)
    assert first.objects[0].sop_classes == (SopClassCount(CT, 2), SopClassCount(SR, 1))
    assert first.outcome is Outcome.MINOR_FAILURE
    assert first.outcome_description == "1 of 4 instance(s) refused"
    assert second.study_uids() == (OTHER_STUDY,) and second.outcome is Outcome.SUCCESS
    assert first.requestors()[0].user_id == "CT1"


def test_a_full_queue_neither_blocks_nor_raises_and_the_loss_is_written(tmp_path: Path) -> None:
    trail = _trail(tmp_path, queue_size=2)
    started = time.monotonic()
    for _ in range(10):  # the writer is not running: only two fit
        trail.record(StudyRead(Actor("a"), STUDY, ReadKind.STUDY_VIEW, time.time()))
    assert time.monotonic() - started < 0.5
    trail.start()
    trail.stop()
    messages = _messages(trail)
    lost = [m for m in messages if EventType.AUDIT_RECORDING_STOPPED.value in m.event_types]
    assert len(lost) == 1 and lost[0].outcome_description is not None
    assert lost[0].outcome_description.startswith("8 audit message(s) lost")


def test_a_repeated_read_is_written_once_per_window(tmp_path: Path) -> None:
    trail = _trail(tmp_path, repeat_window_s=300)
    trail.start()
    now = time.time()
    for at, user in ((now, "a"), (now + 10, "a"), (now + 20, "b"), (now + 400, "a")):
        trail.record(StudyRead(Actor(user, (), "10.0.0.1"), STUDY, ReadKind.WORKLIST_ENTRY, at))
    trail.record(StudyRead(Actor("a", (), "10.0.0.1"), STUDY, ReadKind.KEY_IMAGE, now + 30))
    trail.stop()
    reads = [(m.requestors()[0].user_id, m.event_types[0].code) for m in _messages(trail)]
    assert reads == [
        ("a", "worklist-entry"),
        ("b", "worklist-entry"),
        ("a", "worklist-entry"),
        ("a", "key-image"),
    ]


class _FlakyLog(AuditLog):
    """Fails its first ``failures`` writes, as a full disk would."""

    failures = 2

    def append(self, lines: Sequence[bytes], *, rotate: bool = True) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().append(lines, rotate=rotate)


def test_a_failed_write_is_kept_and_written_later(tmp_path: Path) -> None:
    built = composer()
    log = _FlakyLog(tmp_path, 10**6, lambda p, d: built.log_started(1.0, p, d).to_xml())
    trail = AuditTrail(log, built)
    trail.start()
    trail.record(StudyRead(Actor("a"), STUDY, ReadKind.STUDY_VIEW, time.time()))
    assert wait_for(lambda: len(_messages(trail)) == 1, 10)
    trail.stop()


def test_stop_writes_what_an_open_association_stored(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    trail.start()
    trail.record(_stored(STUDY, CT))
    trail.stop()
    (message,) = _messages(trail)
    assert message.outcome_description == "association open at shutdown"


def test_an_event_that_cannot_be_composed_does_not_stop_the_others(tmp_path: Path) -> None:
    trail = _trail(tmp_path)

    def broken(_queue: QueueKind, _id: int) -> str | None:
        raise RuntimeError("database is locked")

    trail.composer._study_of_item = broken
    trail.start()
    trail.record(RetryRequested(Actor("a"), QueueKind.JOB, 1, 1))
    trail.record(StudyRead(Actor("a"), STUDY, ReadKind.STUDY_VIEW))
    trail.stop()
    assert [m.event_id for m in _messages(trail)] == [EventId.INSTANCES_ACCESSED]
