"""Write a synthetic MR volume (any orientation, from its LPS affine) as an MR Image Storage
series, for tests that send brain FLAIR studies through the router."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from testing.synthetic_dicom import MANUFACTURER, PatientStudy

FLAIR_SEQUENCE: dict[str, str | float | list[str]] = {
    "ScanningSequence": ["SE", "IR"],
    "SequenceVariant": ["SK", "SP"],
    "ScanOptions": ["IR"],
    "SequenceName": "*tir2d1_16",
    "RepetitionTime": 9000.0,
    "EchoTime": 81.0,
    "InversionTime": 2500.0,
    "EchoTrainLength": 16,
}
T1_SEQUENCE: dict[str, str | float | list[str]] = {
    "ScanningSequence": ["GR", "IR"],
    "SequenceVariant": ["SK", "SP", "MP"],
    "ScanOptions": ["IR"],
    "SequenceName": "*tfl3d1_16ns",
    "RepetitionTime": 2300.0,
    "EchoTime": 2.3,
    "InversionTime": 900.0,
    "EchoTrainLength": 1,
}


def _ds(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def write_mr_series(
    image: npt.NDArray[np.uint16],
    affine: npt.NDArray[np.float64],
    study: PatientStudy,
    out_dir: Path,
    *,
    series_description: str = "AX T2 FLAIR",
    series_number: int = 3,
    sequence: Mapping[str, str | float | list[str]] = FLAIR_SEQUENCE,
    acquisition_type: str = "2D",
    slice_thickness_mm: float | None = None,
) -> list[Path]:
    """One MR Image Storage file per slice of ``image`` (slices, rows, columns); slice k lies
    at ``affine @ (k, 0, 0, 1)``, rows along ``affine[:3, 1]``, columns along ``affine[:3, 2]``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_slices, rows, cols = image.shape
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row_dir = affine[:3, 2] / spacing[2]  # direction along a row (increasing column)
    col_dir = affine[:3, 1] / spacing[1]  # direction along a column (increasing row)
    series_uid = generate_uid(prefix=None)
    for_uid = generate_uid(prefix=None)
    now = datetime.datetime.now()
    paths: list[Path] = []
    for k in range(n_slices):
        sop_uid = generate_uid(prefix=None)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.study_date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = study.study_time
        ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber = study.accession_number
        ds.Modality = "MR"
        ds.Manufacturer = MANUFACTURER
        ds.ManufacturerModelName = "radrouter synthetic MR"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "MR BRAIN"
        ds.SeriesDescription = series_description
        ds.ProtocolName = series_description
        ds.PatientName = study.patient_name
        ds.PatientID = study.patient_id
        ds.PatientBirthDate = study.patient_birth_date
        ds.PatientSex = study.patient_sex
        ds.BodyPartExamined = "BRAIN"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study.study_instance_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = study.study_id
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        for keyword, value in sequence.items():
            setattr(ds, keyword, value)
        ds.MRAcquisitionType = acquisition_type
        ds.MagneticFieldStrength = "3"
        ds.ImagingFrequency = "123.2"
        ds.ImagedNucleus = "1H"
        ds.SliceThickness = _ds(slice_thickness_mm or float(spacing[0]))
        ds.SpacingBetweenSlices = _ds(float(spacing[0]))
        position = affine @ np.array([k, 0.0, 0.0, 1.0])
        ds.ImagePositionPatient = [_ds(float(v)) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(float(v)) for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(position[2]))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [_ds(float(spacing[1])), _ds(float(spacing[2]))]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = np.ascontiguousarray(image[k], dtype="<u2").tobytes()
        ds["PixelData"].VR = "OW"
        path = out_dir / f"MR{series_number:03d}_{k + 1:05d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
