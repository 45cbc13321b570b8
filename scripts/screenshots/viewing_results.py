"""Screenshots for docs/viewing-results.md: a real study through radrouter, seen in viewers.

    .venv/bin/python scripts/screenshots/viewing_results.py [--ohif] [--keep]

1. ``radrouter demo-study`` (a synthetic chest CT with a 12 mm nodule) is uploaded to a
   throwaway Orthanc (Debian package, loopback, with the DICOMweb plug-in when installed);
2. Orthanc pushes it by C-STORE to an in-process router whose rule runs ``lung_nodule`` and
   sends the results back to that Orthanc, as a PACS auto-routing rule would;
3. when the SR, SEG and KOS are in Orthanc's copy of the study, headless chromium (Debian's,
   through /usr/bin/chromedriver) writes, under ``docs/img/viewing/``:
   ``orthanc-study.png`` (Orthanc Explorer's study page: the AI series next to the CT),
   ``sr-dsr2html.png`` (the SR from Orthanc, rendered by dcmtk's dsr2html) and
   ``worklist-key-image.png`` (the router's worklist thumbnail of the result);
4. with ``--ohif`` (OHIF as ``python -m testing.ohif fetch`` puts it, see ``testing.ohif``),
   OHIF is served on loopback with a same-origin proxy to Orthanc's DICOMweb and the study
   opened in it: ``ohif-kos.png``, ``ohif-seg.png``, ``ohif-sr.png``, and, for a second demo
   study without a nodule, ``ohif-sr-negative.png``.

Everything runs on 127.0.0.1 in a temporary folder; nothing is downloaded. Not a test.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from router.service import RouterService, wait_for  # noqa: E402
from testing.browser import headless_chromium  # noqa: E402
from testing.ohif import OHIF_DIST, OhifViewer, ohif_version, serving_ohif  # noqa: E402
from testing.orthanc import Orthanc, running_orthanc  # noqa: E402
from testing.viewing import (  # noqa: E402
    DemoInPacs,
    demo_study_in_pacs,
    key_image_instance_number,
    router_sending_to,
)

OUT = REPO / "docs" / "img" / "viewing"


# --- the study through radrouter ---------------------------------------------------------------


@dataclass
class Demo:
    pacs: DemoInPacs
    router: RouterService

    @property
    def orthanc(self) -> Orthanc:
        return self.pacs.orthanc

    @property
    def study_id(self) -> str:
        return self.pacs.study_id

    @property
    def study_uid(self) -> str:
        return self.pacs.study_uid


def router_api(router: RouterService, path: str) -> Any:
    return httpx.get(f"http://127.0.0.1:{router.http_port}{path}", timeout=30).json()


# --- screenshots -----------------------------------------------------------------------------


def save_png(
    driver: Any, target: Path, crop: tuple[int, int, int, int] | None = None, colors: int = 128
) -> None:
    """Screenshot, optionally cropped (left, top, right, bottom), as a small palette PNG."""
    from PIL import Image

    raw = Path(tempfile.mkstemp(suffix=".png")[1])
    if not driver.save_screenshot(str(raw)):
        raise RuntimeError(f"no screenshot for {target.name}")
    image = Image.open(raw).convert("RGB")
    raw.unlink()
    if crop is not None:
        image = image.crop(crop)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=colors, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)
    print(f"wrote {target.relative_to(REPO)} ({target.stat().st_size // 1024} KiB)")


def orthanc_explorer(workdir: Path, demo: Demo) -> None:
    """The study page of Orthanc Explorer: the CT and the three AI series."""
    from selenium.webdriver.common.by import By

    base = f"http://127.0.0.1:{demo.orthanc.http_port}/app/explorer.html"
    with headless_chromium(workdir / "chromium-profile", offline=True) as driver:
        driver.set_window_size(1280, 900)
        driver.get(f"{base}#study?uuid={demo.study_id}")
        wait_for(lambda: "KO" in driver.find_element(By.ID, "list-series").text, 20, 0.2)
        time.sleep(0.5)
        save_png(driver, OUT / "orthanc-study.png", crop=(0, 0, 1265, 645))


def sr_as_text(workdir: Path, demo: Demo) -> None:
    """The SR as Orthanc holds it, rendered by dcmtk's dsr2html: the kind of text view a viewer
    or PACS without TID 1500 measurement support gives of an SR."""
    orthanc = demo.orthanc
    sr_instance = orthanc.modality_instances(demo.study_id, "SR")[0]
    sr_file = workdir / "sr.dcm"
    sr_file.write_bytes(orthanc.instance_file(sr_instance))
    html = workdir / "sr.html"
    subprocess.run(["dsr2html", "-q", "+U8", str(sr_file), str(html)], check=True)
    with headless_chromium(workdir / "chromium-profile", offline=True) as driver:
        driver.set_window_size(900, 1000)
        driver.get(html.as_uri())
        height = int(driver.execute_script("return document.body.scrollHeight"))
        driver.set_window_size(900, min(height + 200, 2600))  # the window, not the viewport
        time.sleep(0.3)
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        save_png(driver, OUT / "sr-dsr2html.png", crop=(0, 0, 885, height), colors=32)


def worklist_key_image(demo: Demo) -> None:
    """radrouter's own key image of the result (worklist page thumbnail, SR region in amber,
    SEG outline in cyan): the fallback when the PACS viewer shows no overlay."""
    from PIL import Image

    view = router_api(demo.router, f"/studies/{demo.study_uid}")
    result_id = view["results"][0]["id"]
    for flag in view["flags"]:
        print(f"worklist reason: {flag['reason']}")
    answer = httpx.get(
        f"http://127.0.0.1:{demo.router.http_port}/api/results/{result_id}/thumbnail.png?size=384",
        timeout=30,
    )
    answer.raise_for_status()
    target = OUT / "worklist-key-image.png"
    Image.open(io.BytesIO(answer.content)).convert("RGB").save(target, optimize=True)
    print(f"wrote {target.relative_to(REPO)} ({target.stat().st_size // 1024} KiB)")


# --- OHIF --------------------------------------------------------------------------------------


def ohif(workdir: Path, demo: Demo, negative: DemoInPacs) -> None:
    """OHIF's default mode on the study: the KOS's message, the SEG hydrated on the CT at the
    key slice, the SR's finding; then the SR of the study without a nodule. Each step is
    looked for, not assumed: a later OHIF that behaves differently gives different pictures
    and says so on stdout."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    with (
        serving_ohif(OHIF_DIST, demo.orthanc) as url,
        headless_chromium(
            workdir / "chromium-ohif",
            offline=True,
            keep_logs=True,
            webgl=True,
            window_size=(1600, 1000),
        ) as driver,
    ):
        print(f"OHIF {ohif_version(OHIF_DIST)} on {url}")
        viewer = OhifViewer(driver, url)
        viewer.open_study(demo.study_uid)

        # The KOS: a warning on its series; hover it for the message.
        warning = driver.find_elements(
            By.XPATH,
            "//*[@data-cy='series-modality-label' and text()='KO']"
            "/ancestor::*[contains(@class,'justify-between')][1]"
            "//button[starts-with(@id,'display-set-tooltip')]",
        )
        if warning:
            # Hovering the row shows a "..." button that moves the icon: hover twice.
            for _ in range(2):
                ActionChains(driver).move_to_element(warning[0]).perform()
                time.sleep(0.7)
            wait_for(lambda: "Display Set Messages" in viewer.page_text(), 10, 0.2)
            message = viewer.page_text().partition("Display Set Messages")[2].strip()
            print("KOS:", message.splitlines()[0] if message else "no message shown")
            save_png(driver, OUT / "ohif-kos.png", crop=(0, 50, 620, 520))
        else:
            print("KOS: no warning on its series")

        # The SEG: double-click, accept, step to the key slice, open the panel.
        viewer.click("SEG", double=True)
        if wait_for(lambda: "open this Segmentation" in viewer.page_text(), 30, 0.3):
            viewer.click("Yes")
        time.sleep(5)
        target = key_image_instance_number(demo.pacs)
        print(f"SEG: at instance {viewer.go_to_instance(target)} (key image {target})")
        driver.find_element(By.ID, "panelSegmentation-btn").click()
        time.sleep(3)
        save_png(driver, OUT / "ohif-seg.png", colors=64)

        # The SR: its finding drawn on the key image, its measurements listed.
        viewer.console_errors()  # drop what came before
        viewer.click("SR", double=True)
        drawn = wait_for(lambda: "Long axis" in viewer.page_text(), 30, 0.3)
        time.sleep(2)
        print("SR:", "finding drawn" if drawn else "not drawn", "at", viewer.shown_instance())
        save_png(driver, OUT / "ohif-sr.png", colors=64)
        for error in viewer.console_errors():
            print("SR console error:", error[:240])

        # The SR of the study without a nodule: OHIF's text view.
        viewer.open_study(negative.study_uid)
        viewer.click("SR", double=True)
        shown = wait_for(lambda: "Nodule: Absent" in viewer.page_text(), 30, 0.3)
        print("negative SR:", "statement shown" if shown else "statement not shown")
        save_png(driver, OUT / "ohif-sr-negative.png", crop=(0, 0, 1600, 420), colors=32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ohif", action="store_true", help="OHIF too (testing.ohif fetch)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="radrouter-viewing-"))
    try:
        with running_orthanc(workdir / "orthanc", dicomweb=args.ohif) as orthanc:
            print(f"Orthanc {orthanc.get('/system')['Version']} on port {orthanc.http_port}")
            with router_sending_to(orthanc, workdir / "router") as router:
                pacs = demo_study_in_pacs(workdir / "demo", orthanc, router)
                print(f"SR, SEG and KOS in Orthanc {pacs.seconds_to_results:.1f} s after the push")
                demo = Demo(pacs, router)
                negative = None
                if args.ohif:
                    negative = demo_study_in_pacs(
                        workdir / "negative", orthanc, router, nodule_mm=0.0, seed=2
                    )
                orthanc_explorer(workdir, demo)
                sr_as_text(workdir, demo)
                worklist_key_image(demo)
            if negative is not None:
                ohif(workdir, demo, negative)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
