"""Coded concepts of worklist messages, and coding-system names for HL7 v2 and FHIR R4.

Concepts are those the SR writer (``dicom_sr.codes``) uses, so the HL7 and FHIR results say the
same as the DICOM SR: Present/Absent/Undetermined (CID 240), (111012, DCM, "Certainty of
Finding") in percent, TID 4019 algorithm name and version. What has no standard code (the
worklist priority, the reason, the AI statement) uses the local coding system
``LOCAL_SYSTEM``, which HL7 table 0396 reserves for local codes ("99zzz").
"""

from __future__ import annotations

from types import MappingProxyType

from algorithms import finding_words
from algorithms.contract import Code, Verdict

PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
UNDETERMINED = Code("373068000", "SCT", "Undetermined")
VERDICT_VALUES: MappingProxyType[Verdict, Code] = MappingProxyType(
    {Verdict.PRESENT: PRESENT, Verdict.ABSENT: ABSENT, Verdict.NOT_ASSESSED: UNDETERMINED}
)

FINDING = Code("121071", "DCM", "Finding")
FINDING_SITE = Code("363698007", "SCT", "Finding site")
LATERALITY = Code("272741003", "SCT", "Laterality")
TOPOGRAPHICAL_MODIFIER = Code("106233006", "SCT", "Topographical modifier")
LONG_AXIS = Code("103339001", "SCT", "Long axis")
DIAMETER = Code("81827009", "SCT", "Diameter")
TRACKING_IDENTIFIER = Code("112039", "DCM", "Tracking Identifier")
CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
PERCENT = Code("%", "UCUM", "Percent")
PERCENT_PER_PROBABILITY = 100.0
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")

LOCAL_SYSTEM = "99RADROUTER"
WORKLIST_PRIORITY = Code("PRIORITY", LOCAL_SYSTEM, "AI worklist priority")
PRIORITY_REASON = Code("REASON", LOCAL_SYSTEM, "AI worklist priority reason")
PRIORITY_FLAG = Code("FLAG", LOCAL_SYSTEM, "AI priority flag raised")
AI_STATEMENT = Code("STATEMENT", LOCAL_SYSTEM, "AI result statement")
OUTCOME_STATEMENT = Code("OUTCOME", LOCAL_SYSTEM, "AI result not available")

FHIR_SYSTEMS: MappingProxyType[str, str] = MappingProxyType(
    {
        "SCT": "http://snomed.info/sct",
        "DCM": "http://dicom.nema.org/resources/ontology/DCM",
        "LN": "http://loinc.org",
        "UCUM": "http://unitsofmeasure.org",
        "RADLEX": "http://www.radlex.org",
        "UMLS": "http://www.nlm.nih.gov/research/umls",
        LOCAL_SYSTEM: "urn:radrouter:codes",
    }
)
"""DICOM coding scheme designator -> FHIR code system URI (HL7 terminology, "External code
systems"). The HL7 v2 coding-system names (table 0396) are the DICOM designators themselves."""

# What a finding type is called in a sentence, and which units are lengths: shared with the
# labels drawn over images (algorithms/finding_words.py).
PLAIN_WORDS = finding_words.PLAIN_WORDS
LENGTH_UNITS = finding_words.LENGTH_UNITS
