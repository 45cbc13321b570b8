"""The durable job queue: lanes, retries with backoff, restart resumes."""

from __future__ import annotations

from pathlib import Path

from config.schema import Priority, RetryPolicy
from router.run.job_queue import JobQueue
from router.store.database import Database


def enqueue(queue: JobQueue, series: str, priority: Priority, max_attempts: int = 2) -> int:
    with queue.db.transaction() as conn:
        return queue.enqueue(
            conn,
            study_uid="1.2",
            series_uid=series,
            study_revision=1,
            algorithm="lung_nodule",
            rule_name="r",
            priority=priority,
            send_to=("pacs",),
            max_attempts=max_attempts,
        )


def test_stat_before_urgent_before_routine_then_oldest_first(tmp_path: Path) -> None:
    queue = JobQueue(Database(tmp_path / "db.sqlite3"))
    routine = enqueue(queue, "1.1", Priority.ROUTINE)
    urgent = enqueue(queue, "1.2", Priority.URGENT)
    stat = enqueue(queue, "1.3", Priority.STAT)
    routine_2 = enqueue(queue, "1.4", Priority.ROUTINE)
    order = [queue.claim(), queue.claim(), queue.claim(), queue.claim()]
    assert [j.id for j in order if j] == [stat, urgent, routine, routine_2]
    assert queue.claim() is None


def test_failure_retries_after_backoff_then_fails_for_good(tmp_path: Path) -> None:
    queue = JobQueue(Database(tmp_path / "db.sqlite3"))
    enqueue(queue, "1.1", Priority.ROUTINE, max_attempts=2)
    policy = RetryPolicy(max_attempts=2, backoff_initial_s=30)
    job = queue.claim(now=1000.0)
    assert job is not None
    assert queue.fail(job, "model crashed", policy) is True
    assert queue.claim(now=1001.0) is None, "backoff must hold the retry back"
    again = queue.claim(now=2e12)
    assert again is not None and again.attempts == 2
    assert queue.fail(again, "model crashed again", policy) is False
    row = queue.db.query_one("SELECT state, error FROM jobs WHERE id = ?", (again.id,))
    assert row is not None and (row["state"], row["error"]) == ("failed", "model crashed again")
    assert queue.retry(again.id) is True
    assert queue.claim(now=2e12) is not None


def test_restart_requeues_running_jobs_without_spending_an_attempt(tmp_path: Path) -> None:
    db_path = tmp_path / "db.sqlite3"
    queue = JobQueue(Database(db_path))
    enqueue(queue, "1.1", Priority.ROUTINE)
    claimed = queue.claim()
    assert claimed is not None and claimed.attempts == 1
    restarted = JobQueue(Database(db_path))
    assert restarted.resume_interrupted() == 1
    resumed = restarted.claim()
    assert resumed is not None and resumed.id == claimed.id and resumed.attempts == 1


def test_a_newer_revision_supersedes_a_queued_run(tmp_path: Path) -> None:
    queue = JobQueue(Database(tmp_path / "db.sqlite3"))
    first = enqueue(queue, "1.1", Priority.ROUTINE)
    second = enqueue(queue, "1.1", Priority.ROUTINE)
    states = {r["id"]: r["state"] for r in queue.db.query("SELECT id, state FROM jobs")}
    assert states == {first: "superseded", second: "queued"}
