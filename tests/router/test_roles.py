"""The router split into its roles (``radrouter serve --role``), each a process of its own,
sharing one PostgreSQL database and one data folder, as on several hosts: a receiver takes the
study, the dispatcher completes and plans it, a worker runs the model, the dispatcher sends
the result; the API lists every live node. Workers killed (-9) mid-job ten times: every study
ends with one result, sent once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from router.roles import Role
from router.service import wait_for
from router.store.database import Database
from router.store.open import database_at
from testing.dicom_tools import make_ct_slices
from testing.orthanc import free_port
from testing.postgres import PostgresServer
from testing.router_process import DCMTK_ENV
from testing.storescp import ReceivingPacs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


class Deployment:
    """Role processes started from one config file, each logging to a file of its own."""

    def __init__(self, root: Path, url: str, pacs: ReceivingPacs, extra: str = "") -> None:
        self.root = root
        self.dicom_port, self.http_port = free_port(), free_port()
        self.config = root / "radrouter.yaml"
        self.config.write_text(
            f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {self.dicom_port}}}\n"
            f"http: {{host: 127.0.0.1, port: {self.http_port}}}\n"
            f"storage: {{data_dir: {root / 'data'}, database: {{engine: postgresql, "
            f"url: '{url}'}}}}\n"
            f"destinations:\n  pacs: {pacs.destination_yaml()}\n"
            f"{extra}"
            "completion: {settle_after_release_s: 0.2, series_idle_s: 2, study_idle_s: 20}\n"
            "rules:\n"
            "  - {name: ct, when: {Modality: CT}, run: lung_nodule, send_to: [pacs]}\n",
            encoding="utf-8",
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: Role, index: int = 1) -> subprocess.Popen[bytes]:
        name = f"{role}{index}"
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "--config", str(self.config),
             "--role", role, "--index", str(index)],
            stdout=log, stderr=log, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def nodes(self) -> list[dict[str, object]]:
        try:
            body = httpx.get(f"http://127.0.0.1:{self.http_port}/readyz", timeout=5).json()
        except httpx.HTTPError:
            return []
        return list(body.get("detail", body).get("nodes", []))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.root.glob("*.log"))
        )


@pytest.fixture
def deployment(
    postgres: PostgresServer,
    storescp: ReceivingPacs,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    extra = request.node.get_closest_marker("deployment_yaml")
    running = Deployment(
        tmp_path, postgres.create_database(), storescp, extra.args[0] if extra else ""
    )
    yield running
    running.stop()


def send_study(port: int, folder: Path, slices: int = 24) -> str:
    folder.mkdir()
    paths = []
    for ds in make_ct_slices(slices, rows=128, cols=128):
        ds.ImagesInAcquisition = slices
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    subprocess.run(
        ["/usr/bin/storescu", "-aet", "PACS", "-aec", "RADROUTER", "127.0.0.1", str(port),
         *paths],
        check=True, capture_output=True, env=DCMTK_ENV, timeout=120,
    )  # fmt: skip
    return str(pydicom.dcmread(paths[0]).StudyInstanceUID)


def roles_of(nodes: list[dict[str, object]]) -> list[str]:
    return sorted(str(node["role"]) for node in nodes)


def test_a_study_passes_through_four_role_processes(
    deployment: Deployment, storescp: ReceivingPacs, postgres: PostgresServer, tmp_path: Path
) -> None:
    deployment.start("dispatcher")
    deployment.start("worker")
    deployment.start("receiver")
    deployment.start("api")
    ready = wait_for(
        lambda: roles_of(deployment.nodes()) == ["api", "dispatcher", "receiver", "worker"], 120
    )
    assert ready, deployment.logs()
    [worker] = [node for node in deployment.nodes() if node["role"] == "worker"]
    assert worker["algorithms"] == ["lung_nodule"] and worker["devices"] == {"lung_nodule": "cpu"}

    study_uid = send_study(deployment.dicom_port, tmp_path / "ct")
    storescp.wait_for("SR", {study_uid}, 120)
    db = database_at(str(deployment.config.read_text().split("url: '")[1].split("'")[0]))
    try:
        [job] = db.query("SELECT claimed_by, state FROM jobs WHERE study_uid = ?", (study_uid,))
        assert job["state"] == "done" and f".{worker_host(worker)}-worker1/" in job["claimed_by"]
        [association] = db.query("SELECT id FROM associations")
        assert "-receiver1-" in association["id"], "the receiver process took the study"
        assert len(storescp.received("SR")[study_uid]) == 1
    finally:
        db.close_all()
    for through in ([], ["--no-api"]):  # the api process, then the database itself
        status = subprocess.run(
            [sys.executable, "-m", "router.cli", "status", "--config", str(deployment.config),
             *through],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        nodes = status.stdout.split("\n\n")[0].splitlines()
        assert nodes[0] == "nodes:" and sorted(line.split()[0] for line in nodes[1:]) == [
            "api", "dispatcher", "receiver", "worker",
        ], status.stdout  # fmt: skip
        assert "lung_nodule (cpu)" in status.stdout
        expected = "router API" if not through else "postgresql 127.0.0.1"
        assert expected in status.stderr, status.stderr


def worker_host(node: dict[str, object]) -> str:
    return str(node["host"])


def test_workers_killed_mid_job_ten_times_lose_nothing(
    deployment: Deployment, storescp: ReceivingPacs, tmp_path: Path
) -> None:
    """Two receivers on one port, two worker processes; ten studies; each time a worker has a job running, it is killed
    (-9) at a random moment of it and started again. Every study ends with exactly one result,
    sent once; the interrupted attempts are recorded."""
    deployment.start("dispatcher")
    deployment.start("receiver", 1)
    deployment.start("receiver", 2)
    deployment.start("worker", 1)
    deployment.start("worker", 2)
    deployment.start("api")
    assert wait_for(lambda: len(deployment.nodes()) == 6, 120), deployment.logs()
    url = deployment.config.read_text().split("url: '")[1].split("'")[0]
    db = database_at(url)
    rng = random.Random(7)
    studies: list[str] = []
    kills = 0
    try:
        for number in range(10):
            studies.append(send_study(deployment.dicom_port, tmp_path / f"s{number}", 48))
            running = _running_job(db, studies[-1], 60)
            assert running is not None, deployment.logs()
            worker = "worker1" if "-worker1/" in running else "worker2"
            time.sleep(rng.uniform(0.0, 0.3))
            deployment.kill(worker)
            kills += 1
            deployment.start("worker", int(worker[-1]))
        storescp.wait_for("SR", set(studies), 300)
        time.sleep(3)  # a second version, were one made, would come now
        interrupted = 0
        for study_uid in studies:
            results = db.query("SELECT id FROM results WHERE study_uid = ?", (study_uid,))
            assert len(results) == 1, study_uid
            [job] = db.query("SELECT state, attempts FROM jobs WHERE study_uid = ?", (study_uid,))
            assert job["state"] == "done"
            interrupted += int(job["attempts"]) > 1
            assert len(storescp.received("SR")[study_uid]) == 1
        assert kills == 10 and interrupted >= 5, f"{interrupted} jobs were interrupted"
        print(f"\n10 kills of a worker mid-job: {interrupted} jobs interrupted and run again; "
              "every study one result, sent once")  # fmt: skip
    finally:
        db.close_all()


def _running_job(db: Database, study_uid: str, timeout_s: float) -> str | None:
    """The ``claimed_by`` of the study's job once it runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = db.query_one(
            "SELECT claimed_by FROM jobs WHERE study_uid = ? AND state = 'running'", (study_uid,)
        )
        if row is not None:
            return str(row["claimed_by"])
        time.sleep(0.02)
    return None


def test_postgresql_restarted_under_load_loses_nothing(
    deployment: Deployment, storescp: ReceivingPacs, postgres: PostgresServer, tmp_path: Path
) -> None:
    """Three studies sent at once while PostgreSQL is restarted: instances that got a
    failure status are resent (as a PACS retries); every node reconnects, every study is
    whole and gets one result, sent once."""
    for role in ("dispatcher", "receiver", "worker", "api"):
        deployment.start(role)
    assert wait_for(lambda: len(deployment.nodes()) == 4, 120), deployment.logs()
    folders = [tmp_path / f"s{n}" for n in range(3)]
    outcomes: list[str | None] = [None] * 3

    def send(n: int) -> None:
        try:
            outcomes[n] = send_study(deployment.dicom_port, folders[n], 60)
        except subprocess.CalledProcessError:
            outcomes[n] = None  # some instances refused while the database was away

    senders = [threading.Thread(target=send, args=(n,)) for n in range(3)]
    for sender in senders:
        sender.start()
    time.sleep(0.5)
    postgres.restart("fast")
    for sender in senders:
        sender.join()
    studies = []
    for folder in folders:  # the PACS resends what was refused (here: everything)
        paths = sorted(str(p) for p in folder.glob("*.dcm"))
        subprocess.run(
            ["/usr/bin/storescu", "-aet", "PACS", "-aec", "RADROUTER", "127.0.0.1",
             str(deployment.dicom_port), *paths],
            check=True, capture_output=True, env=DCMTK_ENV, timeout=120,
        )  # fmt: skip
        studies.append(str(pydicom.dcmread(paths[0]).StudyInstanceUID))
    storescp.wait_for("SR", set(studies), 180)
    time.sleep(3)
    url = deployment.config.read_text().split("url: '")[1].split("'")[0]
    db = database_at(url)
    try:
        for study_uid in studies:
            count = db.query_one(
                "SELECT COUNT(*) AS n FROM instances WHERE study_uid = ?", (study_uid,)
            )
            assert count is not None and count["n"] == 60
            assert len(db.query("SELECT id FROM results WHERE study_uid = ?", (study_uid,))) == 1
            assert len(storescp.received("SR")[study_uid]) == 1
        assert wait_for(lambda: len(deployment.nodes()) == 4, 30), "a node did not come back"
        refused = sum(outcome is None for outcome in outcomes)
        print(f"\nPostgreSQL restarted under 3 sends: {refused} of 3 had instances refused; "
              "every study whole, one result, sent once")  # fmt: skip
    finally:
        db.close_all()


@pytest.mark.deployment_yaml("algorithms: {lung_nodule: {device: cuda}}\n")
def test_a_cpu_worker_leaves_a_gpu_job_queued(deployment: Deployment, tmp_path: Path) -> None:
    """lung_nodule configured for a GPU; this host has none: the worker loads it (on its CPU,
    as a one-process router would run it) but claims none of its jobs, and says so."""
    for role in ("dispatcher", "receiver", "worker", "api"):
        deployment.start(role)
    assert wait_for(lambda: len(deployment.nodes()) == 4, 120), deployment.logs()
    [worker] = [node for node in deployment.nodes() if node["role"] == "worker"]
    assert worker["algorithms"] == [] and worker["devices"] == {"lung_nodule": "cpu"}
    study_uid = send_study(deployment.dicom_port, tmp_path / "ct")
    url = deployment.config.read_text().split("url: '")[1].split("'")[0]
    db = database_at(url)
    try:
        assert wait_for(
            lambda: (
                db.query_one("SELECT 1 FROM jobs WHERE study_uid = ?", (study_uid,)) is not None
            ),
            60,
        )
        time.sleep(5)
        [job] = db.query("SELECT state, attempts FROM jobs WHERE study_uid = ?", (study_uid,))
        assert (job["state"], job["attempts"]) == ("queued", 0)
    finally:
        db.close_all()
