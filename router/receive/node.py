"""The DICOM node: C-ECHO and C-STORE SCP with called-AE check and a caller allow-list."""

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

from config.schema import AllowedCaller, NodeConfig
from router.logs import log_safe
from router.receive.first_bytes import non_dicom_kind, peek_first_bytes
from router.receive.ingest import IngestError, Ingestor, Origin, StoreStatus
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

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


class AssociationTracker:
    """Records association lifetimes so completion can use "released" as evidence."""

    def __init__(self, db: Database, on_closed: Callable[[str], None] | None = None) -> None:
        self.db = db
        self.on_closed = on_closed
        self._ids: dict[int, str] = {}
        self._lock = threading.Lock()

    def association_id(self, assoc: Any) -> str | None:
        with self._lock:
            return self._ids.get(id(assoc))

    def opened(self, assoc: Any) -> None:
        association_id = uuid.uuid4().hex
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
    ) -> None:
        self.node = node
        self.ingestor = ingestor
        self.tracker = tracker
        self._allowed_callers = allowed_callers
        self._on_received = on_received
        self._server: Any = None
        self._stopping = threading.Event()
        ae = AE(ae_title=node.ae_title)
        ae.require_called_aet = node.check_called_ae
        ae.maximum_associations = node.max_associations
        ae.network_timeout = node.network_timeout_s
        ae.acse_timeout = node.network_timeout_s
        ae.dimse_timeout = node.network_timeout_s
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
        self.ae = ae

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("DICOM node is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._stopping.clear()
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._handle_conn_open),
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_ESTABLISHED, self._handle_established),
            (evt.EVT_RELEASED, self._handle_released),
            (evt.EVT_ABORTED, self._handle_aborted),
            (evt.EVT_CONN_CLOSE, self._handle_conn_close),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
        ]
        self._server = self.ae.start_server(
            (self.node.bind, self.node.port), block=False, evt_handlers=handlers
        )
        LOGGER.info(
            "DICOM node %s listening on %s:%d", self.node.ae_title, self.node.bind, self.port
        )

    def stop(self) -> None:
        self._stopping.set()  # a connection still being peeked at lets go
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

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
        if not isinstance(raw, socket.socket) or isinstance(raw, ssl.SSLSocket):
            return
        kind = non_dicom_kind(peek_first_bytes(raw, self.node.network_timeout_s, self._stopping))
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

    def _handle_requested(self, event: Any) -> None:
        assoc = event.assoc
        calling_ae = assoc.requestor.primitive.calling_ae_title.strip()
        host = str(assoc.requestor.address)
        if not caller_allowed(self._allowed_callers(), calling_ae, host):
            LOGGER.warning(
                "rejected association from %s at %s: not in allow-list",
                log_safe(calling_ae),
                log_safe(host),
            )
            self.ingestor.db.record_event(
                "association_rejected", detail=f"calling AE {calling_ae} from {host} not allowed"
            )
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

    def _handle_released(self, event: Any) -> None:
        self.tracker.closed(event.assoc, "released")

    def _handle_aborted(self, event: Any) -> None:
        self.tracker.closed(event.assoc, "aborted")

    def _handle_conn_close(self, event: Any) -> None:
        # Only reached without a release/abort first: the peer dropped the connection.
        self.tracker.closed(event.assoc, "interrupted")

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
        try:
            data = event.encoded_dataset(include_meta=True)
            self.ingestor.ingest(data, origin, sop_instance_uid)
        except IngestError as exc:
            status = exc.status
            LOGGER.warning(
                "C-STORE of instance %s (study %s) from %s refused with 0x%04X: %s",
                log_safe(sop_instance_uid),
                log_safe(exc.study_uid or "unknown"),
                log_safe(origin.calling_ae),
                exc.status,
                log_safe(exc.reason, 300),
            )
        except Exception:  # boundary: any other failure is a refusal, never a crash
            status = StoreStatus.OUT_OF_RESOURCES
            LOGGER.exception(
                "C-STORE of instance %s from %s failed unexpectedly",
                log_safe(sop_instance_uid),
                log_safe(origin.calling_ae),
            )
        if self._on_received is not None:
            try:
                self._on_received(origin.calling_ae, status)
            except Exception:
                LOGGER.exception("received observer failed")
        return int(status)
