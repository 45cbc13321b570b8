"""An algorithm's results over a period, as the distributions drift compares: counts by verdict,
feedback, and per input or output feature its categories or values.

Read from ``results`` (the latest version of each study's result, shadow runs included: a
baseline is usually recorded from the shadow-mode period), with the ``scanner`` and
``acquisition`` the result writer records from the source's header, and the readers' latest
feedback on each result. At most ``MAX_ROWS`` results, the newest, are read per period.
Header values are hostile: text is cut to ``MAX_TEXT`` characters, numbers must be finite.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from router.drift.statistics import thin_sorted
from router.store.database import Database

MAX_ROWS = 50_000
MAX_TEXT = 64
MAX_CATEGORIES = 100
"""Categories kept per feature; the rarest beyond them are counted as ``OTHER``."""
MAX_VALUES = 5_000
"""Values kept per numeric feature in a stored baseline (evenly spaced order statistics)."""
OTHER = "(other)"
NONE = "(none)"

CATEGORICAL_FEATURES = ("scanner_model", "kernel", "not_assessed_reason")
NUMERIC_FEATURES = ("kvp", "slice_thickness_mm", "pixel_spacing_mm", "probability")

_QUERY = """
SELECT r.id, r.verdict, r.created_at, r.summary,
       (SELECT fb.agree FROM feedback fb WHERE fb.result_id = r.id
        ORDER BY fb.id DESC LIMIT 1) AS agree
FROM results r
WHERE r.algorithm = ? AND r.created_at >= ? AND r.created_at < ?
  AND r.version_number = (SELECT MAX(x.version_number) FROM results x
                          WHERE x.study_uid = r.study_uid AND x.algorithm = r.algorithm)
ORDER BY r.created_at DESC
LIMIT ?
"""
"""The summaries are read here, not by the database's JSON functions: the same on either
engine, and a summary that is not JSON counts as empty."""


@dataclass(frozen=True)
class Observation:
    """One result, as drift reads it."""

    verdict: str
    created_at: float
    probability: float | None
    """The study-level probability, else the most probable finding's, else 0 for a negative;
    None when not assessed."""
    reason: str
    model: str
    kernel: str
    kvp: float | None
    slice_thickness_mm: float | None
    pixel_spacing_mm: float | None
    agree: bool | None
    """The readers' latest feedback on it; None without any."""


@dataclass
class Sample:
    """The distributions of one period's results (a stored baseline or the current window)."""

    results: int = 0
    assessed: int = 0
    present: int = 0
    not_assessed: int = 0
    feedback: int = 0
    agreed: int = 0
    categories: dict[str, dict[str, int]] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "results": self.results,
            "assessed": self.assessed,
            "present": self.present,
            "not_assessed": self.not_assessed,
            "feedback": self.feedback,
            "agreed": self.agreed,
            "categories": self.categories,
            "values": {name: thin_sorted(v, MAX_VALUES) for name, v in self.values.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sample:
        return cls(
            results=int(data.get("results", 0)),
            assessed=int(data.get("assessed", 0)),
            present=int(data.get("present", 0)),
            not_assessed=int(data.get("not_assessed", 0)),
            feedback=int(data.get("feedback", 0)),
            agreed=int(data.get("agreed", 0)),
            categories={
                str(name): {str(k): int(v) for k, v in counts.items()}
                for name, counts in (data.get("categories") or {}).items()
            },
            values={
                str(name): [float(v) for v in values]
                for name, values in (data.get("values") or {}).items()
            },
        )


def read_observations(
    db: Database, algorithm: str, since: float, until: float, limit: int = MAX_ROWS
) -> list[Observation]:
    """The results of ``algorithm`` made in [since, until), newest first, at most ``limit``."""
    rows = db.query(_QUERY, (algorithm, since, until, max(1, limit)))
    observations = []
    for row in rows:
        verdict = str(row["verdict"])
        summary = _summary(row["summary"])
        scanner = _object(summary.get("scanner"))
        acquisition = _object(summary.get("acquisition"))
        probability = _number(summary.get("probability"), upper=1.0, allow_zero=True)
        if probability is None:
            probability = _number(_finding_probability(summary), upper=1.0, allow_zero=True)
        if probability is None and verdict == "absent":
            probability = 0.0
        if verdict == "not_assessed":
            probability = None
        agree = row["agree"]
        observations.append(
            Observation(
                verdict=verdict,
                created_at=float(row["created_at"]),
                probability=probability,
                reason=_reason(summary.get("reason")) if verdict == "not_assessed" else "",
                model=_text(scanner.get("model")),
                kernel=_text(acquisition.get("kernel")),
                kvp=_number(acquisition.get("kvp")),
                slice_thickness_mm=_number(acquisition.get("slice_thickness_mm")),
                pixel_spacing_mm=_number(acquisition.get("pixel_spacing_mm")),
                agree=None if agree is None else bool(agree),
            )
        )
    return observations


def _summary(text: object) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _finding_probability(summary: dict[str, Any]) -> object:
    """The highest numeric probability among the findings (None without one)."""
    findings = summary.get("findings")
    numbers = (
        [
            f["probability"]
            for f in findings or ()
            if isinstance(f, dict)
            and isinstance(f.get("probability"), int | float)
            and not isinstance(f.get("probability"), bool)
        ]
        if isinstance(findings, list)
        else []
    )
    return max(numbers) if numbers else None


def sample_of(observations: list[Observation]) -> Sample:
    """The distributions of these results."""
    sample = Sample()
    categories: dict[str, Counter[str]] = {name: Counter() for name in CATEGORICAL_FEATURES}
    values: dict[str, list[float]] = {name: [] for name in NUMERIC_FEATURES}
    for o in observations:
        sample.results += 1
        if o.verdict == "not_assessed":
            sample.not_assessed += 1
            categories["not_assessed_reason"][o.reason or NONE] += 1
        elif o.verdict in ("present", "absent"):
            sample.assessed += 1
            sample.present += o.verdict == "present"
            if o.probability is not None:
                values["probability"].append(o.probability)
        if o.agree is not None:
            sample.feedback += 1
            sample.agreed += o.agree
        categories["scanner_model"][o.model or NONE] += 1
        categories["kernel"][o.kernel or NONE] += 1
        for name, value in (
            ("kvp", o.kvp),
            ("slice_thickness_mm", o.slice_thickness_mm),
            ("pixel_spacing_mm", o.pixel_spacing_mm),
        ):
            if value is not None:
                values[name].append(value)
    sample.categories = {name: _bounded(counts) for name, counts in categories.items()}
    sample.values = values
    return sample


def _bounded(counts: Counter[str]) -> dict[str, int]:
    if len(counts) <= MAX_CATEGORIES:
        return dict(counts)
    kept = dict(counts.most_common(MAX_CATEGORIES - 1))
    kept[OTHER] = sum(counts.values()) - sum(kept.values())
    return kept


def _text(value: object) -> str:
    text = "" if value is None else str(value)
    return "".join(c if c.isprintable() else "?" for c in text.strip())[:MAX_TEXT]


_DIGITS = re.compile(r"\d+(\.\d+)?")


def _reason(value: object) -> str:
    """A not-assessed reason as a category: numbers (file counts, sizes) become ``#``, so one
    cause is one category whatever study it came from."""
    return _DIGITS.sub("#", _text(value) if value is not None else "")[:MAX_TEXT]


def _number(value: object, *, upper: float = 1e6, allow_zero: bool = False) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if (
        not math.isfinite(number)
        or number > upper
        or number < 0
        or (number == 0 and not allow_zero)
    ):
        return None
    return number
