"""PostgreSQL as the router's database, against a real server (``postgres`` fixture): the
schema equals SQLite's, SQLite's dialect runs, writers are serialized, notifications cross
processes, and a restarted server is reconnected to."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from config.schema import DatabaseConfig
from router.store.database import SqliteDatabase
from router.store.migrations import LATEST_VERSION, SchemaError
from router.store.open import database_at
from router.store.postgres import (
    Listener,
    PostgresDatabase,
    PostgresSettings,
    migrate_postgres,
    to_postgres,
)
from testing.postgres import PostgresServer

SQLITE_TO_POSTGRES_TYPES = {"TEXT": "text", "INTEGER": "bigint", "REAL": "double precision"}


def _sqlite_schema(path: Path) -> dict[str, dict[str, tuple[str, bool, bool]]]:
    """table -> column -> (type, not null, part of the primary key)."""
    SqliteDatabase(path).close_all()
    conn = sqlite3.connect(path)
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'"
        )
    ]
    schema = {}
    for table in tables:
        schema[table] = {
            name: (SQLITE_TO_POSTGRES_TYPES[kind.upper()], bool(notnull) or bool(pk), bool(pk))
            for _cid, name, kind, notnull, _default, pk in conn.execute(
                f"PRAGMA table_info({table})"
            )
        }
    conn.close()
    return schema


def _postgres_schema(url: str) -> dict[str, dict[str, tuple[str, bool, bool]]]:
    PostgresDatabase(PostgresSettings(url)).close_all()
    with psycopg.connect(url) as conn:
        keys = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc "
                "JOIN information_schema.key_column_usage kcu "
                "ON kcu.constraint_name = tc.constraint_name "
                "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'public'"
            )
        }
        schema: dict[str, dict[str, tuple[str, bool, bool]]] = {}
        for table, column, kind, nullable in conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'public'"
        ):
            schema.setdefault(table, {})[column] = (
                kind,
                nullable == "NO",
                (table, column) in keys,
            )
    return schema


def _indexes_sqlite(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    names = {
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    }
    conn.close()
    return names


def test_the_postgresql_schema_is_the_sqlite_schema(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database()
    assert _postgres_schema(url) == _sqlite_schema(tmp_path / "db.sqlite3")
    with psycopg.connect(url) as conn:
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE "
                "schemaname = 'public' AND indexname NOT LIKE "
                "'%_pkey' AND indexname NOT LIKE '%_key'"
            )
        }
    assert indexes == _indexes_sqlite(tmp_path / "db.sqlite3")


def test_feedback_stays_append_only_and_checks_hold(postgres: PostgresServer) -> None:
    db = database_at(postgres.create_database())
    conn = db.connection()
    conn.execute(
        "INSERT INTO studies (study_uid, state, first_received_at, last_received_at) "
        "VALUES ('1.2', 'receiving', 1, 1)"
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO associations (id, calling_ae, called_ae, peer_host, opened_at, state) "
            "VALUES ('a', 'X', 'Y', 'h', 1, 'nonsense')"
        )
    job = conn.execute(
        "INSERT INTO jobs (study_uid, series_uid, study_revision, algorithm, rule_name, "
        "priority, priority_rank, state, max_attempts, created_at) "
        "VALUES ('1.2', '1.2.3', 1, 'a', 'r', 'routine', 3, 'done', 3, 1) RETURNING id"
    ).fetchone()[0]
    result = conn.execute(
        "INSERT INTO results (job_id, study_uid, algorithm, algorithm_version, version_number, "
        "series_instance_uid, sop_instance_uid, sop_class_uid, path, verdict, finding_count, "
        "created_at) VALUES (?, '1.2', 'a', '1', 1, '1.3', '1.4', '1.5', 'p', 'absent', 0, 1) "
        "RETURNING id",
        (job,),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO feedback (result_id, study_uid, algorithm, algorithm_version, verdict, "
        "agree, at) VALUES (?, '1.2', 'a', '1', 'absent', ?, 1)",
        (result, True),
    )
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("UPDATE feedback SET comment = 'changed'")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("DELETE FROM feedback")
    row = db.query_one("SELECT agree, comment FROM feedback")
    assert row is not None and (row["agree"], row[1], row.keys()) == (1, "", ["agree", "comment"])
    db.close_all()


@pytest.mark.parametrize(
    ("sqlite", "postgresql"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = '?'", "SELECT * FROM t WHERE a = %s AND b = '?'"),
        ("SELECT '50%' || ?", "SELECT '50%%' || %s"),
        (
            "INSERT OR IGNORE INTO t (a) VALUES (?)",
            "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING",
        ),
        (
            "INSERT OR IGNORE INTO t (a) VALUES (?) RETURNING id",
            "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING RETURNING id",
        ),
        ("SELECT 'it''s' WHERE x = ?", "SELECT 'it''s' WHERE x = %s"),
    ],
)
def test_sqlite_dialect_becomes_postgresql(sqlite: str, postgresql: str) -> None:
    assert to_postgres(sqlite) == postgresql


def test_insert_or_replace_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="ON CONFLICT"):
        to_postgres("INSERT OR REPLACE INTO t (a) VALUES (?)")


def test_serialized_transactions_lose_no_update(postgres: PostgresServer) -> None:
    """Read-then-write in eight threads at once, as the stages do: no increment is lost,
    because serialized transactions follow one another as SQLite's do."""
    db = database_at(postgres.create_database())
    db.connection().execute("INSERT INTO meta (key, value) VALUES ('counter', '0')")

    def add_ten() -> None:
        for _ in range(10):
            with db.transaction() as conn:
                row = conn.execute("SELECT value FROM meta WHERE key = 'counter'").fetchone()
                time.sleep(0.001)
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'counter'", (str(int(row[0]) + 1),)
                )
        db.close()

    threads = [threading.Thread(target=add_ten) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    row = db.query_one("SELECT value FROM meta WHERE key = 'counter'")
    assert row is not None and row[0] == "80"
    db.close_all()


def test_a_write_outside_a_transaction_waits_for_a_serialized_one(
    postgres: PostgresServer,
) -> None:
    """A serialized transaction reads, then writes; a single UPDATE sent meanwhile from
    another connection lands after it commits, not between its read and its write."""
    db = database_at(postgres.create_database())
    db.connection().execute("INSERT INTO meta (key, value) VALUES ('counter', '0')")
    read = threading.Event()

    def read_then_write() -> None:
        with db.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'counter'").fetchone()
            read.set()
            time.sleep(0.5)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'counter'", (str(int(row[0]) + 1),))
        db.close()

    thread = threading.Thread(target=read_then_write)
    thread.start()
    assert read.wait(10)
    db.connection().execute(
        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'counter'"
    )
    thread.join(timeout=30)
    row = db.query_one("SELECT value FROM meta WHERE key = 'counter'")
    assert row is not None and row[0] == "2"
    db.close_all()


def test_a_failed_transaction_is_rolled_back(postgres: PostgresServer) -> None:
    db = database_at(postgres.create_database())
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('x', '1')")
        raise RuntimeError("the caller failed")
    assert db.query_one("SELECT 1 FROM meta WHERE key = 'x'") is None
    db.record_event("still_usable")
    assert db.query_one("SELECT kind FROM events")[0] == "still_usable"  # type: ignore[index]
    db.close_all()


def test_a_notification_from_another_process_wakes_a_listener(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    db = database_at(url)
    woken = threading.Event()
    listener = Listener(PostgresSettings(url), {"radrouter_jobs": woken.set})
    listener.start()
    try:
        assert listener.connected.wait(10)
        code = (
            "import sys\nfrom router.store.open import database_at\n"
            "db = database_at(sys.argv[1])\n"
            "with db.transaction() as conn:\n    db.notify('radrouter_jobs', conn)\n"
        )
        subprocess.run([sys.executable, "-c", code, url], check=True, timeout=60)
        assert woken.wait(5), "the other process's NOTIFY did not arrive"
    finally:
        listener.stop()
        db.close_all()


def test_a_restarted_server_is_reconnected_to_and_heard_again(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    db = database_at(url)
    woken = threading.Event()
    listener = Listener(PostgresSettings(url), {"radrouter_assemble": woken.set})
    listener.start()
    try:
        assert listener.connected.wait(10)
        db.record_event("before")
        postgres.restart("fast")
        with pytest.raises(psycopg.OperationalError):
            db.query_one("SELECT 1")  # the statement under way when the server went
        rows = db.query("SELECT kind FROM events")  # the next one reconnects
        assert [r["kind"] for r in rows] == ["before"]
        deadline = time.monotonic() + 15
        while not woken.is_set() and time.monotonic() < deadline:
            db.notify("radrouter_assemble")
            woken.wait(0.5)
        assert woken.is_set(), "the listener did not reconnect"
    finally:
        listener.stop()
        db.close_all()


def test_a_database_that_is_not_radrouters_or_is_newer_is_refused(
    postgres: PostgresServer,
) -> None:
    foreign = postgres.create_database()
    with psycopg.connect(foreign, autocommit=True) as conn:
        conn.execute("CREATE TABLE patients (id int)")
    with pytest.raises(SchemaError, match="not radrouter's"):
        database_at(foreign)
    newer = postgres.create_database()
    database_at(newer).close_all()
    with psycopg.connect(newer, autocommit=True) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'".replace("?", "%s"),
            (str(LATEST_VERSION + 1),),
        )
        with pytest.raises(SchemaError, match="newer than this radrouter"):
            migrate_postgres(conn)


def test_migrating_again_changes_nothing(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate_postgres(conn) == (0, LATEST_VERSION)
        assert migrate_postgres(conn) == (LATEST_VERSION, LATEST_VERSION)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"engine": "postgresql"}, "needs url"),
        ({"engine": "postgresql", "url": "mysql://db/x"}, "must start with postgresql://"),
        ({"engine": "postgresql", "url": "postgresql://u:secret@db/x"}, "holds a password"),
        ({"engine": "postgresql", "url": "postgresql://db/x?password=secret"}, "holds a password"),
        ({"engine": "sqlite", "url": "postgresql://db/x"}, "for engine: postgresql"),
        (
            {
                "engine": "postgresql",
                "url": "postgresql://u@db/x",
                "password_env": "A",
                "password_file": "/f",
            },
            "not both",
        ),
    ],
)
def test_database_settings_are_checked(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DatabaseConfig.model_validate(settings)


def test_serve_names_an_unreachable_database_and_stops(tmp_path: Path) -> None:
    from testing.orthanc import free_port

    config = tmp_path / "radrouter.yaml"
    config.write_text(
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {free_port()}}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"storage: {{data_dir: {tmp_path / 'data'}, database: {{engine: postgresql, "
        f"url: 'postgresql://radrouter@127.0.0.1:{free_port()}/radrouter', "
        "password_env: RADROUTER_TEST_DB_PASSWORD}}\n",
        encoding="utf-8",
    )
    run = subprocess.run(
        [sys.executable, "-m", "router.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "RADROUTER_TEST_DB_PASSWORD": "s3cret-value"},
    )
    assert run.returncode == 2, run.stderr
    assert "database:" in run.stderr and "s3cret-value" not in run.stderr + run.stdout


def test_instances_of_other_studies_are_indexed_at_once_and_of_one_study_in_turn(
    postgres: PostgresServer,
) -> None:
    """A study's transaction holds: another study's goes ahead; the same study's and any
    serialized transaction wait for it."""
    db = database_at(postgres.create_database())
    holding = threading.Event()
    release = threading.Event()
    finished: dict[str, float] = {}

    def hold() -> None:
        with db.transaction(study="1.1"):
            holding.set()
            release.wait(10)
            # Before the commit: a waiter may finish before this thread runs again after it.
            finished["holder"] = time.monotonic()
        db.close()

    def other(name: str, **kwargs: object) -> None:
        with db.transaction(**kwargs) as conn:  # type: ignore[arg-type]
            conn.execute("INSERT INTO meta (key, value) VALUES (?, '1')", (name,))
        finished[name] = time.monotonic()
        db.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    beside = threading.Thread(target=other, args=("other study",), kwargs={"study": "1.2"})
    beside.start()
    beside.join(timeout=10)
    assert set(finished) == {"other study"}, "another study's transaction waited"
    others = [
        threading.Thread(target=other, args=("same study",), kwargs={"study": "1.1"}),
        threading.Thread(target=other, args=("serialized",)),
    ]
    for thread in others:
        thread.start()
    time.sleep(1.0)
    assert set(finished) == {"other study"}, finished
    release.set()
    for thread in [holder, *others]:
        thread.join(timeout=30)
    assert finished["same study"] > finished["holder"] < finished["serialized"]
    db.close_all()
