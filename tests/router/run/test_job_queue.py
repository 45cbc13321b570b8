"""The job queue: lanes, retries with backoff, supersession, waiting for a prior, restart."""

from __future__ import annotations

from pathlib import Path

from config.schema import JobRetryPolicy, Priority
from router.run.job_queue import JobQueue
from router.store.database import SqliteDatabase
from router.store.queue import Claimer, FailOutcome


def enqueue(
    queue: JobQueue,
    series: str,
    priority: Priority,
    max_attempts: int = 2,
    waiting: bool = False,
) -> int:
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
            waiting=waiting,
        )


def test_stat_before_urgent_before_routine_then_oldest_first(tmp_path: Path) -> None:
    queue = JobQueue(SqliteDatabase(tmp_path / "db.sqlite3"))
    routine = enqueue(queue, "1.1", Priority.ROUTINE)
    urgent = enqueue(queue, "1.2", Priority.URGENT)
    stat = enqueue(queue, "1.3", Priority.STAT)
    routine_2 = enqueue(queue, "1.4", Priority.ROUTINE)
    order = [queue.claim(), queue.claim(), queue.claim(), queue.claim()]
    assert [c.job.id for c in order if c] == [stat, urgent, routine, routine_2]
    assert queue.claim() is None


def test_failure_retries_after_backoff_then_fails_for_good(tmp_path: Path) -> None:
    policy = JobRetryPolicy(max_attempts=2, backoff_initial_s=30)
    queue = JobQueue(SqliteDatabase(tmp_path / "db.sqlite3"), retry=lambda: policy)
    enqueue(queue, "1.1", Priority.ROUTINE, max_attempts=2)
    claimed = queue.claim(now=1000.0)
    assert claimed is not None
    assert queue.fail(claimed, "model crashed") is FailOutcome.RETRY
    assert queue.claim(now=1001.0) is None, "backoff must hold the retry back"
    again = queue.claim(now=2e12)
    assert again is not None and again.job.attempts == 2
    assert queue.fail(again, "model crashed again") is FailOutcome.DEAD
    row = queue.db.query_one("SELECT state, error FROM jobs WHERE id = ?", (again.job.id,))
    assert row is not None and (row["state"], row["error"]) == ("failed", "model crashed again")
    assert queue.retry(again.job.id) is True
    assert queue.claim(now=2e12) is not None


def test_a_restarted_node_requeues_its_interrupted_job_and_the_attempt_counts(
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "db.sqlite3"
    node = Claimer.for_data_dir(tmp_path)
    queue = JobQueue(SqliteDatabase(db_path), claimer=node)
    enqueue(queue, "1.1", Priority.ROUTINE)
    claimed = queue.claim()
    assert claimed is not None and claimed.job.attempts == 1
    # The same node starts again (same node id, new boot): no need to wait for the lease.
    restarted = JobQueue(SqliteDatabase(db_path), claimer=Claimer.for_data_dir(tmp_path))
    assert restarted.items.reclaim_previous_boot() == 1
    resumed = restarted.claim()
    assert resumed is not None and resumed.job.id == claimed.job.id
    assert resumed.job.attempts == 2, "an interrupted attempt counts"
    # The old boot's claim is fenced off: it can no longer finish the job.
    with restarted.db.transaction() as conn:
        assert restarted.finish(conn, claimed, "absent", None, "cpu") is False
        assert restarted.finish(conn, resumed, "absent", None, "cpu") is True


def test_an_interruption_on_the_last_attempt_fails_the_job_with_the_reason(
    tmp_path: Path,
) -> None:
    failed: list[int] = []
    db_path = tmp_path / "db.sqlite3"
    queue = JobQueue(SqliteDatabase(db_path), claimer=Claimer.for_data_dir(tmp_path))
    enqueue(queue, "1.1", Priority.ROUTINE, max_attempts=1)
    assert queue.claim() is not None
    restarted = JobQueue(
        SqliteDatabase(db_path),
        claimer=Claimer.for_data_dir(tmp_path),
        on_dead=lambda row, _error: failed.append(int(row["id"])),
    )
    assert restarted.items.reclaim_previous_boot() == 1
    row = restarted.db.query_one("SELECT id, state, error FROM jobs")
    assert row is not None and row["state"] == "failed" and "interrupted" in row["error"]
    assert failed == [row["id"]], "the dead-letter handler states the failure"


def test_a_job_stopped_on_purpose_is_given_back_without_spending_an_attempt(
    tmp_path: Path,
) -> None:
    queue = JobQueue(SqliteDatabase(tmp_path / "db.sqlite3"))
    enqueue(queue, "1.1", Priority.ROUTINE)
    claimed = queue.claim()
    assert claimed is not None
    assert queue.items.release(claimed.claim) is True
    again = queue.claim()
    assert again is not None and again.job.attempts == 1


def test_a_waiting_job_is_not_claimed_until_released_with_its_prior(tmp_path: Path) -> None:
    queue = JobQueue(SqliteDatabase(tmp_path / "db.sqlite3"))
    job_id = enqueue(queue, "1.1", Priority.ROUTINE, waiting=True)
    assert queue.claim() is None
    with queue.db.transaction() as conn:
        assert queue.release_waiting(conn, job_id, "1.9", "1.9.1") is True
    claimed = queue.claim()
    assert claimed is not None and claimed.job.id == job_id
    assert (claimed.job.prior_study_uid, claimed.job.prior_series_uid) == ("1.9", "1.9.1")


def test_a_worker_claims_only_the_algorithms_it_has(tmp_path: Path) -> None:
    queue = JobQueue(SqliteDatabase(tmp_path / "db.sqlite3"))
    enqueue(queue, "1.1", Priority.STAT)
    assert queue.claim(algorithms={"pe"}) is None
    claimed = queue.claim(algorithms={"pe", "lung_nodule"})
    assert claimed is not None and claimed.job.algorithm == "lung_nodule"


def test_a_newer_revision_supersedes_a_queued_run(tmp_path: Path) -> None:
    queue = JobQueue(SqliteDatabase(tmp_path / "db.sqlite3"))
    first = enqueue(queue, "1.1", Priority.ROUTINE)
    second = enqueue(queue, "1.1", Priority.ROUTINE)
    states = {r["id"]: r["state"] for r in queue.db.query("SELECT id, state FROM jobs")}
    assert states == {first: "superseded", second: "queued"}
