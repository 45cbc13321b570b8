"""A manifest's output mapping: model outputs -> study probability and findings on the input grid."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import ConvexHull

from algorithms import codes
from algorithms.contract import Code, Finding, ImageRegion, Measurement
from algorithms.manifest.preprocess import Interpolation, ModelBatch, ModelGrid, to_input_grid
from algorithms.manifest.schema import (
    BoxesOutput,
    ClassificationOutput,
    Layout,
    MaskOutput,
    OutputName,
)

LOGGER = logging.getLogger(__name__)

Array = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
PROBABILITY_TOLERANCE = 1e-4
"""Scores this far outside [0, 1] (rounding in the model) are clipped; farther is an error."""


class ManifestRunError(RuntimeError):
    """A model output does not have the shape or values its manifest declares."""


@dataclass(frozen=True)
class RunOutputs:
    """What the model returned for each batch, with the batch it was given."""

    batches: tuple[tuple[ModelBatch, Mapping[str, Array]], ...]
    output_names: tuple[str, ...]
    """The model's outputs in order, for outputs referred to by position."""

    def select(self, ref: OutputName) -> list[tuple[ModelBatch, Array]]:
        if isinstance(ref, int):
            if ref >= len(self.output_names):
                raise ManifestRunError(
                    f"output {ref} asked for, but the model has {len(self.output_names)} "
                    f"output(s): {list(self.output_names)}"
                )
            name = self.output_names[ref]
        else:
            name = ref
        selected: list[tuple[ModelBatch, Array]] = []
        for batch, values in self.batches:
            if name not in values:
                raise ManifestRunError(
                    f"output {name!r} asked for, but the model's outputs are {sorted(values)}"
                )
            selected.append((batch, np.asarray(values[name])))
        return selected


def _activate(values: FloatArray, activation: str, axis: int) -> FloatArray:
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-values.astype(np.float64)))).astype(np.float32)
    if activation == "softmax":
        shifted = values.astype(np.float64) - values.max(axis=axis, keepdims=True)
        exp = np.exp(shifted)
        total: npt.NDArray[np.float64] = exp.sum(axis=axis, keepdims=True)
        return np.asarray(exp / total, dtype=np.float32)
    return values.astype(np.float32, copy=False)


def _as_probability(values: FloatArray, what: str) -> FloatArray:
    if values.size and (
        not np.isfinite(values).all()
        or values.min() < -PROBABILITY_TOLERANCE
        or values.max() > 1.0 + PROBABILITY_TOLERANCE
    ):
        raise ManifestRunError(
            f"{what} has values from {values.min():.4g} to {values.max():.4g}, not "
            "probabilities in [0, 1]; set activation (sigmoid or softmax) in the manifest"
        )
    clipped: FloatArray = np.clip(values, 0.0, 1.0)
    return clipped


# --------------------------------------------------------------------------------------------
# Classification


def classification_scores(spec: ClassificationOutput, outputs: RunOutputs) -> FloatArray:
    """The target's probability for every model input (one per slice in ``slices`` mode)."""
    scores: list[FloatArray] = []
    for batch, raw in outputs.select(spec.output):
        items = batch.array.shape[0]
        if raw.size % items:
            raise ManifestRunError(
                f"classification output has shape {raw.shape}, not one row per input ({items})"
            )
        rows = _activate(raw.reshape(items, -1), spec.activation, axis=1)
        if spec.index >= rows.shape[1]:
            raise ManifestRunError(
                f"classification index {spec.index} asked for, but the output has "
                f"{rows.shape[1]} score(s) per input"
            )
        scores.append(_as_probability(rows[:, spec.index], "classification output"))
    return np.concatenate(scores)


# --------------------------------------------------------------------------------------------
# Boxes


def box_findings(
    spec: BoxesOutput,
    outputs: RunOutputs,
    grid: ModelGrid,
    default_type: Code,
    threshold: float,
    site: Code | None,
) -> list[Finding]:
    """One finding per box scoring at least ``threshold``: its rectangle in the input image's
    (column, row) coordinates (pixel edges, as DICOM SCOORD), on its slice."""
    rows_map, cols_map = grid.axes[1], grid.axes[2]
    height, width = grid.padded
    found: list[Finding] = []
    for batch, raw in outputs.select(spec.output):
        items = len(batch.slice_indices)
        batched = raw.shape[0] if raw.ndim == 3 else 1
        if raw.ndim not in (2, 3) or raw.shape[-1] not in (5, 6) or batched != items:
            raise ManifestRunError(
                f"boxes output has shape {raw.shape}; expected (batch, boxes, 5 or 6): "
                "x1, y1, x2, y2, score[, class]"
            )
        table = raw.reshape(items, -1, raw.shape[-1])
        for item, slice_index in enumerate(batch.slice_indices):
            for row in table[item]:
                x1, y1, x2, y2, score = (float(v) for v in row[:5])
                if not np.isfinite(row[:5]).all() or score < threshold:
                    continue
                finding_type = _box_type(spec, row, default_type)
                if finding_type is None:
                    continue
                if spec.coordinates == "normalised":
                    x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
                # model edge coordinate u -> centre index u - 0.5 -> input centre -> input edge
                c1, c2 = (float(cols_map.to_input(u - 0.5)) + 0.5 for u in (x1, x2))
                r1, r2 = (float(rows_map.to_input(v - 0.5)) + 0.5 for v in (y1, y2))
                c1, c2 = np.clip([c1, c2], 0.0, cols_map.input_size)
                r1, r2 = np.clip([r1, r2], 0.0, rows_map.input_size)
                if c2 <= c1 or r2 <= r1:
                    continue
                points = ((c1, r1), (c2, r1), (c2, r2), (c1, r2), (c1, r1))
                found.append(
                    Finding(
                        finding_type=finding_type,
                        probability=float(min(1.0, max(0.0, score))),
                        centre_voxel=(
                            float(slice_index),
                            (r1 + r2) / 2 - 0.5,
                            (c1 + c2) / 2 - 0.5,
                        ),
                        region=ImageRegion(
                            slice_index,
                            tuple((round(float(c), 2), round(float(r), 2)) for c, r in points),
                        ),
                        finding_site=site,
                    )
                )
    found.sort(key=lambda f: -f.probability)
    return found[: spec.max_findings]


def _box_type(spec: BoxesOutput, row: Array, default_type: Code) -> Code | None:
    if not spec.classes:
        return spec.finding.code() if spec.finding is not None else default_type
    if len(row) < 6:
        raise ManifestRunError("boxes: classes are given but the output has no class column")
    label = round(float(row[5]))
    code = spec.classes.get(label)
    if code is None:
        LOGGER.debug("box of class %d dropped: not in the manifest's classes", label)
        return None
    return code.code()


# --------------------------------------------------------------------------------------------
# Masks


@dataclass(frozen=True)
class MaskRegion:
    """The part of the input grid where a mask output can mark voxels, resampled there."""

    values: FloatArray
    """Probabilities (linear interpolation) or labels (nearest voxel) inside ``box``."""
    box: tuple[slice, slice, slice]
    """Input index ranges (slice, row, column) of ``values``."""
    shape: tuple[int, int, int]
    """The whole input volume's shape."""


def mask_on_input_grid(
    spec: MaskOutput, outputs: RunOutputs, grid: ModelGrid, layout: Layout
) -> MaskRegion | None:
    """The mask output on the input volume's grid, within the box around the model voxels that
    can mark anything (an interpolated value reaches the threshold only next to a model voxel
    that does); ``None`` when no model voxel does."""
    stacked = _model_mask(spec, outputs, grid, layout)
    if spec.encoding == "probability":
        candidate = stacked >= spec.voxel_threshold
    else:
        candidate = np.isin(np.rint(stacked), list(spec.labels))
    if not candidate.any():
        return None
    spans: list[slice] = []
    for axis, axis_map in enumerate(grid.axes):
        present = np.flatnonzero(candidate.any(axis=tuple(a for a in range(3) if a != axis)))
        spans.append(axis_map.input_span(int(present[0]), int(present[-1])))
    box = (spans[0], spans[1], spans[2])
    interpolation: Interpolation = "linear" if spec.encoding == "probability" else "nearest"
    values = to_input_grid(stacked, grid.axes, interpolation, box)
    return MaskRegion(values, box, grid.input_shape)


def _model_mask(
    spec: MaskOutput, outputs: RunOutputs, grid: ModelGrid, layout: Layout
) -> FloatArray:
    """The mask output as one (slice, row, column) volume on the model grid, unpadded."""
    spatial = len(grid.padded)
    pieces: list[FloatArray] = []
    for batch, raw in outputs.select(spec.output):
        items = batch.array.shape[0]
        values = raw.astype(np.float32, copy=False)
        if values.ndim == spatial + 2:  # a channel axis
            axis = values.ndim - 1 if layout.channels_last else 1
            if spec.encoding == "probability":
                values = _activate(values, spec.activation, axis=axis)
                if spec.channel >= values.shape[axis]:
                    raise ManifestRunError(
                        f"mask channel {spec.channel} asked for, output has shape {raw.shape}"
                    )
                values = np.take(values, spec.channel, axis=axis)
            elif values.shape[axis] == 1:
                values = np.take(values, 0, axis=axis)
            else:
                raise ManifestRunError(f"a label map has one channel; output shape {raw.shape}")
        elif values.ndim == spatial + 1:
            if spec.encoding == "probability" and spec.activation == "softmax":
                raise ManifestRunError(
                    f"mask output has shape {raw.shape}: no channel axis to take a softmax over"
                )
            if spec.encoding == "probability":
                values = _activate(values, spec.activation, axis=0)
        else:
            raise ManifestRunError(
                f"mask output has shape {raw.shape}; expected (batch, [channels,] "
                f"{'D, H, W' if spatial == 3 else 'H, W'})"
            )
        if values.shape[0] != items or tuple(values.shape[1:]) != tuple(grid.padded):
            raise ManifestRunError(
                f"mask output has shape {raw.shape}, but the input had {items} item(s) of "
                f"{grid.padded}"
            )
        if spec.encoding == "probability":
            values = _as_probability(values, "mask output")
        pieces.append(values)
    stacked = np.concatenate(pieces) if spatial == 2 else pieces[0][0]
    model_shape = grid.shape
    return np.ascontiguousarray(stacked[: model_shape[0], : model_shape[1], : model_shape[2]])


def mask_findings(
    spec: MaskOutput,
    region: MaskRegion | None,
    spacing_mm: tuple[float, float, float],
    default_type: Code,
    threshold: float,
    site: Code | None,
) -> list[Finding]:
    """Connected components of the mask (on the input grid) -> findings with their mask, long
    axis and volume, the highest peak probability first."""
    if region is None:
        return []
    place = {"origin": tuple(span.start for span in region.box), "shape": region.shape}
    if spec.encoding == "labels":
        labels = np.rint(region.values).astype(np.int64)
        found: list[Finding] = []
        for value, code in sorted(spec.labels.items()):
            found += component_findings(
                labels == value, None, spacing_mm, code.code(), 0.0, spec, site, **place
            )
        found.sort(key=lambda f: -_volume_of(f))
        return found[: spec.max_findings]
    finding_type = spec.finding.code() if spec.finding is not None else default_type
    binary = region.values >= spec.voxel_threshold
    return component_findings(
        binary, region.values, spacing_mm, finding_type, threshold, spec, site, **place
    )


def _volume_of(finding: Finding) -> float:
    return next((m.value for m in finding.measurements if m.name == codes.VOLUME), 0.0)


def component_findings(
    binary: BoolArray,
    probability: FloatArray | None,
    spacing_mm: tuple[float, float, float],
    finding_type: Code,
    threshold: float,
    spec: MaskOutput,
    site: Code | None,
    *,
    origin: tuple[int, ...] = (0, 0, 0),
    shape: tuple[int, int, int] | None = None,
) -> list[Finding]:
    """Findings for the face-connected components of ``binary`` that are at least
    ``spec.min_volume_mm3`` and whose peak ``probability`` (1 without one) reaches
    ``threshold``. ``binary`` may be a crop whose first voxel is ``origin`` of a volume of
    ``shape``; the findings' masks and coordinates are on the whole volume."""
    labels, _ = ndimage.label(binary)
    voxel_mm3 = float(np.prod(spacing_mm))
    full_shape = shape if shape is not None else binary.shape
    candidates: list[tuple[float, int, int, tuple[slice, ...]]] = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        own = labels[box] == label
        voxels = int(own.sum())
        if voxels * voxel_mm3 < spec.min_volume_mm3:
            continue
        peak = 1.0 if probability is None else float(probability[box][own].max())
        if peak < threshold:
            continue
        candidates.append((peak, voxels, label, box))
    candidates.sort(key=lambda c: (-c[0], -c[1]))
    findings: list[Finding] = []
    for peak, voxels, label, box in candidates[: spec.max_findings]:
        own = labels[box] == label
        start = [s.start + o for s, o in zip(box, origin, strict=True)]
        mask = np.zeros(full_shape, dtype=bool)
        mask[tuple(slice(a, a + n) for a, n in zip(start, own.shape, strict=True))] = own
        centre = np.argwhere(own).mean(axis=0) + np.array(start, dtype=np.float64)
        best = int(np.argmax(own.sum(axis=(1, 2))))
        polygon = outline_polygon(own[best], (float(start[1]), float(start[2])))
        findings.append(
            Finding(
                finding_type=finding_type,
                probability=min(1.0, max(0.0, peak)),
                centre_voxel=(float(centre[0]), float(centre[1]), float(centre[2])),
                region=ImageRegion(start[0] + best, polygon),
                measurements=(
                    Measurement(
                        codes.LONG_AXIS,
                        round(long_axis_mm(own, spacing_mm), 2),
                        codes.MILLIMETRE,
                    ),
                    Measurement(codes.VOLUME, round(voxels * voxel_mm3, 2), codes.CUBIC_MILLIMETRE),
                ),
                finding_site=site,
                mask=mask,
            )
        )
    return findings


def _corner_points(plane: BoolArray) -> npt.NDArray[np.float64]:
    """(row, column) corners of the plane's boundary pixels, in pixel-edge coordinates."""
    edge = plane & ~ndimage.binary_erosion(plane)
    pixels = np.argwhere(edge).astype(np.float64)
    corners = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    points: npt.NDArray[np.float64] = (pixels[:, None, :] + corners[None]).reshape(-1, 2)
    return np.unique(points, axis=0)


def outline_polygon(
    plane: BoolArray, offset_rc: tuple[float, float]
) -> tuple[tuple[float, float], ...]:
    """Closed (column, row) polygon around the pixels of ``plane``: the convex hull of their
    outer edges, in image coordinates (pixel edges, as DICOM SCOORD)."""
    points = _corner_points(plane)
    hull = ConvexHull(points)
    ordered = [
        (round(float(points[v, 1] + offset_rc[1]), 2), round(float(points[v, 0] + offset_rc[0]), 2))
        for v in hull.vertices
    ]
    return (*ordered, ordered[0])


def long_axis_mm(mask: BoolArray, spacing_mm: Sequence[float]) -> float:
    """The longest in-plane distance across the mask's pixels (outer edges), on any slice."""
    scale = np.array([spacing_mm[1], spacing_mm[2]], dtype=np.float64)
    best = 0.0
    for plane in mask:
        if not plane.any():
            continue
        points = _corner_points(plane) * scale
        vertices = points[ConvexHull(points).vertices]
        distances = np.sqrt(((vertices[:, None, :] - vertices[None, :, :]) ** 2).sum(-1))
        best = max(best, float(distances.max()))
    return best
