"""Audit messages reach a syslog collector (Debian's rsyslogd) as RFC 5424 messages over TCP
and TLS, and none is lost while the collector is down or the router restarts."""

from __future__ import annotations

import datetime
import socket
import time
from pathlib import Path

from router.audit.events import Actor, ReadKind, StudyRead
from router.audit.log import AuditLog
from router.audit.syslog import (
    BOM,
    DatagramConnection,
    SyslogForwarder,
    SyslogTarget,
    Transport,
    octet_counted,
    rfc5424,
)
from router.audit.trail import AuditTrail
from testing.rsyslog import Collector, running_rsyslog
from tests.router.audit.schema import schema_errors
from tests.router.audit.test_messages import STUDY, composer


def _trail(folder: Path, collector: Collector, transport: Transport = "tcp") -> AuditTrail:
    built = composer()
    log = AuditLog(folder, 10**6, lambda p, d: built.log_started(time.time(), p, d).to_xml())
    target = SyslogTarget(
        "127.0.0.1",
        collector.port,
        transport,
        ca_file=collector.tls.ca if collector.tls is not None else None,
        timeout_s=5,
    )
    forwarder = SyslogForwarder(
        log, target, folder / "syslog.cursor", hostname="router.example", retry_max_s=0.5
    )
    return AuditTrail(log, built, forwarder=forwarder, repeat_window_s=0)


def _read(user: str) -> StudyRead:
    return StudyRead(Actor(user, (), "10.0.0.1"), STUDY, ReadKind.STUDY_VIEW)


def _log_lines(trail: AuditTrail) -> list[bytes]:
    return [line.data for line in trail.log.lines()]


def _delivered(tmp_path: Path, transport: Transport) -> None:
    with running_rsyslog(tmp_path / "collector", tls=transport == "tls") as collector:
        trail = _trail(tmp_path / "audit", collector, transport)
        trail.start()
        for user in ("a", "b", "c"):
            trail.record(_read(user))
        trail.flush()
        received = collector.wait_for(4)
        trail.stop()
    assert [r.msg for r in received] == _log_lines(trail)
    for item in received:
        assert (item.facility, item.severity) == (10, 5)
        assert (item.app_name, item.msgid) == ("radrouter", "IHE+RFC-3881")
        assert schema_errors(item.msg) == []


def test_messages_reach_rsyslog_over_tcp_as_rfc5424_with_the_xml_as_msg(tmp_path: Path) -> None:
    _delivered(tmp_path, "tcp")


def test_messages_reach_rsyslog_over_tls(tmp_path: Path) -> None:
    _delivered(tmp_path, "tls")


def test_no_message_is_lost_while_the_collector_is_down(tmp_path: Path) -> None:
    with running_rsyslog(tmp_path / "collector") as collector:
        trail = _trail(tmp_path / "audit", collector)
        trail.start()
        trail.record(_read("before"))
        trail.flush()
        assert len(collector.wait_for(2)) == 2
        collector.stop()
        for index in range(20):
            trail.record(_read(f"while-down-{index}"))
        trail.flush()
        time.sleep(1.5)  # the forwarder finds the collector gone and keeps trying
        assert len(trail.forwarder.pending()) == 20  # type: ignore[union-attr]
        collector.start()
        trail.record(_read("after"))
        received = collector.wait_for(23)
        trail.stop()
    assert [r.msg for r in received] == _log_lines(trail)


def test_a_restart_sends_what_the_collector_missed(tmp_path: Path) -> None:
    with running_rsyslog(tmp_path / "collector") as collector:
        collector.stop()
        first = _trail(tmp_path / "audit", collector)
        first.start()
        for index in range(5):
            first.record(_read(f"u{index}"))
        first.stop()  # the router stops while the collector is down
        collector.start()
        second = _trail(tmp_path / "audit", collector)  # the same folder and cursor
        second.start()
        received = collector.wait_for(6)
        second.stop()
    assert [r.msg for r in received] == _log_lines(second)


def test_the_frame_is_rfc5424_with_a_bom_and_octet_counted() -> None:
    at = datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.UTC)
    frame = rfc5424(b"<AuditMessage/>", at=at, hostname="my host", app_name="radrouter", procid="7")
    assert frame == (
        b"<85>1 2026-05-01T12:00:00.000000Z myhost radrouter 7 IHE+RFC-3881 - "
        + BOM
        + b"<AuditMessage/>"
    )
    assert octet_counted(b"abc") == b"3 abc"


def test_udp_sends_one_message_per_datagram() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        connection = DatagramConnection(SyslogTarget("127.0.0.1", receiver.getsockname()[1], "udp"))
        connection.send([b"one", b"two"])
        connection.close()
        assert [receiver.recv(100), receiver.recv(100)] == [b"one", b"two"]
