"""Turns the network's fracture-line heatmap into fracture boxes on the radiograph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from algorithms.fracture.preprocess import Letterbox

OUTPUT_STRIDE = 4
"""Network input pixels per heatmap cell along each axis (``network.OUTPUT_STRIDE``)."""
MAX_BOXES = 5
CORE_FRACTION = 0.5
"""A box spans the cells of its component that reach this fraction of the component's peak."""
MIN_BOX_PX = 4.0
"""Smallest box side, in network input pixels."""
GROW_FRACTION = 0.5
"""A region is grown from its cells at or above the threshold through the cells that reach
this fraction of the threshold (hysteresis), so that one fracture line whose heat dips in
the middle is one region and one box, not two."""


@dataclass(frozen=True)
class Box:
    """One detection on the radiograph, in input pixel coordinates (row, column)."""

    probability: float
    row_min: float
    col_min: float
    row_max: float
    col_max: float

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.row_min + self.row_max) / 2.0, (self.col_min + self.col_max) / 2.0)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return (self.row_min, self.col_min, self.row_max, self.col_max)

    def outline(self) -> tuple[tuple[float, float], ...]:
        """Closed 5-point (column, row) polyline around the box."""
        r0, c0, r1, c1 = (round(v, 2) for v in self.extent)
        return ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (row_min, col_min, row_max, col_max) boxes."""
    dr = min(a[2], b[2]) - max(a[0], b[0])
    dc = min(a[3], b[3]) - max(a[1], b[1])
    if dr <= 0 or dc <= 0:
        return 0.0
    inter = dr * dc
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return float(inter / max(area_a + area_b - inter, 1e-9))


def cell_centres(count: int) -> npt.NDArray[np.float64]:
    """Network-input pixel coordinate of the centre of each of ``count`` heatmap cells."""
    index = np.arange(count, dtype=np.float64)
    result: npt.NDArray[np.float64] = (index + 0.5) * OUTPUT_STRIDE - 0.5
    return result


def valid_cells(letterbox: Letterbox, cells: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Heatmap cells whose centre lies on the radiograph (not on the letterbox padding)."""
    rows, cols = letterbox.input_shape
    r_in = letterbox.origin[0] + cell_centres(cells[0]) * letterbox.step
    c_in = letterbox.origin[1] + cell_centres(cells[1]) * letterbox.step
    ok_r = (r_in >= -0.5) & (r_in <= rows - 0.5)
    ok_c = (c_in >= -0.5) & (c_in <= cols - 0.5)
    result: npt.NDArray[np.bool_] = ok_r[:, None] & ok_c[None, :]
    return result


def study_probability(heatmap: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]) -> float:
    """The study-level fracture probability: the strongest heatmap cell on the image."""
    values = heatmap[valid]
    return float(np.clip(values.max(), 0.0, 1.0)) if values.size else 0.0


def decode(
    heatmap: npt.NDArray[np.float32],
    letterbox: Letterbox,
    threshold: float,
    max_boxes: int = MAX_BOXES,
) -> list[Box]:
    """Connected regions of ``heatmap`` (H, W) that reach ``threshold``, strongest first.

    A region is an 8-connected set of cells at or above GROW_FRACTION of ``threshold``
    holding at least one cell at or above ``threshold``. Each region becomes a box around the
    centres of its cells that reach CORE_FRACTION of its peak, mapped to radiograph pixels
    and clipped to the image; its probability is the region's peak.
    """
    valid = valid_cells(letterbox, (int(heatmap.shape[0]), int(heatmap.shape[1])))
    grown = (heatmap >= GROW_FRACTION * threshold) & valid
    labels, _ = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    index = np.unique(labels[(heatmap >= threshold) & valid])
    index = index[index > 0]
    if index.size == 0:
        return []
    peaks = np.asarray(ndimage.maximum(heatmap, labels, index), dtype=np.float64)
    rows_c = cell_centres(heatmap.shape[0])
    cols_c = cell_centres(heatmap.shape[1])
    in_rows, in_cols = letterbox.input_shape
    boxes: list[Box] = []
    for k in np.argsort(-peaks, kind="stable")[:max_boxes]:
        label, peak = int(index[k]), float(peaks[k])
        core = (labels == label) & (heatmap >= CORE_FRACTION * peak)
        ii, jj = np.nonzero(core)
        r0, r1 = float(rows_c[ii.min()]), float(rows_c[ii.max()])
        c0, c1 = float(cols_c[jj.min()]), float(cols_c[jj.max()])
        grow_r = max(0.0, (MIN_BOX_PX - (r1 - r0)) / 2.0)
        grow_c = max(0.0, (MIN_BOX_PX - (c1 - c0)) / 2.0)
        top, left = letterbox.to_input(r0 - grow_r, c0 - grow_c)
        bottom, right = letterbox.to_input(r1 + grow_r, c1 + grow_c)
        box = Box(
            probability=float(np.clip(peak, 0.0, 1.0)),
            row_min=float(np.clip(top, 0.0, in_rows - 1.0)),
            col_min=float(np.clip(left, 0.0, in_cols - 1.0)),
            row_max=float(np.clip(bottom, 0.0, in_rows - 1.0)),
            col_max=float(np.clip(right, 0.0, in_cols - 1.0)),
        )
        if box.row_max > box.row_min and box.col_max > box.col_min:
            boxes.append(box)
    return boxes
