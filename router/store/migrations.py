"""The database schema as an ordered list of migrations, applied at start.

A fresh database and an upgraded one go through the same steps, so they cannot drift apart:
migration 1 is the schema as radrouter 0.1 first shipped it (frozen, never edited), and every
change after it is a new step. ``meta.schema_version`` records the last step applied. Each step
runs in its own transaction with foreign keys checked before it commits; a database newer than
this code is refused rather than guessed at. Before the first step on an existing database, a
copy is kept beside it (``radrouter.sqlite3.v<N>.bak``).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    sql: str
    postgresql: str | None = None
    """The same step for PostgreSQL; every migration after the PostgreSQL baseline
    (``router.store.postgres_schema.BASELINE_VERSION``) has one."""


class SchemaError(RuntimeError):
    """The database cannot be brought to this code's schema."""


V1_BASELINE = """
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

V2_LEASES_AND_PRIORS = """
-- Work items (jobs, dispatches, deliveries, prior requests) are claimed with a lease by a
-- named claimer and kept alive by heartbeats (router/store/queue.py); a job may wait for the
-- prior stage before it is ready, and records the prior exam that stage chose.
CREATE TABLE jobs_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_revision INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    priority TEXT NOT NULL,
    priority_rank INTEGER NOT NULL,
    send_to TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL
        CHECK (state IN ('waiting', 'queued', 'running', 'done', 'failed', 'superseded')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL DEFAULT '',
    model_seconds REAL,
    device TEXT NOT NULL DEFAULT '',
    claimed_by TEXT NOT NULL DEFAULT '',
    lease_until REAL,
    prior_study_uid TEXT NOT NULL DEFAULT '',
    prior_series_uid TEXT NOT NULL DEFAULT ''
);
INSERT INTO jobs_v2 (id, study_uid, series_uid, study_revision, algorithm, rule_name, priority,
    priority_rank, send_to, state, attempts, max_attempts, not_before, created_at, started_at,
    finished_at, error, verdict, model_seconds, device)
SELECT id, study_uid, series_uid, study_revision, algorithm, rule_name, priority,
    priority_rank, send_to, state, attempts, max_attempts, not_before, created_at, started_at,
    finished_at, error, verdict, model_seconds, device FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
CREATE INDEX jobs_claim ON jobs (state, priority_rank, created_at);
CREATE INDEX jobs_study ON jobs (study_uid);

ALTER TABLE dispatches ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE dispatches ADD COLUMN lease_until REAL;
ALTER TABLE deliveries ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE deliveries ADD COLUMN lease_until REAL;

-- The prior stage (router/run/priors/stage.py): one request per follow-up job.
CREATE TABLE prior_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL UNIQUE REFERENCES jobs (id),
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'working', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    last_error TEXT NOT NULL DEFAULT '',
    claimed_by TEXT NOT NULL DEFAULT '',
    lease_until REAL,
    outcome TEXT NOT NULL DEFAULT ''
);
CREATE INDEX prior_requests_claim ON prior_requests (state, not_before);
CREATE INDEX prior_requests_study ON prior_requests (study_uid);

-- Studies by patient (a hash of PatientID, never the ID) for finding priors locally; created
-- on first use before version 2.
CREATE TABLE IF NOT EXISTS prior_index (
    study_uid TEXT PRIMARY KEY,
    patient_key TEXT NOT NULL,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS prior_index_patient ON prior_index (patient_key);
"""

V3_KEYED_PATIENT_PSEUDONYMS = """
-- The prior index keyed patients by a plain SHA-256 of the PatientID, which anyone can
-- reverse by hashing every MRN; keys are now HMACs under the site secret
-- (router/store/pseudonyms.py). The index is derived data: emptied here, rebuilt on use.
DELETE FROM prior_index;
"""

V4_RETENTION = """
-- Retention (router/retention.py): when a study's images and result files were deleted.
ALTER TABLE studies ADD COLUMN purged_at REAL;
"""

V5_PRESENTATION_OBJECTS = """
-- Results can also be written as a presentation state (gsps) and a secondary-capture summary
-- image (sc). SQLite cannot change a CHECK constraint: the table is rebuilt, rows kept.
CREATE TABLE result_objects_v5 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id INTEGER NOT NULL REFERENCES results (id),
    kind TEXT NOT NULL CHECK (kind IN ('sr', 'seg', 'kos', 'gsps', 'sc')),
    sop_class_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    series_number INTEGER NOT NULL,
    path TEXT NOT NULL
);
INSERT INTO result_objects_v5 (id, result_id, kind, sop_class_uid, series_instance_uid,
    sop_instance_uid, series_number, path)
    SELECT id, result_id, kind, sop_class_uid, series_instance_uid, sop_instance_uid,
        series_number, path FROM result_objects;
DROP TABLE result_objects;
ALTER TABLE result_objects_v5 RENAME TO result_objects;
CREATE INDEX IF NOT EXISTS result_objects_result ON result_objects (result_id);
"""

V6_QA_SERIES = """
-- QA, phantom and calibration series (config qa.signs): the sign that marked a series, so
-- they are counted apart and never given to a clinical algorithm.
ALTER TABLE series ADD COLUMN qa_sign TEXT;
"""

V7_DRIFT_BASELINES = """
-- Drift monitoring (router/drift): the distributions of an algorithm's inputs and outputs over
-- a period (recorded at go-live), which later windows are compared with. The latest recorded
-- for an algorithm is its baseline; earlier ones are kept. Results are read per algorithm and
-- time window.
CREATE TABLE drift_baselines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    algorithm TEXT NOT NULL,
    period_start REAL NOT NULL,
    period_end REAL NOT NULL,
    result_count INTEGER NOT NULL,
    snapshot TEXT NOT NULL,
    recorded_by TEXT NOT NULL DEFAULT '',
    recorded_at REAL NOT NULL
);
CREATE INDEX drift_baselines_algorithm ON drift_baselines (algorithm, recorded_at);
CREATE INDEX results_algorithm_created ON results (algorithm, created_at);
"""

V8_EXTERNAL_ALGORITHMS = """
-- External algorithms (router/external): a job whose series went, de-identified, to a vendor
-- waits (state 'waiting', no worker held) for the answer; one request per such job. The
-- vendor's answer arrives at the node in the de-identified study and is held apart from the
-- index of received studies until the answer stage re-identifies it. Vendor objects travel with
-- the result they belong to: result_objects gains the kind 'vendor' (table rebuilt, rows kept).
CREATE TABLE external_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL UNIQUE REFERENCES jobs (id),
    algorithm TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    deid_study_uid TEXT NOT NULL,
    deid_series_uid TEXT NOT NULL,
    instances_sent INTEGER NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('awaiting', 'answered', 'expired', 'superseded', 'refused')),
    sent_at REAL NOT NULL,
    deadline_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL DEFAULT ''
);
CREATE INDEX external_requests_deid_study ON external_requests (deid_study_uid, state);
CREATE INDEX external_requests_state ON external_requests (state, deadline_at);
CREATE TABLE external_answers (
    sop_instance_uid TEXT PRIMARY KEY,
    request_id INTEGER REFERENCES external_requests (id),
    deid_study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL
);
CREATE INDEX external_answers_request ON external_answers (request_id);
CREATE TABLE result_objects_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id INTEGER NOT NULL REFERENCES results (id),
    kind TEXT NOT NULL CHECK (kind IN ('sr', 'seg', 'kos', 'gsps', 'sc', 'vendor')),
    sop_class_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    series_number INTEGER NOT NULL,
    path TEXT NOT NULL
);
INSERT INTO result_objects_v8 (id, result_id, kind, sop_class_uid, series_instance_uid,
    sop_instance_uid, series_number, path)
    SELECT id, result_id, kind, sop_class_uid, series_instance_uid, sop_instance_uid,
        series_number, path FROM result_objects;
DROP TABLE result_objects;
ALTER TABLE result_objects_v8 RENAME TO result_objects;
CREATE INDEX IF NOT EXISTS result_objects_result ON result_objects (result_id);
"""

V9_NODES = """
-- Every process of a deployment (one host or several, one role or all) says who it is and
-- that it lives: the role, the host, what it has loaded; /readyz and `radrouter status` list
-- those seen lately (router/store/nodes.py).
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    algorithms TEXT NOT NULL DEFAULT '[]',
    devices TEXT NOT NULL DEFAULT '{}',
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL,
    stopped_at REAL
);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline: the schema of radrouter 0.1", V1_BASELINE),
    Migration(2, "leases on work items; prior retrieval as its own stage", V2_LEASES_AND_PRIORS),
    Migration(3, "keyed patient pseudonyms in the prior index", V3_KEYED_PATIENT_PSEUDONYMS),
    Migration(4, "retention: studies record when their files were purged", V4_RETENTION),
    Migration(5, "results as presentation states and summary images", V5_PRESENTATION_OBJECTS),
    Migration(6, "series record the QA sign that marked them", V6_QA_SERIES),
    Migration(7, "drift baselines per algorithm", V7_DRIFT_BASELINES),
    Migration(8, "external algorithms: requests, answers, vendor objects", V8_EXTERNAL_ALGORITHMS),
    Migration(
        9,
        "the nodes of a deployment",
        V9_NODES,
        postgresql=V9_NODES.replace("INTEGER", "BIGINT").replace("REAL", "DOUBLE PRECISION"),
    ),
)
LATEST_VERSION = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in the database; 0 for an empty database."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if has_meta is None:
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()
        if tables[0]:
            raise SchemaError("the database has tables but no schema version: not radrouter's")
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row is not None else 0


def migrate(path: Path) -> tuple[int, int]:
    """Bring the database at ``path`` to ``LATEST_VERSION``. Returns (from, to)."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # Table rebuilds drop and recreate referenced tables: checked by foreign_key_check
        # before each step commits instead.
        conn.execute("PRAGMA foreign_keys=OFF")
        start = schema_version(conn)
        if start > LATEST_VERSION:
            raise SchemaError(
                f"{path}: schema version {start} is newer than this radrouter "
                f"(knows up to {LATEST_VERSION}); upgrade radrouter or restore a backup"
            )
        pending = [m for m in MIGRATIONS if m.version > start]
        if pending and start > 0:
            _backup(conn, path.with_name(f"{path.name}.v{start}.bak"))
        for migration in pending:
            _apply(conn, migration)
            LOGGER.info(
                "database %s: migrated to schema version %d (%s)",
                path.name,
                migration.version,
                migration.summary,
            )
        return start, LATEST_VERSION
    finally:
        conn.close()


def _apply(conn: sqlite3.Connection, migration: Migration) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(migration.sql):
            conn.execute(statement)
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise SchemaError(
                f"migration {migration.version} would break {len(problems)} reference(s), "
                f"first: {tuple(problems[0])}"
            )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(migration.version),),
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _statements(sql: str) -> list[str]:
    """Split a script into complete statements (``sqlite3.complete_statement``), so a step
    runs inside one transaction (``executescript`` would commit first)."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in buffer.splitlines()
    ):
        raise SchemaError(f"incomplete statement in migration: {buffer.strip()[:80]}")
    return statements


def _backup(conn: sqlite3.Connection, target: Path) -> None:
    if target.exists():
        return
    copy = sqlite3.connect(target)
    try:
        conn.backup(copy)
    finally:
        copy.close()
    LOGGER.info("database backed up to %s before migrating", target.name)
