"""Walk a received Part-10 file's structure once, before anything decodes it.

pydicom reads leniently: a value that runs past the end of the file, a VR that is not two
capital letters (it switches to implicit VR mid-file), sequences nested thousands deep (it
recurses), pixel data shorter than the image. Every reader in radrouter uses pydicom, so the
node checks the structure itself: lengths, items and delimiters, the nesting depth, file meta
elements in the data set, an encoding other than the transfer syntax. It decodes no value on
the way; it only copies the few top-level values the caller asks for. What passes, pydicom
reads without surprises; what does not is refused with a reason that names no value.

The file is memory-mapped, so a large instance is paged in from the spool, never copied into
the heap; a deflated data set is inflated into a scratch file first, within the size limit.
The node passes the bytes of an instance it still has in memory (one PDU's worth), which are
walked instead of the file they were written to.
"""

from __future__ import annotations

import mmap
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_VR

from router.receive.status import IngestError, StoreStatus

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

KNOWN_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)
"""PS3.5 table 6.2-1."""
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
"""Explicit VRs with two reserved bytes and a 32-bit length (PS3.5 7.1.2); every other VR,
unknown ones included (as pydicom reads them), has a 16-bit length."""

MAX_ELEMENTS = 2_000_000
"""More data elements than this in one instance is refused: an enhanced multi-frame object of
a few thousand frames has a few hundred thousand; a file of millions of empty elements is
there to make the walk slow."""
MAX_WANTED_VALUE_BYTES = 2**20
"""A requested value longer than this is not copied (the caller sees it as unreadable)."""

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
_PIXEL_TAGS = frozenset({PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA})

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PREAMBLE = 128
_META_GROUP_LENGTH = 0x00020000
_META_SOP_CLASS = 0x00020002
_META_SOP_INSTANCE = 0x00020003
_META_TRANSFER_SYNTAX = 0x00020010
_INFLATE_CHUNK = 2**20


@dataclass(frozen=True)
class RawValue:
    """One top-level element as encoded: its VR (from the dictionary in implicit VR) and bytes."""

    vr: str
    value: bytes


@dataclass(frozen=True)
class PixelDataLayout:
    """The top-level pixel data element: its length (native) or its fragments (encapsulated)."""

    tag: int
    length: int | None
    """Value length of native pixel data; ``None`` when encapsulated."""
    fragments: int = 0
    """Encapsulated: fragments after the Basic Offset Table item."""
    fragment_bytes: int = 0


@dataclass(frozen=True)
class Structure:
    """What the walk found: the file meta, the requested top-level values, the pixel data."""

    transfer_syntax_uid: str
    media_sop_class_uid: str
    media_sop_instance_uid: str
    explicit_vr: bool
    little_endian: bool
    values: dict[int, RawValue]
    """The top-level elements among those asked for, as encoded."""
    unknown_vr_tags: tuple[int, ...]
    """Top-level public elements whose VR code is not in PS3.5 (a reader cannot decode them)."""
    pixel_data: PixelDataLayout | None
    depth: int
    """Deepest sequence nesting (0: no sequence)."""
    elements: int


def encoding_of(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """(explicit VR, little endian, deflated) of a transfer syntax; any syntax not named in
    PS3.5 as otherwise is explicit VR little endian (PS3.5 10)."""
    if transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return False, True, False
    if transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN:
        return True, False, False
    return True, True, transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN


def read_structure(
    path: Path,
    *,
    wanted: frozenset[int],
    max_depth: int,
    max_inflated_bytes: int,
    scratch_dir: Path,
    body_offset: int | None = None,
    data: bytes | None = None,
) -> Structure:
    """Walk the Part-10 file at ``path``; raise :class:`IngestError` when it does not hold.

    ``body_offset``, when known (the node wrote the file meta itself), is where the data set
    starts: file meta elements after it are part of the data set, which must not have any.
    ``data``, when given, is the file's content, already in memory: it is walked instead of
    the file (the same result, without reading the file back).
    """
    source = _mapped(path) if data is None else nullcontext(data)
    with source as buffer:
        meta, body = _read_meta(buffer, body_offset)
        transfer_syntax = meta.get(_META_TRANSFER_SYNTAX, "")
        if not transfer_syntax:
            raise IngestError(
                StoreStatus.CANNOT_UNDERSTAND, "the file meta has no TransferSyntaxUID"
            )
        explicit, little, deflated = encoding_of(transfer_syntax)
        if deflated:
            inflated = scratch_dir / f"{uuid.uuid4().hex}.inflated"
            try:
                _inflate(buffer, body, inflated, max_inflated_bytes)
                with _mapped(inflated) as plain:
                    walk = _walk_or_explain(plain, 0, explicit, little, max_depth, wanted)
            finally:
                inflated.unlink(missing_ok=True)
        else:
            walk = _walk_or_explain(buffer, body, explicit, little, max_depth, wanted)
    return Structure(
        transfer_syntax_uid=transfer_syntax,
        media_sop_class_uid=meta.get(_META_SOP_CLASS, ""),
        media_sop_instance_uid=meta.get(_META_SOP_INSTANCE, ""),
        explicit_vr=explicit,
        little_endian=little,
        values=walk.values,
        unknown_vr_tags=tuple(walk.unknown_vr_tags),
        pixel_data=walk.pixel_data,
        depth=walk.deepest,
        elements=walk.elements,
    )


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap | bytes]:
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            yield b""
            return
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mapped
        finally:
            mapped.close()


def _unparseable(why: str) -> IngestError:
    return IngestError(StoreStatus.CANNOT_UNDERSTAND, why)


def _read_meta(buffer: mmap.mmap | bytes, body_offset: int | None) -> tuple[dict[int, str], int]:
    """The File Meta Information (PS3.10 7.1): its UIDs, and where the data set starts."""
    if len(buffer) < _PREAMBLE + 4 or buffer[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise _unparseable("not a DICOM Part-10 file (no DICM prefix)")
    pos = _PREAMBLE + 4
    end = len(buffer) if body_offset is None else body_offset
    meta: dict[int, str] = {}
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", buffer, pos)
        if group != 0x0002:
            break
        vr = bytes(buffer[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > end:
                break
            length = int(struct.unpack_from("<L", buffer, pos + 8)[0])
            header = 12
        else:
            length = int(struct.unpack_from("<H", buffer, pos + 6)[0])
            header = 8
        if length == _UNDEFINED or pos + header + length > end:
            raise _unparseable("a file meta element runs past the end of the file meta")
        tag = group << 16 | element
        if tag == _META_GROUP_LENGTH and length == 4 and body_offset is None:
            # Where the file meta ends, so that group 0002 elements after it count as part of
            # the data set (which must have none).
            (group_length,) = struct.unpack_from("<L", buffer, pos + header)
            end = min(end, pos + header + length + group_length)
        if tag in (_META_SOP_CLASS, _META_SOP_INSTANCE, _META_TRANSFER_SYNTAX):
            raw = bytes(buffer[pos + header : pos + header + length])
            meta[tag] = raw.rstrip(b"\x00 ").decode("ascii", errors="replace")
        pos += header + length
    if body_offset is not None and pos != body_offset:
        raise _unparseable("the file meta does not end where the data set begins")
    return meta, pos


def _inflate(buffer: mmap.mmap | bytes, body: int, target: Path, limit: int) -> None:
    """Inflate a deflated data set (PS3.5 A.5) into ``target``, at most ``limit`` bytes, never
    more than one chunk in memory (a deflate bomb stops at the limit)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    written = 0
    pos = body
    pending = b""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            while not inflater.eof:
                if not pending and pos < len(buffer):
                    pending = bytes(buffer[pos : pos + _INFLATE_CHUNK])
                    pos += len(pending)
                data = inflater.decompress(pending, _INFLATE_CHUNK)
                pending = inflater.unconsumed_tail
                if not data and not pending and pos >= len(buffer):
                    break
                written += len(data)
                if written > limit:
                    raise IngestError(
                        StoreStatus.INSTANCE_TOO_LARGE,
                        f"the deflated data set inflates to more than {limit // 2**20} MiB",
                    )
                out.write(data)
            if not inflater.eof:
                raise _unparseable("the deflated data set ends before its deflate stream does")
    except zlib.error as exc:
        raise _unparseable("the deflated data set cannot be inflated") from exc


def _walk_or_explain(
    buffer: mmap.mmap | bytes,
    start: int,
    explicit: bool,
    little: bool,
    max_depth: int,
    wanted: frozenset[int],
) -> _Walk:
    """Walk in the transfer syntax's encoding; when that fails but the other VR encoding
    walks, say so (the body contradicts the transfer syntax of its file meta)."""
    try:
        return _Walk(buffer, explicit, little, max_depth, wanted).run(start)
    except IngestError as exc:
        if exc.status is not StoreStatus.CANNOT_UNDERSTAND or not little:
            raise
        try:
            _Walk(buffer, not explicit, little, max_depth, frozenset()).run(start)
        except IngestError:
            raise exc from None
        actual, declared = ("explicit", "implicit") if not explicit else ("implicit", "explicit")
        raise IngestError(
            StoreStatus.META_CONTRADICTS_DATASET,
            f"the data set is encoded in {actual} VR, its transfer syntax says {declared} VR",
        ) from None


_DATASET, _SEQUENCE, _FRAGMENTS = range(3)


@dataclass
class _Frame:
    kind: int
    end: int | None
    """Where the frame ends; ``None``: at its delimiter (undefined length)."""
    explicit: bool
    little: bool
    depth: int
    tag: int = 0
    in_item: bool = False
    fragments: int = 0
    fragment_bytes: int = 0


class _Walk:
    """One pass over the elements, iterative (an explicit stack, so no nesting can recurse)."""

    def __init__(
        self,
        buffer: mmap.mmap | bytes,
        explicit: bool,
        little: bool,
        max_depth: int,
        wanted: frozenset[int],
    ) -> None:
        self.buffer = buffer
        self.explicit = explicit
        self.little = little
        self.max_depth = max_depth
        self.wanted = wanted
        self.values: dict[int, RawValue] = {}
        self.unknown_vr_tags: list[int] = []
        self.pixel_data: PixelDataLayout | None = None
        self.deepest = 0
        self.elements = 0

    def run(self, start: int) -> _Walk:
        size = len(self.buffer)
        stack = [_Frame(_DATASET, size, self.explicit, self.little, 0)]
        pos = start
        while stack:
            frame = stack[-1]
            if frame.end is not None and pos >= frame.end:
                if pos > frame.end:
                    raise _unparseable("an element runs past the end of its item or sequence")
                stack.pop()
                continue
            limit = size if frame.end is None else frame.end
            if pos + 8 > limit:
                raise _unparseable(
                    "the data set ends inside an element header"
                    if frame.end is not None
                    else "the data set ends before a sequence or item delimiter"
                )
            tag, length = self._tag_and_length(pos, frame.little)
            if frame.kind == _SEQUENCE:
                pos = self._in_sequence(stack, frame, pos, tag, length, limit)
            elif frame.kind == _FRAGMENTS:
                pos = self._in_fragments(stack, frame, pos, tag, length, limit, len(stack) == 2)
            else:
                pos = self._in_dataset(stack, frame, pos, tag, limit, len(stack) == 1)
        return self

    def _tag_and_length(self, pos: int, little: bool) -> tuple[int, int]:
        group, element, length = struct.unpack_from("<HHL" if little else ">HHL", self.buffer, pos)
        return int(group) << 16 | int(element), int(length)

    def _in_sequence(
        self, stack: list[_Frame], frame: _Frame, pos: int, tag: int, length: int, limit: int
    ) -> int:
        if tag == _ITEM:
            pos += 8
            if length == _UNDEFINED:
                stack.append(
                    _Frame(_DATASET, None, frame.explicit, frame.little, frame.depth, in_item=True)
                )
            else:
                if pos + length > limit:
                    raise _unparseable("a sequence item runs past the end of its sequence")
                stack.append(
                    _Frame(_DATASET, pos + length, frame.explicit, frame.little, frame.depth)
                )
            return pos
        if tag == _SEQUENCE_END and frame.end is None:
            if length != 0:
                raise _unparseable("a sequence delimiter has a non-zero length")
            stack.pop()
            return pos + 8
        raise _unparseable("a sequence holds something other than items")

    def _in_fragments(
        self,
        stack: list[_Frame],
        frame: _Frame,
        pos: int,
        tag: int,
        length: int,
        limit: int,
        top_level: bool,
    ) -> int:
        if tag == _ITEM and length != _UNDEFINED:
            pos += 8
            if pos + length > limit:
                raise _unparseable("a pixel data fragment runs past the end of the data set")
            frame.fragments += 1
            if frame.fragments > 1:  # the first item is the Basic Offset Table
                frame.fragment_bytes += length
            return pos + length
        if tag == _SEQUENCE_END:
            if length != 0:
                raise _unparseable("the pixel data delimiter has a non-zero length")
            stack.pop()
            if top_level:
                self.pixel_data = PixelDataLayout(
                    frame.tag, None, max(0, frame.fragments - 1), frame.fragment_bytes
                )
            return pos + 8
        raise _unparseable("encapsulated pixel data holds something other than fragments")

    def _in_dataset(
        self, stack: list[_Frame], frame: _Frame, pos: int, tag: int, limit: int, top_level: bool
    ) -> int:
        buffer = self.buffer
        if tag == _ITEM_END:
            if not frame.in_item:
                raise _unparseable("an item delimiter outside an item of undefined length")
            stack.pop()
            return pos + 8
        if tag >> 16 == 0xFFFE:
            raise _unparseable("an item or delimiter outside a sequence")
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise _unparseable(f"more than {MAX_ELEMENTS} data elements")
        if top_level and tag >> 16 == 0x0002:
            raise IngestError(
                StoreStatus.META_CONTRADICTS_DATASET,
                "the data set carries file meta elements (group 0002) of its own",
            )
        if frame.explicit:
            code = bytes(buffer[pos + 4 : pos + 6])
            if not (len(code) == 2 and code.isalpha() and code.isupper()):
                raise _unparseable(f"an element of tag {_tag_text(tag)} has no valid VR code")
            vr = code.decode("ascii")
            if code in _LONG_VRS:
                if pos + 12 > limit:
                    raise _unparseable("the data set ends inside an element header")
                length = int(struct.unpack_from("<L" if frame.little else ">L", buffer, pos + 8)[0])
                value_start = pos + 12
            else:
                length = int(struct.unpack_from("<H" if frame.little else ">H", buffer, pos + 6)[0])
                value_start = pos + 8
            if code not in KNOWN_VRS and top_level and tag >> 16 & 1 == 0:
                self.unknown_vr_tags.append(tag)
        else:
            length = int(struct.unpack_from("<L" if frame.little else ">L", buffer, pos + 4)[0])
            value_start = pos + 8
            vr = _implicit_vr(tag)
        if length == _UNDEFINED:
            return self._undefined_length(stack, frame, value_start, tag, vr, top_level)
        if value_start + length > limit:
            raise _unparseable(
                f"the value of tag {_tag_text(tag)} runs past the end of its data set"
            )
        if vr == "SQ" or (vr == "UN" and _implicit_vr(tag) == "SQ"):
            # An SQ, or a public sequence sent as UN (pydicom reads it as the SQ it is).
            self._enter_sequence(stack, frame, value_start + length, tag, vr)
            return value_start
        if top_level:
            if tag in self.wanted and length <= MAX_WANTED_VALUE_BYTES:
                self.values[tag] = RawValue(vr, bytes(buffer[value_start : value_start + length]))
            if tag in _PIXEL_TAGS:
                self.pixel_data = PixelDataLayout(tag, length)
        return value_start + length

    def _undefined_length(
        self, stack: list[_Frame], frame: _Frame, value_start: int, tag: int, vr: str, top: bool
    ) -> int:
        if vr in ("SQ", "UN"):
            self._enter_sequence(stack, frame, None, tag, vr)
            return value_start
        if tag in _PIXEL_TAGS and vr in ("OB", "OW", "OB or OW"):
            stack.append(_Frame(_FRAGMENTS, None, True, frame.little, frame.depth, tag=tag))
            return value_start
        raise _unparseable(f"tag {_tag_text(tag)} has an undefined length its VR cannot have")

    def _enter_sequence(
        self, stack: list[_Frame], frame: _Frame, end: int | None, tag: int, vr: str
    ) -> None:
        depth = frame.depth + 1
        if depth > self.max_depth:
            raise IngestError(
                StoreStatus.SEQUENCE_TOO_DEEP,
                f"sequences are nested deeper than {self.max_depth} levels",
            )
        self.deepest = max(self.deepest, depth)
        # The content of an element sent as UN is implicit VR little endian (PS3.5 6.2.2).
        explicit = frame.explicit and vr != "UN"
        little = frame.little or vr == "UN"
        stack.append(_Frame(_SEQUENCE, end, explicit, little, depth, tag=tag))


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


_IMPLICIT_VRS: dict[int, str] = {}


def _implicit_vr(tag: int) -> str:
    """The VR an implicit VR reader (pydicom) gives ``tag``."""
    vr = _IMPLICIT_VRS.get(tag)
    if vr is not None:
        return vr
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0:
        vr = "UL"  # group length
    elif group & 1:
        vr = "LO" if 0x0010 <= element <= 0x00FF else "UN"  # private creator / private
    else:
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            vr = "UN"
    if len(_IMPLICIT_VRS) < 65536:
        _IMPLICIT_VRS[tag] = vr
    return vr
