"""Write a Hounsfield-unit volume as a valid, obviously synthetic DICOM CT Image Storage series."""

from __future__ import annotations

import copy
import datetime
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

__all__ = [
    "MANUFACTURER",
    "PatientStudy",
    "ct_series_datasets",
    "new_patient_study",
    "radiograph_dataset",
    "write_ct_series",
    "write_radiograph",
]

MANUFACTURER = "radrouter synthetic"
"""Manufacturer (0008,0070) of every synthetic instance, so nobody mistakes one for a patient's."""

_MODEL_NAME = "radrouter synthetic CT"
_SOFTWARE_VERSION = "radrouter 0.1"
_IMPLEMENTATION_VERSION_NAME = "RADROUTER_01"
_UID_NAMESPACE = "radrouter-synthetic"
_AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Lung and mediastinal windows; the first pair is the default presentation.
_WINDOW_CENTERS = ("-600", "40")
_WINDOW_WIDTHS = ("1500", "400")
_WINDOW_EXPLANATIONS = ("LUNG", "MEDIASTINUM")
_INTERCEPT = -1024


def _today() -> str:
    return datetime.date.today().strftime("%Y%m%d")


def _now() -> str:
    return datetime.datetime.now().strftime("%H%M%S")


@dataclass(frozen=True)
class PatientStudy:
    """Patient and study attributes shared by every series written for one synthetic study."""

    patient_id: str
    patient_name: str
    study_instance_uid: str
    accession_number: str
    study_description: str = "CT CHEST"
    patient_birth_date: str = "19600101"
    patient_sex: str = "O"
    study_date: str = field(default_factory=_today)
    study_time: str = field(default_factory=_now)
    study_id: str = "1"


def new_patient_study(seed: int | None = None) -> PatientStudy:
    """A new synthetic patient and study; the same ``seed`` gives the same identifiers and UID.

    Names are plainly synthetic (``SYNTHETIC^CHEST^0007``) and UIDs use the ``2.25`` root, so no
    organisational UID root is needed.
    """
    rng = random.Random(seed)
    number = rng.randrange(10_000)
    study_uid: str
    if seed is None:
        study_uid = generate_uid(prefix=None)
    else:  # a name-based (version 5) UUID under 2.25, as ISO/IEC 9834-8 allows
        study_uid = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{_UID_NAMESPACE}/study/{seed}').int}"
    return PatientStudy(
        patient_id=f"SYN{number:06d}",
        patient_name=f"SYNTHETIC^CHEST^{number:04d}",
        study_instance_uid=study_uid,
        accession_number=f"SYNACC{rng.randrange(10**8):08d}",
    )


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters that round-trips ``value`` closely."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{value:.10g}"
    return text


def _stored_encoding(hu: npt.NDArray[np.int16]) -> tuple[int, int]:
    """(PixelRepresentation, RescaleIntercept) that store ``hu`` exactly with slope 1.

    Unsigned stored values with intercept -1024 when nothing is below -1024 HU (the usual CT
    encoding); otherwise signed stored values, still with intercept -1024 when the maximum
    allows it, else intercept 0.
    """
    if hu.size == 0:
        return 0, _INTERCEPT
    low = int(hu.min())
    high = int(hu.max())
    if low >= _INTERCEPT:
        return 0, _INTERCEPT
    if high - _INTERCEPT <= np.iinfo(np.int16).max and low - _INTERCEPT >= np.iinfo(np.int16).min:
        return 1, _INTERCEPT
    return 1, 0


def ct_series_datasets(
    hu: npt.NDArray[np.int16],
    spacing_mm: tuple[float, float, float],
    study: PatientStudy,
    *,
    series_number: int = 1,
    series_description: str = "CT CHEST SYNTHETIC",
    body_part: str = "CHEST",
    slice_thickness_mm: float | None = None,
    origin_lps: tuple[float, float, float] | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> Iterator[Dataset]:
    """One axial CT Image Storage dataset per slice of ``hu`` (slices, rows, columns).

    ``spacing_mm`` is (slice, row, column) spacing, as in ``VolumeGeometry.spacing_mm``.
    Geometry is head-first supine axial: rows run along +x (patient left), columns along +y
    (posterior), and slice ``k`` lies at ``origin + k * spacing_mm[0]`` along +z (superior), so
    index 0 is the most inferior slice, InstanceNumber is ``k + 1``, and a loader that sorts
    along the slice normal gets the slices back in array order. ``origin_lps`` is the centre of
    voxel (0, 0, 0); by default the in-plane centre of the grid sits on the z axis and slice 0
    at z = 0. Stored pixel values are HU + 1024 (see ``_stored_encoding``), slope 1.
    Datasets carry Explicit VR Little Endian file meta, ready for ``dcmwrite``.
    """
    if hu.ndim != 3:
        raise ValueError("hu must be 3-D (slices, rows, columns)")
    if hu.dtype != np.int16:
        raise ValueError(f"hu must be int16 Hounsfield units, not {hu.dtype}")
    slices, rows, columns = (int(n) for n in hu.shape)
    if slices < 1 or rows < 1 or columns < 1:
        raise ValueError("hu must have at least one voxel along each axis")
    if rows > 65535 or columns > 65535:
        raise ValueError("rows and columns must fit in 16 bits")
    dz, dy, dx = (float(s) for s in spacing_mm)
    if min(dz, dy, dx) <= 0:
        raise ValueError("spacing_mm must be positive")
    if origin_lps is None:
        origin_lps = (-(columns - 1) * dx / 2.0, -(rows - 1) * dy / 2.0, 0.0)
    thickness = dz if slice_thickness_mm is None else float(slice_thickness_mm)

    pixel_representation, intercept = _stored_encoding(hu)
    stored_dtype = np.dtype("<u2") if pixel_representation == 0 else np.dtype("<i2")
    stored = (hu.astype(np.int32) - intercept).astype(stored_dtype)

    series_uid = series_instance_uid or generate_uid(prefix=None)
    for_uid = frame_of_reference_uid or generate_uid(prefix=None)
    now = datetime.datetime.now()
    content_date = now.strftime("%Y%m%d")
    content_time = now.strftime("%H%M%S")
    pixel_spacing = [_ds(dy), _ds(dx)]
    thickness_ds = _ds(thickness)
    x0, y0, z0 = (float(v) for v in origin_lps)

    template = Dataset()
    # SOP Common, General Study, Patient, General Series, Frame of Reference, Equipment
    template.SpecificCharacterSet = "ISO_IR 100"
    template.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    template.InstanceCreationDate = content_date
    template.InstanceCreationTime = content_time
    template.SOPClassUID = CTImageStorage
    template.StudyDate = study.study_date
    template.SeriesDate = study.study_date
    template.AcquisitionDate = study.study_date
    template.ContentDate = content_date
    template.StudyTime = study.study_time
    template.SeriesTime = study.study_time
    template.AcquisitionTime = study.study_time
    template.ContentTime = content_time
    template.AccessionNumber = study.accession_number
    template.Modality = "CT"
    template.Manufacturer = MANUFACTURER
    template.ReferringPhysicianName = ""
    template.StudyDescription = study.study_description
    template.SeriesDescription = series_description
    template.ManufacturerModelName = _MODEL_NAME
    template.PatientName = study.patient_name
    template.PatientID = study.patient_id
    template.PatientBirthDate = study.patient_birth_date
    template.PatientSex = study.patient_sex
    template.BodyPartExamined = body_part
    template.SliceThickness = thickness_ds
    template.KVP = "120"
    template.SoftwareVersions = _SOFTWARE_VERSION
    template.ConvolutionKernel = "STANDARD"
    template.PatientPosition = "HFS"
    template.StudyInstanceUID = study.study_instance_uid
    template.SeriesInstanceUID = series_uid
    template.StudyID = study.study_id
    template.SeriesNumber = series_number
    template.AcquisitionNumber = 1
    template.ImageOrientationPatient = [_ds(v) for v in _AXIAL_ORIENTATION]
    template.FrameOfReferenceUID = for_uid
    template.PositionReferenceIndicator = ""
    template.ImagesInAcquisition = slices
    # Image Pixel, CT Image, VOI LUT
    template.SamplesPerPixel = 1
    template.PhotometricInterpretation = "MONOCHROME2"
    template.Rows = rows
    template.Columns = columns
    template.PixelSpacing = pixel_spacing
    template.BitsAllocated = 16
    template.BitsStored = 16
    template.HighBit = 15
    template.PixelRepresentation = pixel_representation
    template.BurnedInAnnotation = "NO"
    template.WindowCenter = list(_WINDOW_CENTERS)
    template.WindowWidth = list(_WINDOW_WIDTHS)
    template.RescaleIntercept = str(intercept)
    template.RescaleSlope = "1"
    template.RescaleType = "HU"
    template.WindowCenterWidthExplanation = list(_WINDOW_EXPLANATIONS)
    template.LossyImageCompression = "00"
    constant = list(template)

    for k in range(slices):
        sop_uid = generate_uid(prefix=None)
        z = z0 + k * dz

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = _IMPLEMENTATION_VERSION_NAME

        ds = Dataset()
        ds.file_meta = meta
        # Copying converted elements is much cheaper than setting values again; multi-valued
        # values (mutable lists) get fresh elements so the datasets share nothing mutable.
        for element in constant:
            if element.VM > 1:
                ds.add(DataElement(element.tag, element.VR, list(element.value)))
            else:
                ds.add(copy.copy(element))
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
        ds.SliceLocation = _ds(z)
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        yield ds


def write_ct_series(
    hu: npt.NDArray[np.int16],
    spacing_mm: tuple[float, float, float],
    study: PatientStudy,
    out_dir: Path,
    *,
    series_number: int = 1,
    series_description: str = "CT CHEST SYNTHETIC",
    body_part: str = "CHEST",
    slice_thickness_mm: float | None = None,
    origin_lps: tuple[float, float, float] | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> list[Path]:
    """Write ``ct_series_datasets(...)`` under ``out_dir`` and return the paths in slice order.

    Files are named ``CT{series_number:03d}_{instance:05d}.dcm``; the directory is created if
    needed and existing files of the same names are replaced.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = ct_series_datasets(
        hu,
        spacing_mm,
        study,
        series_number=series_number,
        series_description=series_description,
        body_part=body_part,
        slice_thickness_mm=slice_thickness_mm,
        origin_lps=origin_lps,
        series_instance_uid=series_instance_uid,
        frame_of_reference_uid=frame_of_reference_uid,
    )
    paths: list[Path] = []
    for ds in datasets:
        path = out_dir / f"CT{series_number:03d}_{int(ds.InstanceNumber):05d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


_CR_MODEL_NAME = "radrouter synthetic CR"


def radiograph_dataset(
    pixels: npt.NDArray[np.uint16],
    study: PatientStudy,
    *,
    photometric_interpretation: str = "MONOCHROME2",
    bits_stored: int = 16,
    pixel_spacing_mm: float | None = None,
    body_part: str = "EXTREMITY",
    view_position: str = "AP",
    laterality: str = "",
    series_number: int = 1,
    series_description: str = "XR SYNTHETIC",
    series_instance_uid: str | None = None,
) -> Dataset:
    """One Computed Radiography Image Storage dataset holding ``pixels`` (rows, columns).

    ``pixels`` are the stored values (unsigned, below ``2 ** bits_stored``), written with
    Rescale Slope 1 and Intercept 0, so modality values equal stored values.
    ``photometric_interpretation`` says how to display them (MONOCHROME1: high is dark).
    ``pixel_spacing_mm`` is written as Imager Pixel Spacing (at the detector), as CR
    plates do; None leaves spacing out, as some CR readers do. ``laterality`` (R, L or "")
    is the General Series Laterality of a paired body part. No patient geometry
    (ImagePositionPatient / ImageOrientationPatient) is written: a radiograph is a projection.
    """
    if pixels.ndim != 2:
        raise ValueError("pixels must be 2-D (rows, columns)")
    if pixels.dtype != np.uint16:
        raise ValueError(f"pixels must be uint16 stored values, not {pixels.dtype}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored {bits_stored} must be between 8 and 16")
    if pixels.size and int(pixels.max()) >= 2**bits_stored:
        raise ValueError(f"pixels exceed bits_stored {bits_stored}")
    if photometric_interpretation not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"photometric_interpretation {photometric_interpretation!r} must be MONOCHROME1 "
            "or MONOCHROME2"
        )
    rows, columns = (int(n) for n in pixels.shape)
    if not (0 < rows <= 65535 and 0 < columns <= 65535):
        raise ValueError("rows and columns must be between 1 and 65535")
    if pixel_spacing_mm is not None and pixel_spacing_mm <= 0:
        raise ValueError("pixel_spacing_mm must be positive")
    if laterality not in ("", "R", "L"):
        raise ValueError(f"laterality {laterality!r} must be 'R', 'L' or ''")
    now = datetime.datetime.now()
    sop_uid = generate_uid(prefix=None)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = study.study_time
    ds.SeriesTime = study.study_time
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = study.accession_number
    ds.Modality = "CR"
    ds.Manufacturer = MANUFACTURER
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.study_description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = _CR_MODEL_NAME
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.Laterality = laterality
    ds.SoftwareVersions = _SOFTWARE_VERSION
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid or generate_uid(prefix=None)
    ds.StudyID = study.study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric_interpretation
    ds.Rows = rows
    ds.Columns = columns
    if pixel_spacing_mm is not None:
        ds.ImagerPixelSpacing = [_ds(pixel_spacing_mm), _ds(pixel_spacing_mm)]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def write_radiograph(
    pixels: npt.NDArray[np.uint16],
    study: PatientStudy,
    out_dir: Path,
    *,
    photometric_interpretation: str = "MONOCHROME2",
    bits_stored: int = 16,
    pixel_spacing_mm: float | None = None,
    body_part: str = "EXTREMITY",
    view_position: str = "AP",
    laterality: str = "",
    series_number: int = 1,
    series_description: str = "XR SYNTHETIC",
    series_instance_uid: str | None = None,
) -> Path:
    """Write ``radiograph_dataset(...)`` as ``CR{series_number:03d}.dcm`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = radiograph_dataset(
        pixels,
        study,
        photometric_interpretation=photometric_interpretation,
        bits_stored=bits_stored,
        pixel_spacing_mm=pixel_spacing_mm,
        body_part=body_part,
        view_position=view_position,
        laterality=laterality,
        series_number=series_number,
        series_description=series_description,
        series_instance_uid=series_instance_uid,
    )
    path = out_dir / f"CR{series_number:03d}.dcm"
    dcmwrite(path, ds, enforce_file_format=True)
    return path
