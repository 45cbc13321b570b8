"""The worklist page and API on a running router: real studies in, flags, thumbnails, feedback.

Each test replaces the notify stage's flag by one it chooses (``notify``), with the values the
stage passes (the study's last image time and the result's row), after the router has processed
real C-STOREd studies: here the page is under test, the reasons the stage writes are tested in
``test_key_image_slices.py`` and ``tests/worklist``.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from algorithms.registry import Registry
from config.schema import Priority
from dicom_sr.read import read_measurement_report
from router.service import wait_for
from router.worklist_page.key_images import key_image_png
from router.worklist_page.store import record_flag
from router.worklist_page.thumbnails import MASK_COLOUR, REGION_COLOUR
from testing.browser import headless_chromium
from testing.dicom_tools import make_ct_slices
from testing.plugins import AlwaysNegative, CrashingAlgorithm, DarkestRegionOutliner
from testing.router_process import RouterUnderTest, StartRouter
from testing.segmentation import write_segmentation
from testing.storescp import DCMTK_ENV

TEST_REGISTRY = Registry(
    {
        "darkest_region": DarkestRegionOutliner,
        "always_negative": AlwaysNegative,
        "crashing": CrashingAlgorithm,
    }
)
DOCS_SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "img" / "worklist.png"
CONFIG = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, hard_cap_s: 60}\n"
    "jobs: {retry: {max_attempts: 2, backoff_initial_s: 0.1}}\n"
    "rules:\n"
    "  - name: crash\n"
    '    when: {Modality: CT, SeriesDescription: {regex: "(?i)crash"}}\n'
    "    run: crashing\n"
    "  - name: negative\n"
    '    when: {Modality: CT, SeriesDescription: {regex: "(?i)negative"}}\n'
    "    run: always_negative\n"
    "  - name: region\n"
    "    when: {Modality: CT}\n"
    "    run: darkest_region\n"
)


def api(router: RouterUnderTest, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{router.http_port}{path}", timeout=30)


def send_study(
    router: RouterUnderTest,
    folder: Path,
    *,
    accession: str,
    description: str,
    series_description: str = "Chest 2.5mm",
    volume: bool = True,
) -> dict[str, Any]:
    """C-STORE a synthetic chest CT with /usr/bin/storescu; the study view once processed."""
    folder.mkdir(parents=True)
    paths = []
    for ds in make_ct_slices(8):
        ds.AccessionNumber = accession
        ds.StudyDescription = description
        ds.SeriesDescription = series_description
        if not volume:  # valid images, but only localizers: "not assessed", with the reason
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    subprocess.run(
        ["/usr/bin/storescu", "-aec", "RADROUTER", "127.0.0.1", str(router.dicom_port)]
        + [str(p) for p in paths],
        check=True,
        capture_output=True,
        env=DCMTK_ENV,
        timeout=60,
    )
    view: dict[str, Any] = {}

    def processed() -> bool:
        nonlocal view
        view = api(router, f"/studies/{study_uid}").json()
        return view.get("state") in {"done", "attention"}

    assert wait_for(processed, 60, 0.1), f"study not processed: {view}"
    return view


def notify(
    router: RouterUnderTest, view: dict[str, Any], priority: Priority, *, raised: bool, reason: str
) -> int:
    """Replace the notify stage's flag of the study's latest result by one the test chooses
    (the stage's own decisions are tested in test_notify.py; here the page is under test)."""
    result = view["results"][-1]
    router.service.db.connection().execute("DELETE FROM flags WHERE result_id = ?", (result["id"],))
    return record_flag(
        router.service.db,
        study_uid=view["study_uid"],
        result_id=result["id"],
        algorithm=result["algorithm"],
        algorithm_version=result["algorithm_version"],
        priority=priority,
        reason=reason,
        verdict=result["verdict"],
        raised=raised,
        last_image_at=view["last_received_at"],
        flagged_at=result["created_at"],
    )


def overlay_box(png: bytes) -> tuple[int, int, int, int, np.ndarray[Any, Any]]:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    rows, cols = np.nonzero(np.all(pixels == np.array(REGION_COLOUR, dtype=np.uint8), axis=-1))
    assert rows.size > 0, "no pixel in the overlay colour"
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()), pixels


def test_api_lists_a_processed_study_with_its_flag_and_a_thumbnail_with_the_region(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=TEST_REGISTRY)
    view = send_study(router, tmp_path / "a", accession="ACC-R1", description="CT CHEST WITH")
    notify(router, view, Priority.STAT, raised=True, reason="AI: dark region, p=0.90")

    response = api(router, "/api/worklist")
    [study] = response.json()["studies"]
    [result] = study["results"]

    assert study["study_uid"] == view["study_uid"]
    assert (study["accession_number"], study["study_description"]) == ("ACC-R1", "CT CHEST WITH")
    assert study["modalities"] == ["CT"]
    assert (study["priority"], study["raised"]) == ("stat", True)
    assert study["reason"] == "AI: dark region, p=0.90"
    expected_s = view["results"][0]["created_at"] - view["last_received_at"]
    assert study["last_image_to_flag_s"] == pytest.approx(expected_s, abs=1e-3)
    assert 0 < study["last_image_to_flag_s"] < 30
    assert (result["algorithm"], result["algorithm_version"]) == ("darkest_region", "9.9.9")
    assert (result["verdict"], result["finding_count"]) == ("present", 1)
    assert "Test^Patient" not in response.text and "PAT0001" not in response.text

    thumbnail = api(router, result["thumbnail_url"])
    assert thumbnail.headers["content-type"] == "image/png"
    left, top, right, bottom, pixels = overlay_box(thumbnail.content)
    report = read_measurement_report(pydicom.dcmread(view["results"][0]["path"]))
    points = np.array(report.findings[0].points)
    scale = pixels.shape[1] / 64  # the 64x64 source slice fitted into 256x256
    assert pixels.shape == (256, 256, 3)
    assert abs(left - points[:, 0].min() * scale) <= 2
    assert abs(right - points[:, 0].max() * scale) <= 2
    assert abs(top - points[:, 1].min() * scale) <= 2
    assert abs(bottom - points[:, 1].max() * scale) <= 2
    # The region is a lung (-850 HU): grey 85 in the lung window, black in a soft-tissue one.
    centre = pixels[(top + bottom) // 2 - 4 : (top + bottom) // 2 + 4, (left + right) // 2, 0]
    assert np.all(np.abs(centre.astype(int) - 85) <= 3), centre


def test_feedback_is_stored_over_http_and_exported_as_csv(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=TEST_REGISTRY)
    view = send_study(router, tmp_path / "a", accession="ACC-F1", description="CT CHEST")
    notify(router, view, Priority.URGENT, raised=True, reason="AI: dark region")
    result_id = view["results"][0]["id"]
    url = f"http://127.0.0.1:{router.http_port}/api/results/{result_id}/feedback"

    stored = httpx.post(url, json={"agree": False, "comment": "edge artefact", "reader": "RB"})
    refused = [
        httpx.post(url, json={"agree": "yes"}),
        httpx.post(url, json={"agree": True, "colour": "red"}),
        httpx.post(url, json={"agree": True, "comment": "x" * 2001}),
        httpx.post(url.replace(f"/{result_id}/", "/98765/"), json={"agree": True}),
    ]
    csv_response = api(router, "/api/feedback.csv")
    rows = list(csv.DictReader(io.StringIO(csv_response.text)))
    listed = api(router, "/api/worklist").json()["studies"][0]["results"][0]["feedback"]

    assert stored.status_code == 201 and stored.json()["agree"] is False
    assert [r.status_code for r in refused] == [422, 422, 422, 404]
    assert csv_response.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_response.headers["content-disposition"]
    assert len(rows) == 1
    assert {k: rows[0][k] for k in ("result_id", "study_uid", "algorithm", "verdict")} == {
        "result_id": str(result_id),
        "study_uid": view["study_uid"],
        "algorithm": "darkest_region",
        "verdict": "present",
    }
    assert (rows[0]["ai_priority"], rows[0]["reason"]) == ("urgent", "AI: dark region")
    assert (rows[0]["agree"], rows[0]["comment"], rows[0]["reader"]) == (
        "false",
        "edge artefact",
        "RB",
    )
    assert listed == {"agree": False, "reader": "RB", "at": stored.json()["at"], "count": 1}


def test_failures_and_not_assessed_are_stated_not_hidden(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=TEST_REGISTRY)
    failed = send_study(
        router, tmp_path / "c", accession="ACC-X1", description="CT", series_description="crash"
    )
    unreadable = send_study(
        router, tmp_path / "n", accession="ACC-X2", description="CT", volume=False
    )
    notify(router, unreadable, Priority.ROUTINE, raised=False, reason="AI: not assessed")

    studies = {s["accession_number"]: s for s in api(router, "/api/worklist").json()["studies"]}
    [crash] = studies["ACC-X1"]["results"]
    [not_assessed] = studies["ACC-X2"]["results"]

    assert failed["jobs"][0]["state"] == "failed"
    assert crash["verdict"] == "failed" and crash["result_id"] is None
    assert "simulated model crash" in crash["reason"]
    assert not_assessed["verdict"] == "not_assessed" and not_assessed["thumbnail_url"] is None
    no_image = api(router, f"/api/results/{not_assessed['result_id']}/thumbnail.png")
    assert no_image.status_code == 404 and "0 finding(s)" in no_image.json()["detail"]
    assert api(router, "/api/results/424242/thumbnail.png").status_code == 404


def test_page_and_its_assets_are_served_from_the_router(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=TEST_REGISTRY)

    page = api(router, "/worklist")
    script = api(router, "/worklist/assets/worklist.js")
    style = api(router, "/worklist/assets/worklist.css")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<table id="worklist">' in page.text and "/worklist/assets/worklist.js" in page.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/api/worklist" in script.text
    assert ".badge-stat" in style.text
    assert api(router, "/worklist/assets/../api.py").status_code == 404
    assert api(router, "/worklist/assets/api.py").status_code == 404


# --- the page in a real headless browser -----------------------------------------------------


def feedback_state(browser: Any, result_id: int) -> str:
    from selenium.webdriver.common.by import By

    text: str = browser.find_element(
        By.CSS_SELECTOR, f"li[data-result-id='{result_id}'] .feedback-state"
    ).text
    return text


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with headless_chromium(tmp_path / "chromium-profile") as driver:
        yield driver


@pytest.mark.slow
def test_page_orders_studies_shows_flags_and_stores_feedback_in_a_browser(
    start_router: StartRouter, tmp_path: Path, browser: Any
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    router = start_router(CONFIG, registry=TEST_REGISTRY)
    # Arrival order: A, B, C, D. Expected lanes: D stat, B urgent, then A and C routine.
    a = send_study(
        router,
        tmp_path / "a",
        accession="ACC-A",
        description="CT CHEST",
        series_description="negative",
    )
    b = send_study(router, tmp_path / "b", accession="ACC-B", description="CT CHEST LOW DOSE")
    c = send_study(
        router,
        tmp_path / "c",
        accession="ACC-C",
        description="CT THORAX",
        series_description="crash",
    )
    d = send_study(router, tmp_path / "d", accession="ACC-D", description="CTPA")
    notify(router, a, Priority.ROUTINE, raised=False, reason="AI: no dark region found")
    notify(
        router,
        b,
        Priority.URGENT,
        raised=True,
        reason="AI: suspected dark region, series 2 image 5",
    )
    notify(
        router,
        d,
        Priority.STAT,
        raised=True,
        reason="AI: 19 mm dark region, right lung, series 2 image 5",
    )

    browser.get(f"http://127.0.0.1:{router.http_port}/worklist")
    # The page re-renders the list when it changes: an element read between two renders is
    # stale, and the wait simply looks again.
    wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")) == 4)
    rows = browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")

    assert [r.get_attribute("data-study-uid") for r in rows] == [
        d["study_uid"],
        b["study_uid"],
        a["study_uid"],
        c["study_uid"],
    ]
    assert [r.find_element(By.CSS_SELECTOR, ".badge").text for r in rows] == [
        "STAT",
        "URGENT",
        "ROUTINE",
        "ROUTINE",
    ]
    assert "raised by AI" in rows[0].find_element(By.CSS_SELECTOR, "td.priority").text
    assert rows[0].find_element(By.CSS_SELECTOR, "td.reason").text == (
        "AI: 19 mm dark region, right lung, series 2 image 5"
    )
    assert rows[0].find_element(By.CSS_SELECTOR, "td.accession").text == "ACC-D"
    assert rows[2].find_element(By.CSS_SELECTOR, ".verdict").text == "Absent"
    assert rows[3].find_element(By.CSS_SELECTOR, ".verdict").text == "Failed"
    assert "simulated model crash" in rows[3].text
    assert rows[0].find_element(By.CSS_SELECTOR, "td.time-to-flag").text.endswith(" s")
    image = rows[0].find_element(By.CSS_SELECTOR, "img.key-image")
    wait.until(lambda _: image.get_attribute("naturalWidth") == "256")
    assert "region outlined" in (image.get_attribute("alt") or "")
    for button in browser.find_elements(By.CSS_SELECTOR, "#worklist button"):
        assert (button.get_attribute("aria-label") or "").startswith(
            ("Agree with", "Disagree with")
        )

    browser.find_element(By.ID, "reader").send_keys("Dr. Test")
    d_result, b_result = d["results"][0]["id"], b["results"][0]["id"]
    browser.find_element(By.ID, f"comment-{d_result}").send_keys("clot confirmed")
    # Feedback given elsewhere changes the list: the page re-renders and keeps the typed comment.
    other = httpx.post(
        f"http://127.0.0.1:{router.http_port}/api/results/{b_result}/feedback",
        json={"agree": False, "reader": "Dr. Other"},
    )
    assert other.status_code == 201
    wait.until(lambda br: "Disagreed by Dr. Other" in feedback_state(br, b_result))
    comment = browser.find_element(By.ID, f"comment-{d_result}")
    assert comment.get_attribute("value") == "clot confirmed"
    browser.find_element(
        By.CSS_SELECTOR,
        "button[aria-label='Agree with the darkest_region result for accession ACC-D']",
    ).click()
    wait.until(lambda br: "Agreed by Dr. Test" in feedback_state(br, d_result))

    rows_csv = list(csv.DictReader(io.StringIO(api(router, "/api/feedback.csv").text)))
    assert [(r["result_id"], r["agree"], r["comment"], r["reader"]) for r in rows_csv] == [
        (str(b_result), "false", "", "Dr. Other"),
        (str(d_result), "true", "clot confirmed", "Dr. Test"),
    ]
    assert [r["ai_priority"] for r in rows_csv] == ["urgent", "stat"]
    assert browser.find_element(By.ID, f"comment-{d_result}").get_attribute("value") == ""
    browser.save_screenshot(str(tmp_path / "worklist.png"))
    assert (tmp_path / "worklist.png").stat().st_size > 10_000
    if os.environ.get("RADROUTER_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        Image.open(tmp_path / "worklist.png").convert("RGB").quantize(colors=64).save(
            DOCS_SCREENSHOT, optimize=True
        )


def test_key_image_also_outlines_the_seg_mask_when_the_result_has_one(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=TEST_REGISTRY)
    view = send_study(router, tmp_path / "a", accession="ACC-S1", description="CT CHEST")
    result = view["results"][0]
    finding = read_measurement_report(pydicom.dcmread(result["path"])).findings[0]
    db = router.service.db
    slices = [
        pydicom.dcmread(row["path"])
        for row in db.query(
            "SELECT path FROM instances WHERE study_uid = ? ORDER BY slice_position",
            (view["study_uid"],),
        )
    ]
    key = [s.SOPInstanceUID for s in slices].index(finding.referenced_sop_instance_uid)
    mask = np.zeros((len(slices), 64, 64), dtype=bool)
    mask[key, 28:36, 18:26] = True
    seg_path = write_segmentation(slices, mask, tmp_path / "seg.dcm")

    with_seg = key_image_png(db, result["id"], segmentations=lambda _: [seg_path])
    without = key_image_png(db, result["id"])

    pixels = np.asarray(Image.open(io.BytesIO(with_seg)).convert("RGB"))
    rows, cols = np.nonzero(np.all(pixels == np.array(MASK_COLOUR, dtype=np.uint8), axis=-1))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (112, 143, 72, 103)
    overlay_box(with_seg)  # the SR region is drawn as well
    plain = np.asarray(Image.open(io.BytesIO(without)).convert("RGB"))
    assert not np.all(plain == np.array(MASK_COLOUR, dtype=np.uint8), axis=-1).any()
