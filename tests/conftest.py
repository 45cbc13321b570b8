"""Shared fixtures: a real Orthanc, synthetic chest CTs, and an in-process router."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from algorithms.registry import Registry
from config.loader import parse_config
from router.service import RouterService
from tests.orthanc import Orthanc, free_port, running_orthanc
from tests.storescp import ReceivingPacs, running_storescp


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as client:
        yield client


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[ReceivingPacs]:
    """A dcmtk storescp standing in for the PACS that results go to."""
    with running_storescp(tmp_path / "pacs") as pacs:
        yield pacs


class StartRouter(Protocol):
    def __call__(
        self, yaml_text: str, data_dir: Path | None = None, registry: Registry | None = None
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


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[StartRouter]:
    """Start an in-process router with the given YAML (``{port}`` is replaced)."""
    started: list[RouterService] = []

    def start(
        yaml_text: str, data_dir: Path | None = None, registry: Registry | None = None
    ) -> RouterUnderTest:
        port = free_port()
        config = parse_config(yaml_text.replace("{port}", str(port)), "test.yaml")
        service = RouterService(config, data_dir=data_dir or tmp_path / "data", registry=registry)
        service.start()
        started.append(service)
        assert service.http_port is not None
        return RouterUnderTest(service, service.node.port, service.http_port)

    yield start
    for service in started:
        service.stop()
