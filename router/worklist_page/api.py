"""The built-in worklist over HTTP: the page, its JSON, key-image thumbnails, feedback and CSV."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as PathParameter
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from router.api.access import current_principal
from router.api.page_routes import add_page_routes
from router.audit.events import (
    NO_AUDIT,
    AuditRecorder,
    FeedbackExported,
    FeedbackGiven,
    ReadKind,
    StudyRead,
)
from router.audit.http import request_actor
from router.logs import log_safe
from router.store.database import Database
from router.worklist_page.key_images import (
    FindingSlices,
    KeyImageNotFoundError,
    SegmentationLookup,
    finding_slice_png,
    finding_slices,
    key_image_png,
    no_segmentations,
)
from router.worklist_page.store import (
    COMMENT_MAX_CHARS,
    READER_MAX_CHARS,
    UnknownResultError,
    WorklistResult,
    WorklistStudy,
    export_feedback_csv,
    list_feedback,
    list_worklist,
    record_feedback,
)
from router.worklist_page.study_labels import StudyLabel, StudyLabels
from router.worklist_page.thumbnails import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, WindowChoice

LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_AGE_H = 72.0
_ASSETS = {"worklist.css": "text/css; charset=utf-8", "worklist.js": "text/javascript"}
_PAGE_HEADERS = {
    # Everything the page needs comes from this server; nothing inline, nothing external.
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_THUMBNAIL_HEADERS = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}


class FeedbackRequest(BaseModel):
    """``POST /api/results/{id}/feedback`` body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agree: StrictBool
    comment: str = Field(default="", max_length=COMMENT_MAX_CHARS)
    reader: str = Field(default="", max_length=READER_MAX_CHARS)
    """Who gives it, when the API runs without authentication; with it, the signed-in user
    is recorded and this is ignored."""


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LruCache(Generic[K, V]):
    """Rendered thumbnails, and the slices of findings, by request; results never change."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)


def create_worklist_router(
    db: Database,
    *,
    segmentations: SegmentationLookup = no_segmentations,
    thumbnail_cache_entries: int = 256,
    audit: AuditRecorder = NO_AUDIT,
) -> APIRouter:
    """``/worklist`` (page), ``/api/worklist``, thumbnails, the slices of a finding, feedback
    and its CSV export.

    ``segmentations`` maps a result id to the SEG files written for it, so thumbnails also
    outline the masks and a finding's slices are its segment's frames; without it only the SR
    regions are drawn and a finding has only its key slice. ``audit`` records who saw which
    study (worklist entries, key images), feedback and the export.
    """
    router = APIRouter()
    labels = StudyLabels(db)
    thumbnails: _LruCache[tuple[int, int, int, int, str], bytes] = _LruCache(
        thumbnail_cache_entries
    )
    covered: _LruCache[tuple[int, int], FindingSlices] = _LruCache(thumbnail_cache_entries)

    def slices_of(result_id: int, finding: int) -> FindingSlices:
        slices = covered.get((result_id, finding))
        if slices is None:
            slices = finding_slices(
                db, result_id, finding_index=finding, segmentations=segmentations
            )
            covered.put((result_id, finding), slices)
        return slices

    add_page_routes(
        router,
        package="router.worklist_page",
        path="/worklist",
        page="worklist.html",
        assets=_ASSETS,
        headers=_PAGE_HEADERS,
    )

    @router.get("/api/worklist")
    def worklist(
        request: Request,
        max_age_h: float = Query(DEFAULT_MAX_AGE_H, gt=0, le=24 * 366),
        limit: int = Query(200, ge=1, le=1000),
    ) -> dict[str, Any]:
        now = time.time()
        studies = list_worklist(db, arrived_after=now - max_age_h * 3600.0, limit=limit)
        actor = request_actor(request)
        for study in studies:
            audit.record(StudyRead(actor, study.study_uid, ReadKind.WORKLIST_ENTRY))
        return {
            "generated_at": now,
            "max_age_h": max_age_h,
            "studies": [_study_json(study, labels.get(study.study_uid)) for study in studies],
        }

    @router.get("/api/results/{result_id}/thumbnail.png")
    def thumbnail(
        result_id: int,
        request: Request,
        finding: int = Query(0, ge=0, le=999),
        size: int = Query(DEFAULT_SIZE, ge=MIN_SIZE, le=MAX_SIZE),
        window: WindowChoice = WindowChoice.AUTO,
        slice_index: int | None = Query(None, alias="slice", ge=0, le=9999),
    ) -> Response:
        """The key image of a finding; with ``slice``, slice k of the finding's slices."""
        key = (result_id, finding, -1 if slice_index is None else slice_index, size, window.value)
        png = thumbnails.get(key)
        if png is None:
            try:
                if slice_index is None:
                    png = key_image_png(
                        db,
                        result_id,
                        finding_index=finding,
                        size=size,
                        window=window,
                        segmentations=segmentations,
                    )
                else:
                    png = finding_slice_png(
                        slices_of(result_id, finding), slice_index, size=size, window=window
                    )
            except KeyImageNotFoundError as exc:
                raise HTTPException(status_code=404, detail=str(exc)) from exc
            except Exception as exc:  # boundary: an unreadable object fails this image only
                study = db.query_one("SELECT study_uid FROM results WHERE id = ?", (result_id,))
                LOGGER.exception(
                    "thumbnail of result %d (study %s) could not be rendered",
                    result_id,
                    log_safe(study["study_uid"] if study is not None else "unknown"),
                )
                raise HTTPException(
                    status_code=500, detail="the key image could not be rendered"
                ) from exc
            thumbnails.put(key, png)
        shown = db.query_one("SELECT study_uid FROM results WHERE id = ?", (result_id,))
        if shown is not None:
            audit.record(StudyRead(request_actor(request), shown["study_uid"], ReadKind.KEY_IMAGE))
        return Response(png, media_type="image/png", headers=_THUMBNAIL_HEADERS)

    @router.get("/api/results/{result_id}/findings/{finding}/slices")
    def finding_slice_list(
        result_id: int, finding: int = PathParameter(ge=0, le=999)
    ) -> dict[str, Any]:
        """The slices that hold a finding (its SEG segment's frames, else its key slice), in
        image order, with the image numbers a PACS viewer shows."""
        try:
            slices = slices_of(result_id, finding)
        except KeyImageNotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except Exception as exc:  # boundary: an unreadable object fails this list only
            study = db.query_one("SELECT study_uid FROM results WHERE id = ?", (result_id,))
            LOGGER.exception(
                "slices of finding %d of result %d (study %s) could not be listed",
                finding,
                result_id,
                log_safe(study["study_uid"] if study is not None else "unknown"),
            )
            raise HTTPException(
                status_code=500, detail="the finding's slices could not be read"
            ) from exc
        return _slices_json(slices)

    @router.post("/api/results/{result_id}/feedback", status_code=201)
    def feedback(result_id: int, body: FeedbackRequest, request: Request) -> dict[str, Any]:
        principal = current_principal(request)
        reader = body.reader if principal is None else principal.name[:READER_MAX_CHARS]
        try:
            stored = record_feedback(
                db, result_id, agree=body.agree, comment=body.comment, reader=reader
            )
        except UnknownResultError as exc:
            raise HTTPException(status_code=404, detail=f"no result {result_id}") from exc
        audit.record(
            FeedbackGiven(request_actor(request), stored.study_uid, result_id, stored.agree)
        )
        return {
            "id": stored.id,
            "result_id": stored.result_id,
            "agree": stored.agree,
            "comment": stored.comment,
            "reader": stored.reader,
            "at": stored.at,
        }

    @router.get("/api/feedback.csv")
    def feedback_csv(request: Request) -> Response:
        studies = tuple(dict.fromkeys(item.study_uid for item in list_feedback(db)))
        audit.record(FeedbackExported(request_actor(request), studies))
        return Response(
            export_feedback_csv(db),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="radrouter-feedback.csv"'},
        )

    return router


def _study_json(study: WorklistStudy, label: StudyLabel) -> dict[str, Any]:
    return {
        "study_uid": study.study_uid,
        "accession_number": label.accession_number,
        "study_description": label.study_description,
        "modalities": list(study.modalities),
        "arrived_at": study.arrived_at,
        "last_image_at": study.last_image_at,
        "priority": study.priority.value,
        "raised": study.raised,
        "reason": study.reason,
        "last_image_to_flag_s": round(study.last_image_to_flag_s, 3),
        "results": [_result_json(result) for result in study.results],
    }


def _slices_json(slices: FindingSlices) -> dict[str, Any]:
    base = f"/api/results/{slices.result_id}/thumbnail.png?finding={slices.finding_index}"
    return {
        "result_id": slices.result_id,
        "finding": slices.finding_index,
        "series_number": slices.series_number,
        "key_index": slices.key_index,
        "window": slices.window.value,
        "slices": [
            {
                "index": index,
                "instance_number": chosen.instance_number,
                "frame_number": chosen.frame_number,
                "image_url": f"{base}&slice={index}",
            }
            for index, chosen in enumerate(slices.slices)
        ],
    }


def _result_json(result: WorklistResult) -> dict[str, Any]:
    has_image = result.result_id is not None and result.finding_count > 0
    return {
        "result_id": result.result_id,
        "job_id": result.job_id,
        "algorithm": result.algorithm,
        "algorithm_version": result.algorithm_version,
        "verdict": result.verdict.value,
        "priority": result.priority.value,
        "raised": result.raised,
        "reason": result.reason,
        "flagged_at": result.flagged_at,
        "last_image_to_flag_s": round(result.last_image_to_flag_s, 3),
        "finding_count": result.finding_count,
        "thumbnail_url": (f"/api/results/{result.result_id}/thumbnail.png" if has_image else None),
        "slices_url": (f"/api/results/{result.result_id}/findings/0/slices" if has_image else None),
        "feedback": (
            None
            if result.feedback is None
            else {
                "agree": result.feedback.agree,
                "reader": result.feedback.reader,
                "at": result.feedback.at,
                "count": result.feedback.count,
            }
        ),
    }
