"""Tell a DICOM client from another protocol by the first bytes it sends to the DICOM port.

An HTTP request, a TLS ClientHello or a port scanner on the DICOM port would otherwise reach
pynetdicom, which reads the bytes six at a time as PDU headers and logs "Unknown PDU type
received" for each. The node peeks at the first bytes instead (leaving them in the socket), so
that such a client is named once and closed before pynetdicom reads anything.
"""

from __future__ import annotations

import socket
import threading
import time

from router.socket_ready import readable_within

DICOM_PDU_TYPES = frozenset(range(0x01, 0x08))
"""PS3.8 9.3.1: A-ASSOCIATE-RQ (01H) to A-ABORT (07H). A first byte outside these is not DICOM;
one inside is left to pynetdicom, which answers protocol errors between DICOM peers itself."""

PEEK_BYTES = 16
"""Enough to recognise an HTTP method, a TLS record or an SSH banner."""

MORE_BYTES_WAIT_S = 0.3
"""Once the first byte says "not DICOM", how long to wait for the rest of a recognisable start."""

_POLL_S = 0.02
_STOP_CHECK_S = 0.25

_HTTP_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"}
)


def non_dicom_kind(first: bytes) -> str | None:
    """``None`` when ``first`` can begin a DICOM PDU (or is empty: nothing to judge); otherwise
    what the client looks like, for the log line."""
    if not first or first[0] in DICOM_PDU_TYPES:
        return None
    token, space, _ = first.partition(b" ")
    if (space and token in _HTTP_METHODS) or first.startswith(b"PRI * HTTP/2"):
        return "looks like HTTP"
    if first[0] == 0x16 and first[1:2] == b"\x03":
        return "looks like TLS"
    if first.startswith(b"SSH-"):
        return "looks like SSH"
    return "unrecognised first bytes " + first[:8].hex(" ")


def peek_first_bytes(sock: socket.socket, wait_s: float, stop: threading.Event) -> bytes:
    """Up to :data:`PEEK_BYTES` of what the peer sent first, left unread in ``sock``.

    Waits up to ``wait_s`` for the first byte (returns ``b""`` if none came, the peer closed,
    or ``stop`` was set). A first byte that can begin a DICOM PDU is returned at once, so a
    DICOM association is not delayed; otherwise waits up to :data:`MORE_BYTES_WAIT_S` for the
    rest of a recognisable start.
    """
    deadline = time.monotonic() + wait_s
    try:
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b""
            if readable_within(sock, min(remaining, _STOP_CHECK_S)):
                break
        else:
            return b""
        first = _peek(sock)
        if not first or first[0] in DICOM_PDU_TYPES:
            return first
        more_until = time.monotonic() + MORE_BYTES_WAIT_S
        while len(first) < PEEK_BYTES and time.monotonic() < more_until and not stop.is_set():
            time.sleep(_POLL_S)
            first = _peek(sock) or first
        return first
    except (OSError, ValueError):  # a socket closed under us: nothing to judge
        return b""


def _peek(sock: socket.socket) -> bytes:
    return sock.recv(PEEK_BYTES, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0))
