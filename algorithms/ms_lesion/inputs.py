"""Is this series a brain FLAIR the model can read? Header rules and geometry limits.

Header rules, in order (values are the router's header subset, as text):

1. ``Modality`` must be ``MR``.
2. The series text (SeriesDescription, ProtocolName, SequenceName) naming FLAIR (``FLAIR``,
   ``DARK FLUID``, Siemens ``TIRM``/``*tir``/``*spcir``) claims FLAIR; it is refused only when
   it also says T1 (T1-weighted FLAIR is a different contrast) or the InversionTime is below
   1200 ms.
3. Without a FLAIR claim, text naming another sequence (T1, MPRAGE, T2, PD, STIR, DWI/ADC,
   SWI, TOF/MRA, perfusion, localizer ...) is refused with the word found.
4. Without any text hint, an InversionTime below 1200 ms (STIR, T1 inversion recovery) or a
   ScanningSequence without IR is refused.
5. Nothing to go by: accepted; the image check (dark ventricles) after the model run decides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from algorithms.ms_lesion import preprocess

MIN_FLAIR_INVERSION_MS = 1200.0
"""FLAIR nulls CSF with TI ~1500-2800 ms; STIR (~150 ms) and T1-IR (~400-1100 ms) are shorter."""
MIN_SLICES = 12
MIN_Z_EXTENT_MM = 60.0
MAX_SLICE_SPACING_MM = 6.5
MAX_PIXEL_SPACING_MM = 1.5
MIN_FIELD_OF_VIEW_MM = 150.0

TEXT_KEYWORDS = ("SeriesDescription", "ProtocolName", "SequenceName")
HEADER_KEYWORDS = (*TEXT_KEYWORDS, "ScanningSequence", "InversionTime", "MRAcquisitionType")
"""Header values this plugin reads, beyond Modality (the router must copy them)."""

_FLAIR = re.compile(
    r"FLAIR|DARK[\s_-]*FLUID|FLUID[\s_-]*ATTENUAT|TIRM|\*TIR|\*SPCIR|\bTIR[23]D", re.IGNORECASE
)
_T1 = re.compile(r"(?<![A-Z0-9])T1(?![0-9])|MPRAGE|MP[\s_-]RAGE|SPGR|BRAVO", re.IGNORECASE)
_OTHER = re.compile(
    r"(?<![A-Z0-9])(T1W?|T2W?|PDW?|STIR|DWI|DTI|ADC|TRACE|SWI|SWAN|TOF|MRA|ASL|DSC|GRE|CISS|FIESTA)"
    r"(?![A-Z0-9])|T2\*|MPRAGE|MP[\s_-]RAGE|SPGR|BRAVO|DIFFUSION|PERFUSION|ANGIO|PROTON[\s_-]DENSITY"
    r"|LOCALI[SZ]ER|SCOUT|SURVEY",
    re.IGNORECASE,
)


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text.split("\\")[0])
    except ValueError:
        return None


def check_header(header: Mapping[str, str]) -> str:
    """Why the header says this is not a brain FLAIR, or "" when it may be one."""
    modality = header.get("Modality", "").strip().upper()
    if modality != "MR":
        return f"Modality is {modality or 'missing'!r}; this algorithm needs MR (brain FLAIR)"
    text = " ".join(header.get(k, "") for k in TEXT_KEYWORDS).strip()
    inversion = _number(header.get("InversionTime"))
    if _FLAIR.search(text):
        t1 = _T1.search(text)
        if t1:
            return f"The series is a T1-weighted FLAIR ({t1.group(0)!r} in {text!r}), not T2 FLAIR"
        if inversion is not None and inversion < MIN_FLAIR_INVERSION_MS:
            return (
                f"Inversion time {inversion:.0f} ms is too short for FLAIR "
                f"(at least {MIN_FLAIR_INVERSION_MS:.0f} ms nulls CSF)"
            )
        return ""
    other = _OTHER.search(text)
    if other:
        return f"The series is not a FLAIR: {other.group(0)!r} in its description {text!r}"
    if inversion is not None and inversion < MIN_FLAIR_INVERSION_MS:
        return (
            f"Inversion time {inversion:.0f} ms is not a fluid-attenuating inversion "
            f"(FLAIR needs at least {MIN_FLAIR_INVERSION_MS:.0f} ms)"
        )
    sequence = header.get("ScanningSequence", "").upper()
    if inversion is None and sequence and "IR" not in sequence.split("\\"):
        return f"ScanningSequence {sequence!r} has no inversion recovery (IR); FLAIR needs one"
    return ""


def check_geometry(array: npt.NDArray[np.float32], affine: npt.NDArray[np.float64]) -> str:
    """Why the volume cannot be read by the model, or "" if it can."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or np.any(spacing <= 0):
        return "The volume geometry is invalid (degenerate affine)"
    n_slices = array.shape[0]
    if n_slices < MIN_SLICES:
        return f"Only {n_slices} slices; at least {MIN_SLICES} are needed to cover the brain"
    # Extent of the volume along the patient's axes (left-right, front-back, head-feet), in mm,
    # voxel edges included: the same for an axial stack and a sagittal 3-D volume.
    extent = np.abs(affine[:3, :3]) @ np.array(array.shape, dtype=np.float64)
    if extent[2] < MIN_Z_EXTENT_MM:
        return (
            f"The volume covers {extent[2]:.0f} mm head to feet; at least "
            f"{MIN_Z_EXTENT_MM:.0f} mm of brain are needed"
        )
    if spacing[0] > MAX_SLICE_SPACING_MM:
        return f"Slice spacing {spacing[0]:.1f} mm exceeds {MAX_SLICE_SPACING_MM} mm"
    if max(spacing[1], spacing[2]) > MAX_PIXEL_SPACING_MM:
        return f"Pixel spacing {max(spacing[1:]):.2f} mm exceeds {MAX_PIXEL_SPACING_MM} mm"
    tilt = preprocess.axial_tilt_deg(affine)
    if tilt > preprocess.MAX_AXIAL_TILT_DEG and not preprocess.is_isotropic(affine):
        return (
            f"The series is not axial (slice normal {tilt:.0f} deg from the head-feet axis) "
            "and not an isotropic 3-D volume that could be reformatted"
        )
    if min(extent[0], extent[1]) < MIN_FIELD_OF_VIEW_MM:
        return (
            f"Field of view {extent[0]:.0f} x {extent[1]:.0f} mm (left-right x front-back) is "
            f"smaller than {MIN_FIELD_OF_VIEW_MM:.0f} mm: not a whole head"
        )
    if not np.isfinite(array).all():
        return "The volume contains non-finite values"
    if float(array.max()) <= float(array.min()):
        return "The volume is blank (one value everywhere)"
    return ""
