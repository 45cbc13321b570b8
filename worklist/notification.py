"""The worklist notification: one algorithm outcome for one study, with its priority decision."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from algorithms.contract import AlgorithmInfo
from algorithms.finding_words import KeyImage
from config.schema import Priority
from worklist.facts import Outcome, StudyFacts
from worklist.priority import PriorityDecision, PriorityPolicy, decide_priority


@dataclass(frozen=True)
class Notification:
    """What every channel delivers. ``notification_id`` is stable across retries of the same
    notification (channels derive message and resource identifiers from it, so a retry is
    recognised as the same message), and unique per result."""

    notification_id: str
    study: StudyFacts
    algorithm: AlgorithmInfo
    outcome: Outcome
    decision: PriorityDecision
    created_at: datetime.datetime
    """When the result was made; timezone-aware."""
    key_images: tuple[KeyImage | None, ...] = ()
    """Series and image number of each finding's slice, in finding order; empty if unknown."""

    def __post_init__(self) -> None:
        if not self.notification_id or not self.notification_id.isprintable():
            raise ValueError("Notification.notification_id must be non-empty printable text")
        if len(self.notification_id) > 128:
            raise ValueError("Notification.notification_id is longer than 128 characters")
        if self.created_at.tzinfo is None:
            raise ValueError("Notification.created_at must be timezone-aware")


def build_notification(
    notification_id: str,
    study: StudyFacts,
    algorithm: AlgorithmInfo,
    outcome: Outcome,
    lane: Priority,
    policy: PriorityPolicy,
    created_at: datetime.datetime | None = None,
    *,
    key_images: Sequence[KeyImage | None] = (),
) -> Notification:
    """Decide the priority (:func:`~worklist.priority.decide_priority`) and wrap it all up.
    ``created_at`` defaults to now (UTC). ``key_images``: one per finding, in finding order
    (the router reads them back with ``outcome_codec.key_images_from_json``), so the reason
    names the series and image to open; empty when unknown."""
    decision = decide_priority(outcome, algorithm, study, lane, policy, key_images=key_images)
    when = created_at or datetime.datetime.now(datetime.UTC)
    return Notification(
        notification_id, study, algorithm, outcome, decision, when, tuple(key_images)
    )
