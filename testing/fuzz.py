"""Fuzzing radrouter's DICOM node: mutated instances over real associations, broken PDUs over
raw sockets, and the checks that the node survived (test_fuzzing.py, scripts/fuzz_node.py).

Every mutant starts from a small valid instance with its own SOP Instance UID, so what the
node acknowledged can be found in its spool and compared byte for byte with what was sent.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import multiprocessing
import os
import random
import socket
import struct
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.dsutils import encode as encode_command_set

from router.store.database import Database
from testing.dicom_node import association_request_bytes, p_data_pdu, send_payload
from testing.dicom_tools import make_ct_slices

TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
)
SOP_CLASSES = (CTImageStorage, MRImageStorage)
_UID_TAGS = {
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
}
_HOSTILE_UIDS = (
    "..",
    "../..",
    "1..2",
    "",
    ".",
    "/etc",
    "1.2/../..",
    "01.2",
    "1.2.",
    "a.b",
    "x" * 80,
)
_VALID_VRS = b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()


_UID_ROOT = "2.25."
_UID_DIGITS = 59
"""Every SOP Instance UID a seed carries, and every one a mutant gets, is 64 characters
(``2.25.`` and 59 digits), so a mutant's UID is patched into the seed's bytes in place."""


def fixed_length_uid(rng: random.Random) -> str:
    return _UID_ROOT + str(rng.randrange(10 ** (_UID_DIGITS - 1), 10**_UID_DIGITS))


@dataclass(frozen=True)
class Seed:
    """A valid instance: its data set, the transfer syntax it is sent in, and its encoding
    (for a deflated seed, the encoding before deflation)."""

    name: str
    dataset: Dataset
    transfer_syntax: str
    payload: bytes
    uid_offset: int
    """Where the digits of the SOP Instance UID begin in ``payload``."""

    @property
    def deflated(self) -> bool:
        return self.transfer_syntax == DeflatedExplicitVRLittleEndian

    @property
    def explicit(self) -> bool:
        return self.transfer_syntax != ImplicitVRLittleEndian

    @classmethod
    def of(cls, name: str, ds: Dataset, transfer_syntax: str) -> Seed:
        ds.SOPInstanceUID = fixed_length_uid(random.Random(name))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        plain = (
            ExplicitVRLittleEndian
            if transfer_syntax == DeflatedExplicitVRLittleEndian
            else transfer_syntax
        )
        payload = encode(ds, plain)
        offset = payload.index(str(ds.SOPInstanceUID).encode()) + len(_UID_ROOT)
        return cls(name, ds, transfer_syntax, payload, offset)


@dataclass(frozen=True)
class Mutant:
    kind: str
    payload: bytes
    """The data set as sent in the C-STORE (no file meta)."""
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    """The presentation context it is sent under."""


def seeds() -> list[Seed]:
    """Small valid instances: CT (explicit and implicit VR, RLE, deflated), an MR, and a CT
    carrying nested sequences."""

    def ct() -> Dataset:
        return make_ct_slices(1, rows=16, cols=16)[0]

    nested = ct()
    inner = Dataset()
    inner.ReferencedSOPClassUID = CTImageStorage
    inner.ReferencedSOPInstanceUID = generate_uid()
    middle = Dataset()
    middle.ReferencedImageSequence = Sequence([inner])
    middle.CodeValue = "121311"
    nested.ReferencedStudySequence = Sequence([middle, Dataset()])
    nested.SourceImageSequence = Sequence([inner])
    mr = ct()
    mr.Modality = "MR"
    mr.SOPClassUID = MRImageStorage
    mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    rle = ct()
    rle.compress(RLELossless)
    return [
        Seed.of("ct-explicit", ct(), ExplicitVRLittleEndian),
        Seed.of("ct-implicit", ct(), ImplicitVRLittleEndian),
        Seed.of("ct-nested", nested, ExplicitVRLittleEndian),
        Seed.of("mr-explicit", mr, ExplicitVRLittleEndian),
        Seed.of("ct-rle", rle, RLELossless),
        Seed.of("ct-deflated", ct(), DeflatedExplicitVRLittleEndian),
    ]


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """The data set alone (no preamble or file meta) in ``transfer_syntax``."""
    copy = Dataset(ds)
    copy.file_meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
    copy.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    buffer = io.BytesIO()
    copy.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    meta_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + meta_length :]


def _elements(payload: bytes) -> list[tuple[int, int, int, int]]:
    """Top-level elements of an explicit VR little endian data set: (offset, tag, header
    length, value length)."""
    found: list[tuple[int, int, int, int]] = []
    pos = 0
    while pos + 8 <= len(payload):
        group, element = struct.unpack_from("<HH", payload, pos)
        vr = payload[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV"):
            length = struct.unpack_from("<L", payload, pos + 8)[0]
            header = 12
        else:
            length = struct.unpack_from("<H", payload, pos + 6)[0]
            header = 8
        found.append((pos, group << 16 | element, header, length))
        if length == 0xFFFFFFFF:
            break  # encapsulated pixel data is last
        pos += header + length
    return found


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _deep_sequence(depth: int, defined: bool) -> bytes:
    """A private sequence (0009,0010 creator, 0009,1010 SQ) nested ``depth`` levels."""
    inner = b""
    for _ in range(depth):
        element = struct.pack("<HH2sHL", 0x0009, 0x1010, b"SQ", 0, 0)
        if defined:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
            inner = element[:8] + struct.pack("<L", len(item)) + item
        else:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner
            item += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
            inner = (
                element[:8]
                + struct.pack("<L", 0xFFFFFFFF)
                + item
                + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
            )
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 6) + b"FUZZ  "
    return creator + inner


class Mutator:
    """Mutants of the seeds: bit flips, truncations, wrong VRs and lengths, deep sequences,
    huge declared lengths, mismatched transfer syntaxes, hostile UIDs, contradicting file
    meta, shortened pixel data, and some left valid."""

    KINDS = (
        "valid",
        "bit_flip",
        "byte_set",
        "truncate",
        "wrong_vr",
        "wrong_length",
        "huge_length",
        "deep_sequence",
        "transfer_syntax",
        "hostile_uid",
        "meta_in_body",
        "short_pixels",
        "sop_mismatch",
        "splice",
    )

    def __init__(self, rng: random.Random, base: list[Seed] | None = None) -> None:
        self.rng = rng
        self.seeds = base or seeds()

    def next(self) -> Mutant:
        rng = self.rng
        seed = rng.choice(self.seeds)
        kind = rng.choice(self.KINDS)
        uid = fixed_length_uid(rng)
        sop_class = str(seed.dataset.SOPClassUID)
        syntax = seed.transfer_syntax
        if kind in ("hostile_uid", "sop_mismatch", "short_pixels"):
            payload, sop_class, uid = self._header_mutation(kind, seed, uid, sop_class)
        else:
            data = bytearray(seed.payload)
            data[seed.uid_offset : seed.uid_offset + _UID_DIGITS] = uid[len(_UID_ROOT) :].encode()
            payload = bytes(data)
            if kind == "transfer_syntax":
                syntax = rng.choice([s for s in TRANSFER_SYNTAXES if s != seed.transfer_syntax])
            elif kind == "meta_in_body":
                meta = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", 20) + b"1.2.840.10008.1.2.2\x00"
                payload = meta + payload
            elif kind != "valid" and not (seed.deflated and rng.random() < 0.5):
                payload = self._bytes_mutation(kind, payload, seed)
        if seed.deflated:
            payload = _deflate(payload)
            if kind not in ("valid", "transfer_syntax", "meta_in_body") and rng.random() < 0.5:
                payload = self._bytes_mutation("bit_flip", payload, seed)  # the deflate stream
        return Mutant(kind, payload, sop_class, uid, syntax)

    def _header_mutation(
        self, kind: str, seed: Seed, uid: str, sop_class: str
    ) -> tuple[bytes, str, str]:
        """Mutations of header values, re-encoded by pydicom (a hostile UID, a SOP class or
        instance other than the request's, pixel data shorter than the image)."""
        rng = self.rng
        ds = copy.deepcopy(seed.dataset)  # Dataset(seed) would share its elements
        ds.SOPInstanceUID = uid
        if kind == "hostile_uid":
            keyword = rng.choice(list(_UID_TAGS))
            value = rng.choice(_HOSTILE_UIDS)
            setattr(ds, keyword, value)
            if keyword == "SOPInstanceUID":
                uid = value
        elif kind == "sop_mismatch":
            if rng.random() < 0.5:
                sop_class = MRImageStorage if sop_class == CTImageStorage else CTImageStorage
            else:
                uid = fixed_length_uid(rng)
        elif seed.transfer_syntax != RLELossless:
            ds.PixelData = ds.PixelData[: rng.randrange(0, len(ds.PixelData), 2)]
        plain = ExplicitVRLittleEndian if seed.deflated else seed.transfer_syntax
        return encode(ds, plain), sop_class, uid

    def _bytes_mutation(self, kind: str, payload: bytes, seed: Seed) -> bytes:
        rng = self.rng
        data = bytearray(payload)
        explicit = seed.explicit
        elements = _elements(payload) if explicit else []
        if kind == "bit_flip":
            for _ in range(rng.randint(1, 8)):
                position = rng.randrange(len(data))
                data[position] ^= 1 << rng.randrange(8)
        elif kind == "byte_set":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x20))
        elif kind == "truncate":
            del data[rng.randrange(len(data)) :]
        elif kind == "wrong_vr" and elements:
            offset = rng.choice(elements)[0]
            data[offset + 4 : offset + 6] = rng.choice(
                [
                    rng.choice(_VALID_VRS),
                    b"ZZ",
                    b"\x00\x00",
                    bytes(rng.randrange(256) for _ in "ab"),
                ]
            )
        elif kind in ("wrong_length", "huge_length") and elements:
            offset, _, header, length = rng.choice(elements)
            if kind == "huge_length":
                value = rng.choice((0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 2**31 + 2))
            else:
                value = max(0, length + rng.choice((-4, -2, -1, 1, 2, 4, 100, -100)))
            if header == 12:
                data[offset + 8 : offset + 12] = struct.pack("<L", value & 0xFFFFFFFF)
            else:
                data[offset + 6 : offset + 8] = struct.pack("<H", value & 0xFFFF)
        elif kind == "deep_sequence" and explicit:
            insert_at = next((o for o, tag, _, _ in elements if tag > 0x00090010), len(data))
            deep = _deep_sequence(rng.choice((2, 8, 31, 33, 64, 500, 5000)), rng.random() < 0.5)
            data[insert_at:insert_at] = deep
        elif kind == "splice":
            start = rng.randrange(len(data))
            chunk = bytes(data[start : start + rng.randint(1, 64)])
            at = rng.randrange(len(data))
            data[at:at] = chunk
        else:
            data[rng.randrange(len(data))] ^= 0xFF
        return bytes(data)


@dataclass
class FuzzReport:
    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    acknowledged: list[Mutant] = field(default_factory=list)
    echo_failures: int = 0
    broken_pdus: int = 0
    broken_by_kind: Counter[str] = field(default_factory=Counter)
    refused_associations: int = 0
    seconds: float = 0.0

    def record(self, mutant: Mutant, outcome: str) -> None:
        self.sent += 1
        self.outcomes[outcome] += 1
        self.by_kind.setdefault(mutant.kind, Counter())[outcome] += 1
        if outcome == "0x0000":
            self.acknowledged.append(mutant)


def _association(port: int, report: FuzzReport | None = None, patience_s: float = 60) -> Any:
    """A new association, retried as a PACS would while the node refuses it transiently
    (the per-host limit, while connections it ended are still winding down)."""
    ae = AE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in SOP_CLASSES:
        for syntax in TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, [syntax])
    deadline = time.monotonic() + patience_s
    while True:
        assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER")
        if assoc.is_established:
            # pynetdicom writes a command and its data set in separate sends: without this,
            # Nagle's algorithm and delayed ACKs add 40 ms to every C-STORE.
            raw: Any = assoc.dul.socket.socket  # type: ignore[union-attr]
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return assoc
        if report is not None:
            report.refused_associations += 1
        if time.monotonic() > deadline:
            raise ConnectionError("the node refused the fuzzing association")
        time.sleep(0.05)


def _context_id(assoc: Any, sop_class: str, syntax: str) -> int:
    for context in assoc.accepted_contexts:
        if context.abstract_syntax == sop_class and context.transfer_syntax[0] == syntax:
            return int(context.context_id)
    raise LookupError("no such context")


def send_mutants(
    port: int, mutants: list[Mutant], report: FuzzReport | None = None
) -> list[tuple[Mutant, str]]:
    """Send ``mutants`` over one association, opening a new one whenever the node ends it;
    each mutant with its outcome (the status as ``0xNNNN``, or ``ended``)."""
    assoc: Any = None
    outcomes: list[tuple[Mutant, str]] = []
    try:
        for mutant in mutants:
            if assoc is None or not assoc.is_established:
                assoc = _association(port, report)
            context_id = _context_id(assoc, mutant.sop_class_uid, mutant.transfer_syntax)
            status = send_payload(
                assoc,
                mutant.payload,
                sop_class_uid=mutant.sop_class_uid,
                sop_instance_uid=mutant.sop_instance_uid or "1.2.3",
                context_id=context_id,
            )
            outcomes.append((mutant, "ended" if status is None else f"0x{status:04X}"))
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    return outcomes


def _worker_share(port: int, seed: int, size: int) -> list[tuple[Mutant, str]]:
    """One worker process's share of a batch: mutants from its own ``seed``, sent over one
    association; the payload is kept only where the node acknowledged it."""
    logging.disable(logging.CRITICAL)  # a fuzzing client's log is noise
    warnings.simplefilter("ignore")
    if not _SEEDS:
        _SEEDS.extend(seeds())
    mutator = Mutator(random.Random(seed), _SEEDS)
    outcomes = send_mutants(port, [mutator.next() for _ in range(size)])
    return [
        (m if outcome == "0x0000" else dataclasses.replace(m, payload=b""), outcome)
        for m, outcome in outcomes
    ]


_SEEDS: list[Seed] = []
"""The seeds, made once in each worker process."""


ECHO_WITHIN_S = 30.0
"""How long the node may take to answer a C-ECHO after a batch: broken PDU streams that stall
hold their connections until the node's network timeout, and while they do, the per-host cap
refuses this host's next association with a transient reason (as designed). Past this, the
node counts as hung."""


def echo_ok(port: int, within_s: float = ECHO_WITHIN_S) -> bool:
    """A C-ECHO succeeds within ``within_s``, retried while the node refuses the association
    (transiently, or not yet listening again)."""
    ae = AE(ae_title="FUZZECHO")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context("1.2.840.10008.1.1")
    deadline = time.monotonic() + within_s
    while True:
        assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER")
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            return bool(status) and int(status.Status) == 0
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def broken_pdus(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Byte streams a broken or hostile peer might send: each starts a new connection."""
    request = association_request_bytes()
    command = _store_command()
    while True:
        kind = rng.choice(
            (
                "garbage",
                "unknown_pdu_type",
                "huge_pdu_length",
                "truncated_request",
                "mutated_request",
                "bad_pdv_length",
                "data_before_association",
                "huge_data_after_command",
                "stalled_pdu",
            )
        )
        if kind == "garbage":
            yield kind, os.urandom(rng.randint(1, 300))
        elif kind == "unknown_pdu_type":
            yield kind, bytes([rng.choice((0x00, 0x08, 0x10, 0xFF)), 0]) + os.urandom(20)
        elif kind == "huge_pdu_length":
            yield kind, bytes([rng.choice((0x01, 0x04))]) + b"\x00\xff\xff\xff\xf0" + b"\x00" * 64
        elif kind == "truncated_request":
            yield kind, request[: rng.randrange(1, len(request))]
        elif kind == "mutated_request":
            data = bytearray(request)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(6, len(data))] = rng.randrange(256)
            yield kind, bytes(data)
        elif kind == "bad_pdv_length":
            pdu = bytearray(p_data_pdu(1, 0x03, command))
            pdu[6:10] = struct.pack(">L", rng.choice((0, 1, 0xFFFFFFFF, len(command) + 50)))
            yield kind, request + bytes(pdu)
        elif kind == "data_before_association":
            yield kind, p_data_pdu(1, 0x03, command)
        elif kind == "huge_data_after_command":
            fragments = b"".join(p_data_pdu(1, 0x00, os.urandom(4096)) for _ in range(64))
            yield kind, request + p_data_pdu(1, 0x03, command) + fragments
        else:
            yield kind, request + b"\x04\x00\x00\x00\x10\x00" + b"\x00" * 8


def _store_command() -> bytes:
    """An encoded C-STORE-RQ command set (implicit VR little endian, PS3.7 9.3.1.1)."""
    command = Dataset()
    command.CommandGroupLength = 0
    command.AffectedSOPClassUID = CTImageStorage
    command.CommandField = 0x0001
    command.MessageID = 7
    command.Priority = 2
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = generate_uid()
    encoded = encode_command_set(command, True, True)
    assert encoded is not None
    group_length = len(encoded) - 12  # the group length element itself is 12 bytes
    return encoded[:8] + struct.pack("<L", group_length) + encoded[12:]


def send_broken_pdu(port: int, data: bytes, linger_s: float = 0.05) -> None:
    """Open a connection, send ``data``, read what comes back for a moment, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(linger_s)
            while sock.recv(65536):
                pass
        except OSError:
            pass


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def check_acknowledged(db: Database, spool_root: Path, acknowledged: list[Mutant]) -> list[str]:
    """Every acknowledged instance is indexed, inside the spool, and byte-exact; the list of
    problems (empty when all hold)."""
    problems: list[str] = []
    root = spool_root.resolve()
    for mutant in acknowledged:
        row = db.query_one(
            "SELECT path FROM instances WHERE sop_instance_uid = ?", (mutant.sop_instance_uid,)
        )
        if row is None:
            problems.append(f"{mutant.kind}: acknowledged but not indexed")
            continue
        path = Path(row["path"]).resolve()
        if root not in path.parents:
            problems.append(f"{mutant.kind}: stored outside the spool at {path}")
            continue
        raw = path.read_bytes()
        meta_length = int.from_bytes(raw[140:144], "little")
        if raw[144 + meta_length :] != mutant.payload:
            problems.append(f"{mutant.kind}: the spool file differs from what was sent")
    return problems


def run_fuzz(
    port: int,
    count: int,
    *,
    seed: int = 1,
    workers: int = 4,
    batch: int = 500,
    broken_per_batch: int = 20,
    on_batch: Callable[[FuzzReport], None] | None = None,
) -> FuzzReport:
    """``count`` mutants from ``workers`` client processes (each its own association, so the
    clients do not share the node's interpreter lock), in batches; after each batch,
    ``broken_per_batch`` broken PDU streams and a C-ECHO that must succeed."""
    pdu_stream = broken_pdus(random.Random(seed))
    report = FuzzReport()
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")  # the node's threads are not forked
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        remaining = count
        batch_number = 0
        while remaining > 0:
            size = min(batch, remaining)
            remaining -= size
            batch_number += 1
            shares = [size // workers + (1 if i < size % workers else 0) for i in range(workers)]
            futures = [
                pool.submit(_worker_share, port, hash((seed, batch_number, worker)), share)
                for worker, share in enumerate(shares)
                if share
            ]
            for future in futures:
                for mutant, outcome in future.result(timeout=600):
                    report.record(mutant, outcome)
            streams = [next(pdu_stream) for _ in range(broken_per_batch)]
            with ThreadPoolExecutor(max_workers=8) as senders:
                for kind, _done in zip(
                    (kind for kind, _ in streams),
                    senders.map(lambda stream: send_broken_pdu(port, stream[1]), streams),
                    strict=True,
                ):
                    report.broken_by_kind[kind] += 1
            report.broken_pdus += len(streams)
            if not echo_ok(port):
                report.echo_failures += 1
            if on_batch is not None:
                on_batch(report)
    report.seconds = time.monotonic() - started
    return report
