"""Test helpers shared by the whole suite: the dciodvfy and PixelMed validators, synthetic CT."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

DCIODVFY = Path("/usr/bin/dciodvfy")
JAVA = Path("/usr/bin/java")
PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
"""PixelMed (Debian ``libpixelmed-java``), whose DicomSRValidator checks SR templates."""

PIXELMED_JVM_OPTIONS = (
    # The JDK's default XPath limits stop PixelMed's template stylesheet (DESIGN.md).
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
    # One short run: the C1 compiler alone starts faster (about 6 s of CPU instead of 13).
    "-XX:TieredStopAtLevel=1",
)

_ERROR_PREFIX = "Error - "
_WARNING_PREFIX = "Warning - "
_PIXELMED_ERROR_PREFIX = "Error: "
_PIXELMED_WARNING_PREFIX = "Warning: "
_PIXELMED_IOD = re.compile(r"^Found (\S+) IOD$")
_PIXELMED_ROOT_TEMPLATE = re.compile(r"^Found Root Template (\S+)")
_PIXELMED_DONE = ("Root Template Validation Complete", "IOD validation complete")
_JAVA_EXCEPTION = re.compile(
    r"^(SEVERE: |Exception in thread |[\w$]+(\.[\w$]+)+(Exception|Error)\b)"
)

_HU_AIR = -1000.0
_HU_SOFT_TISSUE = 40.0
_HU_LUNG = -850.0
_RESCALE_INTERCEPT = -1024.0


@dataclass(frozen=True)
class DciodvfyReport:
    """What dicom3tools' ``dciodvfy`` said about one file."""

    returncode: int
    errors: list[str]
    """Messages of the ``Error - ...`` lines, prefix removed."""
    warnings: list[str]
    """Messages of the ``Warning - ...`` lines, prefix removed."""
    output: str
    """The whole of stdout and stderr, for assertion messages."""


def run_dciodvfy(path: Path, *, timeout_s: float = 60.0) -> DciodvfyReport:
    """Validate the Part-10 file at ``path`` against its IOD with ``/usr/bin/dciodvfy``."""
    if not path.is_file():
        raise FileNotFoundError(f"run_dciodvfy: path {path} is not a file")
    completed = subprocess.run(
        [str(DCIODVFY), str(path)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    output = completed.stdout + completed.stderr
    errors: list[str] = []
    warnings: list[str] = []
    for line in (raw.rstrip() for raw in output.splitlines()):
        if line.startswith(_ERROR_PREFIX):
            errors.append(line.removeprefix(_ERROR_PREFIX))
        elif line.startswith(_WARNING_PREFIX):
            warnings.append(line.removeprefix(_WARNING_PREFIX))
    return DciodvfyReport(
        returncode=completed.returncode, errors=errors, warnings=warnings, output=output
    )


@dataclass(frozen=True)
class PixelMedReport:
    """What PixelMed's ``DicomSRValidator`` said about one SR or KOS file.

    The validator exits 0 whatever it finds, so ``validated`` says whether it recognised the
    IOD and a root template and ran to its end without a Java exception.
    """

    returncode: int
    iod: str | None
    """The IOD it recognised (``Comprehensive3DSR``, ``KeyObjectSelectionDocument``)."""
    root_template: str | None
    """The root template it validated against (``TID_1500``, ``TID_2010``)."""
    errors: list[str]
    """Messages of the ``Error: ...`` lines, prefix removed."""
    warnings: list[str]
    """Messages of the ``Warning: ...`` lines, prefix removed."""
    exceptions: list[str]
    """Lines of Java exceptions and severe log records (an unreadable file, a crash)."""
    output: str
    """The whole of stdout and stderr, for assertion messages."""

    @property
    def validated(self) -> bool:
        return (
            self.returncode == 0
            and self.iod is not None
            and self.root_template is not None
            and not self.exceptions
            and all(line in self.output.splitlines() for line in _PIXELMED_DONE)
        )


def run_pixelmed_sr_validator(path: Path, *, timeout_s: float = 180.0) -> PixelMedReport:
    """Validate the SR or KOS at ``path`` (IOD and templates) with PixelMed's DicomSRValidator.

    One JVM per file (the validator takes one file); it compiles its template stylesheet on
    every start, so a run takes several seconds.
    """
    if not path.is_file():
        raise FileNotFoundError(f"run_pixelmed_sr_validator: path {path} is not a file")
    if not PIXELMED_JAR.is_file():
        raise FileNotFoundError(
            f"run_pixelmed_sr_validator: {PIXELMED_JAR} is missing (Debian libpixelmed-java)"
        )
    completed = subprocess.run(
        [
            str(JAVA),
            *PIXELMED_JVM_OPTIONS,
            "-cp",
            str(PIXELMED_JAR),
            "com.pixelmed.validate.DicomSRValidator",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    output = completed.stdout + completed.stderr
    iod: str | None = None
    root_template: str | None = None
    errors: list[str] = []
    warnings: list[str] = []
    exceptions: list[str] = []
    for line in (raw.rstrip() for raw in output.splitlines()):
        if line.startswith(_PIXELMED_ERROR_PREFIX):
            errors.append(line.removeprefix(_PIXELMED_ERROR_PREFIX))
        elif line.startswith(_PIXELMED_WARNING_PREFIX):
            warnings.append(line.removeprefix(_PIXELMED_WARNING_PREFIX))
        elif _JAVA_EXCEPTION.match(line):
            exceptions.append(line)
        elif (found := _PIXELMED_IOD.match(line)) is not None:
            iod = found.group(1)
        elif (found := _PIXELMED_ROOT_TEMPLATE.match(line)) is not None:
            root_template = found.group(1)
    return PixelMedReport(
        returncode=completed.returncode,
        iod=iod,
        root_template=root_template,
        errors=errors,
        warnings=warnings,
        exceptions=exceptions,
        output=output,
    )


def _phantom_hu(rows: int, cols: int) -> np.typing.NDArray[np.float64]:
    """One axial slice of a chest-like phantom: air, an elliptic body, two lungs (HU)."""
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    r = (r + 0.5) / rows - 0.5
    c = (c + 0.5) / cols - 0.5
    hu = np.full((rows, cols), _HU_AIR)
    hu[(c / 0.45) ** 2 + (r / 0.35) ** 2 <= 1.0] = _HU_SOFT_TISSUE
    for centre in (-0.2, 0.2):
        hu[((c - centre) / 0.15) ** 2 + (r / 0.25) ** 2 <= 1.0] = _HU_LUNG
    return hu


def make_ct_slices(
    n: int,
    rows: int = 64,
    cols: int = 64,
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
) -> list[pydicom.Dataset]:
    """``n`` CT Image Storage slices of one new study and series, ordered by increasing z.

    ``spacing`` is (slice, row, column) in mm, as in ``VolumeGeometry``. Every slice carries a
    complete Patient, General Study, General Series, Frame of Reference, General Equipment,
    Image Plane, Image Pixel and CT Image module, int16 pixels with Rescale Slope/Intercept
    (HU = stored - 1024), and a Part-10 file meta, so it passes ``dciodvfy`` without errors.
    """
    if n < 1:
        raise ValueError(f"make_ct_slices: n must be >= 1, got {n}")
    if rows < 1 or cols < 1:
        raise ValueError(f"make_ct_slices: rows and cols must be >= 1, got {rows}x{cols}")
    if min(spacing) <= 0:
        raise ValueError(f"make_ct_slices: spacing must be positive, got {spacing}")
    slice_mm, row_mm, col_mm = (float(s) for s in spacing)
    study_uid, series_uid, frame_of_reference_uid = generate_uid(), generate_uid(), generate_uid()
    stored = np.round(_phantom_hu(rows, cols) - _RESCALE_INTERCEPT).astype(np.int16)
    origin_x, origin_y = -(cols - 1) * col_mm / 2.0, -(rows - 1) * row_mm / 2.0
    slices: list[pydicom.Dataset] = []
    for k in range(n):
        sop_instance_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_instance_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_instance_uid
        ds.StudyDate = "20240115"
        ds.SeriesDate = "20240115"
        ds.AcquisitionDate = "20240115"
        ds.ContentDate = "20240115"
        ds.StudyTime = "101500"
        ds.SeriesTime = "101700"
        ds.AcquisitionTime = "101705"
        ds.ContentTime = "101705"
        ds.AccessionNumber = "ACC0001"
        ds.Modality = "CT"
        ds.Manufacturer = "Synthetic"
        ds.InstitutionName = "Test Hospital"
        ds.ReferringPhysicianName = "Referrer^Rita"
        ds.StationName = "CT01"
        ds.StudyDescription = "CT CHEST"
        ds.SeriesDescription = "Synthetic chest 2.5mm"
        ds.ManufacturerModelName = "Phantom"
        ds.PatientName = "Test^Patient"
        ds.PatientID = "PAT0001"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{slice_mm:g}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{origin_x:g}", f"{origin_y:g}", f"{k * slice_mm:g}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{k * slice_mm:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [f"{row_mm:g}", f"{col_mm:g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.RescaleIntercept = f"{_RESCALE_INTERCEPT:g}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored.tobytes()
        slices.append(ds)
    return slices
