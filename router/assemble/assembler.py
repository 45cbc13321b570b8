"""The assembler stage: watches receiving studies and hands complete ones to the planner."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from config.schema import CompletionConfig
from router.assemble.completion import (
    CompletionReason,
    InstanceGeometry,
    SeriesState,
    StudyState,
    decide_completion,
    missing_images,
)
from router.logs import log_safe
from router.store.database import Database

LOGGER = logging.getLogger(__name__)


class Assembler:
    """Polls (and is woken on association close) to decide completion from stored evidence."""

    def __init__(
        self,
        db: Database,
        completion: Callable[[], CompletionConfig],
        on_complete: Callable[[str, int, CompletionReason], None],
    ) -> None:
        self.db = db
        self._completion = completion
        self._on_complete = on_complete
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held: set[tuple[str, int]] = set()  # (study, revision) held for missing images

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="assembler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            config = self._completion()
            try:
                self.tick(time.time())
            except Exception:  # boundary: one bad tick must not stop the stage
                LOGGER.exception("assembler tick failed")
            self._wake.wait(config.check_interval_s)
            self._wake.clear()

    def tick(self, now: float) -> list[str]:
        """Complete every study that is ready; return their UIDs."""
        config = self._completion()
        completed: list[str] = []
        receiving = self.db.query(
            "SELECT study_uid, revision, first_received_at, last_received_at FROM studies "
            "WHERE state = 'receiving'"
        )
        self._held &= {(row["study_uid"], int(row["revision"])) for row in receiving}
        for row in receiving:
            state = self._study_state(
                row["study_uid"],
                row["first_received_at"],
                row["last_received_at"],
                idle=now - row["last_received_at"] >= config.study_idle_s,
            )
            reason = decide_completion(state, config, now)
            if reason is None:
                self._note_held(row["study_uid"], int(row["revision"]), state, config, now)
                continue
            with self.db.transaction() as conn:
                updated = conn.execute(
                    "UPDATE studies SET state = 'complete', completed_at = ?, completion_reason = ? "
                    "WHERE study_uid = ? AND state = 'receiving' AND revision = ?",
                    (now, reason.value, row["study_uid"], row["revision"]),
                ).rowcount
            if not updated:
                continue  # an instance arrived meanwhile and reopened the study
            self.db.record_event("study_complete", row["study_uid"], detail=reason.value)
            LOGGER.info(
                "study %s complete (%s), revision %d",
                log_safe(row["study_uid"]),
                reason.value,
                row["revision"],
            )
            completed.append(row["study_uid"])
            self._on_complete(row["study_uid"], int(row["revision"]), reason)
        return completed

    def _note_held(
        self, study_uid: str, revision: int, state: StudyState, config: CompletionConfig, now: float
    ) -> None:
        """Say once per revision that an idle timer was held by a series that lacks images."""
        if (study_uid, revision) in self._held or now - state.last_received_at < min(
            config.series_idle_s, config.study_idle_s
        ):
            return
        missing = next(
            (m for m in (missing_images(s.instances) for s in state.series) if m is not None),
            None,
        )
        if missing is None:
            return
        self._held.add((study_uid, revision))
        self.db.record_event("study_waiting_for_images", study_uid, detail=missing.reason)
        LOGGER.info(
            "study %s waits for the rest of a series (%s) until the hard cap",
            log_safe(study_uid),
            missing.reason,
        )

    def _study_state(
        self, study_uid: str, first: float, last: float, *, idle: bool = False
    ) -> StudyState:
        """The study's evidence. Series geometry is read once nothing is still sending, or
        once the study-idle timer has run out (a series known to lack images holds it)."""
        associations = self.db.query(
            "SELECT a.state, a.closed_at FROM association_studies s "
            "JOIN associations a ON a.id = s.association_id WHERE s.study_uid = ?",
            (study_uid,),
        )
        closed = [a["closed_at"] for a in associations if a["closed_at"] is not None]
        open_count = sum(1 for a in associations if a["state"] == "open")
        series: list[SeriesState] = []
        # Geometry is only evidence once nothing is still sending (or the study is idle with an
        # association still open): skip the work before that.
        for s in (
            []
            if open_count and not idle
            else self.db.query(
                "SELECT series_uid, last_received_at FROM series WHERE study_uid = ?", (study_uid,)
            )
        ):
            instances = [
                InstanceGeometry(
                    orientation=i["orientation"],
                    slice_position=i["slice_position"],
                    images_in_acquisition=i["images_in_acquisition"],
                    acquisition_number=i["acquisition_number"],
                    number_of_frames=i["number_of_frames"],
                )
                for i in self.db.query(
                    "SELECT orientation, slice_position, images_in_acquisition, "
                    "acquisition_number, number_of_frames FROM instances WHERE series_uid = ?",
                    (s["series_uid"],),
                )
            ]
            series.append(SeriesState(s["last_received_at"], instances))
        return StudyState(
            first_received_at=first,
            last_received_at=last,
            open_associations=open_count,
            released_associations=sum(1 for a in associations if a["state"] == "released"),
            last_closed_at=max(closed) if closed else None,
            series=series,
        )
