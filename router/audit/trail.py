"""The audit trail: an observer that turns recorded events into messages in its own thread.

``record`` only puts the event in a bounded queue and returns; it never blocks and never
raises. One writer thread takes what is queued, composes the messages (reading a study's
patient from the spool when needed), appends them to the local log in one durable write per
batch and wakes the syslog forwarder. Should the queue ever be full (the disk stalled), the
events that do not fit are counted and a "messages lost" alert is written as soon as the
writer can: a gap is stated, never silent. Should a write fail, the batch is kept and tried
again.

Two kinds of events are folded before they are written:

* the instances an association stores are gathered per study and written when it ends (one
  DICOM Instances Transferred per study and association, with the SOP classes and counts);
* a read a person repeats (the worklist page polls, a key image is stepped through) is
  written once per ``repeat_window_s`` per person, study and kind of read.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from router.audit.compose import Composer, ReceivedStudy
from router.audit.events import (
    AssociationEnded,
    AuditEvent,
    InstanceReceived,
    StudyRead,
)
from router.audit.log import AuditLog
from router.audit.messages import AuditMessage
from router.audit.syslog import SyslogForwarder

LOGGER = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10_000
BATCH = 500
RETRY_WRITE_S = 1.0


@dataclass
class _Association:
    calling_ae: str
    called_ae: str
    host: str
    stored: dict[str | None, dict[str, int]] = field(default_factory=dict)
    refused: dict[str | None, int] = field(default_factory=dict)

    def add(self, event: InstanceReceived) -> None:
        if event.stored:
            by_class = self.stored.setdefault(event.study_uid, {})
            by_class[event.sop_class_uid] = by_class.get(event.sop_class_uid, 0) + 1
        else:
            self.stored.setdefault(event.study_uid, {})
            self.refused[event.study_uid] = self.refused.get(event.study_uid, 0) + 1

    def studies(self, state: str, at: float) -> list[ReceivedStudy]:
        return [
            ReceivedStudy(
                calling_ae=self.calling_ae,
                called_ae=self.called_ae,
                host=self.host,
                study_uid=study_uid,
                sop_classes=sop_classes,
                refused=self.refused.get(study_uid, 0),
                association_state=state,
                at=at,
            )
            for study_uid, sop_classes in self.stored.items()
        ]


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


class AuditTrail:
    """``AuditRecorder`` writing the local log (and, through it, the syslog collector)."""

    def __init__(
        self,
        log: AuditLog,
        composer: Composer,
        *,
        forwarder: SyslogForwarder | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        repeat_window_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.composer = composer
        self.forwarder = forwarder
        self.repeat_window_s = repeat_window_s
        self._clock = clock
        self._queue: queue.Queue[AuditEvent | _Flush | None] = queue.Queue(queue_size)
        self._lost = 0
        self._lost_lock = threading.Lock()
        self._associations: dict[str, _Association] = {}
        self._last_read: dict[tuple[str, str, str | None, str], float] = {}
        self._unwritten: list[bytes] = []
        self._thread: threading.Thread | None = None

    # --- the recorder ---------------------------------------------------------------------

    def record(self, event: AuditEvent) -> None:
        """Queue ``event``; never blocks, never raises (an observer)."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lost_lock:
                self._lost += 1
                first = self._lost == 1
            if first:
                LOGGER.error("audit queue full: audit events are being lost (counted)")
        except Exception:  # an observer never breaks its caller
            LOGGER.exception("audit event could not be queued")

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()
        if self.forwarder is not None:
            self.forwarder.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write everything queued (open associations included), then stop."""
        if self._thread is not None:
            self._queue.put(None, timeout=timeout_s)
            self._thread.join(timeout=timeout_s)
            self._thread = None
        if self.forwarder is not None:
            self.forwarder.stop()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything recorded so far is in the log (and the forwarder woken)."""
        if self._thread is None:
            return False
        done = threading.Event()
        try:
            self._queue.put(_Flush(done), timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    # --- the writer -----------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items: list[AuditEvent | _Flush | None] = []
            with contextlib.suppress(queue.Empty):
                items.append(self._queue.get(timeout=RETRY_WRITE_S))
            while len(items) < BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            flushes: list[_Flush] = []
            lines = list(self._unwritten)
            for item in items:
                if item is None:
                    stopping = True
                elif isinstance(item, _Flush):
                    flushes.append(item)
                else:
                    lines.extend(self._lines(item))
            if stopping:
                lines.extend(self._close_all_associations())
            lines.extend(self._lost_alert())
            self._write(lines)
            for flush in flushes:
                flush.done.set()
            self._prune()

    def _lines(self, event: AuditEvent) -> list[bytes]:
        try:
            return [message.to_xml() for message in self._messages(event)]
        except Exception:  # boundary: one event that cannot be composed is logged, not fatal
            LOGGER.exception("audit event %s could not be composed", type(event).__name__)
            return []

    def _messages(self, event: AuditEvent) -> list[AuditMessage]:
        if isinstance(event, InstanceReceived):
            association = self._associations.get(event.association_id)
            if association is None:
                association = self._associations[event.association_id] = _Association(
                    event.calling_ae, event.called_ae, event.host
                )
            association.add(event)
            return []
        if isinstance(event, AssociationEnded):
            ended = self._associations.pop(event.association_id, None)
            if ended is None:
                return []  # it stored nothing
            return [self.composer.received(s) for s in ended.studies(event.state, event.at)]
        if isinstance(event, StudyRead) and self._repeated(event):
            return []
        return self.composer.compose(event)

    def _repeated(self, event: StudyRead) -> bool:
        if self.repeat_window_s <= 0:
            return False
        key = (event.kind.value, event.actor.user, event.actor.host, event.study_uid)
        last = self._last_read.get(key)
        if last is not None and event.at - last < self.repeat_window_s:
            return True
        self._last_read[key] = event.at
        return False

    def _prune(self) -> None:
        if len(self._last_read) < 10_000:
            return
        horizon = self._clock() - self.repeat_window_s
        self._last_read = {k: at for k, at in self._last_read.items() if at >= horizon}

    def _close_all_associations(self) -> list[bytes]:
        """At stop: what open associations stored so far is written, not forgotten."""
        lines: list[bytes] = []
        now = self._clock()
        for association_id in list(self._associations):
            lines.extend(self._lines(AssociationEnded(association_id, "open at shutdown", now)))
        return lines

    def _lost_alert(self) -> list[bytes]:
        with self._lost_lock:
            lost, self._lost = self._lost, 0
        if not lost:
            return []
        message = self.composer.lost(self._clock(), lost, "the audit queue was full")
        return [message.to_xml()]

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            self._unwritten = []
            return
        try:
            self.log.append(lines)
        except Exception:  # boundary: kept and tried again at the next batch
            if not self._unwritten:
                LOGGER.exception(
                    "audit log %s could not be written; %d message(s) kept to try again",
                    self.log.folder,
                    len(lines),
                )
            self._unwritten = lines[-DEFAULT_QUEUE_SIZE:]
            if len(lines) > DEFAULT_QUEUE_SIZE:
                with self._lost_lock:
                    self._lost += len(lines) - DEFAULT_QUEUE_SIZE
            return
        self._unwritten = []
        if self.forwarder is not None:
            self.forwarder.wake()
