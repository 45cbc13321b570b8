"""OHIF, the web viewer, as the tests and the screenshots run it: the prebuilt viewer of the npm
package ``@ohif/app`` (its ``dist`` folder; nothing is built from source), served on loopback
with a same-origin proxy to Orthanc's DICOMweb, in Debian's chromium with WebGL.

``python -m testing.ohif fetch`` (run by ``scripts/setup.sh``) downloads the pinned package
from the npm registry once, checks it against the registry's SHA-512 integrity value written
here, and unpacks its ``dist`` under ``.cache/ohif/VERSION/`` in the checkout. Tests never
download: without that folder the OHIF tests are skipped with the command to run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from router.service import wait_for
from testing.orthanc import Orthanc

OHIF_VERSION = "3.13.2"
OHIF_TARBALL = f"https://registry.npmjs.org/@ohif/app/-/app-{OHIF_VERSION}.tgz"
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
"""The ``dist.integrity`` the npm registry gives for that version (Subresource Integrity)."""
REPO = Path(__file__).resolve().parents[1]
OHIF_DIST = Path(
    os.environ.get("RADROUTER_OHIF_DIST", REPO / ".cache" / "ohif" / OHIF_VERSION / "dist")
)
FETCH_COMMAND = ".venv/bin/python -m testing.ohif fetch"

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
"""OHIF's configuration: one data source, Orthanc's DICOMweb behind the same origin."""


def fetch_ohif(target: Path = OHIF_DIST) -> Path:
    """Download ``@ohif/app`` OHIF_VERSION, check its integrity, unpack ``dist`` to ``target``
    (nothing to do when it is there). Set-up only, never from a test."""
    if (target / "index.html").is_file():
        return target
    algorithm, _, expected = OHIF_INTEGRITY.partition("-")
    with urllib.request.urlopen(OHIF_TARBALL, timeout=600) as answer:
        tarball = answer.read()
    digest = base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode()
    if digest != expected:
        raise RuntimeError(f"{OHIF_TARBALL}: {algorithm} {digest}, expected {expected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="unpacking-", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            archive.extractall(staging, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        (staging / "package" / "dist").rename(target)
        (staging / "package" / "package.json").rename(target.parent / "package.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ohif_version(dist: Path) -> str:
    package = dist.parent / "package.json"
    return str(json.loads(package.read_text())["version"]) if package.exists() else "?"


@contextmanager
def serving_ohif(dist: Path, orthanc: Orthanc) -> Iterator[str]:
    """Serve OHIF's ``dist`` (``index.html`` for unknown paths, as an SPA host does) with
    :data:`OHIF_CONFIG`, and forward ``/dicom-web/`` to Orthanc, so that viewer and data share
    one origin (OHIF sends Cross-Origin-Embedder-Policy). Yields the base URL."""
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
                self._answer(200, "application/javascript", OHIF_CONFIG.encode())
                return
            if not (dist / path.lstrip("/")).is_file():
                self.path = "/index.html"
            super().do_GET()

        def _answer(self, status: int, content_type: str | None, body: bytes) -> None:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The viewer may have navigated away meanwhile.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def _forward(self) -> None:
            # The Host header too: Orthanc's DICOMweb builds its retrieve and bulk data URLs
            # from it, so they point at this server and stay same-origin.
            wanted = {"accept", "range", "host"}
            headers = {k: v for k, v in self.headers.items() if k.lower() in wanted}
            with httpx.Client(timeout=60) as client:
                answer = client.get(upstream + self.path, headers=headers)
            self._answer(answer.status_code, answer.headers.get("Content-Type"), answer.content)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


_FIND_TEXT = """
const wanted = arguments[0];
return [...document.querySelectorAll('body *')].filter(e => e.offsetParent !== null
    && e.innerText && e.innerText.trim() === wanted
    && ![...e.children].some(c => c.innerText && c.innerText.trim() === wanted));
"""
_VIEWPORT_RECT = """
const canvas = [...document.querySelectorAll('canvas')]
    .filter(c => c.offsetParent !== null && c.width > 100 && c.height > 100)[0];
if (!canvas) { return null; }
const r = canvas.getBoundingClientRect();
return [r.left, r.top, r.width, r.height, window.devicePixelRatio];
"""


@dataclass
class OhifViewer:
    """A selenium driver on OHIF's viewer, with what the tests look for."""

    driver: Any
    base_url: str

    def open_study(self, study_uid: str, timeout_s: float = 120.0) -> None:
        """Open the viewer on a study; returns once an image is shown and the welcome banner
        and the tour are dismissed."""
        self.driver.get(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}")
        if not wait_for(lambda: self.shown_instance() is not None, timeout_s, 0.3):
            raise AssertionError(f"OHIF showed no image: {self.page_text()[-1000:]}")
        time.sleep(2)
        for text in ("Confirm and hide", "Skip all"):
            self.click(text)
            time.sleep(0.5)

    def page_text(self) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def click(self, text: str, *, double: bool = False) -> bool:
        """Click the innermost visible element whose text is ``text``; False if none."""
        from selenium.webdriver.common.action_chains import ActionChains

        found = self.driver.execute_script(_FIND_TEXT, text)
        if found:
            actions = ActionChains(self.driver)
            (actions.double_click(found[0]) if double else actions.click(found[0])).perform()
        return bool(found)

    def shown_instance(self) -> int | None:
        """The Instance Number in the viewport's overlay ("I: 72 (49/120)")."""
        match = re.search(r"I:\s*(\d+) \(\d+/\d+\)", self.page_text())
        return int(match.group(1)) if match else None

    def go_to_instance(self, instance_number: int) -> int | None:
        """Step the viewport (arrow keys) to ``instance_number``; the instance reached."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        canvas = self.driver.find_element(By.CSS_SELECTOR, "canvas")
        ActionChains(self.driver).move_to_element(canvas).click().perform()
        for _ in range(400):
            shown = self.shown_instance()
            if shown is None or shown == instance_number:
                break
            key = Keys.ARROW_DOWN if shown > instance_number else Keys.ARROW_UP
            ActionChains(self.driver).send_keys(key).perform()
            time.sleep(0.2)
        return self.shown_instance()

    def console_errors(self) -> list[str]:
        """SEVERE entries of the browser console since the last call."""
        return [
            str(entry["message"])
            for entry in self.driver.get_log("browser")
            if entry.get("level") == "SEVERE"
        ]

    def screenshot(self, target: Path) -> Any:
        """Save a PNG of the page to ``target``; returns it as a PIL image (RGB)."""
        from PIL import Image

        target.parent.mkdir(parents=True, exist_ok=True)
        if not self.driver.save_screenshot(str(target)):
            raise AssertionError(f"no screenshot for {target}")
        return Image.open(target).convert("RGB")

    def viewport_box(self) -> tuple[int, int, int, int] | None:
        """The main viewport's canvas as (left, top, right, bottom) screenshot pixels."""
        rect = self.driver.execute_script(_VIEWPORT_RECT)
        if rect is None:
            return None
        left, top, width, height, ratio = (float(v) for v in rect)
        return (
            int(left * ratio),
            int(top * ratio),
            int((left + width) * ratio),
            int((top + height) * ratio),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description="OHIF for radrouter's viewer tests")
    parser.add_argument("action", choices=["fetch"])
    parser.parse_args()
    dist = fetch_ohif()
    print(f"OHIF {ohif_version(dist)} in {dist}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
