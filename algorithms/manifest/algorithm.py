"""The Algorithm class a manifest becomes: input checks, preprocessing, model run, findings."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any, ClassVar, cast

import numpy as np
import numpy.typing as npt

from algorithms.backends import BACKENDS, ModelFormat, ModelSession, warm_up
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Finding,
    SeriesInput,
    StudyInput,
    Verdict,
)
from algorithms.manifest.loader import LoadedManifest
from algorithms.manifest.outputs import (
    RunOutputs,
    box_findings,
    classification_scores,
    mask_findings,
    mask_on_input_grid,
)
from algorithms.manifest.preprocess import ModelBatch, ModelGrid, prepare
from algorithms.manifest.schema import (
    BoxesOutput,
    ClassificationOutput,
    Manifest,
    MaskOutput,
    ProcessingMode,
)

LOGGER = logging.getLogger(__name__)

Array = npt.NDArray[Any]

DEFAULT_WARM_UP_SIZE = 32
"""Spatial size of the warm-up input when neither the manifest nor the model fixes it."""


class ManifestAlgorithm:
    """Runs a model described by a manifest. Subclasses, one per manifest, are made by
    :func:`algorithm_class`; ``info`` comes from the manifest."""

    info: ClassVar[AlgorithmInfo]
    loaded_manifest: ClassVar[LoadedManifest]
    backend: ClassVar[str]
    """``onnxruntime`` or ``torch``: what ``device: auto`` is decided for."""

    def __init__(self) -> None:
        self._session: ModelSession | None = None
        self._input_name = ""

    @property
    def manifest(self) -> Manifest:
        return self.loaded_manifest.manifest

    @property
    def device(self) -> str:
        return self._session.device if self._session is not None else ""

    @property
    def provider(self) -> str:
        return self._session.provider if self._session is not None else ""

    @property
    def session(self) -> ModelSession:
        if self._session is None:
            raise RuntimeError(f"{self.info.name}: the model is used before load()")
        return self._session

    def load(self, device: str) -> None:
        """Check the file's checksum, load it with its backend and warm it up."""
        loaded = self.loaded_manifest
        data = loaded.model_path.read_bytes()
        expected = self.manifest.model.sha256
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise RuntimeError(f"{loaded.model_path} no longer matches the sha256 in {loaded.path}")
        session = BACKENDS[loaded.model_format].load(data, device)
        self._input_name = self._choose_input(session)
        self._check_output_names(session)
        seconds = warm_up(session, {self._input_name: self._warm_up_shape(session)})
        self._session = session
        LOGGER.info(
            "manifest model %s %s on %s (%s), warm-up %.3f s",
            self.info.name,
            self.info.version,
            session.device,
            session.provider,
            seconds,
        )

    def _choose_input(self, session: ModelSession) -> str:
        names = [spec.name for spec in session.inputs]
        wanted = self.manifest.model.input
        if wanted is not None:
            if wanted not in names:
                raise ValueError(f"model.input {wanted!r} is not an input of the model: {names}")
            return wanted
        if len(names) != 1:
            raise ValueError(f"the model has inputs {names}; name the one to feed in model.input")
        return names[0]

    def _check_output_names(self, session: ModelSession) -> None:
        declared = [spec.name for spec in session.outputs]
        if not declared:  # TorchScript names its outputs on the first run
            return
        for index, output in enumerate(self.manifest.outputs):
            ref = output.output
            if isinstance(ref, str) and ref not in declared:
                raise ValueError(f"outputs[{index}].output {ref!r} is not one of {declared}")
            if isinstance(ref, int) and ref >= len(declared):
                raise ValueError(
                    f"outputs[{index}].output {ref} asked for; the model has {len(declared)}"
                )

    def _warm_up_shape(self, session: ModelSession) -> tuple[int, ...]:
        """The manifest's ``warm_up_shape``; else the fixed ``resample.size`` (or 32 per axis),
        padded and laid out as ``run`` would, with any dimension the model fixes kept."""
        if self.manifest.model.warm_up_shape is not None:
            return tuple(self.manifest.model.warm_up_shape)
        spec = self.manifest.preprocessing
        dims = spec.mode.spatial_dims
        fixed = spec.resample.size if spec.resample is not None else None
        size = tuple(fixed) if fixed is not None else (DEFAULT_WARM_UP_SIZE,) * dims
        multiple = spec.pad_to_multiple
        padded = tuple(-(-n // multiple) * multiple for n in size)
        shape: tuple[int, ...] = (
            (1, *padded, spec.channels)
            if spec.input_layout.channels_last
            else (1, spec.channels, *padded)
        )
        declared = next(s.shape for s in session.inputs if s.name == self._input_name)
        if declared is not None and len(declared) == len(shape):
            shape = tuple(d if d is not None else n for d, n in zip(declared, shape, strict=True))
        return shape

    # --- running ----------------------------------------------------------------------------

    def run(self, study: StudyInput) -> AlgorithmResult:
        """Check the series, run the model on its inputs, map the outputs to the result."""
        session = self.session
        series = study.series
        problem = check_series(self.manifest, series)
        if problem:
            LOGGER.info("%s not assessed: %s", self.info.name, problem)
            return AlgorithmResult(Verdict.NOT_ASSESSED, reason=problem)
        started = time.perf_counter()
        grid, batches = prepare(
            series.array, series.geometry.spacing_mm, self.manifest.preprocessing
        )
        ran: list[tuple[ModelBatch, dict[str, Array]]] = [
            (batch, session.run({self._input_name: batch.array})) for batch in batches
        ]
        outputs = RunOutputs(tuple(ran), tuple(ran[0][1]))
        result = self._result(outputs, grid, series, study.threshold)
        LOGGER.info(
            "%s: %s, %d finding(s) in %.2f s",
            self.info.name,
            result.verdict.value,
            len(result.findings),
            time.perf_counter() - started,
        )
        return result

    def _result(
        self, outputs: RunOutputs, grid: ModelGrid, series: SeriesInput, operating: float | None
    ) -> AlgorithmResult:
        """The verdict from the classification output when there is one (its threshold, or the
        site's operating point), else from the box and mask findings (likewise)."""
        manifest = self.manifest
        target = manifest.target.code()
        site = manifest.finding_site.code() if manifest.finding_site is not None else None
        classification = next(
            (o for o in manifest.outputs if isinstance(o, ClassificationOutput)), None
        )
        site_threshold = operating if classification is None else None
        findings: list[Finding] = []
        for output in manifest.outputs:
            if isinstance(output, BoxesOutput):
                threshold = output.threshold if site_threshold is None else site_threshold
                findings += box_findings(output, outputs, grid, target, threshold, site)
            elif isinstance(output, MaskOutput):
                threshold = output.threshold if site_threshold is None else site_threshold
                layout = manifest.preprocessing.input_layout
                region = mask_on_input_grid(output, outputs, grid, layout)
                spacing = series.geometry.spacing_mm
                findings += mask_findings(output, region, spacing, target, threshold, site)
        numbered = _numbered(findings)
        if classification is not None:
            threshold = classification.threshold if operating is None else operating
            probability = float(classification_scores(classification, outputs).max())
            stated = f"{target.meaning}: probability {probability:.3f}, threshold {threshold:.3f}"
            if probability >= threshold:
                return AlgorithmResult(Verdict.PRESENT, numbered, stated, probability)
            return AlgorithmResult(Verdict.ABSENT, reason=stated, probability=probability)
        if numbered:
            return AlgorithmResult(Verdict.PRESENT, numbered, f"{len(numbered)} finding(s)")
        return AlgorithmResult(Verdict.ABSENT, reason=f"No {target.meaning.lower()} found")


def _numbered(findings: list[Finding]) -> tuple[Finding, ...]:
    """Tracking identifiers numbered per finding type: "Lesion 1", "Lesion 2", "Mass 1"."""
    counts: dict[str, int] = {}
    numbered: list[Finding] = []
    for finding in findings:
        meaning = finding.finding_type.meaning
        counts[meaning] = counts.get(meaning, 0) + 1
        numbered.append(dataclasses.replace(finding, tracking_id=f"{meaning} {counts[meaning]}"))
    return tuple(numbered)


def check_series(manifest: Manifest, series: SeriesInput) -> str:
    """Why ``series`` is outside what the manifest accepts, or "" when it is inside."""
    accepts = manifest.accepts
    header = series.header
    modality = header.get("Modality", "").strip().upper()
    if modality not in accepts.modalities:
        return f"Modality is {modality or 'missing'!r}; this model needs {accepts.modalities}"
    slices = int(series.array.shape[0])
    if manifest.preprocessing.mode is ProcessingMode.IMAGE and slices != 1:
        return f"This model reads a single image; the series has {slices}"
    if slices < accepts.min_slices:
        return f"Only {slices} slice(s); at least {accepts.min_slices} are needed"
    if accepts.max_slices is not None and slices > accepts.max_slices:
        return f"{slices} slices; at most {accepts.max_slices} are accepted"
    if accepts.body_parts is not None:
        body_part = header.get("BodyPartExamined", "").strip().upper()
        allowed = [part.upper() for part in accepts.body_parts]
        if body_part not in allowed:
            return f"BodyPartExamined is {body_part or 'missing'!r}; this model needs {allowed}"
    if accepts.photometric is not None:
        photometric = header.get("PhotometricInterpretation", "").strip().upper()
        allowed = [value.upper() for value in accepts.photometric]
        if photometric not in allowed:
            return f"PhotometricInterpretation is {photometric or 'missing'!r}; needs {allowed}"
    spacing = series.geometry.spacing_mm
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        return "The volume geometry is invalid (degenerate affine)"
    if accepts.max_slice_thickness_mm is not None:
        thickness = _number(header.get("SliceThickness", "")) or spacing[0]
        if thickness > accepts.max_slice_thickness_mm:
            return f"Slice thickness {thickness:g} mm exceeds {accepts.max_slice_thickness_mm:g} mm"
    if not np.isfinite(np.sum(series.array, dtype=np.float64)):  # one pass, no temporary
        return "The volume contains non-finite values"
    return ""


def _number(text: str) -> float | None:
    try:
        value = float(text.split("\\")[0])
    except ValueError:
        return None
    return value if np.isfinite(value) and value > 0 else None


def algorithm_class(loaded: LoadedManifest) -> type[ManifestAlgorithm]:
    """A new Algorithm class for ``loaded``, registered under the manifest's name."""
    backend = BACKENDS[ModelFormat(loaded.model_format)].name
    attributes = {
        "info": loaded.manifest.algorithm_info(),
        "loaded_manifest": loaded,
        "backend": backend,
        "__doc__": f"{loaded.manifest.display_name} (from {loaded.path.name}).",
        "__module__": __name__,
    }
    made = type(f"Manifest_{loaded.manifest.name}", (ManifestAlgorithm,), attributes)
    return cast(type[ManifestAlgorithm], made)
