"""A router killed (SIGKILL) while it sends a study resumes the send when it starts again: the
interrupted attempt is counted, the send is not held back by its lease (the same node knows
its own earlier boot), and the PACS receives every instance exactly once."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from router.service import wait_for
from router.store.database import Database, SqliteDatabase
from testing.dicom_tools import make_ct_slices
from testing.orthanc import free_port
from testing.storescp import running_storescp
from tests.router.receive.test_durability import start_router, wait_for_port

pytestmark = pytest.mark.slow


def config(port: int, pacs_port: int, pacs_ae: str) -> str:
    return (
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"destinations:\n  pacs: {{ae_title: {pacs_ae}, host: 127.0.0.1, port: {pacs_port}, "
        "timeout_s: 120}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10}\n"
        "rules:\n"
        "  - name: forward-ct\n"
        "    when: {Modality: CT}\n"
        "    send_to: [pacs]\n"
    )


def dispatch_state(db: Database) -> tuple[str, int] | None:
    row = db.query_one("SELECT state, attempts FROM dispatches")
    return None if row is None else (str(row["state"]), int(row["attempts"]))


def test_a_send_interrupted_by_sigkill_is_resumed_at_restart_and_delivered_once(
    tmp_path: Path,
) -> None:
    port, data = free_port(), tmp_path / "data"
    config_path = tmp_path / "router.yaml"
    # A PACS that accepts the connection and never answers: the send hangs in the association.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(8)
    config_path.write_text(config(port, blackhole.getsockname()[1], "BLACKHOLE"))
    router = start_router(config_path, data, tmp_path / "router.log")
    try:
        wait_for_port(port)
        slices = make_ct_slices(6)
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER")
        assert assoc.is_established
        for ds in slices:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        db = SqliteDatabase(data / "radrouter.sqlite3")
        assert wait_for(lambda: dispatch_state(db) == ("sending", 1), 60), dispatch_state(db)
    finally:
        router.kill()
        router.wait(timeout=30)
        blackhole.close()

    with running_storescp(tmp_path / "pacs") as pacs:
        config_path.write_text(config(port, pacs.port, pacs.ae_title))
        started = time.monotonic()
        router = start_router(config_path, data, tmp_path / "router.log")
        try:
            assert wait_for(lambda: dispatch_state(db) == ("done", 2), 60), dispatch_state(db)
            resumed_in = time.monotonic() - started

            def done_events() -> int:
                return [r["kind"] for r in db.query("SELECT kind FROM events")].count(
                    "dispatch_done"
                )

            # The event is written just after the state, in its own transaction.
            assert wait_for(lambda: done_events() >= 1, 30)
            received = pacs.received("CT")
            assert [len(files) for files in received.values()] == [len(slices)]
            assert resumed_in < 30, "resumed at start, not after the 60 s lease"
            assert done_events() == 1
        finally:
            router.terminate()
            router.wait(timeout=30)
