"""The third-party model manifest as frozen pydantic v2 models; unknown keys are rejected."""

from __future__ import annotations

import enum
import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from algorithms.backends import ModelFormat
from algorithms.contract import AlgorithmInfo, Code

UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
DEVICE_UID_ROOT = "2.25."
"""Derived device UIDs are UUID-derived UIDs (ISO/IEC 9834-8: 2.25.<128-bit integer>)."""

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Text = Annotated[str, Field(min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSpec(Strict):
    """A coded concept, e.g. ``{value: "27925004", scheme_designator: SCT, meaning: Nodule}``."""

    value: Text
    scheme_designator: Text
    meaning: Text

    def code(self) -> Code:
        return Code(self.value, self.scheme_designator, self.meaning)


class ModelFile(Strict):
    """The model file the manifest describes, relative to the manifest's own folder."""

    file: Text
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    """Checked at start-up and at every load: a swapped or truncated file is refused."""
    format: ModelFormat | None = None
    """``onnx`` or ``torchscript``; by default from the suffix (.onnx; .pt/.pth/.ts)."""
    input: str | None = None
    """The model input to feed; by default its first input."""
    warm_up_shape: list[Annotated[int, Field(ge=1)]] | None = None
    """Shape of the zero input of the warm-up run, when neither the model nor a fixed
    ``resample.size`` tells it."""

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else value.lower()


class Accepts(Strict):
    """Which series the model accepts. A series outside these is "not assessed", with why."""

    modalities: list[Annotated[str, Field(pattern=r"^[A-Z0-9]{2,16}$")]] = Field(min_length=1)
    body_parts: list[Text] | None = None
    """BodyPartExamined values accepted (case ignored); ``None`` accepts any or none."""
    min_slices: int = Field(default=1, ge=1)
    max_slices: int | None = Field(default=None, ge=1)
    max_slice_thickness_mm: float | None = Field(default=None, gt=0)
    """Header SliceThickness, or the slice spacing when the header has none."""
    photometric: list[Text] | None = None
    """PhotometricInterpretation values accepted, e.g. ``[MONOCHROME2]``."""

    @model_validator(mode="after")
    def _slice_range(self) -> Accepts:
        if self.max_slices is not None and self.max_slices < self.min_slices:
            raise ValueError("max_slices must be at least min_slices")
        return self


class ProcessingMode(enum.StrEnum):
    """How the series is fed to the model."""

    VOLUME = "volume"
    """The whole series as one 3-D input."""
    SLICES = "slices"
    """Each slice as a 2-D input (in batches of ``batch_size``)."""
    IMAGE = "image"
    """A single 2-D image (a projection radiograph); a series of several images is refused."""

    @property
    def spatial_dims(self) -> int:
        return 3 if self is ProcessingMode.VOLUME else 2


class Layout(enum.StrEnum):
    """Axis order of the model input (and of mask outputs)."""

    NCHW = "NCHW"
    NHWC = "NHWC"
    NCDHW = "NCDHW"
    NDHWC = "NDHWC"

    @property
    def spatial_dims(self) -> int:
        return len(self.value) - 2

    @property
    def channels_last(self) -> bool:
        return self.value.endswith("C")


class Resample(Strict):
    """Resample to a voxel spacing or to a fixed size (linear interpolation). Values are per
    spatial axis: (slice, row, column) in ``volume`` mode, (row, column) otherwise."""

    spacing_mm: list[Annotated[float, Field(gt=0)]] | None = None
    size: list[Annotated[int, Field(ge=1)]] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Resample:
        if (self.spacing_mm is None) == (self.size is None):
            raise ValueError("give exactly one of spacing_mm or size")
        return self

    @property
    def values(self) -> list[float] | list[int]:
        return self.spacing_mm if self.spacing_mm is not None else self.size or []


class Window(Strict):
    """Clip values to [center - width/2, center + width/2] (a display window, e.g. in HU)."""

    center: float
    width: float = Field(gt=0)


class NoNormalisation(Strict):
    method: Literal["none"] = "none"


class MinMaxNormalisation(Strict):
    """Map the input's own minimum..maximum linearly onto ``range``."""

    method: Literal["minmax"]
    range: tuple[float, float] = (0.0, 1.0)

    @field_validator("range")
    @classmethod
    def _increasing(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError("range must be [low, high] with low < high")
        return value


class ZScoreNormalisation(Strict):
    """Subtract the input's mean, divide by its standard deviation."""

    method: Literal["zscore"]


class ScaleNormalisation(Strict):
    """``value * scale + offset`` with fixed numbers."""

    method: Literal["scale"]
    scale: float
    offset: float = 0.0


Normalisation = Annotated[
    NoNormalisation | MinMaxNormalisation | ZScoreNormalisation | ScaleNormalisation,
    Field(discriminator="method"),
]


class Preprocessing(Strict):
    """Array -> model input, in this order: resample, window (or clip), normalise, pad, layout."""

    mode: ProcessingMode
    resample: Resample | None = None
    window: Window | None = None
    clip: tuple[float, float] | None = None
    normalise: Normalisation = NoNormalisation()
    layout: Layout | None = None
    """By default NCDHW in ``volume`` mode, NCHW otherwise."""
    channels: int = Field(default=1, ge=1, le=4)
    """The grey image is copied into each channel (e.g. 3 for ImageNet-style models)."""
    pad_to_multiple: int = Field(default=1, ge=1, le=256)
    """Pad spatial sizes (at the end, repeating the edge) to a multiple of this."""
    batch_size: int = Field(default=1, ge=1, le=256)
    """Slices per model run in ``slices`` mode."""

    @model_validator(mode="after")
    def _consistent(self) -> Preprocessing:
        if self.window is not None and self.clip is not None:
            raise ValueError("give window or clip, not both")
        if self.clip is not None and self.clip[0] >= self.clip[1]:
            raise ValueError("clip must be [low, high] with low < high")
        dims = self.mode.spatial_dims
        if self.resample is not None and len(self.resample.values) != dims:
            raise ValueError(
                f"resample needs {dims} values in {self.mode.value} mode "
                f"({'slice, row, column' if dims == 3 else 'row, column'}); "
                f"got {len(self.resample.values)}"
            )
        if self.layout is not None and self.layout.spatial_dims != dims:
            raise ValueError(f"layout {self.layout.value} does not fit {self.mode.value} mode")
        if self.batch_size > 1 and self.mode is not ProcessingMode.SLICES:
            raise ValueError("batch_size above 1 needs slices mode")
        return self

    @property
    def input_layout(self) -> Layout:
        if self.layout is not None:
            return self.layout
        return Layout.NCDHW if self.mode is ProcessingMode.VOLUME else Layout.NCHW

    @property
    def clip_range(self) -> tuple[float, float] | None:
        if self.window is not None:
            half = self.window.width / 2.0
            return (self.window.center - half, self.window.center + half)
        return self.clip


OutputName = str | Annotated[int, Field(ge=0)]
"""A model output by name, or by position in the model's outputs."""


class ClassificationOutput(Strict):
    """Scores -> the study-level probability of ``target`` and the verdict (score >= threshold).
    In ``slices`` mode the study probability is the highest slice score."""

    kind: Literal["classification"]
    output: OutputName = 0
    index: int = Field(default=0, ge=0)
    """Which score of the output vector (e.g. the class of a softmax) is the target's."""
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    threshold: Probability = 0.5


class BoxesOutput(Strict):
    """Rows of (x1, y1, x2, y2, score[, class]) -> one finding per box (an image region on its
    slice). 2-D modes only."""

    kind: Literal["boxes"]
    output: OutputName = 0
    coordinates: Literal["pixels", "normalised"] = "pixels"
    """``pixels`` of the model input, or fractions of its width and height."""
    threshold: Probability = 0.5
    """Boxes scoring below this are dropped."""
    classes: dict[int, CodeSpec] = Field(default_factory=dict)
    """Class column value -> finding type. A class not listed is dropped. Without ``classes``
    every box is a ``finding`` (or, when not given, the manifest's ``target``)."""
    finding: CodeSpec | None = None
    max_findings: int = Field(default=20, ge=1, le=1000)


class MaskOutput(Strict):
    """A per-voxel probability map or a label map -> connected components -> findings with a
    mask, long axis and volume."""

    kind: Literal["mask"]
    output: OutputName = 0
    encoding: Literal["probability", "labels"] = "probability"
    channel: int = Field(default=0, ge=0)
    """Probability maps with a channel axis: which channel is the finding's."""
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    """Applied to a probability map first (softmax over the channel axis)."""
    voxel_threshold: Probability = 0.5
    """Probability encoding: voxels at or above this form the components."""
    threshold: Probability = 0.5
    """A component is reported when its peak probability reaches this (1 for label maps)."""
    labels: dict[Annotated[int, Field(ge=1)], CodeSpec] = Field(default_factory=dict)
    """Label encoding: label value -> finding type (values not listed are ignored)."""
    finding: CodeSpec | None = None
    """Probability encoding: the finding type; by default the manifest's ``target``."""
    min_volume_mm3: float = Field(default=0.0, ge=0)
    max_findings: int = Field(default=10, ge=1, le=100)

    @model_validator(mode="after")
    def _labels_for_label_maps(self) -> MaskOutput:
        if self.encoding == "labels" and not self.labels:
            raise ValueError("encoding labels needs labels: {value: code, ...}")
        if self.encoding == "probability" and self.labels:
            raise ValueError("labels are for encoding labels; use finding for a probability map")
        return self


OutputMapping = Annotated[
    ClassificationOutput | BoxesOutput | MaskOutput, Field(discriminator="kind")
]


class Manifest(Strict):
    """A model that radrouter runs without code: identity, accepted series, preprocessing,
    and how its outputs become findings."""

    manifest_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    """The algorithm's name in the routing YAML (``run: <name>``)."""
    display_name: Text
    version: Text
    manufacturer: Text
    device_uid: str | None = Field(default=None, pattern=UID_PATTERN, max_length=64)
    """Fixed per model version; derived from manufacturer, name and version when left out."""
    intended_use: Text
    clinical_use: bool = False
    max_runtime_s: float = Field(default=120.0, gt=0)
    target: CodeSpec
    """What the model looks for: the study-level Present/Absent statement is about this."""
    finding_site: CodeSpec | None = None
    model: ModelFile
    accepts: Accepts
    preprocessing: Preprocessing
    outputs: list[OutputMapping] = Field(min_length=1)

    @model_validator(mode="after")
    def _outputs_fit(self) -> Manifest:
        kinds = [output.kind for output in self.outputs]
        if kinds.count("classification") > 1:
            raise ValueError("outputs: at most one classification output (one verdict)")
        if "boxes" in kinds and self.preprocessing.mode is ProcessingMode.VOLUME:
            raise ValueError("outputs: boxes need preprocessing mode slices or image")
        return self

    def algorithm_info(self) -> AlgorithmInfo:
        return AlgorithmInfo(
            name=self.name,
            display_name=self.display_name,
            version=self.version,
            manufacturer=self.manufacturer,
            device_uid=self.device_uid or derived_device_uid(self),
            modalities=frozenset(self.accepts.modalities),
            intended_use=self.intended_use,
            max_runtime_s=self.max_runtime_s,
            target=self.target.code(),
            clinical_use=self.clinical_use,
        )


def derived_device_uid(manifest: Manifest) -> str:
    """A UID fixed by manufacturer, name and version: ``2.25.`` + 128 bits of their SHA-256."""
    identity = "\0".join(
        ("radrouter-manifest", manifest.manufacturer, manifest.name, manifest.version)
    )
    number = int.from_bytes(hashlib.sha256(identity.encode("utf-8")).digest()[:16], "big")
    return f"{DEVICE_UID_ROOT}{number}"
