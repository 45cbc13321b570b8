"""Debian's chromium, headless, driven through /usr/bin/chromedriver: nothing is downloaded.

The flags are what this kind of machine needs: no sandbox (tests may run as root), and no
background networking, component updates or sync (the machine's closed network refuses those
connections, many at a time). ``offline=True`` also makes every host but 127.0.0.1 unreachable,
as in a hospital network that blocks CDNs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ONLY_LOOPBACK = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


@contextmanager
def headless_chromium(
    profile_dir: Path,
    *,
    offline: bool = False,
    keep_logs: bool = False,
    webgl: bool = False,
    window_size: tuple[int, int] = (1400, 1000),
) -> Iterator[Any]:
    """A selenium driver; ``keep_logs`` records the console and network log for the test;
    ``webgl`` gives WebGL through SwiftShader, on the CPU (OHIF draws with it)."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        raise RuntimeError("chromium and chromium-driver are needed: run scripts/test.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless",
        "--no-sandbox",
        *(
            ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
            if webgl
            else ["--disable-gpu"]
        ),
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        f"--window-size={window_size[0]},{window_size[1]}",
        *([ONLY_LOOPBACK] if offline else []),
    ):
        options.add_argument(argument)
    if keep_logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
