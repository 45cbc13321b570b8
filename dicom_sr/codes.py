"""Document-structure codes of the SR writer in one place, and contract-to-highdicom conversion."""

from __future__ import annotations

from types import MappingProxyType

import highdicom as hd
from pydicom.sr.coding import Code as DicomCode

from algorithms.contract import Code, Verdict

# Every concept here is from a standard coding scheme (DCM, SCT, UMLS, LN, UCUM) or from the
# IHE AI Results (AIR) profile (99IHE); the writer defines no private coding scheme, so no
# Coding Scheme Identification Sequence is needed and any TID 1500 reader understands the document.

# Study-level verdict: CID 240 "Present-Absent", the value set qualitative evaluations of a
# finding use (TID 1501), as the row 12 CODE item of TID 1500. "Not assessed" has no code of its own in any DICOM context group; CID 240's third
# member, SCT 373068000 "Undetermined", is the standard way to say that the presence of the target
# was not determined, and the reason goes beside it as a TEXT (121106, DCM, "Comment"), the TEXT
# form of a qualitative evaluation (PS3.21 A.6, CP-1779). Staying inside CID 240 lets a reader
# that knows Present/Absent recognise all three answers from one value set.
PRESENT = DicomCode("52101004", "SCT", "Present")
ABSENT = DicomCode("272519000", "SCT", "Absent")
UNDETERMINED = DicomCode("373068000", "SCT", "Undetermined")
VERDICT_VALUES: MappingProxyType[Verdict, DicomCode] = MappingProxyType(
    {Verdict.PRESENT: PRESENT, Verdict.ABSENT: ABSENT, Verdict.NOT_ASSESSED: UNDETERMINED}
)

# The algorithm's probability that a finding is real. (111012, DCM, "Certainty of Finding") is the
# concept every DICOM CAD SR (Mammography TID 4006, Chest TID 4102, Colon TID 4127) uses for a
# detection algorithm's confidence in a finding, with UNITS = (%, UCUM, "Percent") and value
# 0-100; reusing it (rather than a private "probability" code) means viewers that know CAD SR
# show it as such. The contract's probability p in [0, 1] is written as 100 * p percent.
CERTAINTY_OF_FINDING = DicomCode("111012", "DCM", "Certainty of Finding")
PERCENT = DicomCode("%", "UCUM", "Percent")
PERCENT_PER_PROBABILITY = 100.0

# Free-text statements: TEXT items named (121106, DCM, "Comment") in the TID 1500 row 12
# container (C0034375, UMLS, "Qualitative Evaluations"): the reason, as a property of the
# study-level statement (why not assessed), and the document-wide statements (AI, not
# verified, not for clinical use).
COMMENT = DicomCode("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS = DicomCode("C0034375", "UMLS", "Qualitative Evaluations")

# TID 1500 document title (CID 7021) and TID 1002 observer type (CID 270).
IMAGING_MEASUREMENT_REPORT = DicomCode("126000", "DCM", "Imaging Measurement Report")
DIAGNOSTIC_IMAGING_REPORT = DicomCode("18748-4", "LN", "Diagnostic Imaging Report")
IMAGING_MEASUREMENTS = DicomCode("126010", "DCM", "Imaging Measurements")
DEVICE_OBSERVER = DicomCode("121007", "DCM", "Device")
DEVICE_OBSERVER_NAME = DicomCode("121013", "DCM", "Device Observer Name")

# TID 1500 row 4 "Procedure reported", CID 100 defaults by modality when the caller names none.
# Row 4 is a DCID: the code must be one of CID 100. CID 100 has no radiography code (LOINC
# 43468-8 "XR unspecified body region" is not in it; PixelMed reports it), so CR, DX and other
# modalities get the generic "Imaging procedure", which is.
IMAGING_PROCEDURE = DicomCode("363679005", "SCT", "Imaging procedure")
PROCEDURE_BY_MODALITY: MappingProxyType[str, DicomCode] = MappingProxyType(
    {
        "CT": DicomCode("25045-6", "LN", "CT unspecified body region"),
        "MR": DicomCode("25056-3", "LN", "MRI unspecified body region"),
        "PT": DicomCode("44136-0", "LN", "PET unspecified body region"),
        "NM": DicomCode("49118-3", "LN", "NM unspecified body region"),
    }
)

# Contributing Equipment purpose of reference the IHE AI Results (AIR) profile asks for to name the
# algorithm that produced the result. It is not in CID 7005, so highdicom.ContributingEquipment
# refuses it and the writer sets it with pydicom after construction.
IHE_PROCESSING_ALGORITHM = DicomCode("Newcode1", "99IHE", "Processing Algorithm")
PROCESSING_EQUIPMENT = DicomCode("109102", "DCM", "Processing Equipment")  # CID 7005, for highdicom

# TID 4019 Algorithm Identification concept names, for reading.
ALGORITHM_NAME = DicomCode("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = DicomCode("111003", "DCM", "Algorithm Version")

# SEG segments. Segmented Property Type is the finding type itself (a CID 7151 concept such as
# SCT Nodule, Embolus, Lesion); the category (CID 7150) of everything an algorithm finds is
# "Morphologically Abnormal Structure": radrouter's plugins report abnormalities, not anatomy.
# The algorithm family (CID 7162) of every plugin is "Artificial Intelligence".
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = DicomCode(
    "49755003", "SCT", "Morphologically Abnormal Structure"
)
ARTIFICIAL_INTELLIGENCE = DicomCode("123110", "DCM", "Artificial Intelligence")

# KOS (TID 2010): document title (CID 7010) and the TEXT describing the selection.
OF_INTEREST = DicomCode("113000", "DCM", "Of Interest")
KEY_OBJECT_DESCRIPTION = DicomCode("113012", "DCM", "Key Object Description")

# Purpose of reference of an earlier result version (CID 7009 "Purpose of Reference to
# Predecessor Report"): the SEG names its predecessor with it (General Reference Module).
REPLACED_REPORT = DicomCode("121360", "DCM", "Replaced report")


def to_coded_concept(code: Code | DicomCode) -> hd.sr.CodedConcept:
    """A contract ``Code`` (or pydicom ``Code``) as a highdicom ``CodedConcept``."""
    return hd.sr.CodedConcept(
        value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning
    )


def to_contract_code(concept: hd.sr.CodedConcept | DicomCode) -> Code:
    """A highdicom ``CodedConcept`` (or pydicom ``Code``) as a contract ``Code``."""
    return Code(
        value=str(concept.value),
        scheme_designator=str(concept.scheme_designator),
        meaning=str(concept.meaning),
    )


def same_concept(a: Code | DicomCode | hd.sr.CodedConcept, b: Code | DicomCode) -> bool:
    """Whether two codes name the same concept (value and scheme; the meaning is display text)."""
    return (str(a.value), str(a.scheme_designator)) == (b.value, b.scheme_designator)
