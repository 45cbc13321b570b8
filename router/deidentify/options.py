"""Which de-identification a vendor gets: the Basic Application Level Confidentiality Profile
(DICOM PS3.15 E.1) and the options selected, and how each is declared in the objects sent
(Deidentification Method Code Sequence, CID 7050)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

DEFAULT_RETAINED_DESCRIPTORS = frozenset(
    {
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "PerformedProcedureStepDescription",
        "RequestedProcedureDescription",
        "ContrastBolusAgent",
        "AcquisitionDeviceProcessingDescription",
    }
)
"""Descriptors kept under the Clean Descriptors option (when they carry no identifier of the
patient, see ``deidentifier``); every other descriptor of Table E.1-1 gets the Basic action."""


@dataclass(frozen=True)
class DeidOptions:
    """The profile's options radrouter implements, and how UIDs and dates are replaced.

    Defaults: what an image-analysis algorithm needs (dates shifted, not removed; scanner
    identity; the patient's sex, age, size and weight; the descriptions of the study and
    series) and nothing more: no private attribute, no burned-in annotation.
    """

    retain_longitudinal_modified_dates: bool = True
    """Retain Longitudinal Temporal Information with Modified Dates (113107): every date is
    shifted by the patient's offset (whole days, kept in the mapping); times are kept."""
    retain_device_identity: bool = True
    """Retain Device Identity (113109): station name, device serial number, ... kept."""
    retain_patient_characteristics: bool = True
    """Retain Patient Characteristics (113108): sex, age, size, weight, ... kept."""
    clean_descriptors: bool = True
    """Clean Descriptors (113105): the ``retained_descriptors`` are kept when they hold no
    identifier of the patient, emptied when they do; other descriptors are removed."""
    retained_descriptors: frozenset[str] = DEFAULT_RETAINED_DESCRIPTORS
    retain_safe_private: bool = False
    """Retain Safe Private (113111): only the private attributes in ``safe_private`` are kept;
    without the option every private attribute is removed."""
    safe_private: frozenset[tuple[str, int]] = frozenset()
    """(private creator, element offset 0x00-0xFF) pairs a site has judged safe."""
    allow_burned_in_annotation: bool = False
    """Send series whose pixels say (or may say) who the patient is. Off: such a series is
    refused with the reason (``burned_in``)."""
    uid_root: str = "2.25."
    """New UIDs: ``2.25.`` + a UUID derived from the site secret, the scope and the original
    UID (ISO/IEC 9834-8), or under a site's own root (``1.2.3.4.``: pydicom's ``generate_uid``
    with the same derivation as entropy)."""
    date_shift_days: tuple[int, int] = field(default=(100, 1000))
    """Dates move back by a number of days in this range, fixed per patient."""

    def __post_init__(self) -> None:
        if not self.uid_root.endswith(".") or len(self.uid_root) > 40:
            raise ValueError("uid_root must end with '.' and leave room for the UID (<= 40)")
        low, high = self.date_shift_days
        if not 0 < low <= high:
            raise ValueError("date_shift_days must be (low, high) with 0 < low <= high")

    def method_codes(self) -> list[Code]:
        """CID 7050 codes of the profile and each option applied, for the objects sent."""
        selected = [codes.DCM.BasicApplicationConfidentialityProfile]
        if self.clean_descriptors:
            selected.append(codes.DCM.CleanDescriptorsOption)
        if self.retain_longitudinal_modified_dates:
            selected.append(codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption)
        if self.retain_patient_characteristics:
            selected.append(codes.DCM.RetainPatientCharacteristicsOption)
        if self.retain_device_identity:
            selected.append(codes.DCM.RetainDeviceIdentityOption)
        if self.retain_safe_private:
            selected.append(codes.DCM.RetainSafePrivateOption)
        return selected

    def option_columns(self) -> tuple[str, ...]:
        """The Table E.1-1 columns (``annex_e_table`` names) of the options selected."""
        columns = []
        if self.retain_longitudinal_modified_dates:
            columns.append(MODIFIED_DATES)
        if self.retain_device_identity:
            columns.append(DEVICE_IDENTITY)
        if self.retain_patient_characteristics:
            columns.append(PATIENT_CHARACTERISTICS)
        if self.clean_descriptors:
            columns.append(CLEAN_DESCRIPTORS)
        return tuple(columns)


MODIFIED_DATES = "rtnLongModifDatesOpt"
DEVICE_IDENTITY = "rtnDevIdOpt"
PATIENT_CHARACTERISTICS = "rtnPatCharsOpt"
CLEAN_DESCRIPTORS = "cleanDescOpt"
