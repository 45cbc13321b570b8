"""The configuration on the admin page: the running text (secrets redacted), a candidate
checked as a change on disk would be, its diff, and a dry run of it against the headers of
the studies received last, series by series, before and after.

A secret value never leaves the server: the page shows ``<redacted>`` in its place, and a
candidate's unchanged lines get their original text back before it is checked (a secret can
be changed only in the file itself).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from algorithms.contract import Purpose
from config.schema import RouterConfig
from router.audit.config_change import REDACTED, config_diff, redact
from router.live_config import ConfigHolder
from router.route.matching import RoutingDecision, SeriesFacts, route
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

DEFAULT_DRY_RUN_STUDIES = 20
MAX_DRY_RUN_STUDIES = 200
MAX_CANDIDATE_CHARS = 1_000_000
"""A candidate longer than this is refused unread (a routing file is a few kilobytes)."""


@dataclass(frozen=True)
class SeriesRouting:
    """One recent series routed by the running configuration and by the candidate."""

    study_uid: str
    series_uid: str
    modality: str
    series_description: str
    before: str
    """The running configuration's decision in one line (``RoutingDecision.summary``)."""
    after: str
    explanation: str
    """The candidate's decision, rule by rule, condition by condition."""

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True)
class DryRun:
    studies: int
    series: list[SeriesRouting] = field(default_factory=list)
    unreadable: int = 0
    """Series whose header could not be read (purged by retention, or damaged)."""


@dataclass(frozen=True)
class CandidateCheck:
    valid: bool
    problems: list[str]
    diff: str
    """Unified diff from the running file, secrets redacted; "" when the same."""
    dry_run: DryRun | None
    """None when the candidate does not load (nothing to route with)."""


def running_text(holder: ConfigHolder) -> str:
    """The running file's text as the page shows it: secret values redacted."""
    return redact(holder.text())


def restore_secrets(candidate: str, running: str) -> str:
    """``candidate`` (edited from ``redact(running)``) with every line the editor left as it
    was given back its original text, secrets included. A ``<redacted>`` left in a changed
    line stays, and is refused by :func:`secret_problems`."""
    original = running.splitlines(keepends=True)
    shown = redact(running).splitlines(keepends=True)
    edited = candidate.splitlines(keepends=True)
    if len(original) != len(shown):  # redaction keeps lines; if not, restore nothing
        return candidate
    out: list[str] = []
    matcher = difflib.SequenceMatcher(a=shown, b=edited, autojunk=False)
    for tag, a_start, a_end, b_start, b_end in matcher.get_opcodes():
        if tag == "equal":
            out.extend(original[a_start:a_end])
        else:
            out.extend(edited[b_start:b_end])
    return "".join(out)


def secret_problems(candidate: str) -> list[str]:
    return [
        f"line {number}: a secret cannot be changed on this page (it shows {REDACTED} in its "
        "place): change it in the file itself"
        for number, line in enumerate(candidate.splitlines(), start=1)
        if REDACTED in line
    ]


def check_candidate(
    holder: ConfigHolder,
    candidate: str,
    db: Database,
    purposes: Mapping[str, Purpose],
    studies: int = DEFAULT_DRY_RUN_STUDIES,
) -> CandidateCheck:
    """Check ``candidate`` (as shown and edited on the page) as a change of the file would be
    checked, and route the series of the last ``studies`` studies with it."""
    running = holder.text()
    text = restore_secrets(candidate, running)
    path = holder.path if holder.path is not None else Path("radrouter.yaml")
    diff = config_diff(running, text, path)
    loaded, problems = holder.check_text(text)
    problems = secret_problems(text) + problems
    dry = None
    if loaded is not None:
        dry = dry_run_recent(db, holder.current(), loaded.config, purposes, studies)
    return CandidateCheck(not problems, problems, diff, dry)


def dry_run_recent(
    db: Database,
    running: RouterConfig,
    candidate: RouterConfig,
    purposes: Mapping[str, Purpose],
    studies: int,
) -> DryRun:
    """Route each series of the last ``studies`` studies received with both configurations,
    from the header of its first instance, as the planner does."""
    studies = max(1, min(studies, MAX_DRY_RUN_STUDIES))
    rows = db.query(
        "SELECT se.study_uid, se.series_uid, se.modality, se.series_description, "
        "  i.path, i.calling_ae, i.called_ae "
        "FROM series se JOIN (SELECT study_uid, last_received_at FROM studies "
        "  ORDER BY last_received_at DESC LIMIT ?) st ON st.study_uid = se.study_uid "
        "LEFT JOIN instances i ON i.sop_instance_uid = (SELECT x.sop_instance_uid "
        "  FROM instances x WHERE x.series_uid = se.series_uid "
        "  ORDER BY x.instance_number NULLS FIRST, x.sop_instance_uid LIMIT 1) "
        "ORDER BY st.last_received_at DESC, se.first_received_at, se.series_uid",
        (studies,),
    )
    series: list[SeriesRouting] = []
    unreadable = 0
    for row in rows:
        first = None if row["path"] is None else (row["path"], row["calling_ae"], row["called_ae"])
        decisions = _route_both(first, running, candidate, purposes)
        if decisions is None:
            unreadable += 1
            continue
        before, after = decisions
        series.append(
            SeriesRouting(
                study_uid=row["study_uid"],
                series_uid=row["series_uid"],
                modality=row["modality"],
                series_description=row["series_description"],
                before=before.summary(),
                after=after.summary(),
                explanation=after.explain(),
            )
        )
    counted = len({row["study_uid"] for row in rows})
    return DryRun(counted, series, unreadable)


def _route_both(
    first: tuple[str, str, str] | None,
    running: RouterConfig,
    candidate: RouterConfig,
    purposes: Mapping[str, Purpose],
) -> tuple[RoutingDecision, RoutingDecision] | None:
    if first is None:
        return None
    path, calling_ae, called_ae = first
    try:
        header = dcmread(Path(path), stop_before_pixels=True)
        facts = SeriesFacts.from_dataset(header, calling_ae, called_ae)
    except Exception as exc:  # purged, or damaged since: counted, never fatal
        LOGGER.info("dry run: a series header could not be read (%s)", type(exc).__name__)
        return None
    return route(running, facts, purposes), route(candidate, facts, purposes)
