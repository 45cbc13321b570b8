"""Drift judged on results written by the real result-writing path: generated chest CTs from a
scanner, loaded as the worker loads them, run through a noise-sensitive test algorithm and
recorded by ``ResultWriter.write`` (the SR written, the row with its scanner and acquisition).
A shift (the scanner's studies change kernel and noise) raises the alert; a stable stream
does not; and the states without a baseline or with too few results."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from algorithms.contract import StudyInput
from config.schema import DriftConfig, DriftThresholds, Priority
from router.deliver.result_writer import ResultWriter
from router.drift.baseline import BaselineError, record_baseline
from router.drift.metrics import DriftGauges
from router.drift.monitor import (
    DAY_S,
    DriftMonitor,
    FeatureDrift,
    State,
    algorithm_drift,
    compare,
    overall,
)
from router.drift.sample import Sample
from router.metrics import Metrics
from router.run.job_queue import Job, JobQueue
from router.run.series_loader import load_series
from router.store.database import Database, SqliteDatabase
from testing.drift_streams import SHARP, STABLE, NoiseSensitive, Scanner, write_study

ALGORITHM = NoiseSensitive.info.name
CONFIG = DriftConfig(cache_s=0)


def write_results(
    db: Database, folder: Path, scanner: Scanner, count: int, seed: int, *, short: int = 0
) -> None:
    """``count`` studies of ``scanner`` through load -> algorithm -> result writer; the first
    ``short`` ones have too few slices (the algorithm states "not assessed")."""
    rng = np.random.default_rng(seed)
    writer, plugin, queue = ResultWriter(db, folder / "results"), NoiseSensitive(), JobQueue(db)
    for i in range(count):
        paths = write_study(folder / f"{seed}-{i}", scanner, rng, slices=2 if i < short else 4)
        loaded = load_series(paths)
        study_uid = str(loaded.first_header.StudyInstanceUID)
        result = plugin.run(StudyInput(study_uid, loaded.series))
        with db.transaction() as conn:
            job_id = queue.enqueue(
                conn,
                study_uid=study_uid,
                series_uid=loaded.series.series_instance_uid,
                study_revision=1,
                algorithm=ALGORITHM,
                rule_name="drift-test",
                priority=Priority.ROUTINE,
                send_to=(),
                max_attempts=1,
            )
        row = db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        assert row is not None
        writer.write(Job.from_row(row), NoiseSensitive.info, result, loaded, shadow=False)


def age_results(db: Database, days: float) -> None:
    """Make every result so far ``days`` older: the go-live period, a month ago."""
    with db.transaction() as conn:
        conn.execute("UPDATE results SET created_at = created_at - ?", (days * DAY_S,))


def go_live_baseline(db: Database, folder: Path, seed: int) -> None:
    write_results(db, folder, STABLE, 40, seed, short=3)
    age_results(db, 30)
    now = time.time()
    baseline = record_baseline(
        db, ALGORITHM, now - 40 * DAY_S, now - 20 * DAY_S, recorded_by="test", min_results=30
    )
    assert baseline.sample.results == 40 and baseline.sample.not_assessed == 3


def scrape(monitor: DriftMonitor) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = Metrics(lambda: {}, scraped=[DriftGauges(monitor.report)]).exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.slow
def test_a_scanner_that_changes_kernel_and_noise_raises_the_alert(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    go_live_baseline(db, tmp_path, seed=1)
    write_results(db, tmp_path, SHARP, 40, seed=2, short=3)

    # Each result recorded its acquisition from the source's header, not-assessed ones too.
    rows = db.query("SELECT verdict, summary FROM results ORDER BY id")
    acquisitions = [json.loads(r["summary"])["acquisition"] for r in rows]
    assert {a["kernel"] for a in acquisitions[:40]} == {"B30f"}
    assert {a["kernel"] for a in acquisitions[40:]} == {"B70f"}
    assert {(a["kvp"], a["slice_thickness_mm"], a["pixel_spacing_mm"]) for a in acquisitions} == {
        (120.0, 2.5, 0.8)
    }
    assert [r["verdict"] for r in rows].count("not_assessed") == 6

    drift = algorithm_drift(db, ALGORITHM, CONFIG)
    states = {f.feature: f.state for f in drift.features}
    assert drift.state is State.ALERT, drift.reason
    assert states["kernel"] is State.ALERT
    assert states["probability"] is State.ALERT
    assert states["positive_rate"] is State.ALERT
    # What did not change stays ok: the same model, kVp, thickness, spacing, not-assessed rate.
    for feature in ("scanner_model", "kvp", "slice_thickness_mm", "pixel_spacing_mm"):
        assert states[feature] is State.OK, feature
    assert states["not_assessed_rate"] in (State.OK, State.WARNING)
    assert states["agreement"] is State.INSUFFICIENT_DATA  # nobody gave feedback
    kernel = next(f for f in drift.features if f.feature == "kernel")
    assert kernel.psi is not None and kernel.psi > 1.0 and "B70f" in kernel.reason
    assert kernel.histogram is not None and kernel.histogram.categories == ["B30f", "B70f"]
    assert drift.window_results == 40 and drift.baseline is not None
    assert drift.baseline.results == 40
    assert drift.positive_rate is not None and drift.positive_rate > 0.8
    assert sum(day.results for day in drift.daily) == 40

    metrics = scrape(DriftMonitor(db, lambda: CONFIG))
    assert metrics[("radrouter_drift_alert", (("algorithm", ALGORITHM),))] == 2
    key = (("algorithm", ALGORITHM), ("feature", "kernel"))
    assert metrics[("radrouter_drift_feature_alert", key)] == 2
    assert metrics[("radrouter_drift_psi", key)] == pytest.approx(kernel.psi)
    assert ("radrouter_drift_ks_pvalue", key) not in metrics  # categories: chi-square
    probability = (("algorithm", ALGORITHM), ("feature", "probability"))
    assert metrics[("radrouter_drift_ks_pvalue", probability)] < 0.01
    assert metrics[("radrouter_positive_rate", (("algorithm", ALGORITHM),))] > 0.8


@pytest.mark.slow
def test_a_stable_stream_raises_no_alert(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    go_live_baseline(db, tmp_path, seed=3)
    write_results(db, tmp_path, STABLE, 40, seed=4, short=3)

    drift = algorithm_drift(db, ALGORITHM, CONFIG)
    assert drift.state is State.OK, drift.reason
    assert not [f.feature for f in drift.features if f.state is State.ALERT]
    # The positive rate moved by two studies (13.5 % -> 18.9 %): past the warning threshold,
    # but as likely as not by chance (Fisher p 0.75): ok, and the reason says so.
    positive = next(f for f in drift.features if f.feature == "positive_rate")
    assert positive.state is State.OK and "within chance" in positive.reason
    for feature in ("scanner_model", "kernel", "kvp", "slice_thickness_mm", "pixel_spacing_mm"):
        assert next(f for f in drift.features if f.feature == feature).state is State.OK
    assert (
        scrape(DriftMonitor(db, lambda: CONFIG))[
            ("radrouter_drift_alert", (("algorithm", ALGORITHM),))
        ]
        == 0
    )


def test_without_a_baseline_the_state_says_how_to_record_one(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    write_results(db, tmp_path, STABLE, 3, seed=5)
    drift = algorithm_drift(db, ALGORITHM, CONFIG)
    assert drift.state is State.NO_BASELINE and drift.features == []
    assert f"radrouter drift baseline {ALGORITHM}" in drift.reason
    assert drift.window_results == 3
    metrics = scrape(DriftMonitor(db, lambda: CONFIG))
    assert metrics[("radrouter_drift_alert", (("algorithm", ALGORITHM),))] == 0
    state = (("algorithm", ALGORITHM), ("state", "no_baseline"))
    assert metrics[("radrouter_drift_state", state)] == 1
    assert metrics[("radrouter_drift_baseline_results", (("algorithm", ALGORITHM),))] == 0
    # A baseline needs results in its period, and at least the configured number.
    now = time.time()
    with pytest.raises(BaselineError, match="0 result"):
        record_baseline(db, ALGORITHM, now - 40 * DAY_S, now - 20 * DAY_S)
    with pytest.raises(BaselineError, match="at least 30"):
        record_baseline(db, ALGORITHM, now - DAY_S, now + 1, min_results=30)


def test_too_few_results_are_insufficient_data_not_a_verdict() -> None:
    few = Sample(
        results=5,
        assessed=5,
        present=5,
        categories={"kernel": {"B70f": 5}, "scanner_model": {"X": 5}},
        values={"probability": [0.9] * 5, "kvp": [140.0] * 5},
    )
    many = Sample(
        results=50,
        assessed=50,
        present=0,
        categories={"kernel": {"B30f": 50}, "scanner_model": {"X": 50}},
        values={"probability": [0.1] * 50, "kvp": [120.0] * 50},
    )
    features = compare(many, few, CONFIG)
    assert {f.state for f in features} == {State.INSUFFICIENT_DATA}
    kernel = next(f for f in features if f.feature == "kernel")
    assert "50 results in the baseline and 5 in the window; 30 needed" in kernel.reason
    assert kernel.histogram is not None  # still drawn
    state, reason = overall(features, None, "x")
    assert state is State.NO_BASELINE and "radrouter drift baseline x" in reason
    # The same change with enough results on both sides is an alert.
    features = compare(
        many, Sample(**{**many.__dict__, "present": 50, "values": few.values}), CONFIG
    )
    assert next(f for f in features if f.feature == "positive_rate").state is State.ALERT


def test_the_command_line_records_a_baseline_and_reports_from_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import main

    db = SqliteDatabase(tmp_path / "data" / "radrouter.sqlite3")
    write_results(db, tmp_path, STABLE, 4, seed=6)
    config = tmp_path / "radrouter.yaml"
    config.write_text("drift: {min_results: 3}\n")
    common = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    assert main(["drift", "baseline", ALGORITHM, "--days", "1", *common]) == 0
    assert f"baseline of {ALGORITHM} recorded: 4 results" in capsys.readouterr().out
    assert main(["drift", "baseline", "--days", "1", *common]) == 1  # no algorithm named
    assert main(["drift", "baseline", "nothing_here", *common]) == 1
    assert "0 result(s) of nothing_here" in capsys.readouterr().err
    assert main(["drift", *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{ALGORITHM}: ")
    assert "4 results (recorded" in out and "by cli:" in out
    assert main(["drift", "status", ALGORITHM, "--json", *common]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [d["algorithm"] for d in report["algorithms"]] == [ALGORITHM]


def test_a_change_past_the_warning_threshold_warns_only_when_unlikely_by_chance() -> None:
    def positive_rate(base: Sample, now: Sample, limits: DriftThresholds) -> FeatureDrift:
        return next(f for f in compare(base, now, limits) if f.feature == "positive_rate")

    # 10 % -> 17.5 %, 7.5 points (warning at 5, alert at 10), on 40 and on 400 results.
    few = (Sample(results=40, assessed=40, present=4), Sample(results=40, assessed=40, present=7))
    many = (
        Sample(results=400, assessed=400, present=40),
        Sample(results=400, assessed=400, present=70),
    )
    limits = DriftThresholds()
    on_few = positive_rate(*few, limits)
    assert on_few.p_value is not None and on_few.p_value >= limits.warn_p
    assert on_few.state is State.OK and "within chance" in on_few.reason
    on_many = positive_rate(*many, limits)
    assert on_many.p_value is not None and on_many.p_value < limits.warn_p
    assert on_many.state is State.WARNING
    # warn_p 1 turns the floor off: the same small change warns.
    assert positive_rate(*few, DriftThresholds(warn_p=1.0)).state is State.WARNING
