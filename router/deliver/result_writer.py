"""The result writer: an algorithm's result -> SR, SEG, KOS (and, where a destination asks,
GSPS and a summary image) on disk -> rows, dispatches, notify.

One writer for every algorithm (``dicom_sr.result_objects``). A re-run after late images
writes the next version, naming the previous version's objects as predecessors. In shadow
mode the result is written and recorded but neither dispatched nor notified.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from pydicom import Dataset

from algorithms.contract import AlgorithmInfo, AlgorithmResult, PriorStudy, Purpose
from algorithms.finding_words import KeyImage
from dicom_sr.context import InstanceReference, ResultVersion, SourceImage, StudyContext
from dicom_sr.identity import ObjectKind
from dicom_sr.io import write_dataset
from dicom_sr.result_objects import ResultObjects, build_result_objects, successor_version
from dicom_sr.uids import is_valid_uid
from router.deliver.notify import queue_result
from router.deliver.outcome_codec import key_images_of, result_to_json
from router.deliver.presentation_objects import summary_picture
from router.receive.private_files import make_private_dir
from router.run.job_queue import Job
from router.run.series_loader import LoadedSeries, read_source_header
from router.store.database import Connection, Database, Row

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class WrittenResult:
    result_id: int
    report_path: Path
    objects: tuple[str, ...]
    """Kinds written, e.g. ("seg", "sr", "kos")."""


@dataclass(frozen=True)
class VendorObject:
    """An object an external algorithm's vendor made (re-identified, on disk), recorded and
    sent with the result it belongs to (kind ``vendor``)."""

    path: Path
    sop_class_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    series_number: int


@dataclass(frozen=True)
class PriorEvidence:
    """What a follow-up result references of the prior exams it was compared with."""

    instances: tuple[InstanceReference, ...] = ()
    tracking_uids: Mapping[str, str] | None = None

    @classmethod
    def of(
        cls, priors: Sequence[PriorStudy], instances: Sequence[InstanceReference]
    ) -> PriorEvidence:
        uids = {f.tracking_id: f.tracking_uid for p in priors for f in p.findings}
        return cls(tuple(instances), uids or None)


class ResultWriter:
    def __init__(self, db: Database, results_dir: Path) -> None:
        self.db = db
        self.results_dir = results_dir

    def write(
        self,
        job: Job,
        info: AlgorithmInfo,
        result: AlgorithmResult,
        loaded: LoadedSeries | None,
        *,
        shadow: bool,
        prior: PriorEvidence | None = None,
        within: Callable[[Connection], None] | None = None,
        presentation_kinds: frozenset[ObjectKind] = frozenset(),
        vendor_objects: Sequence[VendorObject] = (),
    ) -> WrittenResult:
        """Write the objects, then record them, their dispatches and the notification in one
        transaction; ``within`` runs first in it (the job's completion: if it raises, nothing
        is recorded). ``presentation_kinds`` adds a presentation state and a summary image
        (what the job's destinations ask for: ``wanted_presentation_kinds``);
        ``vendor_objects`` are an external algorithm's own, recorded and sent with it."""
        version = self._next_version(job.study_uid, job.algorithm)
        if loaded is not None:
            sources = [
                SourceImage(s.sop_class_uid, s.sop_instance_uid, s.frame_number)
                for s in loaded.slices
            ]
            header: Dataset = loaded.first_header
        else:
            sources, header = self._sources_without_volume(job.series_uid)
        key_images = key_images_of(result, loaded) if loaded is not None else ()
        picture = None
        if ObjectKind.SC in presentation_kinds and loaded is not None:
            picture = summary_picture(self.db, result, loaded, key_images)
        objects = build_result_objects(
            result=result,
            info=info,
            source_images=sources,
            study=StudyContext(header),
            version=version,
            source_headers=loaded.headers if loaded is not None else (),
            geometry=loaded.series.geometry if loaded is not None else None,
            prior_evidence=prior.instances if prior is not None else (),
            tracking_uids=prior.tracking_uids if prior is not None else None,
            presentation_kinds=presentation_kinds,
            summary_picture=picture,
        )
        if not is_valid_uid(job.study_uid):  # it names a folder: only a DICOM UID may
            raise ValueError("the job's StudyInstanceUID is not a DICOM UID")
        folder = self.results_dir / job.study_uid
        make_private_dir(self.results_dir)  # results hold patient data: 0700 folders
        make_private_dir(folder)
        paths = {}
        for obj in objects.all():
            path = folder / f"{obj.sop_instance_uid}.dcm"
            write_dataset(obj.dataset, path)
            paths[obj.kind.name.lower()] = path
        with self.db.transaction() as conn:
            if within is not None:
                within(conn)
            result_id = self._record(
                conn,
                job,
                info,
                result,
                objects,
                paths,
                shadow,
                key_images=key_images,
                scanner=scanner_of(header),
                acquisition=acquisition_of(header),
            )
            for vendor in vendor_objects:
                conn.execute(
                    "INSERT INTO result_objects (result_id, kind, sop_class_uid, "
                    "series_instance_uid, sop_instance_uid, series_number, path) "
                    "VALUES (?, 'vendor', ?, ?, ?, ?, ?)",
                    (
                        result_id,
                        vendor.sop_class_uid,
                        vendor.series_instance_uid,
                        vendor.sop_instance_uid,
                        vendor.series_number,
                        str(vendor.path),
                    ),
                )
            if shadow:
                LOGGER.info(
                    "job %d (%s) in shadow mode: result kept, not sent", job.id, job.algorithm
                )
            else:
                for destination in job.send_to:
                    conn.execute(
                        "INSERT INTO dispatches (study_uid, result_id, destination, state, "
                        "created_at) VALUES (?, ?, ?, 'pending', ?)",
                        (job.study_uid, result_id, destination, time.time()),
                    )
                if info.purpose is Purpose.CLINICAL:
                    queue_result(conn, job.study_uid, job.id, result_id)
                else:  # a phantom's result is the physicist's, not the worklist's
                    LOGGER.info(
                        "job %d (%s): quality-control result %s, no worklist flag",
                        job.id,
                        job.algorithm,
                        result.verdict.value,
                    )
        return WrittenResult(result_id, paths["sr"], tuple(paths))

    def _next_version(self, study_uid: str, algorithm: str) -> ResultVersion:
        previous = self.db.query_one(
            "SELECT id, version_number FROM results WHERE study_uid = ? AND algorithm = ? "
            "ORDER BY version_number DESC LIMIT 1",
            (study_uid, algorithm),
        )
        if previous is None:
            return ResultVersion(number=1)
        written = [
            InstanceReference(
                study_uid, r["series_instance_uid"], r["sop_class_uid"], r["sop_instance_uid"]
            )
            for r in self.db.query(
                "SELECT * FROM result_objects WHERE result_id = ? ORDER BY id", (previous["id"],)
            )
        ]
        return successor_version(int(previous["version_number"]), written)

    def _record(
        self,
        conn: Connection,
        job: Job,
        info: AlgorithmInfo,
        result: AlgorithmResult,
        objects: ResultObjects,
        paths: Mapping[str, Path],
        shadow: bool,
        *,
        key_images: Sequence[KeyImage | None] = (),
        scanner: Mapping[str, str] | None = None,
        acquisition: Mapping[str, str | float | None] | None = None,
    ) -> int:
        report = objects.report
        summary = {
            "shadow": shadow,
            "outcome": result_to_json(result, key_images),
            "reason": result.reason,
            "probability": result.probability,
            "findings": [
                {
                    "tracking_id": f.tracking_id,
                    "probability": round(f.probability, 4),
                    "measurements": {m.name.meaning: round(m.value, 2) for m in f.measurements},
                    "qualifiers": {q.name.meaning: q.value.meaning for q in f.qualifiers},
                }
                for f in result.findings
            ],
            "measurements": {m.name.meaning: round(m.value, 3) for m in result.measurements},
            "scanner": dict(scanner or {}),
            "acquisition": dict(acquisition or {}),
        }
        cursor = conn.execute(
            "INSERT INTO results (job_id, study_uid, algorithm, algorithm_version, "
            "version_number, series_instance_uid, sop_instance_uid, sop_class_uid, path, "
            "verdict, finding_count, summary, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                job.id,
                job.study_uid,
                job.algorithm,
                info.version,
                objects.version.number,
                report.series_instance_uid,
                report.sop_instance_uid,
                report.sop_class_uid,
                str(paths["sr"]),
                result.verdict.value,
                len(result.findings),
                json.dumps(summary),
                time.time(),
            ),
        )
        result_id = int(cursor.fetchone()[0])
        for obj in objects.all():
            conn.execute(
                "INSERT INTO result_objects (result_id, kind, sop_class_uid, "
                "series_instance_uid, sop_instance_uid, series_number, path) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    result_id,
                    obj.kind.name.lower(),
                    obj.sop_class_uid,
                    obj.series_instance_uid,
                    obj.sop_instance_uid,
                    obj.series_number,
                    str(paths[obj.kind.name.lower()]),
                ),
            )
        return result_id

    def _sources_without_volume(self, series_uid: str) -> tuple[list[SourceImage], Dataset]:
        rows = source_instances(self.db, series_uid)
        sources = [SourceImage(r["sop_class_uid"], r["sop_instance_uid"], None) for r in rows]
        header = read_source_header(Path(rows[0]["path"]))  # tolerant, as the loader reads
        return sources, header


def source_instances(db: Database, series_uid: str) -> list[Row]:
    """A series' instances in the order a result written without a volume references them
    (a finding's ``slice_index`` is a position in it): instance number, then UID."""
    return db.query(
        "SELECT sop_class_uid, sop_instance_uid, path FROM instances WHERE series_uid = ? "
        "ORDER BY instance_number, sop_instance_uid",
        (series_uid,),
    )


def result_object_paths(
    db: Database, result_id: int, kind: str | None = None, *, kinds: Sequence[str] = ()
) -> list[Path]:
    """Files written for one result, in the order written: all of them, those of one ``kind``
    ("sr", "seg", "kos", "gsps", "sc"), or those of ``kinds``."""
    wanted = [kind] if kind is not None else list(kinds)
    rows = db.query(
        "SELECT kind, path FROM result_objects WHERE result_id = ? ORDER BY id", (result_id,)
    )
    return [Path(r["path"]) for r in rows if not wanted or r["kind"] in wanted]


SCANNER_KEYWORDS = {
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "station": "StationName",
    "serial": "DeviceSerialNumber",
}
"""The equipment that made the source images, kept with each result (per-scanner QA trends
and behaviour); equipment, not patient data."""


def scanner_of(header: Dataset) -> dict[str, str]:
    """The source's equipment identity, each value as text (absent: "")."""
    values = {}
    for name, keyword in SCANNER_KEYWORDS.items():
        try:
            value = header.get(keyword, "")
        except Exception:  # a malformed value: left out, never a failed result
            value = ""
        values[name] = str(value or "").strip()[:64]
    return values


ACQUISITION_KEYWORDS = {
    "kernel": "ConvolutionKernel",
    "kvp": "KVP",
    "slice_thickness_mm": "SliceThickness",
    "pixel_spacing_mm": "PixelSpacing",
}
"""How the source images were acquired and reconstructed, kept with each result for drift
monitoring (``router.drift``); equipment settings, not patient data."""

_FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
_MAX_TEXT = 64


def acquisition_of(header: Dataset) -> dict[str, str | float | None]:
    """The source's kernel (text, "" when absent), kVp, slice thickness and row pixel spacing
    (numbers in kV and mm, None when absent or not a positive finite number). Enhanced
    multi-frame images carry them in their functional groups (CT Acquisition Details,
    CT Reconstruction, Pixel Measures): looked up there when the top level lacks them. A
    malformed value is left out, never a failed result."""
    values: dict[str, str | float | None] = {}
    for name, keyword in ACQUISITION_KEYWORDS.items():
        value = _header_value(header, keyword)
        if name == "kernel":
            parts = list(value[:8]) if _is_multiple(value) else [value]
            text = "\\".join(str(p).strip() for p in parts if p is not None and str(p).strip())
            values[name] = text[:_MAX_TEXT]
        else:
            if _is_multiple(value):  # PixelSpacing: row spacing first
                value = value[0] if len(value) else None
            values[name] = _positive_number(value)
    return values


def _header_value(header: Dataset, keyword: str) -> object:
    """``keyword`` at the top level, else in the first item of a functional group's
    sequences (shared groups first, then the first frame's)."""
    try:
        value = header.get(keyword)
        if value is not None and value != "":
            return value
        for group_keyword in _FUNCTIONAL_GROUPS:
            groups = header.get(group_keyword)
            if not groups:
                continue
            for element in groups[0]:
                if element.VR != "SQ" or not element.value:
                    continue
                nested = element.value[0].get(keyword)
                if nested is not None and nested != "":
                    return nested
    except Exception:  # a malformed value: left out
        return None
    return None


def _is_multiple(value: object) -> TypeGuard[Sequence[object]]:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _positive_number(value: object) -> float | None:
    try:
        number = float(str(value).strip()) if value is not None else None
    except (TypeError, ValueError):
        return None
    if number is None or not math.isfinite(number) or number <= 0 or number > 1e6:
        return None
    return round(number, 4)
