"""The job queue: stat before urgent before routine, oldest first within a lane, on the shared
durable queue (``router.store.queue``: leases, retries with back-off, dead letters).

A follow-up job is enqueued ``waiting``: it becomes ready only when the prior stage has
looked for its prior exam (``release_waiting``), so no worker ever waits on a PACS.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from config.schema import Priority, RetryPolicy
from router.store.database import JOBS_CHANNEL, Connection, Database, Row
from router.store.queue import (
    DEFAULT_LEASE_S,
    Claim,
    Claimer,
    DeadHandler,
    FailOutcome,
    InTransaction,
    QueueTable,
    RetryBudget,
    SqlWorkQueue,
)

JOBS = QueueTable(
    "jobs",
    ready="queued",
    claimed="running",
    done="done",
    dead="failed",
    error_column="error",
    order_by="priority_rank, created_at, id",
    started_column="started_at",
)
WAITING = "waiting"
"""A job held until something outside the workers has happened: the prior stage has looked
for its prior, or an external algorithm has answered (``external_requests``); not
claimable."""


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    series_uid: str
    study_revision: int
    algorithm: str
    rule_name: str
    priority: Priority
    send_to: tuple[str, ...]
    attempts: int
    max_attempts: int
    created_at: float
    prior_study_uid: str = ""
    prior_series_uid: str = ""
    """The prior exam the prior stage chose ("" when none was found or none is needed)."""

    @classmethod
    def from_row(cls, row: Row) -> Job:
        return cls(
            id=int(row["id"]),
            study_uid=row["study_uid"],
            series_uid=row["series_uid"],
            study_revision=int(row["study_revision"]),
            algorithm=row["algorithm"],
            rule_name=row["rule_name"],
            priority=Priority(row["priority"]),
            send_to=tuple(json.loads(row["send_to"])),
            attempts=int(row["attempts"]),
            max_attempts=int(row["max_attempts"]),
            created_at=float(row["created_at"]),
            prior_study_uid=str(row["prior_study_uid"]),
            prior_series_uid=str(row["prior_series_uid"]),
        )


@dataclass(frozen=True)
class ClaimedJob:
    """A job and the claim a worker holds on it."""

    job: Job
    claim: Claim


@dataclass(frozen=True)
class _CappedBudget:
    """The configured retry policy, capped by the job's own attempt budget."""

    policy: RetryPolicy
    max_attempts: int

    def delay_s(self, attempts: int) -> float:
        return self.policy.delay_s(attempts)


class JobQueue:
    def __init__(
        self,
        db: Database,
        *,
        claimer: Claimer | None = None,
        retry: Callable[[], RetryPolicy] = RetryPolicy,
        lease_s: float = DEFAULT_LEASE_S,
        on_dead: DeadHandler | None = None,
    ) -> None:
        self.db = db
        self._retry = retry
        self.items = SqlWorkQueue(
            db, JOBS, claimer or Claimer.ephemeral(), self._budget, lease_s=lease_s, on_dead=on_dead
        )

    def _budget(self, row: Row) -> RetryBudget:
        policy = self._retry()
        return _CappedBudget(policy, min(int(row["max_attempts"]), policy.max_attempts))

    def enqueue(
        self,
        conn: Connection,
        *,
        study_uid: str,
        series_uid: str,
        study_revision: int,
        algorithm: str,
        rule_name: str,
        priority: Priority,
        send_to: tuple[str, ...],
        max_attempts: int,
        waiting: bool = False,
    ) -> int:
        """Add a job inside the caller's transaction (``waiting``: held for the prior stage);
        older runs of it that have not started are superseded."""
        conn.execute(
            "UPDATE jobs SET state = 'superseded', finished_at = ? WHERE study_uid = ? "
            "AND series_uid = ? AND algorithm = ? AND state IN ('queued', 'waiting')",
            (time.time(), study_uid, series_uid, algorithm),
        )
        cursor = conn.execute(
            "INSERT INTO jobs (study_uid, series_uid, study_revision, algorithm, rule_name, "
            "priority, priority_rank, send_to, state, max_attempts, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                study_uid,
                series_uid,
                study_revision,
                algorithm,
                rule_name,
                priority.value,
                priority.rank,
                json.dumps(list(send_to)),
                WAITING if waiting else JOBS.ready,
                max_attempts,
                time.time(),
            ),
        )
        job_id = int(cursor.fetchone()[0])
        if not waiting:
            self.db.notify(JOBS_CHANNEL, conn)
        return job_id

    @staticmethod
    def release_waiting(
        conn: Connection, job_id: int, prior_study_uid: str, prior_series_uid: str
    ) -> bool:
        """Make a waiting job ready, with the prior found for it (or none: "")."""
        return bool(
            conn.execute(
                "UPDATE jobs SET state = 'queued', prior_study_uid = ?, prior_series_uid = ? "
                "WHERE id = ? AND state = 'waiting'",
                (prior_study_uid, prior_series_uid, job_id),
            ).rowcount
        )

    def claim(
        self, now: float | None = None, *, algorithms: Collection[str] | None = None
    ) -> ClaimedJob | None:
        """The most urgent ready job (of ``algorithms``, when given), oldest first in a lane."""
        claim = self.items.claim(
            now, where=None if algorithms is None else {"algorithm": sorted(algorithms)}
        )
        return None if claim is None else ClaimedJob(Job.from_row(claim.row), claim)

    def finish(
        self,
        conn: Connection,
        claimed: ClaimedJob,
        verdict: str,
        model_seconds: float | None,
        device: str,
    ) -> bool:
        """Mark the job done inside the transaction that records its result; False when the
        claim was lost (the caller rolls back, so the job is finished exactly once)."""
        return self.items.complete(
            conn,
            claimed.claim,
            {"verdict": verdict, "model_seconds": model_seconds, "device": device},
        )

    def park(self, conn: Connection, claimed: ClaimedJob) -> bool:
        """Set a claimed job waiting (an external algorithm has its series), releasing the
        claim, inside the caller's transaction; False when the claim was lost."""
        return bool(
            conn.execute(
                "UPDATE jobs SET state = 'waiting', claimed_by = '', lease_until = NULL "
                "WHERE id = ? AND state = 'running' AND claimed_by = ?",
                (claimed.job.id, claimed.claim.token),
            ).rowcount
        )

    @staticmethod
    def finish_waiting(conn: Connection, job_id: int, verdict: str, device: str) -> bool:
        """Mark a waiting job done (its external answer came, or its time ran out) inside the
        transaction that records its result; False when it no longer waits (superseded)."""
        return bool(
            conn.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?, verdict = ?, device = ?, "
                "error = '' WHERE id = ? AND state = 'waiting'",
                (time.time(), verdict, device, job_id),
            ).rowcount
        )

    def fail(self, claimed: ClaimedJob, error: str) -> FailOutcome:
        return self.items.fail(claimed.claim, error)

    def retry(self, job_id: int, also: InTransaction | None = None) -> bool:
        """Put a failed job back in its lane, with a fresh retry budget."""
        requeued = bool(self.items.requeue_dead(job_id, also))
        if requeued:
            self.db.notify(JOBS_CHANNEL)
        return requeued

    def counts(self) -> dict[str, int]:
        return self.items.counts()
