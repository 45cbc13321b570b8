"""The schema is versioned and migrated at start: a database written by radrouter before leases
and the prior stage (``tests/data/radrouter-schema-v1.sql``) is upgraded in place, keeps every
row, and its interrupted work is resumed under the new rules."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from config.schema import DispatchRetryPolicy
from router.deliver.dispatch import DISPATCHES
from router.deliver.notify import DELIVERIES
from router.run.job_queue import JobQueue
from router.store.database import SqliteDatabase
from router.store.migrations import LATEST_VERSION, SchemaError
from router.store.queue import Claimer, SqlWorkQueue

V1_DUMP = Path(__file__).resolve().parents[2] / "data" / "radrouter-schema-v1.sql"


def v1_database(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(V1_DUMP.read_text())
    conn.close()
    return path


def row_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' AND name != 'meta'"
            )
        ]
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


def schema_of(path: Path) -> dict[str, object]:
    """Tables with their columns (name, type, not null, default) and every index and trigger."""
    conn = sqlite3.connect(path)
    try:
        shape: dict[str, object] = {}
        for kind, name in conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ):
            if kind == "table":
                shape[name] = [
                    (c[1], c[2], c[3], c[4])
                    for c in conn.execute(f"PRAGMA table_info({name})").fetchall()
                ]
            else:
                shape[name] = kind
        return shape
    finally:
        conn.close()


def test_a_version_1_database_is_upgraded_keeping_every_row(tmp_path: Path) -> None:
    path = v1_database(tmp_path / "radrouter.sqlite3")
    before = row_counts(path)
    db = SqliteDatabase(path)
    version = db.query_one("SELECT value FROM meta WHERE key = 'schema_version'")
    assert version is not None and int(version["value"]) == LATEST_VERSION == 9
    after = row_counts(path)
    kept = {t: n for t, n in after.items() if t in before and t != "prior_index"}
    assert kept == {t: n for t, n in before.items() if t != "prior_index"}
    assert after["prior_requests"] == 0
    # The prior index held plain hashes of PatientIDs: emptied (rebuilt with keyed ones).
    assert before["prior_index"] == 1 and after["prior_index"] == 0
    jobs = {r["id"]: r["state"] for r in db.query("SELECT id, state FROM jobs")}
    assert jobs == {1: "done", 2: "running", 3: "queued"}
    assert (tmp_path / "radrouter.sqlite3.v1.bak").exists(), "a copy is kept before migrating"
    assert row_counts(tmp_path / "radrouter.sqlite3.v1.bak") == before


def test_work_interrupted_under_version_1_is_resumed_after_the_upgrade(tmp_path: Path) -> None:
    db = SqliteDatabase(v1_database(tmp_path / "radrouter.sqlite3"))
    node = Claimer.for_data_dir(tmp_path)
    jobs = JobQueue(db, claimer=node)
    dispatches = SqlWorkQueue(db, DISPATCHES, node, lambda _row: DispatchRetryPolicy())
    deliveries = SqlWorkQueue(db, DELIVERIES, node, lambda _row: DispatchRetryPolicy())
    assert jobs.items.reclaim_previous_boot() == 1
    assert dispatches.reclaim_previous_boot() == 1
    assert deliveries.reclaim_previous_boot() == 1
    # The stat job that was running comes back first, its interrupted attempt counted.
    claimed = jobs.claim()
    assert claimed is not None and (claimed.job.id, claimed.job.attempts) == (2, 2)
    with db.transaction() as conn:
        assert jobs.finish(conn, claimed, "absent", 1.0, "cpu") is True
    sending = dispatches.claim()
    assert sending is not None and sending.row["destination"] == "pacs"
    assert dispatches.claim() is None, "the dead-lettered dispatch stays dead"
    assert {r["channel"] for r in db.query("SELECT channel FROM deliveries")} == {"hl7", "fhir"}


def test_a_fresh_database_and_an_upgraded_one_have_the_same_schema(tmp_path: Path) -> None:
    SqliteDatabase(tmp_path / "fresh.sqlite3")
    SqliteDatabase(v1_database(tmp_path / "upgraded.sqlite3"))
    assert schema_of(tmp_path / "fresh.sqlite3") == schema_of(tmp_path / "upgraded.sqlite3")


def test_opening_an_up_to_date_database_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "radrouter.sqlite3"
    SqliteDatabase(path)
    shape = schema_of(path)
    SqliteDatabase(path)
    assert schema_of(path) == shape
    assert not list(tmp_path.glob("*.bak")), "no backup when there is nothing to migrate"


def test_a_database_newer_than_this_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "radrouter.sqlite3"
    SqliteDatabase(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="schema version 99 is newer"):
        SqliteDatabase(path)


def test_a_database_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE patients (id INTEGER)")
    conn.close()
    with pytest.raises(SchemaError, match="not radrouter's"):
        SqliteDatabase(path)
