"""The durable work queue under jobs, dispatches and deliveries: leases, interrupted work,
fencing, retries and dead letters — the same rules for every table.

Every test runs on both engines (SQLite and a real PostgreSQL, ``database`` in
tests/conftest.py). The interrupted-work tests kill (or freeze) a real process that holds a claim: the item is
taken over only after its lease, the interrupted attempt counts, and the item is finished
exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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
    SqlWorkQueue,
)

LEASE_S = 1.0
TABLES = {"jobs": JOBS, "dispatches": DISPATCHES, "deliveries": DELIVERIES}
STUDY = "1.2.826.0.1.3680043.8.498.7"


def add_item(db: Database, table: QueueTable, series: int = 1) -> int:
    """One ready item in ``table``, as the stage that queues it would write it (a job of a
    new series does not replace the others)."""
    with db.transaction() as conn:
        if table is JOBS:
            return JobQueue(db).enqueue(
                conn,
                study_uid=STUDY,
                series_uid=f"{STUDY}.{series}",
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
                "VALUES (?, ?, 'pacs', 'pending', ?) RETURNING id",
                (STUDY, f"{STUDY}.1", time.time()),
            )
            return int(cursor.fetchone()[0])
        notify_id = conn.execute(
            "INSERT INTO notify_queue (study_uid, job_id, state, created_at) "
            "VALUES (?, 1, 'done', ?) RETURNING id",
            (STUDY, time.time()),
        ).fetchone()[0]
        cursor = conn.execute(
            "INSERT INTO deliveries (notify_id, study_uid, channel, state, created_at) "
            "VALUES (?, ?, 'hl7', 'pending', ?) RETURNING id",
            (notify_id, STUDY, time.time()),
        )
        return int(cursor.fetchone()[0])


def queue_of(db: Database, table: QueueTable, on_dead: DeadHandler | None = None) -> SqlWorkQueue:
    budget = RetryPolicy(max_attempts=3, backoff_initial_s=0.0)
    return SqlWorkQueue(
        db, table, Claimer.ephemeral(), lambda _row: budget, lease_s=LEASE_S, on_dead=on_dead
    )


HOLDER = """
import sys
from pathlib import Path
from typing import Protocol
from config.schema import RetryPolicy
from router.store.open import database_at
from router.store.queue import Claimer, SqlWorkQueue
from tests.router.store.test_queue import TABLES
db = database_at(sys.argv[1])
queue = SqlWorkQueue(
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
    def __call__(self, locator: str, table: str) -> Holder: ...


@pytest.fixture
def holder() -> Iterator[StartHolder]:
    started: list[subprocess.Popen[str]] = []

    def start(locator: str, table: str) -> Holder:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, locator, table, str(LEASE_S)],
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
    database: Database, database_locator: str, table: str, holder: StartHolder
) -> None:
    db = database
    item = add_item(db, TABLES[table])
    held = holder(database_locator, table)
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
    database: Database, database_locator: str, table: str, holder: StartHolder
) -> None:
    db = database
    add_item(db, TABLES[table])
    held = holder(database_locator, table)
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
def test_heartbeats_keep_a_long_item_claimed(database: Database, table: str) -> None:
    db = database
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
    database: Database, table: str
) -> None:
    db = database
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
def test_a_permanent_refusal_is_dead_lettered_at_once(database: Database, table: str) -> None:
    db = database
    add_item(db, TABLES[table])
    queue = queue_of(db, TABLES[table])
    claim = queue.claim()
    assert claim is not None
    assert queue.fail(claim, "rejected for good", retryable=False) is FailOutcome.DEAD


@pytest.mark.parametrize("table", sorted(TABLES))
def test_claimers_in_parallel_take_each_item_once(database: Database, table: str) -> None:
    """Eight threads (eight connections) claim 40 items at once: every item is claimed
    exactly once; on PostgreSQL the claims skip rows others hold rather than wait."""
    items = {add_item(database, TABLES[table], n) for n in range(40)}
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all() -> None:
        queue = queue_of(database, TABLES[table])
        while (claim := queue.claim()) is not None:
            with database.transaction() as conn:
                assert queue.complete(conn, claim) is True
            with lock:
                claimed.append(claim.id)
        database.close()

    threads = [threading.Thread(target=claim_all) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == sorted(items)
    assert queue_of(database, TABLES[table]).counts() == {TABLES[table].done: 40}
