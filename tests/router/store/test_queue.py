"""The durable work queue under jobs, dispatches and deliveries: leases, interrupted work,
fencing, retries and dead letters — the same rules for every table.

The interrupted-work tests kill (or freeze) a real process that holds a claim: the item is
taken over only after its lease, the interrupted attempt counts, and the item is finished
exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from config.schema import Priority, RetryPolicy
from router.deliver.dispatch import DISPATCHES
from router.deliver.notify import DELIVERIES
from router.run.job_queue import JOBS, JobQueue
from router.store.database import Database
from router.store.queue import (
    Claimer,
    DeadHandler,
    FailOutcome,
    LeaseKeeper,
    QueueTable,
    SqliteWorkQueue,
)

LEASE_S = 1.0
TABLES = {"jobs": JOBS, "dispatches": DISPATCHES, "deliveries": DELIVERIES}
STUDY = "1.2.826.0.1.3680043.8.498.7"


def add_item(db: Database, table: QueueTable) -> int:
    """One ready item in ``table``, as the stage that queues it would write it."""
    with db.transaction() as conn:
        if table is JOBS:
            return JobQueue(db).enqueue(
                conn,
                study_uid=STUDY,
                series_uid=f"{STUDY}.1",
                study_revision=1,
                algorithm="lung_nodule",
                rule_name="chest",
                priority=Priority.ROUTINE,
                send_to=(),
                max_attempts=3,
            )
        if table is DISPATCHES:
            cursor = conn.execute(
                "INSERT INTO dispatches (study_uid, series_uid, destination, state, created_at) "
                "VALUES (?, ?, 'pacs', 'pending', ?)",
                (STUDY, f"{STUDY}.1", time.time()),
            )
            return int(cursor.lastrowid or 0)
        notify_id = conn.execute(
            "INSERT INTO notify_queue (study_uid, job_id, state, created_at) "
            "VALUES (?, 1, 'done', ?)",
            (STUDY, time.time()),
        ).lastrowid
        cursor = conn.execute(
            "INSERT INTO deliveries (notify_id, study_uid, channel, state, created_at) "
            "VALUES (?, ?, 'hl7', 'pending', ?)",
            (notify_id, STUDY, time.time()),
        )
        return int(cursor.lastrowid or 0)


def queue_of(
    db: Database, table: QueueTable, on_dead: DeadHandler | None = None
) -> SqliteWorkQueue:
    budget = RetryPolicy(max_attempts=3, backoff_initial_s=0.0)
    return SqliteWorkQueue(
        db, table, Claimer.ephemeral(), lambda _row: budget, lease_s=LEASE_S, on_dead=on_dead
    )


HOLDER = """
import sys
from pathlib import Path
from typing import Protocol
from config.schema import RetryPolicy
from router.store.database import Database
from router.store.queue import Claimer, SqliteWorkQueue
from tests.router.store.test_queue import TABLES
db = Database(Path(sys.argv[1]))
queue = SqliteWorkQueue(
    db, TABLES[sys.argv[2]], Claimer.ephemeral(), lambda _row: RetryPolicy(), lease_s=float(sys.argv[3])
)
claim = queue.claim()
print("claimed", claim.id if claim else None, flush=True)
sys.stdin.readline()  # frozen or killed here
with db.transaction() as conn:
    print("completed", queue.complete(conn, claim), flush=True)
"""


@dataclass
class Holder:
    """Another process holding a claim on the only item of a table."""

    process: subprocess.Popen[str]
    item_id: int


class StartHolder(Protocol):
    def __call__(self, db_path: Path, table: str) -> Holder: ...


@pytest.fixture
def holder() -> Iterator[StartHolder]:
    started: list[subprocess.Popen[str]] = []

    def start(db_path: Path, table: str) -> Holder:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(db_path), table, str(LEASE_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[3],
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().split()
        assert line[0] == "claimed" and line[1] != "None", line
        return Holder(process, int(line[1]))

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait(timeout=10)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_a_killed_claimer_item_is_taken_over_after_its_lease_and_finished_once(
    tmp_path: Path, table: str, holder: StartHolder
) -> None:
    db = Database(tmp_path / "db.sqlite3")
    item = add_item(db, TABLES[table])
    held = holder(tmp_path / "db.sqlite3", table)
    assert held.item_id == item
    held.process.kill()
    held.process.wait(timeout=10)
    queue = queue_of(db, TABLES[table])
    assert queue.claim() is None, "the lease still holds the item"
    time.sleep(LEASE_S + 0.2)
    claim = queue.claim()
    assert claim is not None and claim.id == item
    assert claim.attempts == 2, "the interrupted attempt counts"
    row = db.query_one(f"SELECT * FROM {table} WHERE id = ?", (item,))
    assert row is not None and "interrupted" in row[TABLES[table].error_column]
    with db.transaction() as conn:
        assert queue.complete(conn, claim) is True
    assert queue.claim() is None
    assert queue.counts() == {TABLES[table].done: 1}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_a_claimer_frozen_past_its_lease_cannot_finish_what_was_taken_over(
    tmp_path: Path, table: str, holder: StartHolder
) -> None:
    db = Database(tmp_path / "db.sqlite3")
    add_item(db, TABLES[table])
    held = holder(tmp_path / "db.sqlite3", table)
    os.kill(held.process.pid, signal.SIGSTOP)
    time.sleep(LEASE_S + 0.2)
    queue = queue_of(db, TABLES[table])
    claim = queue.claim()
    assert claim is not None
    with db.transaction() as conn:
        assert queue.complete(conn, claim) is True
    os.kill(held.process.pid, signal.SIGCONT)
    assert held.process.stdin is not None and held.process.stdout is not None
    held.process.stdin.write("finish\n")
    held.process.stdin.flush()
    assert held.process.stdout.readline().split() == ["completed", "False"]
    row = db.query_one(f"SELECT state, attempts FROM {table}")
    assert row is not None and (row["state"], row["attempts"]) == (TABLES[table].done, 2)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_heartbeats_keep_a_long_item_claimed(tmp_path: Path, table: str) -> None:
    db = Database(tmp_path / "db.sqlite3")
    add_item(db, TABLES[table])
    worker = queue_of(db, TABLES[table])
    other = queue_of(db, TABLES[table])
    claim = worker.claim()
    assert claim is not None
    keeper = LeaseKeeper(interval_s=LEASE_S / 4)
    keeper.start()
    try:
        with keeper.held(worker, claim):
            time.sleep(LEASE_S * 2.5)
            assert other.claim() is None, "a renewed lease is not taken over"
    finally:
        keeper.stop()
    with db.transaction() as conn:
        assert worker.complete(conn, claim) is True


@pytest.mark.parametrize("table", sorted(TABLES))
def test_failures_retry_then_dead_letter_then_requeue_with_a_fresh_budget(
    tmp_path: Path, table: str
) -> None:
    db = Database(tmp_path / "db.sqlite3")
    item = add_item(db, TABLES[table])
    dead: list[tuple[int, str]] = []
    queue = queue_of(db, TABLES[table], on_dead=lambda row, error: dead.append((row["id"], error)))
    outcomes = []
    for attempt in range(3):
        claim = queue.claim()
        assert claim is not None and claim.attempts == attempt + 1
        outcomes.append(queue.fail(claim, f"refused {attempt + 1}"))
    assert outcomes == [FailOutcome.RETRY, FailOutcome.RETRY, FailOutcome.DEAD]
    assert dead == [(item, "refused 3")]
    assert queue.claim() is None
    assert [row["id"] for row in queue.requeue_dead()] == [item]
    again = queue.claim()
    assert again is not None and again.attempts == 1


@pytest.mark.parametrize("table", sorted(TABLES))
def test_a_permanent_refusal_is_dead_lettered_at_once(tmp_path: Path, table: str) -> None:
    db = Database(tmp_path / "db.sqlite3")
    add_item(db, TABLES[table])
    queue = queue_of(db, TABLES[table])
    claim = queue.claim()
    assert claim is not None
    assert queue.fail(claim, "rejected for good", retryable=False) is FailOutcome.DEAD
