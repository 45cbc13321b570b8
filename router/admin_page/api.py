"""The admin page over HTTP: the page, and the JSON it reads and posts. Every path here needs
the admin role (``router.api.access`` names none of them, and what it does not name needs
admin). Retrying a dead letter uses the API's own retry endpoints (``/jobs/{id}/retry``...),
usage and the QA trend theirs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from algorithms.registry import Registry
from router.admin import DatabaseSource, read_status
from router.admin_page.algorithms import DEFAULT_WINDOW_DAYS, algorithm_rows
from router.admin_page.config_edit import (
    DEFAULT_DRY_RUN_STUDIES,
    MAX_CANDIDATE_CHARS,
    MAX_DRY_RUN_STUDIES,
    check_candidate,
    restore_secrets,
    running_text,
    secret_problems,
)
from router.admin_page.history import config_history
from router.admin_page.overview import overview
from router.admin_page.studies import MAX_STUDIES, recent_studies
from router.api.page_routes import add_page_routes
from router.audit.events import NO_AUDIT, AuditRecorder, ReadKind, StudyRead
from router.audit.http import request_actor
from router.live_config import ConfigHolder
from router.store.database import Database

_ASSETS = {"admin.css": "text/css; charset=utf-8", "admin.js": "text/javascript"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
DEAD_LETTERS_SHOWN = 200


@dataclass(frozen=True)
class AdminDependencies:
    db: Database
    holder: ConfigHolder
    registry: Registry
    readiness: Callable[[], Mapping[str, Any]]
    """The ``/readyz`` body: ready, models and their devices, load errors, config state."""
    audit: AuditRecorder = NO_AUDIT


class CandidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(max_length=MAX_CANDIDATE_CHARS)
    studies: int = Field(default=DEFAULT_DRY_RUN_STUDIES, ge=1, le=MAX_DRY_RUN_STUDIES)


class ApplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(max_length=MAX_CANDIDATE_CHARS)
    based_on: str = Field(pattern=r"^[0-9a-f]{64}$")
    """The ``digest`` of the configuration the text was edited from (``GET
    /api/admin/config``): a file changed since is a conflict, nothing is written."""


def create_admin_router(deps: AdminDependencies) -> APIRouter:
    router = APIRouter()
    db, holder = deps.db, deps.holder
    add_page_routes(
        router,
        package="router.admin_page",
        path="/admin",
        page="admin.html",
        assets=_ASSETS,
        headers=_PAGE_HEADERS,
    )

    @router.get("/api/admin/overview")
    def admin_overview() -> dict[str, Any]:
        """Studies in flight per stage, queue depths, workers, models, config state."""
        return overview(db, holder.current(), deps.readiness())

    @router.get("/api/admin/studies")
    def admin_studies(
        request: Request, limit: int = Query(20, ge=1, le=MAX_STUDIES)
    ) -> list[dict[str, Any]]:
        """The studies received last, with the rules that fired per series and their runs."""
        studies = recent_studies(db, limit)
        actor = request_actor(request)
        for study in studies:
            deps.audit.record(StudyRead(actor, study["study_uid"], ReadKind.STUDY_VIEW))
        return studies

    @router.get("/api/admin/algorithms")
    def admin_algorithms(
        days: float = Query(DEFAULT_WINDOW_DAYS, gt=0, le=366),
    ) -> list[dict[str, Any]]:
        """Each algorithm: version, device, thresholds, shadow, last run, failure rate."""
        return algorithm_rows(db, holder.current(), deps.registry, deps.readiness(), days)

    @router.get("/api/admin/dead-letters")
    def admin_dead_letters() -> dict[str, list[dict[str, Any]]]:
        """Failed jobs, dead-lettered dispatches and deliveries, newest first."""
        status = read_status(DatabaseSource(db), DEAD_LETTERS_SHOWN)
        return {table: [asdict(item) for item in items] for table, items in status.dead.items()}

    @router.get("/api/admin/config")
    def admin_config() -> dict[str, Any]:
        """The running configuration's text (secret values redacted) and its digest."""
        return {
            "file": str(holder.path) if holder.path is not None else None,
            "editable": holder.path is not None,
            "text": running_text(holder),
            "digest": holder.digest(),
        }

    @router.get("/api/admin/config/history")
    def admin_config_history(limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        """Every change of the configuration: when, who, from the file or this page, the diff."""
        return [asdict(change) for change in config_history(db, limit)]

    @router.post("/api/admin/config/check")
    def admin_config_check(body: CandidateRequest) -> dict[str, Any]:
        """Check a candidate as a change of the file would be, with its diff, and route the
        series of the last ``studies`` studies with it and with the running one."""
        check = check_candidate(holder, body.text, db, deps.registry.purposes(), body.studies)
        result = asdict(check)
        if check.dry_run is not None:
            for entry, series in zip(
                result["dry_run"]["series"], check.dry_run.series, strict=True
            ):
                entry["changed"] = series.changed
        return result

    @router.post("/api/admin/config/apply")
    def admin_config_apply(body: ApplyRequest, request: Request) -> dict[str, Any]:
        """Write the candidate to the configuration file and run it, when it passes every
        check; the change is recorded (audit trail and history) with who made it."""
        text = restore_secrets(body.text, holder.text())
        problems = secret_problems(text)
        if problems:
            raise HTTPException(status_code=422, detail={"problems": problems})
        outcome = holder.apply(text, request_actor(request).user, body.based_on)
        if outcome.conflict:
            raise HTTPException(status_code=409, detail={"problems": outcome.problems})
        if not outcome.applied:
            raise HTTPException(status_code=422, detail={"problems": outcome.problems})
        return {"applied": True, "digest": holder.digest()}

    return router
