"""Shared fixtures: a real Orthanc, synthetic chest CTs, and an in-process router."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from algorithms.registry import Registry
from config.loader import parse_config
from router.service import RouterService
from router.store.database import Database
from router.store.open import database_at
from testing.orthanc import Orthanc, free_port, running_orthanc
from testing.postgres import PostgresServer, running_postgres
from testing.router_process import RouterUnderTest, StartRouter
from testing.storescp import ReceivingPacs, running_storescp


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as client:
        yield client


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster (initdb, pg_ctl) on a free loopback port."""
    with running_postgres() as server:
        yield server


ENGINES = ("sqlite", "postgresql")


def with_database(yaml_text: str, url: str) -> str:
    """The routing YAML with ``storage.database`` set to PostgreSQL at ``url`` (unless it
    names a database itself), so receiver processes reading the file use it too."""
    if not re.search(r"^storage\s*:", yaml_text, re.MULTILINE):  # text kept as written
        separator = "" if yaml_text.endswith("\n") or not yaml_text else "\n"
        return f"{yaml_text}{separator}storage:\n  database: {{engine: postgresql, url: '{url}'}}\n"
    yaml = YAML()
    document = yaml.load(yaml_text) or {}
    storage = document.setdefault("storage", {})
    if "database" not in storage:
        storage["database"] = {"engine": "postgresql", "url": url}
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


@pytest.fixture
def router_engine() -> str:
    """The database engine of the routers ``start_router`` starts: ``RADROUTER_TEST_ENGINE``
    (default sqlite); a test marked ``both_engines`` runs on each (``pytest_generate_tests``)."""
    engine = os.environ.get("RADROUTER_TEST_ENGINE", "sqlite")
    assert engine in ENGINES, f"RADROUTER_TEST_ENGINE={engine}: one of {ENGINES}"
    return engine


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "router_engine" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_engines"
    ):
        metafunc.parametrize("router_engine", ENGINES)


@pytest.fixture(params=ENGINES)
def database_locator(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's database is, on each engine in turn: a SQLite file, or a new database
    on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "db.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def database(database_locator: str) -> Iterator[Database]:
    """The state and queue layer on each engine (``database_locator``)."""
    db = database_at(database_locator)
    yield db
    db.close_all()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[ReceivingPacs]:
    """A dcmtk storescp standing in for the PACS that results go to."""
    with running_storescp(tmp_path / "pacs") as pacs:
        yield pacs


@pytest.fixture
def start_router(
    tmp_path: Path, router_engine: str, request: pytest.FixtureRequest
) -> Iterator[StartRouter]:
    """Start an in-process router with the given YAML (``{port}`` is replaced); with
    ``config_file``, the YAML is written to ``tmp_path/radrouter.yaml`` and the router runs
    from that file (live reload, the admin page's apply). On ``router_engine`` postgresql its
    state is a database of its own on the session's PostgreSQL (the same one each time the
    test starts a router again)."""
    started: list[RouterService] = []
    database_url: list[str] = []

    def start(
        yaml_text: str,
        data_dir: Path | None = None,
        registry: Registry | None = None,
        *,
        config_file: bool = False,
    ) -> RouterUnderTest:
        port = free_port()
        text = yaml_text.replace("{port}", str(port))
        if router_engine == "postgresql":
            if not database_url:
                server: PostgresServer = request.getfixturevalue("postgres")
                database_url.append(server.create_database())
            text = with_database(text, database_url[0])
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
