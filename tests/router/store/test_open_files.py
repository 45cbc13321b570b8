"""A router stopped inside a process that goes on leaves no database file open, and its
database still answers a thread that asks afterwards."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from config.loader import parse_config
from router.service import RouterService
from router.store.database import SqliteDatabase
from testing.orthanc import free_port


def open_files_under(folder: Path) -> list[str]:
    """Targets of this process's descriptors that lie under ``folder``."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            targets.append(target)
    return targets


def test_a_stopped_router_leaves_no_database_file_open(tmp_path: Path) -> None:
    port = free_port()
    config = parse_config(
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}}\n"
        "http: {host: 127.0.0.1, port: 0}\nrules: []\n",
        "test.yaml",
    )
    service = RouterService(config, data_dir=tmp_path / "data")
    service.start()
    assert open_files_under(tmp_path / "data")  # the database is open while it runs

    service.stop()

    assert open_files_under(tmp_path / "data") == []


def test_close_all_closes_every_threads_connection_and_a_later_ask_reconnects(
    tmp_path: Path,
) -> None:
    db = SqliteDatabase(tmp_path / "db.sqlite3")
    db.query("SELECT 1")
    ready, release = threading.Event(), threading.Event()

    def hold_a_connection() -> None:
        db.query("SELECT 1")
        ready.set()
        release.wait(10)
        db.query("SELECT 1")  # after close_all: a new connection

    thread = threading.Thread(target=hold_a_connection)
    thread.start()
    assert ready.wait(10)

    db.close_all()
    assert open_files_under(tmp_path) == []
    release.set()
    thread.join(10)
    assert db.query_one("SELECT 2 AS two")["two"] == 2  # type: ignore[index]
