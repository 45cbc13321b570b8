"""Radiograph to network input: bone made bright, robust percentile window, letterbox to a
fixed square (numpy/scipy only; shared by training and inference)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

WORKING_SIZE = 448
"""The network sees a WORKING_SIZE x WORKING_SIZE image; the long side of the radiograph
fills it and the short side is padded (letterbox)."""
WINDOW_PERCENTILES = (0.5, 99.5)
"""Values at these percentiles of the image map to 0 and 1."""
PAD_VALUE = 0.0
"""Normalised value of the letterbox padding (black, like a closed electronic shutter)."""
PERCENTILE_SAMPLES = 250_000
"""At most this many pixels (a regular subsample) are used to find the percentiles."""

FloatImage = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Letterbox:
    """Where the network input lies in the radiograph: input (row, column) = origin +
    model (row, column) * step (the same step along both axes)."""

    origin: tuple[float, float]
    step: float
    size: int
    input_shape: tuple[int, int]

    def to_input(self, row: float, col: float) -> tuple[float, float]:
        return (self.origin[0] + row * self.step, self.origin[1] + col * self.step)

    def to_model(self, row: float, col: float) -> tuple[float, float]:
        return ((row - self.origin[0]) / self.step, (col - self.origin[1]) / self.step)


def bone_bright(pixels: npt.NDArray[np.generic], photometric: str) -> FloatImage:
    """Modality values as float32 with bone bright: MONOCHROME1 is inverted."""
    image = np.asarray(pixels, dtype=np.float32)
    if photometric.strip().upper() == "MONOCHROME1":
        image = -image
    return image


def window(image: FloatImage) -> tuple[FloatImage, float]:
    """Map the image's 0.5th-99.5th percentile range to [0, 1] (clipped); also returns the
    range (0 for a constant image)."""
    step = max(1, int(np.sqrt(image.size / PERCENTILE_SAMPLES)))
    sample = image[::step, ::step]
    lo, hi = (float(v) for v in np.percentile(sample, WINDOW_PERCENTILES))
    spread = hi - lo
    if spread <= 0.0:
        return np.zeros_like(image, dtype=np.float32), 0.0
    out = (image - np.float32(lo)) * np.float32(1.0 / spread)
    return np.clip(out, 0.0, 1.0).astype(np.float32), spread


def letterbox(image: FloatImage, size: int = WORKING_SIZE) -> tuple[FloatImage, Letterbox]:
    """Resize so the long side is ``size`` pixels (area-average, then linear), centre it on a
    ``size`` x ``size`` canvas of PAD_VALUE."""
    rows, cols = image.shape
    step = max(rows, cols) / size
    factor = int(step)
    work = image
    if factor >= 2:
        r2, c2 = rows // factor * factor, cols // factor * factor
        work = (
            image[:r2, :c2]
            .reshape(r2 // factor, factor, c2 // factor, factor)
            .mean(axis=(1, 3), dtype=np.float32)
        )
    else:
        factor = 1
    out_rows = max(1, min(size, round(rows / step)))
    out_cols = max(1, min(size, round(cols / step)))
    off_r, off_c = (size - out_rows) // 2, (size - out_cols) // 2
    zoom = step / factor
    resized = ndimage.affine_transform(
        work,
        (zoom, zoom),
        offset=((zoom - 1.0) / 2.0, (zoom - 1.0) / 2.0),
        output_shape=(out_rows, out_cols),
        order=1,
        mode="nearest",
        prefilter=False,
    ).astype(np.float32)
    canvas = np.full((size, size), PAD_VALUE, dtype=np.float32)
    canvas[off_r : off_r + out_rows, off_c : off_c + out_cols] = resized
    # Model pixel (i, j) centre samples input at ((i - off) * step + (step - 1) / 2).
    centre_shift = (step - 1.0) / 2.0
    box = Letterbox(
        origin=(centre_shift - off_r * step, centre_shift - off_c * step),
        step=step,
        size=size,
        input_shape=(rows, cols),
    )
    return canvas, box


def prepare(
    pixels: npt.NDArray[np.generic], photometric: str, size: int = WORKING_SIZE
) -> tuple[FloatImage, Letterbox, float]:
    """Stored or modality values -> (network input, letterbox geometry, value spread)."""
    windowed, spread = window(bone_bright(pixels, photometric))
    canvas, box = letterbox(windowed, size)
    return canvas, box, spread
