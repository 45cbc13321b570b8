"""The router's extra receiver processes are counted as running only once they listen (their
``receiver_started`` event), not while they are alive but still starting; a dead one is
started again and counts as starting until its new process says it listens."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.receive.receiver_processes import (
    STARTED_EVENT,
    ReceiverCounts,
    ReceiverProcesses,
    started_detail,
)
from router.service import wait_for
from router.store.database import SqliteDatabase


def sleeper(index: int) -> list[str]:
    """A stand-in receiver: alive, never listening by itself (the test says when it does)."""
    return [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def db(tmp_path: Path) -> SqliteDatabase:
    return SqliteDatabase(tmp_path / "radrouter.sqlite3")


@pytest.fixture
def receivers(db: SqliteDatabase) -> Iterator[ReceiverProcesses]:
    processes = ReceiverProcesses(db, sleeper)
    yield processes
    processes.stop()


def test_an_alive_receiver_is_starting_until_its_node_listens(
    db: SqliteDatabase, receivers: ReceiverProcesses
) -> None:
    receivers.start(3)
    assert receivers.counts(3) == ReceiverCounts(configured=3, running=1, starting=2)
    db.record_event(STARTED_EVENT, detail=started_detail(2))
    assert receivers.counts(3) == ReceiverCounts(configured=3, running=2, starting=1)
    db.record_event(STARTED_EVENT, detail=started_detail(1))
    assert receivers.counts(3) == ReceiverCounts(configured=3, running=3, starting=0)


def test_a_restarted_receiver_is_not_counted_by_its_dead_predecessors_event(
    db: SqliteDatabase, receivers: ReceiverProcesses
) -> None:
    db.record_event(STARTED_EVENT, detail=started_detail(1))  # of a process before this one
    receivers.start(2)
    assert receivers.counts(2).starting == 1
    db.record_event(STARTED_EVENT, detail=started_detail(1))
    assert receivers.counts(2) == ReceiverCounts(configured=2, running=2, starting=0)

    [receiver] = receivers.pids()
    os.kill(receiver, signal.SIGKILL)
    dead = ReceiverCounts(configured=2, running=1, starting=0)
    assert wait_for(lambda: receivers.counts(2) == dead, 10, 0.05)
    receivers.restart_dead()
    restarted = db.query("SELECT detail FROM events WHERE kind = 'receiver_restarted'")
    assert [row["detail"] for row in restarted] == ["receiver 1, code -9"]
    assert receivers.counts(2) == ReceiverCounts(configured=2, running=1, starting=1)
    db.record_event(STARTED_EVENT, detail=started_detail(1))
    assert receivers.counts(2) == ReceiverCounts(configured=2, running=2, starting=0)


def test_stop_ends_every_receiver(receivers: ReceiverProcesses) -> None:
    receivers.start(3)
    pids = receivers.pids()
    receivers.stop()
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)  # ended and reaped
    assert receivers.counts(3) == ReceiverCounts(configured=3, running=1, starting=0)
