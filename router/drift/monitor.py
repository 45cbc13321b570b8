"""The comparison: an algorithm's current window against its baseline, feature by feature, with
a state and the reason in words; the daily series; and the monitor that caches it all for a
few seconds (``drift.cache_s``) so that scrapes and the page cost one computation."""

from __future__ import annotations

import enum
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from config.schema import DriftConfig, DriftThresholds
from router.drift import statistics as st
from router.drift.baseline import Baseline, baseline_algorithms, latest_baseline
from router.drift.sample import Observation, Sample, read_observations, sample_of
from router.store.database import Database

DAY_S = 86400.0


class State(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    ALERT = "alert"
    INSUFFICIENT_DATA = "insufficient_data"
    NO_BASELINE = "no_baseline"

    @property
    def level(self) -> int:
        """0 (nothing to act on), 1 (warning) or 2 (alert): the ``radrouter_drift_alert``."""
        return {State.WARNING: 1, State.ALERT: 2}.get(self, 0)


INPUT_FEATURES = (
    "scanner_model",
    "kernel",
    "kvp",
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "not_assessed_rate",
    "not_assessed_reason",
)
OUTPUT_FEATURES = ("positive_rate", "probability", "agreement")
FEATURES = INPUT_FEATURES + OUTPUT_FEATURES
NUMERIC = frozenset({"kvp", "slice_thickness_mm", "pixel_spacing_mm", "probability"})
LABELS = {
    "scanner_model": "scanner model",
    "kernel": "kernel",
    "kvp": "kVp",
    "slice_thickness_mm": "slice thickness",
    "pixel_spacing_mm": "pixel spacing",
    "not_assessed_rate": "not-assessed rate",
    "not_assessed_reason": "not-assessed reasons",
    "positive_rate": "positive rate",
    "probability": "probabilities",
    "agreement": "readers' agreement",
}


@dataclass(frozen=True)
class Histogram:
    """Baseline and current proportions over the same bins, for plotting: numeric bins by
    ``edges`` (len(bins) + 1, outer edges the smallest and largest value seen), or named
    ``categories``."""

    baseline: list[float]
    current: list[float]
    edges: list[float] | None = None
    categories: list[str] | None = None


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str
    """``input`` or ``output``."""
    test: str
    """``psi+ks`` (numbers), ``psi+chi_square`` (categories) or ``rate+fisher``."""
    state: State
    reason: str
    baseline_n: int
    current_n: int
    psi: float | None = None
    p_value: float | None = None
    baseline_rate: float | None = None
    current_rate: float | None = None
    histogram: Histogram | None = None


@dataclass(frozen=True)
class DayPoint:
    day: str
    """YYYY-MM-DD, the router's local time."""
    results: int
    assessed: int
    positive_rate: float | None
    not_assessed_rate: float | None
    probability_mean: float | None


@dataclass(frozen=True)
class BaselineInfo:
    period_start: float
    period_end: float
    results: int
    recorded_by: str
    recorded_at: float


@dataclass(frozen=True)
class AlgorithmDrift:
    algorithm: str
    state: State
    reason: str
    window_start: float
    window_end: float
    window_results: int
    window_assessed: int
    positive_rate: float | None
    not_assessed_rate: float | None
    agreement_rate: float | None
    feedback: int
    baseline: BaselineInfo | None
    features: list[FeatureDrift] = field(default_factory=list)
    daily: list[DayPoint] = field(default_factory=list)


def rate(x: int, n: int) -> float | None:
    return x / n if n else None


def compare(baseline: Sample, current: Sample, limits: DriftThresholds) -> list[FeatureDrift]:
    """Each feature of ``current`` judged against ``baseline``."""
    judged = []
    for feature in FEATURES:
        kind = "input" if feature in INPUT_FEATURES else "output"
        if feature == "positive_rate":
            judged.append(
                _rate(
                    feature, kind, baseline.present, baseline.assessed, current.present,
                    current.assessed, limits.positive_rate_warn, limits.positive_rate_alert,
                    limits, direction=0, minimum=limits.min_results,
                )
            )  # fmt: skip
        elif feature == "not_assessed_rate":
            judged.append(
                _rate(
                    feature, kind, baseline.not_assessed, baseline.results, current.not_assessed,
                    current.results, limits.not_assessed_rate_warn,
                    limits.not_assessed_rate_alert, limits, direction=1,
                    minimum=limits.min_results,
                )
            )  # fmt: skip
        elif feature == "agreement":
            judged.append(
                _rate(
                    feature, kind, baseline.agreed, baseline.feedback, current.agreed,
                    current.feedback, limits.agreement_warn, limits.agreement_alert, limits,
                    direction=-1, minimum=limits.min_feedback,
                )
            )  # fmt: skip
        elif feature in NUMERIC:
            judged.append(_numeric(feature, kind, baseline, current, limits))
        else:
            judged.append(_categorical(feature, kind, baseline, current, limits))
    return judged


def _too_few(n_base: int, n_cur: int, minimum: int, what: str) -> str | None:
    if n_base >= minimum and n_cur >= minimum:
        return None
    return (
        f"{n_base} {what} in the baseline and {n_cur} in the window; {minimum} needed on each side"
    )


def _distribution_state(
    label: str, psi: float, p: float, test: str, limits: DriftThresholds
) -> tuple[State, str]:
    figures = f"{label}: PSI {psi:.3f}, {test} p {p:.2g}"
    if psi >= limits.psi_alert and p < limits.ks_p_alert:
        return State.ALERT, f"{figures}: the distribution changed (alert at PSI {limits.psi_alert})"
    if psi >= limits.psi_warn and p < limits.warn_p:
        chance = "" if p < limits.ks_p_alert else " (could be chance)"
        return State.WARNING, f"{figures}: a shift{chance} (warning at PSI {limits.psi_warn})"
    if psi >= limits.psi_warn:
        return State.OK, f"{figures}: within chance (a warning needs p below {limits.warn_p:g})"
    return State.OK, f"{figures}: stable"


def _numeric(
    feature: str, kind: str, baseline: Sample, current: Sample, limits: DriftThresholds
) -> FeatureDrift:
    base = baseline.values.get(feature, [])
    cur = current.values.get(feature, [])
    minimum = limits.min_results
    too_few = _too_few(len(base), len(cur), minimum, f"{LABELS[feature]} values")
    edges = st.quantile_edges(base, min(len(base), len(cur)))
    base_p = st.proportions(st.binned_counts(base, edges)) if base else []
    cur_p = st.proportions(st.binned_counts(cur, edges)) if cur else []
    histogram = None
    if base or cur:
        seen = base + cur
        outer = [min([*seen, *edges]), *edges, max([*seen, *edges])]
        histogram = Histogram(
            baseline=base_p or [0.0] * (len(edges) + 1),
            current=cur_p or [0.0] * (len(edges) + 1),
            edges=outer,
        )
    if too_few is not None:
        return FeatureDrift(
            feature, kind, "psi+ks", State.INSUFFICIENT_DATA, f"{LABELS[feature]}: {too_few}",
            len(base), len(cur), histogram=histogram,
        )  # fmt: skip
    value = st.psi(base_p, cur_p)
    p = st.ks_p(base, cur)
    state, reason = _distribution_state(LABELS[feature], value, p, "KS", limits)
    return FeatureDrift(
        feature, kind, "psi+ks", state, reason, len(base), len(cur), psi=value, p_value=p,
        histogram=histogram,
    )  # fmt: skip


def _categorical(
    feature: str, kind: str, baseline: Sample, current: Sample, limits: DriftThresholds
) -> FeatureDrift:
    categories, base, cur = st.categorical_counts(
        baseline.categories.get(feature, {}), current.categories.get(feature, {})
    )
    n_base, n_cur = sum(base), sum(cur)
    histogram = Histogram(st.proportions(base), st.proportions(cur), categories=categories)
    what = "not-assessed results" if feature == "not_assessed_reason" else "results"
    too_few = _too_few(n_base, n_cur, limits.min_results, what)
    if too_few is not None:
        return FeatureDrift(
            feature, kind, "psi+chi_square", State.INSUFFICIENT_DATA,
            f"{LABELS[feature]}: {too_few}", n_base, n_cur, histogram=histogram,
        )  # fmt: skip
    value = st.psi(st.proportions(base), st.proportions(cur))
    p = st.chi_square_p(base, cur)
    state, reason = _distribution_state(LABELS[feature], value, p, "chi-square", limits)
    new = [c for c, b, a in zip(categories, base, cur, strict=True) if b == 0 and a > 0]
    if new and state is not State.OK:
        reason += f"; new in the window: {', '.join(new[:5])}"
    return FeatureDrift(
        feature, kind, "psi+chi_square", state, reason, n_base, n_cur, psi=value, p_value=p,
        histogram=histogram,
    )  # fmt: skip


def _rate(
    feature: str,
    kind: str,
    x_base: int,
    n_base: int,
    x_cur: int,
    n_cur: int,
    warn: float,
    alert: float,
    limits: DriftThresholds,
    *,
    direction: int,
    minimum: int,
) -> FeatureDrift:
    """``direction``: 0 a change either way counts, 1 only a rise, -1 only a fall."""
    label = LABELS[feature]
    base_rate, cur_rate = rate(x_base, n_base), rate(x_cur, n_cur)
    what = "results with feedback" if feature == "agreement" else "results"
    if feature == "positive_rate":
        what = "assessed results"
    too_few = _too_few(n_base, n_cur, minimum, what)
    if too_few is not None or base_rate is None or cur_rate is None:
        return FeatureDrift(
            feature, kind, "rate+fisher", State.INSUFFICIENT_DATA, f"{label}: {too_few}",
            n_base, n_cur, baseline_rate=base_rate, current_rate=cur_rate,
        )  # fmt: skip
    change = cur_rate - base_rate
    counted = abs(change) if direction == 0 else change * direction
    p = st.fisher_p(x_base, n_base, x_cur, n_cur)
    figures = (
        f"{label} {cur_rate:.1%} against {base_rate:.1%} at baseline "
        f"({change * 100:+.1f} points), Fisher p {p:.2g}"
    )
    if counted >= alert and p < limits.ks_p_alert:
        state, words = State.ALERT, f"changed (alert at {alert * 100:g} points)"
    elif counted >= warn and p < limits.warn_p:
        chance = "" if p < limits.ks_p_alert else ", could be chance"
        state, words = State.WARNING, f"a change (warning at {warn * 100:g} points{chance})"
    elif counted >= warn:
        state, words = State.OK, f"within chance (a warning needs p below {limits.warn_p:g})"
    else:
        state, words = State.OK, "stable"
    return FeatureDrift(
        feature, kind, "rate+fisher", state, f"{figures}: {words}", n_base, n_cur, p_value=p,
        baseline_rate=base_rate, current_rate=cur_rate,
    )  # fmt: skip


def overall(
    features: list[FeatureDrift], baseline: Baseline | None, algorithm: str
) -> tuple[State, str]:
    if baseline is None:
        return State.NO_BASELINE, (
            f"no baseline recorded: record one at go-live (radrouter drift baseline {algorithm})"
        )
    for state in (State.ALERT, State.WARNING):
        hits = [f.reason for f in features if f.state is state]
        if hits:
            more = f" (and {len(hits) - 3} more)" if len(hits) > 3 else ""
            return state, "; ".join(hits[:3]) + more
    if any(f.state is State.OK for f in features):
        return State.OK, "every feature with enough data is stable"
    first = next((f.reason for f in features), "no results")
    return State.INSUFFICIENT_DATA, f"nothing judged yet: {first}"


def daily_series(observations: list[Observation], since: float, now: float) -> list[DayPoint]:
    """Per local day from ``since`` to ``now``: counts, positive and not-assessed rates, and the
    mean probability of the assessed results (days without results included, empty)."""
    days: dict[str, list[Observation]] = defaultdict(list)
    for o in observations:
        if since <= o.created_at < now:
            days[time.strftime("%Y-%m-%d", time.localtime(o.created_at))].append(o)
    points = []
    seen: set[str] = set()
    at = since
    while at < now + DAY_S:
        day = time.strftime("%Y-%m-%d", time.localtime(min(at, now)))
        at += DAY_S
        if day in seen:
            continue
        seen.add(day)
        group = days.get(day, [])
        assessed = [o for o in group if o.verdict in ("present", "absent")]
        probabilities = [o.probability for o in assessed if o.probability is not None]
        points.append(
            DayPoint(
                day=day,
                results=len(group),
                assessed=len(assessed),
                positive_rate=rate(sum(o.verdict == "present" for o in assessed), len(assessed)),
                not_assessed_rate=rate(sum(o.verdict == "not_assessed" for o in group), len(group)),
                probability_mean=(
                    sum(probabilities) / len(probabilities) if probabilities else None
                ),
            )
        )
    return points


def algorithm_drift(
    db: Database, algorithm: str, config: DriftConfig, now: float | None = None
) -> AlgorithmDrift:
    """One algorithm's drift report at ``now`` (default: the present)."""
    now = time.time() if now is None else now
    limits = config.for_algorithm(algorithm)
    window_start = now - limits.window_days * DAY_S
    series_start = now - config.series_days * DAY_S
    observations = read_observations(db, algorithm, min(window_start, series_start), now)
    window = [o for o in observations if o.created_at >= window_start]
    current = sample_of(window)
    baseline = latest_baseline(db, algorithm)
    features = compare(baseline.sample, current, limits) if baseline is not None else []
    state, reason = overall(features, baseline, algorithm)
    return AlgorithmDrift(
        algorithm=algorithm,
        state=state,
        reason=reason,
        window_start=window_start,
        window_end=now,
        window_results=current.results,
        window_assessed=current.assessed,
        positive_rate=rate(current.present, current.assessed),
        not_assessed_rate=rate(current.not_assessed, current.results),
        agreement_rate=rate(current.agreed, current.feedback),
        feedback=current.feedback,
        baseline=None
        if baseline is None
        else BaselineInfo(
            baseline.period_start,
            baseline.period_end,
            baseline.sample.results,
            baseline.recorded_by,
            baseline.recorded_at,
        ),
        features=features,
        daily=daily_series(observations, series_start, now),
    )


class DriftMonitor:
    """Every algorithm's drift (those with results in the window or a baseline, quality-control
    algorithms left out), computed at most once per ``drift.cache_s``."""

    def __init__(
        self,
        db: Database,
        config: Callable[[], DriftConfig],
        *,
        exclude: Callable[[], Collection[str]] = tuple,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self._config = config
        self._exclude = exclude
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[AlgorithmDrift]] | None = None

    def algorithms(self, now: float) -> list[str]:
        config = self._config()
        lookback = max(
            [config.window_days, config.series_days]
            + [o.window_days for o in config.algorithms.values()]
        )
        names = {
            str(r["algorithm"])
            for r in self.db.query(
                "SELECT DISTINCT algorithm FROM results WHERE created_at >= ?",
                (now - lookback * DAY_S,),
            )
        }
        names.update(baseline_algorithms(self.db))
        return sorted(names - set(self._exclude()))

    def report(self) -> list[AlgorithmDrift]:
        with self._lock:
            now = self._clock()
            config = self._config()
            if self._cached is not None and now - self._cached[0] < config.cache_s:
                return self._cached[1]
            drifts = [algorithm_drift(self.db, name, config, now) for name in self.algorithms(now)]
            self._cached = (now, drifts)
            return drifts

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None
