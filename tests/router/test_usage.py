"""Usage metering through a running router: studies from two sources, each outcome once
(present, absent, failed, shadow, and a QA phantom), counted per month, algorithm, source,
kind and outcome, in the API, its CSV and ``radrouter usage``."""

from __future__ import annotations

import csv
import datetime
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from algorithms.ct_water_qa.plugin import CtWaterPhantomQa
from algorithms.registry import Registry
from testing.dicom_tools import make_ct_slices
from testing.phantoms import WaterPhantom, write_water_phantom_series
from testing.plugins import AlwaysNegative, CrashingAlgorithm, DarkestRegionOutliner
from testing.router_process import (
    RouterUnderTest,
    StartRouter,
    storescu,
    study_uid_of,
    wait_state,
)

REGISTRY = Registry(
    {
        "always_negative": AlwaysNegative,
        "crashing": CrashingAlgorithm,
        "darkest_region": DarkestRegionOutliner,
        "ct_water_qa": CtWaterPhantomQa,
    }
)
CONFIG = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "completion: {settle_after_release_s: 0.2, series_idle_s: 2, study_idle_s: 4, hard_cap_s: 60}\n"
    "jobs: {retry: {max_attempts: 1}}\n"
    "usage: {sites: {MAIN_CT: Main campus, '=EVIL': Formula site}}\n"
    "algorithms:\n"
    "  always_negative: {shadow: true}\n"
    "rules:\n"
    "  - {name: qa, when: {Modality: CT}, run: ct_water_qa, continue: true}\n"
    '  - {name: crash, when: {SeriesDescription: {regex: "(?i)crash"}}, run: crashing}\n'
    '  - {name: shadow, when: {SeriesDescription: {regex: "(?i)shadow"}}, run: always_negative}\n'
    "  - {name: region, when: {Modality: CT}, run: darkest_region}\n"
)


def send(router: RouterUnderTest, folder: Path, description: str, calling: str) -> str:
    folder.mkdir(parents=True)
    paths = []
    for ds in make_ct_slices(6):
        ds.SeriesDescription = description
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    storescu(router, paths, calling=calling)
    return str(ds.StudyInstanceUID)


@pytest.mark.slow
def test_usage_counts_each_outcome_per_algorithm_source_and_kind(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=REGISTRY)
    studies = [
        send(router, tmp_path / "present-1", "Chest", "MAIN_CT"),
        send(router, tmp_path / "present-2", "Chest", "MAIN_CT"),
        send(router, tmp_path / "failed", "crash test", "MAIN_CT"),
        send(router, tmp_path / "shadow", "shadow run", "=EVIL"),
    ]
    phantom = write_water_phantom_series(tmp_path / "qa", WaterPhantom(size=256, pixel_mm=1.0))
    storescu(router, phantom, calling="MAIN_CT")
    for study_uid in studies:
        wait_state(router, study_uid, {"done", "attention", "failed"})
    wait_state(router, study_uid_of(phantom), {"done", "attention"})
    month = datetime.datetime.now().strftime("%Y-%m")
    base = f"http://127.0.0.1:{router.http_port}"

    rows = httpx.get(f"{base}/api/usage", params={"month": month}, timeout=10).json()
    table = {
        (r["algorithm"], r["source_ae"], r["site"], r["kind"], r["outcome"]): (
            r["studies"],
            r["series"],
            r["runs"],
        )
        for r in rows
    }
    assert {r["month"] for r in rows} == {month}
    assert table == {
        ("darkest_region", "MAIN_CT", "Main campus", "clinical", "present"): (2, 2, 2),
        ("crashing", "MAIN_CT", "Main campus", "clinical", "failed"): (1, 1, 1),
        ("always_negative", "=EVIL", "Formula site", "clinical", "shadow"): (1, 1, 1),
        ("ct_water_qa", "MAIN_CT", "Main campus", "qa", "absent"): (1, 1, 1),
    }

    # The CSV: the same rows, a value a spreadsheet would run as a formula quoted.
    answer = httpx.get(f"{base}/api/usage.csv", params={"month": month}, timeout=10)
    assert answer.headers["content-type"].startswith("text/csv")
    assert f'filename="radrouter-usage-{month}.csv"' in answer.headers["content-disposition"]
    records = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(records) == 4
    assert {r["source_ae"] for r in records} == {"MAIN_CT", "'=EVIL"}

    assert httpx.get(f"{base}/api/usage", params={"month": "1999-01"}, timeout=10).json() == []
    refused = httpx.get(f"{base}/api/usage", params={"month": "last"}, timeout=10)
    assert refused.status_code == 400

    # The command line, through the API.
    done = subprocess.run(
        [sys.executable, "-m", "router.cli", "usage", "--api", base, "--month", month],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_PROXY": "127.0.0.1"},
    )
    assert done.returncode == 0, done.stderr
    assert "darkest_region" in done.stdout and "Main campus" in done.stdout
    line = next(x for x in done.stdout.splitlines() if "ct_water_qa" in x)
    assert line.split()[-5:] == ["qa", "absent", "1", "1", "1"]

    # ... and straight from the database (no site names without the config).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "router.cli",
            "usage",
            "--data-dir",
            str(tmp_path / "data"),
            "--csv",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    records = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(records) == 4 and {r["site"] for r in records} == {""}
    assert "source: database" in done.stderr
