"""Real receivers on loopback for the channel tests: hl7apy's MLLP server and an HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hl7apy.mllp import AbstractHandler, MLLPServer

from worklist import hl7

ORU_R01 = "ORU^R01^ORU_R01"

AckPolicy = Callable[[str], str | None]
"""Given the received ER7, the ACK ER7 to answer, or ``None`` to never answer."""


@dataclass
class Hl7Listener:
    """A running MLLP listener; ``received`` holds each message parsed back with hl7apy."""

    host: str
    port: int
    received: list[hl7.OruR01] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _RecordingHandler(AbstractHandler):  # type: ignore[misc]
    def __init__(self, message: str, listener: Hl7Listener, answer: AckPolicy) -> None:
        super().__init__(message)
        self._listener = listener
        self._answer = answer

    def reply(self) -> str:
        message: str = self.incoming_message
        self._listener.raw.append(message)
        try:
            self._listener.received.append(hl7.parse_oru_r01(message))
        except hl7.Hl7Error as exc:
            return _framed(hl7.build_ack(message, "AR", str(exc)))
        ack = self._answer(message)
        if ack is None:
            self._listener.release.wait(30)
            return ""
        return _framed(ack)


def _framed(er7: str) -> str:
    return "\x0b" + er7 + "\x1c\r"


def accept(message: str) -> str:
    return hl7.build_ack(message, "AA")


@contextmanager
def running_hl7_listener(answer: AckPolicy = accept, port: int = 0) -> Iterator[Hl7Listener]:
    """hl7apy's ``MLLPServer`` on loopback (a free port unless ``port`` is given), answering
    each ORU^R01 as told."""
    listener = Hl7Listener("127.0.0.1", port)
    MLLPServer.allow_reuse_address = True
    server = MLLPServer(
        "127.0.0.1", port, {ORU_R01: (_RecordingHandler, listener, answer)}, timeout=10
    )
    listener.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        listener.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


HttpAnswer = Callable[[RecordedRequest], tuple[int, dict[str, Any] | None]]
"""Given a request, the status and JSON body to answer (the handler may also sleep)."""


@dataclass
class HttpListener:
    base_url: str
    requests: list[RecordedRequest] = field(default_factory=list)


@contextmanager
def running_http_listener(answer: HttpAnswer) -> Iterator[HttpListener]:
    """A ``ThreadingHTTPServer`` on a free loopback port that records every request."""
    listener = HttpListener("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            request = RecordedRequest(
                "POST",
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
            )
            listener.requests.append(request)
            status, body = answer(request)
            payload = json.dumps(body).encode() if body is not None else b""
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    listener.base_url = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
