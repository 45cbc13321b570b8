"""The HTTP API (FastAPI): health, readiness, studies, jobs, dead letters and /metrics.

The pages for people (the index, the API docs and the worklist) come from their own routers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from config.schema import DriftConfig
from dicom_sr.uids import is_valid_uid
from router.admin_page.api import AdminDependencies, create_admin_router
from router.api.auth import HttpSecurity, SecurityGate, document_security
from router.api.docs import OPENAPI_URL, create_docs_router
from router.audit.events import (
    NO_AUDIT,
    AuditRecorder,
    QueueKind,
    ReadKind,
    RetryRequested,
    StudyRead,
)
from router.audit.http import request_actor
from router.deliver.result_writer import result_object_paths
from router.drift.api import create_drift_router
from router.drift.monitor import DriftMonitor
from router.metrics import Metrics
from router.qa_trend import read_trend
from router.store.database import Database, Row
from router.usage import UsageRow, read_usage, usage_csv
from router.worklist_page.api import create_worklist_router


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: dict[str, Any]


@dataclass(frozen=True)
class ApiDependencies:
    db: Database
    metrics: Metrics
    readiness: Callable[[], Readiness]
    retry_dispatch: Callable[[int | None], int]
    retry_job: Callable[[int], bool]
    retry_delivery: Callable[[int | None], int] = lambda _id: 0
    audit: AuditRecorder = NO_AUDIT
    """Where reads of patient data, feedback and retries are recorded (``router.audit``)."""
    security: HttpSecurity | None = None
    """The gate (Host, cross-site, authentication, roles: ``router.api.auth``). The service
    always passes one; None (no gate at all) is for tests that build the app in-process."""
    usage_sites: Callable[[], Mapping[str, str]] = dict
    """The running config's ``usage.sites`` (site name by calling AE title)."""
    quality_control_algorithms: Callable[[], Collection[str]] = tuple
    """The installed quality-control algorithms (``AlgorithmInfo.purpose``)."""
    drift: DriftMonitor | None = None
    """The drift monitor (``router.drift``); None: one on the default ``drift`` settings."""
    drift_config: Callable[[], DriftConfig] = DriftConfig
    """The running config's ``drift`` section (a baseline's minimum results)."""
    admin: AdminDependencies | None = None
    """What the admin page needs (the live config, the registry); None: no admin page."""


def _row(row: Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}  # noqa: SIM118 - Row needs keys()


def study_view(db: Database, study_uid: str) -> dict[str, Any] | None:
    """Everything about one study: state, rule per series, jobs, results, dispatches, timings."""
    study = db.query_one("SELECT * FROM studies WHERE study_uid = ?", (study_uid,))
    if study is None:
        return None
    view = _row(study)
    view["series"] = [
        {
            "series_uid": s["series_uid"],
            "modality": s["modality"],
            "series_description": s["series_description"],
            "instances": s["instance_count"],
            "rules": [name for name in s["rule_names"].split(",") if name],
            "route_explanation": s["route_explanation"],
            "qa_sign": s["qa_sign"],
        }
        for s in db.query(
            "SELECT * FROM series WHERE study_uid = ? ORDER BY first_received_at", (study_uid,)
        )
    ]
    view["jobs"] = [
        _row(j)
        for j in db.query("SELECT * FROM jobs WHERE study_uid = ? ORDER BY id", (study_uid,))
    ]
    for job in view["jobs"]:
        job["send_to"] = json.loads(job["send_to"])
    view["prior_requests"] = [
        _row(p)
        for p in db.query(
            "SELECT * FROM prior_requests WHERE study_uid = ? ORDER BY id", (study_uid,)
        )
    ]
    view["results"] = [
        {**_row(r), "summary": json.loads(r["summary"] or "{}")}
        for r in db.query("SELECT * FROM results WHERE study_uid = ? ORDER BY id", (study_uid,))
    ]
    view["dispatches"] = [
        _work_item(d)
        for d in db.query("SELECT * FROM dispatches WHERE study_uid = ? ORDER BY id", (study_uid,))
    ]
    view["flags"] = [
        _row(f)
        for f in db.query("SELECT * FROM flags WHERE study_uid = ? ORDER BY id", (study_uid,))
    ]
    view["deliveries"] = [
        _work_item(d)
        for d in db.query("SELECT * FROM deliveries WHERE study_uid = ? ORDER BY id", (study_uid,))
    ]
    view["timings"] = _timings(view)
    return view


def _timings(view: dict[str, Any]) -> dict[str, float | None]:
    last_image = view["last_received_at"]

    def since_last_image(at: float | None) -> float | None:
        return None if at is None or last_image is None else round(at - last_image, 3)

    job_starts = [j["started_at"] for j in view["jobs"] if j["started_at"]]
    results = [r["created_at"] for r in view["results"]]
    stored = [
        d["finished_at"] for d in view["dispatches"] if d["state"] == "done" and d["result_id"]
    ]
    model = [j["model_seconds"] for j in view["jobs"] if j["model_seconds"] is not None]
    return {
        "last_image_to_complete_s": since_last_image(view["completed_at"]),
        "last_image_to_first_job_start_s": since_last_image(
            min(job_starts) if job_starts else None
        ),
        "last_image_to_result_written_s": since_last_image(max(results) if results else None),
        "last_image_to_result_stored_s": since_last_image(max(stored) if stored else None),
        "model_s": round(sum(model), 3) if model else None,
        "last_image_to_flag_s": since_last_image(
            max(f["flagged_at"] for f in view["flags"]) if view["flags"] else None
        ),
        "last_image_to_flag_delivered_s": since_last_image(
            max(delivered) if (delivered := _delivered_at(view)) else None
        ),
    }


def _work_item(row: Row) -> dict[str, Any]:
    """A dispatch or delivery with when its next attempt is due (None unless it waits)."""
    return _work_item_dict(_row(row))


def _work_item_dict(item: dict[str, Any]) -> dict[str, Any]:
    waiting = item["state"] == "pending"
    item["next_attempt_at"] = max(item["not_before"], item["created_at"]) if waiting else None
    return item


def _list(
    db: Database, table: str, state: str | None, limit: int, order: str
) -> list[dict[str, Any]]:
    """Rows of one stage's table, optionally of one state, newest first, at most 1000."""
    sql = f"SELECT * FROM {table}"
    params: tuple[object, ...] = ()
    if state:
        sql += " WHERE state = ?"
        params = (state,)
    sql += f" ORDER BY {order} LIMIT ?"
    return [_row(r) for r in db.query(sql, (*params, max(1, min(limit, 1000))))]


def _delivered_at(view: dict[str, Any]) -> list[float]:
    return [d["finished_at"] for d in view["deliveries"] if d["state"] == "done"]


def create_app(deps: ApiDependencies) -> FastAPI:
    # FastAPI's own docs pages load their scripts from a CDN; create_docs_router serves them.
    app = FastAPI(
        title="radrouter",
        version="0.1.0",
        openapi_url=OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
    )
    db = deps.db

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict[str, Any]:
        readiness = deps.readiness()
        if not readiness.ready:
            response.status_code = 503
        return {"ready": readiness.ready, **readiness.detail}

    @app.get("/studies")
    def studies(state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return _list(db, "studies", state, limit, "last_received_at DESC")

    @app.get("/studies/{study_uid}")
    def study(study_uid: str, request: Request) -> dict[str, Any]:
        if not is_valid_uid(study_uid):  # never echoed: the detail names the parameter only
            raise HTTPException(status_code=400, detail="study_uid is not a DICOM UID")
        view = study_view(db, study_uid)
        if view is None:
            raise HTTPException(status_code=404, detail="no such study")
        deps.audit.record(StudyRead(request_actor(request), study_uid, ReadKind.STUDY_VIEW))
        return view

    @app.get("/jobs")
    def jobs(state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return _list(db, "jobs", state, limit, "id DESC")

    @app.get("/jobs/{job_id}")
    def job(job_id: int) -> dict[str, Any]:
        row = db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise HTTPException(status_code=404, detail="no such job")
        return _row(row)

    @app.post("/jobs/{job_id}/retry")
    def retry_job(job_id: int, request: Request) -> dict[str, Any]:
        requeued = deps.retry_job(job_id)
        deps.audit.record(
            RetryRequested(request_actor(request), QueueKind.JOB, job_id, int(requeued))
        )
        if not requeued:
            raise HTTPException(status_code=409, detail="job is not in state failed")
        return {"requeued": job_id}

    @app.get("/dispatches")
    def dispatches(state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return [_work_item_dict(d) for d in _list(db, "dispatches", state, limit, "id DESC")]

    @app.post("/dispatches/{dispatch_id}/retry")
    def retry_dispatch(dispatch_id: int, request: Request) -> dict[str, Any]:
        requeued = deps.retry_dispatch(dispatch_id)
        deps.audit.record(
            RetryRequested(request_actor(request), QueueKind.DISPATCH, dispatch_id, requeued)
        )
        if not requeued:
            raise HTTPException(status_code=409, detail="dispatch is not dead-lettered")
        return {"requeued": dispatch_id}

    @app.get("/deliveries")
    def deliveries(state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Worklist notifications (HL7, FHIR) and their delivery state."""
        return [_work_item_dict(d) for d in _list(db, "deliveries", state, limit, "id DESC")]

    @app.post("/deliveries/{delivery_id}/retry")
    def retry_delivery(delivery_id: int, request: Request) -> dict[str, Any]:
        requeued = deps.retry_delivery(delivery_id)
        deps.audit.record(
            RetryRequested(request_actor(request), QueueKind.DELIVERY, delivery_id, requeued)
        )
        if not requeued:
            raise HTTPException(status_code=409, detail="delivery is not dead-lettered")
        return {"requeued": delivery_id}

    @app.get("/api/usage")
    def usage(month: str | None = None) -> list[dict[str, Any]]:
        """Finished runs per month, algorithm, source, kind and outcome (``router.usage``)."""
        return [asdict(row) for row in _usage(month)]

    @app.get("/api/usage.csv")
    def usage_as_csv(month: str | None = None) -> Response:
        name = f"radrouter-usage-{month or 'all'}.csv"
        return Response(
            usage_csv(_usage(month)),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/api/qa/trend")
    def qa_trend(days: float = 365.0) -> list[dict[str, Any]]:
        """Quality-control results per algorithm and scanner, oldest first (``router.qa_trend``)."""
        since = time.time() - max(0.0, min(days, 36500.0)) * 86400.0
        return [asdict(trend) for trend in read_trend(db, deps.quality_control_algorithms(), since)]

    def _usage(month: str | None) -> list[UsageRow]:
        try:
            return read_usage(db, deps.usage_sites(), month)
        except ValueError:  # never echoed: the detail names the parameter only
            raise HTTPException(status_code=400, detail="month must be YYYY-MM") from None

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(deps.metrics.exposition(), media_type="text/plain; version=0.0.4")

    app.include_router(
        create_worklist_router(
            db,
            segmentations=lambda result_id: result_object_paths(db, result_id, "seg"),
            audit=deps.audit,
        )
    )
    if deps.admin is not None:
        app.include_router(create_admin_router(deps.admin))
    app.include_router(create_docs_router(title=app.title, openapi_url=OPENAPI_URL))
    drift_monitor = deps.drift or DriftMonitor(db, deps.drift_config)
    app.include_router(create_drift_router(db, drift_monitor, deps.drift_config))
    if deps.security is not None:
        app.add_middleware(SecurityGate, security=deps.security)
        app.include_router(deps.security.routes())
        if deps.security.authenticator is not None:
            document_security(app)
    return app
