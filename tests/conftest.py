"""Shared fixtures: a real Orthanc, synthetic chest CTs, and an in-process router."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from algorithms.registry import Registry
from config.loader import parse_config
from router.service import RouterService
from testing.orthanc import Orthanc, free_port, running_orthanc
from testing.router_process import RouterUnderTest, StartRouter
from testing.storescp import ReceivingPacs, running_storescp


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as client:
        yield client


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[ReceivingPacs]:
    """A dcmtk storescp standing in for the PACS that results go to."""
    with running_storescp(tmp_path / "pacs") as pacs:
        yield pacs


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[StartRouter]:
    """Start an in-process router with the given YAML (``{port}`` is replaced); with
    ``config_file``, the YAML is written to ``tmp_path/radrouter.yaml`` and the router runs
    from that file (live reload, the admin page's apply)."""
    started: list[RouterService] = []

    def start(
        yaml_text: str,
        data_dir: Path | None = None,
        registry: Registry | None = None,
        *,
        config_file: bool = False,
    ) -> RouterUnderTest:
        port = free_port()
        text = yaml_text.replace("{port}", str(port))
        config_path = tmp_path / "radrouter.yaml" if config_file else None
        if config_path is not None:
            config_path.write_text(text, encoding="utf-8")
        config = parse_config(text, str(config_path or "test.yaml"))
        service = RouterService(
            config, config_path, data_dir=data_dir or tmp_path / "data", registry=registry
        )
        service.start()
        started.append(service)
        assert service.http_port is not None
        return RouterUnderTest(service, service.node.port, service.http_port)

    yield start
    for service in started:
        service.stop()
