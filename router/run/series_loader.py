"""Load one received series of Part-10 files as the algorithm contract's ``SeriesInput`` volume."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import DA, DT, TM

from algorithms.contract import SeriesInput, VolumeGeometry

__all__ = [
    "DEFAULT_HEADER_KEYWORDS",
    "IDENTIFYING_KEYWORDS",
    "LoadedSeries",
    "SliceSource",
    "VolumeError",
    "load_series",
    "read_source_header",
]

_LOG = logging.getLogger(__name__)

DEFAULT_HEADER_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "SeriesNumber",
    "ImageType",
    "SliceThickness",
    "KVP",
    "ConvolutionKernel",
    "ContrastBolusAgent",
    "Manufacturer",
    "ManufacturerModelName",
    "PhotometricInterpretation",
    "PatientAge",
    # MR sequence facts (which contrast a series is: FLAIR, T1, T2, ...).
    "ProtocolName",
    "SequenceName",
    "ScanningSequence",
    "InversionTime",
    "MRAcquisitionType",
)
"""Header values copied into ``SeriesInput.header``: acquisition facts, never identities."""

IDENTIFYING_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientMotherBirthName",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "IssuerOfPatientID",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientComments",
        "MedicalRecordLocator",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "RequestingPhysician",
        "OperatorsName",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "DeviceSerialNumber",
    }
)
"""Keywords ``load_series`` refuses to copy into a plugin's header (patient or staff identity)."""

ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines of slices that count as one orientation."""
PIXEL_SPACING_TOLERANCE_MM = 1e-3
"""Largest difference in PixelSpacing between slices of one volume."""
DUPLICATE_POSITION_TOLERANCE_MM = 1e-2
"""Slices closer than this along the normal are at the same position."""
SLICE_POSITION_TOLERANCE_MM = 0.1
"""Largest distance of a slice from the uniform grid (covers positions rounded to 0.1 mm)."""
SLICE_POSITION_TOLERANCE_FRACTION = 0.05
"""... or this fraction of the slice step, if larger."""
GAP_FACTOR = 1.5
"""A step this many times the median step means slices are missing."""

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = frozenset(int(tag_for_keyword(keyword) or 0) for keyword in _PIXEL_KEYWORDS)
_NATIVE_SYNTAXES = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
_PHOTOMETRIC_INTERPRETATIONS = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
        "XYB",
    }
)
"""Values a message may name (PS3.3 C.7.6.3.1.2); any other is header text, not named."""
_PATIENT_SEX = frozenset({"M", "F", "O"})
_AGE = re.compile(r"[0-9]{3}[DWMY]")
_DATE_TIME_VRS = {"DA": DA, "DT": DT, "TM": TM}
# Pixel data (and other large values) are read only when decoded, one file at a time.
_DEFER_SIZE = "64 KB"


class VolumeError(Exception):
    """The series cannot be a volume; the message says exactly why and carries no PHI."""


@dataclass(frozen=True)
class SliceSource:
    """Which instance (and frame, for multi-frame instances) one slice of the volume came from.

    ``frame_number`` is the 1-based DICOM frame number for instances with Number of Frames,
    ``None`` for single-frame instances.
    """

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None


@dataclass(frozen=True)
class LoadedSeries:
    """A series as a volume plus what the output writers need to reference its sources.

    ``slices[k]`` is the source of ``series.array[k]``. ``first_header`` is the header of the
    instance holding slice 0, without pixel data, for patient and study attributes.
    """

    series: SeriesInput
    slices: tuple[SliceSource, ...]
    first_header: Dataset
    headers: tuple[Dataset, ...] = ()
    """Every source instance's header, pixel data dropped (the SEG writer references them)."""


@dataclass(frozen=True)
class _Frame:
    """One 2-D image: a single-frame instance or one frame of a multi-frame instance."""

    file: int
    frame: int | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    slice_spacing: float | None
    slope: float
    intercept: float


def load_series(
    paths: Sequence[Path], *, header_keywords: Sequence[str] = DEFAULT_HEADER_KEYWORDS
) -> LoadedSeries:
    """Read, check, sort and stack one series into a float32 volume of modality values.

    Slices are sorted by position along the slice normal (row cosine x column cosine), so slice
    index ``k`` increases along the normal (for axial images: towards the head). The affine
    maps (k, i, j): ``j`` (column index) moves along the row direction cosine by
    PixelSpacing[1], ``i`` (row index) along the column direction cosine by PixelSpacing[0], and
    ``k`` by the mean slice step vector (which is oblique for gantry-tilted CT).

    Rules: every file must be a Part-10 image of the same series with pixel data, one
    orientation, one matrix size, one pixel spacing and one frame of reference; localizers
    (ImageType containing LOCALIZER) are left out; an instance received twice (same SOP
    Instance UID) is used once; two different images at one position, or slice steps that are
    not uniform (missing slices), are refused. Enhanced multi-frame instances contribute one
    slice per frame from their Plane Position / Plane Orientation / Pixel Measures / Pixel Value
    Transformation functional groups. Colour images cannot be volumes.

    A series of exactly one image with no patient geometry (CR, DX, secondary capture) becomes
    a 1-slice volume with rows along +x, columns along +y, origin 0, in-plane spacing from
    PixelSpacing or else ImagerPixelSpacing (at the detector) or else 1 mm, slice step
    SliceThickness or else 1 mm, and frame of reference "" unless present. A single image with
    geometry uses it, with slice step SpacingBetweenSlices or SliceThickness or 1 mm.

    Modality LUT (Rescale Slope/Intercept, or a Modality LUT Sequence) is applied, so CT is in
    HU; VOI LUT and MONOCHROME1 inversion are not (values are modality values).
    """
    keywords = _check_header_keywords(header_keywords)
    if not paths:
        raise VolumeError("no files were given")
    total = len(paths)
    datasets: list[Dataset] = []
    file_numbers: list[int] = []  # 1-based position in ``paths`` of each kept dataset
    seen_instances: set[str] = set()
    series_uids: set[str] = set()
    localizers = 0
    for index, path in enumerate(paths):
        ds = _read(path, index, total)
        sop_uid = str(ds.get("SOPInstanceUID", ""))
        if sop_uid and sop_uid in seen_instances:
            _LOG.debug(
                "file %d of %d repeats an instance already read; used once", index + 1, total
            )
            continue
        seen_instances.add(sop_uid)
        if _is_localizer(ds):
            localizers += 1
            continue
        if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
            raise VolumeError(
                f"file {index + 1} of {total} ({_sop_class_name(ds)}) has no pixel data"
            )
        series_uids.add(str(ds.get("SeriesInstanceUID", "")))
        datasets.append(ds)
        file_numbers.append(index + 1)
    if localizers:
        _LOG.debug("left out %d localizer image(s)", localizers)
    if not datasets:
        raise VolumeError(f"the series holds only localizer images ({localizers}), no volume")
    if len(series_uids) > 1:
        raise VolumeError(f"the files belong to {len(series_uids)} different series")
    series_uid = series_uids.pop()
    if not series_uid:
        raise VolumeError("the images have no SeriesInstanceUID")

    rows, columns = _matrix_size(datasets)
    frames = [frame for index, ds in enumerate(datasets) for frame in _frames(ds, index)]
    for_uid = _frame_of_reference(datasets)
    if len(frames) == 1 and (frames[0].position is None or frames[0].orientation is None):
        order = frames
        affine = _projection_affine(datasets[0], frames[0])
    else:
        order, affine = _sort_and_place(frames)

    array = _stack_pixels(datasets, order, rows, columns, file_numbers, total)
    for ds in datasets:
        for keyword in _PIXEL_KEYWORDS:  # the array holds them now
            if keyword in ds:
                delattr(ds, keyword)
    first = datasets[order[0].file]
    slices = tuple(
        SliceSource(
            sop_class_uid=str(datasets[frame.file].get("SOPClassUID", "")),
            sop_instance_uid=str(datasets[frame.file].get("SOPInstanceUID", "")),
            frame_number=None if frame.frame is None else frame.frame + 1,
        )
        for frame in order
    )
    geometry = VolumeGeometry(
        affine=affine,
        shape=(len(order), rows, columns),
        frame_of_reference_uid=for_uid,
    )
    series = SeriesInput(
        series_instance_uid=series_uid,
        array=array,
        geometry=geometry,
        header=_header_values(first, keywords),
    )
    return LoadedSeries(series=series, slices=slices, first_header=first, headers=tuple(datasets))


def read_source_header(path: Path) -> Dataset:
    """One source instance's header without its pixel data, read as :func:`load_series` reads
    (tolerantly), for result objects written without a volume ("not assessed")."""
    ds = _read(path, 0, 1)
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            del ds[keyword]
    return ds


def _check_header_keywords(header_keywords: Sequence[str]) -> tuple[str, ...]:
    keywords = tuple(header_keywords)
    identifying = sorted(set(keywords) & IDENTIFYING_KEYWORDS)
    if identifying:
        raise ValueError(f"header_keywords must not name identifying attributes: {identifying}")
    unknown = sorted(keyword for keyword in keywords if tag_for_keyword(keyword) is None)
    if unknown:
        raise ValueError(f"header_keywords are not DICOM keywords: {unknown}")
    return keywords


def _read(path: Path, index: int, total: int) -> Dataset:
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
        dropped, emptied = _read_tolerantly(ds)
    except InvalidDicomError as exc:
        raise VolumeError(f"file {index + 1} of {total} is not a DICOM Part-10 file") from exc
    except OSError as exc:
        raise VolumeError(
            f"file {index + 1} of {total} could not be read ({type(exc).__name__})"
        ) from exc
    except Exception as exc:  # pydicom raises many types on malformed data
        raise VolumeError(
            f"file {index + 1} of {total} could not be parsed ({type(exc).__name__})"
        ) from exc
    if dropped or emptied:
        _LOG.info(
            "file %d of %d: %d value(s) that cannot be decoded left out, %d non-conformant "
            "date, time, age or sex value(s) emptied",
            index + 1,
            total,
            dropped,
            emptied,
        )
    return ds


def _read_tolerantly(ds: Dataset, depth: int = 0) -> tuple[int, int]:
    """Decode every value but the pixel data now (the file may be gone later), tolerantly.

    A value that cannot be decoded at all (an unknown VR, a broken encoding) is dropped; a
    date, time or age that does not follow its VR (``02.01.1960``) and a Patient's Sex outside
    M/F/O are emptied: the result objects copy the patient and study from this header, and a
    non-conformant value there must cost that value, not the job. Returns (dropped, emptied).
    """
    dropped = emptied = 0
    for tag in list(ds.keys()):
        if tag in _PIXEL_TAGS:
            continue
        try:
            element = ds[tag]
            value = element.value
        except Exception:  # pydicom raises many types on malformed values
            del ds[tag]
            dropped += 1
            continue
        if element.VR == "SQ":
            for item in value or ():
                sub_dropped, sub_emptied = _read_tolerantly(item, depth + 1)
                dropped += sub_dropped
                emptied += sub_emptied
        elif not _conforms(element.VR, element.keyword, value):
            element.value = None
            emptied += 1
    return dropped, emptied


def _conforms(vr: str, keyword: str, value: object) -> bool:
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    texts = [str(v).strip() for v in values if v is not None and str(v).strip()]
    convert = _DATE_TIME_VRS.get(vr)
    for text in texts:
        if convert is not None:
            try:
                convert(text)
            except (TypeError, ValueError, OverflowError):
                return False
        elif (vr == "AS" and not _AGE.fullmatch(text)) or (
            keyword == "PatientSex" and text not in _PATIENT_SEX
        ):
            return False
    return True


def _photometric_name(photometric: str) -> str:
    if not photometric:
        return "no photometric interpretation"
    if photometric in _PHOTOMETRIC_INTERPRETATIONS:
        return photometric
    return "an unknown photometric interpretation"


def _sop_class_name(ds: Dataset) -> str:
    uid = str(ds.get("SOPClassUID", "") or "")
    if not uid:
        return "no SOP Class UID"
    name = UID(uid).name
    return name if name != uid else "an unknown SOP class"  # never echo header text


def _is_localizer(ds: Dataset) -> bool:
    image_type = ds.get("ImageType")
    if image_type is None:
        return False
    values = image_type if isinstance(image_type, MultiValue | list) else [image_type]
    return any(str(value).strip().upper() == "LOCALIZER" for value in values)


def _matrix_size(datasets: Sequence[Dataset]) -> tuple[int, int]:
    sizes: set[tuple[int, int]] = set()
    for ds in datasets:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip()
        if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise VolumeError(
                f"colour images ({_photometric_name(photometric)}, "
                f"{samples} samples per pixel) cannot be a volume"
            )
        rows = ds.get("Rows")
        columns = ds.get("Columns")
        if not rows or not columns:
            raise VolumeError("an image has no Rows or Columns")
        sizes.add((int(rows), int(columns)))
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sorted(sizes))
        raise VolumeError(f"the images have different matrix sizes (rows x columns: {listed})")
    return sizes.pop()


def _frame_of_reference(datasets: Sequence[Dataset]) -> str:
    uids = {str(ds.get("FrameOfReferenceUID", "") or "") for ds in datasets}
    if len(uids) > 1:
        raise VolumeError(
            f"the images are in {len(uids)} different frames of reference (FrameOfReferenceUID)"
        )
    return uids.pop()


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    """``count`` finite numbers from a multi-valued element value, else None."""
    if not isinstance(value, Iterable) or isinstance(value, str | bytes):
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(values) != count or not all(np.isfinite(values)):
        return None
    return values


def _float_or_none(value: Any) -> float | None:
    """A finite number from a single-valued element value, else None."""
    if value is None or value == "":
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if np.isfinite(result) else None


def _group_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of functional group ``sequence`` for ``frame``: per-frame, else shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        found = per_frame[frame].get(sequence)
        if found:
            item: Dataset = found[0]
            return item
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        found = shared[0].get(sequence)
        if found:
            item = found[0]
            return item
    return None


def _geometry_of(source: Dataset | None) -> tuple[tuple[float, ...] | None, float | None]:
    """(PixelSpacing, slice step from SpacingBetweenSlices or SliceThickness) of a dataset."""
    if source is None:
        return None, None
    spacing = _floats(source.get("PixelSpacing"), 2)
    between = _float_or_none(source.get("SpacingBetweenSlices"))
    thickness = _float_or_none(source.get("SliceThickness"))
    step = abs(between) if between else thickness
    return spacing, step


def _rescale_of(source: Dataset | None) -> tuple[float, float] | None:
    if source is None or ("RescaleSlope" not in source and "RescaleIntercept" not in source):
        return None
    slope = _float_or_none(source.get("RescaleSlope"))
    intercept = _float_or_none(source.get("RescaleIntercept"))
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _frames(ds: Dataset, index: int) -> list[_Frame]:
    """The 2-D images in one instance, with their geometry and modality rescale."""
    number_of_frames = int(ds.get("NumberOfFrames", 1) or 1)
    top_rescale = _rescale_of(ds) or (1.0, 0.0)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if number_of_frames > 1:
            raise VolumeError(
                f"a multi-frame {_sop_class_name(ds)} instance has {number_of_frames} frames but "
                "no per-frame plane positions (Per-frame Functional Groups), so its frames "
                "cannot be placed in space"
            )
        position = _floats(ds.get("ImagePositionPatient"), 3)
        orientation = _floats(ds.get("ImageOrientationPatient"), 6)
        pixel_spacing, step = _geometry_of(ds)
        return [
            _Frame(
                file=index,
                frame=0 if "NumberOfFrames" in ds else None,
                position=position,
                orientation=orientation,
                pixel_spacing=pixel_spacing,
                slice_spacing=step,
                slope=top_rescale[0],
                intercept=top_rescale[1],
            )
        ]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != number_of_frames:
        raise VolumeError(
            f"a multi-frame instance has {number_of_frames} frames but "
            f"{len(per_frame)} per-frame functional group items"
        )
    frames: list[_Frame] = []
    for frame in range(number_of_frames):
        plane = _group_item(ds, frame, "PlanePositionSequence")
        orient = _group_item(ds, frame, "PlaneOrientationSequence")
        pixel_spacing, step = _geometry_of(_group_item(ds, frame, "PixelMeasuresSequence"))
        rescale = _rescale_of(_group_item(ds, frame, "PixelValueTransformationSequence"))
        slope, intercept = rescale or top_rescale
        frames.append(
            _Frame(
                file=index,
                frame=frame,
                position=None if plane is None else _floats(plane.get("ImagePositionPatient"), 3),
                orientation=None
                if orient is None
                else _floats(orient.get("ImageOrientationPatient"), 6),
                pixel_spacing=pixel_spacing,
                slice_spacing=step,
                slope=slope,
                intercept=intercept,
            )
        )
    return frames


def _directions(
    orientation: tuple[float, ...],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    row = np.array(orientation[:3], dtype=np.float64)
    col = np.array(orientation[3:], dtype=np.float64)
    row_norm = float(np.linalg.norm(row))
    col_norm = float(np.linalg.norm(col))
    if row_norm < 0.5 or col_norm < 0.5:
        raise VolumeError("ImageOrientationPatient has a zero direction cosine")
    row /= row_norm
    col /= col_norm
    normal = np.cross(row, col)
    normal_norm = float(np.linalg.norm(normal))
    if normal_norm < 0.5:
        raise VolumeError("ImageOrientationPatient row and column cosines are not orthogonal")
    return row, col, normal / normal_norm


def _affine(
    origin: npt.NDArray[np.float64],
    step: npt.NDArray[np.float64],
    row: npt.NDArray[np.float64],
    col: npt.NDArray[np.float64],
    pixel_spacing: tuple[float, ...],
) -> npt.NDArray[np.float64]:
    affine = np.eye(4, dtype=np.float64)
    affine[:3, 0] = step
    affine[:3, 1] = col * pixel_spacing[0]
    affine[:3, 2] = row * pixel_spacing[1]
    affine[:3, 3] = origin
    return affine


def _projection_affine(ds: Dataset, frame: _Frame) -> npt.NDArray[np.float64]:
    """Affine for one image without patient geometry (see ``load_series``)."""
    spacing = (
        frame.pixel_spacing
        or _floats(ds.get("ImagerPixelSpacing"), 2)
        or _floats(ds.get("NominalScannedPixelSpacing"), 2)
        or (1.0, 1.0)
    )
    if min(spacing) <= 0:
        spacing = (1.0, 1.0)
    thickness = _float_or_none(ds.get("SliceThickness"))
    orientation = frame.orientation or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    row, col, normal = _directions(orientation)
    origin = np.array(frame.position or (0.0, 0.0, 0.0), dtype=np.float64)
    step = normal * (thickness if thickness and thickness > 0 else 1.0)
    return _affine(origin, step, row, col, spacing)


def _count_missing(frames: Sequence[_Frame], what: str) -> int:
    return sum(1 for frame in frames if getattr(frame, what) is None)


def _sort_and_place(frames: list[_Frame]) -> tuple[list[_Frame], npt.NDArray[np.float64]]:
    """Check the frames form one regular stack; return them sorted, and the affine."""
    total = len(frames)
    for attribute, keyword in (
        ("position", "ImagePositionPatient"),
        ("orientation", "ImageOrientationPatient"),
        ("pixel_spacing", "PixelSpacing"),
    ):
        missing = _count_missing(frames, attribute)
        if missing:
            raise VolumeError(
                f"{missing} of {total} images have no {keyword}, so they cannot be stacked "
                "into a volume"
            )
    orientations = np.array([frame.orientation for frame in frames], dtype=np.float64)
    deviation = np.abs(orientations - orientations[0]).max(axis=1)
    if float(deviation.max()) > ORIENTATION_TOLERANCE:
        distinct = len({tuple(np.round(o, 2)) for o in orientations})
        raise VolumeError(
            f"the images have {max(distinct, 2)} different orientations "
            f"(ImageOrientationPatient differs by up to {float(deviation.max()):.3f}); "
            "the series mixes imaging planes"
        )
    spacings = np.array([frame.pixel_spacing for frame in frames], dtype=np.float64)
    if float(spacings.min()) <= 0:
        raise VolumeError("PixelSpacing must be positive")
    if float(np.abs(spacings - spacings[0]).max()) > PIXEL_SPACING_TOLERANCE_MM:
        raise VolumeError(
            "the images have different PixelSpacing "
            f"({spacings.min():.4f} to {spacings.max():.4f} mm)"
        )
    orientation = frames[0].orientation
    pixel_spacing = frames[0].pixel_spacing
    if orientation is None or pixel_spacing is None:  # excluded above; narrows the types
        raise VolumeError("an image has no ImageOrientationPatient or PixelSpacing")
    row, col, normal = _directions(orientation)
    positions = np.array([frame.position for frame in frames], dtype=np.float64)
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    distances = distances[order]
    positions = positions[order]
    sorted_frames = [frames[i] for i in order]

    if total == 1:
        step_mm = sorted_frames[0].slice_spacing
        step = normal * (step_mm if step_mm and step_mm > 0 else 1.0)
        return sorted_frames, _affine(positions[0], step, row, col, pixel_spacing)

    steps = np.diff(distances)
    duplicates = int(np.count_nonzero(steps < DUPLICATE_POSITION_TOLERANCE_MM))
    if duplicates:
        raise VolumeError(
            f"{duplicates} image(s) share a slice position with another image "
            f"({total - duplicates} distinct positions for {total} images); the series holds "
            "more than one acquisition, phase or echo"
        )
    median_step = float(np.median(steps))
    gaps = steps > GAP_FACTOR * median_step
    if np.any(gaps):
        missing = int(np.round(steps[gaps] / median_step).sum() - np.count_nonzero(gaps))
        raise VolumeError(
            f"slice spacing is not uniform: steps range from {float(steps.min()):.3f} to "
            f"{float(steps.max()):.3f} mm around {median_step:.3f} mm; about "
            f"{max(missing, 1)} slice(s) appear to be missing"
        )
    step = (positions[-1] - positions[0]) / (total - 1)
    grid = positions[0] + np.arange(total)[:, None] * step
    off_grid = float(np.linalg.norm(positions - grid, axis=1).max())
    tolerance = max(
        SLICE_POSITION_TOLERANCE_MM, SLICE_POSITION_TOLERANCE_FRACTION * float(np.linalg.norm(step))
    )
    if off_grid > tolerance:
        raise VolumeError(
            f"slice positions are not on a regular grid: one lies {off_grid:.3f} mm from it "
            f"(tolerance {tolerance:.3f} mm; steps {float(steps.min()):.3f} to "
            f"{float(steps.max()):.3f} mm)"
        )
    return sorted_frames, _affine(positions[0], step, row, col, pixel_spacing)


def _native_pixels(
    ds: Dataset, frames: int, rows: int, columns: int
) -> npt.NDArray[np.generic] | None:
    """Uncompressed integer pixels straight from the buffer, or None to let pydicom decode."""
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    if transfer_syntax not in _NATIVE_SYNTAXES or "PixelData" not in ds:
        return None
    bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
    bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
    if bits_allocated not in (8, 16, 32) or not 0 < bits_stored <= bits_allocated:
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")
    buffer = ds.PixelData
    count = frames * rows * columns
    if not isinstance(buffer, bytes) or len(buffer) < count * dtype.itemsize:
        return None
    array = np.frombuffer(buffer, dtype=dtype, count=count).reshape(frames, rows, columns)
    if bits_stored < bits_allocated:
        shift = bits_allocated - bits_stored
        array = np.right_shift(np.left_shift(array, shift), shift)
    return array


def _decode(ds: Dataset, number: int, total: int, rows: int, columns: int) -> npt.NDArray[Any]:
    """All frames of one instance as (frames, rows, columns) stored values."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        native = _native_pixels(ds, frames, rows, columns)
    except OSError as exc:  # pixel data is read late (deferred); the file may have gone
        raise VolumeError(
            f"pixel data of file {number} of {total} could not be read ({type(exc).__name__})"
        ) from exc
    if native is not None:
        return native
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
        name = UID(syntax).name if syntax else "no transfer syntax"
        if name == syntax:
            name = "an unknown transfer syntax"
        # The decoder's own message is not repeated: it may quote header values.
        raise VolumeError(
            f"pixel data of file {number} of {total} could not be decoded ({name}; "
            f"{type(exc).__name__})"
        ) from exc
    return np.asarray(pixels).reshape(frames, rows, columns)


def _stack_pixels(
    datasets: Sequence[Dataset],
    order: Sequence[_Frame],
    rows: int,
    columns: int,
    file_numbers: Sequence[int],
    total: int,
) -> npt.NDArray[np.float32]:
    """Decode each file once into a preallocated float32 volume, applying the modality LUT.

    ``file_numbers[i]`` is the 1-based position of ``datasets[i]`` among the ``total`` paths.
    """
    array = np.empty((len(order), rows, columns), dtype=np.float32)
    slots: dict[int, list[tuple[int, _Frame]]] = {}
    for slot, frame in enumerate(order):
        slots.setdefault(frame.file, []).append((slot, frame))
    for file, targets in slots.items():
        ds = datasets[file]
        pixels = _decode(ds, file_numbers[file], total, rows, columns)
        lut = "ModalityLUTSequence" in ds
        for slot, frame in targets:
            plane = pixels[frame.frame or 0]
            out = array[slot]
            if lut:
                out[...] = apply_modality_lut(plane, ds)
                continue
            if frame.slope == 1.0:
                np.copyto(out, plane, casting="unsafe")
            else:
                np.multiply(plane, np.float32(frame.slope), out=out, casting="unsafe")
            if frame.intercept != 0.0:
                out += np.float32(frame.intercept)
        for keyword in _PIXEL_KEYWORDS:
            if keyword in ds:
                del ds[keyword]
    return array


def _header_value(value: object) -> str | None:
    if value is None or isinstance(value, bytes | Dataset):
        return None
    if isinstance(value, pydicom.Sequence):
        return None
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip()
    return text or None


def _header_values(ds: Dataset, keywords: Sequence[str]) -> Mapping[str, str]:
    """Keyword -> string for each keyword present and non-empty, looking in the top level and
    then, for enhanced multi-frame, one level into the shared functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups: list[Dataset] = []
    if shared:
        groups.append(shared[0])
    if per_frame:
        groups.append(per_frame[0])
    header: dict[str, str] = {}
    for keyword in keywords:
        text = _header_value(ds.get(keyword))
        if text is None:
            for group in groups:
                for element in group:
                    if element.VR != "SQ" or not element.value:
                        continue
                    text = _header_value(element.value[0].get(keyword))
                    if text is not None:
                        break
                if text is not None:
                    break
        if text is not None:
            header[keyword] = text
    return header
