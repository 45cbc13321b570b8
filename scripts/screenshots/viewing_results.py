"""Screenshots for docs/viewing-results.md: a real study through radrouter, seen in viewers.

    .venv/bin/python scripts/screenshots/viewing_results.py [--ohif-dist DIR] [--keep]

1. ``radrouter demo-study`` (a synthetic chest CT with a 12 mm nodule) is uploaded to a
   throwaway Orthanc (Debian package, loopback, with the DICOMweb plug-in when installed);
2. Orthanc pushes it by C-STORE to an in-process router whose rule runs ``lung_nodule`` and
   sends the results back to that Orthanc, as a PACS auto-routing rule would;
3. when the SR, SEG and KOS are in Orthanc's copy of the study, headless chromium (Debian's,
   through /usr/bin/chromedriver) writes, under ``docs/img/viewing/``:
   ``orthanc-study.png`` (Orthanc Explorer's study page: the AI series next to the CT),
   ``sr-dsr2html.png`` (the SR from Orthanc, rendered by dcmtk's dsr2html) and
   ``worklist-key-image.png`` (the router's worklist thumbnail of the result);
4. with ``--ohif-dist DIR`` (the ``dist`` folder of the npm package ``@ohif/app``, unpacked
   outside the repository), OHIF is served on loopback with a same-origin proxy to Orthanc's
   DICOMweb and the study opened in it: ``ohif-kos.png``, ``ohif-seg.png``, ``ohif-sr.png``,
   and ``ohif-sr-without-study-level-group.png`` (an experiment: the SR in Orthanc replaced
   by a copy without its TID 1501 group, so run it last).

Everything runs on 127.0.0.1 in a temporary folder; nothing is downloaded. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from config.loader import parse_config  # noqa: E402
from router.demo import write_demo_study  # noqa: E402
from router.service import RouterService, wait_for  # noqa: E402
from testing.browser import CHROMEDRIVER, CHROMIUM, headless_chromium  # noqa: E402
from testing.orthanc import ORTHANC_BINARY, Orthanc, free_port  # noqa: E402
from testing.router_process import router_yaml  # noqa: E402

OUT = REPO / "docs" / "img" / "viewing"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
RESULT_MODALITIES = {"SR", "SEG", "KO"}


# --- Orthanc with the DICOMweb plug-in -------------------------------------------------------


@contextmanager
def orthanc_with_dicomweb(workdir: Path) -> Iterator[Orthanc]:
    """testing.orthanc.running_orthanc's configuration, plus the DICOMweb plug-in if present."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config: dict[str, Any] = {
        "Name": "radrouter-demo-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {},
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
        "StableAge": 1,
        "DicomServerEnabled": True,
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        [ORTHANC_BINARY, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
    )
    client = Orthanc(http_port, dicom_port, "ORTHANC")
    try:
        if not wait_for(lambda: _answers(client), 30, 0.1):
            raise RuntimeError((workdir / "orthanc.log").read_text()[-2000:])
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=15)
        log.close()


def _answers(client: Orthanc) -> bool:
    try:
        client.get("/system")
        return True
    except httpx.HTTPError:
        return False


# --- the study through radrouter ---------------------------------------------------------------


@dataclass
class Demo:
    orthanc: Orthanc
    study_id: str
    """Orthanc's ID of the study."""
    study_uid: str
    router: RouterService


@contextmanager
def study_through_radrouter(workdir: Path, orthanc: Orthanc) -> Iterator[Demo]:
    """Demo CT into Orthanc, Orthanc -> radrouter -> Orthanc; the router runs until the end."""
    demo = write_demo_study(  # what `radrouter demo-study DIR` writes (its defaults)
        workdir / "demo", seed=1, slices=120, size=384, slice_spacing_mm=2.0, nodule_mm=12.0
    )
    print(f"demo study: {len(demo.paths)} slices, nodule at slice {demo.nodule_voxel}")
    study_id = ""
    for path in demo.paths:
        study_id = orthanc.upload(path)
    port = free_port()
    config = parse_config(router_yaml(orthanc).replace("{port}", str(port)), "viewing.yaml")
    router = RouterService(config, data_dir=workdir / "router")
    router.start()
    try:
        orthanc.add_modality("radrouter", "RADROUTER", router.node.port)
        started = time.time()
        orthanc.push_to_modality("radrouter", [study_id])

        def results_back() -> bool:
            try:
                series = orthanc.get(f"/studies/{study_id}")["Series"]
                found = {
                    orthanc.get(f"/series/{s}")["MainDicomTags"].get("Modality") for s in series
                }
            except httpx.HTTPError:  # Orthanc now and then drops a kept-alive connection
                return False
            return found >= RESULT_MODALITIES

        if not wait_for(results_back, 180, 0.5):
            view = router_api(router, f"/studies/{demo.study_instance_uid}")
            raise RuntimeError(f"no SR, SEG and KOS in Orthanc: {str(view)[:2000]}")
        print(f"SR, SEG and KOS in Orthanc {time.time() - started:.1f} s after the push")
        yield Demo(orthanc, study_id, demo.study_instance_uid, router)
    finally:
        router.stop()


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


def ohif_server(dist: Path, orthanc: Orthanc) -> http.server.ThreadingHTTPServer:
    """Serve OHIF's dist (index.html for unknown paths, as an SPA host does) and forward
    /dicom-web/ to Orthanc, so the viewer and the data share one origin (no CORS)."""
    upstream = f"http://127.0.0.1:{orthanc.http_port}"

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(dist), **kwargs)

        def end_headers(self) -> None:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            super().end_headers()

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path.startswith("/dicom-web/"):
                self._forward()
                return
            if path == "/app-config.js":
                body = OHIF_CONFIG.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/javascript")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if not (dist / path.lstrip("/")).is_file():
                self.path = "/index.html"
            super().do_GET()

        def _forward(self) -> None:
            # The Host header too: Orthanc's DICOMweb builds its retrieve and bulk data URLs
            # from it, so they point at this server and stay same-origin.
            wanted = {"accept", "range", "host"}
            headers = {k: v for k, v in self.headers.items() if k.lower() in wanted}
            with httpx.Client(timeout=60) as client:
                answer = client.get(upstream + self.path, headers=headers)
            self.send_response(answer.status_code)
            for key in ("Content-Type",):
                if key in answer.headers:
                    self.send_header(key, answer.headers[key])
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            # The viewer may have navigated away (the experiment reloads the page).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(answer.content)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


OHIF_CONFIG = """
window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (loopback)',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


@contextmanager
def chromium_with_webgl(profile_dir: Path) -> Iterator[Any]:
    """testing.browser's flags, but WebGL through SwiftShader (OHIF renders with WebGL)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless",
        "--no-sandbox",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--ignore-gpu-blocklist",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        "--window-size=1600,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


FIND_TEXT = """
const wanted = arguments[0];
return [...document.querySelectorAll('body *')].filter(e => e.offsetParent !== null
    && e.innerText && e.innerText.trim() === wanted
    && ![...e.children].some(c => c.innerText && c.innerText.trim() === wanted));
"""


def key_image_instance_number(demo: Demo) -> int:
    """Instance Number of the KOS's (first) key image, as Orthanc has it."""
    import pydicom

    orthanc = demo.orthanc
    kos = pydicom.dcmread(
        io.BytesIO(orthanc.instance_file(orthanc.modality_instances(demo.study_id, "KO")[0]))
    )
    evidence = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    sop_uid = evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    found = orthanc.http.post("/tools/lookup", content=str(sop_uid).encode()).json()
    instance = orthanc.get(f"/instances/{found[0]['ID']}")
    return int(instance["MainDicomTags"]["InstanceNumber"])


def ohif(workdir: Path, demo: Demo, dist: Path) -> None:
    """OHIF's default mode on the study: the KOS's message, the SEG hydrated on the CT at the
    key slice, and what happens to the SR. Each step is looked for, not assumed: a later
    OHIF that behaves differently gives different pictures and says so on stdout."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server = ohif_server(dist, demo.orthanc)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"OHIF {ohif_version(dist)} on {base}")

    def page_text() -> str:
        return str(driver.find_element(By.TAG_NAME, "body").text)

    def click(text: str, double: bool = False) -> bool:
        found = driver.execute_script(FIND_TEXT, text)
        if found:
            actions = ActionChains(driver)
            (actions.double_click(found[0]) if double else actions.click(found[0])).perform()
        return bool(found)

    def shown_instance() -> int | None:
        match = re.search(r"I:\s*(\d+) \(\d+/\d+\)", page_text())
        return int(match.group(1)) if match else None

    try:
        with chromium_with_webgl(workdir / "chromium-ohif") as driver:
            driver.get(f"{base}/viewer?StudyInstanceUIDs={demo.study_uid}")
            if not wait_for(lambda: shown_instance() is not None, 90, 0.5):
                raise RuntimeError(f"OHIF showed no image: {page_text()[-1000:]}")
            time.sleep(2)
            for text in ("Confirm and hide", "Skip all"):  # the banner and the tour
                click(text)
            time.sleep(1)

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
                wait_for(lambda: "Display Set Messages" in page_text(), 10, 0.2)
                message = page_text().partition("Display Set Messages")[2].strip()
                print("KOS:", message.splitlines()[0] if message else "no message shown")
                save_png(driver, OUT / "ohif-kos.png", crop=(0, 50, 620, 520))
            else:
                print("KOS: no warning on its series")

            # The SEG: double-click, accept, step to the key slice, open the panel.
            click("SEG", double=True)
            if wait_for(lambda: "open this Segmentation" in page_text(), 30, 0.3):
                click("Yes")
            time.sleep(5)
            target = key_image_instance_number(demo)
            ActionChains(driver).move_to_element(
                driver.find_element(By.CSS_SELECTOR, "canvas")
            ).click().perform()
            for _ in range(130):
                shown = shown_instance()
                if shown is None or shown == target:
                    break
                key = Keys.ARROW_DOWN if shown > target else Keys.ARROW_UP
                ActionChains(driver).send_keys(key).perform()
                time.sleep(0.3)
            print(f"SEG: at instance {shown_instance()} (key image {target})")
            driver.find_element(By.ID, "panelSegmentation-btn").click()
            time.sleep(3)
            save_png(driver, OUT / "ohif-seg.png", colors=64)

            # The SR.
            driver.get_log("browser")  # drop what came before
            click("SR", double=True)
            wait_for(lambda: "went wrong" in page_text(), 15, 0.2)
            save_png(driver, OUT / "ohif-sr.png", colors=64)
            for entry in driver.get_log("browser"):
                message = str(entry["message"])
                if "rehydratable" in message or "Error" in message:
                    print("SR console:", message[:240])

            # Experiment: the same SR without its study-level group (TID 1501, no image
            # region), in place of the original, opened in a fresh viewer.
            replace_sr_without_study_level_group(demo)
            driver.get(f"{base}/viewer?StudyInstanceUIDs={demo.study_uid}")
            wait_for(lambda: shown_instance() is not None, 90, 0.5)
            time.sleep(2)
            for text in ("Confirm and hide", "Skip all"):
                click(text)
                time.sleep(1)
            click("SR", double=True)
            shown = wait_for(lambda: "Long axis" in page_text(), 20, 0.3)
            time.sleep(1)
            print("SR without the study-level group:", "drawn" if shown else "not drawn")
            save_png(driver, OUT / "ohif-sr-without-study-level-group.png", colors=64)
    finally:
        server.shutdown()


def replace_sr_without_study_level_group(demo: Demo) -> None:
    """Replace the SR in Orthanc by a copy without the TID 1501 group (new series and SOP
    Instance UIDs, a Series Description that says so). Only for the OHIF experiment."""
    import pydicom
    from pydicom.uid import generate_uid

    orthanc = demo.orthanc
    sr_id = orthanc.modality_instances(demo.study_id, "SR")[0]
    sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(sr_id)))
    measurements = next(
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    )
    measurements.ContentSequence = [
        group
        for group in measurements.ContentSequence
        if not any(
            getattr(item, "TextValue", "") == "Study-level assessment"
            for item in group.ContentSequence
        )
    ]
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.SeriesInstanceUID = generate_uid()
    sr.SeriesDescription = "EXPERIMENT: SR without study-level group"
    orthanc.http.delete(f"/instances/{sr_id}").raise_for_status()
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    orthanc.http.post("/instances", content=buffer.getvalue()).raise_for_status()


def ohif_version(dist: Path) -> str:
    package = dist.parent / "package.json"
    return str(json.loads(package.read_text())["version"]) if package.exists() else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ohif-dist", type=Path, help="the dist folder of @ohif/app")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="radrouter-viewing-"))
    try:
        with orthanc_with_dicomweb(workdir / "orthanc") as orthanc:
            print(f"Orthanc {orthanc.get('/system')['Version']} on port {orthanc.http_port}")
            with study_through_radrouter(workdir, orthanc) as demo:
                orthanc_explorer(workdir, demo)
                sr_as_text(workdir, demo)
                worklist_key_image(demo)
                if args.ohif_dist is not None:
                    ohif(workdir, demo, args.ohif_dist.resolve())
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
