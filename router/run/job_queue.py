"""The durable job queue in SQLite: stat before urgent before routine, retries with backoff."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from config.schema import Priority, RetryPolicy
from router.store.database import Database


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
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
        )


class JobQueue:
    """A small interface so a distributed store (e.g. PostgreSQL SKIP LOCKED) can replace it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def enqueue(
        self,
        conn: sqlite3.Connection,
        *,
        study_uid: str,
        series_uid: str,
        study_revision: int,
        algorithm: str,
        rule_name: str,
        priority: Priority,
        send_to: tuple[str, ...],
        max_attempts: int,
    ) -> int:
        """Add a job inside the caller's transaction; older queued runs of it are superseded."""
        conn.execute(
            "UPDATE jobs SET state = 'superseded', finished_at = ? WHERE study_uid = ? "
            "AND series_uid = ? AND algorithm = ? AND state = 'queued'",
            (time.time(), study_uid, series_uid, algorithm),
        )
        cursor = conn.execute(
            "INSERT INTO jobs (study_uid, series_uid, study_revision, algorithm, rule_name, "
            "priority, priority_rank, send_to, state, max_attempts, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
            (
                study_uid,
                series_uid,
                study_revision,
                algorithm,
                rule_name,
                priority.value,
                priority.rank,
                json.dumps(list(send_to)),
                max_attempts,
                time.time(),
            ),
        )
        return int(cursor.lastrowid or 0)

    def claim(self, now: float | None = None) -> Job | None:
        """Take the most urgent ready job, oldest first within a lane."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            row = conn.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1 "
                "WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND not_before <= ? "
                "ORDER BY priority_rank, created_at, id LIMIT 1) RETURNING *",
                (now, now),
            ).fetchone()
        return None if row is None else Job.from_row(row)

    def finish(self, job_id: int, verdict: str, model_seconds: float | None, device: str) -> None:
        self.db.connection().execute(
            "UPDATE jobs SET state = 'done', finished_at = ?, verdict = ?, model_seconds = ?, "
            "device = ?, error = '' WHERE id = ?",
            (time.time(), verdict, model_seconds, device, job_id),
        )

    def fail(self, job: Job, error: str, retry: RetryPolicy) -> bool:
        """Record a failed attempt. Returns True if it will be retried, False if it is final."""
        now = time.time()
        attempts_allowed = min(job.max_attempts, retry.max_attempts)
        if job.attempts < attempts_allowed:
            self.db.connection().execute(
                "UPDATE jobs SET state = 'queued', not_before = ?, error = ? WHERE id = ?",
                (now + retry.delay_s(job.attempts), error, job.id),
            )
            return True
        self.db.connection().execute(
            "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE id = ?",
            (now, error, job.id),
        )
        return False

    def resume_interrupted(self) -> int:
        """After a restart, jobs that were running go back to the queue (not counted as tries)."""
        return (
            self.db.connection()
            .execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), not_before = 0 "
                "WHERE state = 'running'"
            )
            .rowcount
        )

    def retry(self, job_id: int) -> bool:
        """Put a failed job back in its lane, with a fresh retry budget."""
        return bool(
            self.db.connection()
            .execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, not_before = 0, finished_at = NULL "
                "WHERE id = ? AND state = 'failed'",
                (job_id,),
            )
            .rowcount
        )

    def counts(self) -> dict[str, int]:
        return {
            row["state"]: int(row["n"])
            for row in self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        }
