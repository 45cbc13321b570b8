"""Installing for production, as the container image does, without a container engine.

The Dockerfile builds the wheel, installs it into a clean Python, copies the container config
(ports on every interface, the PACS from environment variables) and runs ``radrouter serve``
as an unprivileged user that owns only the data volume. The slow test repeats those steps here
(a fresh virtual environment, an unprivileged user, the same HEALTHCHECK command) and sends a
study through; the fast tests pin the container config, the serve command's config lookup and
the files that wire the image and the compose demo together.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage
from ruamel.yaml import YAML

from config.loader import check_exposure, load_config, load_default_config, read_config
from config.schema import DicomDestination
from router.cli import main as radrouter_main
from testing.orthanc import free_port
from testing.storescp import running_storescp
from testing.synthetic_dicom import new_patient_study, write_ct_series
from training.lung_nodule.synth import NoduleSpec, generate_chest_ct, right_lung_centre_mm

ROOT = Path(__file__).resolve().parents[1]
CONTAINER_CONFIG = ROOT / "config" / "container.yaml"
RUNTIME_PACKAGES = ("router", "algorithms", "dicom_sr", "worklist", "config")
NOT_SHIPPED = ("training", "testing", "tests", "benchmarks")
"""Build and test code: in the wheel at no depth (only the runtime packages are at its top)."""
DEV_ONLY_MODULES = ("torch", "onnx", "pytest", "ruff", "mypy", "selenium", "hypothesis")
SERVICE_USER = "radrouter"
"""Created as a system user when the tests run as root (as CI does), like the image's user."""
WHEEL_LIMIT_MB = 25
"""Weights, code and static files are ~4-8 MB; more means something that should not ship."""


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def shipped_algorithms() -> set[str]:
    return set(pyproject()["project"]["entry-points"]["radrouter.algorithms"])


def clear_radrouter_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RADROUTER_"):
            monkeypatch.delenv(name)


# --------------------------------------------------------------------------------------------
# The container config


def test_container_config_defaults_open_both_ports_and_name_the_compose_pacs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_radrouter_environment(monkeypatch)
    config = load_config(CONTAINER_CONFIG)
    assert (config.node.ae_title, config.node.bind, config.node.port) == (
        "RADROUTER",
        "0.0.0.0",
        11112,
    )
    assert (config.http.host, config.http.port) == ("0.0.0.0", 8080)
    assert config.storage.data_dir == Path("/var/lib/radrouter")
    pacs = config.destinations["pacs"]
    assert isinstance(pacs, DicomDestination)
    assert (pacs.ae_title, pacs.host, pacs.port) == ("ORTHANC", "orthanc", 4242)


def test_the_container_refuses_to_serve_unprotected_until_told_it_is_meant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_radrouter_environment(monkeypatch)
    refused = read_config(CONTAINER_CONFIG)
    assert refused.config.insecure is False
    problems = [str(issue) for issue in check_exposure(refused)]
    assert any("http" in p for p in problems) and any("allowed_callers" in p for p in problems)
    monkeypatch.setenv("RADROUTER_INSECURE", "true")
    meant = read_config(CONTAINER_CONFIG)
    assert meant.config.insecure is True and check_exposure(meant) == []


def test_container_config_takes_ports_and_pacs_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clear_radrouter_environment(monkeypatch)
    for name, value in {
        "RADROUTER_AE_TITLE": "AI_ROUTER",
        "RADROUTER_BIND": "127.0.0.1",
        "RADROUTER_DICOM_PORT": "10104",
        "RADROUTER_HTTP_PORT": "18080",
        "RADROUTER_DATA_DIR": str(tmp_path / "data"),
        "RADROUTER_PACS_AE_TITLE": "PACS1",
        "RADROUTER_PACS_HOST": "pacs.hospital.example",
        "RADROUTER_PACS_PORT": "104",
    }.items():
        monkeypatch.setenv(name, value)
    config = load_config(CONTAINER_CONFIG)
    assert (config.node.ae_title, config.node.bind, config.node.port) == (
        "AI_ROUTER",
        "127.0.0.1",
        10104,
    )
    assert (config.http.host, config.http.port) == ("127.0.0.1", 18080)
    assert config.storage.data_dir == tmp_path / "data"
    pacs = config.destinations["pacs"]
    assert isinstance(pacs, DicomDestination)
    assert (pacs.ae_title, pacs.host, pacs.port) == ("PACS1", "pacs.hospital.example", 104)


def test_container_config_routes_like_the_shipped_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only where it listens, keeps data and sends results may differ from the default."""
    clear_radrouter_environment(monkeypatch)
    container = load_config(CONTAINER_CONFIG).model_dump()
    default = load_default_config().model_dump()
    differing = {key for key in default if container[key] != default[key]}
    assert differing <= {"node", "http", "storage", "destinations"}, differing
    assert set(container["destinations"]) == set(default["destinations"])
    listening = {"ae_title": None, "bind": None, "port": None}
    assert container["node"] | listening == default["node"] | listening


def test_serve_takes_its_config_from_radrouter_config_unless_given_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from_env = tmp_path / "from-env.yaml"
    from_env.write_text("nodee: {}\n", encoding="utf-8")  # invalid: serve stops at the config
    given = tmp_path / "given.yaml"
    given.write_text("httpp: {}\n", encoding="utf-8")
    monkeypatch.setenv("RADROUTER_CONFIG", str(from_env))

    def no_service(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("serve went past the config it was given")

    monkeypatch.setattr("router.service.RouterService", no_service)
    assert radrouter_main(["serve"]) == 2
    assert f"{from_env}:1:1: nodee: unknown key" in capsys.readouterr().err

    assert radrouter_main(["serve", "--config", str(given)]) == 2
    error = capsys.readouterr().err
    assert f"{given}:1:1: httpp: unknown key" in error
    assert str(from_env) not in error


# --------------------------------------------------------------------------------------------
# The Dockerfile and compose.yaml agree with the container config


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", text))
    found = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            found.append((instruction.upper(), arguments.strip()))
    return found


def healthcheck_command() -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK."""
    [arguments] = [args for name, args in dockerfile_instructions() if name == "HEALTHCHECK"]
    command = json.loads(arguments[arguments.index("CMD") + len("CMD") :].strip())
    assert isinstance(command, list) and command[0] == "python", command
    return [str(part) for part in command]


def test_image_runs_the_container_config_as_an_unprivileged_user() -> None:
    instructions = dockerfile_instructions()
    final_stage = instructions[
        max(i for i, (name, _) in enumerate(instructions) if name == "FROM") :
    ]
    assert final_stage[0] == ("FROM", "python:3.11-slim-bookworm")
    values = {name: args for name, args in final_stage}
    uid = re.search(r"ARG RADROUTER_UID=(\d+)", "\n".join(f"{n} {a}" for n, a in final_stage))
    assert uid is not None and int(uid.group(1)) >= 1000
    assert values["USER"] == "${RADROUTER_UID}:${RADROUTER_UID}"
    assert values["ENV"] == "RADROUTER_CONFIG=/etc/radrouter/radrouter.yaml"
    assert values["VOLUME"] == "/var/lib/radrouter"
    assert values["EXPOSE"].split() == ["11112", "8080"]
    assert "chown radrouter:radrouter /var/lib/radrouter" in " ".join(
        args for name, args in final_stage if name == "RUN"
    )
    assert "dcmtk" not in (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "/readyz" in " ".join(healthcheck_command())


def test_compose_points_radrouter_and_orthanc_at_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = YAML(typ="safe").load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    orthanc, radrouter = services["orthanc"]["environment"], services["radrouter"]["environment"]

    clear_radrouter_environment(monkeypatch)
    for name, value in radrouter.items():
        monkeypatch.setenv(name, str(value))
    config = load_config(CONTAINER_CONFIG)
    assert config.insecure, "the demo publishes plain HTTP on this host: it must say so"
    pacs = config.destinations["pacs"]
    assert isinstance(pacs, DicomDestination)
    assert pacs.host in services and services[pacs.host]["image"].startswith("orthancteam/orthanc")
    assert (pacs.ae_title, pacs.port) == (
        orthanc["ORTHANC__DICOM_AET"],
        int(orthanc["ORTHANC__DICOM_PORT"]),
    )
    modalities = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"])
    assert modalities["radrouter"] == [config.node.ae_title, "radrouter", config.node.port]
    published = {str(port).rsplit(":", 1)[-1] for port in services["radrouter"]["ports"]}
    assert published == {str(config.node.port), str(config.http.port)}
    assert services["radrouter"]["volumes"] == ["radrouter-data:/var/lib/radrouter"]
    demo = " ".join(services["demo"]["command"])
    assert f"--host radrouter --port {config.node.port}" in demo


# --------------------------------------------------------------------------------------------
# The install itself (slow)


class Timings:
    """Where the install test spends its time, printed at the end (and on failure)."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []
        self._start = time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, time.monotonic() - start))

    def __str__(self) -> str:
        lines = [f"  {name:<38} {seconds:6.1f} s" for name, seconds in self.phases]
        lines.append(f"  {'total':<38} {time.monotonic() - self._start:6.1f} s")
        return "\n".join(lines)


@dataclass(frozen=True)
class ServiceUser:
    """Who the service runs as, and how to start a command as them."""

    name: str
    uid: int
    gid: int

    def command(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:  # already unprivileged: run as ourselves
            return argv
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--",
            *argv,
        ]


def service_user() -> ServiceUser:
    """The unprivileged user the service runs as: ourselves when not root; as root (CI), the
    system user SERVICE_USER, created when missing."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        if shutil.which("useradd") is None or shutil.which("setpriv") is None:
            pytest.skip("running as root without useradd/setpriv: no unprivileged user to use")
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
        )
        entry = pwd.getpwnam(SERVICE_USER)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot start the service unprivileged")
    assert entry.pw_uid != 0
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def copy_source(destination: Path) -> Path:
    """The working tree as a fresh checkout would have it (no venvs, caches, build output)."""
    skip = {".git", ".venv", "build", "dist", "var", "training-data", "__pycache__", ".hypothesis"}
    skip |= {".cache", "test-artefacts"}  # OHIF for the viewer tests, their screenshots

    def ignore(_folder: str, names: list[str]) -> set[str]:
        return {
            n
            for n in names
            if n in skip or n.endswith((".egg-info", ".pyc")) or re.fullmatch(r"\..*_cache", n)
        }

    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def build_wheel(source: Path, out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        env=without_python_path(),
    )
    [wheel] = out.glob("radrouter-*.whl")
    return wheel


def without_python_path() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def is_shipped(name: PurePosixPath, dist_info: set[str]) -> bool:
    """Metadata, runtime code, algorithm weights and manifests, YAML configs, static files."""
    package = name.parts[0]
    if package in dist_info:
        return True
    if "static" in name.parts:  # web pages, their styles, scripts and vendored assets
        return True
    if set(name.parts) & set(NOT_SHIPPED):
        return False
    return (
        name.suffix == ".py"
        or (package == "algorithms" and name.suffix in (".onnx", ".json"))
        or (package == "config" and name.suffix == ".yaml")
    )


def check_wheel_contents(wheel: Path) -> None:
    """Only runtime code, weights, manifests, YAML configs and static files."""
    names = [PurePosixPath(n) for n in zipfile.ZipFile(wheel).namelist()]
    tops = {n.parts[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert tops - dist_info == set(RUNTIME_PACKAGES), sorted(tops)
    assert [str(n) for n in names if not is_shipped(n, dist_info)] == []
    for algorithm in shipped_algorithms():
        assert PurePosixPath("algorithms", algorithm, "plugin.py") in names, algorithm
        for weights in ("model.onnx", "model.json"):  # a measurement (ct_water_qa) has none
            if (ROOT / "algorithms" / algorithm / weights).is_file():
                assert PurePosixPath("algorithms", algorithm, weights) in names, algorithm
    assert PurePosixPath("config", "container.yaml") in names
    assert PurePosixPath("config", "default.yaml") in names
    assert wheel.stat().st_size < WHEEL_LIMIT_MB * 2**20, wheel.stat().st_size


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_until_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    last: tuple[int, dict[str, Any]] | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"radrouter serve exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        with contextlib.suppress(OSError):
            last = readyz(port)
            if last[0] == 200:
                return last[1]
        time.sleep(0.2)
    raise AssertionError(f"not ready within 180 s; last /readyz {last}\n{log.read_text()[-4000:]}")


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def process_uids(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(value) for value in line.split()[1:]}
    raise AssertionError("no Uid")


def write_chest_ct(folder: Path) -> str:
    """A small synthetic thin-slice chest CT with a 12 mm nodule; its StudyInstanceUID."""
    shape, spacing = (60, 256, 256), (2.0, 0.8, 0.8)
    nodule = NoduleSpec(right_lung_centre_mm(shape, spacing), 12.0)
    ct = generate_chest_ct(7, shape=shape, spacing_mm=spacing, nodules=[nodule])
    study = new_patient_study(7)
    write_ct_series(ct.hu, ct.spacing_mm, study, folder)
    return study.study_instance_uid


@pytest.mark.slow
def test_wheel_installs_and_serves_without_torch_as_an_unprivileged_user() -> None:
    timings = Timings()
    user = service_user()
    root = Path(tempfile.mkdtemp(prefix="radrouter-install-"))
    root.chmod(0o755)  # the service user reads the environment below it
    process: subprocess.Popen[bytes] | None = None
    try:
        with timings.phase("build the wheel"):
            wheel = build_wheel(copy_source(root / "src"), root / "dist")
        check_wheel_contents(wheel)
        print(f"\nwheel {wheel.name}: {wheel.stat().st_size / 2**20:.2f} MB")

        # As the image: a clean Python, the wheel with its dependencies from the index.
        venv = root / "venv"
        with timings.phase("fresh venv + pip install <wheel>"):
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                check=True,
                env=without_python_path(),
            )
        probe = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.util, json, router; print(json.dumps({'router': router.__file__,"
                f" 'found': [m for m in {list(DEV_ONLY_MODULES)!r} if importlib.util.find_spec(m)]}}))",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env=without_python_path(),
        )
        installed = json.loads(probe.stdout)
        assert Path(installed["router"]).is_relative_to(venv), installed["router"]
        assert installed["found"] == [], f"dev-only packages installed: {installed['found']}"
        no_torch = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import torch"],
            capture_output=True,
            text=True,
            cwd=root,
            env=without_python_path(),
        )
        assert no_torch.returncode != 0
        assert "No module named 'torch'" in no_torch.stderr

        # As the image: the container config copied out of the package, a data folder owned
        # by the unprivileged user and nothing else writable by it.
        config_file = root / "etc" / "radrouter.yaml"
        config_file.parent.mkdir()
        packaged = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import config, pathlib; print(pathlib.Path(config.__file__).with_name('container.yaml'))",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        ).stdout.strip()
        shutil.copyfile(packaged, config_file)
        data, home = root / "data", root / "home"
        for folder in (data, home):
            folder.mkdir()
            os.chown(folder, user.uid, user.gid)
            folder.chmod(0o750)

        http_port, dicom_port = free_port(), free_port()
        with running_storescp(root / "pacs") as pacs:
            environment = {
                "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
                "HOME": str(home),
                "LANG": "C.UTF-8",
                "RADROUTER_CONFIG": str(config_file),
                "RADROUTER_BIND": "127.0.0.1",
                "RADROUTER_DICOM_PORT": str(dicom_port),
                "RADROUTER_HTTP_PORT": str(http_port),
                "RADROUTER_DATA_DIR": str(data),
                "RADROUTER_PACS_AE_TITLE": pacs.ae_title,
                "RADROUTER_PACS_HOST": "127.0.0.1",
                "RADROUTER_PACS_PORT": str(pacs.port),
            }
            health = [str(venv / "bin" / "python"), *healthcheck_command()[1:]]
            assert subprocess.run(health, env=environment, capture_output=True).returncode != 0

            log = root / "serve.log"
            started = time.monotonic()
            with log.open("wb") as log_file:
                process = subprocess.Popen(
                    user.command([str(venv / "bin" / "radrouter"), "serve"]),
                    cwd=home,
                    env=environment,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            with timings.phase("radrouter serve until /readyz is ready"):
                ready = wait_until_ready(process, http_port, log)
            startup_s = time.monotonic() - started
            assert process_uids(process.pid) == {user.uid}
            assert ready["ready"] is True
            # every algorithm the container config's rules run (all shipped but the QA test)
            assert set(ready["models"]) == shipped_algorithms() - {"ct_water_qa"}, ready
            assert {s["backend"] for s in ready["model_status"].values()} == {"onnxruntime"}
            assert ready["model_load_errors"] == {} and ready["plugin_problems"] == {}, ready
            assert subprocess.run(health, env=environment, capture_output=True).returncode == 0
            rss_ready = resident_mb(process.pid)

            with timings.phase("write a synthetic chest CT"):
                study_uid = write_chest_ct(root / "study")
            with timings.phase("radrouter send (installed CLI)"):
                sent = subprocess.run(
                    [
                        str(venv / "bin" / "radrouter"),
                        "send",
                        str(root / "study"),
                        "--port",
                        str(dicom_port),
                        "--quiet",
                    ],
                    capture_output=True,
                    text=True,
                    cwd=root,
                    env=environment,
                )
            assert sent.returncode == 0, sent.stderr
            assert "sent 60 instance(s)" in sent.stdout
            with timings.phase("study in -> SR at the receiving PACS"):
                received = pacs.wait_for("SR", {study_uid}, timeout_s=180)
            report = pydicom.dcmread(received[study_uid][0], stop_before_pixels=True)
            assert report.SOPClassUID == Comprehensive3DSRStorage
            assert report.StudyInstanceUID == study_uid
            rss_after_study = resident_mb(process.pid)

            written = [p for p in data.rglob("*")]
            assert data / "radrouter.sqlite3" in written
            assert any(p.suffix == ".dcm" or "spool" in p.parts for p in written if p.is_file())
            not_owned = [str(p) for p in written if p.lstat().st_uid != user.uid]
            assert not_owned == [], f"not owned by {user.name}: {not_owned}"
            # It writes to its data folder only, but for onnxruntime's device id in its home.
            elsewhere = [
                str(p)
                for p in home.rglob("*")
                if p.is_file() and p.relative_to(home).parts[:2] != (".cache", "Microsoft")
            ]
            assert elsewhere == []

            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()[-4000:]
            assert subprocess.run(health, env=environment, capture_output=True).returncode != 0
        print(
            f"radrouter serve: ready {startup_s:.1f} s after start; resident memory "
            f"{rss_ready:.0f} MB when ready, {rss_after_study:.0f} MB after one study "
            "(no torch)"
        )
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        print(f"time spent:\n{timings}")
        shutil.rmtree(root, ignore_errors=True)
