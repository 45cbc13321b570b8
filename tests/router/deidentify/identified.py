"""Datasets full of identifying attributes (CT, MR, SR), and the values that identify them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from testing.dicom_tools import make_ct_slices
from testing.mr_dicom import write_mr_series
from testing.synthetic_dicom import PatientStudy

SR_FIXTURE = Path(__file__).resolve().parents[2] / "dicom_sr" / "data" / "sr_2026-11_present.dcm"

MARKERS = {
    "patient name": "Doe^Johanna^Q",
    "patient id": "MRN-7766551",
    "issuer": "GENERAL-HOSP-MRN",
    "birth date": "19471103",
    "address": "12 Elm Street, Springfield",
    "phone": "555-0199-322",
    "accession": "ACC-99887766",
    "study id": "STUDY-4455",
    "institution address": "1 Hospital Road, Springfield",
    "department": "Radiology West Wing",
    "referring": "Referring^Rachel",
    "performing": "Performer^Paul",
    "operator": "Operator^Olga",
    "physician of record": "Record^Rupert",
    "reading physician": "Reader^Rhonda",
    "requesting": "Requester^Rita",
    "other id": "OLD-MRN-123",
    "other name": "Doe^Jo",
    "mother": "Mother^Maiden",
    "comments": "Patient Johanna Doe, claustrophobic",
    "additional history": "Fell at home on 3 Nov",
    "requested procedure id": "RP-5566",
    "scheduled step id": "SPS-6677",
    "placer order": "PLACER-1234",
    "filler order": "FILLER-5678",
    "admission": "ADM-2020-77",
    "image comments": "Johanna Doe left side",
    "original date": "20240115",
    "private": "PRIVATE-SECRET-VALUE",
    "observer": "Verifier^Victor",
}
RETAINED_BY_OPTIONS = {
    "station": "CT-ROOM-7",
    "serial": "SN-00042-XYZ",
    "institution": "Springfield General",
}
"""Device identity is retained by its option; Institution Name has no option here, but the
table's action for it is X/Z/D (a dummy), so its value must not survive either."""


def identify(ds: Dataset, study_date: str = MARKERS["original date"]) -> Dataset:
    """Fill ``ds`` with every identifying attribute the tests look for (top level and nested)."""
    m = MARKERS
    ds.PatientName = m["patient name"]
    ds.PatientID = m["patient id"]
    ds.IssuerOfPatientID = m["issuer"]
    ds.PatientBirthDate = m["birth date"]
    ds.PatientSex = "F"
    ds.PatientAge = "076Y"
    ds.PatientSize = "1.62"
    ds.PatientWeight = "58"
    ds.PatientAddress = m["address"]
    ds.PatientTelephoneNumbers = [m["phone"]]
    ds.OtherPatientNames = m["other name"]
    ds.PatientMotherBirthName = m["mother"]
    ds.PatientComments = m["comments"]
    ds.AdditionalPatientHistory = m["additional history"]
    ds.AdmissionID = m["admission"]
    other = Dataset()
    other.PatientID = m["other id"]
    other.IssuerOfPatientID = "OLD-SYSTEM"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.AccessionNumber = m["accession"]
    ds.StudyID = m["study id"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    if "AcquisitionDate" in ds:
        ds.AcquisitionDate = study_date
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = "101010"
    ds.InstitutionName = RETAINED_BY_OPTIONS["institution"]
    ds.InstitutionAddress = m["institution address"]
    ds.InstitutionalDepartmentName = m["department"]
    ds.ReferringPhysicianName = m["referring"]
    ds.PerformingPhysicianName = m["performing"]
    ds.OperatorsName = m["operator"]
    ds.PhysiciansOfRecord = m["physician of record"]
    ds.NameOfPhysiciansReadingStudy = m["reading physician"]
    ds.RequestingPhysician = m["requesting"]
    ds.StationName = RETAINED_BY_OPTIONS["station"]
    ds.DeviceSerialNumber = RETAINED_BY_OPTIONS["serial"]
    ds.ImageComments = m["image comments"]
    ds.StudyDescription = "CT CHEST"
    request = Dataset()
    request.RequestedProcedureID = m["requested procedure id"]
    request.ScheduledProcedureStepID = m["scheduled step id"]
    request.RequestedProcedureDescription = "CHEST CT"
    request.ScheduledPerformingPhysicianName = m["performing"]
    ds.RequestAttributesSequence = Sequence([request])
    ds.PlacerOrderNumberImagingServiceRequest = m["placer order"]
    ds.FillerOrderNumberImagingServiceRequest = m["filler order"]
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
    ds.ReferencedStudySequence = Sequence([study_ref])
    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x01, "LO", m["private"])
    block.add_new(0x02, "LO", "safe-looking value")
    return ds


def ct_series(n: int = 4) -> list[Dataset]:
    """A CT series with everything identifying, the first slices referencing the last."""
    slices = make_ct_slices(n)
    for ds in slices:
        identify(ds)
        ds.BurnedInAnnotation = "NO"
    for ds in slices[:-1]:
        ref = Dataset()
        ref.ReferencedSOPClassUID = slices[-1].SOPClassUID
        ref.ReferencedSOPInstanceUID = slices[-1].SOPInstanceUID
        ds.ReferencedImageSequence = Sequence([ref])
        source = Dataset()
        source.ReferencedSOPClassUID = slices[-1].SOPClassUID
        source.ReferencedSOPInstanceUID = slices[-1].SOPInstanceUID
        ds.SourceImageSequence = Sequence([source])
    return slices


def mr_series(tmp_path: Path, study_uid: str) -> list[Dataset]:
    study = PatientStudy(
        patient_id=MARKERS["patient id"],
        patient_name=MARKERS["patient name"],
        study_instance_uid=study_uid,
        accession_number=MARKERS["accession"],
        study_date=MARKERS["original date"],
    )
    affine = np.diag([5.0, 1.0, 1.0, 1.0])
    image = np.full((3, 16, 16), 100, dtype=np.uint16)
    paths = write_mr_series(image, affine, study, tmp_path / "mr")
    series: list[Dataset] = [pydicom.dcmread(p) for p in paths]
    for ds in series:
        identify(ds)
    return series


def sr_instance(study_uid: str) -> Dataset:
    ds = pydicom.dcmread(SR_FIXTURE)
    identify(ds)
    ds.StudyInstanceUID = study_uid
    observer = Dataset()
    observer.VerifyingObserverName = MARKERS["observer"]
    observer.VerifyingOrganization = RETAINED_BY_OPTIONS["institution"]
    observer.VerificationDateTime = MARKERS["original date"] + "120000"
    observer.VerifyingObserverIdentificationCodeSequence = Sequence()
    ds.VerifyingObserverSequence = Sequence([observer])
    return ds
