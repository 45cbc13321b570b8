"""``GET /api/drift`` (every algorithm's drift report, with histograms and daily series for the
admin page) and ``POST /api/drift/{algorithm}/baseline`` (record a baseline): admin only
(``router.api.access``)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from config.schema import DriftConfig
from router.audit.http import request_actor
from router.drift.baseline import BaselineError, record_baseline
from router.drift.monitor import DAY_S, DriftMonitor
from router.store.database import Database

ALGORITHM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_BASELINE_DAYS = 30.0


def report_json(monitor: DriftMonitor, algorithm: str | None = None) -> dict[str, Any]:
    drifts = monitor.report()
    return {
        "generated_at": time.time(),
        "algorithms": [asdict(d) for d in drifts if algorithm is None or d.algorithm == algorithm],
    }


def baseline_period(
    since: float | None, until: float | None, days: float | None, now: float
) -> tuple[float, float]:
    """[since, until) from what was given: both ends, or ``days`` back from ``until`` (or
    now); nothing: the last ``DEFAULT_BASELINE_DAYS`` days."""
    end = now if until is None else until
    if since is not None:
        if days is not None:
            raise ValueError("give since (and until) or days, not both")
        return since, end
    span = DEFAULT_BASELINE_DAYS if days is None else days
    if not 0 < span <= 36500:
        raise ValueError("days must be above 0 and at most 36500")
    return end - span * DAY_S, end


def create_drift_router(
    db: Database, monitor: DriftMonitor, config: Callable[[], DriftConfig]
) -> APIRouter:
    router = APIRouter()

    @router.get("/api/drift")
    def drift(algorithm: str | None = None) -> dict[str, Any]:
        """Per algorithm: state and reason, baseline period and count, window counts and
        rates, each feature's statistic, state and histograms, and a daily series."""
        return report_json(monitor, algorithm)

    @router.post("/api/drift/{algorithm}/baseline")
    def record(
        algorithm: str,
        request: Request,
        since: float | None = None,
        until: float | None = None,
        days: float | None = None,
    ) -> dict[str, Any]:
        """Record the results of [since, until) (Unix times), or of the last ``days`` days
        (default 30), as the algorithm's baseline."""
        if not ALGORITHM_NAME.match(algorithm):  # never echoed
            raise HTTPException(status_code=400, detail="algorithm is not an algorithm name")
        try:
            start, end = baseline_period(since, until, days, time.time())
            baseline = record_baseline(
                db,
                algorithm,
                start,
                end,
                recorded_by=request_actor(request).user,
                min_results=config().for_algorithm(algorithm).min_results,
            )
        except BaselineError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        monitor.invalidate()
        return {
            "algorithm": algorithm,
            "baseline_id": baseline.id,
            "period_start": baseline.period_start,
            "period_end": baseline.period_end,
            "results": baseline.sample.results,
            "recorded_by": baseline.recorded_by,
            **report_json(monitor, algorithm),
        }

    return router
