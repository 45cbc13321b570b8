"""Analytic thorax of the synthetic contrast CT: body, ribs, spine, lungs, heart chambers and
the enhancement of each blood pool, rendered slice by slice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Phase = Literal["ctpa", "venous", "non_contrast"]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

ENHANCEMENT_HU: dict[Phase, tuple[float, float]] = {
    "ctpa": (150.0, 500.0),
    "venous": (100.0, 200.0),
    "non_contrast": (30.0, 55.0),
}
"""Range of the pulmonary artery lumen HU per phase."""


@dataclass
class Enhancement:
    """HU of blood pools and enhancing tissue in one scan."""

    pulmonary: float
    right_heart: float
    systemic: float
    svc: float
    myocardium: float
    liver: float

    @classmethod
    def draw(cls, phase: Phase, rng: np.random.Generator) -> Enhancement:
        u = rng.uniform
        lo, hi = ENHANCEMENT_HU[phase]
        pa = float(u(lo, hi))
        if phase == "ctpa":
            return cls(
                pulmonary=pa,
                right_heart=pa + float(u(-20.0, 80.0)),
                systemic=45.0 + (pa - 45.0) * float(u(0.3, 0.9)),
                svc=float(u(250.0, 1500.0)),
                myocardium=float(u(60.0, 110.0)),
                liver=float(u(55.0, 80.0)),
            )
        if phase == "venous":
            return cls(
                pulmonary=pa,
                right_heart=pa + float(u(-15.0, 15.0)),
                systemic=pa + float(u(-15.0, 25.0)),
                svc=pa + float(u(-30.0, 10.0)),
                myocardium=float(u(90.0, 130.0)),
                liver=float(u(100.0, 135.0)),
            )
        return cls(pa, pa, pa + float(u(-5.0, 5.0)), pa, float(u(38.0, 50.0)), float(u(50.0, 65.0)))


class Thorax:
    """Random analytic thorax: body, ribs, spine, lungs, heart, landmarks of the great vessels."""

    def __init__(
        self, rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, ...]
    ) -> None:
        self.shape = shape
        self.spacing = spacing
        nz, ny, nx = shape
        dz, dy, dx = spacing
        u = rng.uniform
        self.z_ext = (nz - 1) * dz
        fov_y, fov_x = ny * dy, nx * dx
        self.s = s = float(u(0.88, 1.12))
        self.cx = (nx - 1) * dx / 2 + u(-0.02, 0.02) * fov_x
        self.cy = (ny - 1) * dy / 2 + u(-0.02, 0.02) * fov_y
        self.a_body = min(u(150.0, 180.0) * s, 0.45 * fov_x)
        self.b_body = min(self.a_body * u(0.62, 0.74), 0.43 * fov_y)
        t_fat = self.a_body * u(0.03, 0.1)
        t_muscle = self.a_body * u(0.05, 0.07)
        t_rib = self.a_body * 0.055
        self.a_muscle, self.b_muscle = self.a_body - t_fat, self.b_body - t_fat
        self.a_rib, self.b_rib = self.a_muscle - t_muscle, self.b_muscle - t_muscle
        self.a_in, self.b_in = self.a_rib - t_rib, self.b_rib - t_rib
        k = self.a_in / 130.0  # lengths below scale with the chest
        self.k = k
        # Vertical landmarks: the carina, the lung apex, the diaphragm domes.
        self.z_car = max(self.z_ext - 85.0 * k - u(5.0, 35.0), 0.5 * self.z_ext)
        self.z_apex = self.z_car + 85.0 * k
        self.taper = 55.0 * k
        self.z_dome = (self.z_car - u(105.0, 125.0) * k, self.z_car - u(120.0, 140.0) * k)
        self.dome_h = u(25.0, 40.0) * k
        self.recess = u(10.0, 25.0) * k
        # Spine, trachea, mediastinum.
        self.r_vb = 15.0 * k
        self.y_vb = self.cy + self.b_in - 0.3 * self.r_vb
        self.r_tr = u(8.0, 10.0) * k
        self.y_tr = self.y_vb - self.r_vb - 6.0 * k - self.r_tr
        self.w_med = u(15.0, 21.0) * k
        # Heart: an ellipsoid anterior and to the left, with four blood pools.
        self.heart_c = np.array(
            [self.z_car - u(80.0, 95.0) * k, self.cy - u(0.1, 0.22) * self.b_in, self.cx]
        )
        self.heart_c[2] += self.a_in * u(0.12, 0.2)
        self.heart_r = np.array(
            [u(52.0, 62.0) * k, self.b_in * u(0.5, 0.6), self.a_in * u(0.36, 0.44)]
        )
        hc, hr = self.heart_c, self.heart_r
        self.chambers = {
            # name: (centre, semi-axes) in mm
            "rv": (hc + hr * [0.15, -0.4, -0.15], hr * [0.55, 0.42, 0.5]),
            "ra": (hc + hr * [0.3, -0.05, -0.62], hr * [0.45, 0.38, 0.3]),
            "lv": (hc + hr * [-0.05, 0.15, 0.3], hr * [0.55, 0.42, 0.45]),
            "la": (hc + hr * [0.55, 0.62, 0.05], hr * [0.32, 0.28, 0.4]),
        }
        # Descending aorta beside the spine.
        self.aorta_r = u(10.0, 13.0) * k
        self.aorta_x = self.cx + self.r_vb * 0.9 + 2.0 * k
        self.aorta_y = self.y_vb - self.r_vb * 0.7 - self.aorta_r * 0.5
        self.lung_x = (self.cx - 0.5 * self.a_in, self.cx + 0.5 * self.a_in)
        self.lung_y = self.cy - 0.05 * self.b_in
        # Ribs.
        self.rib_period = u(20.0, 27.0)
        self.rib_width = u(7.0, 10.0)
        self.rib_slope = u(25.0, 45.0)
        self.rib_phase = u(0.0, self.rib_period)
        # Tissue densities.
        self.hu_fat = u(-120.0, -80.0)
        self.hu_muscle = u(35.0, 55.0)
        self.hu_med_fat = u(-100.0, -60.0)
        self.hu_rib = u(400.0, 700.0)
        self.hu_cortex = u(700.0, 1000.0)
        self.hu_marrow = u(180.0, 350.0)
        self.hu_lung = u(-880.0, -820.0)
        self.lung_gradient = u(0.0, 50.0)
        self.lung_texture = u(10.0, 25.0)

    def heart(self, z: FloatArray | float, y: FloatArray, x: FloatArray) -> BoolArray:
        c, r = self.heart_c, self.heart_r
        e = ((np.asarray(z) - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2
        result: BoolArray = e + ((x - c[2]) / r[2]) ** 2 < 1.0
        return result

    def lungs(
        self, z: FloatArray | float, y: FloatArray, x: FloatArray
    ) -> tuple[BoolArray, BoolArray]:
        """(right, left) lung membership of points (broadcasting z, y, x)."""
        cx, cy, a_in, b_in = self.cx, self.cy, self.a_in, self.b_in
        zz = np.asarray(z)
        inner = ((x - cx) / a_in) ** 2 + ((y - cy) / b_in) ** 2 < 1.0
        blocked = np.abs(x - cx) < self.w_med
        blocked |= (x - cx) ** 2 + (y - self.y_vb) ** 2 < (self.r_vb + 5.0) ** 2
        blocked |= (np.abs(x - cx) < self.r_vb + 5.0) & (y > self.y_vb)
        blocked |= (x - self.aorta_x) ** 2 + (y - self.aorta_y) ** 2 < (self.aorta_r + 2.0) ** 2
        blocked |= self.heart(z, y, x)
        base = inner & ~blocked
        s2 = np.clip((self.z_apex - zz) / self.taper, 0.0, 1.0)
        out: list[BoolArray] = []
        for side in (0, 1):
            lx = self.lung_x[side]
            half = (x < cx) if side == 0 else (x >= cx)
            cap = ((x - lx) / (0.62 * a_in)) ** 2 + ((y - self.lung_y) / (1.1 * b_in)) ** 2
            rl2 = np.clip(((x - lx) / (0.55 * a_in)) ** 2 + ((y - cy) / (0.9 * b_in)) ** 2, 0, 1)
            z_dia = (
                self.z_dome[side]
                + self.dome_h * (np.sqrt(1.0 - rl2) - 1.0)
                - self.recess * np.clip((y - cy) / b_in, 0.0, 1.0)
            )
            out.append(base & half & (cap < s2) & (zz > z_dia))
        return out[0], out[1]

    def in_lung(self, points: FloatArray, side: int | None = None) -> BoolArray:
        """Lung membership of (n, 3) points in mm (one lung when ``side`` is 0 or 1)."""
        right, left = self.lungs(points[:, 0], points[:, 1], points[:, 2])
        if side is None:
            return right | left
        return right if side == 0 else left


class SlicePainter:
    """Renders axial slices of a thorax fast: everything that does not change with z is
    computed once for the slice grid."""

    def __init__(self, th: Thorax, enh: Enhancement, y: FloatArray, x: FloatArray) -> None:
        self.th, self.enh = th, enh
        cx, cy = th.cx, th.cy
        ex2, ey = (x - cx) ** 2, y - cy

        def ellipse(a: float, b: float) -> BoolArray:
            result: BoolArray = ex2 / a**2 + (ey / b) ** 2 < 1.0
            return result

        inner = ellipse(th.a_in, th.b_in)
        muscle = ellipse(th.a_muscle, th.b_muscle)
        base = np.full(y.shape, -1000.0, dtype=np.float32)
        table_y = cy + th.b_body + 12.0
        base[(y > table_y) & (y < table_y + 6.0) & (np.abs(x - cx) < 0.8 * th.a_body)] = 150.0
        base[ellipse(th.a_body, th.b_body)] = th.hu_fat
        base[muscle] = th.hu_muscle
        base[inner] = th.hu_med_fat
        self.base = base
        ring = ellipse(th.a_rib, th.b_rib) & ~inner
        ring &= ~((np.abs(x - cx) < 25.0) & (y < cy))
        ring &= ~((np.abs(x - cx) < th.r_vb + 8.0) & (y > cy))
        self.ring = np.flatnonzero(ring)
        self.ring_anterior = (-ey / th.b_in).ravel()[self.ring]
        self.sternum = muscle & ~inner & (np.abs(x - cx) < 13.0) & (y < cy)
        vb2 = ex2 + (y - th.y_vb) ** 2
        canal2 = ex2 + (y - (th.y_vb + th.r_vb + 8.0)) ** 2
        top = np.full(y.shape, np.nan, dtype=np.float32)
        aorta = (x - th.aorta_x) ** 2 + (y - th.aorta_y) ** 2 < th.aorta_r**2
        top[aorta] = enh.systemic
        top[canal2 < 11.0**2] = th.hu_cortex * 0.6
        top[canal2 < 7.0**2] = 20.0
        top[vb2 < th.r_vb**2] = th.hu_marrow
        top[(vb2 < th.r_vb**2) & (vb2 > (th.r_vb - 2.0) ** 2)] = th.hu_cortex
        self.top_mask = ~np.isnan(top)
        self.top = top
        self.abdomen = inner & ~self.top_mask
        self.liver_side = x < cx + 0.2 * th.a_in
        c, r = th.heart_c, th.heart_r
        self.heart_e = ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2
        self.chamber_e = [
            (name, cc, rr, ((y - cc[1]) / rr[1]) ** 2 + ((x - cc[2]) / rr[2]) ** 2)
            for name, (cc, rr) in th.chambers.items()
        ]
        self.lung_hu = (th.hu_lung + th.lung_gradient * np.clip(ey / th.b_in, -1.0, 1.0)).astype(
            np.float32
        )
        # Lungs: (x, y) part of ``Thorax.lungs``; the slice adds apex taper, heart, diaphragm.
        blocked = np.abs(x - cx) < th.w_med
        blocked |= (x - cx) ** 2 + (y - th.y_vb) ** 2 < (th.r_vb + 5.0) ** 2
        blocked |= (np.abs(x - cx) < th.r_vb + 5.0) & (y > th.y_vb)
        blocked |= (x - th.aorta_x) ** 2 + (y - th.aorta_y) ** 2 < (th.aorta_r + 2.0) ** 2
        self.lung_parts = []
        for side in (0, 1):
            lx = th.lung_x[side]
            half = (x < cx) if side == 0 else (x >= cx)
            cap = ((x - lx) / (0.62 * th.a_in)) ** 2 + ((y - th.lung_y) / (1.1 * th.b_in)) ** 2
            rl2 = np.clip(((x - lx) / (0.55 * th.a_in)) ** 2 + (ey / (0.9 * th.b_in)) ** 2, 0, 1)
            z_dia = (
                th.z_dome[side]
                + th.dome_h * (np.sqrt(1.0 - rl2) - 1.0)
                - th.recess * np.clip(ey / th.b_in, 0.0, 1.0)
            )
            self.lung_parts.append((inner & ~blocked & half, cap, z_dia))

    def __call__(self, z: float) -> tuple[npt.NDArray[np.float32], BoolArray]:
        """HU of the slice at ``z`` without tubes, texture and noise, and its lung mask."""
        th, enh = self.th, self.enh
        hu = self.base.copy()
        flat = hu.reshape(-1)
        phase = np.mod(z + th.rib_slope * self.ring_anterior + th.rib_phase, th.rib_period)
        flat[self.ring[phase < th.rib_width]] = th.hu_rib
        if z > th.z_dome[0] - 20.0:
            hu[self.sternum] = th.hu_rib * 0.7
        hz = 1.0 - ((z - th.heart_c[0]) / th.heart_r[0]) ** 2
        heart = self.heart_e < hz
        s2 = float(np.clip((th.z_apex - z) / th.taper, 0.0, 1.0))
        lung = np.zeros(hu.shape, dtype=bool)
        for allowed, cap, z_dia in self.lung_parts:
            lung |= allowed & (cap < s2) & (z > z_dia)
        lung &= ~heart
        if z < max(th.z_dome) + th.dome_h:
            other = self.abdomen & ~lung & ~heart
            hu[other & self.liver_side] = enh.liver
            hu[other & ~self.liver_side] = enh.liver - 15.0
        if hz > 0:
            hu[heart] = enh.myocardium
            for name, cc, rr, e in self.chamber_e:
                cz = 1.0 - ((z - cc[0]) / rr[0]) ** 2
                if cz > 0:
                    blood = enh.right_heart if name in ("rv", "ra") else enh.systemic
                    hu[heart & (e < cz)] = blood
        hu[self.top_mask] = self.top[self.top_mask]
        hu[lung] = self.lung_hu[lung]
        return hu, lung
