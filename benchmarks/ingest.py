"""Ingest throughput: 200 CT slices of 512x512 over one association and over several
simultaneous associations (the slices shared between them), radrouter vs references.

The same sender (dcmtk ``storescu``, TCP_NODELAY=1; one process per association) sends the
same files to a receiver started afresh for each measurement:
- radrouter (``radrouter serve``; every instance fsync'd and indexed before Success),
- dcmtk ``storescp`` (writes files, no fsync),
- Orthanc (Debian package; its own storage and SQLite index),
- a bare pynetdicom SCP whose C-STORE handler returns Success at once (the floor that
  pynetdicom's network layer sets for anything built on it, radrouter included).

radrouter is measured with one receiver process and with two sharing the port
(``node.receivers: 2``, SO_REUSEPORT), the latter on SQLite and on PostgreSQL (a throwaway
cluster on loopback, ``testing.postgres``, fsync on, as in production).

Run: ``.venv/bin/python -m benchmarks.ingest [--slices 200] [--repeat 3] [--associations 1 4]``
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

from router.store.open import database_at
from testing.orthanc import free_port, running_orthanc
from testing.postgres import PostgresServer, running_postgres
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


def time_storescu(port: int, aet: str, files: list[Path], associations: int = 1) -> float:
    """Seconds until every file is acknowledged, sent over ``associations`` simultaneous
    associations (one ``storescu`` each, the files dealt out in turn)."""
    shares = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["/usr/bin/storescu", "-aet", "BENCH", "-aec", aet, "127.0.0.1", str(port)]
            + [str(f) for f in share],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        for share in shares
        if share
    ]
    failures = []
    for sender in senders:
        _, err = sender.communicate()
        if sender.returncode != 0:
            failures.append(err.decode(errors="replace")[-500:])
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"storescu to {aet} failed: {failures[0]}")
    return elapsed


@contextmanager
def radrouter(workdir: Path, receivers: int = 1, database_url: str | None = None) -> Iterator[int]:
    """``radrouter serve``; with ``receivers`` > 1, that many processes on the port
    (``node.receivers``), each started before the measurement begins; on PostgreSQL at
    ``database_url`` when given."""
    port = free_port()
    config = workdir / "router.yaml"
    database = (
        f"storage: {{database: {{engine: postgresql, url: '{database_url}'}}}}\n"
        if database_url
        else ""
    )
    config.write_text(
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {port}, receivers: {receivers}}}\n"
        "http: {host: 127.0.0.1, port: 0}\n" + database
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
        wait_receivers(database_url or str(workdir / "data" / "radrouter.sqlite3"), receivers - 1)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def wait_receivers(database: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    db = database_at(database)
    try:
        while count > 0 and time.time() < deadline:
            row = db.query_one("SELECT COUNT(*) FROM events WHERE kind = 'receiver_started'")
            if row is not None and row[0] >= count:
                return
            time.sleep(0.2)
    finally:
        db.close_all()
    if count > 0:
        raise TimeoutError(f"{count} receiver process(es) did not start")


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


SHARED = "radrouter, 2 receivers"
SHARED_PG = "radrouter, 2 rec., PG"
RECEIVERS = ("radrouter", SHARED, SHARED_PG, "dcmtk storescp", "Orthanc", "bare pynetdicom")


def measure(
    work: Path, name: str, files: list[Path], associations: int, postgres: PostgresServer
) -> float:
    """Start ``name`` afresh in ``work``, send ``files``, stop it; the seconds the send took."""
    if name in ("radrouter", SHARED, SHARED_PG):
        url = postgres.create_database() if name == SHARED_PG else None
        with radrouter(work, 1 if name == "radrouter" else 2, url) as port:
            return time_storescu(port, "RADROUTER", files, associations)
    if name == "dcmtk storescp":
        with storescp(work) as port:
            return time_storescu(port, "STORESCP", files, associations)
    if name == "Orthanc":
        with running_orthanc(work / "orthanc") as orthanc:
            return time_storescu(orthanc.dicom_port, "ORTHANC", files, associations)
    with bare_pynetdicom() as port:
        return time_storescu(port, "BARE", files, associations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--associations",
        type=int,
        nargs="+",
        default=[1, 4],
        help="simultaneous associations to measure (the slices are shared between them)",
    )
    args = parser.parse_args()
    counts: list[int] = sorted(set(args.associations))
    results: dict[int, dict[str, list[float]]] = {n: {r: [] for r in RECEIVERS} for n in counts}
    with tempfile.TemporaryDirectory() as tmp, running_postgres(fsync=True) as postgres:
        root = Path(tmp)
        files = make_series(root / "series", args.slices)
        megabytes = sum(f.stat().st_size for f in files) / 2**20
        for run in range(args.repeat):
            for count in counts:
                for name in RECEIVERS:
                    work = root / f"run{run}-{count}"
                    work.mkdir()
                    try:
                        results[count][name].append(measure(work, name, files, count, postgres))
                    finally:
                        shutil.rmtree(work)
    best = {n: {name: min(times) for name, times in results[n].items()} for n in counts}
    for count in counts:
        what = "one association" if count == 1 else f"{count} simultaneous associations"
        print(
            f"ingest: {args.slices} CT slices 512x512 ({megabytes:.0f} MiB), {what}, "
            f"dcmtk storescu sender, TCP_NODELAY=1, best of {args.repeat}"
        )
        print(f"{'receiver':<24}{'seconds':>10}{'images/s':>12}{'MiB/s':>10}   all runs (s)")
        for name, seconds in best[count].items():
            runs = " ".join(f"{t:.2f}" for t in results[count][name])
            print(
                f"{name:<24}{seconds:>10.2f}{args.slices / seconds:>12.0f}"
                f"{megabytes / seconds:>10.0f}   {runs}"
            )
        mine = best[count]["radrouter"]
        print(
            f"radrouter = {best[count]['dcmtk storescp'] / mine:.2f}x dcmtk storescp, "
            f"{best[count]['Orthanc'] / mine:.2f}x Orthanc"
            + (" (aim for the aggregate >= 1.5)" if count != 1 else "")
            + ", "
            f"{best[count]['bare pynetdicom'] / mine:.2f}x the bare pynetdicom SCP"
            + (" (aim >= 0.9)" if count == 1 else "")
            + f"; the bare pynetdicom SCP that stores nothing = "
            f"{best[count]['dcmtk storescp'] / best[count]['bare pynetdicom']:.2f}x dcmtk storescp"
        )
        shared = best[count][SHARED]
        print(
            f"{SHARED} = {best[count]['Orthanc'] / shared:.2f}x Orthanc, "
            f"{mine / shared:.2f}x radrouter with one receiver; on PostgreSQL "
            f"{best[count]['Orthanc'] / best[count][SHARED_PG]:.2f}x Orthanc, "
            f"{shared / best[count][SHARED_PG]:.2f}x the same on SQLite"
        )
        if count != 1 and 1 in best:
            print(
                f"radrouter, 2 receivers, over {count} associations = "
                f"{best[1]['radrouter'] / shared:.2f}x radrouter over one association "
                "(aim >= 1.7); "
                f"radrouter, 1 receiver, over {count} associations = "
                f"{best[1]['radrouter'] / mine:.2f}x; "
                + ", ".join(
                    f"{name} {best[1][name] / best[count][name]:.2f}x"
                    for name in RECEIVERS
                    if name != "radrouter"
                )
            )
        print()


if __name__ == "__main__":
    main()
