"""A throwaway rsyslogd (Debian's rsyslog) standing in for the audit record repository: its own
config in a temp folder, listening on a free loopback port (imtcp, or imtcp with TLS through
rsyslog-gnutls), writing each message's facility, severity, APP-NAME, MSGID and MSG to a
file the test reads. It can be stopped and started again on the same port, as a collector
that goes down and comes back."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testing.orthanc import free_port

RSYSLOGD = Path("/usr/sbin/rsyslogd")
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class TlsFiles:
    """A test CA and the collector's certificate (for 127.0.0.1 and localhost) and key."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A CA and a server certificate signed by it, made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, request = folder / "collector.pem", folder / "collector.key", folder / "req.csr"
    extensions = folder / "san.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
            str(ca), "-days", "2", "-subj", "/CN=radrouter test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request),
            "-subj", "/CN=localhost")  # fmt: skip
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions))  # fmt: skip
    return TlsFiles(ca, cert, key)


@dataclass(frozen=True)
class Received:
    """One message as the collector parsed it."""

    facility: int
    severity: int
    app_name: str
    msgid: str
    msg: bytes
    """The MSG part, without its byte order mark."""


class Collector:
    """One rsyslogd: ``start``, ``stop``, and what it received so far."""

    def __init__(self, folder: Path, port: int, tls: TlsFiles | None) -> None:
        self.folder = folder
        self.port = port
        self.tls = tls
        self.output = folder / "received.log"
        self._process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "rsyslog.conf"
        self.config.write_text(self._config_text())

    def _config_text(self) -> str:
        tls = self.tls
        driver = ""
        module = 'module(load="imtcp")\n'
        if tls is not None:
            driver = (
                f'  DefaultNetstreamDriver="gtls"\n'
                f'  DefaultNetstreamDriverCAFile="{tls.ca}"\n'
                f'  DefaultNetstreamDriverCertFile="{tls.cert}"\n'
                f'  DefaultNetstreamDriverKeyFile="{tls.key}"\n'
            )
            module = (
                'module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
                'StreamDriver.AuthMode="anon")\n'
            )
        return (
            f'global(workDirectory="{self.folder}" maxMessageSize="256k"\n{driver})\n'
            f"{module}"
            f'input(type="imtcp" port="{self.port}" address="127.0.0.1")\n'
            'template(name="fields" type="string" '
            'string="%syslogfacility% %syslogseverity% %app-name% %msgid% %msg%\\n")\n'
            f'*.* action(type="omfile" file="{self.output}" template="fields")\n'
        )

    def start(self, timeout_s: float = 20.0) -> None:
        self._process = subprocess.Popen(
            [str(RSYSLOGD), "-n", "-f", str(self.config), "-i", str(self.folder / "pid")],
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "rsyslogd.err").open("ab"),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {(self.folder / 'rsyslogd.err').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"rsyslogd did not listen on {self.port} in {timeout_s} s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait(timeout=20)
            self._process = None

    def received(self) -> list[Received]:
        if not self.output.exists():
            return []
        found = []
        for line in self.output.read_bytes().splitlines():
            facility, severity, app_name, msgid, msg = line.split(b" ", 4)
            found.append(
                Received(
                    int(facility),
                    int(severity),
                    app_name.decode(),
                    msgid.decode(),
                    msg.removeprefix(BOM),
                )
            )
        return found

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        """What was received, once it is at least ``count`` messages."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.received()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@contextmanager
def running_rsyslog(folder: Path, *, tls: bool = False) -> Iterator[Collector]:
    """rsyslogd on a free loopback port (with TLS: a CA of its own, ``collector.tls``)."""
    files = make_tls_files(folder / "tls") if tls else None
    collector = Collector(folder, free_port(), files)
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()
