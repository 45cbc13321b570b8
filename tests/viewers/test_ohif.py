"""radrouter's results in OHIF, the web viewer many hospitals put beside their PACS.

OHIF 3.13.2, the prebuilt viewer of the npm package ``@ohif/app`` (``testing.ohif``), reads
the study from a real Orthanc's DICOMweb (Debian ``orthanc-dicomweb``) in Debian's chromium.
The study is the demo chest CT (``radrouter demo-study``), pushed by that Orthanc to a router
that runs ``lung_nodule`` and sends SR, SEG and KOS back into the study; a second demo study
(another patient) without a nodule gets an SR that says "Absent".

Each test fails on a SEVERE entry in the browser console, on OHIF's error notice ("Something
went wrong") and on a blank viewport (or, for the text view of a negative SR, on a missing
statement). Screenshots are kept under ``test-artefacts/ohif/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.service import wait_for
from testing.browser import CHROMEDRIVER, CHROMIUM, headless_chromium
from testing.ohif import FETCH_COMMAND, OHIF_DIST, OhifViewer, ohif_version, serving_ohif
from testing.orthanc import DICOMWEB_PLUGIN, running_orthanc
from testing.viewing import (
    DemoInPacs,
    demo_study_in_pacs,
    key_image_instance_number,
    router_sending_to,
)

ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "ohif"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (OHIF_DIST / "index.html").is_file(), reason=f"OHIF missing: run {FETCH_COMMAND}"
    ),
    pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="Debian orthanc-dicomweb missing"),
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="chromium missing"
    ),
]


@dataclass(frozen=True)
class Studies:
    with_nodule: DemoInPacs
    without_nodule: DemoInPacs
    viewer_url: str


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studies]:
    workdir = tmp_path_factory.mktemp("ohif")
    with running_orthanc(workdir / "orthanc", dicomweb=True) as orthanc:
        with router_sending_to(orthanc, workdir / "router") as router:
            with_nodule = demo_study_in_pacs(workdir / "nodule", orthanc, router)
            without = demo_study_in_pacs(workdir / "none", orthanc, router, nodule_mm=0.0, seed=2)
        with serving_ohif(OHIF_DIST, orthanc) as url:
            yield Studies(with_nodule, without, url)


@pytest.fixture
def viewer(studies: Studies, tmp_path: Path) -> Iterator[OhifViewer]:
    with headless_chromium(
        tmp_path / "chromium", offline=True, keep_logs=True, webgl=True, window_size=(1600, 1000)
    ) as driver:
        yield OhifViewer(driver, studies.viewer_url)


def test_the_version_under_test_is_the_pinned_one() -> None:
    assert ohif_version(OHIF_DIST) == "3.13.2"


def test_the_sr_finding_is_drawn_on_the_key_image_with_its_measurements_and_no_error(
    studies: Studies, viewer: OhifViewer
) -> None:
    demo = studies.with_nodule
    key_image = key_image_instance_number(demo)
    viewer.open_study(demo.study_uid)
    errors = viewer.console_errors()

    # The SEG first, as a radiologist would: OHIF asks, then overlays the mask.
    assert viewer.click("SEG", double=True)
    assert wait_for(lambda: "open this Segmentation" in viewer.page_text(), 30, 0.3)
    assert viewer.click("Yes")
    time.sleep(5)
    assert viewer.go_to_instance(key_image) == key_image
    seg = viewer.screenshot(ARTEFACTS / "seg-on-key-image.png")
    errors += viewer.console_errors()

    assert viewer.click("SR", double=True)
    drawn = wait_for(lambda: "Long axis" in viewer.page_text(), 60, 0.3)
    time.sleep(2)
    sr = viewer.screenshot(ARTEFACTS / "sr-finding.png")
    errors += viewer.console_errors()
    text = viewer.page_text()

    assert drawn, text[-1500:]
    assert "went wrong" not in text
    assert errors == []
    assert viewer.shown_instance() == key_image  # OHIF jumps to the finding's slice
    assert "Certainty of Finding" in text and "Volume" in text, text[-1500:]
    box = viewer.viewport_box()
    assert box is not None
    assert_not_blank(seg, box)
    assert_not_blank(sr, box)
    assert annotation_pixels(sr, box) > 200  # the outline and its labels, in OHIF's green


def test_a_negative_sr_is_shown_as_text_that_states_absent_and_not_verified(
    studies: Studies, viewer: OhifViewer
) -> None:
    """A report without findings has nothing to draw; titled "Diagnostic Imaging Report"
    (not "Imaging Measurement Report"), OHIF shows it in its SR text view."""
    viewer.open_study(studies.without_nodule.study_uid)
    assert "SEG" not in viewer.page_text().split()  # a result without findings: no SEG

    assert viewer.click("SR", double=True)
    shown = wait_for(lambda: "Nodule: Absent" in viewer.page_text(), 30, 0.3)
    viewer.screenshot(ARTEFACTS / "sr-negative.png")
    text = viewer.page_text()

    assert shown, text[-1500:]
    assert "Generated by an AI algorithm; not verified by a physician." in text
    assert "went wrong" not in text
    assert viewer.console_errors() == []


def assert_not_blank(image: Any, box: tuple[int, int, int, int]) -> None:
    """The viewport shows an image: many grey levels, not one flat colour."""
    pixels = np.asarray(image.crop(box).convert("L"), dtype=np.float64)
    assert pixels.std() > 20, f"blank viewport (std {pixels.std():.1f})"
    assert (pixels > 100).mean() > 0.1, "viewport nearly black"


def annotation_pixels(image: Any, box: tuple[int, int, int, int]) -> int:
    """Pixels of the viewport in OHIF's annotation green (clearly green, not grey)."""
    rgb = np.asarray(image.crop(box), dtype=np.int32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((green > 150) & (green > red + 60) & (green > blue + 60)).sum())
