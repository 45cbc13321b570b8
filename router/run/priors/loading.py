"""Load a chosen prior series as the plugin contract's ``PriorStudy``, with the findings of
radrouter's own earlier result on it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from algorithms.contract import PriorFinding, PriorStudy
from dicom_sr.read import read_measurement_report
from router.logs import log_safe
from router.run.priors.selection import FoundPrior
from router.run.series_loader import LoadedSeries, load_series
from router.store.database import Database

LOGGER = logging.getLogger(__name__)


def prior_findings(
    db: Database, study_uid: str, algorithm: str, loaded: LoadedSeries
) -> tuple[PriorFinding, ...]:
    """The findings of radrouter's latest result of ``algorithm`` on the prior study, with their
    centres in the prior's LPS coordinates (centroid of the SR region on its slice)."""
    row = db.query_one(
        "SELECT path FROM results WHERE study_uid = ? AND algorithm = ? "
        "ORDER BY version_number DESC LIMIT 1",
        (study_uid, algorithm),
    )
    if row is None:
        return ()
    try:
        report = read_measurement_report(pydicom.dcmread(row["path"]))
    except (OSError, InvalidDicomError, ValueError) as exc:
        LOGGER.warning(
            "prior result of study %s unreadable: %s", log_safe(study_uid), log_safe(exc, 300)
        )
        return ()
    slice_of = {
        s.sop_instance_uid: k for k, s in enumerate(loaded.slices) if s.frame_number in (None, 1)
    }
    for k, s in enumerate(loaded.slices):
        if s.frame_number is not None:
            slice_of.setdefault(f"{s.sop_instance_uid}#{s.frame_number}", k)
    affine = loaded.series.geometry.affine
    findings: list[PriorFinding] = []
    for f in report.findings:
        key = f.referenced_sop_instance_uid
        if f.referenced_frame_number is not None:
            key = f"{key}#{f.referenced_frame_number}"
        index = slice_of.get(key, slice_of.get(f.referenced_sop_instance_uid))
        if index is None or not f.points:
            continue
        points = np.array(f.points[:-1] if len(f.points) > 1 else f.points, dtype=np.float64)
        col, row_ = points.mean(axis=0)
        lps = affine @ np.array([index, row_, col, 1.0])
        findings.append(
            PriorFinding(
                tracking_id=f.tracking_id,
                tracking_uid=f.tracking_uid,
                finding_type=f.finding_type,
                centre_lps=(float(lps[0]), float(lps[1]), float(lps[2])),
                volume_mm3=f.volume_mm3,
            )
        )
    return tuple(findings)


def load_prior_study(
    db: Database, found: FoundPrior, algorithm: str, header_keywords: Sequence[str] | None = None
) -> PriorStudy:
    """The found prior as the plugin contract's ``PriorStudy``; raises VolumeError when the
    series cannot be a volume."""
    loaded = (
        load_series(list(found.paths))
        if header_keywords is None
        else load_series(list(found.paths), header_keywords=header_keywords)
    )
    return PriorStudy(
        study_instance_uid=found.study_instance_uid,
        series=loaded.series,
        study_date=found.study_date,
        findings=prior_findings(db, found.study_instance_uid, algorithm, loaded),
    )
