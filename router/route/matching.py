"""Evaluate the routing rules against one series' header facts: pure functions, no I/O."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.multival import MultiValue

from algorithms.contract import Purpose
from config.schema import Matcher, MatchOperator, Priority, QaConfig, RouterConfig, Rule

__all__ = [
    "ASSOCIATION_ATTRIBUTES",
    "MatcherOutcome",
    "RouteAction",
    "RoutingDecision",
    "RuleOutcome",
    "SeriesFacts",
    "WithheldAction",
    "evaluate_rule",
    "qa_sign",
    "route",
]

ASSOCIATION_ATTRIBUTES = frozenset({"CallingAE", "CalledAE"})
"""Matcher names that come from the association rather than the header."""

FALLBACK_NAME = "fallback"

_SKIPPED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})
"""Sequences and bulk binary values are not offered to rules."""

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_PADDING = " \x00"

_REDACTED = "(hidden: patient-identifying)"
_REDACTED_KEYWORDS = frozenset(
    {
        "PatientID",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "MilitaryRank",
        "MedicalRecordLocator",
        "AccessionNumber",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "RequestingService",
        "AdmissionID",
        "OtherPatientNames",
    }
)
"""Values the explanation never prints (with every person-name attribute): explanations end
up in logs and in check-config output."""


@dataclass(frozen=True)
class SeriesFacts:
    """What the rules see for one series: the first instance's header and the association."""

    attributes: Mapping[str, object]
    """Header values by DICOM keyword as pydicom gives them (str, int, float, MultiValue,
    PersonName, ...), plus any extra facts the caller adds."""
    calling_ae: str
    called_ae: str

    @classmethod
    def from_dataset(cls, ds: pydicom.Dataset, calling_ae: str, called_ae: str) -> SeriesFacts:
        """Top-level header values of ``ds`` (and its file meta), without sequences or bulk
        binary data."""
        attributes: dict[str, object] = {}
        sources: list[pydicom.Dataset] = []
        file_meta = getattr(ds, "file_meta", None)
        if isinstance(file_meta, pydicom.Dataset):
            sources.append(file_meta)
        sources.append(ds)
        for source in sources:
            for tag in list(source.keys()):
                keyword = keyword_for_tag(tag)
                if not keyword or keyword == "PixelData":
                    continue
                try:
                    element = source[tag]
                    vr, value = element.VR, element.value
                except Exception:  # a malformed value must not stop routing: use its text
                    raw = source.get_item(tag)
                    vr = str(getattr(raw, "VR", "") or "")
                    value = _raw_text(getattr(raw, "value", None))
                if vr in _SKIPPED_VRS:
                    continue
                attributes[keyword] = value
        return cls(attributes=attributes, calling_ae=calling_ae, called_ae=called_ae)

    def value(self, attribute: str) -> object:
        """The value rules compare for ``attribute`` (``None`` when absent)."""
        if attribute == "CallingAE":
            return self.calling_ae
        if attribute == "CalledAE":
            return self.called_ae
        return self.attributes.get(attribute)


@dataclass(frozen=True)
class MatcherOutcome:
    """One condition of a rule, checked."""

    attribute: str
    expected: str
    """Human text, e.g. ``in [CHEST, THORAX]`` or ``max 3``."""
    actual: str
    """The value found, e.g. ``CHEST``, ``(absent)``, ``abc (not a number)``."""
    matched: bool


@dataclass(frozen=True)
class RuleOutcome:
    """One rule, checked: it matched when every check did. Disabled rules are listed with no
    checks and ``disabled=True``."""

    rule_name: str
    matched: bool
    checks: tuple[MatcherOutcome, ...]
    disabled: bool = False


@dataclass(frozen=True)
class RouteAction:
    """What to do with the series: run an algorithm (or nothing) and send to destinations.
    ``run=None`` with no ``send_to`` is a rule that matched to ignore the series."""

    rule_name: str
    """The rule's name, or ``"fallback"``."""
    run: str | None
    priority: Priority
    send_to: tuple[str, ...]


@dataclass(frozen=True)
class WithheldAction:
    """An action a rule asked for that the series' kind forbids, and why."""

    action: RouteAction
    reason: str
    protects_patients: bool
    """True: a clinical algorithm kept off a QA series (what the gate is for, worth a
    warning); False: a quality-control algorithm kept off a patient's series (the everyday
    case of a QA rule as loose as ``Modality: CT``)."""


@dataclass(frozen=True)
class RoutingDecision:
    """The result of routing one series: its actions and how each rule fared."""

    actions: tuple[RouteAction, ...]
    outcomes: tuple[RuleOutcome, ...]
    """Every rule evaluated, in order; rules after the deciding one are not evaluated."""
    used_fallback: bool
    stopped_at: str | None = None
    """Name of the matching rule that ended evaluation (first match without ``continue``)."""
    qa: RuleOutcome | None = None
    """The ``qa.signs`` entry that marks the series as QA, phantom or calibration; None for
    a patient's series."""
    withheld: tuple[WithheldAction, ...] = ()
    """Runs the rules asked for that the series' kind forbids (not in ``actions``)."""

    @property
    def unrouted(self) -> bool:
        """No rule matched and the fallback does nothing."""
        return self.used_fallback and not self.actions

    @property
    def matched_rules(self) -> tuple[str, ...]:
        return tuple(outcome.rule_name for outcome in self.outcomes if outcome.matched)

    def summary(self) -> str:
        """One line: what happens to the series."""
        line = self._actions_summary()
        if self.qa is not None:
            line = f"QA series (sign {self.qa.rule_name!r}): {line}"
        for withheld in self.withheld:
            line += f"; {withheld.action.run} withheld: {withheld.reason}"
        return line

    def _actions_summary(self) -> str:
        if self.used_fallback:
            if not self.actions:
                return "no rule matched -> fallback: unrouted"
            return f"no rule matched -> fallback: {_describe_action(self.actions[0])}"
        if not self.actions:
            return "no action left"
        return "; ".join(
            f"rule {action.rule_name!r} fired -> {_describe_action(action)}"
            for action in self.actions
        )

    def explain(self) -> str:
        """Which rule fired and why (each check: found vs expected), or why none did."""
        lines = [self.summary()]
        if self.qa is not None:
            lines.append(f"  QA sign {self.qa.rule_name!r}: matched")
            lines.extend(
                f"    [ok  ] {check.attribute}: found {check.actual}, expected {check.expected}"
                for check in self.qa.checks
            )
        for outcome in self.outcomes:
            if outcome.disabled:
                lines.append(f"  rule {outcome.rule_name!r}: skipped (disabled)")
                continue
            verdict = "matched" if outcome.matched else "did not match"
            if not outcome.checks:
                lines.append(f"  rule {outcome.rule_name!r}: {verdict} (no conditions)")
                continue
            lines.append(f"  rule {outcome.rule_name!r}: {verdict}")
            for check in outcome.checks:
                mark = "ok  " if check.matched else "FAIL"
                lines.append(
                    f"    [{mark}] {check.attribute}: found {check.actual}, "
                    f"expected {check.expected}"
                )
        if self.stopped_at is not None:
            lines.append(
                f"  (rules after {self.stopped_at!r} were not evaluated: first match wins)"
            )
        return "\n".join(lines)


def route(
    config: RouterConfig,
    facts: SeriesFacts,
    purposes: Mapping[str, Purpose] | None = None,
) -> RoutingDecision:
    """Apply ``config.rules`` in order to ``facts``: disabled rules are skipped; the first
    matching rule wins unless it has ``continue: true``; with no match, the fallback.

    Then the series' kind decides which runs stand: on a QA, phantom or calibration series
    (``config.qa.signs``) only quality-control algorithms run; on any other series only
    clinical ones. ``purposes`` gives each algorithm's (``AlgorithmInfo.purpose``); one not
    listed is clinical. A forbidden run is withheld with its reason, never silently dropped.
    """
    decision = _apply_rules(config, facts)
    sign = qa_sign(config.qa, facts)
    kept: list[RouteAction] = []
    withheld: list[WithheldAction] = []
    for action in decision.actions:
        reason = _forbidden(action, sign, purposes or {})
        if reason is None:
            kept.append(action)
        else:
            withheld.append(WithheldAction(action, reason, protects_patients=sign is not None))
    return RoutingDecision(
        tuple(kept),
        decision.outcomes,
        decision.used_fallback,
        decision.stopped_at,
        qa=sign,
        withheld=tuple(withheld),
    )


def qa_sign(qa: QaConfig, facts: SeriesFacts) -> RuleOutcome | None:
    """The first sign of ``qa`` that ``facts`` show (every condition holds), or None."""
    for sign in qa.signs:
        checks = tuple(
            _check(attribute, matcher, facts.value(attribute))
            for attribute, matcher in sign.when.items()
        )
        if all(check.matched for check in checks):
            return RuleOutcome(sign.name, True, checks)
    return None


def _forbidden(
    action: RouteAction, sign: RuleOutcome | None, purposes: Mapping[str, Purpose]
) -> str | None:
    if action.run is None:
        return None
    purpose = purposes.get(action.run, Purpose.CLINICAL)
    if sign is not None and purpose is Purpose.CLINICAL:
        return "a clinical algorithm never runs on a QA, phantom or calibration series"
    if sign is None and purpose is Purpose.QUALITY_CONTROL:
        return "a quality-control algorithm runs on QA and phantom series only (no qa sign)"
    return None


def _apply_rules(config: RouterConfig, facts: SeriesFacts) -> RoutingDecision:
    outcomes: list[RuleOutcome] = []
    actions: list[RouteAction] = []
    stopped_at: str | None = None
    for rule in config.rules:
        if not rule.enabled:
            outcomes.append(RuleOutcome(rule.name, matched=False, checks=(), disabled=True))
            continue
        outcome = evaluate_rule(rule, facts)
        outcomes.append(outcome)
        if not outcome.matched:
            continue
        actions.append(RouteAction(rule.name, rule.run, rule.priority, tuple(rule.send_to)))
        if not rule.continue_:
            stopped_at = rule.name
            break
    if actions:
        return RoutingDecision(tuple(actions), tuple(outcomes), False, stopped_at)
    fallback = config.fallback
    fallback_actions: tuple[RouteAction, ...] = ()
    if fallback.run is not None or fallback.send_to:
        fallback_actions = (
            RouteAction(FALLBACK_NAME, fallback.run, fallback.priority, tuple(fallback.send_to)),
        )
    return RoutingDecision(fallback_actions, tuple(outcomes), True, None)


def evaluate_rule(rule: Rule, facts: SeriesFacts) -> RuleOutcome:
    """Check every condition of ``rule`` (all of them, for the explanation)."""
    checks = tuple(
        _check(attribute, matcher, facts.value(attribute))
        for attribute, matcher in rule.when.items()
    )
    return RuleOutcome(rule.name, all(check.matched for check in checks), checks)


# --------------------------------------------------------------------------------------------
# Matching


def _check(attribute: str, matcher: Matcher, value: object) -> MatcherOutcome:
    operator = matcher if isinstance(matcher, MatchOperator) else MatchOperator(equals=matcher)
    values = _values(value)
    present = bool(values)
    results: list[bool] = []
    numeric_problem: str | None = None

    if operator.exists is not None:
        results.append(present == operator.exists)
    if operator.equals is not None:
        results.append(present and any(_equal(v, operator.equals) for v in values))
    if operator.in_ is not None:
        options = operator.in_
        results.append(present and any(_equal(v, o) for v in values for o in options))
    if operator.regex is not None:
        pattern = _compiled(operator.regex)
        results.append(present and any(pattern.search(_text(v)) for v in values))
    if operator.min is not None or operator.max is not None:
        numbers = [_number(v) for v in values]
        if not present:
            results.append(False)
        elif any(n is None for n in numbers):
            numeric_problem = "not a number"
            results.append(False)
        else:
            in_range = all(
                (operator.min is None or n >= operator.min)
                and (operator.max is None or n <= operator.max)
                for n in numbers
                if n is not None
            )
            results.append(in_range)

    actual = _describe_actual(attribute, values)
    if numeric_problem is not None:
        actual = f"{actual} ({numeric_problem})"
    return MatcherOutcome(
        attribute=attribute,
        expected=_describe_expected(operator),
        actual=actual,
        matched=all(results),
    )


def _values(value: object) -> list[object]:
    """The individual values of an attribute; empty when absent or empty (DICOM zero-length
    values count as absent)."""
    if value is None:
        return []
    items: Iterable[object] = value if isinstance(value, MultiValue | list | tuple) else (value,)
    result: list[object] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, bytes):
            item = item.decode("latin-1")
        if isinstance(item, str) or not isinstance(item, int | float):
            text = str(item).strip(_PADDING)
            if text:
                result.append(text)
        else:
            result.append(item)
    return result


def _raw_text(value: object) -> object:
    """A value pydicom could not convert, as text (split at ``\\`` when multi-valued)."""
    if not isinstance(value, bytes):
        return value
    parts = [part.strip(_PADDING) for part in value.decode("latin-1").split("\\")]
    return parts if len(parts) > 1 else parts[0]


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        return None if math.isnan(number) else number
    text = str(value).strip(_PADDING)
    if _NUMBER.fullmatch(text):
        return float(text)
    return None


def _equal(actual: object, expected: str | float) -> bool:
    """Numbers compare numerically when both sides are numbers; otherwise exact text."""
    actual_number = _number(actual)
    expected_number = _number(expected)
    if actual_number is not None and expected_number is not None:
        return math.isclose(actual_number, expected_number, rel_tol=1e-9, abs_tol=1e-12)
    return _text(actual) == _format_expected(expected)


def _text(value: object) -> str:
    if isinstance(value, float) and not isinstance(value, pydicom.valuerep.DSfloat):
        return _format_number(value)
    return str(value).strip(_PADDING)


def _format_number(number: float) -> str:
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def _format_expected(value: str | float) -> str:
    if isinstance(value, float):
        return _format_number(value)
    return value.strip(_PADDING)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# --------------------------------------------------------------------------------------------
# Describing


def _describe_expected(operator: MatchOperator) -> str:
    parts: list[str] = []
    if operator.equals is not None:
        parts.append(f"equals {_format_expected(operator.equals)}")
    if operator.in_ is not None:
        parts.append(f"in [{', '.join(_format_expected(v) for v in operator.in_)}]")
    if operator.regex is not None:
        parts.append(f"regex {operator.regex}")
    if operator.min is not None:
        parts.append(f"min {_format_number(operator.min)}")
    if operator.max is not None:
        parts.append(f"max {_format_number(operator.max)}")
    if operator.exists is not None:
        parts.append("present" if operator.exists else "absent")
    return " and ".join(parts)


def _describe_actual(attribute: str, values: list[object]) -> str:
    if not values:
        return "(absent)"
    if _is_identifying(attribute):
        return _REDACTED
    return "\\".join(_text(v) for v in values)


def _is_identifying(attribute: str) -> bool:
    if attribute in _REDACTED_KEYWORDS:
        return True
    try:
        return dictionary_VR(attribute) == "PN"
    except (KeyError, ValueError):  # not a DICOM keyword (e.g. CallingAE)
        return False


def _describe_action(action: RouteAction) -> str:
    parts: list[str] = []
    if action.run is not None:
        parts.append(f"run {action.run} ({action.priority.value})")
    if action.send_to:
        target = ", ".join(action.send_to)
        parts.append(f"send to {target}" if action.run else f"forward to {target}")
    return ", ".join(parts) if parts else "ignore (nothing to run or send)"
