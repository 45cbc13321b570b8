"""Reading the audit log back: which messages match a question, one line each.

"Who saw this study" is every message naming the study, with who asked; "what did this user
do" every message where they are the requestor. The patient ID is a filter, never printed:
the person asking already knows it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from xml.sax.saxutils import escape

from router.audit.messages import AuditMessage, Outcome


@dataclass(frozen=True)
class AuditQuestion:
    """What to select; every criterion given must hold."""

    study_uid: str | None = None
    user: str | None = None
    patient_id: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"AuditQuestion: {name} must be timezone-aware")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("AuditQuestion: since is after until")

    def matches(self, message: AuditMessage) -> bool:
        if self.since is not None and message.at < self.since:
            return False
        if self.until is not None and message.at > self.until:
            return False
        if self.study_uid is not None and self.study_uid not in message.study_uids():
            return False
        if self.patient_id is not None and self.patient_id not in message.patient_ids():
            return False
        return self.user is None or any(p.user_id == self.user for p in message.requestors())

    def might_match(self, line: bytes) -> bool:
        """False when the line of XML cannot match: a UID, user or ID asked for is not in it.
        (Cheap; ``matches`` decides.)"""
        return all(
            escape(value, {'"': "&quot;"}).encode("utf-8") in line
            for value in (self.study_uid, self.user, self.patient_id)
            if value is not None
        )

    def describe(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("study", self.study_uid),
                ("user", self.user),
                ("patient", None if self.patient_id is None else "(given)"),
                ("since", self.since and self.since.isoformat()),
                ("until", self.until and self.until.isoformat()),
            )
            if value
        ]
        return " ".join(parts) or "everything"


def select(messages: Iterable[AuditMessage], question: AuditQuestion) -> list[AuditMessage]:
    return [message for message in messages if question.matches(message)]


def describe(message: AuditMessage) -> str:
    """One line: when, what, who (the requestors, at their hosts), which studies, outcome."""
    when = message.at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    what = message.event_id.value.meaning
    kinds = ", ".join(t.meaning for t in message.event_types)
    if kinds:
        what += f" ({kinds})"
    who = ", ".join(
        p.user_id + (f"@{p.network_access_point}" if p.network_access_point else "")
        for p in message.requestors()
    )
    studies = ", ".join(message.study_uids())
    line = f"{when}  {message.action.value}  {what}  by {who or '-'}"
    if studies:
        line += f"  study {studies}"
    if message.outcome is not Outcome.SUCCESS:
        line += f"  FAILED ({int(message.outcome)})"
    if message.outcome_description:
        line += f": {' '.join(message.outcome_description.split())[:200]}"
    return line
