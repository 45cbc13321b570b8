"""Ingest one received instance: read its header, spool it durably, index it, reopen studies."""

from __future__ import annotations

import enum
import io
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from router.logs import log_safe
from router.receive.spool import Spool, SpoolFullError
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "InstanceNumber",
    "AcquisitionNumber",
    "ImagesInAcquisition",
    "NumberOfFrames",
    "ImagePositionPatient",
    "ImageOrientationPatient",
]


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses (PS3.4 B.2.3) radrouter returns."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


class IngestError(Exception):
    """An instance that cannot be accepted; ``status`` is what the peer is told, ``study_uid``
    the study it belongs to once its header was read (for the log line)."""

    def __init__(self, status: StoreStatus, reason: str, study_uid: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.study_uid = study_uid


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
    def from_dataset(cls, ds: Dataset) -> InstanceHeader:
        missing = [
            keyword
            for keyword in (
                "SOPClassUID",
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
            )
            if not str(ds.get(keyword, "") or "").strip()
        ]
        if missing:
            raise IngestError(StoreStatus.CANNOT_UNDERSTAND, f"missing {', '.join(missing)}")
        orientation: str | None = None
        position: float | None = None
        iop = ds.get("ImageOrientationPatient")
        ipp = ds.get("ImagePositionPatient")
        if iop is not None and ipp is not None and len(iop) == 6 and len(ipp) == 3:
            row = np.array([float(v) for v in iop[:3]])
            col = np.array([float(v) for v in iop[3:]])
            normal = np.cross(row, col)
            orientation = ",".join(f"{v:.3f}" for v in (*row, *col))
            position = float(np.dot(normal, np.array([float(v) for v in ipp])))
        return cls(
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            modality=str(ds.get("Modality", "") or ""),
            series_description=str(ds.get("SeriesDescription", "") or "")[:64],
            instance_number=_int_or_none(ds.get("InstanceNumber")),
            acquisition_number=_int_or_none(ds.get("AcquisitionNumber")),
            images_in_acquisition=_int_or_none(ds.get("ImagesInAcquisition")),
            number_of_frames=_int_or_none(ds.get("NumberOfFrames")),
            orientation=orientation,
            slice_position=position,
        )


def _int_or_none(value: object) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


def read_header(data: bytes) -> tuple[InstanceHeader, str]:
    """Parse the header of a Part-10 byte string; return it and its transfer syntax UID."""
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        header = InstanceHeader.from_dataset(ds)
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    except IngestError:
        raise
    except (InvalidDicomError, ValueError, KeyError, AttributeError, EOFError, OSError) as exc:
        raise IngestError(StoreStatus.CANNOT_UNDERSTAND, f"unreadable dataset: {exc}") from exc
    return header, transfer_syntax


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


class Ingestor:
    """The decider behind the C-STORE handler. It raises IngestError; it never half-stores."""

    def __init__(
        self,
        db: Database,
        spool: Spool,
        quarantine: Path,
        on_stored: Callable[[IngestOutcome], None] | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.quarantine = quarantine
        self.on_stored = on_stored

    def ingest(
        self, data: bytes, origin: Origin, expected_sop_instance_uid: str | None
    ) -> IngestOutcome:
        try:
            header, transfer_syntax = read_header(data)
        except IngestError as exc:
            self._quarantine(data, exc.reason)
            raise
        if expected_sop_instance_uid and header.sop_instance_uid != expected_sop_instance_uid:
            reason = "SOP Instance UID in the dataset differs from the C-STORE request"
            self._quarantine(data, reason)
            raise IngestError(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, reason, header.study_uid
            )
        try:
            spooled = self.spool.write(
                header.study_uid, header.series_uid, header.sop_instance_uid, data
            )
        except SpoolFullError as exc:
            raise IngestError(StoreStatus.OUT_OF_RESOURCES, str(exc), header.study_uid) from exc
        except ValueError as exc:  # a UID that cannot be a path
            self._quarantine(data, str(exc))
            raise IngestError(StoreStatus.CANNOT_UNDERSTAND, str(exc), header.study_uid) from exc
        except OSError as exc:
            raise IngestError(
                StoreStatus.OUT_OF_RESOURCES, f"spool write failed: {exc}", header.study_uid
            ) from exc
        outcome = self._index(
            header, transfer_syntax, spooled.path, spooled.size, spooled.sha256, origin
        )
        if self.on_stored is not None:
            try:
                self.on_stored(outcome)
            except Exception:  # an observer never breaks the store
                LOGGER.exception("study %s: on_stored observer failed", log_safe(header.study_uid))
        return outcome

    def _index(
        self,
        header: InstanceHeader,
        transfer_syntax: str,
        path: Path,
        size: int,
        sha256: str,
        origin: Origin,
    ) -> IngestOutcome:
        now = time.time()
        reopened = False
        with self.db.transaction() as conn:
            previous = conn.execute(
                "SELECT sha256 FROM instances WHERE sop_instance_uid = ?",
                (header.sop_instance_uid,),
            ).fetchone()
            duplicate = previous is not None and previous["sha256"] == sha256
            if origin.association_id:
                conn.execute(
                    "INSERT OR IGNORE INTO association_studies (association_id, study_uid) "
                    "VALUES (?, ?)",
                    (origin.association_id, header.study_uid),
                )
            if duplicate:
                return IngestOutcome(header, path, duplicate=True, reopened=False)
            study = conn.execute(
                "SELECT state FROM studies WHERE study_uid = ?", (header.study_uid,)
            ).fetchone()
            if study is None:
                conn.execute(
                    "INSERT INTO studies (study_uid, state, first_received_at, last_received_at) "
                    "VALUES (?, 'receiving', ?, ?)",
                    (header.study_uid, now, now),
                )
            elif study["state"] != "receiving":
                reopened = True
                conn.execute(
                    "UPDATE studies SET state = 'receiving', revision = revision + 1, "
                    "first_received_at = ?, last_received_at = ?, completed_at = NULL, "
                    "completion_reason = NULL, finished_at = NULL WHERE study_uid = ?",
                    (now, now, header.study_uid),
                )
            else:
                conn.execute(
                    "UPDATE studies SET last_received_at = ? WHERE study_uid = ?",
                    (now, header.study_uid),
                )
            conn.execute(
                "INSERT INTO series (series_uid, study_uid, modality, series_description, "
                "first_received_at, last_received_at, instance_count) VALUES (?, ?, ?, ?, ?, ?, 0) "
                "ON CONFLICT (series_uid) DO UPDATE SET last_received_at = excluded.last_received_at",
                (
                    header.series_uid,
                    header.study_uid,
                    header.modality,
                    header.series_description,
                    now,
                    now,
                ),
            )
            conn.execute(
                "INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid, "
                "transfer_syntax_uid, path, size, sha256, received_at, association_id, calling_ae, "
                "called_ae, instance_number, acquisition_number, images_in_acquisition, "
                "number_of_frames, orientation, slice_position) "
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
            if previous is None:
                conn.execute(
                    "UPDATE series SET instance_count = instance_count + 1 WHERE series_uid = ?",
                    (header.series_uid,),
                )
        if reopened:
            self.db.record_event("study_reopened", header.study_uid, detail="late instance")
        return IngestOutcome(header, path, duplicate=False, reopened=reopened)

    def _quarantine(self, data: bytes, reason: str) -> None:
        """Keep what could not be accepted, with the reason, so nothing is silently lost."""
        try:
            self.quarantine.mkdir(parents=True, exist_ok=True)
            name = uuid.uuid4().hex
            (self.quarantine / f"{name}.bin").write_bytes(data)
            (self.quarantine / f"{name}.reason.txt").write_text(reason + "\n")
            self.db.record_event("instance_rejected", detail=f"{reason} (quarantine {name})")
        except OSError:
            LOGGER.exception("could not quarantine a rejected instance")
