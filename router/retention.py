"""Retention: deletes the received images and result files of studies kept long enough.

radrouter is a router, not an archive: the PACS holds the images and the results it was sent.
Patient data that stays on the router's disk longer than its work needs is only a liability,
so a finished study's files go after ``storage.keep_finished_days``, and those of a study that
needs attention (whose files a retry would need) after ``storage.keep_unresolved_days``. The
index rows (UIDs, states, timings, no patient data) stay for the record; the study shows
``purged_at``, and each purge is recorded. Only files the index names, inside the data folder,
are deleted: no path is built from header text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from config.schema import RouterConfig
from router.polling_stage import PollingStage
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

DAY_S = 86400.0
FINISHED_STATES = ("done", "unrouted", "prior")
UNRESOLVED_STATES = ("attention",)
BATCH = 20

PurgeObserver = Callable[[str, int, str], None]
"""Told (study UID, files deleted, the setting that made it due) after each purge: the audit
trail."""


class DueStudy(NamedTuple):
    study_uid: str
    rule: str
    """The setting whose period passed (``storage.keep_finished_days``, ...)."""


class RetentionStage(PollingStage):
    name = "retention"
    idle_s = 300.0

    def __init__(
        self,
        db: Database,
        config: Callable[[], RouterConfig],
        data_dir: Path,
        on_purged: PurgeObserver | None = None,
        before_purge: Callable[[str], None] | None = None,
    ) -> None:
        """``before_purge`` is called with the study UID while its files still exist (the
        audit trail reads whose study it is); ``on_purged`` after."""
        super().__init__()
        self.db = db
        self._config = config
        self._data_dir = data_dir.resolve()
        self._on_purged = on_purged
        self._before_purge = before_purge

    def run_once(self, now: float | None = None) -> bool:
        """Purge up to a batch of due studies; False when none was due."""
        now = time.time() if now is None else now
        due = self.due_studies(now)
        for study in due:
            self.purge(study.study_uid, now, study.rule)
        return len(due) == BATCH

    def due_studies(self, now: float) -> list[DueStudy]:
        storage = self._config().storage
        due: list[DueStudy] = []
        for states, days, rule in (
            (FINISHED_STATES, storage.keep_finished_days, "storage.keep_finished_days"),
            (UNRESOLVED_STATES, storage.keep_unresolved_days, "storage.keep_unresolved_days"),
        ):
            if days is None:
                continue
            marks = ", ".join("?" * len(states))
            due += [
                DueStudy(str(r["study_uid"]), rule)
                for r in self.db.query(
                    f"SELECT study_uid FROM studies WHERE state IN ({marks}) "
                    "AND purged_at IS NULL AND finished_at IS NOT NULL AND finished_at < ? "
                    "ORDER BY finished_at LIMIT ?",
                    (*states, now - days * DAY_S, BATCH),
                )
            ]
        return due[:BATCH]

    def purge(self, study_uid: str, now: float | None = None, rule: str = "by hand") -> int:
        """Delete the study's spooled instances and result objects; returns files deleted."""
        if self._before_purge is not None:
            try:
                self._before_purge(study_uid)
            except Exception:  # boundary: an observer never stops the purge
                LOGGER.exception("study %s: pre-purge observer failed", study_uid)
        paths = [
            Path(r["path"])
            for r in self.db.query(
                "SELECT path FROM instances WHERE study_uid = ? UNION ALL "
                "SELECT o.path FROM result_objects o JOIN results r ON r.id = o.result_id "
                "WHERE r.study_uid = ?",
                (study_uid, study_uid),
            )
        ]
        deleted = 0
        folders: set[Path] = set()
        for path in paths:
            resolved = path.resolve()
            if not resolved.is_relative_to(self._data_dir):
                LOGGER.error("study %s: indexed file outside the data folder left alone", study_uid)
                continue
            try:
                resolved.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
            folders.add(resolved.parent)
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            _remove_empty_up_to(folder, self._data_dir)
        self.db.connection().execute(
            "UPDATE studies SET purged_at = ? WHERE study_uid = ?",
            (time.time() if now is None else now, study_uid),
        )
        self.db.record_event("study_purged", study_uid, detail=f"{deleted} file(s) deleted")
        LOGGER.info("study %s purged after its retention period: %d file(s)", study_uid, deleted)
        if self._on_purged is not None:
            try:
                self._on_purged(study_uid, deleted, rule)
            except Exception:  # boundary: an observer never stops the purge
                LOGGER.exception("study %s: purge observer failed", study_uid)
        return deleted


def _remove_empty_up_to(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents while empty, never ``top`` nor its own folders
    (``spool``, ``results``)."""
    while folder.parent != top and folder.is_relative_to(top):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
