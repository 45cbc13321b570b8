"""A dcmtk storescp standing in for the PACS that results are sent to, and waiting for the
objects it receives."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom

from testing.orthanc import free_port

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
AE_TITLE = "STORESCP"


@dataclass(frozen=True)
class ReceivingPacs:
    port: int
    folder: Path
    """Where storescp writes every object it receives."""
    ae_title: str = AE_TITLE

    def destination_yaml(self, timeout_s: float = 10) -> str:
        """The destination entry for a router configuration."""
        return (
            f"{{ae_title: {self.ae_title}, host: 127.0.0.1, port: {self.port}, "
            f"timeout_s: {timeout_s:g}}}"
        )

    def received(self, modality: str) -> dict[str, list[Path]]:
        """Complete received files of ``modality`` by StudyInstanceUID."""
        found: dict[str, list[Path]] = {}
        for path, ds in complete_objects(self.folder, stop_before_pixels=True):
            if ds.get("Modality") == modality:
                found.setdefault(str(ds.StudyInstanceUID), []).append(path)
        return found

    def wait_for(
        self, modality: str, study_uids: set[str], timeout_s: float = 240
    ) -> dict[str, list[Path]]:
        """Received ``modality`` files by study, once every study in ``study_uids`` has one."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.received(modality)
            if study_uids <= set(found):
                return found
            if time.monotonic() > deadline:
                missing = study_uids - set(found)
                raise AssertionError(f"no {modality} for {missing} within {timeout_s} s")
            time.sleep(0.25)


def complete_objects(
    folder: Path, *, stop_before_pixels: bool = False
) -> Iterator[tuple[Path, pydicom.Dataset]]:
    """Every object in ``folder`` that reads whole, in name order; a file storescp is still
    writing (no preamble yet, or cut short) is left for the next look."""
    for path in sorted(folder.iterdir()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except Exception:
            continue
        yield path, ds


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """Return once ``process`` (a storescp) accepts connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"storescp exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"storescp is not listening on {port} after {timeout_s} s")


@contextmanager
def running_storescp(folder: Path, port: int | None = None) -> Iterator[ReceivingPacs]:
    """dcmtk storescp on ``port`` (default: a free loopback port), writing to ``folder``;
    stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    process = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", AE_TITLE, "-od", str(folder), str(port)],
        env=DCMTK_ENV,
    )
    try:
        wait_listening(port, process)
        yield ReceivingPacs(port, folder)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
