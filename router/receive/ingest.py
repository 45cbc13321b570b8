"""Ingest one received instance: check it, spool it durably, index it, reopen studies."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.uid import UID

from config.schema import InputLimits
from dicom_sr.uids import is_valid_uid
from router.logs import log_safe
from router.receive.dataset_stream import ReceivedDataset
from router.receive.quarantine import Quarantine
from router.receive.spool import InvalidUidError, Spool, SpoolFullError
from router.receive.status import IngestError, StoreStatus
from router.receive.structure import PixelDataLayout, Structure, read_structure
from router.store.database import Connection, Database

__all__ = [
    "IngestError",
    "IngestOutcome",
    "Ingestor",
    "InstanceHeader",
    "Origin",
    "StoreStatus",
]

LOGGER = logging.getLogger(__name__)

_UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_HEADER_KEYWORDS = (
    *_UID_KEYWORDS,
    "SpecificCharacterSet",
    "Modality",
    "SeriesDescription",
    "InstanceNumber",
    "AcquisitionNumber",
    "ImagesInAcquisition",
    "NumberOfFrames",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    # The image pixel description, to check the pixel data is all there.
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)
_HEADER_TAG_OF = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in _HEADER_KEYWORDS}
HEADER_TAGS = frozenset(_HEADER_TAG_OF.values())
_SPECIFIC_CHARACTER_SET = 0x00080005
"""The top-level elements ingest reads; every other element is kept, never decoded."""
ASSOCIATION_STUDIES_REMEMBERED = 4096
"""(association, study) pairs whose ``association_studies`` row this process wrote and so
need not write again (most recent kept)."""


class _Unreadable:
    """A value that is present but cannot be decoded."""


UNREADABLE = _Unreadable()


@dataclass(frozen=True)
class InstanceHeader:
    """The few header values the index and completion logic need, PHI-free."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    series_description: str
    instance_number: int | None
    acquisition_number: int | None
    images_in_acquisition: int | None
    number_of_frames: int | None
    orientation: str | None
    slice_position: float | None

    @classmethod
    def from_values(cls, ds: HeaderValues) -> InstanceHeader:
        """Read tolerantly: only the four UIDs must be there and be DICOM UIDs (they name the
        spool file); any other value that cannot be decoded counts as absent."""
        unreadable = [k for k in _UID_KEYWORDS if _value(ds, k) is UNREADABLE]
        if unreadable:
            raise IngestError(
                StoreStatus.CANNOT_UNDERSTAND, f"{', '.join(unreadable)} cannot be decoded"
            )
        missing = [keyword for keyword in _UID_KEYWORDS if not _text(_value(ds, keyword))]
        if missing:
            raise IngestError(StoreStatus.CANNOT_UNDERSTAND, f"missing {', '.join(missing)}")
        uids = {keyword: _text(_value(ds, keyword)) for keyword in _UID_KEYWORDS}
        invalid = [keyword for keyword, uid in uids.items() if not is_valid_uid(uid)]
        if invalid:
            raise IngestError(
                StoreStatus.INVALID_UID,
                f"{', '.join(invalid)} {'is' if len(invalid) == 1 else 'are'} not a DICOM UID "
                "(PS3.5 9.1)",
                uids["StudyInstanceUID"] if "StudyInstanceUID" not in invalid else None,
            )
        orientation, position = _geometry(ds)
        return cls(
            sop_class_uid=uids["SOPClassUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            study_uid=uids["StudyInstanceUID"],
            series_uid=uids["SeriesInstanceUID"],
            modality=_text(_value(ds, "Modality"))[:16],
            series_description=_text(_value(ds, "SeriesDescription"))[:64],
            instance_number=_int_or_none(_value(ds, "InstanceNumber")),
            acquisition_number=_int_or_none(_value(ds, "AcquisitionNumber")),
            images_in_acquisition=_int_or_none(_value(ds, "ImagesInAcquisition")),
            number_of_frames=_int_or_none(_value(ds, "NumberOfFrames")),
            orientation=orientation,
            slice_position=position,
        )


def _value(ds: HeaderValues, keyword: str) -> object:
    """The decoded value of ``keyword``, ``None`` when absent, :data:`UNREADABLE` when it
    cannot be decoded (pydicom raises many types on malformed values)."""
    try:
        return ds.get(keyword)
    except Exception:
        return UNREADABLE


def _text(value: object) -> str:
    if isinstance(value, list):  # several values where one belongs: not usable as one
        return "\\".join(str(v) for v in value)
    if value is None or value is UNREADABLE or not isinstance(value, str):
        return ""
    return value.strip()


def _int_or_none(value: object) -> int | None:
    if value is None or value is UNREADABLE or value == "":
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


def _floats(value: object, count: int) -> list[float] | None:
    if value is None or value is UNREADABLE or isinstance(value, str | bytes):
        return None
    try:
        values = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


def _geometry(ds: HeaderValues) -> tuple[str | None, float | None]:
    iop = _floats(_value(ds, "ImageOrientationPatient"), 6)
    ipp = _floats(_value(ds, "ImagePositionPatient"), 3)
    if iop is None or ipp is None:
        return None, None
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    position = float(np.dot(normal, np.array(ipp)))
    if not math.isfinite(position):
        return None, None
    return ",".join(f"{v:.3f}" for v in (*row, *col)), position


class HeaderValues:
    """The top-level values the walk copied (``HEADER_TAGS``), decoded here rather than by
    pydicom: pydicom's validation logs a value it finds invalid, quoting it (patient data in
    the log). ``get`` returns what pydicom would (a string, a list of strings for several
    values, an int for US/SS), ``None`` when absent, and raises when it cannot decode."""

    _ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
    _CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})

    def __init__(self, structure: Structure) -> None:
        self._values = structure.values
        self._little = structure.little_endian
        self._encodings: list[str] | None = None

    def get(self, keyword: str) -> object:
        tag = _HEADER_TAG_OF.get(keyword)
        if tag is None:
            tag = int(tag_for_keyword(keyword) or 0)
        raw = self._values.get(tag)
        if raw is None:
            return None
        vr = raw.vr
        if vr == "UN":  # sent as UN: read as its dictionary VR, as pydicom does
            vr = str(dictionary_VR(tag))
        if vr in ("US", "SS"):
            if len(raw.value) != 2:
                raise ValueError(f"{keyword}: {len(raw.value)} bytes for one {vr} value")
            code = ("<" if self._little else ">") + ("H" if vr == "US" else "h")
            return int(struct.unpack(code, raw.value)[0])
        if vr in self._ASCII_VRS:
            text = raw.value.decode("ascii")
        elif vr in self._CHARSET_VRS:
            text = decode_bytes(raw.value, self._charset(), set())
        else:
            raise ValueError(f"{keyword}: VR {vr} is not the one ingest reads it as")
        values = [value.strip(" \x00") for value in text.split("\\")]
        return values[0] if len(values) == 1 else values

    def _charset(self) -> list[str]:
        if self._encodings is None:
            declared = self._values.get(_SPECIFIC_CHARACTER_SET)
            terms = "" if declared is None else declared.value.decode("ascii", "replace")
            names = [t.strip(" \x00") for t in terms.split("\\")] if terms else []
            self._encodings = convert_encodings(names or ["ISO_IR 6"])
        return self._encodings


def check_pixel_data(ds: HeaderValues, layout: PixelDataLayout | None) -> None:
    """Pixel data must hold at least what Rows, Columns, frames, samples and bits describe
    (native), or at least one non-empty fragment per frame (encapsulated, PS3.5 A.4)."""
    if layout is None:
        return
    rows = _int_or_none(_value(ds, "Rows"))
    columns = _int_or_none(_value(ds, "Columns"))
    bits = _int_or_none(_value(ds, "BitsAllocated"))
    if not rows or not columns or not bits or min(rows, columns, bits) < 1:
        raise IngestError(
            StoreStatus.PIXEL_DATA_INCOMPLETE,
            "pixel data without a usable Rows, Columns or BitsAllocated",
        )
    frames = max(1, _int_or_none(_value(ds, "NumberOfFrames")) or 1)
    samples = max(1, _int_or_none(_value(ds, "SamplesPerPixel")) or 1)
    if layout.length is None:
        if layout.fragments == 0 or layout.fragment_bytes == 0:
            raise IngestError(StoreStatus.PIXEL_DATA_INCOMPLETE, "encapsulated pixel data is empty")
        if layout.fragments < frames:
            raise IngestError(
                StoreStatus.PIXEL_DATA_INCOMPLETE,
                f"encapsulated pixel data has {layout.fragments} fragments for "
                f"{frames} frames (NumberOfFrames)",
            )
        return
    photometric = _text(_value(ds, "PhotometricInterpretation"))
    if samples == 3 and photometric.endswith("_422"):
        samples = 2  # YBR_FULL_422: two samples per pixel on average (PS3.3 C.7.6.3.1.2)
    expected = math.ceil(rows * columns * frames * samples * bits / 8)
    if layout.length < expected:
        keyword = keyword_for_tag(layout.tag) or "pixel data"
        raise IngestError(
            StoreStatus.PIXEL_DATA_INCOMPLETE,
            f"{keyword} holds {layout.length} bytes; Rows, Columns, NumberOfFrames, "
            f"SamplesPerPixel and BitsAllocated describe {expected}",
        )


def is_image_storage(sop_class_uid: str) -> bool:
    """Whether the SOP class is one of PS3.4 B.5's image storage classes, whose IODs all have
    pixel data (Type 1): one without is a data set cut short at an element boundary."""
    return "Image Storage" in UID(sop_class_uid).name


@dataclass(frozen=True)
class Origin:
    """Where an instance came from: the association and its AE titles."""

    association_id: str | None
    calling_ae: str
    called_ae: str


@dataclass(frozen=True)
class IngestOutcome:
    header: InstanceHeader
    path: Path
    duplicate: bool
    reopened: bool
    external_answer: bool = False
    """A vendor's answer in a study radrouter de-identified (``router.external``): held in
    ``external_answers`` for the answer stage, not indexed as a received study."""


@dataclass(frozen=True)
class _Expected:
    """What the data set must agree with besides its file meta: the request and the
    presentation context it came under (``None`` where there was none)."""

    sop_instance_uid: str
    context_sop_class_uid: str | None = None


class Ingestor:
    """The decider behind the C-STORE handler. It raises IngestError; it never half-stores.

    Everything it refuses goes to the quarantine with the reason (the bytes when it has them),
    so nothing is silently lost; only a full or failing spool is "out of resources".
    """

    def __init__(
        self,
        db: Database,
        spool: Spool,
        quarantine: Quarantine,
        on_stored: Callable[[IngestOutcome], None] | None = None,
        limits: InputLimits | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.quarantine = quarantine
        self.on_stored = on_stored
        self.limits = limits or InputLimits()
        self._association_studies: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._association_studies_lock = threading.Lock()

    @property
    def max_instance_bytes(self) -> int:
        return self.limits.max_instance_mb * 2**20

    def ingest_received(
        self, received: ReceivedDataset | None, origin: Origin, context_sop_class_uid: str
    ) -> IngestOutcome:
        """A data set the node streamed into the spool's incoming folder (the caller's file
        until now; from here on this method keeps, moves or deletes it); ``None`` when the
        request carried none."""
        if received is None:
            missing = IngestError(StoreStatus.CANNOT_UNDERSTAND, "the request has no data set")
            self._quarantine(None, missing)
            raise missing
        if received.refusal is not None:
            if received.refusal.status is StoreStatus.OUT_OF_RESOURCES:
                if received.path is not None:
                    received.path.unlink(missing_ok=True)
            else:
                self._quarantine(received.path, received.refusal)
            raise received.refusal
        if received.path is None:  # not reached: a sink without a refusal has its file
            raise IngestError(StoreStatus.OUT_OF_RESOURCES, "the data set was not kept")
        expected = _Expected(received.affected_sop_instance_uid, context_sop_class_uid)
        return self._ingest_file(
            received.path,
            received.sha256,
            received.size,
            origin,
            expected,
            received.body_offset,
            data=received.data,
            synced=received.synced,
        )

    def ingest(
        self, data: bytes, origin: Origin, expected_sop_instance_uid: str | None
    ) -> IngestOutcome:
        """A whole Part-10 file in memory (recovery, tools and tests)."""
        if len(data) > self.max_instance_bytes:
            too_large = IngestError(
                StoreStatus.INSTANCE_TOO_LARGE,
                "the instance is larger than node.limits.max_instance_mb",
            )
            self._quarantine(None, too_large)
            raise too_large
        try:
            self.spool.check_free_space(len(data))
            partial, fd = self.spool.new_incoming()
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except SpoolFullError as exc:
            raise IngestError(StoreStatus.OUT_OF_RESOURCES, str(exc)) from exc
        except OSError as exc:
            raise IngestError(
                StoreStatus.OUT_OF_RESOURCES, f"spool write failed: {exc.strerror}"
            ) from exc
        expected = _Expected(expected_sop_instance_uid) if expected_sop_instance_uid else None
        return self._ingest_file(
            partial, hashlib.sha256(data).hexdigest(), len(data), origin, expected, None, data=data
        )

    def recover_file(self, path: Path) -> bool:
        """Index a spool file that has no index row (after a crash); a file that does not
        pass the checks (written before them) goes to the quarantine. True if indexed."""
        try:
            data = path.read_bytes()
            structure, header = self._check(path, None, None, data)
            if path != self.spool.path_for(
                header.study_uid, header.series_uid, header.sop_instance_uid
            ):
                raise IngestError(
                    StoreStatus.META_CONTRADICTS_DATASET,
                    "the spool file's name does not match its UIDs",
                    header.study_uid,
                )
        except IngestError as exc:
            LOGGER.warning(
                "spool file %s moved to the quarantine: %s", path.name, log_safe(exc.reason, 300)
            )
            self._quarantine(path, exc)
            return False
        except OSError:
            LOGGER.exception("spool file %s could not be read", path.name)
            return False
        outcome = self._index(
            header,
            structure.transfer_syntax_uid,
            path,
            len(data),
            hashlib.sha256(data).hexdigest(),
            Origin(None, "", ""),
        )
        self._stored(outcome)
        return True

    def _ingest_file(
        self,
        partial: Path,
        sha256: str,
        size: int,
        origin: Origin,
        expected: _Expected | None,
        body_offset: int | None,
        *,
        data: bytes | None = None,
        synced: Future[None] | None = None,
    ) -> IngestOutcome:
        """Check, commit and index the complete file ``partial``; ``data``: its content when
        still in memory (walked instead of the file); ``synced``: its fsync, already started."""
        try:
            structure, header = self._check(partial, expected, body_offset, data)
        except IngestError as exc:
            self._quarantine(partial, exc)
            raise
        try:
            final = self.spool.commit(
                partial, header.study_uid, header.series_uid, header.sop_instance_uid, synced
            )
        except SpoolFullError as exc:
            raise IngestError(StoreStatus.OUT_OF_RESOURCES, str(exc), header.study_uid) from exc
        except InvalidUidError as exc:  # checked already; kept as a second line
            raise IngestError(StoreStatus.INVALID_UID, str(exc), header.study_uid) from exc
        except OSError as exc:
            raise IngestError(
                StoreStatus.OUT_OF_RESOURCES,
                f"spool write failed: {exc.strerror}",
                header.study_uid,
            ) from exc
        outcome = self._index(header, structure.transfer_syntax_uid, final, size, sha256, origin)
        self._stored(outcome)
        return outcome

    def _check(
        self,
        path: Path,
        expected: _Expected | None,
        body_offset: int | None,
        data: bytes | None = None,
    ) -> tuple[Structure, InstanceHeader]:
        """The structure walk, the header, the pixel data, and agreement with the file meta,
        the request and the presentation context (of ``data``, the file's content, when
        given). Only a failure to read the file itself is not the data set's fault
        (``OSError``)."""
        try:
            return self._check_data_set(path, expected, body_offset, data)
        except (IngestError, OSError):
            raise
        except Exception as exc:  # pydicom raises many types on malformed values
            raise IngestError(
                StoreStatus.CANNOT_UNDERSTAND, f"the header cannot be read ({type(exc).__name__})"
            ) from exc

    def _check_data_set(
        self,
        path: Path,
        expected: _Expected | None,
        body_offset: int | None,
        data: bytes | None,
    ) -> tuple[Structure, InstanceHeader]:
        structure = read_structure(
            path,
            wanted=HEADER_TAGS,
            max_depth=self.limits.max_sequence_depth,
            max_inflated_bytes=self.max_instance_bytes,
            scratch_dir=self.spool.incoming,
            body_offset=body_offset,
            data=data,
        )
        if structure.unknown_vr_tags:
            names = ", ".join(_attribute_name(tag) for tag in structure.unknown_vr_tags[:3])
            raise IngestError(
                StoreStatus.CANNOT_UNDERSTAND,
                f"{names}: a VR code that is not in PS3.5 (stages read attributes by keyword, "
                "and this value cannot be decoded)",
            )
        ds = HeaderValues(structure)
        header = InstanceHeader.from_values(ds)
        study = header.study_uid
        try:
            if structure.pixel_data is None and is_image_storage(header.sop_class_uid):
                raise IngestError(
                    StoreStatus.PIXEL_DATA_INCOMPLETE,
                    f"an instance of {UID(header.sop_class_uid).name} without pixel data",
                )
            check_pixel_data(ds, structure.pixel_data)
        except IngestError as exc:
            raise IngestError(exc.status, exc.reason, study) from None
        meta_class = structure.media_sop_class_uid
        context_class = expected.context_sop_class_uid if expected else None
        if context_class is not None and header.sop_class_uid != context_class:
            raise IngestError(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPClassUID of the data set is not the presentation context's SOP class",
                study,
            )
        if meta_class and header.sop_class_uid != meta_class:
            raise IngestError(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPClassUID of the data set differs from the request's (file meta)",
                study,
            )
        for meta_instance in (
            structure.media_sop_instance_uid,
            expected.sop_instance_uid if expected else "",
        ):
            if meta_instance and header.sop_instance_uid != meta_instance:
                raise IngestError(
                    StoreStatus.META_CONTRADICTS_DATASET,
                    "SOPInstanceUID of the data set differs from the request's (file meta)",
                    study,
                )
        return structure, header

    def _quarantine(self, path: Path | None, exc: IngestError) -> None:
        """Quarantine ``path`` (or record that nothing was kept) with the reason."""
        status = StoreStatus(exc.status)
        self.quarantine.keep(path, f"{status.name} (0x{status:04X}): {exc.reason}")

    def _stored(self, outcome: IngestOutcome) -> None:
        if self.on_stored is not None:
            try:
                self.on_stored(outcome)
            except Exception:  # an observer never breaks the store
                LOGGER.exception(
                    "study %s: on_stored observer failed", log_safe(outcome.header.study_uid)
                )

    def _index(
        self,
        header: InstanceHeader,
        transfer_syntax: str,
        path: Path,
        size: int,
        sha256: str,
        origin: Origin,
    ) -> IngestOutcome:
        """The instance's row, its series' and study's, in one transaction of as few
        statements as the common case allows (an instance of a study still receiving, on an
        association already recorded for it): the previous row's hash, the study's time, the
        series upsert with its count, the instance upsert."""
        now = time.time()
        reopened = False
        association_study = (
            (origin.association_id, header.study_uid) if origin.association_id else None
        )
        record_association = association_study is not None and not self._association_known(
            association_study
        )
        with self.db.transaction(study=header.study_uid) as conn:
            previous = conn.execute(
                "SELECT sha256 FROM instances WHERE sop_instance_uid = ?",
                (header.sop_instance_uid,),
            ).fetchone()
            duplicate = previous is not None and previous["sha256"] == sha256
            if record_association and association_study is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO association_studies (association_id, study_uid) "
                    "VALUES (?, ?)",
                    association_study,
                )
            if not duplicate:
                indexed = self._index_new_bytes(conn, header, now, previous is None)
                if indexed is None:
                    _hold_external_answer(conn, header, path, origin, now)
                    return IngestOutcome(header, path, False, False, external_answer=True)
                reopened = indexed
                conn.execute(
                    "INSERT INTO instances (sop_instance_uid, series_uid, study_uid, "
                    "sop_class_uid, transfer_syntax_uid, path, size, sha256, received_at, "
                    "association_id, calling_ae, called_ae, instance_number, acquisition_number, "
                    "images_in_acquisition, number_of_frames, orientation, slice_position) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (sop_instance_uid) DO UPDATE SET sha256 = excluded.sha256, "
                    "size = excluded.size, received_at = excluded.received_at, "
                    "transfer_syntax_uid = excluded.transfer_syntax_uid, "
                    "association_id = excluded.association_id",
                    (
                        header.sop_instance_uid,
                        header.series_uid,
                        header.study_uid,
                        header.sop_class_uid,
                        transfer_syntax,
                        str(path),
                        size,
                        sha256,
                        now,
                        origin.association_id,
                        origin.calling_ae,
                        origin.called_ae,
                        header.instance_number,
                        header.acquisition_number,
                        header.images_in_acquisition,
                        header.number_of_frames,
                        header.orientation,
                        header.slice_position,
                    ),
                )
        if record_association and association_study is not None:  # committed: remember it
            self._remember_association(association_study)
        if duplicate:
            return IngestOutcome(header, path, duplicate=True, reopened=False)
        if reopened:
            self.db.record_event("study_reopened", header.study_uid, detail="late instance")
        return IngestOutcome(header, path, duplicate=False, reopened=reopened)

    @staticmethod
    def _index_new_bytes(
        conn: Connection, header: InstanceHeader, now: float, new_instance: bool
    ) -> bool | None:
        """The study and series rows of an instance whose bytes are new; whether the study
        was reopened (it had left the receiving state). None, and nothing written, for a
        vendor's answer: an instance of a study radrouter de-identified for a vendor (looked
        up only for a study it has not indexed, so the common path pays nothing)."""
        reopened = False
        receiving = conn.execute(
            "UPDATE studies SET last_received_at = ? WHERE study_uid = ? AND state = 'receiving'",
            (now, header.study_uid),
        ).rowcount
        if not receiving:
            study = conn.execute(
                "SELECT state FROM studies WHERE study_uid = ?", (header.study_uid,)
            ).fetchone()
            if study is None and _is_deidentified_study(conn, header.study_uid):
                return None
            if study is None:
                conn.execute(
                    "INSERT INTO studies (study_uid, state, first_received_at, last_received_at) "
                    "VALUES (?, 'receiving', ?, ?)",
                    (header.study_uid, now, now),
                )
            else:  # not receiving (the update above would have matched)
                reopened = True
                conn.execute(
                    "UPDATE studies SET state = 'receiving', revision = revision + 1, "
                    "first_received_at = ?, last_received_at = ?, completed_at = NULL, "
                    "completion_reason = NULL, finished_at = NULL WHERE study_uid = ?",
                    (now, now, header.study_uid),
                )
        # The series row before the instance's (which names it); its count goes up with a
        # new instance, not with new bytes of one it has.
        conn.execute(
            "INSERT INTO series (series_uid, study_uid, modality, series_description, "
            "first_received_at, last_received_at, instance_count) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (series_uid) DO UPDATE SET last_received_at = "
            "excluded.last_received_at, instance_count = series.instance_count + excluded.instance_count",
            (
                header.series_uid,
                header.study_uid,
                header.modality,
                header.series_description,
                now,
                now,
                1 if new_instance else 0,
            ),
        )
        return reopened

    def _association_known(self, key: tuple[str, str]) -> bool:
        with self._association_studies_lock:
            if key in self._association_studies:
                self._association_studies.move_to_end(key)
                return True
            return False

    def _remember_association(self, key: tuple[str, str]) -> None:
        with self._association_studies_lock:
            self._association_studies[key] = None
            while len(self._association_studies) > ASSOCIATION_STUDIES_REMEMBERED:
                self._association_studies.popitem(last=False)


def _is_deidentified_study(conn: Connection, study_uid: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM external_requests WHERE deid_study_uid = ? LIMIT 1", (study_uid,)
        ).fetchone()
        is not None
    )


def _hold_external_answer(
    conn: Connection, header: InstanceHeader, path: Path, origin: Origin, now: float
) -> None:
    """Keep a vendor's answer for the answer stage, with the request still awaiting one in its
    study (the oldest), or none: an answer after the time limit, which the stage drops."""
    request = conn.execute(
        "SELECT id FROM external_requests WHERE deid_study_uid = ? AND state = 'awaiting' "
        "ORDER BY id LIMIT 1",
        (header.study_uid,),
    ).fetchone()
    conn.execute(
        "INSERT INTO external_answers (sop_instance_uid, request_id, deid_study_uid, "
        "sop_class_uid, path, calling_ae, received_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (sop_instance_uid) DO UPDATE SET request_id = excluded.request_id, "
        "path = excluded.path, received_at = excluded.received_at",
        (
            header.sop_instance_uid,
            None if request is None else request["id"],
            header.study_uid,
            header.sop_class_uid,
            str(path),
            origin.calling_ae,
            now,
        ),
    )


def _attribute_name(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
