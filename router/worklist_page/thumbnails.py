"""Key-image thumbnails: one source frame, windowed and downscaled, with AI outlines, as PNG."""

from __future__ import annotations

import enum
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw
from pydicom.pixels.processing import apply_rescale
from pydicom.pixels.utils import pixel_array
from scipy import ndimage

from dicom_sr.windows import (
    LUNG_WINDOW,
    MEDIASTINAL_WINDOW,
    Window,
    functional_group,
    header_window,
)

REGION_COLOUR = (255, 196, 0)
"""Amber: the finding's region (SR SCOORD polyline or box). Never a grey, so it can be found."""
MASK_COLOUR = (0, 200, 255)
"""Cyan: the outline of the finding's SEG mask."""

DEFAULT_SIZE = 256
MIN_SIZE, MAX_SIZE = 64, 1024
_REGION_LINE_WIDTH = 3
_MASK_LINE_PX_PER_256 = 2
"""Width of a SEG outline per 256 pixels of thumbnail (2 px at 256, 6 at 768): thin enough to
show the edge, wide enough to be seen once the page shrinks the thumbnail."""
_SMALL_REGION_PX = 12
"""Outlines smaller than this (after downscaling) also get a ring around them, to be seen."""
_RING_RADIUS_PX = 10
_LUNG_CONTEXT_MAX_HU = -300.0
"""CT: a region whose surroundings have a median below this sits in lung (lung window)."""
_PERCENTILES = (1.0, 99.0)
_COLOUR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


SOFT_TISSUE_WINDOW = MEDIASTINAL_WINDOW


class WindowChoice(enum.StrEnum):
    """How to window a grey-scale thumbnail.

    ``auto``: for CT, the lung window when the finding's surroundings are lung, else the
    soft-tissue window (a series' header window is chosen for the whole series, and a lung
    nodule vanishes in a mediastinal one); for other modalities the header's first window, else
    the 1st-99th percentiles of the frame.
    """

    AUTO = "auto"
    HEADER = "header"
    LUNG = "lung"
    SOFT_TISSUE = "soft_tissue"
    PERCENTILE = "percentile"


@dataclass(frozen=True)
class Outline:
    """A polyline in the source frame's pixel coordinates: (column, row), as DICOM SCOORD."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError(f"Outline.points needs at least 2 points, got {len(self.points)}")


def render_key_image(
    source: pydicom.Dataset,
    *,
    frame_number: int | None = None,
    regions: Sequence[Outline] = (),
    masks: Sequence[npt.NDArray[np.bool_]] = (),
    size: int = DEFAULT_SIZE,
    window: WindowChoice = WindowChoice.AUTO,
) -> bytes:
    """The PNG of ``source``'s frame (1-based ``frame_number``; None for single-frame images),
    fitted into ``size`` x ``size``, with ``regions`` and the outlines of ``masks`` drawn."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"render_key_image: size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frame_number is not None and not 1 <= frame_number <= frames:
        raise ValueError(
            f"render_key_image: frame_number must be in [1, {frames}], got {frame_number}"
        )
    frame_index = 0 if frame_number is None else frame_number - 1
    rows, columns = int(source.Rows), int(source.Columns)
    for mask in masks:
        if mask.shape != (rows, columns):
            raise ValueError(
                f"render_key_image: a mask has shape {mask.shape}, the frame is {rows}x{columns}"
            )
    image = _display_image(source, frame_index, regions, masks, window)
    scale = min(size / columns, size / rows)
    thumb_size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    image = image.resize(thumb_size, Image.Resampling.LANCZOS).convert("RGB")
    for mask in masks:
        _draw_mask_outline(image, mask)
    draw = ImageDraw.Draw(image)
    sx, sy = thumb_size[0] / columns, thumb_size[1] / rows
    for region in regions:
        scaled = [(x * sx, y * sy) for x, y in region.points]
        draw.line(scaled, fill=REGION_COLOUR, width=_REGION_LINE_WIDTH, joint="curve")
        xs, ys = [p[0] for p in scaled], [p[1] for p in scaled]
        if max(xs) - min(xs) < _SMALL_REGION_PX and max(ys) - min(ys) < _SMALL_REGION_PX:
            cx, cy = (max(xs) + min(xs)) / 2.0, (max(ys) + min(ys)) / 2.0
            r = _RING_RADIUS_PX
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=REGION_COLOUR, width=1)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def choose_window(
    source: pydicom.Dataset,
    values: npt.NDArray[np.float64],
    frame_index: int,
    context: npt.NDArray[np.bool_] | None,
    choice: WindowChoice,
) -> Window:
    """The window for a grey-scale frame of modality values (see ``WindowChoice``)."""
    if choice is WindowChoice.LUNG:
        return LUNG_WINDOW
    if choice is WindowChoice.SOFT_TISSUE:
        return SOFT_TISSUE_WINDOW
    if choice is WindowChoice.PERCENTILE:
        return _percentile_window(values)
    header = header_window(source, frame_index)
    if choice is WindowChoice.HEADER:
        return header or _percentile_window(values)
    if source.get("Modality") == "CT" and context is not None and context.any():
        in_lung = float(np.median(values[context])) < _LUNG_CONTEXT_MAX_HU
        return LUNG_WINDOW if in_lung else SOFT_TISSUE_WINDOW
    return header or _percentile_window(values)


def auto_window_choice(
    source: pydicom.Dataset,
    *,
    frame_number: int | None = None,
    regions: Sequence[Outline] = (),
    masks: Sequence[npt.NDArray[np.bool_]] = (),
) -> WindowChoice:
    """What ``auto`` picks on this frame, as a fixed choice for the frames next to it: the lung
    or soft-tissue window for CT around a finding, else ``auto`` (the header's window)."""
    frame_index = 0 if frame_number is None else frame_number - 1
    stored = pixel_array(source, index=frame_index)
    interpretation = str(source.get("PhotometricInterpretation", "MONOCHROME2"))
    if interpretation in _COLOUR_INTERPRETATIONS or stored.ndim == 3:
        return WindowChoice.AUTO
    values = _modality_values(source, stored, frame_index)
    context = _context_mask(values.shape, regions, masks)
    window = choose_window(source, values, frame_index, context, WindowChoice.AUTO)
    if window == LUNG_WINDOW:
        return WindowChoice.LUNG
    if window == SOFT_TISSUE_WINDOW and source.get("Modality") == "CT":
        return WindowChoice.SOFT_TISSUE
    return WindowChoice.AUTO


# --- helpers ---------------------------------------------------------------------------------


def _display_image(
    source: pydicom.Dataset,
    frame_index: int,
    regions: Sequence[Outline],
    masks: Sequence[npt.NDArray[np.bool_]],
    choice: WindowChoice,
) -> Image.Image:
    stored = pixel_array(source, index=frame_index)
    interpretation = str(source.get("PhotometricInterpretation", "MONOCHROME2"))
    if interpretation in _COLOUR_INTERPRETATIONS or stored.ndim == 3:
        return Image.fromarray(_to_uint8(stored.astype(np.float64)))
    values = _modality_values(source, stored, frame_index)
    context = _context_mask(values.shape, regions, masks)
    window = choose_window(source, values, frame_index, context, choice)
    grey = np.clip((values - window.low) / window.width, 0.0, 1.0)
    if interpretation == "MONOCHROME1":
        grey = 1.0 - grey  # MONOCHROME1: the minimum value is displayed white
    return Image.fromarray(np.round(grey * 255.0).astype(np.uint8))


def _modality_values(
    source: pydicom.Dataset, stored: npt.NDArray[np.generic], frame_index: int
) -> npt.NDArray[np.float64]:
    """Stored values through the Modality LUT / rescale (per frame for enhanced images)."""
    transformation = functional_group(source, frame_index, "PixelValueTransformationSequence")
    if transformation is not None and "RescaleSlope" in transformation:
        slope = float(transformation.RescaleSlope)
        intercept = float(transformation.get("RescaleIntercept", 0.0))
        return stored.astype(np.float64) * slope + intercept
    return np.asarray(apply_rescale(stored, source), dtype=np.float64)


def _context_mask(
    shape: tuple[int, ...],
    regions: Sequence[Outline],
    masks: Sequence[npt.NDArray[np.bool_]],
) -> npt.NDArray[np.bool_] | None:
    """The finding's surroundings: its bounding box grown by its own size on each side."""
    boxes: list[tuple[float, float, float, float]] = []
    for region in regions:
        xs, ys = [p[0] for p in region.points], [p[1] for p in region.points]
        boxes.append((min(xs), min(ys), max(xs), max(ys)))
    for mask in masks:
        rows, cols = np.nonzero(mask)
        if rows.size:
            boxes.append((cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0))
    if not boxes:
        return None
    context = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        grow_x, grow_y = max(x1 - x0, 4.0), max(y1 - y0, 4.0)
        c0, c1 = int(max(0, x0 - grow_x)), int(min(shape[1], x1 + grow_x + 1))
        r0, r1 = int(max(0, y0 - grow_y)), int(min(shape[0], y1 + grow_y + 1))
        context[r0:r1, c0:c1] = True
    return context


def _draw_mask_outline(image: Image.Image, mask: npt.NDArray[np.bool_]) -> None:
    """The mask's border as a band inside it (the tissue around it stays visible)."""
    scaled = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        image.size, Image.Resampling.NEAREST
    )
    inside = np.asarray(scaled) > 0
    width = max(1, round(min(image.size) * _MASK_LINE_PX_PER_256 / 256))
    edge = inside & ~ndimage.binary_erosion(inside, iterations=width, border_value=0)
    pixels = np.array(image)
    pixels[edge] = MASK_COLOUR
    image.paste(Image.fromarray(pixels))


def _to_uint8(values: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    low, high = float(values.min()), float(values.max())
    if high <= 255.0 and low >= 0.0:
        return values.astype(np.uint8)
    return np.round((values - low) / max(high - low, 1e-9) * 255.0).astype(np.uint8)


def _percentile_window(values: npt.NDArray[np.float64]) -> Window:
    low, high = (float(v) for v in np.percentile(values, _PERCENTILES))
    if high <= low:
        return Window(center=low, width=1.0)
    return Window(center=(low + high) / 2.0, width=high - low)
