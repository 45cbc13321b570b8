"""AI priority flags and radiologist feedback in SQLite: record them, list a worklist, export.

A *flag* is what the notify stage decided for one algorithm result (or one failed job): the
priority lane, the reason a human reads, and whether the AI raised the study's priority. A
study's effective AI priority is the most urgent priority among the latest flag of each of its
algorithms: a decision never lowers priority, so a raised flag wins over the lane a study
already had only when it is more urgent. Feedback (agree / disagree with a comment) is
append-only and keeps a copy of the flag the radiologist saw, for local validation.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import enum
import io
import logging
import time
from collections import defaultdict

from algorithms.contract import Verdict
from config.schema import Priority
from router.logs import log_safe
from router.store.database import Database, Row

LOGGER = logging.getLogger(__name__)

COMMENT_MAX_CHARS = 2000
READER_MAX_CHARS = 64
FAILURE_REASON_MAX_CHARS = 300

FEEDBACK_CSV_COLUMNS = (
    "result_id",
    "study_uid",
    "algorithm",
    "algorithm_version",
    "verdict",
    "ai_priority",
    "reason",
    "agree",
    "comment",
    "reader",
    "time",
)
_SPREADSHEET_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class FlagVerdict(enum.StrEnum):
    """What the worklist says about one algorithm on one study; failures are stated too."""

    PRESENT = "present"
    ABSENT = "absent"
    NOT_ASSESSED = "not_assessed"
    FAILED = "failed"

    @classmethod
    def of(cls, value: str | Verdict | FlagVerdict) -> FlagVerdict:
        return cls(value.value if isinstance(value, Verdict) else value)


class UnknownResultError(LookupError):
    """No row in ``results`` has the given id."""


@dataclasses.dataclass(frozen=True)
class FeedbackSummary:
    """The latest feedback on a result, and how many were given in all."""

    agree: bool
    reader: str
    at: float
    count: int


@dataclasses.dataclass(frozen=True)
class WorklistResult:
    """The latest flag of one algorithm on one study."""

    result_id: int | None
    """None only for a failed job, which wrote no result."""
    job_id: int | None
    algorithm: str
    algorithm_version: str
    verdict: FlagVerdict
    priority: Priority
    raised: bool
    reason: str
    flagged_at: float
    last_image_to_flag_s: float
    finding_count: int
    feedback: FeedbackSummary | None


@dataclasses.dataclass(frozen=True)
class WorklistStudy:
    """One worklist row: a study, its effective AI priority, and its latest results."""

    study_uid: str
    arrived_at: float
    """When the study's first instance was received: the order within a lane."""
    last_image_at: float
    modalities: tuple[str, ...]
    priority: Priority
    raised: bool
    reason: str
    last_image_to_flag_s: float
    """From the study's last image to the flag that decided its priority."""
    results: tuple[WorklistResult, ...]
    """Deciding result first, then by priority and time."""


@dataclasses.dataclass(frozen=True)
class Feedback:
    """One stored agree / disagree statement with the flag as it was shown."""

    id: int
    result_id: int
    study_uid: str
    algorithm: str
    algorithm_version: str
    verdict: str
    priority: str
    reason: str
    agree: bool
    comment: str
    reader: str
    at: float


def record_flag(
    db: Database,
    *,
    study_uid: str,
    result_id: int | None,
    algorithm: str,
    algorithm_version: str,
    priority: Priority | str,
    reason: str,
    verdict: Verdict | FlagVerdict | str,
    raised: bool,
    last_image_at: float,
    flagged_at: float,
    job_id: int | None = None,
) -> int:
    """Store the flag of one result (or of one failed job, ``result_id=None`` with ``job_id``).

    Idempotent: a second call for the same result (or failed job) keeps the first flag and
    returns its id, so the notify stage may repeat itself after a restart.
    """
    lane = Priority(priority)
    stated = FlagVerdict.of(verdict)
    if not study_uid:
        raise ValueError("record_flag: study_uid must not be empty")
    if not algorithm:
        raise ValueError("record_flag: algorithm must not be empty")
    if flagged_at < last_image_at:
        raise ValueError(
            f"record_flag: flagged_at ({flagged_at}) must not be before last_image_at "
            f"({last_image_at})"
        )
    if result_id is None:
        if stated is not FlagVerdict.FAILED or job_id is None:
            raise ValueError(
                "record_flag: result_id may be None only for verdict 'failed' with a job_id"
            )
    else:
        result = db.query_one(
            "SELECT study_uid, job_id, algorithm FROM results WHERE id = ?", (result_id,)
        )
        if result is None:
            raise UnknownResultError(f"record_flag: result_id {result_id} is not in results")
        if result["study_uid"] != study_uid:
            raise ValueError(f"record_flag: result_id {result_id} belongs to another study")
        if result["algorithm"] != algorithm:
            raise ValueError(
                f"record_flag: result_id {result_id} is a result of {result['algorithm']!r}, "
                f"not of algorithm {algorithm!r}"
            )
        job_id = int(result["job_id"]) if job_id is None else job_id
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO flags (study_uid, result_id, job_id, algorithm, algorithm_version, "
            "priority, priority_rank, reason, verdict, raised, last_image_at, flagged_at, "
            "last_image_to_flag_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                study_uid,
                result_id,
                job_id,
                algorithm,
                algorithm_version,
                lane.value,
                lane.rank,
                reason,
                stated.value,
                int(raised),
                last_image_at,
                flagged_at,
                flagged_at - last_image_at,
            ),
        )
        if result_id is not None:
            row = conn.execute("SELECT id FROM flags WHERE result_id = ?", (result_id,)).fetchone()
        else:
            row = conn.execute(
                "SELECT id FROM flags WHERE job_id = ? AND result_id IS NULL", (job_id,)
            ).fetchone()
    flag_id = int(row["id"])
    LOGGER.info(
        "flag %d for study %s (job %s, result %s): %s %s, %s%s",
        flag_id,
        log_safe(study_uid),
        job_id,
        result_id,
        algorithm,
        stated.value,
        lane.value,
        " (raised)" if raised else "",
    )
    return flag_id


def list_worklist(
    db: Database, *, arrived_after: float | None = None, limit: int = 500
) -> list[WorklistStudy]:
    """Studies with at least one flag or failed job, most urgent lane first, then oldest first.

    Within each study only the latest flag per algorithm counts (a re-run after late images
    supersedes the earlier result). A failed job without a later flag is listed as
    ``failed`` with its error, in the lane of the rule that queued it.
    """
    if limit < 1:
        raise ValueError(f"list_worklist: limit must be >= 1, got {limit}")
    since = arrived_after if arrived_after is not None else float("-inf")
    studies = {
        row["study_uid"]: row
        for row in db.query(
            "SELECT study_uid, first_received_at, last_received_at FROM studies "
            "WHERE first_received_at >= ? AND study_uid IN "
            "(SELECT study_uid FROM flags UNION SELECT study_uid FROM jobs WHERE state = 'failed')",
            (since,),
        )
    }
    if not studies:
        return []
    feedback = _feedback_summaries(db, since)
    candidates: dict[str, list[WorklistResult]] = defaultdict(list)
    flagged_jobs: set[int] = set()
    for row in db.query(
        "SELECT f.*, COALESCE(r.finding_count, 0) AS finding_count FROM flags f "
        "JOIN studies s ON s.study_uid = f.study_uid "
        "LEFT JOIN results r ON r.id = f.result_id WHERE s.first_received_at >= ?",
        (since,),
    ):
        candidates[row["study_uid"]].append(_flag_entry(row, feedback))
        if row["job_id"] is not None:
            flagged_jobs.add(int(row["job_id"]))
    for row in db.query(
        "SELECT j.* FROM jobs j JOIN studies s ON s.study_uid = j.study_uid "
        "WHERE j.state = 'failed' AND s.first_received_at >= ?",
        (since,),
    ):
        if int(row["id"]) in flagged_jobs:
            continue  # the notify stage recorded this failure as a flag already
        last_image_at = float(studies[row["study_uid"]]["last_received_at"])
        candidates[row["study_uid"]].append(_failed_job_entry(row, last_image_at))
    modalities = _modalities(db, since)
    worklist = [
        _study_entry(studies[uid], _latest_per_algorithm(entries), modalities.get(uid, ()))
        for uid, entries in candidates.items()
        if uid in studies
    ]
    worklist.sort(key=lambda s: (s.priority.rank, s.arrived_at, s.study_uid))
    return worklist[:limit]


def record_feedback(
    db: Database,
    result_id: int,
    *,
    agree: bool,
    comment: str = "",
    reader: str = "",
    at: float | None = None,
) -> Feedback:
    """Append a radiologist's agree / disagree on a result, with the flag as it stands."""
    comment = comment.strip()
    reader = reader.strip()
    if len(comment) > COMMENT_MAX_CHARS:
        raise ValueError(f"record_feedback: comment must be <= {COMMENT_MAX_CHARS} characters")
    if len(reader) > READER_MAX_CHARS:
        raise ValueError(f"record_feedback: reader must be <= {READER_MAX_CHARS} characters")
    result = db.query_one(
        "SELECT r.study_uid, r.algorithm, r.algorithm_version, r.verdict, "
        "f.priority, f.reason, f.verdict AS flag_verdict FROM results r "
        "LEFT JOIN flags f ON f.result_id = r.id WHERE r.id = ?",
        (result_id,),
    )
    if result is None:
        raise UnknownResultError(f"record_feedback: result_id {result_id} is not in results")
    stored_at = time.time() if at is None else at
    values = Feedback(
        id=0,
        result_id=result_id,
        study_uid=result["study_uid"],
        algorithm=result["algorithm"],
        algorithm_version=result["algorithm_version"],
        verdict=result["flag_verdict"] or result["verdict"],
        priority=result["priority"] or "",
        reason=result["reason"] or "",
        agree=agree,
        comment=comment,
        reader=reader,
        at=stored_at,
    )
    with db.transaction() as conn:
        feedback_id = conn.execute(
            "INSERT INTO feedback (result_id, study_uid, algorithm, algorithm_version, verdict, "
            "priority, reason, agree, comment, reader, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                values.result_id,
                values.study_uid,
                values.algorithm,
                values.algorithm_version,
                values.verdict,
                values.priority,
                values.reason,
                int(values.agree),
                values.comment,
                values.reader,
                values.at,
            ),
        ).fetchone()[0]
    # Comments and reader names stay out of the log: they may name the patient or the reader.
    LOGGER.info(
        "feedback %d on result %d (study %s): %s",
        feedback_id,
        result_id,
        log_safe(values.study_uid),
        "agree" if agree else "disagree",
    )
    db.record_event("feedback", values.study_uid, None, f"result {result_id}")
    return dataclasses.replace(values, id=feedback_id)


def list_feedback(db: Database, result_id: int | None = None) -> list[Feedback]:
    """Stored feedback in the order it was given, for one result or all."""
    sql = "SELECT * FROM feedback"
    params: tuple[object, ...] = ()
    if result_id is not None:
        sql += " WHERE result_id = ?"
        params = (result_id,)
    return [_feedback(row) for row in db.query(sql + " ORDER BY id", params)]


def export_feedback_csv(db: Database) -> str:
    """All feedback as CSV (one row per statement, oldest first), for local validation."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FEEDBACK_CSV_COLUMNS)
    for item in list_feedback(db):
        writer.writerow(
            (
                item.result_id,
                item.study_uid,
                item.algorithm,
                item.algorithm_version,
                item.verdict,
                item.priority,
                _spreadsheet_safe(item.reason),
                "true" if item.agree else "false",
                _spreadsheet_safe(item.comment),
                _spreadsheet_safe(item.reader),
                _iso_utc(item.at),
            )
        )
    return buffer.getvalue()


# --- helpers ---------------------------------------------------------------------------------


def _flag_entry(row: Row, feedback: dict[int, FeedbackSummary]) -> WorklistResult:
    result_id = None if row["result_id"] is None else int(row["result_id"])
    return WorklistResult(
        result_id=result_id,
        job_id=None if row["job_id"] is None else int(row["job_id"]),
        algorithm=row["algorithm"],
        algorithm_version=row["algorithm_version"],
        verdict=FlagVerdict(row["verdict"]),
        priority=Priority(row["priority"]),
        raised=bool(row["raised"]),
        reason=row["reason"],
        flagged_at=float(row["flagged_at"]),
        last_image_to_flag_s=float(row["last_image_to_flag_s"]),
        finding_count=int(row["finding_count"]),
        feedback=None if result_id is None else feedback.get(result_id),
    )


def _failed_job_entry(row: Row, last_image_at: float) -> WorklistResult:
    finished_at = float(row["finished_at"] or row["created_at"])
    error = str(row["error"] or "no reason recorded")
    reason = f"AI: {row['algorithm']} failed after {row['attempts']} attempt(s): {error}"
    return WorklistResult(
        result_id=None,
        job_id=int(row["id"]),
        algorithm=row["algorithm"],
        algorithm_version="",
        verdict=FlagVerdict.FAILED,
        priority=Priority(row["priority"]),
        raised=False,
        reason=reason[:FAILURE_REASON_MAX_CHARS],
        flagged_at=finished_at,
        last_image_to_flag_s=max(0.0, finished_at - last_image_at),
        finding_count=0,
        feedback=None,
    )


def _latest_per_algorithm(entries: list[WorklistResult]) -> list[WorklistResult]:
    latest: dict[str, WorklistResult] = {}
    for entry in entries:
        current = latest.get(entry.algorithm)
        if current is None or _recency(entry) > _recency(current):
            latest[entry.algorithm] = entry
    return sorted(latest.values(), key=_deciding_order)


def _recency(entry: WorklistResult) -> tuple[float, int]:
    return (entry.flagged_at, entry.job_id or 0)


def _deciding_order(entry: WorklistResult) -> tuple[int, int, float]:
    return (entry.priority.rank, 0 if entry.raised else 1, entry.flagged_at)


def _study_entry(
    study: Row, results: list[WorklistResult], modalities: tuple[str, ...]
) -> WorklistStudy:
    deciding = results[0]
    return WorklistStudy(
        study_uid=study["study_uid"],
        arrived_at=float(study["first_received_at"]),
        last_image_at=float(study["last_received_at"]),
        modalities=modalities,
        priority=deciding.priority,
        raised=deciding.raised,
        reason=deciding.reason,
        last_image_to_flag_s=deciding.last_image_to_flag_s,
        results=tuple(results),
    )


def _modalities(db: Database, since: float) -> dict[str, tuple[str, ...]]:
    found: dict[str, set[str]] = defaultdict(set)
    for row in db.query(
        "SELECT DISTINCT se.study_uid, se.modality FROM series se "
        "JOIN studies s ON s.study_uid = se.study_uid "
        "WHERE s.first_received_at >= ? AND se.modality != ''",
        (since,),
    ):
        found[row["study_uid"]].add(row["modality"])
    return {uid: tuple(sorted(values)) for uid, values in found.items()}


def _feedback_summaries(db: Database, since: float) -> dict[int, FeedbackSummary]:
    return {
        int(row["result_id"]): FeedbackSummary(
            agree=bool(row["agree"]), reader=row["reader"], at=float(row["at"]), count=row["n"]
        )
        for row in db.query(
            "SELECT fb.result_id, fb.agree, fb.reader, fb.at, latest.n FROM feedback fb "
            "JOIN (SELECT result_id, MAX(id) AS id, COUNT(*) AS n FROM feedback "
            "      GROUP BY result_id) latest ON latest.id = fb.id "
            "JOIN studies s ON s.study_uid = fb.study_uid WHERE s.first_received_at >= ?",
            (since,),
        )
    }


def _feedback(row: Row) -> Feedback:
    return Feedback(
        id=int(row["id"]),
        result_id=int(row["result_id"]),
        study_uid=row["study_uid"],
        algorithm=row["algorithm"],
        algorithm_version=row["algorithm_version"],
        verdict=row["verdict"],
        priority=row["priority"],
        reason=row["reason"],
        agree=bool(row["agree"]),
        comment=row["comment"],
        reader=row["reader"],
        at=float(row["at"]),
    )


def _spreadsheet_safe(text: str) -> str:
    """Text a spreadsheet will not run as a formula (OWASP CSV injection)."""
    return "'" + text if text.startswith(_SPREADSHEET_FORMULA_PREFIXES) else text


def _iso_utc(epoch: float) -> str:
    return (
        datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )
