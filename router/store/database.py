"""SQLite (WAL) database: per-thread connections and small transaction helpers; the schema is
brought up to date at open (``router.store.migrations``)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from router.store.migrations import migrate

LOGGER = logging.getLogger(__name__)


class _Connection(sqlite3.Connection):
    """A connection the database can keep a weak reference to (the base class takes none)."""


class Database:
    """One SQLite file shared by every stage; each thread gets its own connection.

    A thread's connection closes when the thread ends; :meth:`close_all` closes those of
    threads that live on (the one that started the router, a server's), so a router stopped in
    a process that goes on (tests, an embedding program) leaves no file open.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._opened: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._opened_lock = threading.Lock()
        self._generation = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        migrate(path)

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "generation", -1) != self._generation:
            conn = None  # closed by close_all
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=30.0,
                isolation_level=None,
                check_same_thread=False,
                factory=_Connection,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against process crashes (kill -9) in WAL mode; the spool files
            # themselves are fsync'd, and the index is rebuilt from them after a power loss.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            self._local.generation = self._generation
            with self._opened_lock:
                self._opened.add(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on error."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return list(self.connection().execute(sql, params).fetchall())

    def query_one(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.connection().execute(sql, params).fetchone()
        return row

    def record_event(
        self, kind: str, study_uid: str | None = None, job_id: int | None = None, detail: str = ""
    ) -> None:
        """Append an audit event. Observers call this; a failure is logged, never raised."""
        try:
            self.connection().execute(
                "INSERT INTO events (at, kind, study_uid, job_id, detail) VALUES (?, ?, ?, ?, ?)",
                (time.time(), kind, study_uid, job_id, detail),
            )
        except sqlite3.Error:
            LOGGER.exception("could not record audit event %s", kind)

    def close(self) -> None:
        """Close this thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close_all(self) -> None:
        """Close every thread's connection (once the threads using them have stopped); a
        thread that asks for one afterwards gets a new one."""
        with self._opened_lock:
            opened = list(self._opened)
            self._opened.clear()
            self._generation += 1
        for conn in opened:
            conn.close()
