"""A CT's daily water-phantom scan through a running router whose rules are loose (every CT
to a clinical algorithm): the phantom gets only the constancy test, its SR says which test
failed, and it raises no worklist flag; a patient's CT gets the clinical algorithm only."""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest

from algorithms.contract import Verdict
from algorithms.ct_water_qa.plugin import CtWaterPhantomQa
from algorithms.registry import Registry
from dicom_sr.read import read_measurement_report
from testing.browser import headless_chromium
from testing.phantoms import WaterPhantom, write_water_phantom_series
from testing.plugins import AlwaysNegative
from testing.router_process import (
    StartRouter,
    storescu,
    study_uid_of,
    wait_state,
    write_series,
)
from tests.dicom_sr.support import assert_valid_dicom

REGISTRY = Registry({"always_negative": AlwaysNegative, "ct_water_qa": CtWaterPhantomQa})
CONFIG = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "completion: {settle_after_release_s: 0.2, series_idle_s: 2, study_idle_s: 5, hard_cap_s: 60}\n"
    "algorithms:\n"
    "  ct_water_qa: {parameters: {water_tolerance_hu: 4, noise_max_hu: 20}}\n"
    "rules:\n"
    "  - name: every-ct\n"
    "    when: {Modality: CT}\n"
    "    run: always_negative\n"
    "    continue: true\n"
    "  - name: water-phantom\n"
    "    when: {Modality: CT}\n"
    "    run: ct_water_qa\n"
)
PRIVATE_CODES = frozenset(
    {"Unrecognized defined term <99RADROUTER> for value 1 of attribute <Coding Scheme Designator>"}
)


@pytest.mark.slow
def test_a_phantom_gets_the_constancy_test_only_and_a_patient_the_clinical_algorithm(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=REGISTRY)
    phantom = write_water_phantom_series(tmp_path / "qa", WaterPhantom(bias_hu=6.5, noise_hu=4))
    patient = write_series(tmp_path / "patient")
    storescu(router, phantom, calling="CT1")
    storescu(router, patient)
    tomorrow = write_water_phantom_series(tmp_path / "qa2", WaterPhantom(noise_hu=4, seed=2))

    qa_view = wait_state(router, study_uid_of(phantom), {"done", "attention"})
    patient_view = wait_state(router, study_uid_of(patient), {"done", "attention"})

    # The phantom: the constancy test alone, and why the clinical rule did not run.
    assert [job["algorithm"] for job in qa_view["jobs"]] == ["ct_water_qa"]
    (series,) = qa_view["series"]
    assert series["qa_sign"] == "phantom body part"
    assert (
        "always_negative withheld: a clinical algorithm never runs" in series["route_explanation"]
    )
    (result,) = qa_view["results"]
    assert result["verdict"] == "present"
    assert qa_view["flags"] == []  # a phantom's result is not the radiologists' worklist's
    report = read_measurement_report(pydicom.dcmread(result["path"]))
    assert report.verdict is Verdict.PRESENT
    assert [f.tracking_id for f in report.findings] == ["Water CT number"]
    assert report.findings[0].measurements[0].value == pytest.approx(6.5, abs=0.5)
    assert "Out of tolerance (water ct number): water +6." in report.reason
    assert_valid_dicom(Path(result["path"]), PRIVATE_CODES)

    # The patient: the clinical algorithm, never the constancy test.
    assert [job["algorithm"] for job in patient_view["jobs"]] == ["always_negative"]
    (series,) = patient_view["series"]
    assert series["qa_sign"] is None
    assert "ct_water_qa withheld" in series["route_explanation"]
    # Only the clinical algorithm kept off the phantom is an event (and a warning).
    events = router.service.db.query(
        "SELECT study_uid, detail FROM events WHERE kind = 'run_withheld'"
    )
    assert [(e["study_uid"], e["detail"].split(":")[0]) for e in events] == [
        (study_uid_of(phantom), "always_negative")
    ]

    # The next day's phantom passes; the trend of the scanner holds both, in order.
    storescu(router, tomorrow, calling="CT1")
    wait_state(router, study_uid_of(tomorrow), {"done", "attention"})
    (trend,) = httpx.get(f"http://127.0.0.1:{router.http_port}/api/qa/trend", timeout=10).json()
    assert trend["algorithm"] == "ct_water_qa"
    assert trend["scanner"]["station"] == "CT01" and trend["scanner"]["model"] == "Phantom"
    water = [p["measurements"]["Mean CT number of water"] for p in trend["points"]]
    assert water == [pytest.approx(6.5, abs=0.5), pytest.approx(0.0, abs=0.5)]
    assert [p["verdict"] for p in trend["points"]] == ["present", "absent"]

    # The admin page draws the trend: one plot per measurement, the failed run in red.
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chromium(tmp_path / "profile", offline=True) as browser:
        browser.get(f"http://127.0.0.1:{router.http_port}/admin#qa")
        WebDriverWait(browser, 30).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, "#qa-trend .qa-scanner")
        )
        block = browser.find_element(By.CSS_SELECTOR, "#qa-trend .qa-scanner")
        assert "ct_water_qa · " in block.text and "CT01" in block.text
        assert "2 run(s), 1 out of tolerance" in block.text
        captions = [c.text for c in block.find_elements(By.CSS_SELECTOR, "figcaption")]
        assert "Mean CT number of water" in captions
        water_plot = block.find_elements(By.CSS_SELECTOR, "figure.plot")[
            captions.index("Mean CT number of water")
        ]
        assert len(water_plot.find_elements(By.CSS_SELECTOR, "circle.fail")) == 1
        assert len(water_plot.find_elements(By.CSS_SELECTOR, "circle.pass")) == 1
