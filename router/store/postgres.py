"""PostgreSQL as the shared state and queue of several processes and hosts (psycopg 3).

The rest of the router writes SQLite's dialect; this module runs it on PostgreSQL:
``?`` placeholders become ``%s``, ``INSERT OR IGNORE`` becomes ``ON CONFLICT DO NOTHING``, and
Python booleans are stored as the integers SQLite's schema holds. Rows are read by position or
by name, like ``sqlite3.Row``.

Transactions keep the semantics the stages were written to: a *serialized* transaction (the
default) first takes one transaction-level advisory lock, so writing transactions follow one
another as SQLite's ``BEGIN IMMEDIATE`` makes them, whichever process or host runs them; a
write statement outside a transaction takes it too (as SQLite's autocommit writes wait for
the write lock). The transaction that indexes a received instance takes that lock shared
and its study's lock exclusive, so receivers index different studies at once and still
follow every other writer. Queue claims take neither: they are single statements that lock
the row they take and skip rows others hold (``FOR UPDATE SKIP LOCKED``), so workers on
several hosts claim in parallel. ``notify`` sends a PostgreSQL ``NOTIFY`` at commit;
``Listener`` wakes the stages of every other process that ``LISTEN``.

A lost connection (PostgreSQL restarted, a network cut) fails the statement under way; the
thread's next statement opens a new connection. The stages already retry a failed step.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import TransactionStatus
from psycopg.rows import RowMaker

from router.store.database import Connection, Cursor, Database, Params, ThreadConnections
from router.store.migrations import LATEST_VERSION, MIGRATIONS, SchemaError
from router.store.postgres_schema import BASELINE, BASELINE_VERSION

LOGGER = logging.getLogger(__name__)

WRITER_LOCK = 0x7261_6472_6F75_7401
"""The advisory lock key of serialized transactions (``radrout`` + 1)."""
MIGRATION_LOCK = WRITER_LOCK + 1


def study_lock_key(study_uid: str) -> int:
    """The advisory lock key of one study's transactions: 64 bits of its hash, kept clear of
    the two fixed keys."""
    key = int.from_bytes(hashlib.sha256(study_uid.encode()).digest()[:8], "big", signed=True)
    return key if key not in (WRITER_LOCK, MIGRATION_LOCK) else key ^ 1


CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class PostgresSettings:
    """Where the database is. ``conninfo`` is a libpq URL or key=value string without a
    password; the password comes apart (from the environment, ``config.schema``)."""

    conninfo: str
    password: str | None = None
    application_name: str = "radrouter"

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {
            "autocommit": autocommit,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": self.application_name,
            "options": f"-c TimeZone={local_zone()}",
        }
        if self.password is not None:
            kwargs["password"] = self.password
        conn = psycopg.connect(self.conninfo, **kwargs)
        conn.adapters.register_dumper(bool, _BoolAsInteger)
        return conn

    def describe(self) -> str:
        """``host:port/dbname`` (no user, no password)."""
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError:
            return "postgresql (unreadable connection string)"
        host = info.get("host") or "localhost"
        return f"postgresql {host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def local_zone() -> str:
    """This host's time zone name (``TZ``, else where ``/etc/localtime`` points), so that
    dates the database computes are the router's local ones, as on SQLite; UTC when unknown."""
    name = os.environ.get("TZ", "").lstrip(":")
    if not name:
        try:
            target = os.readlink("/etc/localtime")
        except OSError:
            target = ""
        name = target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else ""
    return name if re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", name or "") else "UTC"


class _BoolAsInteger(Dumper):
    """SQLite's schema keeps flags as 0/1 integers; so does this one."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class PgRow:
    """A row readable by position and by column name, like ``sqlite3.Row``."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._names.index(key)]
            except ValueError:
                raise IndexError(f"no such column: {key}") from None
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PgRow) and (self._names, self._values) == (
            other._names,
            other._values,
        )

    def __hash__(self) -> int:
        return hash((self._names, self._values))

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._names, self._values, strict=True))!r})"


def _pg_row(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    names = tuple(column.name for column in cursor.description or ())

    def make(values: Any) -> PgRow:
        return PgRow(names, tuple(values))

    return make


_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_RETURNING = re.compile(r"\sRETURNING\s", re.IGNORECASE)


@lru_cache(maxsize=1024)
def to_postgres(sql: str) -> str:
    """SQLite's dialect as written in this code base, in PostgreSQL's (see the module)."""
    if "INSERT OR REPLACE" in sql.upper():
        raise ValueError("INSERT OR REPLACE has no PostgreSQL form: use ON CONFLICT DO UPDATE")
    out: list[str] = []
    in_literal = False
    for char in sql:
        if char == "'":
            in_literal = not in_literal
            out.append(char)
        elif char == "%":
            out.append("%%")
        elif char == "?" and not in_literal:
            out.append("%s")
        else:
            out.append(char)
    text = "".join(out)
    if _INSERT_OR_IGNORE.match(text):
        text = _INSERT_OR_IGNORE.sub("INSERT INTO", text, count=1)
        returning = _RETURNING.search(text)
        if returning:
            start = returning.start()
            text = f"{text[:start]} ON CONFLICT DO NOTHING{text[start:]}"
        else:
            text = f"{text.rstrip().rstrip(';')} ON CONFLICT DO NOTHING"
    return text


class PgConnection:
    """A psycopg connection behind the ``Connection`` interface (SQLite's dialect in)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Params = (), /) -> Cursor:
        cursor = self.raw.cursor(row_factory=_pg_row)
        with self._writer_turn(sql):
            cursor.execute(to_postgres(sql), tuple(parameters))
        return cursor

    def executemany(self, sql: str, parameters: Iterable[Params], /) -> Cursor:
        cursor = self.raw.cursor(row_factory=_pg_row)
        with self._writer_turn(sql):
            cursor.executemany(to_postgres(sql), [tuple(p) for p in parameters])
        return cursor

    @contextmanager
    def _writer_turn(self, sql: str) -> Iterator[None]:
        """A write outside a transaction waits its turn like a serialized transaction, as
        SQLite's autocommit writes do: it never lands between another's read and write."""
        if not _WRITE.match(sql) or self.raw.info.transaction_status != TransactionStatus.IDLE:
            yield
            return
        with self.raw.transaction():
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            yield

    def close(self) -> None:
        self.raw.close()


class PostgresDatabase(Database):
    """The router's database on a PostgreSQL server, shared by every node."""

    engine: Literal["sqlite", "postgresql"] = "postgresql"

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._connections: ThreadConnections[PgConnection] = ThreadConnections()
        with settings.connect() as conn:
            migrate_postgres(conn)

    def describe(self) -> str:
        return self.settings.describe()

    def connection(self) -> PgConnection:
        conn = self._connections.get()
        if conn is not None and (conn.raw.closed or conn.raw.broken):
            conn = None  # the server went away: a new connection
        if conn is None:
            conn = PgConnection(self.settings.connect())
            self._connections.put(conn)
        return conn

    @contextmanager
    def transaction(
        self, *, serialized: bool = True, study: str | None = None
    ) -> Iterator[Connection]:
        conn = self.connection()
        with conn.raw.transaction():
            if study is not None:
                # Shared with other studies' transactions, exclusive against every
                # serialized one; then the study's own lock.
                conn.raw.execute(
                    "SELECT pg_advisory_xact_lock_shared(%s), pg_advisory_xact_lock(%s)",
                    (WRITER_LOCK, study_lock_key(study)),
                )
            elif serialized:
                conn.raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            yield conn

    def sql_json_true(self, column: str, key: str) -> str:
        return f"COALESCE((NULLIF({column}, '')::jsonb ->> '{key}') = 'true', false)"

    def sql_local_month(self, epoch_column: str) -> str:
        return f"to_char(to_timestamp({epoch_column}), 'YYYY-MM')"  # session zone: local_zone()

    def notify(self, channel: str, conn: Connection | None = None) -> None:
        (conn or self.connection()).execute("SELECT pg_notify(?, '')", (channel,))

    def close(self) -> None:
        self._connections.close_own()

    def close_all(self) -> None:
        self._connections.close_all()


class Listener:
    """One thread that ``LISTEN``s on channels and calls their callbacks when another process
    (or this one) ``NOTIFY``s; it reconnects after a lost connection. Wake-ups only shorten the
    stages' waits: the work itself is always found in the database."""

    def __init__(self, settings: PostgresSettings, callbacks: dict[str, Callable[[], None]]):
        for channel in callbacks:
            if not re.fullmatch(r"[a-z_]{1,60}", channel):
                raise ValueError(f"not a channel name: {channel!r}")
        self._settings = settings
        self._callbacks = dict(callbacks)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pg-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._settings.connect() as conn:
                    for channel in self._callbacks:
                        conn.execute(f"LISTEN {channel}")  # names checked at construction
                    self.connected.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            callback = self._callbacks.get(note.channel)
                            if callback is not None:
                                callback()
            except psycopg.Error as exc:
                self.connected.clear()
                LOGGER.warning("database notifications: %s; reconnecting", type(exc).__name__)
                self._stop.wait(1.0)


def migrate_postgres(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Bring a PostgreSQL database to ``LATEST_VERSION`` (one node at a time: an advisory
    lock). An empty database gets the baseline, then each later migration's PostgreSQL
    statements, each step in its own transaction."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        start = _schema_version(conn)
        if start > LATEST_VERSION:
            raise SchemaError(
                f"schema version {start} is newer than this radrouter (knows up to "
                f"{LATEST_VERSION}); upgrade radrouter"
            )
        version = start
        if version == 0:
            conn.execute(BASELINE)
            version = BASELINE_VERSION
            _set_version(conn, version)
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            if migration.postgresql is None:
                raise SchemaError(f"migration {migration.version} has no PostgreSQL form")
            conn.execute(migration.postgresql)
            version = migration.version
            _set_version(conn, version)
    if start != version:
        LOGGER.info("database: PostgreSQL schema version %d -> %d", start, version)
    return start, version


def _schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()
        if tables and tables[0]:
            raise SchemaError("the database has tables but no schema version: not radrouter's")
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row is not None else 0


def _set_version(conn: psycopg.Connection[Any], version: int) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(version),),
    )
