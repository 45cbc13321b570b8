"""The extra receiver processes of ``node.receivers`` on the shared DICOM port: started by the
router, started again when one ends, stopped with it, and counted by whether they listen.

A receiver process records a ``receiver_started`` event (detail ``receiver N``) once its node
listens. A process that is alive but has not yet recorded it is still importing Python: it
takes no association, so ``/readyz`` counts it as *starting*, not as running.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from router.store.database import Database

LOGGER = logging.getLogger(__name__)

STARTED_EVENT = "receiver_started"


def started_detail(index: int) -> str:
    """The detail of receiver ``index``'s ``receiver_started`` event."""
    return f"receiver {index}"


@dataclass
class _Receiver:
    index: int
    process: subprocess.Popen[bytes]
    events_before: int  # the last event id when it was spawned: its own event comes after
    listening: bool = False


@dataclass(frozen=True)
class ReceiverCounts:
    """The router itself is one of ``configured``; ``running`` listen, ``starting`` are alive
    but do not listen yet."""

    configured: int
    running: int
    starting: int


class ReceiverProcesses:
    """Receivers 1 … count - 1, each a process of its own."""

    def __init__(self, db: Database, argv_of: Callable[[int], Sequence[str]]) -> None:
        """``argv_of(index)``: the command line of receiver ``index``
        (``receiver_argv`` in the router)."""
        self._db = db
        self._argv_of = argv_of
        self._receivers: list[_Receiver] = []

    def start(self, count: int) -> None:
        """The other ``count - 1`` receiver processes (the router is the first)."""
        for index in range(1, count):
            self._receivers.append(self._spawn(index))
        LOGGER.info("%d receiver process(es) started on the shared DICOM port", count - 1)

    def restart_dead(self) -> None:
        """A receiver process that ended (crashed, killed) is started again, and said so."""
        for position, receiver in enumerate(self._receivers):
            code = receiver.process.poll()
            if code is None:
                continue
            LOGGER.error("receiver %d ended with code %s; starting it again", receiver.index, code)
            self._db.record_event(
                "receiver_restarted", detail=f"receiver {receiver.index}, code {code}"
            )
            self._receivers[position] = self._spawn(receiver.index)

    def stop(self) -> None:
        for receiver in self._receivers:
            receiver.process.terminate()
        for receiver in self._receivers:
            try:
                receiver.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                receiver.process.kill()
                receiver.process.wait()
        self._receivers = []

    def pids(self) -> list[int]:
        """The receivers' process ids, receiver 1 first."""
        return [receiver.process.pid for receiver in self._receivers]

    def counts(self, configured: int) -> ReceiverCounts:
        """How many receivers listen now, the router included (it listens once started)."""
        running = starting = 0
        for receiver in self._receivers:
            if receiver.process.poll() is not None:
                continue
            if not receiver.listening:
                receiver.listening = self._has_started(receiver)
            if receiver.listening:
                running += 1
            else:
                starting += 1
        return ReceiverCounts(configured, 1 + running, starting)

    def _has_started(self, receiver: _Receiver) -> bool:
        row = self._db.query_one(
            "SELECT 1 FROM events WHERE id > ? AND kind = ? AND detail = ?",
            (receiver.events_before, STARTED_EVENT, started_detail(receiver.index)),
        )
        return row is not None

    def _last_event_id(self) -> int:
        row = self._db.query_one("SELECT COALESCE(MAX(id), 0) AS last FROM events")
        return int(row["last"]) if row is not None else 0

    def _spawn(self, index: int) -> _Receiver:
        before = self._last_event_id()
        process = subprocess.Popen(
            list(self._argv_of(index)),
            start_new_session=True,  # a terminal's Ctrl-C reaches the router only
        )
        return _Receiver(index, process, before)


def receiver_argv(config_path: Path, data_dir: Path, index: int) -> list[str]:
    """``radrouter serve --role receiver`` for receiver ``index`` of this router."""
    return [
        sys.executable,
        "-m",
        "router.cli",
        "serve",
        "--config",
        str(config_path),
        "--data-dir",
        str(data_dir),
        "--role",
        "receiver",
        "--receiver-index",
        str(index),
    ]
