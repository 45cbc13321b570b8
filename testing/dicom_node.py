"""radrouter's DICOM node on loopback for tests, and the raw calls hostile-input tests make."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from config.schema import InputLimits, NodeConfig, QuarantineConfig
from router.receive.ingest import Ingestor
from router.receive.node import AssociationTracker, DicomNode
from router.receive.quarantine import Quarantine
from router.receive.spool import Spool
from router.store.database import Database, SqliteDatabase
from testing.orthanc import free_port

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def make_ingestor(
    db: Database,
    root: Path,
    limits: InputLimits | None = None,
    quarantine: QuarantineConfig | None = None,
) -> Ingestor:
    """An ingestor spooling to ``root/spool`` and quarantining to ``root/quarantine``."""
    return Ingestor(
        db,
        Spool(root / "spool"),
        Quarantine(root / "quarantine", db, quarantine or QuarantineConfig()),
        limits=limits,
    )


@dataclass
class NodeUnderTest:
    node: DicomNode
    db: Database
    root: Path
    port: int

    @property
    def spool(self) -> Spool:
        return self.node.ingestor.spool

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"


@contextmanager
def running_node(root: Path, **node_settings: Any) -> Iterator[NodeUnderTest]:
    """A node on 127.0.0.1 with its database, spool and quarantine under ``root``;
    ``node_settings`` are ``NodeConfig`` fields (``limits=InputLimits(...)``, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    db = SqliteDatabase(root / "db.sqlite3")
    port = free_port()
    config = NodeConfig(ae_title="RADROUTER", bind="127.0.0.1", port=port, **node_settings)
    node = DicomNode(
        config,
        make_ingestor(db, root, config.limits, config.quarantine),
        AssociationTracker(db),
        lambda: None,
    )
    node.start()
    try:
        yield NodeUnderTest(node, db, root, port)
    finally:
        node.stop()


def echo(port: int, *, bind: str = "127.0.0.1", calling: str = "TESTSCU") -> bool:
    """A C-ECHO over a new association; False when the association or the echo fails."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER", bind_address=(bind, 0))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


def send_payload(
    assoc: Any,
    payload: bytes,
    *,
    sop_class_uid: str = CTImageStorage,
    sop_instance_uid: str | None = None,
    context_id: int | None = None,
) -> int | None:
    """C-STORE ``payload`` as the data set on an established association, below pynetdicom's
    own checks (it would refuse to send a broken data set); the status, or None when the
    association ended without one."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class_uid
    try:
        request.AffectedSOPInstanceUID = sop_instance_uid or generate_uid()
    except ValueError:  # pynetdicom refuses to send some hostile UIDs (over 64 characters)
        request.AffectedSOPInstanceUID = generate_uid()
    request.Priority = 2
    request.DataSet = BytesIO(payload)
    if context_id is None:
        context_id = assoc.accepted_contexts[0].context_id
    assoc._reactor_checkpoint.clear()  # pause the reactor, as send_c_store itself does
    try:
        while not assoc._is_paused and assoc.is_established:
            time.sleep(0.0001)
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None or getattr(response, "Status", None) is None:
        return None
    return int(response.Status)


def store_association(
    port: int,
    sop_class_uids: tuple[str, ...] = (CTImageStorage,),
    transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN,
    *,
    max_pdu: int = 0,
) -> Any:
    """An established association offering ``sop_class_uids`` in ``transfer_syntax``."""
    ae = AE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.maximum_pdu_size = max_pdu
    for uid in sop_class_uids:
        ae.add_requested_context(uid, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER")
    if not assoc.is_established:
        raise ConnectionError("association refused")
    return assoc


def association_request_bytes(calling: str = "RAWSCU", called: str = "RADROUTER") -> bytes:
    """An A-ASSOCIATE-RQ PDU for CT Image Storage (explicit VR little endian) and Verification,
    as pynetdicom encodes it, for tests that talk raw PDUs."""
    captured: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def accept() -> None:
        client, _ = server.accept()
        client.settimeout(5)
        captured.append(client.recv(65536))
        client.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    ae = AE(ae_title=calling)
    ae.acse_timeout = 2
    ae.add_requested_context(CTImageStorage, [EXPLICIT_VR_LITTLE_ENDIAN])
    ae.add_requested_context(Verification)
    ae.associate("127.0.0.1", port, ae_title=called)
    thread.join(5)
    server.close()
    return captured[0]


def p_data_pdu(context_id: int, control: int, payload: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV (PS3.8 9.3.5): ``control`` 0x03 is the last command
    fragment, 0x02 the last data set fragment, 0x00 a data set fragment."""
    item = bytes([context_id, control]) + payload
    pdv = len(item).to_bytes(4, "big") + item
    return b"\x04\x00" + len(pdv).to_bytes(4, "big") + pdv
