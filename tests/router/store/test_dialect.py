"""The queries whose SQL the engines spell differently (JSON flags, local months, boolean
counts) give the same answers on SQLite and on PostgreSQL (``database`` fixture)."""

from __future__ import annotations

import datetime
import json
import time

from router.drift.sample import read_observations
from router.store.database import Database
from router.usage import read_usage

NOW = time.time()
STUDY = "1.2.826.0.1.3680043.8.498.11"


def add_run(
    db: Database, n: int, verdict: str, summary: dict[str, object], state: str = "done"
) -> None:
    """One finished job of lung_nodule on study ``n`` (from calling AE ``CT01``), with its
    result when done."""
    conn = db.connection()
    study = f"{STUDY}{n}"
    series = f"{study}.1"
    conn.execute(
        "INSERT INTO studies (study_uid, state, first_received_at, last_received_at) "
        "VALUES (?, 'done', ?, ?)",
        (study, NOW, NOW),
    )
    conn.execute(
        "INSERT INTO series (series_uid, study_uid, first_received_at, last_received_at) "
        "VALUES (?, ?, ?, ?)",
        (series, study, NOW, NOW),
    )
    conn.execute(
        "INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid, "
        "transfer_syntax_uid, path, size, sha256, received_at, calling_ae) "
        "VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', 'p', 1, 'x', ?, "
        "'CT01')",
        (f"{series}.1", series, study, NOW),
    )
    job = conn.execute(
        "INSERT INTO jobs (study_uid, series_uid, study_revision, algorithm, rule_name, "
        "priority, priority_rank, state, max_attempts, created_at, finished_at, verdict) "
        "VALUES (?, ?, 1, 'lung_nodule', 'chest', 'routine', 3, ?, 3, ?, ?, ?) RETURNING id",
        (study, series, state, NOW, NOW, verdict),
    ).fetchone()[0]
    if state == "done":
        conn.execute(
            "INSERT INTO results (job_id, study_uid, algorithm, algorithm_version, "
            "version_number, series_instance_uid, sop_instance_uid, sop_class_uid, path, "
            "verdict, finding_count, summary, created_at) "
            "VALUES (?, ?, 'lung_nodule', '1', ?, '1.3', ?, '1.5', 'p', ?, 0, ?, ?)",
            (job, study, 1, f"1.4.{n}", verdict, json.dumps(summary), NOW + n),
        )


def test_usage_counts_outcomes_by_local_month(database: Database) -> None:
    add_run(database, 1, "present", {"probability": 0.9})
    add_run(database, 2, "absent", {"shadow": True, "probability": 0.1})
    add_run(database, 3, "", {}, state="failed")
    month = datetime.datetime.fromtimestamp(NOW).strftime("%Y-%m")
    rows = read_usage(database, {"CT01": "Main"})
    assert {(r.month, r.source_ae, r.site, r.kind, r.outcome, r.runs) for r in rows} == {
        (month, "CT01", "Main", "clinical", "present", 1),
        (month, "CT01", "Main", "clinical", "shadow", 1),
        (month, "CT01", "Main", "clinical", "failed", 1),
    }
    assert read_usage(database, {}, month) == read_usage(database, {})
    assert read_usage(database, {}, "1999-01") == []


def test_drift_reads_the_summaries_alike(database: Database) -> None:
    add_run(
        database,
        1,
        "present",
        {
            "findings": [{"probability": 0.7}, {"probability": 0.95}, {"probability": "x"}],
            "scanner": {"model": "SOMATOM"},
            "acquisition": {"kernel": "B30f", "kvp": 120, "slice_thickness_mm": 1.0},
        },
    )
    add_run(database, 2, "not_assessed", {"reason": "too few slices"})
    observations = read_observations(database, "lung_nodule", NOW - 10, NOW + 10)
    by_verdict = {o.verdict: o for o in observations}
    present = by_verdict["present"]
    assert (present.probability, present.model, present.kernel, present.kvp) == (
        0.95,
        "SOMATOM",
        "B30f",
        120.0,
    )
    assert by_verdict["not_assessed"].probability is None
    assert by_verdict["not_assessed"].reason
