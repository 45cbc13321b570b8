"""A real Orthanc (Debian package) started as a plain process on loopback, and a REST client."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """Client for one running Orthanc; ``dicom_port``/``ae_title`` for DICOM peers."""

    def __init__(
        self, http_port: int, dicom_port: int, ae_title: str, auth: tuple[str, str] | None = None
    ) -> None:
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.ae_title = ae_title
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120.0, auth=auth)

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (with ``running_orthanc(..., dicomweb=True)``)."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def upload(self, path: Path) -> str:
        """POST a Part-10 file; returns the Orthanc study ID."""
        response = self.http.post("/instances", content=path.read_bytes())
        response.raise_for_status()
        return str(response.json()["ParentStudy"])

    def add_modality(self, name: str, ae_title: str, port: int, host: str = "127.0.0.1") -> None:
        response = self.http.put(
            f"/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port}
        )
        response.raise_for_status()

    def push_to_modality(self, name: str, resources: list[str]) -> dict[str, Any]:
        """C-STORE resources to a configured modality, as a PACS auto-routing rule would."""
        response = self.http.post(
            f"/modalities/{name}/store", json={"Resources": resources, "Synchronous": True}
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def study_id_for_uid(self, study_uid: str) -> str | None:
        found = self.http.post("/tools/lookup", content=study_uid.encode()).json()
        for item in found:
            if item["Type"] == "Study":
                return str(item["ID"])
        return None

    def instances_of_study(self, study_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(f"/studies/{study_id}/instances")
        return result

    def modality_instances(self, study_id: str, modality: str) -> list[str]:
        """Orthanc IDs of the instances of a study whose series has ``modality``."""
        ids: list[str] = []
        for series_id in self.get(f"/studies/{study_id}")["Series"]:
            series = self.get(f"/series/{series_id}")
            if series["MainDicomTags"].get("Modality") == modality:
                ids.extend(series["Instances"])
        return ids

    def instance_file(self, instance_id: str) -> bytes:
        response = self.http.get(f"/instances/{instance_id}/file")
        response.raise_for_status()
        return response.content

    def close(self) -> None:
        self.http.close()


@contextmanager
def running_orthanc(
    workdir: Path,
    ae_title: str = "ORTHANC",
    *,
    dicomweb: bool = False,
    users: dict[str, str] | None = None,
    http_port: int | None = None,
    python_script: Path | None = None,
    extra_config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc with its own JSON config and storage in ``workdir``; stop it after.
    ``dicomweb``: with the DICOMweb plug-in (Debian ``orthanc-dicomweb``) on ``/dicom-web/``,
    full study metadata as OHIF asks. ``users``: HTTP basic authentication required, with
    these users and passwords (the client signs in as the first). ``http_port``: this port
    rather than a free one. ``python_script``: run by the Python plug-in (Debian
    ``orthanc-python``); ``extra_config`` is merged into the JSON config; ``env`` is added to
    Orthanc's environment."""
    if dicomweb and not DICOMWEB_PLUGIN.exists():
        raise RuntimeError(f"{DICOMWEB_PLUGIN} is missing (Debian orthanc-dicomweb)")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = http_port or free_port(), free_port()
    config = {
        "Name": "radrouter-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users or {},
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {},
        "Plugins": ([str(DICOMWEB_PLUGIN)] if dicomweb else [])
        + ([str(PYTHON_PLUGIN)] if python_script is not None else []),
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
        "StableAge": 1,
        "HttpTimeout": 120,
        "DicomScuTimeout": 60,
        "DicomServerEnabled": True,
        "ConcurrentJobs": 2,
    }
    if python_script is not None:
        if not PYTHON_PLUGIN.exists():
            raise RuntimeError(f"{PYTHON_PLUGIN} is missing (Debian orthanc-python)")
        config["PythonScript"] = str(python_script)
        config["PythonVerbose"] = False
    config.update(extra_config or {})
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 - closed in finally
    env = {**os.environ, "TCP_NODELAY": "1", **(env or {})}
    process = subprocess.Popen(
        [ORTHANC_BINARY, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    client = Orthanc(
        http_port, dicom_port, ae_title, next(iter(users.items()), None) if users else None
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                client.get("/system")
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        f"Orthanc did not start: {(workdir / 'orthanc.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
