"""SQLite (WAL) database: schema, per-thread connections, and small transaction helpers."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGER = logging.getLogger(__name__)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    peer_host TEXT NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL,
    state TEXT NOT NULL CHECK (state IN ('open', 'released', 'aborted', 'interrupted'))
);

CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL,
    completion_reason TEXT,
    finished_at REAL,
    accession_number_hash TEXT
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state);

CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies (study_uid),
    modality TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    routed_revision INTEGER NOT NULL DEFAULT 0,
    routed_at REAL,
    rule_names TEXT NOT NULL DEFAULT '',
    route_explanation TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS series_study ON series (study_uid);

CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received_at REAL NOT NULL,
    association_id TEXT,
    calling_ae TEXT NOT NULL DEFAULT '',
    called_ae TEXT NOT NULL DEFAULT '',
    instance_number INTEGER,
    acquisition_number INTEGER,
    images_in_acquisition INTEGER,
    number_of_frames INTEGER,
    orientation TEXT,
    slice_position REAL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);

CREATE TABLE IF NOT EXISTS association_studies (
    association_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    PRIMARY KEY (association_id, study_uid)
);
CREATE INDEX IF NOT EXISTS association_studies_study ON association_studies (study_uid);

CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_revision INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    priority TEXT NOT NULL,
    priority_rank INTEGER NOT NULL,
    send_to TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'superseded')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL DEFAULT '',
    model_seconds REAL,
    device TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (state, priority_rank, created_at);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid);

CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    study_uid TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    algorithm_version TEXT NOT NULL,
    version_number INTEGER NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    verdict TEXT NOT NULL,
    finding_count INTEGER NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    UNIQUE (study_uid, algorithm, version_number)
);

CREATE TABLE IF NOT EXISTS dispatches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    result_id INTEGER,
    series_uid TEXT,
    destination TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dispatches_claim ON dispatches (state, not_before);

CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    study_uid TEXT,
    job_id INTEGER,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_study ON events (study_uid);

-- Studies radrouter pulled from a PACS as priors of a follow-up (router/run/priors.py): stored
-- like any study, but never routed (they are evidence, not new work).
CREATE TABLE IF NOT EXISTS retrieved_priors (
    study_uid TEXT PRIMARY KEY,
    requested_at REAL NOT NULL,
    for_study_uid TEXT NOT NULL
);

-- Every DICOM object written for a result (router/deliver/result_writer.py): SR, SEG, KOS.
CREATE TABLE IF NOT EXISTS result_objects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id INTEGER NOT NULL REFERENCES results (id),
    kind TEXT NOT NULL CHECK (kind IN ('sr', 'seg', 'kos')),
    sop_class_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    series_number INTEGER NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS result_objects_result ON result_objects (result_id);

-- Worklist notifications (router/deliver/notify.py): one row per result (or finally failed job) whose
-- priority must be decided, then one delivery per configured channel.
CREATE TABLE IF NOT EXISTS notify_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    result_id INTEGER UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS notify_queue_state ON notify_queue (state, id);

CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notify_id INTEGER NOT NULL REFERENCES notify_queue (id),
    study_uid TEXT NOT NULL,
    channel TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    last_error TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    acknowledgement TEXT NOT NULL DEFAULT '',
    UNIQUE (notify_id, channel)
);
CREATE INDEX IF NOT EXISTS deliveries_claim ON deliveries (state, not_before);

-- AI priority flags (router/worklist_page/store.py): one row per algorithm result, or per failed job.
CREATE TABLE IF NOT EXISTS flags (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    result_id INTEGER UNIQUE REFERENCES results (id),
    job_id INTEGER,
    algorithm TEXT NOT NULL,
    algorithm_version TEXT NOT NULL,
    priority TEXT NOT NULL CHECK (priority IN ('stat', 'urgent', 'routine')),
    priority_rank INTEGER NOT NULL,
    reason TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('present', 'absent', 'not_assessed', 'failed')),
    raised INTEGER NOT NULL CHECK (raised IN (0, 1)),
    last_image_at REAL NOT NULL,
    flagged_at REAL NOT NULL,
    last_image_to_flag_s REAL NOT NULL,
    CHECK (result_id IS NOT NULL OR (verdict = 'failed' AND job_id IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS flags_study ON flags (study_uid, algorithm);
CREATE UNIQUE INDEX IF NOT EXISTS flags_failed_job ON flags (job_id) WHERE result_id IS NULL;

-- Radiologist feedback on results (router/worklist_page/store.py): append-only, with the flag as shown.
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id INTEGER NOT NULL REFERENCES results (id),
    study_uid TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    algorithm_version TEXT NOT NULL,
    verdict TEXT NOT NULL,
    priority TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    agree INTEGER NOT NULL CHECK (agree IN (0, 1)),
    comment TEXT NOT NULL DEFAULT '',
    reader TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_result ON feedback (result_id);
CREATE TRIGGER IF NOT EXISTS feedback_is_append_only_update BEFORE UPDATE ON feedback
BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
CREATE TRIGGER IF NOT EXISTS feedback_is_append_only_delete BEFORE DELETE ON feedback
BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
"""


class Database:
    """One SQLite file shared by every stage; each thread gets its own connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = self.connection()
        conn.executescript(SCHEMA)  # executescript manages its own transaction
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against process crashes (kill -9) in WAL mode; the spool files
            # themselves are fsync'd, and the index is rebuilt from them after a power loss.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
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
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
