"""Prometheus metrics. Observers only: every update is guarded so it can never break the pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LOGGER = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600)


class _StateGauges(Collector):
    """Jobs, studies and dispatches by state, read from the database at scrape time."""

    def __init__(self, counts: Callable[[], dict[str, dict[str, int]]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._counts()
        except Exception:
            LOGGER.exception("could not read state counts for metrics")
            return
        for table, by_state in counts.items():
            family = GaugeMetricFamily(
                f"radrouter_{table}", f"{table.capitalize()} by state", labels=["state"]
            )
            for state, value in sorted(by_state.items()):
                family.add_metric([state], value)
            yield family


class Metrics:
    def __init__(
        self,
        counts: Callable[[], dict[str, dict[str, int]]],
        *,
        scraped: Collection[Collector] = (),
    ) -> None:
        """``scraped``: more collectors read at scrape time (the drift gauges,
        ``router.drift.metrics``), guarded by their own ``collect``."""
        self.registry = CollectorRegistry()
        self.instances_received = Counter(
            "radrouter_instances_received",
            "C-STORE requests by outcome",
            ["status"],
            registry=self.registry,
        )
        self.studies_completed = Counter(
            "radrouter_studies_completed",
            "Studies judged complete, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.last_image_to_result_stored = Histogram(
            "radrouter_last_image_to_result_stored_seconds",
            "From the last image received to the result stored at the destination",
            ["algorithm"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "radrouter_model_seconds",
            "Time inside the algorithm's run()",
            ["algorithm", "device"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.last_image_to_flag = Histogram(
            "radrouter_last_image_to_flag_seconds",
            "From the last image received to the AI priority flag raised: recorded on the "
            "built-in worklist (channel worklist) and acknowledged by a RIS (hl7, fhir)",
            ["algorithm", "channel"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.completion_delay = Histogram(
            "radrouter_last_image_to_study_complete_seconds",
            "From the last image received to the study judged complete",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateGauges(counts))
        for collector in scraped:
            self.registry.register(collector)

    def observe(self, update: Callable[[], object]) -> None:
        """Apply one metric update; a failure is logged and swallowed."""
        try:
            update()
        except Exception:
            LOGGER.exception("metric update failed")

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
