"""Every change of the configuration, kept in the database for the admin page: when, who,
from where (the file or the page), accepted or refused, the diff (secrets redacted) and the
problems. The audit trail records the same change as a DICOM audit message; this copy is
what the page can list."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from router.audit.events import AuditEvent, AuditRecorder, ConfigChanged
from router.store.database import Database

EVENT_KIND = "config_changed"
MAX_DIFF_CHARS = 20_000
MAX_PROBLEMS_CHARS = 5_000


@dataclass(frozen=True)
class ConfigChange:
    at: float
    editor: str
    source: str
    accepted: bool
    diff: str
    problems: str


class ConfigChangeLog:
    """An audit recorder that also keeps each configuration change in ``events``, and hands
    every event on to ``inner`` (the audit trail, or none)."""

    def __init__(self, db: Database, inner: AuditRecorder) -> None:
        self._db = db
        self._inner = inner

    def record(self, event: AuditEvent) -> None:
        self._inner.record(event)
        if isinstance(event, ConfigChanged):
            detail = {
                "editor": event.editor[:200],
                "source": event.source,
                "accepted": event.accepted,
                "diff": _cut(event.diff, MAX_DIFF_CHARS),
                "problems": _cut(event.problems, MAX_PROBLEMS_CHARS),
            }
            self._db.record_event(EVENT_KIND, detail=json.dumps(detail))


def config_history(db: Database, limit: int = 50) -> list[ConfigChange]:
    """The latest changes, newest first."""
    rows = db.query(
        "SELECT at, detail FROM events WHERE kind = ? ORDER BY id DESC LIMIT ?",
        (EVENT_KIND, max(1, min(limit, 1000))),
    )
    changes = []
    for row in rows:
        detail: dict[str, Any] = json.loads(row["detail"] or "{}")
        changes.append(
            ConfigChange(
                at=float(row["at"]),
                editor=str(detail.get("editor", "")),
                source=str(detail.get("source", "file")),
                accepted=bool(detail.get("accepted", False)),
                diff=str(detail.get("diff", "")),
                problems=str(detail.get("problems", "")),
            )
        )
    return changes


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "\n… (cut)"
