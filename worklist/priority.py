"""Worklist priority from an algorithm's outcome: a pure function of result, study and policy.

Flags only raise a priority: the decision is never less urgent than the rule's lane or the
order's own priority, whatever the algorithm said. A negative, a "not assessed" and a failure
keep the priority and say so in the reason, so every channel can state them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Measurement,
    Qualifier,
    Verdict,
)
from config.schema import FlagCondition, Priority, PriorityFlag
from worklist import codes
from worklist.facts import AlgorithmFailure, Outcome, StudyFacts

PriorityPolicy = Mapping[str, Sequence[PriorityFlag]]
"""``worklist.priority_policy``: the flags of each algorithm, by algorithm name."""


class DecisionStatus(enum.StrEnum):
    """What the algorithm's outcome means for the worklist."""

    FLAGGED = "flagged"
    """A priority flag of the policy holds for a finding."""
    FOUND = "found"
    """Positive, but no priority flag holds."""
    NEGATIVE = "negative"
    NOT_ASSESSED = "not_assessed"
    FAILED = "failed"


@dataclass(frozen=True)
class PriorityDecision:
    """The worklist priority of a study after an algorithm ran, and why, in words."""

    priority: Priority
    base_priority: Priority
    """The most urgent of the rule's lane and the order's own priority."""
    status: DecisionStatus
    reason: str
    """For a person, e.g. "AI: suspected PE, right lower lobe, p=0.93 [PE Detector 1.0]"."""

    def __post_init__(self) -> None:
        if self.priority.rank > self.base_priority.rank:
            raise ValueError(
                f"PriorityDecision.priority {self.priority.value} is below base_priority "
                f"{self.base_priority.value}: a decision never lowers a priority"
            )
        if self.priority is not self.base_priority and self.status is not DecisionStatus.FLAGGED:
            raise ValueError("PriorityDecision: only a FLAGGED decision changes the priority")
        if not self.reason.strip():
            raise ValueError("PriorityDecision.reason must not be empty")

    @property
    def flag_raised(self) -> bool:
        """Whether a priority flag held (even when the study was already that urgent)."""
        return self.status is DecisionStatus.FLAGGED

    @property
    def raised(self) -> bool:
        """Whether the priority is more urgent than it was before the algorithm ran."""
        return self.priority.rank < self.base_priority.rank


@dataclass(frozen=True)
class _Candidate:
    """One finding, or the study-level answer, as the flags see it."""

    finding_type: Code
    probability: float | None
    measurements: tuple[Measurement, ...]
    site: Code | None
    qualifiers: tuple[Qualifier, ...]
    study_level: bool = False


@dataclass(frozen=True)
class _Match:
    flag: PriorityFlag
    flag_index: int
    candidate: _Candidate

    def sort_key(self) -> tuple[int, int, float]:
        probability = self.candidate.probability
        return (self.flag.raise_to.rank, self.flag_index, -(probability or 0.0))


def most_urgent(*priorities: Priority | None) -> Priority:
    """The most urgent of the priorities given (``None`` ignored); routine when none."""
    given = [p for p in priorities if p is not None]
    return min(given, key=lambda p: p.rank, default=Priority.ROUTINE)


def decide_priority(
    outcome: Outcome,
    algorithm: AlgorithmInfo,
    study: StudyFacts,
    lane: Priority,
    policy: PriorityPolicy,
) -> PriorityDecision:
    """The worklist priority and reason for ``study`` after ``algorithm`` gave ``outcome``.

    ``lane`` is the priority of the rule that ran the algorithm; ``policy`` is
    ``worklist.priority_policy``. The most urgent flag that holds for any finding (or for the
    study-level answer) wins; among equals the first flag written, then the most probable
    finding.
    """
    base = most_urgent(lane, study.existing_priority)
    flags = tuple(policy.get(algorithm.name, ()))
    target = _target_words(algorithm, flags)
    identity = f"[{algorithm.display_name} {algorithm.version}]"
    if isinstance(outcome, AlgorithmFailure):
        reason = f"AI: {target} algorithm failed: {_sentence(outcome.reason)} {identity}"
        return PriorityDecision(base, base, DecisionStatus.FAILED, reason)
    if outcome.verdict is Verdict.NOT_ASSESSED:
        reason = f"AI: {target} not assessed: {_sentence(outcome.reason)} {identity}"
        return PriorityDecision(base, base, DecisionStatus.NOT_ASSESSED, reason)
    if outcome.verdict is Verdict.ABSENT:
        return PriorityDecision(
            base, base, DecisionStatus.NEGATIVE, f"AI: no {target} found {identity}"
        )
    matches = sorted(
        (
            _Match(flag, index, candidate)
            for candidate in _candidates(outcome, algorithm)
            for index, flag in enumerate(flags)
            if _holds(flag.when, candidate)
        ),
        key=_Match.sort_key,
    )
    if not matches:
        reason = f"AI: {target} found, no priority flag met {identity}"
        return PriorityDecision(base, base, DecisionStatus.FOUND, reason)
    best = matches[0]
    others = {
        id(m.candidate)
        for m in matches
        if not m.candidate.study_level and m.candidate is not best.candidate
    }
    more = f" (+{len(others)} more flagged)" if others else ""
    reason = f"AI: suspected {_describe(best)}{more} {identity}"
    return PriorityDecision(
        most_urgent(base, best.flag.raise_to), base, DecisionStatus.FLAGGED, reason
    )


def _candidates(result: AlgorithmResult, algorithm: AlgorithmInfo) -> list[_Candidate]:
    """Each finding, then the study-level answer (the target with the study's probability)."""
    candidates = [
        _Candidate(f.finding_type, f.probability, f.measurements, f.finding_site, f.qualifiers)
        for f in result.findings
    ]
    candidates.append(
        _Candidate(
            algorithm.target, result.probability, result.measurements, None, (), study_level=True
        )
    )
    return candidates


def _holds(condition: FlagCondition, candidate: _Candidate) -> bool:
    if condition.finding is not None and not _names(condition.finding, candidate.finding_type):
        return False
    if condition.site is not None and (
        candidate.site is None or not _names(condition.site, candidate.site)
    ):
        return False
    if condition.min_probability is not None and (
        candidate.probability is None or candidate.probability < condition.min_probability
    ):
        return False
    for name, bound in condition.measurements.items():
        if not any(
            _names(name, m.name)
            and (bound.unit is None or m.unit.value == bound.unit)
            and (bound.min is None or m.value >= bound.min)
            and (bound.max is None or m.value <= bound.max)
            for m in candidate.measurements
        ):
            return False
    return all(
        any(_names(name, q.name) and _names(value, q.value) for q in candidate.qualifiers)
        for name, value in condition.qualifiers.items()
    )


def _names(text: str, code: Code) -> bool:
    """Whether ``text`` (a code value or a meaning, any case) names ``code``."""
    return text == code.value or text.casefold() == code.meaning.casefold()


def _describe(match: _Match) -> str:
    """``PE, right lower lobe, 12 mm, p=0.93``: what, where, the measurements the flag tested,
    and the probability."""
    candidate = match.candidate
    parts = [match.flag.label or _word(candidate.finding_type.meaning)]
    location = describe_location(candidate.site, candidate.qualifiers)
    if location:
        parts.append(location)
    for name in match.flag.when.measurements:
        parts.extend(
            f"{_number(m.value)} {m.unit.value}"
            for m in candidate.measurements
            if _names(name, m.name)
        )
    if candidate.probability is not None:
        parts.append(f"p={candidate.probability:.2f}")
    return ", ".join(parts)


def describe_location(site: Code | None, qualifiers: Sequence[Qualifier]) -> str:
    """``right lower lobe``: laterality before the site (unless the site names it already),
    other qualifier values after it."""
    site_words = set(site.meaning.casefold().split()) if site else set()
    laterality = [
        q.value.meaning
        for q in qualifiers
        if _is_laterality(q.name) and q.value.meaning.casefold() not in site_words
    ]
    others = [_word(q.value.meaning) for q in qualifiers if not _is_laterality(q.name)]
    where = " ".join(_word(text) for text in [*laterality, *([site.meaning] if site else [])])
    return ", ".join(part for part in [where, *others] if part)


def _is_laterality(name: Code) -> bool:
    return (name.value, name.scheme_designator) == (
        codes.LATERALITY.value,
        codes.LATERALITY.scheme_designator,
    ) or name.meaning.casefold() == "laterality"


def _target_words(algorithm: AlgorithmInfo, flags: Sequence[PriorityFlag]) -> str:
    """What the reason calls the algorithm's target: the label of a flag about it, or its
    meaning."""
    for flag in flags:
        if flag.label and (
            flag.when.finding is None or _names(flag.when.finding, algorithm.target)
        ):
            return flag.label
    return _word(algorithm.target.meaning)


def _word(meaning: str) -> str:
    """A coded meaning inside a sentence: ``Nodule`` -> ``nodule``; acronyms stay (``PE``)."""
    if len(meaning) > 1 and meaning[0].isupper() and meaning[1].islower():
        return meaning[0].lower() + meaning[1:]
    return meaning


def _sentence(text: str) -> str:
    """A free-text reason on one line, without a trailing full stop."""
    return " ".join(text.split()).rstrip(".")


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")
