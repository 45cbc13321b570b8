"""Burned-in annotation: pixels that may show who the patient is are not sent.

Header de-identification cannot clean pixels. A series is refused when any instance says
Burned In Annotation YES, or says nothing where text in the pixels is common: ultrasound,
secondary capture (screenshots, scanned documents), external-camera photography (XC) and
"other" (OT). The site can allow it per external algorithm (the vendor's contract then covers
what the pixels show).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import (
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

LIKELY_MODALITIES = frozenset({"US", "XC", "OT", "SC"})
LIKELY_SOP_CLASSES = frozenset(
    {
        SecondaryCaptureImageStorage,
        MultiFrameSingleBitSecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (retired)
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (retired)
    }
)


def burned_in_refusal(instances: Iterable[Dataset], *, allow: bool = False) -> str | None:
    """Why the series must not be sent (a sentence with no patient data), or None."""
    if allow:
        return None
    for dataset in instances:
        marked = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper()
        if marked == "YES":
            return (
                "burned-in annotation: the series says its pixels carry text (Burned In"
                " Annotation YES), which de-identification of the header cannot remove"
            )
        if marked:
            continue
        modality = str(dataset.get("Modality", "") or "").strip().upper()
        sop_class = str(dataset.get("SOPClassUID", "") or "").strip()
        if modality in LIKELY_MODALITIES or sop_class in LIKELY_SOP_CLASSES:
            kind = "secondary capture" if sop_class in LIKELY_SOP_CLASSES else modality
            return (
                f"burned-in annotation unknown: a {kind} series without Burned In Annotation"
                " may carry the patient's identity in its pixels"
            )
    return None
