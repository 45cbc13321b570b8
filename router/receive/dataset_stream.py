"""Receive each C-STORE data set straight into the spool's incoming folder, within the limit.

pynetdicom gathers a data set in memory and the C-STORE handler's ``encoded_dataset()`` copies
it again (a 300 MB instance took 735 MB), and nothing stops a peer at any size. The node takes
the data set's P-DATA fragments instead, as pynetdicom's reactor hands them to the DIMSE layer
(``dimse.receive_primitive``, wrapped per association): each fragment is appended to a file in
the spool's incoming folder (0600), behind the same file meta ``encoded_dataset()`` would
prepend, and pynetdicom gets the fragment without its bytes, so its message still completes
and the C-STORE handler still runs, with an empty data set. The handler then takes the file.

A data set that grows past ``max_instance_mb`` stops being written: its file is deleted and
the rest of its fragments are read and dropped, so the sender still gets a C-STORE response
(a failure it must not retry) instead of an abort it would retry forever. A full disk stops
it too (out of resources, which it may retry). At most one PDU (``MAX_PDU_BYTES``) is ever in
memory, besides a data set of at most :data:`IN_MEMORY_BYTES` (one PDU's worth: a CT or MR
slice), which is also kept in memory until the handler has checked it, so that its header is
parsed from those bytes rather than read back from the file. Data sets of other messages (the
node serves only C-ECHO and C-STORE) are passed on up to :data:`OTHER_DATASET_LIMIT` and
dropped beyond it.

Per instance, the work that does not depend on the instance is done once: the file meta group
is encoded once per SOP class and transfer syntax (:func:`file_meta`), the instance UID spliced
in; and the file's fsync starts as soon as its last byte is written (``Spool.sync_soon``), in
the background while the message is decoded and checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu_primitives import P_DATA

from dicom_sr.uids import is_valid_uid
from router.receive.spool import Spool, SpoolFullError
from router.receive.status import IngestError, StoreStatus

LOGGER = logging.getLogger(__name__)

OTHER_DATASET_LIMIT = 2**20
"""Bytes of a data set that is not a C-STORE's (a C-FIND identifier is a few hundred) kept
for pynetdicom, which answers such requests itself."""
FREE_SPACE_CHECK_BYTES = 64 * 2**20
"""Free space is checked again after each this many bytes of one data set."""
IN_MEMORY_BYTES = 4 * 2**20
"""A data set up to this size is kept in memory too (``ReceivedDataset.data``) until the
handler has checked it: the node's largest PDU, so one arriving in one P-DATA is not copied
more than the file write needs."""
_NO_DATA_SET = 0x0101
_PREAMBLE = b"\x00" * 128 + b"DICM"

_META_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"
_META_SOP_INSTANCE = b"\x02\x00\x03\x00UI"
_META_CACHE: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_META_CACHE_LIMIT = 1024
"""(SOP class, transfer syntax) pairs kept; the cache starts again when full (a node sees a
few dozen)."""
_LONG_META_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN"})


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """The encoded File Meta Information group of one instance, byte for byte what
    pynetdicom's ``encode_file_meta(create_file_meta(...))`` gives (what
    ``Event.encoded_dataset()`` prepends), built once per SOP class and transfer syntax (a
    presentation context's): only the instance UID and the group length differ per
    instance. The UIDs must be DICOM UIDs (checked before)."""
    key = (sop_class_uid, transfer_syntax_uid)
    parts = _META_CACHE.get(key)
    if parts is None:
        parts = _meta_around_instance(sop_class_uid, transfer_syntax_uid)
        if len(_META_CACHE) >= _META_CACHE_LIMIT:
            _META_CACHE.clear()
        _META_CACHE[key] = parts
    before, after = parts
    value = sop_instance_uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"  # UI is padded with NUL (PS3.5 9.1)
    instance = _META_SOP_INSTANCE + struct.pack("<H", len(value)) + value
    length = len(before) + len(instance) + len(after)
    return _META_GROUP_LENGTH + struct.pack("<L", length) + before + instance + after


def _meta_around_instance(sop_class_uid: str, transfer_syntax_uid: str) -> tuple[bytes, bytes]:
    """The encoded file meta elements before and after Media Storage SOP Instance UID, the
    group length left out, as pynetdicom encodes them."""
    encoded = encode_file_meta(
        create_file_meta(
            sop_class_uid=UID(sop_class_uid),
            sop_instance_uid=UID("1.2"),
            transfer_syntax=UID(transfer_syntax_uid),
        )
    )
    if not encoded.startswith(_META_GROUP_LENGTH):
        raise ValueError("pynetdicom's file meta does not start with its group length")
    pos = start = len(_META_GROUP_LENGTH) + 4
    while pos < len(encoded):
        vr = encoded[pos + 4 : pos + 6]
        if vr in _LONG_META_VRS:
            end = pos + 12 + int(struct.unpack_from("<L", encoded, pos + 8)[0])
        else:
            end = pos + 8 + int(struct.unpack_from("<H", encoded, pos + 6)[0])
        if encoded[pos : pos + 6] == _META_SOP_INSTANCE:
            return encoded[start:pos], encoded[end:]
        pos = end
    raise ValueError("pynetdicom's file meta has no Media Storage SOP Instance UID")


@dataclass(frozen=True)
class ReceivedDataset:
    """One C-STORE data set as it arrived: in ``path`` (preamble, file meta, data set), or
    refused while it arrived (``refusal``, and nothing kept)."""

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path | None
    body_offset: int
    """Where the data set begins in ``path`` (after the file meta the node wrote)."""
    size: int
    """Bytes of the data set received, also past the limit."""
    sha256: str
    """Of the whole file."""
    refusal: IngestError | None
    data: bytes | None = None
    """The whole file's bytes (as in ``path``) when the data set is at most
    :data:`IN_MEMORY_BYTES`, for the checks to read instead of the file."""
    synced: Future[None] | None = None
    """The fsync of ``path``, started when its last byte was written (``Spool.sync_soon``)."""


class _Sink:
    """The data set of one C-STORE request while it arrives."""

    def __init__(
        self,
        spool: Spool,
        max_bytes: int,
        message_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
    ) -> None:
        self.spool = spool
        self.max_bytes = max_bytes
        self.message_id = message_id
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.size = 0
        self.body_offset = 0
        self.refusal: IngestError | None = None
        self.path: Path | None = None
        self._handle: Any = None
        self._hash = hashlib.sha256()
        self._checked_at = 0
        self._kept: list[bytes | memoryview] | None = []
        """What was written, while it is at most the file meta plus IN_MEMORY_BYTES."""
        self._open()

    def _open(self) -> None:
        if not (is_valid_uid(self.sop_class_uid) and is_valid_uid(self.sop_instance_uid)):
            self.refusal = IngestError(
                StoreStatus.INVALID_UID,
                "the C-STORE request's Affected SOP Class or Instance UID is not a DICOM UID",
            )
            return
        try:
            self.spool.check_free_space(0)
            meta = file_meta(self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax_uid)
            self.path, fd = self.spool.new_incoming()
            self._handle = os.fdopen(fd, "wb")
            self._write(_PREAMBLE + meta)
            self.body_offset = len(_PREAMBLE) + len(meta)
        except SpoolFullError as exc:
            self._stop(IngestError(StoreStatus.OUT_OF_RESOURCES, str(exc)))
        except OSError as exc:
            self._stop(IngestError(StoreStatus.OUT_OF_RESOURCES, f"spool write failed: {exc}"))

    def add(self, payload: bytes | memoryview) -> None:
        self.size += len(payload)
        if self._handle is None:
            return
        if self.size > self.max_bytes:
            self._stop(
                IngestError(
                    StoreStatus.INSTANCE_TOO_LARGE,
                    f"the data set is larger than node.limits.max_instance_mb "
                    f"({self.max_bytes // 2**20} MiB)",
                )
            )
            return
        try:
            if self.size - self._checked_at >= FREE_SPACE_CHECK_BYTES:
                self._checked_at = self.size
                self.spool.check_free_space(0)
            self._write(payload)
        except SpoolFullError as exc:
            self._stop(IngestError(StoreStatus.OUT_OF_RESOURCES, str(exc)))
        except OSError as exc:
            self._stop(IngestError(StoreStatus.OUT_OF_RESOURCES, f"spool write failed: {exc}"))

    def finish(self, sync_in_background: bool = True) -> ReceivedDataset:
        """The data set as it arrived; with ``sync_in_background``, its file's fsync started
        (``ReceivedDataset.synced``), otherwise left to ``Spool.commit``."""
        synced: Future[None] | None = None
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError as exc:
                self._stop(IngestError(StoreStatus.OUT_OF_RESOURCES, f"spool write failed: {exc}"))
            self._handle = None
        if self.path is not None and self.refusal is None and sync_in_background:
            synced = self.spool.sync_soon(self.path)
        if self.refusal is not None and self.refusal.status is StoreStatus.INSTANCE_TOO_LARGE:
            self.refusal = IngestError(
                StoreStatus.INSTANCE_TOO_LARGE,
                f"{self.refusal.reason}: {self.size // 2**20} MiB arrived",
            )
        kept, self._kept = self._kept, None
        return ReceivedDataset(
            message_id=self.message_id,
            affected_sop_class_uid=self.sop_class_uid,
            affected_sop_instance_uid=self.sop_instance_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            path=self.path,
            body_offset=self.body_offset,
            size=self.size,
            sha256=self._hash.hexdigest(),
            refusal=self.refusal,
            data=b"".join(kept) if kept is not None and self.path is not None else None,
            synced=synced,
        )

    def discard(self) -> None:
        self._stop(None)

    def _write(self, data: bytes | memoryview) -> None:
        self._handle.write(data)
        self._hash.update(data)
        if self._kept is not None:
            if self.size <= IN_MEMORY_BYTES:
                self._kept.append(data)
            else:
                self._kept = None

    def _stop(self, refusal: IngestError | None) -> None:
        """Stop keeping bytes: close and delete the file; later fragments are only counted."""
        if refusal is not None and self.refusal is None:
            self.refusal = refusal
        self._kept = None
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
            self._handle = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


OriginalReceive = Callable[[P_DATA], None]

_receiving = 0
"""Associations with their streams installed and not yet closed (all nodes of the process)."""
_receiving_lock = threading.Lock()


def _count_receiving(change: int) -> int:
    global _receiving
    with _receiving_lock:
        _receiving += change
        return _receiving


def sync_in_background() -> bool:
    """Whether a file's fsync is started in the background when its last byte arrives: when
    one association is receiving, whose sender waits for each response, so that the fsync
    overlaps the decoding and checks. With several, each association's fsync overlaps the
    others' work already, and a thread more per instance only costs CPU and GIL hand-offs
    (measured: about 5% fewer images/s over four associations on two cores)."""
    return _count_receiving(0) <= 1


class AssociationStreams:
    """The C-STORE data sets of one association: the one arriving, and those complete but not
    yet taken by the C-STORE handler (in the order their requests were queued)."""

    def __init__(self, assoc: Any, spool: Spool, max_bytes: int) -> None:
        self._assoc = assoc
        self._spool = spool
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sink: _Sink | None = None
        self._sink_message: Any = None
        self._other_bytes = 0
        self._done: deque[ReceivedDataset] = deque()
        self._closed = False

    @classmethod
    def install(cls, assoc: Any, spool: Spool, max_bytes: int) -> AssociationStreams:
        """Wrap ``assoc.dimse.receive_primitive``; call before the association is negotiated
        (no P-DATA can arrive before it is accepted)."""
        streams = cls(assoc, spool, max_bytes)
        _count_receiving(1)
        original: OriginalReceive = assoc.dimse.receive_primitive

        def receive_primitive(primitive: P_DATA) -> None:
            streams.receive(primitive, original)

        assoc.dimse.receive_primitive = receive_primitive
        return streams

    def receive(self, primitive: P_DATA, original: OriginalReceive) -> None:
        """Runs in pynetdicom's reactor thread, once per P-DATA-TF PDU."""
        values = getattr(primitive, "presentation_data_value_list", None)
        if not isinstance(values, list):
            original(primitive)
            return
        for value in values:
            try:
                context_id, data = value
            except (TypeError, ValueError):
                original(primitive)
                return
            if not data or data[0] & 1:  # a command fragment (or nothing): pynetdicom's own
                original(_single(context_id, data))
                self._after_command()
            else:
                self._data_fragment(context_id, data, original)

    def take(self, message_id: int) -> ReceivedDataset | None:
        """The data set of the C-STORE request ``message_id``, now the handler's to keep or
        delete; ``None`` when none arrived for it."""
        with self._lock:
            for index, received in enumerate(self._done):
                if received.message_id == message_id:
                    del self._done[index]
                    return received
        return None

    def close(self) -> None:
        """The association ended: delete whatever was received and not taken."""
        with self._lock:
            if not self._closed:
                _count_receiving(-1)
            self._closed = True
            sink, self._sink = self._sink, None
            done = list(self._done)
            self._done.clear()
        if sink is not None:
            sink.discard()
        for received in done:
            if received.path is not None:
                received.path.unlink(missing_ok=True)

    def _after_command(self) -> None:
        message = getattr(self._assoc.dimse, "message", None)
        if not isinstance(message, C_STORE_RQ) or message is self._sink_message:
            return
        command = message.command_set
        context_id = message.context_id
        if context_id is None or command.get("CommandDataSetType") == _NO_DATA_SET:
            return
        context = getattr(self._assoc, "_accepted_cx", {}).get(context_id)
        if context is None or not context.transfer_syntax:
            return  # pynetdicom refuses a request on a context it did not accept
        sink = _Sink(
            self._spool,
            self._max_bytes,
            _int(command.get("MessageID")),
            _text(command.get("AffectedSOPClassUID")),
            _text(command.get("AffectedSOPInstanceUID")),
            str(context.transfer_syntax[0]),
        )
        with self._lock:
            previous, self._sink, self._sink_message = self._sink, sink, message
            if self._closed:
                self._sink = None
        if previous is not None:
            previous.discard()
        if self._closed:
            sink.discard()

    def _data_fragment(self, context_id: int, data: bytes, original: OriginalReceive) -> None:
        last = bool(data[0] & 2)
        sink = self._sink
        if sink is None or getattr(self._assoc.dimse, "message", None) is not self._sink_message:
            # Not a C-STORE's data set: pynetdicom's, within a small allowance.
            self._other_bytes += len(data) - 1
            if self._other_bytes > OTHER_DATASET_LIMIT:
                data = data[:1]
            if last:
                self._other_bytes = 0
            original(_single(context_id, data))
            return
        sink.add(memoryview(data)[1:])  # not copied: written, hashed, kept while small
        if last:
            received = sink.finish(sync_in_background())
            with self._lock:
                self._sink = self._sink_message = None
                if self._closed:
                    if received.path is not None:
                        received.path.unlink(missing_ok=True)
                else:
                    self._done.append(received)
        original(_single(context_id, data[:1]))


def _single(context_id: int, data: bytes) -> P_DATA:
    primitive = P_DATA()
    # pynetdicom checks for a list of [ID, PDV] lists (its annotation says tuples).
    values: Any = [[context_id, data]]
    primitive.presentation_data_value_list = values
    return primitive


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return -1


def _text(value: object) -> str:
    return "" if value is None else str(value)
