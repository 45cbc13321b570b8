"""AI priority flags and feedback in SQLite: worklist order, latest results, failures, CSV."""

from __future__ import annotations

import csv
import datetime
import io
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.schema import Priority
from router.store.database import Database, SqliteDatabase
from router.worklist_page.store import (
    FEEDBACK_CSV_COLUMNS,
    FlagVerdict,
    UnknownResultError,
    export_feedback_csv,
    list_feedback,
    list_worklist,
    record_feedback,
    record_flag,
)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return SqliteDatabase(tmp_path / "radrouter.sqlite3")


@dataclass(frozen=True)
class StoredResult:
    study_uid: str
    algorithm: str
    result_id: int
    job_id: int
    last_image_at: float


def add_study(db: Database, study_uid: str, arrived_at: float, modality: str = "CT") -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO studies (study_uid, state, first_received_at, last_received_at) "
            "VALUES (?, 'done', ?, ?)",
            (study_uid, arrived_at, arrived_at + 10.0),
        )
        conn.execute(
            "INSERT INTO series (series_uid, study_uid, modality, first_received_at, "
            "last_received_at) VALUES (?, ?, ?, ?, ?)",
            (f"{study_uid}.1", study_uid, modality, arrived_at, arrived_at + 10.0),
        )


def add_job(
    db: Database,
    study_uid: str,
    algorithm: str,
    *,
    state: str = "done",
    lane: Priority = Priority.ROUTINE,
    error: str = "",
    finished_at: float = 0.0,
) -> int:
    with db.transaction() as conn:
        job_id = conn.execute(
            "INSERT INTO jobs (study_uid, series_uid, study_revision, algorithm, rule_name, "
            "priority, priority_rank, state, attempts, max_attempts, created_at, finished_at, "
            "error) VALUES (?, ?, 1, ?, 'rule', ?, ?, ?, 2, 2, ?, ?, ?) RETURNING id",
            (
                study_uid,
                f"{study_uid}.1",
                algorithm,
                lane.value,
                lane.rank,
                state,
                finished_at,
                finished_at,
                error,
            ),
        ).fetchone()[0]
    return int(job_id)


def add_result(
    db: Database, study_uid: str, algorithm: str = "pe", verdict: str = "present", version: int = 1
) -> StoredResult:
    """A study's job and result rows, as the worker leaves them."""
    study = db.query_one("SELECT last_received_at FROM studies WHERE study_uid = ?", (study_uid,))
    assert study is not None
    job_id = add_job(db, study_uid, algorithm)
    with db.transaction() as conn:
        result_id = conn.execute(
            "INSERT INTO results (job_id, study_uid, algorithm, algorithm_version, "
            "version_number, series_instance_uid, sop_instance_uid, sop_class_uid, path, "
            "verdict, finding_count, created_at) VALUES (?, ?, ?, '1.2.0', ?, ?, ?, "
            "'1.2.840.10008.5.1.4.1.1.88.34', '/nonexistent.dcm', ?, ?, ?) RETURNING id",
            (
                job_id,
                study_uid,
                algorithm,
                version,
                f"{study_uid}.9{version}",
                f"{study_uid}.9{version}.1",
                verdict,
                1 if verdict == "present" else 0,
                float(study["last_received_at"]) + 5.0,
            ),
        ).fetchone()[0]
    return StoredResult(
        study_uid, algorithm, int(result_id), job_id, float(study["last_received_at"])
    )


def flag(
    db: Database,
    result: StoredResult,
    priority: Priority,
    *,
    raised: bool = True,
    verdict: str = "present",
    after_s: float = 7.5,
    reason: str | None = None,
) -> int:
    return record_flag(
        db,
        study_uid=result.study_uid,
        result_id=result.result_id,
        algorithm=result.algorithm,
        algorithm_version="1.2.0",
        priority=priority,
        reason=reason if reason is not None else f"AI: {result.algorithm} {priority.value}",
        verdict=verdict,
        raised=raised,
        last_image_at=result.last_image_at,
        flagged_at=result.last_image_at + after_s,
    )


def test_worklist_puts_stat_before_urgent_before_routine_then_oldest_first(db: Database) -> None:
    lanes = {
        "1.1": (100.0, Priority.ROUTINE),
        "1.2": (200.0, Priority.STAT),
        "1.3": (300.0, Priority.URGENT),
        "1.4": (50.0, Priority.URGENT),
        "1.5": (400.0, Priority.STAT),
        "1.6": (10.0, Priority.ROUTINE),
    }
    for uid, (arrived_at, lane) in lanes.items():
        add_study(db, uid, arrived_at)
        flag(db, add_result(db, uid), lane, raised=lane is not Priority.ROUTINE)

    worklist = list_worklist(db)

    assert [s.study_uid for s in worklist] == ["1.2", "1.5", "1.4", "1.3", "1.6", "1.1"]
    assert [s.priority for s in worklist] == [
        Priority.STAT,
        Priority.STAT,
        Priority.URGENT,
        Priority.URGENT,
        Priority.ROUTINE,
        Priority.ROUTINE,
    ]


def test_study_priority_is_the_most_urgent_latest_flag_of_its_algorithms(db: Database) -> None:
    add_study(db, "2.1", 100.0)
    flag(db, add_result(db, "2.1", "lung_nodule", "absent"), Priority.ROUTINE, raised=False)
    flag(
        db,
        add_result(db, "2.1", "pe"),
        Priority.URGENT,
        reason="AI: suspected PE, right lower lobe",
    )

    [study] = list_worklist(db)

    assert study.priority is Priority.URGENT and study.raised
    assert study.reason == "AI: suspected PE, right lower lobe"
    assert [r.algorithm for r in study.results] == ["pe", "lung_nodule"]
    assert study.modalities == ("CT",)


def test_a_rerun_supersedes_the_earlier_flag_of_the_same_algorithm(db: Database) -> None:
    add_study(db, "3.1", 100.0)
    flag(db, add_result(db, "3.1", "pe", version=1), Priority.STAT, after_s=5.0)
    flag(
        db,
        add_result(db, "3.1", "pe", "absent", version=2),
        Priority.ROUTINE,
        raised=False,
        verdict="absent",
        after_s=60.0,
    )

    [study] = list_worklist(db)

    assert study.priority is Priority.ROUTINE and not study.raised
    assert [r.verdict for r in study.results] == [FlagVerdict.ABSENT]


def test_an_unraised_lane_is_never_lowered_by_a_negative(db: Database) -> None:
    # The priority policy states the lane a study already had when it raises nothing.
    add_study(db, "4.1", 100.0)
    flag(
        db,
        add_result(db, "4.1", "pe", "absent"),
        Priority.STAT,
        raised=False,
        verdict="absent",
        reason="AI: no PE",
    )
    add_study(db, "4.2", 50.0)
    flag(db, add_result(db, "4.2", "pe"), Priority.URGENT)

    worklist = list_worklist(db)

    assert [(s.study_uid, s.priority, s.raised) for s in worklist] == [
        ("4.1", Priority.STAT, False),
        ("4.2", Priority.URGENT, True),
    ]


def test_time_from_last_image_to_flag_is_stored_and_shown_per_study(db: Database) -> None:
    add_study(db, "5.1", 100.0)
    flag(db, add_result(db, "5.1"), Priority.STAT, after_s=12.25)

    [study] = list_worklist(db)
    row = db.query_one("SELECT last_image_to_flag_s FROM flags")

    assert row is not None and row["last_image_to_flag_s"] == pytest.approx(12.25)
    assert study.last_image_to_flag_s == pytest.approx(12.25)
    assert study.last_image_at == pytest.approx(110.0)


def test_a_failed_job_is_listed_as_failed_with_its_error_in_its_rule_lane(db: Database) -> None:
    add_study(db, "6.1", 100.0)
    add_job(
        db,
        "6.1",
        "pe",
        state="failed",
        lane=Priority.URGENT,
        error="RuntimeError: simulated model crash",
        finished_at=140.0,
    )

    [study] = list_worklist(db)
    [result] = study.results

    assert result.verdict is FlagVerdict.FAILED and result.result_id is None
    assert "simulated model crash" in result.reason and "pe failed" in result.reason
    assert study.priority is Priority.URGENT and not study.raised
    assert result.last_image_to_flag_s == pytest.approx(30.0)


def test_a_failure_recorded_as_a_flag_is_listed_once(db: Database) -> None:
    add_study(db, "7.1", 100.0)
    job_id = add_job(db, "7.1", "pe", state="failed", error="boom", finished_at=120.0)
    record_flag(
        db,
        study_uid="7.1",
        result_id=None,
        job_id=job_id,
        algorithm="pe",
        algorithm_version="1.2.0",
        priority=Priority.ROUTINE,
        reason="AI: PE algorithm failed",
        verdict=FlagVerdict.FAILED,
        raised=False,
        last_image_at=110.0,
        flagged_at=121.0,
    )

    [study] = list_worklist(db)

    assert [(r.verdict, r.reason) for r in study.results] == [
        (FlagVerdict.FAILED, "AI: PE algorithm failed")
    ]


def test_record_flag_is_idempotent_per_result(db: Database) -> None:
    add_study(db, "8.1", 100.0)
    result = add_result(db, "8.1")

    first = flag(db, result, Priority.STAT)
    again = flag(db, result, Priority.URGENT)

    assert first == again
    assert [r.priority for r in list_worklist(db)[0].results] == [Priority.STAT]


def test_record_flag_refuses_what_it_cannot_store_with_the_argument_named(
    db: Database,
) -> None:
    add_study(db, "9.1", 100.0)
    add_study(db, "9.2", 100.0)
    result = add_result(db, "9.1")
    base = {
        "algorithm": "pe",
        "algorithm_version": "1",
        "priority": "stat",
        "reason": "r",
        "verdict": "present",
        "raised": True,
        "last_image_at": 1.0,
        "flagged_at": 2.0,
    }
    with pytest.raises(UnknownResultError, match="result_id 999"):
        record_flag(db, study_uid="9.1", result_id=999, **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="another study"):
        record_flag(db, study_uid="9.2", result_id=result.result_id, **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not of algorithm 'lung_nodule'"):
        record_flag(
            db,
            study_uid="9.1",
            result_id=result.result_id,
            **{**base, "algorithm": "lung_nodule"},  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="result_id may be None only"):
        record_flag(db, study_uid="9.1", result_id=None, **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flagged_at"):
        record_flag(
            db,
            study_uid="9.1",
            result_id=result.result_id,
            **{**base, "flagged_at": 0.5},  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="'asap' is not a valid Priority"):
        record_flag(
            db,
            study_uid="9.1",
            result_id=result.result_id,
            **{**base, "priority": "asap"},  # type: ignore[arg-type]
        )


def test_worklist_window_and_limit(db: Database) -> None:
    for index, arrived_at in enumerate((100.0, 200.0, 300.0)):
        uid = f"10.{index}"
        add_study(db, uid, arrived_at)
        flag(db, add_result(db, uid), Priority.ROUTINE, raised=False)

    assert [s.study_uid for s in list_worklist(db, arrived_after=150.0)] == ["10.1", "10.2"]
    assert [s.study_uid for s in list_worklist(db, limit=1)] == ["10.0"]
    with pytest.raises(ValueError, match="limit"):
        list_worklist(db, limit=0)


def test_feedback_keeps_the_flag_as_shown_and_is_append_only(db: Database) -> None:
    add_study(db, "11.1", 100.0)
    result = add_result(db, "11.1")
    flag(db, result, Priority.STAT, reason="AI: suspected PE, left main")

    first = record_feedback(db, result.result_id, agree=False, comment="  artefact  ", reader="AB")
    second = record_feedback(db, result.result_id, agree=True, reader="CD", at=1_700_000_000.0)

    assert first.comment == "artefact" and first.priority == "stat"
    assert first.reason == "AI: suspected PE, left main" and first.verdict == "present"
    assert [f.id for f in list_feedback(db, result.result_id)] == [first.id, second.id]
    latest = list_worklist(db)[0].results[0].feedback
    assert latest is not None and latest.agree and latest.reader == "CD" and latest.count == 2
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.connection().execute("UPDATE feedback SET agree = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.connection().execute("DELETE FROM feedback")


def test_feedback_is_refused_for_an_unknown_result_or_an_overlong_comment(db: Database) -> None:
    add_study(db, "12.1", 100.0)
    result = add_result(db, "12.1")
    with pytest.raises(UnknownResultError, match="result_id 4242"):
        record_feedback(db, 4242, agree=True)
    with pytest.raises(ValueError, match="comment must be <= 2000"):
        record_feedback(db, result.result_id, agree=True, comment="x" * 2001)
    assert list_feedback(db) == []


def test_feedback_csv_has_one_row_per_statement_with_every_column(db: Database) -> None:
    add_study(db, "13.1", 100.0)
    result = add_result(db, "13.1")
    flag(db, result, Priority.URGENT, reason="AI: nodule 9 mm, right upper lobe")
    record_feedback(db, result.result_id, agree=True, comment="ok, seen", at=1_700_000_000.0)
    record_feedback(
        db, result.result_id, agree=False, comment='=HYPERLINK("x"), "quoted"', reader="EF"
    )
    add_study(db, "13.2", 200.0)
    unflagged = add_result(db, "13.2", "lung_nodule", "absent")
    record_feedback(db, unflagged.result_id, agree=True)

    text = export_feedback_csv(db)
    rows = list(csv.DictReader(io.StringIO(text)))

    assert tuple(text.splitlines()[0].split(",")) == FEEDBACK_CSV_COLUMNS
    assert len(rows) == 3
    assert rows[0] == {
        "result_id": str(result.result_id),
        "study_uid": "13.1",
        "algorithm": "pe",
        "algorithm_version": "1.2.0",
        "verdict": "present",
        "ai_priority": "urgent",
        "reason": "AI: nodule 9 mm, right upper lobe",
        "agree": "true",
        "comment": "ok, seen",
        "reader": "",
        "time": "2023-11-14T22:13:20Z",
    }
    assert rows[1]["agree"] == "false" and rows[1]["reader"] == "EF"
    assert rows[1]["comment"] == '\'=HYPERLINK("x"), "quoted"'  # never run as a formula
    assert datetime.datetime.fromisoformat(rows[1]["time"]).tzinfo is not None
    assert (rows[2]["verdict"], rows[2]["ai_priority"]) == ("absent", "")
