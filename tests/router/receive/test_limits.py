"""Limits that keep one peer from stalling the node: associations per host, timeouts on silent
and half-sent PDUs, the PDU and instance sizes, connections that end before their request."""

from __future__ import annotations

import io
import socket
import subprocess
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from config.schema import InputLimits
from router.receive.status import StoreStatus
from testing.dicom_node import (
    association_request_bytes,
    echo,
    p_data_pdu,
    running_node,
)
from testing.dicom_tools import make_ct_slices
from testing.router_process import DCMTK_ENV


def idle_association(port: int, bind: str = "127.0.0.1") -> tuple[bool, object]:
    ae = AE(ae_title="IDLE")
    ae.acse_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER", bind_address=(bind, 0))
    return assoc.is_established, assoc


def wait_until(condition: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def test_sixteen_idle_associations_from_one_host_do_not_lock_out_another_host(
    tmp_path: Path,
) -> None:
    """The shipped defaults: 16 associations, at most 8 per host."""
    with running_node(tmp_path / "data") as node:
        held = [idle_association(node.port) for _ in range(16)]
        try:
            accepted = [assoc for ok, assoc in held if ok]
            assert len(accepted) == 8, "the ninth association from one host is refused"
            refused = [assoc for ok, assoc in held if not ok]
            assert all(a.is_rejected for a in refused)  # type: ignore[attr-defined]
            assert echo(node.port, bind="127.0.0.2"), "another host still gets in"
            events = node.db.query("SELECT detail FROM events WHERE kind = 'association_rejected'")
            assert len(events) == 8 and all("transient" in e["detail"] for e in events)
        finally:
            for assoc in accepted:
                assoc.release()  # type: ignore[attr-defined]
        assert wait_until(lambda: echo(node.port), 5), "the host gets in again once it let go"


def test_a_host_over_its_limit_gets_a_transient_local_limit_rejection(tmp_path: Path) -> None:
    with running_node(tmp_path / "data", limits=InputLimits(max_associations_per_host=1)) as node:
        ok, first = idle_association(node.port)
        assert ok
        ae = AE(ae_title="SECOND")
        ae.add_requested_context(Verification)
        second = ae.associate("127.0.0.1", node.port, ae_title="RADROUTER")
        assert second.is_rejected
        rejection = second.acceptor.primitive
        assert rejection is not None
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
        first.release()  # type: ignore[attr-defined]


def test_connections_that_end_before_their_request_hold_no_association_slot(
    tmp_path: Path,
) -> None:
    """A port scanner or a load balancer's probe: pynetdicom would keep a thread waiting the
    ACSE timeout for each, and 16 of them lock every sender out."""
    with running_node(tmp_path / "data", acse_timeout_s=60) as node:
        for index in range(40):
            with socket.create_connection(("127.0.0.1", node.port)) as probe:
                if index % 2:
                    probe.sendall(b"GET / HTTP/1.1\r\n\r\n")  # closed by the first-bytes check
        assert wait_until(lambda: not node.node.ae.active_associations, 5)
        # No association thread may also mean probes still in the listen backlog (a slow
        # machine accepts them after the loop): they hold a slot while they are looked at,
        # then none. A leaked slot would refuse every echo until the limit of 5 s.
        assert wait_until(lambda: echo(node.port), 5), "the probes' slots were not let go"


def test_a_peer_that_stops_in_the_middle_of_a_pdu_is_dropped_after_the_network_timeout(
    tmp_path: Path,
) -> None:
    with (
        running_node(tmp_path / "data", network_timeout_s=1) as node,
        socket.create_connection(("127.0.0.1", node.port)) as peer,
    ):
        peer.sendall(association_request_bytes())
        assert peer.recv(6)[:1] == b"\x02"  # A-ASSOCIATE-AC
        peer.sendall(b"\x04\x00\x00\x00\x03\xe8" + b"\x00" * 10)  # 10 of 1000 bytes
        assert wait_until(lambda: not node.node.ae.active_associations, 5)
        peer.settimeout(2)
        with pytest.raises((ConnectionError, TimeoutError)):
            while peer.recv(65536):
                pass
            raise ConnectionError("closed")


def test_a_silent_established_association_is_aborted_after_the_network_timeout(
    tmp_path: Path,
) -> None:
    with running_node(tmp_path / "data", network_timeout_s=1) as node:
        ok, assoc = idle_association(node.port)
        assert ok
        assert wait_until(lambda: not node.node.ae.active_associations, 5)
        rows = node.db.query("SELECT state FROM associations")
        assert [row["state"] for row in rows] == ["aborted"]
        assert wait_until(lambda: not assoc.is_established, 5)  # type: ignore[attr-defined]


def test_a_pdu_announcing_more_than_the_maximum_ends_the_connection_without_reading_it(
    tmp_path: Path,
) -> None:
    with running_node(tmp_path / "data") as node:
        tracemalloc.start()
        try:
            with socket.create_connection(("127.0.0.1", node.port)) as peer:
                peer.sendall(association_request_bytes())
                assert peer.recv(6)[:1] == b"\x02"
                peer.sendall(b"\x04\x00\xff\xff\xff\xf0" + b"\x00" * 65536)
                assert wait_until(lambda: not node.node.ae.active_associations, 5)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 2**20
        assert echo(node.port)


def test_data_set_fragments_without_an_end_are_not_kept(tmp_path: Path) -> None:
    with running_node(tmp_path / "data") as node:
        with socket.create_connection(("127.0.0.1", node.port)) as peer:
            peer.sendall(association_request_bytes())
            assert peer.recv(6)[:1] == b"\x02"
            peer.sendall(p_data_pdu(1, 0x03, _store_command()))
            for _ in range(32):
                peer.sendall(p_data_pdu(1, 0x00, b"\x00" * 65536))
        assert wait_until(lambda: not node.node.ae.active_associations, 5)
        assert list(node.spool.incoming.iterdir()) == []


def _store_command() -> bytes:
    from testing.fuzz import _store_command as command

    return command()


def _big_ct(path: Path, megabytes: int) -> pydicom.Dataset:
    """One CT image of about ``megabytes`` MB (16-bit pixels)."""
    side = int((megabytes * 2**20 / 2) ** 0.5)
    ds = make_ct_slices(1, rows=16, cols=16)[0]
    ds.Rows = ds.Columns = side
    ds.PixelData = np.zeros((side, side), dtype=np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def storescu(port: int, path: Path) -> str:
    """dcmtk's storescu (it streams the file, so the sender holds no copy in this process);
    its debug output, which names the DIMSE status."""
    result = subprocess.run(
        ["/usr/bin/storescu", "-d", "-aec", "RADROUTER", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        env=DCMTK_ENV,
        timeout=120,
    )
    return (result.stdout + result.stderr).decode(errors="replace")


def test_an_instance_is_received_into_the_spool_without_being_held_in_memory(
    tmp_path: Path,
) -> None:
    """It was 735 MB of memory for a 300 MB instance (the data set in memory, then copied)."""
    path = tmp_path / "big.dcm"
    ds = _big_ct(path, 96)
    with running_node(tmp_path / "data") as node:
        tracemalloc.start()
        try:
            output = storescu(node.port, path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert "DIMSE Status                  : 0x0000" in output, output[-2000:]
        row = node.db.query_one("SELECT path, size FROM instances")
        assert row is not None and row["size"] > 90 * 2**20
        assert pydicom.dcmread(row["path"], stop_before_pixels=True).SOPInstanceUID == (
            ds.SOPInstanceUID
        )
    assert peak < 24 * 2**20, f"{peak / 2**20:.0f} MiB held while receiving 96 MiB"


def test_an_instance_over_the_size_limit_is_refused_as_it_arrives_and_not_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "big.dcm"
    _big_ct(path, 40)
    limits = InputLimits(max_instance_mb=8)
    with running_node(tmp_path / "data", limits=limits) as node:
        tracemalloc.start()
        try:
            output = storescu(node.port, path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        status = f"DIMSE Status                  : 0x{StoreStatus.INSTANCE_TOO_LARGE:04x}"
        assert status in output, output[-2000:]
        assert node.db.query("SELECT * FROM instances") == []
        reasons = [p.read_text() for p in node.quarantine.glob("*.reason.txt")]
        assert len(reasons) == 1 and "INSTANCE_TOO_LARGE" in reasons[0]
        assert not list(node.quarantine.glob("*.bin")), "nothing of it is kept"
        assert list(node.spool.incoming.iterdir()) == []
        event = node.db.query_one("SELECT detail FROM events WHERE kind = 'instance_rejected'")
        assert event is not None and "bytes not kept" in event["detail"]
        assert echo(node.port)
    assert peak < 24 * 2**20


def test_max_instance_mb_also_bounds_a_deflated_data_set_once_inflated(tmp_path: Path) -> None:
    """A deflate bomb: 64 MiB of zeros deflate to about 64 KiB."""
    import zlib

    ds = make_ct_slices(1, rows=16, cols=16)[0]
    ds.PixelData = b"\x00" * (64 * 2**20)
    ds.Rows = ds.Columns = 4096
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    body = raw[144 + int.from_bytes(raw[140:144], "little") :]
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(body) + compressor.flush()
    assert len(deflated) < 2**20
    from testing.dicom_node import send_payload, store_association

    with running_node(tmp_path / "data", limits=InputLimits(max_instance_mb=16)) as node:
        assoc = store_association(node.port, (CTImageStorage,), "1.2.840.10008.1.2.1.99")
        try:
            status = send_payload(assoc, deflated, sop_instance_uid=str(ds.SOPInstanceUID))
        finally:
            assoc.release()
        assert status == StoreStatus.INSTANCE_TOO_LARGE
        assert list(node.spool.incoming.iterdir()) == []
