"""Nothing acknowledged to the sender is lost, even when the router is killed with SIGKILL."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from router.store.database import SqliteDatabase
from testing.dicom_tools import make_ct_slices
from testing.orthanc import free_port


def start_router(config: Path, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "router.cli",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(data_dir),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def wait_for_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    while time.time() < deadline:
        assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER")
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.2)
    raise TimeoutError(f"router did not listen on {port}")


def test_sigkill_during_a_transfer_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "router.yaml"
    config.write_text(
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "completion: {series_idle_s: 600, study_idle_s: 600, hard_cap_s: 900}\n"
    )
    data_dir = tmp_path / "data"
    log = tmp_path / "router.log"
    slices = make_ct_slices(400, rows=128, cols=128)
    payload = {ds.SOPInstanceUID: ds for ds in slices}
    router = start_router(config, data_dir, log)
    acknowledged: list[str] = []
    try:
        wait_for_port(port)

        def send_all() -> None:
            ae = AE(ae_title="PACS")
            ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
            assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER")
            for ds in slices:
                try:
                    status = assoc.send_c_store(ds)
                except (RuntimeError, OSError):
                    return
                if status and int(status.Status) == 0:
                    acknowledged.append(ds.SOPInstanceUID)
                if not assoc.is_established:
                    return

        sender = threading.Thread(target=send_all)
        sender.start()
        deadline = time.time() + 60
        while len(acknowledged) < 60 and time.time() < deadline:
            time.sleep(0.005)
        router.send_signal(signal.SIGKILL)
        router.wait(timeout=30)
        sender.join(timeout=60)
    finally:
        if router.poll() is None:
            router.kill()
    assert 60 <= len(acknowledged) < len(slices), "the kill must land mid-transfer"

    restarted = start_router(config, data_dir, log)
    try:
        wait_for_port(port)
        db = SqliteDatabase(data_dir / "radrouter.sqlite3")
        stored = {r["sop_instance_uid"]: r for r in db.query("SELECT * FROM instances")}
        missing = [uid for uid in acknowledged if uid not in stored]
        assert missing == [], (
            f"{len(missing)} acknowledged instance(s) lost: {log.read_text()[-2000:]}"
        )
        for uid in acknowledged:
            on_disk = pydicom.dcmread(stored[uid]["path"])
            assert on_disk.SOPInstanceUID == uid
            assert (
                hashlib.sha256(on_disk.PixelData).digest()
                == hashlib.sha256(payload[uid].PixelData).digest()
            )
        assert not list((data_dir / "spool" / ".incoming").glob("*.part")), "partials cleaned"
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=30)
