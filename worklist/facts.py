"""What the worklist needs to know about a study and an algorithm run besides its findings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from algorithms.contract import AlgorithmResult
from config.schema import Priority

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
DICOM_DATE = re.compile(r"^\d{8}$")
DICOM_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")

DICOM_REQUEST_PRIORITIES: Mapping[str, Priority] = {
    "STAT": Priority.STAT,
    "HIGH": Priority.URGENT,
    "MEDIUM": Priority.ROUTINE,
    "ROUTINE": Priority.ROUTINE,
    "LOW": Priority.ROUTINE,
}
"""Requested Procedure Priority (0040,1003) and Scheduled Procedure Step Priority (0040,0009)
defined terms -> lanes."""


def priority_from_dicom(value: str) -> Priority | None:
    """The lane a DICOM request priority (``STAT``, ``HIGH``, ``ROUTINE``, ...) stands for;
    ``None`` for an empty or unknown value."""
    return DICOM_REQUEST_PRIORITIES.get(value.strip().upper())


@dataclass(frozen=True)
class StudyFacts:
    """Header facts of the study a result is about. The patient fields are patient data: they
    go into the HL7/FHIR messages (a RIS needs them) and never into a log, so ``repr`` hides
    them."""

    study_instance_uid: str
    accession_number: str = field(default="", repr=False)
    modality: str = ""
    existing_priority: Priority | None = None
    """The priority the order already has (e.g. from RequestedProcedurePriority), if known."""
    study_date: str = ""
    """DICOM DA (YYYYMMDD), or empty."""
    study_time: str = ""
    """DICOM TM (HHMMSS.FFFFFF, trailing parts optional), or empty."""
    patient_id: str = field(default="", repr=False)
    issuer_of_patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    """DICOM PN: ``Family^Given^Middle^Prefix^Suffix`` (alphabetic group)."""
    patient_birth_date: str = field(default="", repr=False)
    patient_sex: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not UID_PATTERN.match(self.study_instance_uid) or len(self.study_instance_uid) > 64:
            raise ValueError(
                f"StudyFacts.study_instance_uid {self.study_instance_uid!r} is not a DICOM UID"
            )
        if len(self.accession_number) > 16:
            raise ValueError("StudyFacts.accession_number is longer than 16 characters (SH)")
        for name in ("study_date", "patient_birth_date"):
            value = getattr(self, name)
            if value and not DICOM_DATE.match(value):
                raise ValueError(f"StudyFacts.{name} must be a DICOM date YYYYMMDD or empty")
        if self.study_time and not DICOM_TIME.match(self.study_time):
            raise ValueError("StudyFacts.study_time must be a DICOM time HHMMSS[.FFFFFF] or empty")
        if self.patient_sex not in ("", "M", "F", "O"):
            raise ValueError("StudyFacts.patient_sex must be M, F, O or empty")

    @classmethod
    def from_header(cls, header: Mapping[str, str]) -> StudyFacts:
        """From header values by DICOM keyword (as the router indexes them); absent keys are
        empty. ``RequestedProcedurePriority`` gives ``existing_priority``.

        Read tolerantly: a modality writes what it writes, and a flag must reach the RIS
        whatever its birth date looks like. A date in an unambiguous other form
        (``1960-01-02``, ``1960.01.02``, the ACR-NEMA style) is rewritten as a DICOM date; any
        other non-conformant date, time, sex or over-long accession number is left out."""

        def text(keyword: str) -> str:
            return str(header.get(keyword, "")).strip()

        accession = text("AccessionNumber")
        study_time = text("StudyTime").replace(":", "")
        sex = text("PatientSex").upper()
        return cls(
            study_instance_uid=text("StudyInstanceUID"),
            accession_number=accession if len(accession) <= 16 else "",
            modality=text("Modality"),
            existing_priority=priority_from_dicom(text("RequestedProcedurePriority")),
            study_date=conformant_date(text("StudyDate")),
            study_time=study_time if DICOM_TIME.match(study_time) else "",
            patient_id=text("PatientID"),
            issuer_of_patient_id=text("IssuerOfPatientID"),
            patient_name=text("PatientName"),
            patient_birth_date=conformant_date(text("PatientBirthDate")),
            patient_sex=sex if sex in ("M", "F", "O") else "",
        )


_YEAR_FIRST_DATE = re.compile(r"^(\d{4})[-.](\d{2})[-.](\d{2})$")


def conformant_date(value: str) -> str:
    """``value`` as a DICOM date (YYYYMMDD), or empty when it is not one and cannot be read as
    one without guessing (``02.01.1960`` could be 2 January or 1 February)."""
    if DICOM_DATE.match(value):
        return value
    year_first = _YEAR_FIRST_DATE.match(value)
    return "".join(year_first.groups()) if year_first else ""


@dataclass(frozen=True)
class AlgorithmFailure:
    """An algorithm run that produced no result (crash, timeout, attempts spent). Stated to the
    worklist as such, never as a negative."""

    reason: str

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("AlgorithmFailure.reason must say why the run failed")


Outcome = AlgorithmResult | AlgorithmFailure
"""What an algorithm run gave: a result (positive, negative or not assessed) or a failure."""
