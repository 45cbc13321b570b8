"""The notify stage: each result's priority decision -> worklist flag -> HL7 / FHIR deliveries.

Hand-offs are rows in SQLite, as in every stage. The worker queues one ``notify_queue`` row
per result (and the queue one per finally failed job); this stage decides the priority (a pure
function of the result, the study header and the policy), records the flag that radrouter's
own worklist shows, and queues one delivery per configured channel. Deliveries are retried
with the channel's back-off and dead-lettered after its budget (or at once when the receiver
rejected the message for good): kept, visible in the API and ``radrouter status``, and
retried by command. Patient data needed by a RIS (name, ID) is read from the spool when a
message is built and never stored in the database or logged.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import dcmread

from algorithms.contract import AlgorithmInfo
from algorithms.finding_words import KeyImage
from config.schema import Priority, RouterConfig
from router.assemble.study_state import reopen_study, settle_study
from router.deliver.outcome_codec import key_images_from_json, result_from_json
from router.logs import log_safe
from router.patient_values import PatientValues
from router.polling_stage import PollingStage
from router.store.database import Connection, Database, Row
from router.store.queue import (
    Claim,
    Claimer,
    FailOutcome,
    LeaseKeeper,
    QueueTable,
    RetryBudget,
    SqlWorkQueue,
)
from router.worklist_page.store import record_flag
from worklist.channel import Channel, DeliveryError
from worklist.facts import AlgorithmFailure, Outcome, StudyFacts
from worklist.notification import Notification, build_notification

LOGGER = logging.getLogger(__name__)

HEADER_KEYWORDS = (
    "StudyInstanceUID",
    "AccessionNumber",
    "Modality",
    "RequestedProcedurePriority",
    "StudyDate",
    "StudyTime",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
)
"""What a notification needs of the study header (read from the spool, never stored)."""

ChannelFactory = Callable[[RouterConfig], Mapping[str, Channel]]

DELIVERIES = QueueTable("deliveries", ready="pending", claimed="sending", done="done", dead="dead")


def queue_result(conn: Connection, study_uid: str, job_id: int, result_id: int) -> None:
    """Queue a result for the notify stage, inside the caller's transaction."""
    conn.execute(
        "INSERT OR IGNORE INTO notify_queue (study_uid, job_id, result_id, state, created_at) "
        "VALUES (?, ?, ?, 'pending', ?)",
        (study_uid, job_id, result_id, time.time()),
    )


def queue_failure(db: Database, study_uid: str, job_id: int) -> None:
    """Queue a finally failed job: the worklist states the failure, never a silent negative."""
    db.connection().execute(
        "INSERT INTO notify_queue (study_uid, job_id, result_id, state, created_at) "
        "VALUES (?, ?, NULL, 'pending', ?)",
        (study_uid, job_id, time.time()),
    )


class AlgorithmLookup(Protocol):
    """Who an algorithm is, by name: the registry, or ``router.external.declared.AlgorithmInfos``
    (which also knows the configuration's external algorithms)."""

    def __contains__(self, name: object) -> bool: ...

    def info(self, name: str) -> AlgorithmInfo: ...


class Notifier(PollingStage):
    name = "notifier"

    """One thread: decides queued results, then delivers to channels with retries."""

    def __init__(
        self,
        db: Database,
        registry: AlgorithmLookup,
        config: Callable[[], RouterConfig],
        channels: ChannelFactory,
        on_flag: Callable[[str, float], None] | None = None,
        on_delivered: Callable[[str, str, float], None] | None = None,
        *,
        claimer: Claimer | None = None,
        leases: LeaseKeeper | None = None,
    ) -> None:
        super().__init__()
        self.db = db
        self.registry = registry
        self._config = config
        self._channels = channels
        self._on_flag = on_flag
        self._on_delivered = on_delivered
        self._channel_cache: tuple[object, Mapping[str, Channel]] | None = None
        self._leases = leases or LeaseKeeper()
        self.items = SqlWorkQueue(
            db, DELIVERIES, claimer or Claimer.ephemeral(), self._budget, on_dead=self._dead
        )

    # --- lifecycle --------------------------------------------------------------------------

    def reclaim_previous_boot(self) -> int:
        return self.items.reclaim_previous_boot()

    def retry_dead(self, delivery_id: int | None = None) -> int:
        """Requeue one dead-lettered delivery, or all of them, with a fresh retry budget."""
        count = len(self.items.requeue_dead(delivery_id, reopen_study))
        self.wake()
        return count

    def _budget(self, row: Row) -> RetryBudget:
        channel = self.channels().get(row["channel"])
        return channel.retry if channel is not None else NO_RETRY

    def run_once(self, now: float | None = None) -> bool:
        """Decide one queued result, or else send one ready delivery. False when idle."""
        return self._decide_one() or self._deliver_one(time.time() if now is None else now)

    # --- deciding ---------------------------------------------------------------------------

    def _decide_one(self) -> bool:
        row = self.db.query_one(
            "SELECT * FROM notify_queue WHERE state = 'pending' ORDER BY id LIMIT 1"
        )
        if row is None:
            return False
        try:
            self._decide(row)
        except Exception as exc:  # boundary: one bad row must not stop the worklist
            LOGGER.exception(
                "notification %d (study %s, job %d): could not decide",
                row["id"],
                row["study_uid"],
                row["job_id"],
            )
            detail = PatientValues.of_study(self.db, row["study_uid"]).redact(str(exc))
            self.db.record_event("notify_failed", row["study_uid"], row["job_id"], detail)
            self._finish_queue_row(row, [])
        settle_study(self.db, row["study_uid"])
        return True

    def _decide(self, row: Row) -> None:
        notification, job = self._notification(row)
        if notification is None or job is None:
            self._finish_queue_row(row, [])
            return
        decision = notification.decision
        study = self.db.query_one(
            "SELECT last_received_at FROM studies WHERE study_uid = ?", (row["study_uid"],)
        )
        last_image_at = float(study["last_received_at"]) if study is not None else time.time()
        flagged_at = max(time.time(), last_image_at)
        outcome = notification.outcome
        record_flag(
            self.db,
            study_uid=row["study_uid"],
            result_id=row["result_id"],
            algorithm=job["algorithm"],
            algorithm_version=notification.algorithm.version,
            priority=decision.priority,
            reason=decision.reason,
            verdict="failed" if isinstance(outcome, AlgorithmFailure) else outcome.verdict,
            raised=decision.flag_raised,
            last_image_at=last_image_at,
            flagged_at=flagged_at,
            job_id=int(row["job_id"]),
        )
        self.db.record_event(
            "flag_raised" if decision.flag_raised else "flag_recorded",
            row["study_uid"],
            int(row["job_id"]),
            f"{job['algorithm']}: {decision.priority.value}",
        )
        if self._on_flag is not None:
            self._on_flag(job["algorithm"], flagged_at - last_image_at)
        self._finish_queue_row(row, sorted(self.channels()))

    def _finish_queue_row(self, row: Row, channels: list[str]) -> None:
        now = time.time()
        with self.db.transaction() as conn:
            for channel in channels:
                conn.execute(
                    "INSERT OR IGNORE INTO deliveries (notify_id, study_uid, channel, state, "
                    "created_at) VALUES (?, ?, ?, 'pending', ?)",
                    (row["id"], row["study_uid"], channel, now),
                )
            conn.execute(
                "UPDATE notify_queue SET state = 'done', finished_at = ? WHERE id = ?",
                (now, row["id"]),
            )

    def _notification(self, row: Row) -> tuple[Notification | None, Row | None]:
        """Rebuild the notification of a queue row from the database and the spool."""
        job = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (row["job_id"],))
        if job is None or job["algorithm"] not in self.registry:
            LOGGER.error(
                "notification %d (study %s, job %d): job or algorithm no longer known",
                row["id"],
                row["study_uid"],
                row["job_id"],
            )
            return None, job
        info = self.registry.info(job["algorithm"])
        outcome: Outcome
        created: float
        notification_id: str
        key_images: tuple[KeyImage | None, ...] = ()
        if row["result_id"] is not None:
            result = self.db.query_one("SELECT * FROM results WHERE id = ?", (row["result_id"],))
            if result is None:
                return None, job
            summary = json.loads(result["summary"] or "{}")
            outcome = result_from_json(summary["outcome"])
            key_images = key_images_from_json(summary["outcome"])
            created = float(result["created_at"])
            notification_id = str(result["sop_instance_uid"])
        else:
            outcome = AlgorithmFailure(job["error"] or "the algorithm run failed")
            created = float(job["finished_at"] or time.time())
            notification_id = f"job-{job['id']}-{job['study_uid']}"[:128]
        facts = StudyFacts.from_header(self._header(job["series_uid"], job["study_uid"]))
        config = self._config()
        notification = build_notification(
            notification_id,
            facts,
            info,
            outcome,
            Priority(job["priority"]),
            config.worklist.priority_policy,
            datetime.datetime.fromtimestamp(created, datetime.UTC),
            key_images=key_images,
        )
        return notification, job

    def _header(self, series_uid: str, study_uid: str) -> dict[str, str]:
        row = self.db.query_one(
            "SELECT path FROM instances WHERE series_uid = ? LIMIT 1", (series_uid,)
        ) or self.db.query_one(
            "SELECT path FROM instances WHERE study_uid = ? LIMIT 1", (study_uid,)
        )
        header: dict[str, str] = {"StudyInstanceUID": study_uid}
        if row is None:
            return header
        ds = dcmread(
            Path(row["path"]), stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS)
        )
        for keyword in HEADER_KEYWORDS:
            value = ds.get(keyword)
            if value is not None and keyword != "StudyInstanceUID":
                header[keyword] = str(value)
        return header

    # --- delivering -------------------------------------------------------------------------

    def channels(self) -> Mapping[str, Channel]:
        """The configured channels, rebuilt when the notify section of the config changes."""
        notify = self._config().worklist.notify
        if self._channel_cache is None or self._channel_cache[0] != notify:
            self._channel_cache = (notify, self._channels(self._config()))
        return self._channel_cache[1]

    def _deliver_one(self, now: float) -> bool:
        claim = self.items.claim(now)
        if claim is None:
            return False
        try:
            with self._leases.held(self.items, claim):
                self._deliver(claim)
        finally:
            settle_study(self.db, claim.row["study_uid"])
        return True

    def _deliver(self, claim: Claim) -> None:
        row = claim.row
        channel = self.channels().get(row["channel"])
        if channel is None:
            self.items.fail(
                claim, f"channel {row['channel']!r} is no longer configured", retryable=False
            )
            return
        queued = self.db.query_one("SELECT * FROM notify_queue WHERE id = ?", (row["notify_id"],))
        try:
            if queued is None:
                raise DeliveryError(row["channel"], "its notification is gone", retryable=False)
            notification, _job = self._notification(queued)
            if notification is None:
                raise DeliveryError(row["channel"], "its result is gone", retryable=False)
            receipt = channel.deliver(notification)
        except DeliveryError as exc:
            self._failed(claim, channel, exc.reason, exc.retryable)
            return
        except (OSError, ValueError) as exc:
            self._failed(claim, channel, f"{type(exc).__name__}: {exc}", True)
            return
        finished = time.time()
        with self.db.transaction() as conn:
            done = self.items.complete(
                conn,
                claim,
                {"message_id": receipt.message_id, "acknowledgement": receipt.acknowledgement},
            )
        if not done:
            LOGGER.warning(
                "delivery %d (study %s): claim lost while sending; left to its new owner",
                claim.id,
                row["study_uid"],
            )
            return
        self.db.record_event(
            "delivery_done",
            row["study_uid"],
            detail=f"delivery {row['id']} via {row['channel']}: {receipt.acknowledgement}",
        )
        study = self.db.query_one(
            "SELECT last_received_at FROM studies WHERE study_uid = ?", (row["study_uid"],)
        )
        if self._on_delivered is not None and study is not None:
            algorithm = notification.algorithm.name
            self._on_delivered(
                algorithm, row["channel"], finished - float(study["last_received_at"])
            )

    def _failed(self, claim: Claim, channel: Channel, error: str, retryable: bool) -> None:
        row = claim.row
        policy = channel.retry
        if self.items.fail(claim, error, retryable=retryable) is FailOutcome.RETRY:
            # The error may quote the receiver's reply, which can echo message content:
            # bounded and made safe (the full text is in the delivery's row, not the log).
            LOGGER.warning(
                "delivery %d (study %s) via %s failed (attempt %d of %d), retry in %.0f s: %s",
                row["id"],
                row["study_uid"],
                row["channel"],
                claim.attempts,
                policy.max_attempts,
                policy.delay_s(claim.attempts),
                log_safe(error, 120),
            )

    def _dead(self, row: Row, error: str) -> None:
        """After the channel's budget, a permanent rejection or an interrupted last attempt."""
        self.db.record_event(
            "delivery_dead_letter", row["study_uid"], detail=f"delivery {row['id']}: {error}"
        )
        LOGGER.error(
            "delivery %d (study %s) via %s dead-lettered: %s",
            row["id"],
            row["study_uid"],
            row["channel"],
            log_safe(error, 120),
        )
        settle_study(self.db, row["study_uid"])


@dataclass(frozen=True)
class _NoRetry:
    """The budget of a delivery whose channel is no longer configured: one attempt."""

    max_attempts: int = 1

    def delay_s(self, attempts: int) -> float:
        return 0.0


NO_RETRY = _NoRetry()
