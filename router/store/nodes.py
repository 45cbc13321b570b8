"""The nodes of a deployment: every process (one host or several, one role or all) records who
it is and keeps saying that it lives, so ``/readyz`` and ``radrouter status`` can list each
live node with its role, host, algorithms and devices."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.store.database import ENGINE_ERRORS, Database

LOGGER = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
LIVE_S = 20.0
"""A node not heard from for this long is not listed as live (its leases expire by then too)."""


def host_name() -> str:
    """This host's name, reduced to the characters a host name may hold."""
    return re.sub(r"[^A-Za-z0-9.\-]", "", socket.gethostname())[:64] or "unknown"


@dataclass(frozen=True)
class NodeInfo:
    id: str
    role: str
    host: str
    pid: int
    algorithms: list[str]
    devices: dict[str, str]
    started_at: float
    seen_at: float

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "host": self.host,
            "pid": self.pid,
            "algorithms": self.algorithms,
            "devices": self.devices,
            "up_s": round(now - self.started_at, 1),
            "seen_s_ago": round(now - self.seen_at, 1),
        }


Loaded = Callable[[], tuple[list[str], dict[str, str]]]
"""What a node has loaded now: its algorithms and the device of each."""


class NodeHeartbeat:
    """Records this process as a node at start, refreshes it every ``HEARTBEAT_S`` (with what
    it has loaded), and marks it stopped at stop. A database that is briefly away costs a
    beat or two, logged; never the process."""

    def __init__(self, db: Database, node_id: str, role: str, loaded: Loaded) -> None:
        self.db = db
        self.node_id = node_id
        self.role = role
        self._loaded = loaded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        now = time.time()
        algorithms, devices = self._loaded()
        self.db.connection().execute(
            "INSERT INTO nodes (id, role, host, pid, algorithms, devices, started_at, seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "role = excluded.role, host = excluded.host, pid = excluded.pid, "
            "algorithms = excluded.algorithms, devices = excluded.devices, "
            "started_at = excluded.started_at, seen_at = excluded.seen_at, stopped_at = NULL",
            (
                self.node_id,
                self.role,
                host_name(),
                os.getpid(),
                json.dumps(algorithms),
                json.dumps(devices),
                now,
                now,
            ),
        )
        self._thread = threading.Thread(target=self._loop, name="node-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        algorithms, devices = self._loaded()
        self.db.connection().execute(
            "UPDATE nodes SET seen_at = ?, algorithms = ?, devices = ?, stopped_at = NULL "
            "WHERE id = ?",
            (time.time(), json.dumps(algorithms), json.dumps(devices), self.node_id),
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.db.connection().execute(
                "UPDATE nodes SET stopped_at = ? WHERE id = ?", (time.time(), self.node_id)
            )
        except ENGINE_ERRORS:
            LOGGER.warning("could not record that node %s stopped", self.node_id)
        self.db.close()

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.beat()
            except ENGINE_ERRORS as exc:
                LOGGER.warning("node heartbeat: database unavailable (%s)", type(exc).__name__)
        self.db.close()


def live_nodes(db: Database, now: float | None = None) -> list[NodeInfo]:
    """The nodes heard from within ``LIVE_S`` that have not stopped, by role and host."""
    now = time.time() if now is None else now
    rows = db.query(
        "SELECT * FROM nodes WHERE stopped_at IS NULL AND seen_at >= ? ORDER BY role, host, id",
        (now - LIVE_S,),
    )
    return [
        NodeInfo(
            id=str(row["id"]),
            role=str(row["role"]),
            host=str(row["host"]),
            pid=int(row["pid"]),
            algorithms=list(json.loads(row["algorithms"] or "[]")),
            devices=dict(json.loads(row["devices"] or "{}")),
            started_at=float(row["started_at"]),
            seen_at=float(row["seen_at"]),
        )
        for row in rows
    ]
