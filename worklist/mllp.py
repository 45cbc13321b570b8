"""MLLP (HL7 v2 Minimal Lower Layer Protocol) client: one framed message out, one answer in.

A block is ``0x0B`` + message + ``0x1C 0x0D``. hl7apy offers an MLLP server but no client, so
this is the client: one TCP connection per message (what interface engines expect by
default), one deadline for connecting, sending and waiting for the answer together.
"""

from __future__ import annotations

import socket
import time

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ANSWER_BYTES = 1 << 20
"""An acknowledgement is a few hundred bytes; more than this is not an ACK."""


class MllpError(Exception):
    """The exchange failed; ``timed_out`` says whether it was for want of an answer in time."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def frame(payload: bytes) -> bytes:
    """``payload`` as one MLLP block."""
    if START_BLOCK in payload or b"\x1c" in payload:
        raise ValueError("payload must not contain the MLLP block characters 0x0B or 0x1C")
    return START_BLOCK + payload + END_BLOCK


def unframe(block: bytes) -> bytes:
    """The payload of one MLLP block (bytes before the start block are ignored)."""
    start = block.find(START_BLOCK)
    end = block.find(END_BLOCK, start + 1)
    if start < 0 or end < 0:
        raise ValueError("not an MLLP block: start 0x0B or end 0x1C 0x0D missing")
    return block[start + 1 : end]


def exchange(host: str, port: int, payload: bytes, timeout_s: float) -> bytes:
    """Send ``payload`` framed to ``host:port`` and return the payload of the answer block.

    Raises :class:`MllpError` when the peer cannot be reached, closes the connection without a
    complete answer, or has not answered within ``timeout_s`` of the call.
    """
    deadline = time.monotonic() + timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise MllpError(f"no answer from {host}:{port} within {timeout_s:g} s", timed_out=True)
        return left

    try:
        connection = socket.create_connection((host, port), timeout=remaining())
    except TimeoutError as exc:
        raise MllpError(f"connecting to {host}:{port} timed out", timed_out=True) from exc
    except OSError as exc:
        raise MllpError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    with connection:
        try:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.settimeout(remaining())
            connection.sendall(frame(payload))
            received = bytearray()
            while END_BLOCK not in received:
                connection.settimeout(remaining())
                chunk = connection.recv(4096)
                if not chunk:
                    raise MllpError(f"{host}:{port} closed the connection without an answer")
                received += chunk
                if len(received) > MAX_ANSWER_BYTES:
                    raise MllpError(f"{host}:{port} answered more than {MAX_ANSWER_BYTES} bytes")
        except TimeoutError as exc:
            raise MllpError(
                f"no answer from {host}:{port} within {timeout_s:g} s", timed_out=True
            ) from exc
        except OSError as exc:
            raise MllpError(f"exchange with {host}:{port} failed: {exc.strerror or exc}") from exc
    try:
        return unframe(bytes(received))
    except ValueError as exc:
        raise MllpError(f"{host}:{port} answered something else than MLLP: {exc}") from exc
