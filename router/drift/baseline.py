"""Baselines: the distributions of an algorithm's results over a period (recorded at go-live),
kept in ``drift_baselines``; the latest recorded for an algorithm is the one compared with."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from router.drift.sample import Sample, read_observations, sample_of
from router.store.database import Database

MAX_ALGORITHM_NAME = 64


class BaselineError(ValueError):
    """A baseline that cannot be recorded (an empty or reversed period, no results)."""


@dataclass(frozen=True)
class Baseline:
    id: int
    algorithm: str
    period_start: float
    period_end: float
    sample: Sample
    recorded_by: str
    recorded_at: float


def record_baseline(
    db: Database,
    algorithm: str,
    since: float,
    until: float,
    *,
    recorded_by: str = "",
    min_results: int = 1,
) -> Baseline:
    """Snapshot the results of ``algorithm`` made in [since, until) as its new baseline."""
    if not algorithm or len(algorithm) > MAX_ALGORITHM_NAME:
        raise BaselineError("the algorithm name must be 1 to 64 characters")
    if not since < until:
        raise BaselineError("the period must end after it starts")
    sample = sample_of(read_observations(db, algorithm, since, until))
    if sample.results < max(1, min_results):
        raise BaselineError(
            f"{sample.results} result(s) of {algorithm} in the period; "
            f"at least {max(1, min_results)} needed for a baseline"
        )
    now = time.time()
    with db.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO drift_baselines (algorithm, period_start, period_end, result_count, "
            "snapshot, recorded_by, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                algorithm,
                since,
                until,
                sample.results,
                json.dumps(sample.to_json()),
                recorded_by[:128],
                now,
            ),
        )
        baseline_id = int(cursor.fetchone()[0])
    db.record_event(
        "drift_baseline_recorded",
        detail=f"{algorithm}: {sample.results} results, {_day(since)} to {_day(until)}",
    )
    return Baseline(baseline_id, algorithm, since, until, sample, recorded_by[:128], now)


def latest_baseline(db: Database, algorithm: str) -> Baseline | None:
    row = db.query_one(
        "SELECT * FROM drift_baselines WHERE algorithm = ? ORDER BY recorded_at DESC, id DESC "
        "LIMIT 1",
        (algorithm,),
    )
    if row is None:
        return None
    return Baseline(
        id=int(row["id"]),
        algorithm=str(row["algorithm"]),
        period_start=float(row["period_start"]),
        period_end=float(row["period_end"]),
        sample=Sample.from_json(json.loads(row["snapshot"])),
        recorded_by=str(row["recorded_by"]),
        recorded_at=float(row["recorded_at"]),
    )


def baseline_algorithms(db: Database) -> list[str]:
    return [str(r["algorithm"]) for r in db.query("SELECT DISTINCT algorithm FROM drift_baselines")]


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))
