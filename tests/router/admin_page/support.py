"""A router for the admin page's tests: a configuration file it runs from, two algorithms (one
that answers, one that crashes), and a PACS that is down until a test brings it up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydicom

from algorithms.registry import Registry
from config.schema import RouterConfig
from router.admin_page.api import AdminDependencies
from router.live_config import ConfigHolder
from router.store.database import Database
from testing.orthanc import free_port
from testing.plugins import AlwaysNegative, CrashingAlgorithm
from testing.router_process import (
    RouterUnderTest,
    StartRouter,
    storescu,
    study_uid_of,
    wait_state,
    write_series,
)

REGISTRY = Registry({"always_negative": AlwaysNegative, "crashing": CrashingAlgorithm})


def bare_admin(db: Database) -> AdminDependencies:
    """The admin page of an app built in-process: the default config (no file), no plugins."""
    return AdminDependencies(
        db=db,
        holder=ConfigHolder(RouterConfig(), None, {}),
        registry=Registry({}),
        readiness=lambda: {"ready": True},
    )


def admin_yaml(pacs_port: int) -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "destinations:\n"
        f"  pacs: {{ae_title: STORESCP, host: 127.0.0.1, port: {pacs_port}, timeout_s: 5}}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 2, study_idle_s: 5, "
        "hard_cap_s: 60}\n"
        "jobs: {retry: {max_attempts: 1}}\n"
        "dispatch: {retry: {max_attempts: 1, backoff_initial_s: 0.1}, probe_interval_s: 0, "
        "resend_dead_when_back: false}\n"
        "reload: {settle_s: 0.2}\n"
        "rules:\n"
        "  - name: crash-test\n"
        '    when: {Modality: CT, SeriesDescription: {regex: "(?i)crash"}}\n'
        "    run: crashing\n"
        "  - name: chest-ct\n"
        "    when: {Modality: CT}\n"
        "    run: always_negative\n"
        "    send_to: [pacs]\n"
    )


def start_admin_router(start_router: StartRouter) -> tuple[RouterUnderTest, int]:
    """The router and the port of its PACS (nothing listens there yet)."""
    pacs_port = free_port()
    router = start_router(admin_yaml(pacs_port), registry=REGISTRY, config_file=True)
    return router, pacs_port


def send_ct(router: RouterUnderTest, folder: Path, description: str) -> str:
    """C-STORE an 8-slice CT whose series has ``description``; its study UID once processed."""
    paths = write_series(folder)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        ds.save_as(path, enforce_file_format=True)
    storescu(router, paths)
    study_uid = study_uid_of(paths)
    wait_state(router, study_uid, {"done", "attention"})
    return study_uid


def get(router: RouterUnderTest, path: str) -> Any:
    response = httpx.get(f"http://127.0.0.1:{router.http_port}{path}", timeout=30)
    response.raise_for_status()
    return response.json()


def post(router: RouterUnderTest, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{router.http_port}{path}", json=body, timeout=60)
