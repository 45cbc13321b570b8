"""The router's database: one interface, two engines.

``SqliteDatabase`` (WAL, one file in the data folder) is the embedded default;
``router.store.postgres.PostgresDatabase`` is the shared state of several processes and hosts.
Code above this layer writes one SQL dialect (SQLite's, with ``?`` placeholders, restricted to
what PostgreSQL also understands or what ``router.store.postgres`` translates) and talks to
``Connection``, ``Cursor`` and ``Row``, which both engines provide. The schema is brought up to
date at open (``router.store.migrations``).
"""

from __future__ import annotations

import abc
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import psycopg

from router.store.migrations import migrate

LOGGER = logging.getLogger(__name__)

Params = Sequence[object]


class Row(Protocol):
    """A result row: by position or by column name (``sqlite3.Row`` and ``PgRow``)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, parameters: Params = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Params], /) -> Cursor: ...


ENGINE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
"""Errors either engine raises."""


JOBS_CHANNEL = "radrouter_jobs"
"""Notified when jobs were queued: idle workers of every process look."""
ASSEMBLE_CHANNEL = "radrouter_assemble"
"""Notified when an association ended at a receiver process: the assembler looks."""


def is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, ENGINE_ERRORS)


class Database(abc.ABC):
    """The state every stage shares; each thread gets its own connection.

    A thread's connection closes when the thread ends; :meth:`close_all` closes those of
    threads that live on (the one that started the router, a server's), so a router stopped in
    a process that goes on (tests, an embedding program) leaves no connection open.
    """

    engine: Literal["sqlite", "postgresql"]

    @abc.abstractmethod
    def connection(self) -> Connection:
        """This thread's connection, in autocommit mode."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data is, without secrets: a path or ``host:port/name``."""

    @contextmanager
    @abc.abstractmethod
    def transaction(
        self, *, serialized: bool = True, study: str | None = None
    ) -> Iterator[Connection]:
        """A transaction, committed at the end and rolled back on error.

        ``serialized`` (the default) makes it the only writing transaction at a time, as
        SQLite's ``BEGIN IMMEDIATE`` does: the read-then-write steps of the stages rely on it.
        A single claim statement (``FOR UPDATE SKIP LOCKED``) passes False. ``study``: a
        transaction that reads and writes the rows of that one study only (indexing a
        received instance) follows the other transactions of the study and every serialized
        one, but runs beside those of other studies (on PostgreSQL; SQLite has one writer)."""
        yield self.connection()  # pragma: no cover - abstract

    def notify(self, channel: str, conn: Connection | None = None) -> None:  # noqa: B027
        """Tell other processes that work arrived on ``channel`` (inside ``conn``'s
        transaction: delivered at its commit); nothing to do for an engine whose processes
        share no notifications (SQLite: the stages poll)."""

    # --- the few expressions the engines spell differently (column names from code only) ---

    def sql_json_true(self, column: str, key: str) -> str:
        """True where the JSON object in ``column`` has ``key`` set to true."""
        return f"COALESCE(json_extract({column}, '$.{key}'), 0)"

    def sql_local_month(self, epoch_column: str) -> str:
        """``YYYY-MM`` of a Unix time, in the router host's local time."""
        return f"strftime('%Y-%m', {epoch_column}, 'unixepoch', 'localtime')"

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        return list(self.connection().execute(sql, params).fetchall())

    def query_one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = self.connection().execute(sql, params).fetchone()
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
        except ENGINE_ERRORS:
            LOGGER.exception("could not record audit event %s", kind)

    @abc.abstractmethod
    def close(self) -> None:
        """Close this thread's connection."""

    @abc.abstractmethod
    def close_all(self) -> None:
        """Close every thread's connection (once the threads using them have stopped); a
        thread that asks for one afterwards gets a new one."""


class _Connection(sqlite3.Connection):
    """A connection the database can keep a weak reference to (the base class takes none)."""


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class ThreadConnections(Generic[C]):
    """One connection per thread, each remembered weakly so ``close_all`` can reach them."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._opened: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._generation = 0

    def get(self) -> C | None:
        conn: C | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "generation", -1) != self._generation:
            return None  # closed by close_all
        return conn

    def put(self, conn: C) -> None:
        self._local.conn = conn
        self._local.generation = self._generation
        with self._lock:
            self._opened.add(conn)

    def close_own(self) -> None:
        """Close this thread's connection."""
        conn: C | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def close_all(self) -> None:
        """Close every thread's connection; a thread asking afterwards gets a new one."""
        with self._lock:
            opened = list(self._opened)
            self._opened.clear()
            self._generation += 1
        for conn in opened:
            conn.close()


class SqliteDatabase(Database):
    """One SQLite file shared by every stage of one host's processes."""

    engine: Literal["sqlite", "postgresql"] = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connections: ThreadConnections[_Connection] = ThreadConnections()
        path.parent.mkdir(parents=True, exist_ok=True)
        migrate(path)

    def describe(self) -> str:
        return str(self.path)

    def connection(self) -> sqlite3.Connection:
        conn = self._connections.get()
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
            self._connections.put(conn)
        return conn

    @contextmanager
    def transaction(
        self, *, serialized: bool = True, study: str | None = None
    ) -> Iterator[Connection]:
        """BEGIN IMMEDIATE ... COMMIT (SQLite has one writer at a time either way)."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self._connections.close_own()

    def close_all(self) -> None:
        self._connections.close_all()
