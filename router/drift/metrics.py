"""The drift gauges, read at scrape time from the monitor's (cached) report, and the count of
quality-control results out of tolerance. Guarded: a failure is logged, never a failed scrape.
Labels are algorithm and feature names only, never a header value."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from router.drift.monitor import AlgorithmDrift, State
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

QA_WINDOW_S = 86400.0

DRIFT_METRICS = {
    "radrouter_drift_alert": "Drift of each algorithm: 0 ok (or not judged), 1 warning, 2 alert",
    "radrouter_drift_state": "Drift state of each algorithm (1 for the state it is in)",
    "radrouter_drift_feature_alert": "Drift per algorithm and feature: 0 ok, 1 warning, 2 alert",
    "radrouter_drift_psi": "Population stability index of a feature, window against baseline",
    "radrouter_drift_ks_pvalue": "Two-sample KS p-value of a numeric feature against baseline",
    "radrouter_drift_window_results": "Results of each algorithm in the drift window",
    "radrouter_drift_baseline_results": "Results in each algorithm's baseline (0: none)",
    "radrouter_positive_rate": "Present among assessed results in the drift window",
    "radrouter_not_assessed_rate": "Not assessed among results in the drift window",
    "radrouter_feedback_agreement_rate": "Readers' agreement among results with feedback in "
    "the drift window",
    "radrouter_qa_out_of_tolerance": "Quality-control results out of tolerance in the last 24 h",
}


class DriftGauges(Collector):
    def __init__(
        self,
        report: Callable[[], list[AlgorithmDrift]],
        qa_out_of_tolerance: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self._report = report
        self._qa = qa_out_of_tolerance

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(name, text, labels=_labels(name))
            for name, text in DRIFT_METRICS.items()
        }
        try:
            for drift in self._report():
                _add(families, drift)
        except Exception:
            LOGGER.exception("could not compute drift for metrics")
        try:
            for algorithm, count in sorted(self._qa().items()):
                families["radrouter_qa_out_of_tolerance"].add_metric([algorithm], count)
        except Exception:
            LOGGER.exception("could not count quality-control results for metrics")
        yield from families.values()


def _labels(name: str) -> list[str]:
    if name in (
        "radrouter_drift_feature_alert",
        "radrouter_drift_psi",
        "radrouter_drift_ks_pvalue",
    ):
        return ["algorithm", "feature"]
    if name == "radrouter_drift_state":
        return ["algorithm", "state"]
    return ["algorithm"]


def _add(families: dict[str, GaugeMetricFamily], drift: AlgorithmDrift) -> None:
    name = drift.algorithm
    families["radrouter_drift_alert"].add_metric([name], drift.state.level)
    for state in State:
        families["radrouter_drift_state"].add_metric([name, state.value], int(drift.state is state))
    families["radrouter_drift_window_results"].add_metric([name], drift.window_results)
    families["radrouter_drift_baseline_results"].add_metric(
        [name], drift.baseline.results if drift.baseline is not None else 0
    )
    for metric, value in (
        ("radrouter_positive_rate", drift.positive_rate),
        ("radrouter_not_assessed_rate", drift.not_assessed_rate),
        ("radrouter_feedback_agreement_rate", drift.agreement_rate),
    ):
        if value is not None:
            families[metric].add_metric([name], value)
    for feature in drift.features:
        labels = [name, feature.feature]
        families["radrouter_drift_feature_alert"].add_metric(labels, feature.state.level)
        if feature.psi is not None:
            families["radrouter_drift_psi"].add_metric(labels, feature.psi)
        if feature.test == "psi+ks" and feature.p_value is not None:
            families["radrouter_drift_ks_pvalue"].add_metric(labels, feature.p_value)


def qa_out_of_tolerance(
    db: Database, algorithms: Collection[str], now: float | None = None
) -> dict[str, int]:
    """Per quality-control algorithm, its results of the last 24 h out of tolerance (verdict
    present; the latest version of each study's result), 0 for those with none."""
    if not algorithms:
        return {}
    since = (time.time() if now is None else now) - QA_WINDOW_S
    marks = ", ".join("?" * len(algorithms))
    rows = db.query(
        f"SELECT algorithm, COUNT(*) AS n FROM results r WHERE algorithm IN ({marks}) "
        "AND created_at >= ? AND verdict = 'present' AND version_number = ("
        "SELECT MAX(version_number) FROM results x "
        "WHERE x.study_uid = r.study_uid AND x.algorithm = r.algorithm) GROUP BY algorithm",
        (*sorted(algorithms), since),
    )
    counts = dict.fromkeys(algorithms, 0)
    counts.update({str(r["algorithm"]): int(r["n"]) for r in rows})
    return counts
