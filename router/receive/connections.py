"""The node's live connections: how many each host holds, and what each may send at once.

pynetdicom counts associations only against ``max_associations`` for everyone together, so
one host that opens that many and stays idle locks every other sender out. The node counts
connections per peer host from the moment they are accepted (before a byte is read) to the
moment their thread ends, and refuses a host's connection past ``max_associations_per_host``
with a transient reason (the sender retries later; other hosts still get in).

It also bounds what pynetdicom reads for one PDU. pynetdicom reads a PDU whole, as long as its
length field says, with no timeout on an accepted socket: a peer announcing 4 GiB makes it
allocate that much, and a peer that stops half-way holds the association forever, past every
timeout. Each connection's reads go through :func:`bound_reads` instead: a PDU longer than the
maximum the node announced (PS3.8 D.1) ends the connection, and so does one not complete
within the network timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from router.logs import log_safe
from router.receive.dataset_stream import AssociationStreams, ReceivedDataset
from router.receive.spool import Spool
from router.socket_ready import readable_within
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

OVER_LIMIT_WAIT_S = 2.0
"""How long a connection over its host's limit may take to send its association request (to
be refused with a reason) before it is closed: every SCU sends it at once, and meanwhile the
connection holds none of pynetdicom's association slots."""
_RECV_CHUNK = 256 * 2**10
_NO_WAIT_S = 0.01

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4: what pynetdicom itself answers when
# all its associations are taken.
_REJECT_TRANSIENT = 0x02
_SOURCE_PROVIDER_PRESENTATION = 0x03
_LOCAL_LIMIT = 0x02


class Admission(Enum):
    ADMITTED = "admitted"
    OVER_HOST_LIMIT = "over the per-host limit"


@dataclass
class _Connection:
    assoc: Any
    host: str
    admission: Admission
    on_end: list[Callable[[], None]] = field(default_factory=list)


class PeerConnections:
    """Live connections by peer host; thread-safe (each connection has its own threads)."""

    def __init__(self, max_per_host: int) -> None:
        self.max_per_host = max_per_host
        self._lock = threading.Lock()
        self._live: dict[int, _Connection] = {}

    def opened(self, assoc: Any, host: str) -> Admission:
        """Count a new connection (pynetdicom has not started its thread yet)."""
        ended = self._prune()
        with self._lock:
            held = sum(1 for c in self._live.values() if c.host == host)
            admission = (
                Admission.ADMITTED if held < self.max_per_host else Admission.OVER_HOST_LIMIT
            )
            self._live[id(assoc)] = _Connection(assoc, host, admission)
        _run(ended)
        return admission

    def admission(self, assoc: Any) -> Admission | None:
        with self._lock:
            connection = self._live.get(id(assoc))
        return None if connection is None else connection.admission

    def held_by(self, host: str) -> int:
        self._prune()
        with self._lock:
            return sum(1 for c in self._live.values() if c.host == host)

    def on_end(self, assoc: Any, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the connection ends (closed, or its thread gone)."""
        with self._lock:
            connection = self._live.get(id(assoc))
            if connection is not None:
                connection.on_end.append(callback)
                return
        callback()

    def closed(self, assoc: Any) -> None:
        with self._lock:
            connection = self._live.pop(id(assoc), None)
        if connection is not None:
            _run(connection.on_end)

    def _prune(self) -> list[Callable[[], None]]:
        """Forget connections whose association thread has ended (a close event can be
        missed: a connection killed before its reactor ran); returns their callbacks."""
        ended: list[Callable[[], None]] = []
        with self._lock:
            for key, connection in list(self._live.items()):
                thread = connection.assoc
                if getattr(thread, "ident", None) is not None and not thread.is_alive():
                    del self._live[key]
                    ended.extend(connection.on_end)
        return ended


def _run(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()


def bound_reads(
    transport: Any, max_pdu_bytes: int, timeout_s: float, on_refused: Callable[[str], None]
) -> None:
    """Replace ``transport.recv`` (pynetdicom's ``AssociationSocket``, which reads a PDU as
    ``recv(6)`` then ``recv(length)``) by one that refuses a length over ``max_pdu_bytes`` and
    gives up on a read not complete within ``timeout_s``. Either way it returns what it has,
    which pynetdicom takes as a closed connection (it ends the association)."""

    def recv(nr_bytes: int) -> bytearray:
        sock = getattr(transport, "socket", None)
        if sock is None:
            return bytearray()
        if nr_bytes > max_pdu_bytes:
            on_refused(f"a PDU of {nr_bytes} bytes, over the {max_pdu_bytes}-byte maximum")
            return bytearray()
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        deadline = time.monotonic() + timeout_s
        try:
            while received < nr_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    on_refused(f"a PDU not complete within {timeout_s:g} s")
                    break
                sock.settimeout(remaining)
                count = sock.recv_into(view[received:], min(_RECV_CHUNK, nr_bytes - received))
                if count == 0:
                    break
                received += count
        except TimeoutError:
            on_refused(f"a PDU not complete within {timeout_s:g} s")
        except (OSError, ValueError):
            pass  # closed under us: pynetdicom sees a short read
        finally:
            view.release()
        del buffer[received:]
        return buffer

    transport.recv = recv


def wait_for_data(sock: Any, wait_s: float) -> bool:
    """Whether the peer sent anything within ``wait_s`` (the bytes are left unread)."""
    try:
        return readable_within(sock, wait_s)
    except (OSError, ValueError):
        return False


class ConnectionGuard:
    """The node's EVT_CONN_OPEN / EVT_REQUESTED / EVT_CONN_CLOSE handlers for the limits above
    and for streaming C-STORE data sets (``dataset_stream``); the C-STORE handler takes each
    data set from :meth:`take`."""

    def __init__(
        self,
        spool: Spool,
        db: Database,
        *,
        max_per_host: int,
        max_instance_bytes: int,
        max_pdu_bytes: int,
        network_timeout_s: float,
        over_limit_wait_s: float = OVER_LIMIT_WAIT_S,
    ) -> None:
        self.connections = PeerConnections(max_per_host)
        self._spool = spool
        self._db = db
        self._max_instance_bytes = max_instance_bytes
        self._max_pdu_bytes = max_pdu_bytes
        self._network_timeout_s = network_timeout_s
        self._over_limit_wait_s = over_limit_wait_s
        self._lock = threading.Lock()
        self._streams: dict[int, AssociationStreams] = {}

    def opened(self, event: Any) -> None:
        """EVT_CONN_OPEN, before pynetdicom reads a byte (bind it before other handlers, so
        that a connection counts while they wait for its first bytes)."""
        assoc = event.assoc
        host = str(event.address[0])
        transport = assoc.dul.socket

        def refused(why: str) -> None:
            LOGGER.warning("connection from %s ended: %s", log_safe(host), why)

        admission = self.connections.opened(assoc, host)
        bound_reads(transport, self._max_pdu_bytes, self._network_timeout_s, refused)
        streams = AssociationStreams.install(assoc, self._spool, self._max_instance_bytes)
        with self._lock:
            self._streams[id(assoc)] = streams
        self.connections.on_end(assoc, lambda: self._forget(assoc))
        if admission is Admission.ADMITTED:
            return
        raw = getattr(transport, "socket", None)
        if raw is not None and wait_for_data(raw, self._over_limit_wait_s):
            return  # its association request is refused (transiently) in requested()
        LOGGER.warning(
            "connection from %s closed: the host holds %d connections "
            "(node.limits.max_associations_per_host) and this one sent nothing",
            log_safe(host),
            self.connections.max_per_host,
        )
        transport.close()

    def requested(self, event: Any) -> None:
        """EVT_REQUESTED, after the allow-list: a host over its limit is refused with a
        transient reason (PS3.8 9.3.4: rejected-transient, local-limit-exceeded)."""
        assoc = event.assoc
        if assoc.is_rejected or assoc.is_aborted:
            return
        if self.connections.admission(assoc) is not Admission.OVER_HOST_LIMIT:
            return
        host = str(assoc.requestor.address)
        calling_ae = str(assoc.requestor.primitive.calling_ae_title).strip()
        LOGGER.warning(
            "rejected association from %s at %s: the host holds %d connections "
            "(node.limits.max_associations_per_host)",
            log_safe(calling_ae),
            log_safe(host),
            self.connections.max_per_host,
        )
        self._db.record_event(
            "association_rejected",
            detail=f"calling AE {calling_ae} from {host}: over the per-host limit of "
            f"{self.connections.max_per_host} associations (transient)",
        )
        assoc.acse.send_reject(_REJECT_TRANSIENT, _SOURCE_PROVIDER_PRESENTATION, _LOCAL_LIMIT)
        assoc.is_rejected = True
        assoc.kill()

    def closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE (from pynetdicom's reactor thread).

        A connection that ends before its association request (a port scanner, a load
        balancer's probe, a client the first-bytes check closed) would otherwise leave
        pynetdicom's association thread waiting ``acse_timeout`` for a request that cannot
        come, holding one of ``max_associations`` all along: a few dozen such connections a
        minute lock every sender out. It is told to stop waiting."""
        assoc = event.assoc
        self.connections.closed(assoc)
        if assoc.requestor.primitive is None and not assoc.is_established:
            assoc.acse_timeout = _NO_WAIT_S
            assoc.dul.to_user_queue.put(None)  # "no request": the thread ends at once

    def take(self, assoc: Any, message_id: int) -> ReceivedDataset | None:
        """The streamed data set of the C-STORE request ``message_id`` on ``assoc``."""
        with self._lock:
            streams = self._streams.get(id(assoc))
        return None if streams is None else streams.take(message_id)

    def _forget(self, assoc: Any) -> None:
        with self._lock:
            streams = self._streams.pop(id(assoc), None)
        if streams is not None:
            streams.close()
