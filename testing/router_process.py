"""A router under test: its YAML, its ports, and the DICOM and HTTP calls tests make to it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pydicom

from algorithms.registry import Registry
from router.service import RouterService, wait_for
from testing.dicom_tools import make_ct_slices
from testing.orthanc import Orthanc
from testing.storescp import DCMTK_ENV as DCMTK_ENV  # re-exported: tests take it from here too


class StartRouter(Protocol):
    def __call__(
        self,
        yaml_text: str,
        data_dir: Path | None = None,
        registry: Registry | None = None,
        *,
        config_file: bool = False,
    ) -> RouterUnderTest: ...


@dataclass
class RouterUnderTest:
    service: RouterService
    dicom_port: int
    http_port: int


def router_yaml(
    pacs: Orthanc | None, *, pacs_port: int | None = None, extra: str = "", retry: str = ""
) -> str:
    destination = ""
    send_to = "[]"
    if pacs is not None or pacs_port is not None:
        port = pacs_port if pacs_port is not None else pacs.dicom_port  # type: ignore[union-attr]
        destination = f"destinations:\n  pacs: {{ae_title: ORTHANC, host: 127.0.0.1, port: {port}, timeout_s: 10}}\n"
        send_to = "[pacs]"
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"{destination}"
        "completion: {settle_after_release_s: 0.3, series_idle_s: 5, study_idle_s: 20, hard_cap_s: 300}\n"
        f"{retry}"
        "rules:\n"
        "  - name: chest-ct-lung-nodules\n"
        "    when: {Modality: CT, BodyPartExamined: {in: [CHEST, THORAX, LUNG]}, SliceThickness: {max: 3}}\n"
        "    run: lung_nodule\n"
        f"    send_to: {send_to}\n"
        f"{extra}"
    )


def write_series(folder: Path, n: int = 8) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in make_ct_slices(n):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu(router: RouterUnderTest, paths: list[Path], calling: str = "PACS") -> None:
    subprocess.run(
        [
            "/usr/bin/storescu",
            "-aet",
            calling,
            "-aec",
            "RADROUTER",
            "127.0.0.1",
            str(router.dicom_port),
            *map(str, paths),
        ],
        check=True,
        capture_output=True,
        env=DCMTK_ENV,
        timeout=60,
    )


def study_uid_of(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def api_get(router: RouterUnderTest, path: str) -> Any:
    return httpx.get(f"http://127.0.0.1:{router.http_port}{path}", timeout=10).json()


def wait_state(
    router: RouterUnderTest, study_uid: str, states: set[str], timeout_s: float = 60
) -> dict[str, Any]:
    view: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal view
        view = api_get(router, f"/studies/{study_uid}")
        return view.get("state") in states

    assert wait_for(reached, timeout_s, 0.1), f"study stuck in {view.get('state')}: {view}"
    return view
