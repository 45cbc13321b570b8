"""Synthetic chest CT generator: body, ribs, spine, heart, lungs, vessel trees and nodules.

Everything is drawn in millimetres from the centre of voxel (0, 0, 0) along (slice, row,
column) = (z, y, x). Slice index increases towards the head, row index towards the back
(posterior) and column index towards the patient's left, as in an axial CT with an LPS affine
``diag(col, row, slice spacing)`` permuted to (slice, row, column). The patient's right lung
therefore lies at small column indices. Only numpy and scipy are used so that the router's
tests can import this module without torch.

The random anatomy of a seed does not depend on the nodules asked for: the same seed, shape
and spacing always give the same body, lungs and vessels, so :func:`lung_point_mm` can pick a
point in the lungs of a scan before it is generated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

logger = logging.getLogger(__name__)

NoduleKind = Literal["solid", "part_solid"]
Attachment = Literal["none", "vessel", "pleura"]
Vec3 = tuple[float, float, float]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

MIN_NODULE_DIAMETER_MM = 3.0
MAX_NODULE_DIAMETER_MM = 30.0
DEFAULT_ROWS_COLS = 256
"""In-plane matrix when ``shape`` is not given (the body is scaled to fit the field of view)."""
HU_MIN = -1024
HU_MAX = 3071
ATTACHMENT_GAP_MM = 1.0
"""A nodule whose surface comes this close to the lung boundary or a vessel (radius >= 0.75
mm) is labelled juxtapleural or vessel-attached."""


@dataclass(frozen=True)
class NoduleSpec:
    """A nodule a caller asks for."""

    centre_mm: tuple[float, float, float]
    """(z, y, x) in mm from the centre of voxel (0, 0, 0) along (slice, row, column)."""
    diameter_mm: float
    kind: NoduleKind = "solid"


@dataclass(frozen=True)
class NoduleTruth:
    """Ground truth of one nodule in a generated scan."""

    centre_voxel: tuple[float, float, float]
    """(k, i, j) continuous index into the volume."""
    diameter_mm: float
    kind: str
    attachment: Attachment


@dataclass(frozen=True)
class SyntheticChestCT:
    """A generated chest CT and its ground truth."""

    hu: npt.NDArray[np.int16]
    """Hounsfield units, shape (slices, rows, columns)."""
    spacing_mm: tuple[float, float, float]
    """(slice spacing, row spacing, column spacing) in mm."""
    nodules: tuple[NoduleTruth, ...]
    lung_mask: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class _Vessels:
    """Vessel tree segments: tapered cylinders from ``p0`` (radius ``r0``) to ``p1`` (``r1``)."""

    p0: FloatArray  # (n, 3) mm
    p1: FloatArray
    r0: FloatArray  # (n,)
    r1: FloatArray

    def surface_distance(self, point: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Distance from ``point`` to each segment's surface and the radius there."""
        d = self.p1 - self.p0
        length2 = np.maximum(np.einsum("ij,ij->i", d, d), 1e-9)
        t = np.clip(np.einsum("ij,ij->i", point[None, :] - self.p0, d) / length2, 0.0, 1.0)
        closest = self.p0 + t[:, None] * d
        radius = self.r0 + t * (self.r1 - self.r0)
        return np.linalg.norm(point[None, :] - closest, axis=1) - radius, radius


class _Anatomy:
    """Random analytic anatomy of one scan: every organ is an ellipse or circle per slice."""

    def __init__(
        self,
        rng: np.random.Generator,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
    ) -> None:
        self.shape = shape
        self.spacing = spacing
        nz, ny, nx = shape
        dz, dy, dx = spacing
        u = rng.uniform
        self.z_ext = (nz - 1) * dz
        fov_y, fov_x = ny * dy, nx * dx
        self.cx = (nx - 1) * dx / 2 + u(-0.02, 0.02) * fov_x
        self.cy = (ny - 1) * dy / 2 + u(-0.02, 0.02) * fov_y
        self.a_body = min(u(150.0, 180.0), 0.44 * fov_x)
        self.b_body = min(self.a_body * u(0.62, 0.75), 0.42 * fov_y)
        t_fat = self.a_body * u(0.03, 0.12)
        t_muscle = self.a_body * u(0.05, 0.07)
        t_rib = self.a_body * 0.055
        self.a_muscle, self.b_muscle = self.a_body - t_fat, self.b_body - t_fat
        self.a_rib, self.b_rib = self.a_muscle - t_muscle, self.b_muscle - t_muscle
        self.a_in, self.b_in = self.a_rib - t_rib, self.b_rib - t_rib
        a_in, b_in = self.a_in, self.b_in
        # Mediastinum, heart, great vessels, airway, spine.
        self.w_med = min(u(12.0, 20.0), 0.2 * a_in)
        self.heart_x = self.cx + a_in * u(0.12, 0.22)
        self.heart_y = self.cy - b_in * u(0.1, 0.25)
        self.heart_a = a_in * u(0.35, 0.45)
        self.heart_b = b_in * u(0.5, 0.65)
        self.z_base = self.z_ext * u(-0.05, 0.06)
        self.heart_zc = self.z_base + self.z_ext * u(0.2, 0.3)
        self.heart_hh = self.z_ext * u(0.2, 0.28)
        self.r_vb = min(u(13.0, 18.0), 0.22 * b_in)
        self.y_vb = self.cy + b_in - 0.3 * self.r_vb
        self.aorta_r = min(u(10.0, 14.0), 0.15 * b_in)
        self.aorta_x = self.cx + self.r_vb * 0.9 + 2.0
        self.aorta_y = self.y_vb - self.r_vb * 0.7 - self.aorta_r * 0.5
        self.trachea_r = min(u(8.0, 11.0), 0.8 * self.w_med)
        self.trachea_y = self.y_vb - self.r_vb - self.trachea_r - 6.0
        self.z_carina = self.z_base + self.z_ext * u(0.55, 0.65)
        # Lungs.
        self.lung_x = (self.cx - 0.5 * a_in, self.cx + 0.5 * a_in)  # (right, left)
        self.lung_y = self.cy - 0.05 * b_in
        self.z_apex = self.z_ext * u(0.95, 1.12)
        self.taper = self.z_ext * u(0.2, 0.3)
        raise_right = self.z_ext * u(0.0, 0.05)
        self.z_dia = (self.z_base + raise_right, self.z_base)
        self.dome_h = self.z_ext * u(0.12, 0.2)
        self.recess = self.z_ext * u(0.03, 0.08)
        # Ribs: bands in the chest wall, descending anteriorly.
        self.rib_period = u(20.0, 27.0)
        self.rib_width = u(7.0, 10.0)
        self.rib_slope = u(25.0, 45.0)
        self.rib_phase = u(0.0, self.rib_period)
        # Densities (HU).
        self.hu_fat = u(-120.0, -80.0)
        self.hu_muscle = u(35.0, 55.0)
        self.hu_med_fat = u(-100.0, -60.0)
        self.hu_heart = u(30.0, 50.0)
        self.hu_abdomen = (u(50.0, 65.0), u(35.0, 50.0))
        self.hu_rib = u(400.0, 700.0)
        self.hu_cortex = u(700.0, 1000.0)
        self.hu_marrow = u(180.0, 350.0)
        self.hu_lung = u(-880.0, -820.0)
        self.lung_gradient = u(0.0, 50.0)
        self.lung_texture = u(10.0, 25.0)
        self.hu_vessel = u(25.0, 60.0)
        self.noise_sigma = u(10.0, 40.0)

    def lungs(
        self, z: FloatArray | float, y: FloatArray, x: FloatArray
    ) -> tuple[BoolArray, BoolArray]:
        """(right, left) lung membership of points (broadcasting z, y, x)."""
        cx, cy, a_in, b_in = self.cx, self.cy, self.a_in, self.b_in
        inner = ((x - cx) / a_in) ** 2 + ((y - cy) / b_in) ** 2 < 1.0
        blocked = np.abs(x - cx) < self.w_med
        blocked |= (x - cx) ** 2 + (y - self.y_vb) ** 2 < (self.r_vb + 4.0) ** 2
        blocked |= (np.abs(x - cx) < self.r_vb + 4.0) & (y > self.y_vb)
        blocked |= (x - self.aorta_x) ** 2 + (y - self.aorta_y) ** 2 < (self.aorta_r + 2.0) ** 2
        blocked |= self._heart(z, y, x)
        base = inner & ~blocked
        s2 = np.clip((self.z_apex - np.asarray(z)) / self.taper, 0.0, 1.0)
        out: list[BoolArray] = []
        for side in (0, 1):
            lx = self.lung_x[side]
            half = (x < cx) if side == 0 else (x >= cx)
            cap = ((x - lx) / (0.62 * a_in)) ** 2 + ((y - self.lung_y) / (1.1 * b_in)) ** 2
            rl2 = np.clip(((x - lx) / (0.55 * a_in)) ** 2 + ((y - cy) / (0.9 * b_in)) ** 2, 0, 1)
            z_dia = (
                self.z_dia[side]
                + self.dome_h * (1.0 - rl2)
                - self.recess * np.clip((y - cy) / b_in, 0.0, 1.0)
            )
            out.append(base & half & (cap < s2) & (np.asarray(z) > z_dia))
        return out[0], out[1]

    def _heart(self, z: FloatArray | float, y: FloatArray, x: FloatArray) -> BoolArray:
        hz2 = np.clip(1.0 - ((np.asarray(z) - self.heart_zc) / self.heart_hh) ** 2, 0.0, 1.0)
        e = ((x - self.heart_x) / self.heart_a) ** 2 + ((y - self.heart_y) / self.heart_b) ** 2
        result: BoolArray = e < hz2
        return result

    def in_lung(self, points: FloatArray) -> BoolArray:
        """Lung membership of (n, 3) points in mm."""
        right, left = self.lungs(points[:, 0], points[:, 1], points[:, 2])
        return right | left

    def render_slice(self, z: float, y: FloatArray, x: FloatArray) -> tuple[FloatArray, BoolArray]:
        """HU (without vessels, nodules, texture and noise) and lung mask of one slice."""
        cx, cy = self.cx, self.cy
        ex2 = (x - cx) ** 2

        def ellipse(a: float, b: float) -> BoolArray:
            result: BoolArray = ex2 / a**2 + ((y - cy) / b) ** 2 < 1.0
            return result

        body = ellipse(self.a_body, self.b_body)
        muscle = ellipse(self.a_muscle, self.b_muscle)
        rib_outer = ellipse(self.a_rib, self.b_rib)
        inner = ellipse(self.a_in, self.b_in)
        hu = np.full(np.broadcast(y, x).shape, -1000.0)
        # Scanner table under the patient.
        table_y = cy + self.b_body + 12.0
        hu[(y > table_y) & (y < table_y + 6.0) & (np.abs(x - cx) < 0.8 * self.a_body)] = 150.0
        hu[body] = self.hu_fat
        hu[muscle] = self.hu_muscle
        ring = rib_outer & ~inner
        anterior = (cy - y) / self.b_in
        phase = np.mod(z + self.rib_slope * anterior + self.rib_phase, self.rib_period)
        rib = ring & (phase < self.rib_width) & ~((np.abs(x - cx) < 25.0) & (y < cy))
        rib &= ~((np.abs(x - cx) < self.r_vb + 8.0) & (y > cy))
        hu[rib] = self.hu_rib
        sternum = muscle & ~inner & (np.abs(x - cx) < 13.0) & (y < cy)
        if z > self.z_base + 0.05 * self.z_ext:
            hu[sternum] = self.hu_rib * 0.7
        right, left = self.lungs(z, y, x)
        lung = right | left
        heart = self._heart(z, y, x)
        vb2 = ex2 + (y - self.y_vb) ** 2
        vertebra = vb2 < self.r_vb**2
        canal_y = self.y_vb + self.r_vb + 8.0
        canal2 = ex2 + (y - canal_y) ** 2
        arch = canal2 < 11.0**2
        aorta = (x - self.aorta_x) ** 2 + (y - self.aorta_y) ** 2 < self.aorta_r**2
        med = np.abs(x - cx) < self.w_med
        other = inner & ~lung & ~med & ~heart & ~aorta & ~vertebra
        below = (np.asarray(z) < self.z_dia[0] + self.dome_h) | (
            np.asarray(z) < self.z_dia[1] + self.dome_h
        )
        hu[inner] = self.hu_med_fat
        if below:
            hu[other & (x < cx)] = self.hu_abdomen[0]
            hu[other & (x >= cx)] = self.hu_abdomen[1]
        else:
            hu[other] = self.hu_muscle
        hu[heart] = self.hu_heart
        hu[aorta] = self.hu_heart + 5.0
        hu[arch] = self.hu_cortex * 0.6
        hu[canal2 < 7.0**2] = 20.0
        hu[vertebra] = self.hu_marrow
        hu[vertebra & (vb2 > (self.r_vb - 2.0) ** 2)] = self.hu_cortex
        if z > self.z_carina:
            t2 = ex2 + (y - self.trachea_y) ** 2
            hu[t2 < self.trachea_r**2] = self.hu_muscle
            hu[t2 < (self.trachea_r - 2.0) ** 2] = -1000.0
        grad = self.lung_gradient * np.clip((y - cy) / self.b_in, -1.0, 1.0)
        hu = np.where(lung, self.hu_lung + grad, hu)
        return hu, lung


def _unit(v: FloatArray) -> FloatArray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _grow_vessels(anat: _Anatomy, rng: np.random.Generator) -> _Vessels:
    """Branching tapered tubes from each hilum towards the periphery, clipped to the lung."""
    p0s: list[FloatArray] = []
    p1s: list[FloatArray] = []
    r0s: list[float] = []
    r1s: list[float] = []
    z_hilum = anat.z_base + 0.55 * (anat.z_apex - anat.z_base)
    max_per_lung = 1500
    for side, sign in ((0, -1.0), (1, 1.0)):
        hilum = np.array([z_hilum, anat.lung_y, anat.cx + sign * (anat.w_med + 3.0)])
        if side == 1:
            # The heart pushes the left hilum outwards.
            for _ in range(40):
                if anat.in_lung(hilum[None, :])[0]:
                    break
                hilum[2] += 3.0
        elev = np.linspace(-0.85, 0.85, 8)
        azimuth = rng.uniform(-1.4, 1.4, size=8)
        planar = np.sqrt(1.0 - elev**2)
        dirs = np.stack([elev, planar * np.sin(azimuth), sign * planar * np.cos(azimuth)], 1)
        starts = np.repeat(hilum[None, :], 8, axis=0)
        radii = rng.uniform(3.0, 5.0, size=8)
        count = 0
        ts = np.linspace(0.0, 1.0, 9)
        for _gen in range(13):
            if not len(radii) or count >= max_per_lung:
                break
            starts, dirs, radii = (
                starts[: max_per_lung - count],
                dirs[: max_per_lung - count],
                radii[: max_per_lung - count],
            )
            lengths = np.clip(radii * rng.uniform(4.0, 7.0, size=len(radii)), 4.0, 30.0)
            ok = np.zeros(len(radii), dtype=bool)
            inside = np.zeros((len(radii), len(ts)), dtype=bool)
            pts = np.zeros((len(radii), len(ts), 3))
            for _try in range(3):
                todo = ~ok
                if not todo.any():
                    break
                if _try:
                    dirs[todo] = dirs[todo] + 0.8 * rng.normal(size=(int(todo.sum()), 3))
                    dirs[todo] /= np.linalg.norm(dirs[todo], axis=1, keepdims=True)
                p = (
                    starts[todo, None, :]
                    + ts[None, :, None] * (dirs[todo] * lengths[todo, None])[:, None, :]
                )
                ins = anat.in_lung(p.reshape(-1, 3)).reshape(p.shape[:2])
                pts[todo], inside[todo] = p, ins
                ok[todo] = ins[:, 1]
            # Last sample point before the first one outside the lung.
            first_out = np.where(inside.all(axis=1), len(ts), np.argmin(inside, axis=1))
            ends = pts[np.arange(len(radii)), np.maximum(first_out - 1, 0)]
            keep = ok & (np.linalg.norm(ends - starts, axis=1) >= 2.0)
            r_end = radii * 0.93
            p0s.extend(starts[keep])
            p1s.extend(ends[keep])
            r0s.extend(radii[keep])
            r1s.extend(r_end[keep])
            count += int(keep.sum())
            # Children: two (sometimes three) thinner branches turning away from the parent.
            n_children = np.where(rng.uniform(size=len(radii)) < 0.25, 3, 2)
            parent = np.repeat(np.flatnonzero(keep), n_children[keep])
            if not len(parent):
                break
            child_r = r_end[parent] * rng.uniform(0.72, 0.88, size=len(parent))
            pdir = dirs[parent]
            perp = np.cross(pdir, rng.normal(size=(len(parent), 3)))
            perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-9)
            angle = np.radians(rng.uniform(15.0, 45.0, size=len(parent)))
            sgn = np.where(np.arange(len(parent)) % 2 == 0, 1.0, -1.0)
            new_dirs = np.cos(angle)[:, None] * pdir + (sgn * np.sin(angle))[:, None] * perp
            outward = ends[parent] - hilum[None, :]
            outward /= np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-9)
            new_dirs = 0.8 * new_dirs + 0.2 * outward
            new_dirs /= np.maximum(np.linalg.norm(new_dirs, axis=1, keepdims=True), 1e-9)
            big = child_r >= 0.4
            starts, dirs, radii = ends[parent][big], new_dirs[big], child_r[big]
    if not p0s:
        empty = np.zeros((0, 3))
        return _Vessels(empty, empty, np.zeros(0), np.zeros(0))
    return _Vessels(np.array(p0s), np.array(p1s), np.array(r0s), np.array(r1s))


def _bbox(
    lo_mm: FloatArray, hi_mm: FloatArray, spacing: FloatArray, shape: tuple[int, int, int]
) -> tuple[slice, slice, slice] | None:
    lo = np.maximum(np.floor(lo_mm / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(hi_mm / spacing).astype(int) + 1, np.array(shape))
    if np.any(hi <= lo):
        return None
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _axes(
    box: tuple[slice, slice, slice], spacing: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    z = (np.arange(box[0].start, box[0].stop) * spacing[0])[:, None, None]
    y = (np.arange(box[1].start, box[1].stop) * spacing[1])[None, :, None]
    x = (np.arange(box[2].start, box[2].stop) * spacing[2])[None, None, :]
    return z, y, x


def _render_vessels(
    vessels: _Vessels, shape: tuple[int, int, int], spacing: FloatArray
) -> npt.NDArray[np.float32]:
    """Partial-volume fraction of vessel in each voxel."""
    frac_vol = np.zeros(shape, dtype=np.float32)
    edge = float(np.prod(spacing) ** (1.0 / 3.0))
    for p0, p1, r0, r1 in zip(vessels.p0, vessels.p1, vessels.r0, vessels.r1, strict=True):
        pad = max(r0, r1) + edge
        box = _bbox(np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad, spacing, shape)
        if box is None:
            continue
        z, y, x = _axes(box, spacing)
        d = p1 - p0
        length2 = max(float(d @ d), 1e-9)
        qz, qy, qx = z - p0[0], y - p0[1], x - p0[2]
        t = np.clip((qz * d[0] + qy * d[1] + qx * d[2]) / length2, 0.0, 1.0)
        dist = np.sqrt((qz - t * d[0]) ** 2 + (qy - t * d[1]) ** 2 + (qx - t * d[2]) ** 2)
        frac = np.clip((r0 + t * (r1 - r0) - dist) / edge + 0.5, 0.0, 1.0).astype(np.float32)
        view = frac_vol[box]
        np.maximum(view, frac, out=view)
    return frac_vol


@dataclass(frozen=True)
class _Placed:
    centre_mm: FloatArray
    diameter_mm: float
    kind: NoduleKind


def _sphere_dirs(n: int) -> FloatArray:
    """Roughly uniform unit vectors (Fibonacci sphere)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = math.pi * (1.0 + 5.0**0.5) * i
    return np.stack([np.cos(phi), np.sin(phi) * np.sin(theta), np.sin(phi) * np.cos(theta)], 1)


_DIRS = _sphere_dirs(64)


def _attachment(anat: _Anatomy, vessels: _Vessels, centre: FloatArray, radius: float) -> Attachment:
    reach = radius * 1.05 + ATTACHMENT_GAP_MM
    if not anat.in_lung(centre[None, :] + reach * _DIRS).all():
        return "pleura"
    if len(vessels.r0):
        gap, vessel_radius = vessels.surface_distance(centre)
        if np.any((gap < reach) & (vessel_radius >= 0.75)):
            return "vessel"
    return "none"


def _random_lung_points(anat: _Anatomy, rng: np.random.Generator, n: int) -> FloatArray:
    lo = np.array([0.0, anat.cy - anat.b_in, anat.cx - anat.a_in])
    hi = np.array([anat.z_ext, anat.cy + anat.b_in, anat.cx + anat.a_in])
    pts = rng.uniform(lo, hi, size=(max(n * 8, 256), 3))
    inside: FloatArray = pts[anat.in_lung(pts)]
    return inside[:n]


def _propose(
    anat: _Anatomy, vessels: _Vessels, rng: np.random.Generator, target: Attachment, radius: float
) -> FloatArray | None:
    if target == "vessel" and len(vessels.r0):
        big = np.flatnonzero(vessels.r0 >= 1.0)
        if len(big):
            idx = int(rng.choice(big))
            p0, p1 = vessels.p0[idx], vessels.p1[idx]
            base = p0 + rng.uniform(0.15, 0.85) * (p1 - p0)
            perp = _unit(np.cross(p1 - p0, rng.normal(size=3)))
            offset = float(vessels.r0[idx]) + radius * float(rng.uniform(0.3, 0.9))
            centre: FloatArray = base + perp * offset
            return centre
    pts = _random_lung_points(anat, rng, 1)
    if not len(pts):
        return None
    point: FloatArray = pts[0]
    if target != "pleura":
        return point
    direction = _unit(np.array([rng.uniform(-0.2, 0.2), rng.normal(), rng.normal()]))
    steps = pts[0][None, :] + np.arange(0.0, 200.0, 1.0)[:, None] * direction[None, :]
    inside = anat.in_lung(steps)
    if inside.all():
        return None
    boundary: FloatArray = steps[int(np.argmin(inside))]
    return boundary - direction * radius * float(rng.uniform(0.3, 0.85))


def _random_nodules(
    anat: _Anatomy, vessels: _Vessels, rng: np.random.Generator, count: int
) -> list[_Placed]:
    placed: list[_Placed] = []
    targets: list[Attachment] = ["none", "vessel", "pleura"]
    for _ in range(count):
        diameter = float(
            np.exp(rng.uniform(math.log(MIN_NODULE_DIAMETER_MM), math.log(MAX_NODULE_DIAMETER_MM)))
        )
        kind: NoduleKind = "part_solid" if diameter >= 6.0 and rng.uniform() < 0.3 else "solid"
        target = targets[int(rng.choice(3, p=[0.45, 0.3, 0.25]))]
        radius = diameter / 2
        best: FloatArray | None = None
        for _attempt in range(60):
            centre = _propose(anat, vessels, rng, target, radius)
            if centre is None or not anat.in_lung(centre[None, :])[0]:
                continue
            margin = min(radius, 4.0)
            if not margin <= centre[0] <= anat.z_ext - margin:
                continue
            if any(
                np.linalg.norm(centre - p.centre_mm) < radius + p.diameter_mm / 2 + 3.0
                for p in placed
            ):
                continue
            if (
                target != "pleura"
                and not anat.in_lung(centre[None, :] + 0.9 * radius * _DIRS).all()
            ):
                continue
            best = centre
            if _attachment(anat, vessels, centre, radius) == target:
                break
        if best is None:
            logger.debug("could not place a %.1f mm nodule", diameter)
            continue
        placed.append(_Placed(best, diameter, kind))
    return placed


def _soft_ball(
    centre: FloatArray,
    radius: float,
    lobes: FloatArray,
    lobe_dirs: FloatArray,
    shape: tuple[int, int, int],
    spacing: FloatArray,
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.float32]] | None:
    """Partial-volume fraction of a lobulated ball, averaged over sub-slices for thick slices."""
    reach = radius * (1.0 + float(np.abs(lobes).sum())) + 2.0 * float(spacing.max())
    box = _bbox(centre - reach, centre + reach, spacing, shape)
    if box is None:
        return None
    z, y, x = _axes(box, spacing)
    edge = float(spacing[1:].mean())
    n_sub = int(np.clip(round(spacing[0] / edge), 1, 4))
    acc = np.zeros((z.shape[0], y.shape[1], x.shape[2]), dtype=np.float32)
    for s in range(n_sub):
        dz = z + ((s + 0.5) / n_sub - 0.5) * spacing[0] - centre[0]
        dy, dx = y - centre[1], x - centre[2]
        dist = np.sqrt(dz**2 + dy**2 + dx**2) + 1e-6
        shape_factor = np.ones_like(dist, dtype=np.float64)
        for amp, v in zip(lobes, lobe_dirs, strict=True):
            cos = (dz * v[0] + dy * v[1] + dx * v[2]) / dist
            shape_factor = shape_factor + amp * (1.5 * cos**2 - 0.5)
        acc += np.clip((radius * shape_factor - dist) / edge + 0.5, 0.0, 1.0).astype(np.float32)
    acc /= np.float32(n_sub)
    return box, acc


def _paint(
    hu: npt.NDArray[np.float32],
    box: tuple[slice, slice, slice],
    frac: npt.NDArray[np.float32],
    value: float,
) -> None:
    """Mix towards ``value`` by ``frac`` but never make anything darker (vessels stay visible)."""
    view = hu[box]
    np.maximum(view, view + frac * (value - view), out=view)


def _render_nodule(
    hu: npt.NDArray[np.float32], nod: _Placed, rng: np.random.Generator, spacing: FloatArray
) -> None:
    shape = (hu.shape[0], hu.shape[1], hu.shape[2])
    radius = nod.diameter_mm / 2
    lobes = rng.uniform(-0.08, 0.08, size=3)
    lobe_dirs = _sphere_dirs(64)[rng.choice(64, size=3, replace=False)]
    ball = _soft_ball(nod.centre_mm, radius, lobes, lobe_dirs, shape, spacing)
    if ball is None:
        return
    if nod.kind == "solid":
        _paint(hu, ball[0], ball[1], float(rng.uniform(-10.0, 60.0)))
        return
    _paint(hu, ball[0], ball[1], float(rng.uniform(-650.0, -400.0)))
    core_r = radius * float(rng.uniform(0.3, 0.55))
    shift = _unit(rng.normal(size=3)) * radius * float(rng.uniform(0.0, 0.2))
    core = _soft_ball(nod.centre_mm + shift, core_r, lobes, lobe_dirs, shape, spacing)
    if core is not None:
        _paint(hu, core[0], core[1], float(rng.uniform(0.0, 50.0)))


def _resolve_geometry(
    seed: int,
    shape: tuple[int, int, int] | None,
    spacing_mm: tuple[float, float, float] | None,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    rng = np.random.default_rng([seed, 0])
    if spacing_mm is None:
        pixel = float(rng.uniform(0.6, 0.9))
        spacing_mm = (float(rng.uniform(0.8, 3.0)), pixel, pixel)
    else:
        rng.uniform(size=2)
    if shape is None:
        n_slices = max(20, round(float(rng.uniform(160.0, 260.0)) / spacing_mm[0]))
        shape = (n_slices, DEFAULT_ROWS_COLS, DEFAULT_ROWS_COLS)
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    if min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"bad shape {shape} or spacing {spacing_mm}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), spacing


def _anatomy(
    seed: int,
    shape: tuple[int, int, int] | None,
    spacing_mm: tuple[float, float, float] | None,
) -> _Anatomy:
    shape_, spacing = _resolve_geometry(seed, shape, spacing_mm)
    return _Anatomy(np.random.default_rng([seed, 1]), shape_, spacing)


def generate_chest_ct(
    seed: int,
    *,
    shape: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    nodules: int | Sequence[NoduleSpec] | None = None,
) -> SyntheticChestCT:
    """Generate a synthetic chest CT, deterministic in all arguments.

    ``shape`` defaults to (slices covering 160-260 mm, 256, 256); ``spacing_mm`` to random
    (0.8-3.0 mm slices, 0.6-0.9 mm pixels). ``nodules``: None places 0-4 random nodules, an int
    that many random ones (fewer if there is no room), a sequence exactly those specs.
    """
    anat = _anatomy(seed, shape, spacing_mm)
    shape_, spacing_t = anat.shape, anat.spacing
    spacing = np.array(spacing_t)
    vessels = _grow_vessels(anat, np.random.default_rng([seed, 2]))
    nod_rng = np.random.default_rng([seed, 3])
    if nodules is None or isinstance(nodules, int):
        count = int(nod_rng.integers(0, 5)) if nodules is None else nodules
        placed = _random_nodules(anat, vessels, nod_rng, count)
    else:
        placed = []
        for spec in nodules:
            if not MIN_NODULE_DIAMETER_MM / 2 <= spec.diameter_mm <= 2 * MAX_NODULE_DIAMETER_MM:
                raise ValueError(f"nodule diameter {spec.diameter_mm} mm is out of range")
            centre = np.array(spec.centre_mm, dtype=np.float64)
            if not anat.in_lung(centre[None, :])[0]:
                logger.warning("nodule centre %s mm is outside the lungs", spec.centre_mm)
            placed.append(_Placed(centre, float(spec.diameter_mm), spec.kind))

    nz, ny, nx = shape_
    y, x = np.meshgrid(np.arange(ny) * spacing[1], np.arange(nx) * spacing[2], indexing="ij")
    hu = np.empty(shape_, dtype=np.float32)
    lung = np.empty(shape_, dtype=bool)
    for k in range(nz):
        slice_hu, slice_lung = anat.render_slice(k * float(spacing[0]), y, x)
        hu[k] = slice_hu
        lung[k] = slice_lung

    tex_rng = np.random.default_rng([seed, 4])
    coarse = np.maximum(np.ceil(np.array(shape_) * spacing / 6.0).astype(int), 2)
    texture = ndimage.gaussian_filter(tex_rng.standard_normal(tuple(coarse)), 0.8)
    texture *= anat.lung_texture / max(float(texture.std()), 1e-6)
    texture_full = ndimage.zoom(
        texture.astype(np.float32), np.array(shape_) / coarse, order=1, mode="nearest"
    )
    hu += np.where(lung, texture_full[:nz, :ny, :nx], np.float32(0.0))

    vessel_frac = _render_vessels(vessels, shape_, spacing)
    hu += np.where(lung, vessel_frac * (np.float32(anat.hu_vessel) - hu), np.float32(0.0))

    truths: list[NoduleTruth] = []
    for nod in placed:
        _render_nodule(hu, nod, nod_rng, spacing)
        c = nod.centre_mm / spacing
        truths.append(
            NoduleTruth(
                centre_voxel=(float(c[0]), float(c[1]), float(c[2])),
                diameter_mm=nod.diameter_mm,
                kind=nod.kind,
                attachment=_attachment(anat, vessels, nod.centre_mm, nod.diameter_mm / 2),
            )
        )

    noise_rng = np.random.default_rng([seed, 5])
    hu += noise_rng.standard_normal(shape_, dtype=np.float32) * np.float32(anat.noise_sigma)
    out = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return SyntheticChestCT(hu=out, spacing_mm=spacing_t, nodules=tuple(truths), lung_mask=lung)


def right_lung_centre_mm(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]
) -> tuple[float, float, float]:
    """A (z, y, x) mm point inside the right lung for every seed of this shape and spacing.

    It lies at 55 % of the scanned length, mid-way front to back, and at least ~25 mm from the
    lung boundary, so a nodule of up to ~30 mm diameter placed here is inside the right lung.
    """
    return _lung_centre(shape, spacing_mm, -1.0)


def left_lung_centre_mm(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]
) -> tuple[float, float, float]:
    """Like :func:`right_lung_centre_mm`, for the left lung (higher, above the heart)."""
    return _lung_centre(shape, spacing_mm, 1.0, z_fraction=0.7)


def _lung_centre(
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    sign: float,
    z_fraction: float = 0.55,
) -> tuple[float, float, float]:
    nz, ny, nx = shape
    dz, dy, dx = spacing_mm
    a_body = min(165.0, 0.44 * nx * dx)
    return (
        z_fraction * (nz - 1) * dz,
        (ny - 1) * dy / 2,
        (nx - 1) * dx / 2 + sign * 0.4 * a_body,
    )


def lung_point_mm(
    seed: int,
    *,
    shape: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    clearance_mm: float = 10.0,
    draw: int = 0,
) -> tuple[float, float, float]:
    """A random (z, y, x) mm point at least ``clearance_mm`` inside the lungs of the scan that
    :func:`generate_chest_ct` makes with the same seed, shape and spacing. ``draw`` picks
    another point. Raises ValueError if the lungs have no such point."""
    anat = _anatomy(seed, shape, spacing_mm)
    rng = np.random.default_rng([seed, 6, draw])
    for _ in range(50):
        for p in _random_lung_points(anat, rng, 64):
            if not clearance_mm <= p[0] <= anat.z_ext - clearance_mm:
                continue
            if anat.in_lung(p[None, :] + clearance_mm * _DIRS).all():
                return (float(p[0]), float(p[1]), float(p[2]))
    raise ValueError(f"no lung point with {clearance_mm} mm clearance for seed {seed}")
