"""The DICOM node: C-ECHO and C-STORE SCP with called-AE check and a caller allow-list, on a
plain DICOM port, a DICOM TLS port (optionally with client certificates mapped to calling AE
titles), or both."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from config.schema import AllowedCaller, NodeConfig, NodeTlsConfig
from dicom_sr.uids import is_valid_uid
from router.audit.events import (
    NO_AUDIT,
    AssociationEnded,
    AssociationRefused,
    AuditRecorder,
    InstanceReceived,
)
from router.dicom_tls import PeerCertificate, ae_titles_allowed, describe_ssl_error, server_context
from router.logs import log_safe
from router.receive.connections import ConnectionGuard
from router.receive.first_bytes import non_dicom_kind, peek_first_bytes
from router.receive.ingest import IngestError, Ingestor, Origin, StoreStatus
from router.socket_ready import poll_pynetdicom_sockets, readable_within
from router.store.database import ENGINE_ERRORS, Database

LOGGER = logging.getLogger(__name__)
poll_pynetdicom_sockets()  # before any association: see router.socket_ready

ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)

MAX_PDU_BYTES = 4 * 2**20
"""Largest PDU we accept. Explicit, because peers (dcmtk) read 0 "unlimited" as "use 16 KiB";
large PDUs cut per-PDU Python overhead in pynetdicom several-fold."""

_HANDSHAKE_STOP_CHECK_S = 0.25
"""How often a TLS connection waiting for its ClientHello looks whether the node stops."""

# A-ASSOCIATE-RJ (result, source, diagnostic) values, PS3.8 9.3.4.
_REJECT_PERMANENT = 0x01
_SOURCE_SERVICE_USER = 0x01
_CALLING_AE_NOT_RECOGNISED = 0x03


def caller_allowed(
    allowed: Sequence[AllowedCaller] | None, calling_ae: str, peer_host: str
) -> bool:
    """``None`` allows everyone; otherwise the AE title and (if given) the host must match."""
    if allowed is None:
        return True
    return any(
        entry.ae_title == calling_ae and (entry.host is None or entry.host == peer_host)
        for entry in allowed
    )


class _TlsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's server, with the TLS handshake moved out of the accept loop into the
    connection's own thread (``DicomNode._handle_conn_open``, under the network timeout).
    pynetdicom handshakes while accepting, with no timeout, so one client that connects and
    says nothing would stall every TLS association after it."""

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        wrapped = self.ssl_context.wrap_socket(
            client, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address


class _SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's server, bound with ``SO_REUSEPORT``: several receiver processes listen on
    one port, and the kernel hands each new connection to one of them."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class AssociationTracker:
    """Records association lifetimes so completion can use "released" as evidence."""

    def __init__(
        self,
        db: Database,
        on_closed: Callable[[str], None] | None = None,
        id_prefix: str = "",
    ) -> None:
        """``id_prefix``: begins every association id this process records (a receiver
        sharing the port names itself, ``r1-``, so the record says which process took it)."""
        self.db = db
        self.on_closed = on_closed
        self._id_prefix = id_prefix
        self._ids: dict[int, str] = {}
        self._lock = threading.Lock()

    def association_id(self, assoc: Any) -> str | None:
        with self._lock:
            return self._ids.get(id(assoc))

    def opened(self, assoc: Any) -> None:
        association_id = f"{self._id_prefix}{uuid.uuid4().hex}"
        with self._lock:
            self._ids[id(assoc)] = association_id
        self.db.connection().execute(
            "INSERT INTO associations (id, calling_ae, called_ae, peer_host, opened_at, state) "
            "VALUES (?, ?, ?, ?, ?, 'open')",
            (
                association_id,
                assoc.requestor.ae_title.strip(),
                assoc.acceptor.ae_title.strip(),
                str(assoc.requestor.address),
                time.time(),
            ),
        )

    def closed(self, assoc: Any, state: str) -> None:
        with self._lock:
            association_id = self._ids.pop(id(assoc), None)
        if association_id is None:
            return
        self.db.connection().execute(
            "UPDATE associations SET state = ?, closed_at = ? WHERE id = ? AND state = 'open'",
            (state, time.time(), association_id),
        )
        if self.on_closed is not None:
            try:
                self.on_closed(association_id)
            except Exception:
                LOGGER.exception("association close observer failed")


class DicomNode:
    """pynetdicom AE serving C-ECHO and C-STORE for every storage SOP class."""

    def __init__(
        self,
        node: NodeConfig,
        ingestor: Ingestor,
        tracker: AssociationTracker,
        allowed_callers: Callable[[], Sequence[AllowedCaller] | None],
        on_received: Callable[[str, StoreStatus], None] | None = None,
        *,
        audit: AuditRecorder = NO_AUDIT,
        shared_port: bool = False,
    ) -> None:
        self.node = node
        self._shared_port = shared_port
        self.ingestor = ingestor
        self.tracker = tracker
        self._allowed_callers = allowed_callers
        self._on_received = on_received
        self._audit = audit
        self._server: Any = None
        self._tls_server: Any = None
        self._stopping = threading.Event()
        ae = AE(ae_title=node.ae_title)
        ae.require_called_aet = node.check_called_ae
        ae.maximum_associations = node.max_associations
        ae.network_timeout = node.network_timeout_s
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.network_timeout_s
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
        self.ae = ae
        self._guard = ConnectionGuard(
            ingestor.spool,
            ingestor.db,
            max_per_host=min(node.limits.max_associations_per_host, node.max_associations),
            max_instance_bytes=node.limits.max_instance_mb * 2**20,
            max_pdu_bytes=MAX_PDU_BYTES,
            network_timeout_s=node.network_timeout_s,
        )

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("DICOM node is not running")
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int:
        if self._tls_server is None:
            raise RuntimeError("DICOM TLS listener is not running")
        return int(self._tls_server.server_address[1])

    def listening_ports(self) -> dict[str, int]:
        """``{"dicom": port, "dicom_tls": port}``, for the listeners that run."""
        ports: dict[str, int] = {}
        if self._server is not None:
            ports["dicom"] = self.port
        if self._tls_server is not None:
            ports["dicom_tls"] = self.tls_port
        return ports

    def start(self) -> None:
        self._stopping.clear()
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._guard.opened),  # first: counts and bounds the connection
            (evt.EVT_CONN_OPEN, self._handle_conn_open),
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_REQUESTED, self._guard.requested),
            (evt.EVT_CONN_CLOSE, self._guard.closed),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_ESTABLISHED, self._handle_established),
            (evt.EVT_RELEASED, self._handle_released),
            (evt.EVT_ABORTED, self._handle_aborted),
            (evt.EVT_CONN_CLOSE, self._handle_conn_close),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
        ]
        tls = self.node.tls
        context = server_context(tls) if tls is not None else None  # fails before listening
        self.ingestor.quarantine.start()
        if self.node.port is not None and self._shared_port:
            self._server = self.ae.make_server(
                (self.node.bind, self.node.port),
                evt_handlers=handlers,
                server_class=_SharedPortServer,
            )
            threading.Thread(target=self._server.serve_forever, name="dicom", daemon=True).start()
            self.ae._servers.append(self._server)
        elif self.node.port is not None:
            self._server = self.ae.start_server(
                (self.node.bind, self.node.port), block=False, evt_handlers=handlers
            )
            LOGGER.info(
                "DICOM node %s listening on %s:%d", self.node.ae_title, self.node.bind, self.port
            )
        if tls is not None and context is not None:
            self._tls_server = self._start_tls_server(tls, context, handlers)

    def _start_tls_server(
        self, tls: NodeTlsConfig, context: ssl.SSLContext, handlers: list[Any]
    ) -> Any:
        """As ``AE.start_server(block=False)`` does, with the server class above."""
        server = self.ae.make_server(
            (tls.bind or self.node.bind, tls.port),
            ssl_context=context,
            evt_handlers=handlers,
            server_class=_TlsAssociationServer,
        )
        threading.Thread(target=server.serve_forever, name="dicom-tls", daemon=True).start()
        self.ae._servers.append(server)  # so that AE.shutdown and server.shutdown find it
        LOGGER.info(
            "DICOM node %s listening for DICOM TLS on %s:%d (%s)",
            self.node.ae_title,
            tls.bind or self.node.bind,
            int(server.server_address[1]),
            "client certificates required" if tls.client_ca_file else "no client certificates",
        )
        return server

    def stop(self) -> None:
        self._stopping.set()  # a connection still being peeked at lets go
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None
        self.ae.shutdown()
        self.ingestor.quarantine.stop()

    # --- handlers -------------------------------------------------------------------------

    def _handle_conn_open(self, event: Any) -> None:
        """Close a client whose first bytes cannot begin a DICOM PDU (an HTTP request, a TLS
        ClientHello, a scanner), naming it once, before pynetdicom reads them.

        This runs in the connection's own thread before pynetdicom starts reading, and only
        peeks, so a DICOM client's bytes are left for pynetdicom untouched and undelayed.
        Closing through pynetdicom's socket makes it end the connection quietly. (A filter on
        pynetdicom's log would see one "Unknown PDU type" line per six bytes read, without the
        peer's address or the bytes that say what it is.)"""
        transport = event.assoc.dul.socket
        raw = getattr(transport, "socket", None)
        if isinstance(raw, ssl.SSLSocket):
            self._tls_handshake(transport, raw, event.address)
            return
        if not isinstance(raw, socket.socket):
            return
        kind = non_dicom_kind(peek_first_bytes(raw, self.node.acse_timeout_s, self._stopping))
        if kind is None:
            return
        host, port = event.address[0], event.address[1]
        LOGGER.warning(
            "non-DICOM client at %s:%s (%s) — connection closed",
            log_safe(host),
            log_safe(port),
            kind,
        )
        transport.close()

    def _tls_handshake(self, transport: Any, raw: ssl.SSLSocket, address: Any) -> None:
        """The TLS handshake of a connection to the TLS listener, in its own thread and within
        the network timeout; a client that fails it (a plain DICOM client, an untrusted or
        expired certificate, none where one is required) is named once and closed. Waiting
        for the ClientHello lets go when the node stops, as the plain port's peek does."""
        timeout = raw.gettimeout()
        deadline = time.monotonic() + self.node.network_timeout_s
        try:
            while not readable_within(raw, _HANDSHAKE_STOP_CHECK_S):
                if self._stopping.is_set():
                    raise TimeoutError("the node is stopping")
                if time.monotonic() > deadline:
                    raise TimeoutError("no ClientHello within the network timeout")
            raw.settimeout(max(deadline - time.monotonic(), 0.1))
            raw.do_handshake()
        except (OSError, ValueError) as exc:
            reason = describe_ssl_error(exc) if isinstance(exc, ssl.SSLError) else str(exc)
            LOGGER.warning(
                "TLS handshake with %s:%s failed (%s) — connection closed",
                log_safe(address[0]),
                log_safe(address[1]),
                log_safe(reason, 200),
            )
            transport.close()
            return
        raw.settimeout(timeout)
        certificate = PeerCertificate.of(raw)
        LOGGER.debug(
            "TLS from %s:%s: %s %s, %s",
            log_safe(address[0]),
            log_safe(address[1]),
            raw.version(),
            (raw.cipher() or ("?",))[0],
            certificate.describe() if certificate else "no client certificate",
        )

    def _certificate_refusal(self, assoc: Any, calling_ae: str) -> str | None:
        """Why the client certificate may not use ``calling_ae`` (``node.tls.
        client_certificates``), or ``None`` when it may or the association is not TLS."""
        raw = getattr(assoc.dul.socket, "socket", None)
        tls = self.node.tls
        if not isinstance(raw, ssl.SSLSocket) or tls is None:
            return None
        certificate = PeerCertificate.of(raw)
        allowed = ae_titles_allowed(tls.client_certificates, certificate)
        if allowed is None or calling_ae in allowed:
            return None
        if certificate is None:
            return "no client certificate"
        if not allowed:
            return (
                f"TLS certificate {certificate.describe()} is not in node.tls.client_certificates"
            )
        return f"TLS certificate {certificate.describe()} may not use this calling AE title"

    def _handle_requested(self, event: Any) -> None:
        assoc = event.assoc
        calling_ae = assoc.requestor.primitive.calling_ae_title.strip()
        host = str(assoc.requestor.address)
        refusal = self._certificate_refusal(assoc, calling_ae)
        if refusal is None and not caller_allowed(self._allowed_callers(), calling_ae, host):
            refusal = "not in allow-list"
        if refusal is not None:
            LOGGER.warning(
                "rejected association from %s at %s: %s",
                log_safe(calling_ae),
                log_safe(host),
                log_safe(refusal, 200),
            )
            self.ingestor.db.record_event(
                "association_rejected",
                detail=f"calling AE {calling_ae} from {host} not allowed: {refusal}",
            )
            called_ae = assoc.requestor.primitive.called_ae_title.strip()
            self._audit.record(AssociationRefused(calling_ae, called_ae, host, refusal))
            assoc.acse.send_reject(
                _REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED
            )
            assoc.is_rejected = True
            assoc.kill()

    def _handle_established(self, event: Any) -> None:
        try:
            self.tracker.opened(event.assoc)
        except Exception:
            LOGGER.exception("could not record association")

    def _handle_rejected(self, event: Any) -> None:
        """pynetdicom refused the association itself: for the audit trail, one addressed to
        another AE title (its other refusals, such as too many associations, are load)."""
        primitive = event.assoc.requestor.primitive
        called_ae = primitive.called_ae_title.strip()
        if self.node.check_called_ae and called_ae != self.node.ae_title:
            reason = f"called AE title {called_ae!r} is not this node's ({self.node.ae_title})"
            calling_ae = primitive.calling_ae_title.strip()
            host = str(event.assoc.requestor.address)
            self._audit.record(AssociationRefused(calling_ae, called_ae, host, reason))

    def _handle_released(self, event: Any) -> None:
        self._closed(event.assoc, "released")

    def _handle_aborted(self, event: Any) -> None:
        self._closed(event.assoc, "aborted")

    def _handle_conn_close(self, event: Any) -> None:
        # Only reached without a release/abort first: the peer dropped the connection.
        self._closed(event.assoc, "interrupted")

    def _closed(self, assoc: Any, state: str) -> None:
        association_id = self.tracker.association_id(assoc)
        self.tracker.closed(assoc, state)
        if association_id is not None:
            self._audit.record(AssociationEnded(association_id, state))

    def _handle_echo(self, event: Any) -> int:
        return int(StoreStatus.SUCCESS)

    def _handle_store(self, event: Any) -> int:
        assoc = event.assoc
        origin = Origin(
            association_id=self.tracker.association_id(assoc),
            calling_ae=assoc.requestor.ae_title.strip(),
            called_ae=assoc.acceptor.ae_title.strip(),
        )
        status = StoreStatus.SUCCESS
        sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
        if not is_valid_uid(sop_instance_uid):  # then it is any text: not for the log
            sop_instance_uid = "(not a DICOM UID)"
        study_uid: str | None = None
        try:
            # The data set arrived in a spool file, not in memory (router/receive/dataset_stream.py).
            received = self._guard.take(assoc, int(event.request.MessageID))
            context_sop_class = str(event.context.abstract_syntax)
            outcome = self.ingestor.ingest_received(received, origin, context_sop_class)
            study_uid = outcome.header.study_uid
        except IngestError as exc:
            status = exc.status
            study_uid = exc.study_uid
            LOGGER.warning(
                "C-STORE of instance %s (study %s) from %s refused with 0x%04X: %s",
                log_safe(sop_instance_uid),
                log_safe(exc.study_uid or "unknown"),
                log_safe(origin.calling_ae),
                exc.status,
                log_safe(exc.reason, 300),
            )
        except Exception as exc:  # boundary: any other failure is a refusal, never a crash
            # A database or file system failure is a shortage the sender may retry through;
            # anything else would fail again the same way.
            transient = isinstance(exc, (OSError, *ENGINE_ERRORS))
            status = StoreStatus.OUT_OF_RESOURCES if transient else StoreStatus.CANNOT_UNDERSTAND
            LOGGER.exception(
                "C-STORE of instance %s from %s failed unexpectedly",
                log_safe(sop_instance_uid),
                log_safe(origin.calling_ae),
            )
        if origin.association_id is not None:
            self._audit.record(
                InstanceReceived(
                    origin.association_id,
                    origin.calling_ae,
                    origin.called_ae,
                    str(assoc.requestor.address),
                    study_uid,
                    str(event.request.AffectedSOPClassUID),
                    status is StoreStatus.SUCCESS,
                )
            )
        if self._on_received is not None:
            try:
                self._on_received(origin.calling_ae, status)
            except Exception:
                LOGGER.exception("received observer failed")
        return int(status)
