"""A manifest's preprocessing: volume -> model inputs, and the grid that maps outputs back.

Order: resample (linear), window or clip, normalise, pad, layout. Every step is plain numpy so
that tests can check it against a reference written independently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from algorithms.manifest.schema import (
    Layout,
    MinMaxNormalisation,
    Preprocessing,
    ProcessingMode,
    ScaleNormalisation,
    ZScoreNormalisation,
)

FloatArray = npt.NDArray[np.float32]
Interpolation = Literal["linear", "nearest"]


@dataclass(frozen=True)
class AxisMap:
    """One axis between the input and the model grid: model index ``m`` sits at input index
    ``origin + m * step`` (voxel centres)."""

    input_size: int
    size: int
    """Model-grid size along this axis, before padding."""
    origin: float = 0.0
    step: float = 1.0

    def __post_init__(self) -> None:
        if self.input_size < 1 or self.size < 1:
            raise ValueError("AxisMap sizes must be at least 1")
        if self.step < 0 or (self.step == 0 and self.size > 1):
            raise ValueError("AxisMap.step must be positive (zero only for a one-voxel axis)")

    @classmethod
    def identity(cls, size: int) -> AxisMap:
        return cls(size, size)

    @classmethod
    def for_spacing(cls, input_size: int, input_mm: float, model_mm: float) -> AxisMap:
        """Resample from ``input_mm`` to ``model_mm`` spacing, covering the same extent."""
        if input_mm <= 0 or model_mm <= 0:
            raise ValueError("spacings must be positive")
        step = model_mm / input_mm
        size = math.floor((input_size - 1) / step + 1e-9) + 1
        return cls(input_size, size, 0.0, step)

    @classmethod
    def for_size(cls, input_size: int, size: int) -> AxisMap:
        """Resample to ``size`` samples, first and last on the first and last input voxel."""
        if size == 1:
            return cls(input_size, 1, (input_size - 1) / 2.0, 0.0)
        return cls(input_size, size, 0.0, (input_size - 1) / (size - 1))

    @property
    def is_identity(self) -> bool:
        return self.size == self.input_size and self.origin == 0.0 and self.step == 1.0

    def to_input(self, model_index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return self.origin + np.asarray(model_index, dtype=np.float64) * self.step

    def input_span(self, model_low: int, model_high: int) -> slice:
        """The input indices that interpolation from model voxels ``model_low..model_high``
        (inclusive) and their neighbours can reach."""
        if self.step == 0.0:
            return slice(0, self.input_size)
        start = math.ceil(self.origin + (model_low - 1) * self.step)
        stop = math.floor(self.origin + (model_high + 1) * self.step) + 1
        return slice(max(0, start), min(self.input_size, stop))

    def to_model(self, input_index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        position = np.asarray(input_index, dtype=np.float64)
        if self.step == 0.0:
            return np.zeros_like(position)
        return (position - self.origin) / self.step


@dataclass(frozen=True)
class ModelGrid:
    """How the input volume (slice, row, column) maps onto the model grid. In the 2-D modes the
    slice axis is the identity (each slice is its own model input)."""

    axes: tuple[AxisMap, AxisMap, AxisMap]
    padded: tuple[int, ...]
    """Spatial size of one model input after padding: (D, H, W) or (H, W)."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """Model-grid shape before padding, (slice, row, column)."""
        return (self.axes[0].size, self.axes[1].size, self.axes[2].size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.axes[0].input_size, self.axes[1].input_size, self.axes[2].input_size)


@dataclass(frozen=True)
class ModelBatch:
    """One model input array and, in the 2-D modes, the input slice of each batch item."""

    array: FloatArray
    slice_indices: tuple[int, ...]


def _affine(
    array: FloatArray,
    scale: Sequence[float],
    offset: Sequence[float],
    shape: Sequence[int],
    interpolation: Interpolation,
) -> FloatArray:
    """Output index ``o`` takes ``array`` at ``scale * o + offset`` per axis: linear between
    neighbours (or the nearest voxel), positions outside the array clamped to its edge."""
    resampled: FloatArray = ndimage.affine_transform(
        array.astype(np.float32, copy=False),
        np.asarray(scale, dtype=np.float64),
        offset=np.asarray(offset, dtype=np.float64),
        output_shape=tuple(int(n) for n in shape),
        order=1 if interpolation == "linear" else 0,
        mode="nearest",
        prefilter=False,
        output=np.float32,
    )
    return resampled


def to_model_grid(
    array: FloatArray, maps: Sequence[AxisMap], interpolation: Interpolation = "linear"
) -> FloatArray:
    """Resample the last ``len(maps)`` axes of ``array`` from the input to the model grid."""
    if all(axis_map.is_identity for axis_map in maps):
        return array.astype(np.float32, copy=False)
    lead = array.ndim - len(maps)
    return _affine(
        array,
        [1.0] * lead + [m.step for m in maps],
        [0.0] * lead + [m.origin for m in maps],
        (*array.shape[:lead], *(m.size for m in maps)),
        interpolation,
    )


def to_input_grid(
    array: FloatArray,
    maps: Sequence[AxisMap],
    interpolation: Interpolation = "linear",
    box: Sequence[slice] | None = None,
) -> FloatArray:
    """Resample the last ``len(maps)`` axes of ``array`` (on the model grid, unpadded) back
    onto the input grid, or onto the part of it that ``box`` (input index ranges) selects."""
    spans = list(box) if box is not None else [slice(0, m.input_size) for m in maps]
    lead = array.ndim - len(maps)
    scale = [1.0] * lead + [1.0 / m.step if m.step else 0.0 for m in maps]
    offset = [0.0] * lead + [
        (span.start - m.origin) / m.step if m.step else 0.0
        for span, m in zip(spans, maps, strict=True)
    ]
    shape = (*array.shape[:lead], *(span.stop - span.start for span in spans))
    return _affine(array, scale, offset, shape, interpolation)


def plan_grid(
    spec: Preprocessing, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]
) -> ModelGrid:
    """The model grid for a volume of ``shape`` and ``spacing_mm`` (slice, row, column)."""
    spatial = spec.mode.spatial_dims
    maps = [AxisMap.identity(n) for n in shape]
    resample = spec.resample
    if resample is not None:
        for offset, axis in enumerate(range(3 - spatial, 3)):
            if resample.spacing_mm is not None:
                maps[axis] = AxisMap.for_spacing(
                    shape[axis], spacing_mm[axis], resample.spacing_mm[offset]
                )
            elif resample.size is not None:
                maps[axis] = AxisMap.for_size(shape[axis], resample.size[offset])
    multiple = spec.pad_to_multiple
    padded = tuple(-(-maps[axis].size // multiple) * multiple for axis in range(3 - spatial, 3))
    return ModelGrid((maps[0], maps[1], maps[2]), padded)


def apply_intensity(array: FloatArray, spec: Preprocessing) -> FloatArray:
    """Window or clip, then normalise (over the whole of ``array``); a new float32 array."""
    values = array.astype(np.float32, copy=True)
    clip = spec.clip_range
    if clip is not None:
        np.clip(values, clip[0], clip[1], out=values)
    method = spec.normalise
    if isinstance(method, MinMaxNormalisation):
        low, high = float(values.min()), float(values.max())
        out_low, out_high = method.range
        if high > low:
            values -= np.float32(low)
            values *= np.float32((out_high - out_low) / (high - low))
            values += np.float32(out_low)
        else:
            values.fill(out_low)
    elif isinstance(method, ZScoreNormalisation):
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        values -= np.float32(mean)
        if std > 0:
            values /= np.float32(std)
    elif isinstance(method, ScaleNormalisation):
        values *= np.float32(method.scale)
        values += np.float32(method.offset)
    return values


def pad_to(array: FloatArray, size: Sequence[int]) -> FloatArray:
    """Pad the last ``len(size)`` axes at their end, repeating the edge value."""
    lead = array.ndim - len(size)
    pads = [(0, 0)] * lead + [(0, s - n) for s, n in zip(size, array.shape[lead:], strict=True)]
    if not any(after for _, after in pads):
        return array
    padded: FloatArray = np.pad(array, pads, mode="edge")
    return padded


def arrange(items: FloatArray, layout: Layout, channels: int) -> FloatArray:
    """(batch, *spatial) -> the model's layout with ``channels`` copies of the grey values."""
    axis = items.ndim if layout.channels_last else 1
    arranged = np.expand_dims(items, axis)
    if channels > 1:
        arranged = np.repeat(arranged, channels, axis=axis)
    return np.ascontiguousarray(arranged, dtype=np.float32)


def prepare(
    volume: FloatArray, spacing_mm: tuple[float, float, float], spec: Preprocessing
) -> tuple[ModelGrid, list[ModelBatch]]:
    """The model inputs for ``volume`` (slice, row, column) and the grid they were made on."""
    shape = (int(volume.shape[0]), int(volume.shape[1]), int(volume.shape[2]))
    grid = plan_grid(spec, shape, spacing_mm)
    layout = spec.input_layout
    if spec.mode is ProcessingMode.VOLUME:
        resampled = to_model_grid(volume.astype(np.float32, copy=False), grid.axes)
        ready = pad_to(apply_intensity(resampled, spec), grid.padded)
        return grid, [ModelBatch(arrange(ready[None], layout, spec.channels), ())]
    batches: list[ModelBatch] = []
    for start in range(0, shape[0], spec.batch_size):
        indices = tuple(range(start, min(shape[0], start + spec.batch_size)))
        items = [
            pad_to(
                apply_intensity(
                    to_model_grid(volume[k].astype(np.float32, copy=False), grid.axes[1:]), spec
                ),
                grid.padded,
            )
            for k in indices
        ]
        batches.append(ModelBatch(arrange(np.stack(items), layout, spec.channels), indices))
    return grid, batches
