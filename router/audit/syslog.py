"""Audit messages to a syslog collector, as IHE ATNA asks: RFC 5424 messages whose MSG is the
XML, over TLS (RFC 5425, octet-counted frames), plain TCP (the same framing) or UDP (RFC 5426,
one message per datagram).

The forwarder follows the local log from a cursor saved beside it, so the log itself is the
spool: messages written while the collector is down are sent, in order, once it answers
again, and a restart resumes from the cursor. Delivery is at least once (a message sent just
before a crash, whose cursor was not yet saved, is sent again). Over TCP and TLS a message
counts as sent once the kernel took it; a collector that dies holding it loses it (RFC 5425
has no acknowledgements). Over UDP nothing is confirmed at all.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from router.audit.log import AuditLog, LogLine, file_name
from router.logs import log_safe
from router.socket_ready import readable_within

LOGGER = logging.getLogger(__name__)

FACILITY_SECURITY = 10
SEVERITY_NOTICE = 5
PRI = FACILITY_SECURITY * 8 + SEVERITY_NOTICE
"""Facility 10 (security/authorization messages), severity 5 (notice), as IHE ATNA asks."""
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
"""RFC 5424 6.4: a MSG in UTF-8 begins with the byte order mark."""

Transport = Literal["tls", "tcp", "udp"]


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most ``limit``."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def rfc5424(
    message: bytes, *, at: datetime.datetime, hostname: str, app_name: str, procid: str
) -> bytes:
    """One syslog message (RFC 5424) carrying ``message`` as its MSG."""
    timestamp = at.astimezone(datetime.UTC).isoformat(timespec="microseconds")
    header = (
        f"<{PRI}>1 {timestamp.replace('+00:00', 'Z')} {_header_field(hostname, 255)} "
        f"{_header_field(app_name, 48)} {_header_field(procid, 128)} {MSGID} - "
    )
    return header.encode("ascii") + BOM + message


def octet_counted(frame: bytes) -> bytes:
    """RFC 5425 / RFC 6587 framing: the length in decimal, a space, the message."""
    return str(len(frame)).encode("ascii") + b" " + frame


@dataclass(frozen=True)
class SyslogTarget:
    """Where the collector is and how to reach it."""

    host: str
    port: int
    transport: Transport = "tls"
    ca_file: Path | None = None
    """PEM file of the CAs the collector's certificate must chain to (default: the system's)."""
    cert_file: Path | None = None
    key_file: Path | None = None
    """radrouter's own certificate and key, for a collector that authenticates its nodes
    (ATNA's mutual authentication)."""
    server_name: str | None = None
    """The name the collector's certificate must carry (default: ``host``)."""
    timeout_s: float = 10.0


class Connection(Protocol):
    def send(self, frames: Sequence[bytes]) -> None: ...

    def alive(self) -> bool: ...

    def close(self) -> None: ...


class StreamConnection:
    """TCP or TLS to the collector, octet-counted frames."""

    def __init__(self, target: SyslogTarget) -> None:
        self._timeout = target.timeout_s
        raw = socket.create_connection((target.host, target.port), timeout=target.timeout_s)
        try:
            if target.transport == "tls":
                context = ssl.create_default_context(
                    cafile=None if target.ca_file is None else str(target.ca_file)
                )
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                if target.cert_file is not None:
                    context.load_cert_chain(
                        str(target.cert_file),
                        None if target.key_file is None else str(target.key_file),
                    )
                self._sock: socket.socket = context.wrap_socket(
                    raw, server_hostname=target.server_name or target.host
                )
            else:
                self._sock = raw
        except BaseException:
            raw.close()
            raise

    def send(self, frames: Sequence[bytes]) -> None:
        self._sock.sendall(b"".join(octet_counted(frame) for frame in frames))

    def alive(self) -> bool:
        """False once the collector closed its end (it never sends anything else)."""
        if not readable_within(self._sock, 0):
            return True
        self._sock.setblocking(False)
        try:
            return self._sock.recv(1) != b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return True  # only TLS records without data (session tickets)
        except OSError:
            return False
        finally:
            self._sock.settimeout(self._timeout)

    def close(self) -> None:
        try:
            if isinstance(self._sock, ssl.SSLSocket):
                self._sock.settimeout(1.0)
                self._sock.unwrap()
        except (OSError, ValueError):
            pass
        finally:
            self._sock.close()


class DatagramConnection:
    """UDP: one message per datagram."""

    def __init__(self, target: SyslogTarget) -> None:
        self._address = (target.host, target.port)
        family = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)[0][0]
        self._sock = socket.socket(family, socket.SOCK_DGRAM)

    def send(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            self._sock.sendto(frame, self._address)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        self._sock.close()


def connect(target: SyslogTarget) -> Connection:
    if target.transport == "udp":
        return DatagramConnection(target)
    return StreamConnection(target)


@dataclass(frozen=True)
class Cursor:
    """The first byte not yet sent: a log file and an offset in it."""

    file: str
    offset: int

    @classmethod
    def load(cls, path: Path) -> Cursor | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(data["file"]), int(data["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"file": self.file, "offset": self.offset}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)


class SyslogForwarder:
    """A thread that sends what the log holds beyond the cursor, then moves the cursor.

    Without a saved cursor it starts at the current end of the log: a collector configured
    today gets what is written from now on, not years of history."""

    def __init__(
        self,
        log: AuditLog,
        target: SyslogTarget,
        cursor_path: Path,
        *,
        hostname: str,
        app_name: str = "radrouter",
        procid: str | None = None,
        batch: int = 200,
        retry_max_s: float = 60.0,
        connector: Callable[[SyslogTarget], Connection] = connect,
    ) -> None:
        self.log = log
        self.target = target
        self.cursor_path = cursor_path
        self._hostname = hostname
        self._app_name = app_name
        self._procid = procid or str(os.getpid())
        self._batch = batch
        self._retry_max_s = retry_max_s
        self._connector = connector
        self._connection: Connection | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = False
        self.cursor = Cursor.load(cursor_path) or self._end_of_log()
        if not cursor_path.exists():
            cursor_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.cursor.save(cursor_path)

    def _end_of_log(self) -> Cursor:
        files = self.log.files()
        if not files:
            return Cursor(file_name(1), 0)
        return Cursor(files[-1].name, files[-1].stat().st_size)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="audit-syslog", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, drain_s: float = 2.0) -> None:
        """Send what is pending for at most ``drain_s`` (what is left stays in the log and
        goes at the next start), then close."""
        if self._thread is not None:
            self._drain_s = drain_s
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=drain_s + self.target.timeout_s + 5)
            self._thread = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def pending(self) -> list[LogLine]:
        """Complete lines of the log not yet sent."""
        return list(self.log.lines(self.log.folder / self.cursor.file, self.cursor.offset))

    # --- the loop ---------------------------------------------------------------------------

    _drain_s = 2.0

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                sent = self.send_once()
            except Exception as exc:  # boundary: the forwarder never dies
                self._failed(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._retry_max_s)
                continue
            backoff = 1.0
            if not sent:
                self._wake.wait(0.5)
                self._wake.clear()
        deadline = time.monotonic() + self._drain_s
        while time.monotonic() < deadline:
            try:
                if not self.send_once():
                    return
            except Exception as exc:  # boundary: what is left goes at the next start
                self._failed(exc)
                return

    def send_once(self) -> bool:
        """Send the next batch of pending lines; False when nothing was pending. Raises
        OSError when the collector cannot be reached (the cursor stays)."""
        batch: list[LogLine] = []
        for line in self.log.lines(self.log.folder / self.cursor.file, self.cursor.offset):
            batch.append(line)
            if len(batch) >= self._batch:
                break
        if not batch:
            return False
        connection = self._connection
        if connection is not None and not connection.alive():
            connection.close()
            connection = self._connection = None
        if connection is None:
            connection = self._connection = self._connector(self.target)
        now = datetime.datetime.now(datetime.UTC)
        frames = [
            rfc5424(
                line.data,
                at=now,
                hostname=self._hostname,
                app_name=self._app_name,
                procid=self._procid,
            )
            for line in batch
        ]
        try:
            connection.send(frames)
        except BaseException:
            connection.close()
            self._connection = None
            raise
        last = batch[-1]
        self.cursor = Cursor(last.path.name, last.offset + len(last.data) + 1)
        self.cursor.save(self.cursor_path)
        if self._outage:
            LOGGER.info(
                "audit collector %s:%d answers again; the messages kept meanwhile are sent",
                log_safe(self.target.host),
                self.target.port,
            )
            self._outage = False
        return True

    def _failed(self, exc: Exception) -> None:
        if not self._outage:
            LOGGER.warning(
                "audit collector %s:%d (%s) cannot be reached: %s; messages are kept in the "
                "local log and sent when it answers",
                log_safe(self.target.host),
                self.target.port,
                self.target.transport,
                log_safe(exc, 300),
            )
            self._outage = True
