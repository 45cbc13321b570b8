"""Ingest throughput: 200 CT slices of 512x512 over one association, radrouter vs references.

The same sender (dcmtk ``storescu``, TCP_NODELAY=1) sends the same files to:
- radrouter (``radrouter serve``; every instance fsync'd and indexed before Success),
- dcmtk ``storescp`` (writes files, no fsync),
- Orthanc (Debian package; its own storage and SQLite index),
- a bare pynetdicom SCP whose C-STORE handler returns Success at once (the floor that
  pynetdicom's network layer sets for anything built on it, radrouter included).

Run: ``.venv/bin/python -m benchmarks.ingest [--slices 200] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from testing.orthanc import free_port, running_orthanc
from testing.synthetic_dicom import new_patient_study, write_ct_series

ENV = {**os.environ, "TCP_NODELAY": "1"}


def make_series(folder: Path, slices: int) -> list[Path]:
    rng = np.random.default_rng(0)
    hu = rng.normal(-300, 300, size=(slices, 512, 512)).clip(-1024, 3000).astype(np.int16)
    return write_ct_series(hu, (1.0, 0.7, 0.7), new_patient_study(1), folder)


def wait_echo(port: int, aet: str, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        probe = subprocess.run(
            ["/usr/bin/echoscu", "-aec", aet, "127.0.0.1", str(port)],
            capture_output=True,
            env=ENV,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{aet} on {port} did not answer C-ECHO")


def time_storescu(port: int, aet: str, files: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            "/usr/bin/storescu",
            "-aet",
            "BENCH",
            "-aec",
            aet,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        check=True,
        capture_output=True,
        env=ENV,
    )
    return time.perf_counter() - started


@contextmanager
def radrouter(workdir: Path) -> Iterator[int]:
    port = free_port()
    config = workdir / "router.yaml"
    config.write_text(
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "router.cli",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(workdir / "data"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        wait_echo(port, "RADROUTER")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@contextmanager
def storescp(workdir: Path) -> Iterator[int]:
    port = free_port()
    out = workdir / "storescp"
    out.mkdir()
    process = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), "--fork", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        wait_echo(port, "STORESCP")
        yield port
    finally:
        process.kill()
        process.wait()


@contextmanager
def bare_pynetdicom() -> Iterator[int]:
    """A pynetdicom SCP that stores nothing, with radrouter's PDU size."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

    from router.receive.node import MAX_PDU_BYTES

    ae = AE("BARE")
    ae.maximum_pdu_size = MAX_PDU_BYTES
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_series(root / "series", args.slices)
        megabytes = sum(f.stat().st_size for f in files) / 2**20
        results: dict[str, list[float]] = {
            "radrouter": [],
            "dcmtk storescp": [],
            "Orthanc": [],
            "bare pynetdicom": [],
        }
        for run in range(args.repeat):
            work = root / f"run{run}"
            work.mkdir()
            with radrouter(work) as port:
                results["radrouter"].append(time_storescu(port, "RADROUTER", files))
            with storescp(work) as port:
                results["dcmtk storescp"].append(time_storescu(port, "STORESCP", files))
            with running_orthanc(work / "orthanc") as orthanc:
                results["Orthanc"].append(time_storescu(orthanc.dicom_port, "ORTHANC", files))
            with bare_pynetdicom() as port:
                results["bare pynetdicom"].append(time_storescu(port, "BARE", files))
            shutil.rmtree(work)
    print(
        f"ingest: {args.slices} CT slices 512x512 ({megabytes:.0f} MiB), one association, "
        f"dcmtk storescu sender, TCP_NODELAY=1, best of {args.repeat}"
    )
    best = {name: min(times) for name, times in results.items()}
    print(f"{'receiver':<18}{'seconds':>10}{'images/s':>12}{'MiB/s':>10}")
    for name, seconds in best.items():
        print(
            f"{name:<18}{seconds:>10.2f}{args.slices / seconds:>12.0f}{megabytes / seconds:>10.0f}"
        )
    ratio_dcmtk = best["dcmtk storescp"] / best["radrouter"]
    ratio_orthanc = best["Orthanc"] / best["radrouter"]
    print(
        f"radrouter = {ratio_dcmtk:.2f}x dcmtk storescp (target >= 0.5), "
        f"{ratio_orthanc:.2f}x Orthanc (target >= 3); a bare pynetdicom SCP that stores "
        f"nothing = {best['dcmtk storescp'] / best['bare pynetdicom']:.2f}x dcmtk storescp"
    )


if __name__ == "__main__":
    main()
