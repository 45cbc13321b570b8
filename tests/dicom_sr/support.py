"""Types and helpers shared by the dicom_sr tests and their fixtures."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Protocol

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom

from algorithms.contract import AlgorithmInfo, AlgorithmResult, ImageRegion, VolumeGeometry
from dicom_sr.context import InstanceReference
from dicom_sr.result_objects import ResultObjects
from dicom_sr.tid1500 import ResultVersion, SourceImage, StudyContext
from testing.dicom_tools import run_dciodvfy

# dciodvfy warnings accepted on every object radrouter writes, and why:
ACCEPTED_DCIODVFY_WARNINGS = frozenset(
    {
        # IHE AIR asks for the algorithm's Device UID in its Contributing Equipment item; the
        # DICOM Contributing Equipment Sequence does not list Device UID, so dciodvfy flags it
        # as a standard attribute outside the IOD ...
        "Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
        # ... which makes the object a Standard Extended SOP Class (PS3.4 B.1.3), allowed.
        "Dicom dataset contains attributes not present in standard DICOM IOD - "
        "this is a Standard Extended SOP Class",
    }
)

# ... and on a KOS of a version after the first: the KOS IOD has no Predecessor Documents
# Sequence, which radrouter adds as a Standard Extended attribute (see docs/results.md).
KOS_PREDECESSOR_DCIODVFY_WARNINGS = frozenset(
    f"Attribute is not present in standard DICOM IOD - {attribute}"
    for attribute in (
        "(0x0040,0xa360) SQ Predecessor Documents Sequence",
        "(0x0020,0x000d) UI Study Instance UID",
        "(0x0008,0x1115) SQ Referenced Series Sequence",
        "(0x0020,0x000e) UI Series Instance UID",
        "(0x0008,0x1199) SQ Referenced SOP Sequence",
        "(0x0008,0x1150) UI Referenced SOP Class UID",
        "(0x0008,0x1155) UI Referenced SOP Instance UID",
    )
)


def write_object(ds: pydicom.Dataset, folder: Path) -> Path:
    """``ds`` as a Part-10 file named after its SOP Instance UID in ``folder``."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def assert_valid_dicom(path: Path, accepted_warnings: Collection[str] = ()) -> None:
    """dciodvfy finds no error in ``path`` and no warning beyond the accepted ones."""
    report = run_dciodvfy(path)
    assert report.errors == [], report.output
    accepted = ACCEPTED_DCIODVFY_WARNINGS | frozenset(accepted_warnings)
    assert set(report.warnings) <= accepted, report.output


def box_mask(
    shape: tuple[int, int, int], slices: range, rows: range, columns: range
) -> npt.NDArray[np.bool_]:
    """A mask of ``shape`` that is True on the box ``slices`` x ``rows`` x ``columns``."""
    mask = np.zeros(shape, dtype=bool)
    mask[slices.start : slices.stop, rows.start : rows.stop, columns.start : columns.stop] = True
    return mask


def geometry_of(slices: Sequence[pydicom.Dataset]) -> VolumeGeometry:
    """The volume geometry of axial single-frame slices ordered by increasing z."""
    first, second = slices[0], slices[min(1, len(slices) - 1)]
    origin = np.array([float(v) for v in first.ImagePositionPatient])
    step = np.array([float(v) for v in second.ImagePositionPatient]) - origin
    if not step.any():
        step = np.array([0.0, 0.0, float(first.SliceThickness)])
    row_mm, column_mm = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = (0.0, row_mm, 0.0)
    affine[:3, 2] = (column_mm, 0.0, 0.0)
    affine[:3, 3] = origin
    shape = (len(slices), int(first.Rows), int(first.Columns))
    return VolumeGeometry(affine, shape, str(first.FrameOfReferenceUID))


WriteReport = Callable[[hd.sr.Comprehensive3DSR], Path]


class BuildReport(Protocol):
    """Builds the SR of a result as the router will; keyword arguments replace the defaults."""

    def __call__(
        self,
        result: AlgorithmResult,
        *,
        info: AlgorithmInfo | None = None,
        version: ResultVersion | None = None,
        study: StudyContext | None = None,
        source_images: Sequence[SourceImage] | None = None,
    ) -> hd.sr.Comprehensive3DSR: ...


class BuildObjects(Protocol):
    """Builds every result object as the router will; keyword arguments replace defaults."""

    def __call__(
        self,
        result: AlgorithmResult,
        *,
        version: ResultVersion | None = None,
        tracking_uids: dict[str, str] | None = None,
        prior_evidence: Sequence[InstanceReference] = (),
    ) -> ResultObjects: ...


def square_region(slice_index: int, column: float, row: float, half: float) -> ImageRegion:
    """A closed square polyline centred on (column, row)."""
    return ImageRegion(
        slice_index=slice_index,
        points=(
            (column - half, row - half),
            (column + half, row - half),
            (column + half, row + half),
            (column - half, row + half),
            (column - half, row - half),
        ),
    )
