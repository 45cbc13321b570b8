"""The algorithm plugin contract: what a plugin receives, what it returns, who it is.

Plugins see arrays with geometry and return typed findings. They never read or write DICOM,
touch files or the network, or mint UIDs: the router loads the volume and ``dicom_sr`` writes
every output. An empty finding list with verdict ``ABSENT`` is an explicit negative, never
silence.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Code:
    """A coded concept (value, coding scheme designator, meaning), e.g. SCT 786838002."""

    value: str
    scheme_designator: str
    meaning: str

    def __post_init__(self) -> None:
        for name in ("value", "scheme_designator", "meaning"):
            if not getattr(self, name):
                raise ValueError(f"Code.{name} must not be empty")


class Purpose(enum.Enum):
    """What an algorithm's series are: patients' (clinical) or quality control (phantoms)."""

    CLINICAL = "clinical"
    QUALITY_CONTROL = "quality_control"


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who made a result. Becomes TID 4019 and Contributing Equipment in every output."""

    name: str
    """Registry key used in the routing YAML (``run: lung_nodule``)."""
    display_name: str
    version: str
    manufacturer: str
    device_uid: str
    """A DICOM UID fixed for this algorithm version (Contributing Equipment Device UID)."""
    modalities: frozenset[str]
    intended_use: str
    max_runtime_s: float
    target: Code
    """What the algorithm looks for; the study-level Present/Absent statement is about this."""
    clinical_use: bool = False
    """False for models not validated on patients: outputs say "not for clinical use"."""
    purpose: Purpose = Purpose.CLINICAL
    """CLINICAL: reads patients' images, never a QA or phantom series; QUALITY_CONTROL: reads
    QA and phantom series only, and its results raise no clinical flag (router.route)."""
    parameters: Mapping[str, float] = field(default_factory=dict)
    """Site parameters the algorithm takes and their defaults (``algorithms.<name>.parameters``
    in the routing YAML overrides them; check-config refuses other names)."""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"AlgorithmInfo.name {self.name!r} must be a Python identifier")
        if not self.modalities:
            raise ValueError("AlgorithmInfo.modalities must name at least one modality")
        if self.max_runtime_s <= 0:
            raise ValueError("AlgorithmInfo.max_runtime_s must be positive")
        if not all(part.isdigit() for part in self.device_uid.split(".")):
            raise ValueError(f"AlgorithmInfo.device_uid {self.device_uid!r} is not a DICOM UID")


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of a volume: index order (slice, row, column), affine to patient LPS in mm.

    ``affine @ [k, i, j, 1]`` gives the LPS position of the centre of voxel (k, i, j).
    """

    affine: npt.NDArray[np.float64]
    shape: tuple[int, int, int]
    frame_of_reference_uid: str

    def __post_init__(self) -> None:
        if self.affine.shape != (4, 4):
            raise ValueError("VolumeGeometry.affine must be 4x4")

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Distance between voxel centres along (slice, row, column), in mm."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    def to_lps(self, index: tuple[float, float, float]) -> tuple[float, float, float]:
        point = self.affine @ np.array([index[0], index[1], index[2], 1.0])
        return (float(point[0]), float(point[1]), float(point[2]))


@dataclass(frozen=True)
class SeriesInput:
    """One selected series as a volume: ``array`` is (slices, rows, columns), modality values
    applied (Hounsfield units for CT), float32."""

    series_instance_uid: str
    array: npt.NDArray[np.float32]
    geometry: VolumeGeometry
    header: Mapping[str, str]
    """A frozen subset of header values as strings (Modality, BodyPartExamined, ...)."""

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError("SeriesInput.array must be 3-D (slices, rows, columns)")
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError("SeriesInput.array shape does not match its geometry")
        object.__setattr__(self, "header", MappingProxyType(dict(self.header)))


@dataclass(frozen=True)
class PriorFinding:
    """A finding of radrouter's own earlier result on a prior exam, for follow-up algorithms.

    A plugin that recognises the same lesion in the current exam reuses ``tracking_id``; the
    writer then reuses ``tracking_uid`` so the finding is tracked across exams (TID 4108).
    """

    tracking_id: str
    tracking_uid: str
    finding_type: Code
    centre_lps: tuple[float, float, float]
    """Centre of the finding in the prior exam's patient coordinates (LPS, mm)."""
    volume_mm3: float | None = None


@dataclass(frozen=True)
class PriorStudy:
    """An earlier exam of the same patient: its matching series and, when radrouter processed
    it before, the findings of that result."""

    study_instance_uid: str
    series: SeriesInput
    study_date: str = ""
    """DICOM DA (YYYYMMDD), or empty when unknown."""
    findings: tuple[PriorFinding, ...] = ()


@dataclass(frozen=True)
class StudyInput:
    """What a plugin runs on: the selected series and, for follow-up algorithms, priors
    (most recent first)."""

    study_instance_uid: str
    series: SeriesInput
    priors: tuple[PriorStudy, ...] = ()
    threshold: float | None = None
    """The site's operating point (``algorithms.<name>.threshold`` in the routing YAML, or its
    ``thresholds_by_model`` entry for this scanner). ``None``: use the plugin's own default."""
    parameters: Mapping[str, float] = field(default_factory=dict)
    """The site's values of the algorithm's parameters (``AlgorithmInfo.parameters``), each
    given or defaulted."""

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"StudyInput.threshold {self.threshold} is outside [0, 1]")


class Verdict(enum.Enum):
    """Study-level statement about the algorithm's target. Never implicit."""

    PRESENT = "present"
    ABSENT = "absent"
    NOT_ASSESSED = "not_assessed"


@dataclass(frozen=True)
class Measurement:
    """A numeric measurement with a coded name and a UCUM unit."""

    name: Code
    value: float
    unit: Code


@dataclass(frozen=True)
class ImageRegion:
    """A 2-D region on one slice of the input volume: polyline of (column, row) pixel points,
    closed (first point repeated last), as DICOM SCOORD POLYLINE wants."""

    slice_index: int
    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.points) < 4 or self.points[0] != self.points[-1]:
            raise ValueError("ImageRegion.points must be a closed polyline of >= 3 vertices")


@dataclass(frozen=True)
class Qualifier:
    """A coded qualitative evaluation of a finding, e.g. (Laterality, Right) or
    (Change, New). Written into the SR as a CODE content item."""

    name: Code
    value: Code


@dataclass(frozen=True)
class Finding:
    """One thing the algorithm found, in voxel coordinates of the input volume."""

    finding_type: Code
    probability: float
    centre_voxel: tuple[float, float, float]
    region: ImageRegion
    measurements: tuple[Measurement, ...] = ()
    finding_site: Code | None = None
    tracking_id: str = ""
    """Human-readable tracking identifier, unique within the result (e.g. "Nodule 1")."""
    mask: npt.NDArray[np.bool_] | None = field(default=None, compare=False, repr=False)
    """Voxels of the finding, the input volume's shape; becomes a SEG segment."""
    qualifiers: tuple[Qualifier, ...] = ()
    """Coded evaluations beyond type and site: laterality, level, change since the prior."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Finding.probability {self.probability} is outside [0, 1]")


@dataclass(frozen=True)
class AlgorithmResult:
    """A plugin's answer. ``findings`` empty and verdict ABSENT states a negative."""

    verdict: Verdict
    findings: tuple[Finding, ...] = ()
    reason: str = ""
    """Why NOT_ASSESSED (required then), or a short summary otherwise."""
    probability: float | None = None
    """Study-level probability of the target (e.g. PE present), when the model gives one."""
    measurements: tuple[Measurement, ...] = ()
    """Study-level measurements (lesion count, total lesion volume, new lesions, ...)."""

    def __post_init__(self) -> None:
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"AlgorithmResult.probability {self.probability} is outside [0, 1]")
        if self.verdict is Verdict.PRESENT and not self.findings and self.probability is None:
            raise ValueError(
                "AlgorithmResult: verdict PRESENT needs a finding or a study-level probability"
            )
        if self.verdict is not Verdict.PRESENT and self.findings:
            raise ValueError(f"AlgorithmResult: verdict {self.verdict.value} with findings")
        if self.verdict is Verdict.NOT_ASSESSED and not self.reason:
            raise ValueError("AlgorithmResult: verdict NOT_ASSESSED needs a reason")


@runtime_checkable
class Algorithm(Protocol):
    """An inference plugin. ``load`` is called once by the runtime; ``run`` many times."""

    info: ClassVar[AlgorithmInfo]

    def load(self, device: str) -> None:
        """Load weights onto ``device`` ("cpu" or "cuda") and warm up."""
        ...

    def run(self, study: StudyInput) -> AlgorithmResult:
        """Pure inference: no I/O, no network, no UIDs."""
        ...
