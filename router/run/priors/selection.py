"""Which earlier study is a prior: the patient's studies before the current one, most recent
first, and the series selector a prior series must match (pure functions, no I/O)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from config.schema import Matcher, Rule
from router.route.matching import ASSOCIATION_ATTRIBUTES, SeriesFacts, evaluate_rule


@dataclass(frozen=True)
class CurrentStudy:
    """The study a follow-up algorithm runs on: whose, when, which."""

    patient_id: str
    study_date: str
    """DICOM DA, YYYYMMDD ("" when unknown: then no prior can be called earlier)."""
    study_instance_uid: str
    study_time: str = ""

    @classmethod
    def from_header(cls, ds: Dataset) -> CurrentStudy:
        return cls(
            patient_id=str(ds.get("PatientID", "") or ""),
            study_date=str(ds.get("StudyDate", "") or ""),
            study_instance_uid=str(ds.get("StudyInstanceUID", "") or ""),
            study_time=str(ds.get("StudyTime", "") or ""),
        )


@dataclass(frozen=True)
class PriorCandidate:
    """An earlier study of the patient, before its series are looked at."""

    study_instance_uid: str
    study_date: str
    study_time: str = ""


@dataclass(frozen=True)
class FoundPrior:
    """The prior series chosen, held in radrouter's spool."""

    study_instance_uid: str
    series_instance_uid: str
    study_date: str
    paths: tuple[Path, ...]
    source: str
    """"local" or the AE title of the source it was retrieved from."""


def parse_date(value: str) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _time_key(value: str) -> str:
    digits = "".join(ch for ch in value.split(".")[0] if ch.isdigit())
    return digits.ljust(6, "0")[:6] if digits else ""


def select_priors(
    current: CurrentStudy, candidates: Iterable[PriorCandidate], max_age_days: int
) -> list[PriorCandidate]:
    """The candidates that are earlier than the current study, within ``max_age_days`` of it,
    and not the study itself, most recent first.

    Same-day studies count as earlier only when both have a StudyTime and the candidate's is
    earlier; studies without a parseable StudyDate are never chosen (nothing says they are
    earlier). With no current StudyDate, nothing is.
    """
    today = parse_date(current.study_date)
    if today is None:
        return []
    oldest = today - datetime.timedelta(days=max_age_days)
    now_time = _time_key(current.study_time)
    chosen: list[tuple[datetime.date, str, PriorCandidate]] = []
    seen: set[str] = set()
    for cand in candidates:
        if cand.study_instance_uid == current.study_instance_uid or cand.study_instance_uid in seen:
            continue
        day = parse_date(cand.study_date)
        if day is None or day < oldest or day > today:
            continue
        then_time = _time_key(cand.study_time)
        if day == today and not (now_time and then_time and then_time < now_time):
            continue
        seen.add(cand.study_instance_uid)
        chosen.append((day, then_time, cand))
    chosen.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [cand for _, _, cand in chosen]


def selector_rule(selector: Mapping[str, Matcher]) -> Rule:
    """The series selector as a rule, without the association keys (a prior arrived on
    another association)."""
    when = {k: v for k, v in selector.items() if k not in ASSOCIATION_ATTRIBUTES}
    return Rule(name="prior-series", when=when)


def series_matches(rule: Rule, header: Dataset) -> bool:
    return evaluate_rule(rule, SeriesFacts.from_dataset(header, "", "")).matched


def matches_returned_keys(rule: Rule, identifier: Dataset) -> bool:
    """A C-FIND series response against the selector, checking only the attributes the PACS
    returned (the full selector is checked on the retrieved header)."""
    present = {k: v for k, v in rule.when.items() if str(identifier.get(k, "") or "").strip()}
    return evaluate_rule(
        Rule(name=rule.name, when=present), SeriesFacts.from_dataset(identifier, "", "")
    ).matched
