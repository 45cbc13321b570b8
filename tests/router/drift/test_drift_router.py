"""Drift through a running router: generated chest CTs sent with storescu, run by a
noise-sensitive test algorithm, their acquisition recorded from the DICOM headers; a baseline
recorded through the API at "go-live"; then the scanner's studies change kernel and noise and
the API, /metrics and ``radrouter drift`` say alert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from algorithms.registry import Registry
from router.drift.monitor import DAY_S
from testing.drift_streams import SHARP, STABLE, NoiseSensitive, Scanner, write_study
from testing.router_process import RouterUnderTest, StartRouter, storescu, study_uid_of, wait_state

CONFIG = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "completion: {settle_after_release_s: 0.1, series_idle_s: 2, study_idle_s: 4, hard_cap_s: 60}\n"
    "drift: {min_results: 10, cache_s: 0}\n"
    "rules:\n"
    "  - {name: chest, when: {Modality: CT}, run: noise_sensitive}\n"
)


def send_studies(
    router: RouterUnderTest, folder: Path, scanner: Scanner, count: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    studies = []
    for i in range(count):
        # The first study of each stream has too few slices: "not assessed".
        paths = write_study(folder / f"{seed}-{i}", scanner, rng, slices=2 if i == 0 else 4)
        storescu(router, paths)
        studies.append(study_uid_of(paths))
    for study_uid in studies:
        wait_state(router, study_uid, {"done", "attention"})


@pytest.mark.slow
def test_a_kernel_and_noise_change_raises_the_alert_in_a_running_router(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=Registry({"noise_sensitive": NoiseSensitive}))
    base = f"http://127.0.0.1:{router.http_port}"
    db = router.service.db
    send_studies(router, tmp_path / "go-live", STABLE, 13, seed=11)
    before = httpx.get(f"{base}/api/drift", timeout=10).json()["algorithms"]
    assert [(d["algorithm"], d["state"]) for d in before] == [("noise_sensitive", "no_baseline")]

    # The acquisition is recorded from the headers, for the not-assessed result too.
    rows = db.query("SELECT verdict, summary FROM results ORDER BY id")
    assert len(rows) == 13
    for row in rows:
        summary = json.loads(row["summary"])
        assert summary["acquisition"] == {
            "kernel": "B30f",
            "kvp": 120.0,
            "slice_thickness_mm": 2.5,
            "pixel_spacing_mm": 0.8,
        }
        assert summary["scanner"]["model"] == "Synthetic CT 64"
    assert [r["verdict"] for r in rows].count("not_assessed") == 1

    # Go-live was a month ago: the baseline is recorded over that period, through the API.
    with db.transaction() as conn:
        conn.execute("UPDATE results SET created_at = created_at - ?", (30 * DAY_S,))
    recorded = httpx.post(f"{base}/api/drift/noise_sensitive/baseline?days=60", timeout=30)
    assert recorded.status_code == 200, recorded.text
    assert recorded.json()["results"] == 13
    refused = httpx.post(f"{base}/api/drift/no_such_algorithm/baseline", timeout=30)
    assert refused.status_code == 409 and "0 result" in refused.json()["detail"]
    assert httpx.post(f"{base}/api/drift/bad%20name/baseline", timeout=30).status_code == 400

    send_studies(router, tmp_path / "after", SHARP, 13, seed=12)

    drift = httpx.get(f"{base}/api/drift", timeout=30).json()["algorithms"][0]
    assert drift["state"] == "alert", drift["reason"]
    features = {f["feature"]: f for f in drift["features"]}
    assert features["kernel"]["state"] == "alert"
    assert features["kernel"]["histogram"]["categories"] == ["B30f", "B70f"]
    assert features["kernel"]["histogram"]["baseline"] == [1.0, 0.0]
    assert features["kernel"]["histogram"]["current"] == [0.0, 1.0]
    assert features["probability"]["state"] == "alert"
    assert features["scanner_model"]["state"] == "ok"
    assert drift["baseline"]["results"] == 13 and drift["window_results"] == 13
    assert drift["daily"][-1]["results"] == 13

    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert 'radrouter_drift_alert{algorithm="noise_sensitive"} 2.0' in metrics
    assert 'radrouter_drift_feature_alert{algorithm="noise_sensitive",feature="kernel"} 2.0' in (
        metrics
    )

    done = subprocess.run(
        [sys.executable, "-m", "router.cli", "drift", "--api", base],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_PROXY": "127.0.0.1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("noise_sensitive: ALERT")
    assert any(line.split()[:2] == ["kernel", "alert"] for line in done.stdout.splitlines())

    # The admin page draws it: the state, the kernel's row, baseline and current bars.
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from testing.browser import headless_chromium

    with headless_chromium(tmp_path / "profile", offline=True, window_size=(1400, 1400)) as browser:
        browser.get(f"{base}/admin#monitoring")
        wait = WebDriverWait(browser, 30)
        section = "#drift .drift-algorithm[data-algorithm='noise_sensitive']"
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, section))
        block = browser.find_element(By.CSS_SELECTOR, section)
        assert block.find_element(By.CSS_SELECTOR, "h3 .state-alert").text == "alert"
        kernel = block.find_element(By.CSS_SELECTOR, "tr[data-feature='kernel']")
        assert "alert" in kernel.text
        assert block.find_elements(By.CSS_SELECTOR, "svg.chart rect.baseline")
        assert block.find_elements(By.CSS_SELECTOR, "svg.chart rect.current")
        browser.execute_script("arguments[0].scrollIntoView()", block)
        browser.save_screenshot(str(tmp_path / "admin-drift.png"))
    if os.environ.get("RADROUTER_UPDATE_DOCS_SCREENSHOT") == "1":
        from PIL import Image

        target = Path(__file__).resolve().parents[3] / "docs" / "img" / "admin-drift.png"
        Image.open(tmp_path / "admin-drift.png").convert("RGB").quantize(colors=64).save(
            target, optimize=True
        )
