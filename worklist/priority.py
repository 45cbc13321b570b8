"""Worklist priority from an algorithm's outcome: a pure function of result, study and policy.

Flags only raise a priority: the decision is never less urgent than the rule's lane or the
order's own priority, whatever the algorithm said. A negative, a "not assessed" and a failure
keep the priority and say so in the reason, so every channel can state them.

The reason reads as a radiologist would write it: what (with its size), where, and the series
and image number to open in the PACS viewer ("AI: 12 mm nodule, lung, series 3 image 87
[...]"). How urgent it is, is the priority's job; the reason never quotes the configuration.
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
from algorithms.finding_words import (
    KeyImage,
    describe_location,
    measurement_words,
    number_words,
    plain_name,
    same_code,
    size_measurement,
)
from config.schema import FlagCondition, Priority, PriorityFlag
from worklist.facts import AlgorithmFailure, Outcome, StudyFacts

PriorityPolicy = Mapping[str, Sequence[PriorityFlag]]
"""``worklist.priority_policy``: the flags of each algorithm, by algorithm name."""


class DecisionStatus(enum.StrEnum):
    """What the algorithm's outcome means for the worklist."""

    FLAGGED = "flagged"
    """A priority flag of the policy holds for a finding."""
    FOUND = "found"
    """Positive, but no priority flag holds (the reason still says what and where)."""
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
    """For a person, e.g. "AI: suspected PE, right lobar pulmonary artery, series 4 image 120
    [PE Detector 1.0]"."""

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
    key_image: KeyImage | None = None
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
    *,
    key_images: Sequence[KeyImage | None] = (),
) -> PriorityDecision:
    """The worklist priority and reason for ``study`` after ``algorithm`` gave ``outcome``.

    ``lane`` is the priority of the rule that ran the algorithm; ``policy`` is
    ``worklist.priority_policy``. The most urgent flag that holds for any finding (or for the
    study-level answer) wins; among equals the first flag written, then the most probable
    finding. ``key_images`` are the findings' series and image numbers, in finding order
    (empty when unknown; ``None`` for a finding whose image is unknown).
    """
    base = most_urgent(lane, study.existing_priority)
    flags = tuple(policy.get(algorithm.name, ()))
    target = _target_words(algorithm, flags)
    identity = f"[{algorithm.display_name} {algorithm.version}]"
    if isinstance(outcome, AlgorithmFailure):
        if key_images:
            raise ValueError("decide_priority: a failed run has no findings, so no key_images")
        reason = f"AI: {target} algorithm failed: {_sentence(outcome.reason)} {identity}"
        return PriorityDecision(base, base, DecisionStatus.FAILED, reason)
    if key_images and len(key_images) != len(outcome.findings):
        raise ValueError(
            f"decide_priority: {len(key_images)} key_images for {len(outcome.findings)} "
            "finding(s); give one per finding, or none"
        )
    if outcome.verdict is Verdict.NOT_ASSESSED:
        reason = f"AI: {target} not assessed: {_sentence(outcome.reason)} {identity}"
        return PriorityDecision(base, base, DecisionStatus.NOT_ASSESSED, reason)
    if outcome.verdict is Verdict.ABSENT:
        return PriorityDecision(
            base, base, DecisionStatus.NEGATIVE, f"AI: no {target} found {identity}"
        )
    findings, study_answer = _candidates(outcome, algorithm, key_images)
    matches = sorted(
        (
            _Match(flag, index, candidate)
            for candidate in (*findings, study_answer)
            for index, flag in enumerate(flags)
            if _holds(flag.when, candidate)
        ),
        key=_Match.sort_key,
    )
    if not matches:
        reason = f"AI: {_found_words(findings, algorithm, target)} {identity}"
        return PriorityDecision(base, base, DecisionStatus.FOUND, reason)
    best = matches[0]
    reason = f"AI: {_flagged_words(best, findings, algorithm, target)} {identity}"
    return PriorityDecision(
        most_urgent(base, best.flag.raise_to), base, DecisionStatus.FLAGGED, reason
    )


def _found_words(findings: Sequence[_Candidate], algorithm: AlgorithmInfo, target: str) -> str:
    """No flag holds: the most probable finding, where it is, and how many more."""
    shown = _most_probable(findings)
    kind = algorithm.target if shown is None else shown.finding_type
    text = _describe(shown, target if same_code(kind, algorithm.target) else plain_name(kind))
    return text + _more(findings, shown)


def _flagged_words(
    best: _Match, findings: Sequence[_Candidate], algorithm: AlgorithmInfo, target: str
) -> str:
    """The finding the winning flag holds for, in the flag's words, and how many more."""
    shown: _Candidate | None = best.candidate
    if best.candidate.study_level:
        # The study's probability comes from its findings: the most probable one is where to
        # look. A study-level measurement (a count of new lesions) points at no one finding.
        shown = None if best.flag.when.measurements else _most_probable(findings)
    kind = best.candidate.finding_type if shown is None else shown.finding_type
    if best.flag.label and same_code(kind, best.candidate.finding_type):
        name = best.flag.label
    else:
        name = target if same_code(kind, algorithm.target) else plain_name(kind)
    tested = _tested(
        best.flag, best.candidate, skip=size_measurement(shown.measurements) if shown else None
    )
    return _describe(shown, name, tested, marked=len(findings)) + _more(findings, shown)


def _candidates(
    result: AlgorithmResult, algorithm: AlgorithmInfo, key_images: Sequence[KeyImage | None]
) -> tuple[list[_Candidate], _Candidate]:
    """Each finding (with its key image), and the study-level answer (the target with the
    study's probability and measurements)."""
    images = list(key_images) or [None] * len(result.findings)
    findings = [
        _Candidate(
            f.finding_type, f.probability, f.measurements, f.finding_site, f.qualifiers, image
        )
        for f, image in zip(result.findings, images, strict=True)
    ]
    study_answer = _Candidate(
        algorithm.target, result.probability, result.measurements, None, (), study_level=True
    )
    return findings, study_answer


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


# --- the reason in words ---------------------------------------------------------------------


def _describe(
    finding: _Candidate | None, name: str, tested: Sequence[str] = (), *, marked: int = 0
) -> str:
    """``12 mm nodule, right upper lobe, series 3 image 87``: a finding with a length is named
    by its size, one without as suspected; then where, the other measurements a flag tested,
    and the image to open. Without a finding to show: ``suspected PE, no location given``
    (or, when the result has ``marked`` findings, ``suspected PE, 2 findings marked``)."""
    if finding is None:
        where = f"{marked} finding{'s' if marked > 1 else ''} marked" if marked else ""
        return ", ".join([f"suspected {name}", *tested, where or "no location given"])
    size = size_measurement(finding.measurements)
    image = finding.key_image or KeyImage()
    parts = [
        f"{number_words(size.value)} {size.unit.value} {name}" if size else f"suspected {name}",
        describe_location(finding.site, finding.qualifiers, image.laterality),
        *tested,
        image.words(),
    ]
    return ", ".join(part for part in parts if part)


def _tested(flag: PriorityFlag, candidate: _Candidate, skip: Measurement | None) -> list[str]:
    """The measurements the flag tested, other than the size already given: ``volume 620
    mm3``, ``number of new lesions 2``."""
    return [
        measurement_words(m)
        for name in flag.when.measurements
        for m in candidate.measurements
        if _names(name, m.name) and m is not skip
    ]


def _most_probable(findings: Sequence[_Candidate]) -> _Candidate | None:
    """The finding to name first (the first of the most probable), or None."""
    return max(findings, key=lambda f: f.probability or 0.0, default=None)


def _more(findings: Sequence[_Candidate], shown: _Candidate | None) -> str:
    """`` (+2 more findings)`` after the finding shown; "" when it is the only one."""
    others = len(findings) - 1
    if shown is None or others <= 0:
        return ""
    return f" (+{others} more finding{'s' if others > 1 else ''})"


def _target_words(algorithm: AlgorithmInfo, flags: Sequence[PriorityFlag]) -> str:
    """What the reason calls the algorithm's target: the label of a flag that names it and
    nothing narrower (no site, measurement or qualifier: "large nodule" is not every nodule),
    or its plain name."""
    for flag in flags:
        when = flag.when
        if (
            flag.label
            and (when.finding is None or _names(when.finding, algorithm.target))
            and not (when.site or when.measurements or when.qualifiers)
        ):
            return flag.label
    return plain_name(algorithm.target)


def _sentence(text: str) -> str:
    """A free-text reason on one line, without a trailing full stop."""
    return " ".join(text.split()).rstrip(".")
