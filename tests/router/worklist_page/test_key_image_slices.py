"""A finding on a running router: the worklist reason names its series and image as sent, the
thumbnail outlines its SEG, and the larger view steps through the slices that hold it.

The study is a synthetic chest CT whose Series Number is 7 and whose Instance Numbers run
against the slice order (300, 293, ... from feet to head), so an image number can only be
right if it is read from the files, never derived from a slice index. The plugin
(``plugins.RightLungOutliner``) marks the right lung on slices 2-5, shrinking away from its
key slice 4; its flag goes through the real notify stage.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from algorithms.registry import Registry
from dicom_sr.read import read_measurement_report
from router.service import wait_for
from router.worklist_page.key_images import finding_slices
from router.worklist_page.thumbnails import MASK_COLOUR, REGION_COLOUR
from testing.browser import headless_chromium
from testing.dicom_tools import make_ct_slices
from testing.router_process import RouterUnderTest, StartRouter
from testing.storescp import DCMTK_ENV
from tests.router.worklist_page.plugins import KEY_SLICE, SPAN, RightLungOutliner

REGISTRY = Registry({"right_lung": RightLungOutliner})
CONFIG = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, hard_cap_s: 60}\n"
    "jobs: {retry: {max_attempts: 1}}\n"
    "rules:\n"
    "  - name: lungs\n"
    "    when: {Modality: CT}\n"
    "    run: right_lung\n"
    "worklist:\n"
    "  priority_policy:\n"
    "    right_lung:\n"
    "      - when: {finding: Nodule}\n"
    "        raise_to: urgent\n"
)
SERIES_NUMBER = 7
SLICES = 8
DOCS_SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "img" / "worklist-viewer.png"


def instance_number(z_order: int) -> int:
    """Image numbers against the slice order, far from any slice index."""
    return 300 - 7 * z_order


def api(router: RouterUnderTest, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{router.http_port}{path}", timeout=30)


def send_study(router: RouterUnderTest, folder: Path, accession: str) -> dict[str, Any]:
    """C-STORE the renumbered CT with /usr/bin/storescu; the study view once flagged."""
    folder.mkdir(parents=True)
    paths = []
    for z_order, ds in enumerate(make_ct_slices(SLICES)):
        ds.AccessionNumber = accession
        ds.SeriesNumber = SERIES_NUMBER
        ds.InstanceNumber = instance_number(z_order)
        paths.append(folder / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
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

    def flagged() -> bool:
        nonlocal view
        view = api(router, f"/studies/{study_uid}").json()
        return view.get("state") in {"done", "attention"} and bool(view.get("flags"))

    assert wait_for(flagged, 60, 0.1), f"study not flagged: {view}"
    return view


def sent_numbers(folder: Path) -> dict[str, tuple[int, int]]:
    """SOP Instance UID -> (Series Number, Instance Number), as in the sent files."""
    numbers = {}
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        numbers[str(ds.SOPInstanceUID)] = (int(ds.SeriesNumber), int(ds.InstanceNumber))
    return numbers


def right_lung_on(z_order: int) -> npt.NDArray[np.bool_]:
    """The plugin's mask on one slice, computed here from the phantom the study was made of."""
    [ct] = make_ct_slices(1)
    hu = ct.pixel_array.astype(float) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    labels, count = ndimage.label(hu < -500.0)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    inner = [n for n in range(1, count + 1) if n not in border]
    lung = labels == min(inner, key=lambda n: float(np.nonzero(labels == n)[1].mean()))
    shrink = abs(z_order - KEY_SLICE)
    eroded: npt.NDArray[np.bool_] = (
        ndimage.binary_erosion(lung, iterations=shrink) if shrink else lung
    )
    return eroded


def decode(png: bytes) -> npt.NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def coloured(pixels: npt.NDArray[np.uint8], colour: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    matches: npt.NDArray[np.bool_] = (pixels == np.array(colour, dtype=np.uint8)).all(axis=-1)
    return matches


def mask_edge(mask: npt.NDArray[np.bool_], shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """The mask's border pixels once scaled to the thumbnail (nearest neighbour)."""
    scaled = np.asarray(
        Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (shape[1], shape[0]), Image.Resampling.NEAREST
        )
    )
    inside = scaled > 0
    edge: npt.NDArray[np.bool_] = inside & ~ndimage.binary_erosion(inside, border_value=0)
    return edge


def test_worklist_reason_names_the_series_and_image_of_the_finding_as_sent(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=REGISTRY)
    view = send_study(router, tmp_path / "study", "ACC-K1")
    report = read_measurement_report(pydicom.dcmread(view["results"][0]["path"]))
    series, image = sent_numbers(tmp_path / "study")[report.findings[0].referenced_sop_instance_uid]

    [study] = api(router, "/api/worklist").json()["studies"]

    assert (series, image) == (SERIES_NUMBER, instance_number(KEY_SLICE))
    assert (study["priority"], study["raised"]) == ("urgent", True)
    assert re.fullmatch(
        rf"AI: \d+(\.\d)? mm nodule, right lung, series {series} image {image} "
        r"\[test right_lung 9\.9\.9\]",
        study["reason"],
    ), study["reason"]
    assert study["results"][0]["reason"] == study["reason"]


def test_thumbnail_outlines_the_written_seg_where_the_mask_edge_is(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=REGISTRY)
    view = send_study(router, tmp_path / "study", "ACC-K2")
    [result] = api(router, "/api/worklist").json()["studies"][0]["results"]

    pixels = decode(api(router, result["thumbnail_url"]).content)

    edge = mask_edge(right_lung_on(KEY_SLICE), pixels.shape[:2])
    cyan, amber = coloured(pixels, MASK_COLOUR), coloured(pixels, REGION_COLOUR)
    assert view["results"][0]["id"] == result["result_id"]
    assert pixels.shape == (256, 256, 3)
    # Every edge pixel is outlined: cyan, or amber where the SR's bounding box lies on it.
    assert (cyan | amber)[edge].all()
    assert cyan[edge].mean() > 0.5
    near = ndimage.binary_dilation(edge, iterations=2)
    assert not cyan[~near].any(), "cyan only on the mask's edge"


def test_a_findings_slices_are_its_seg_frames_in_image_order_each_with_its_own_outline(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(CONFIG, registry=REGISTRY)
    send_study(router, tmp_path / "study", "ACC-K3")
    [result] = api(router, "/api/worklist").json()["studies"][0]["results"]
    covered = range(SPAN[1], SPAN[0] - 1, -1)  # image numbers rise as z falls

    data = api(router, result["slices_url"]).json()

    assert [s["instance_number"] for s in data["slices"]] == [instance_number(z) for z in covered]
    assert data["series_number"] == SERIES_NUMBER
    assert data["slices"][data["key_index"]]["instance_number"] == instance_number(KEY_SLICE)
    assert data["window"] == "lung"
    for z_order, listed in zip(covered, data["slices"], strict=True):
        pixels = decode(api(router, listed["image_url"]).content)
        cyan, amber = coloured(pixels, MASK_COLOUR), coloured(pixels, REGION_COLOUR)
        # The masks of neighbouring slices differ by one source pixel (4 thumbnail pixels).
        edge = mask_edge(right_lung_on(z_order), pixels.shape[:2])
        assert (cyan | amber)[edge].all(), f"slice {z_order}: its mask is not outlined"
        assert not cyan[~ndimage.binary_dilation(edge, iterations=2)].any(), z_order
        assert bool(amber.any()) is (z_order == KEY_SLICE)
    alone = finding_slices(router.service.db, result["result_id"])  # no SEG lookup given
    assert [s.instance_number for s in alone.slices] == [instance_number(KEY_SLICE)]
    beyond = f"{result['thumbnail_url']}?slice={len(data['slices'])}"
    assert api(router, beyond).status_code == 404
    assert api(router, result["slices_url"].replace("/0/", "/1/")).status_code == 404


# --- the larger view in a real headless browser ------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with headless_chromium(tmp_path / "chromium-profile") as driver:
        yield driver


@pytest.mark.slow
def test_larger_view_steps_through_the_findings_slices_with_buttons_and_arrow_keys(
    start_router: StartRouter, tmp_path: Path, browser: Any
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    router = start_router(CONFIG, registry=REGISTRY)
    send_study(router, tmp_path / "study", "ACC-V1")
    images = [instance_number(z) for z in range(SPAN[1], SPAN[0] - 1, -1)]  # 265 272 279 286
    browser.get(f"http://127.0.0.1:{router.http_port}/worklist")
    wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "img.key-image"))

    def caption() -> str:
        text: str = browser.find_element(By.ID, "viewer-caption").text
        return text

    def shown_slice() -> int:
        image = browser.find_element(By.ID, "viewer-image")
        wait.until(lambda _: image.get_attribute("complete") == "true")
        assert image.get_attribute("naturalWidth") == "768"
        source = image.get_attribute("src") or ""
        assert source.endswith("&size=768")
        return int(re.search(r"slice=(\d+)", source).group(1))  # type: ignore[union-attr]

    browser.find_element(By.CSS_SELECTOR, "a.key-image-link").click()
    dialog = browser.find_element(By.ID, "viewer")
    wait.until(lambda _: dialog.get_attribute("open") is not None and "·" in caption())
    assert caption() == f"series 7 image {images[1]} · slice 2 of 4 · key image"
    assert shown_slice() == 1

    dialog.send_keys(Keys.ARROW_RIGHT)
    wait.until(lambda _: f"image {images[2]}" in caption())
    assert caption() == f"series 7 image {images[2]} · slice 3 of 4"
    assert shown_slice() == 2

    browser.find_element(By.ID, "viewer-next").click()
    wait.until(lambda _: f"image {images[3]}" in caption())
    assert shown_slice() == 3
    assert browser.find_element(By.ID, "viewer-next").get_attribute("disabled") is not None

    for _ in range(3):
        browser.find_element(By.ID, "viewer-previous").click()
    wait.until(lambda _: f"image {images[0]}" in caption())
    assert shown_slice() == 0
    assert browser.find_element(By.ID, "viewer-previous").get_attribute("disabled") is not None
    dialog.send_keys(Keys.ARROW_LEFT)  # already the first: stays
    assert caption() == f"series 7 image {images[0]} · slice 1 of 4"

    dialog.send_keys(Keys.END)
    wait.until(lambda _: "slice 4 of 4" in caption())
    dialog.send_keys(Keys.ARROW_UP)
    wait.until(lambda _: "slice 3 of 4" in caption())
    assert shown_slice() == 2
    if os.environ.get("RADROUTER_UPDATE_DOCS_SCREENSHOT") == "1":
        dialog.send_keys(Keys.ARROW_UP)
        wait.until(lambda _: "key image" in caption())
        shown_slice()
        browser.save_screenshot(str(tmp_path / "viewer.png"))
        Image.open(tmp_path / "viewer.png").convert("RGB").quantize(colors=64).save(
            DOCS_SCREENSHOT, optimize=True
        )

    dialog.send_keys(Keys.ESCAPE)
    wait.until(lambda _: dialog.get_attribute("open") is None)
    focused = browser.switch_to.active_element
    assert "key-image-link" in (focused.get_attribute("class") or "")
