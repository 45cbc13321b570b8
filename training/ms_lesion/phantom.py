"""A synthetic head on a 1 mm grid: scalp, skull, CSF, cortex, white matter, deep grey nuclei,
ventricles, brainstem, cerebellum, orbits - and MS lesions painted into its parenchyma.

The anatomy of a seed is drawn once in a head frame (x towards the patient's left, y
posterior, z superior; mm; origin near the centre of the brain). ``synth`` scans it. numpy and
scipy only.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

logger = logging.getLogger(__name__)

LesionKind = Literal["periventricular", "juxtacortical", "deep", "infratentorial"]
Contrast = Literal["flair", "t2", "t1"]
FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
Vec3 = tuple[float, float, float]

PHANTOM_MM = 1.0
PHANTOM_MIN_XYZ = (-80.0, -110.0, -85.0)
"""Head-frame (x, y, z) of phantom voxel (0, 0, 0); the grid is indexed (z, y, x)."""
PHANTOM_SHAPE = (176, 221, 161)
LESION_KINDS: tuple[LesionKind, ...] = (
    "periventricular",
    "juxtacortical",
    "deep",
    "infratentorial",
)
KIND_WEIGHTS = (0.4, 0.25, 0.2, 0.15)
MIN_LESION_SEMI_AXIS_MM = 1.2
MAX_LESION_SEMI_AXIS_MM = 12.0


class Tissue(enum.IntEnum):
    """Labels of the phantom (and of ``SyntheticFlair.anatomy``)."""

    BACKGROUND = 0
    SCALP = 1
    BONE = 2
    MARROW = 3
    CSF = 4
    VENTRICLE = 5
    CORTEX = 6
    WHITE_MATTER = 7
    DEEP_GREY = 8
    BRAINSTEM = 9
    CEREBELLAR_GREY = 10
    CEREBELLAR_WHITE = 11
    FACE = 12
    ORBITAL_FAT = 13
    GLOBE = 14
    SINUS = 15


PARENCHYMA = (
    Tissue.CORTEX,
    Tissue.WHITE_MATTER,
    Tissue.DEEP_GREY,
    Tissue.BRAINSTEM,
    Tissue.CEREBELLAR_GREY,
    Tissue.CEREBELLAR_WHITE,
)
INFRATENTORIAL = (Tissue.BRAINSTEM, Tissue.CEREBELLAR_GREY, Tissue.CEREBELLAR_WHITE)

# Relative signal (white matter = 1) per tissue and contrast: (low, high) of a uniform draw.
_SIGNAL: dict[Contrast, dict[Tissue, tuple[float, float]]] = {
    "flair": {
        Tissue.SCALP: (0.9, 1.6),
        Tissue.BONE: (0.03, 0.1),
        Tissue.MARROW: (0.5, 1.0),
        Tissue.CSF: (0.05, 0.2),
        Tissue.VENTRICLE: (0.04, 0.15),
        Tissue.CORTEX: (1.12, 1.4),
        Tissue.WHITE_MATTER: (1.0, 1.0),
        Tissue.DEEP_GREY: (1.03, 1.22),
        Tissue.BRAINSTEM: (1.0, 1.15),
        Tissue.CEREBELLAR_GREY: (1.08, 1.35),
        Tissue.CEREBELLAR_WHITE: (0.95, 1.05),
        Tissue.FACE: (0.45, 0.8),
        Tissue.ORBITAL_FAT: (1.2, 1.8),
        Tissue.GLOBE: (0.05, 0.15),
        Tissue.SINUS: (0.0, 0.03),
    },
    "t2": {
        Tissue.SCALP: (0.8, 1.3),
        Tissue.BONE: (0.03, 0.1),
        Tissue.MARROW: (0.5, 0.9),
        Tissue.CSF: (2.5, 3.5),
        Tissue.VENTRICLE: (2.5, 3.5),
        Tissue.CORTEX: (1.2, 1.45),
        Tissue.WHITE_MATTER: (1.0, 1.0),
        Tissue.DEEP_GREY: (1.1, 1.3),
        Tissue.BRAINSTEM: (1.0, 1.15),
        Tissue.CEREBELLAR_GREY: (1.2, 1.4),
        Tissue.CEREBELLAR_WHITE: (0.95, 1.05),
        Tissue.FACE: (0.5, 0.8),
        Tissue.ORBITAL_FAT: (0.9, 1.4),
        Tissue.GLOBE: (2.5, 3.5),
        Tissue.SINUS: (0.0, 0.03),
    },
    "t1": {
        Tissue.SCALP: (1.3, 1.8),
        Tissue.BONE: (0.03, 0.1),
        Tissue.MARROW: (1.0, 1.4),
        Tissue.CSF: (0.2, 0.35),
        Tissue.VENTRICLE: (0.2, 0.35),
        Tissue.CORTEX: (0.62, 0.75),
        Tissue.WHITE_MATTER: (1.0, 1.0),
        Tissue.DEEP_GREY: (0.75, 0.85),
        Tissue.BRAINSTEM: (0.9, 1.0),
        Tissue.CEREBELLAR_GREY: (0.65, 0.78),
        Tissue.CEREBELLAR_WHITE: (0.95, 1.05),
        Tissue.FACE: (0.6, 0.8),
        Tissue.ORBITAL_FAT: (1.4, 1.9),
        Tissue.GLOBE: (0.2, 0.35),
        Tissue.SINUS: (0.0, 0.03),
    },
}
_LESION_SIGNAL: dict[Contrast, tuple[float, float]] = {
    "flair": (1.45, 2.3),
    "t2": (1.6, 2.1),
    "t1": (0.55, 0.8),
}


@dataclass(frozen=True)
class LesionSpec:
    """One lesion to paint: an ellipsoid in the head frame."""

    centre_mm: Vec3
    """(x, y, z) in the head frame, mm."""
    semi_axes_mm: Vec3
    """Semi-axes along ``axes`` (the first is the long axis)."""
    axes: tuple[Vec3, Vec3, Vec3]
    """Orthonormal directions of the three semi-axes (head frame)."""
    kind: LesionKind
    signal: float = 1.8
    """Lesion signal relative to white matter (FLAIR)."""

    def __post_init__(self) -> None:
        if min(self.semi_axes_mm) < MIN_LESION_SEMI_AXIS_MM / 2:
            raise ValueError(f"LesionSpec.semi_axes_mm {self.semi_axes_mm} are too small")
        if max(self.semi_axes_mm) > 2 * MAX_LESION_SEMI_AXIS_MM:
            raise ValueError(f"LesionSpec.semi_axes_mm {self.semi_axes_mm} are too large")
        if self.kind not in LESION_KINDS:
            raise ValueError(f"LesionSpec.kind {self.kind!r} is not one of {LESION_KINDS}")

    @property
    def volume_mm3(self) -> float:
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * math.pi * a * b * c

    def scaled(self, factor: float) -> LesionSpec:
        """The same lesion with every semi-axis multiplied by ``factor``."""
        a, b, c = self.semi_axes_mm
        return replace(self, semi_axes_mm=(a * factor, b * factor, c * factor))


# ---------------------------------------------------------------------------------------------
# Anatomy


def _coords() -> tuple[FloatArray, FloatArray, FloatArray]:
    """Broadcastable head-frame (z, y, x) coordinate arrays of the phantom grid, mm."""
    nz, ny, nx = PHANTOM_SHAPE
    x0, y0, z0 = PHANTOM_MIN_XYZ
    z = (z0 + np.arange(nz, dtype=np.float32) * PHANTOM_MM)[:, None, None]
    y = (y0 + np.arange(ny, dtype=np.float32) * PHANTOM_MM)[None, :, None]
    x = (x0 + np.arange(nx, dtype=np.float32) * PHANTOM_MM)[None, None, :]
    return z, y, x


def _smooth_noise(rng: np.random.Generator, corr_mm: float) -> FloatArray:
    """Zero-mean, unit-variance smooth random field on the phantom grid."""
    coarse_step = corr_mm / 2.0
    coarse = tuple(max(3, math.ceil(n * PHANTOM_MM / coarse_step) + 2) for n in PHANTOM_SHAPE)
    field_ = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 1.0)
    field_ /= max(float(field_.std()), 1e-6)
    zoom = [(n - 1) / (c - 3) for n, c in zip(PHANTOM_SHAPE, coarse, strict=True)]
    out = ndimage.affine_transform(
        field_,
        np.array([1.0 / z for z in zoom]),
        offset=1.0,
        output_shape=PHANTOM_SHAPE,
        order=1,
        mode="nearest",
        prefilter=False,
    )
    result: FloatArray = out.astype(np.float32, copy=False)
    return result


def _box(centre: Vec3, half_mm: Vec3) -> tuple[slice, slice, slice] | None:
    """Phantom (z, y, x) index slices covering centre +- half (head-frame x, y, z order)."""
    bounds = []
    for axis_xyz, grid_axis in ((2, 0), (1, 1), (0, 2)):
        lo = (centre[axis_xyz] - half_mm[axis_xyz] - PHANTOM_MIN_XYZ[axis_xyz]) / PHANTOM_MM
        hi = (centre[axis_xyz] + half_mm[axis_xyz] - PHANTOM_MIN_XYZ[axis_xyz]) / PHANTOM_MM
        n = PHANTOM_SHAPE[grid_axis]
        a, b = max(0, math.floor(lo)), min(n, math.ceil(hi) + 1)
        if b <= a:
            return None
        bounds.append(slice(a, b))
    return bounds[0], bounds[1], bounds[2]


def _box_coords(box: tuple[slice, slice, slice]) -> tuple[FloatArray, FloatArray, FloatArray]:
    x0, y0, z0 = (np.float32(v) for v in PHANTOM_MIN_XYZ)
    z: FloatArray = (z0 + np.arange(box[0].start, box[0].stop, dtype=np.float32))[:, None, None]
    y: FloatArray = (y0 + np.arange(box[1].start, box[1].stop, dtype=np.float32))[None, :, None]
    x: FloatArray = (x0 + np.arange(box[2].start, box[2].stop, dtype=np.float32))[None, None, :]
    return z, y, x


def _ellipsoid_q(
    box: tuple[slice, slice, slice],
    centre: Vec3,
    semi: Vec3,
    axes: npt.NDArray[np.float64] | None = None,
) -> FloatArray:
    """sum((u_i / semi_i)^2) over a box, u = coordinates along ``axes`` rows (or x, y, z)."""
    z, y, x = _box_coords(box)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    if axes is None:
        q = (dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2
    else:
        q = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
        for row, s in zip(axes, semi, strict=True):
            u = dx * np.float32(row[0]) + dy * np.float32(row[1]) + dz * np.float32(row[2])
            q += (u / np.float32(s)) ** 2
    result: FloatArray = np.asarray(q, dtype=np.float32)
    return result


def _paint_ellipsoid(
    labels: npt.NDArray[np.uint8],
    tissue: Tissue,
    centre: Vec3,
    semi: Vec3,
    axes: npt.NDArray[np.float64] | None = None,
    where: Sequence[Tissue] | None = None,
) -> None:
    reach = max(semi) + 1.0
    box = _box(centre, (reach, reach, reach))
    if box is None:
        return
    inside = _ellipsoid_q(box, centre, semi, axes) < 1.0
    view = labels[box]
    if where is not None:
        inside &= np.isin(view, [int(t) for t in where])
    view[inside] = int(tissue)


def _rotation_about_z(deg: float) -> npt.NDArray[np.float64]:
    a = math.radians(deg)
    return np.array([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0], [0, 0, 1]])


class BrainPhantom:
    """The anatomy of one seed on the 1 mm phantom grid, ready for lesions and acquisitions."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = np.random.default_rng([seed, 11])
        u = rng.uniform
        self.a_ic = u(59.0, 65.0)  # intracranial semi-axes: left-right
        self.b_ic = u(80.0, 88.0)  # antero-posterior
        self.c_up = u(68.0, 76.0)  # centre to vertex
        self.c_down = u(55.0, 62.0)
        self.y0 = u(-3.0, 3.0)
        self.t_bone = u(5.0, 7.5)
        self.t_scalp = u(4.0, 6.5)
        self.t_csf = u(1.2, 3.2)  # subarachnoid CSF (atrophy makes it wider)
        self.t_gm = u(2.4, 3.4)
        self.sulcal_depth = u(10.0, 18.0)
        self.sulcal_width = u(0.5, 1.1)
        self.ventricle_scale = u(0.8, 1.6)
        self.rim_width = u(0.8, 2.2)
        self.labels, self.dist_ventricle = self._build(rng)
        self.candidates = self._candidates()

    # -- anatomy ------------------------------------------------------------------------------

    def _build(self, rng: np.random.Generator) -> tuple[npt.NDArray[np.uint8], FloatArray]:
        z, y, x = _coords()
        a, b, y0 = np.float32(self.a_ic), np.float32(self.b_ic), np.float32(self.y0)
        c = np.where(z > 0, np.float32(self.c_up), np.float32(self.c_down)).astype(np.float32)
        q = (x / a) ** 2 + ((y - y0) / b) ** 2 + (z / c) ** 2
        grad = 2.0 * np.sqrt((x / a**2) ** 2 + ((y - y0) / b**2) ** 2 + (z / c**2) ** 2)
        depth = (1.0 - q) / np.maximum(grad, np.float32(1e-3))  # mm inside the inner skull
        del q, grad
        depth += _smooth_noise(rng, 25.0) * np.float32(1.5)

        labels = np.zeros(PHANTOM_SHAPE, dtype=np.uint8)
        t_bone, t_scalp = np.float32(self.t_bone), np.float32(self.t_scalp)
        labels[depth > -(t_bone + t_scalp)] = Tissue.SCALP
        labels[depth > -t_bone] = Tissue.BONE
        marrow = (depth > -0.7 * t_bone) & (depth < -0.3 * t_bone)
        labels[marrow] = Tissue.MARROW
        inside = depth > 0
        labels[inside] = Tissue.CSF

        # Neck below the skull, with the spinal canal.
        neck = (z < -0.75 * self.c_down) & (
            (x / (0.75 * a)) ** 2 + ((y - y0 - 8.0) / (0.55 * b)) ** 2 < 1.0
        )
        labels[neck & (labels == Tissue.BACKGROUND)] = Tissue.FACE

        # Posterior fossa below the tentorium (which slopes down towards the back), behind the
        # petrous ridges (a V pointing forwards in axial slices).
        tentorium = -8.0 - 0.55 * np.maximum(y - y0 - 12.0, 0.0) - 0.25 * np.abs(x)
        ridge_y = y0 - 8.0 + 0.7 * np.abs(x)
        behind_ridges = y > ridge_y
        fossa = behind_ridges & (z < tentorium)
        brain = inside & (depth > self.t_csf) & ~fossa
        brain &= ~(behind_ridges & (z < tentorium + 1.0))

        # Supratentorial cortex: a ribbon under the surface, folded around random sulci.
        sulc = _smooth_noise(rng, 10.0)
        g = np.gradient(sulc, PHANTOM_MM)
        dist_sulcus = np.abs(sulc) / np.maximum(
            np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2), np.float32(1e-3)
        )
        del g, sulc
        local_depth = np.float32(self.sulcal_depth) * (
            1.0 + 0.35 * _smooth_noise(rng, 30.0).clip(-2.0, 2.0)
        )
        cortical_depth = depth - np.float32(self.t_csf)
        within_folds = cortical_depth < local_depth
        sulcus = brain & within_folds & (dist_sulcus < self.sulcal_width)
        ribbon = brain & (
            (cortical_depth < self.t_gm)
            | (within_folds & (dist_sulcus < self.sulcal_width + self.t_gm))
            | ((cortical_depth < local_depth + self.t_gm) & (dist_sulcus < self.t_gm))
        )
        del dist_sulcus, local_depth
        fissure = (np.abs(x) < 1.2) & (cortical_depth < 38.0) & (z > -12.0)
        ribbon |= brain & (np.abs(x) < 1.2 + self.t_gm) & (cortical_depth < 40.0) & (z > -12.0)
        labels[brain] = Tissue.WHITE_MATTER
        labels[ribbon] = Tissue.CORTEX
        labels[brain & (sulcus | fissure)] = Tissue.CSF
        del ribbon, sulcus, fissure, within_folds

        # Depth inside the posterior fossa (from skull, tentorium and petrous ridges).
        fossa_depth = np.minimum(
            cortical_depth,
            np.minimum(tentorium - z - 1.0, (y - ridge_y) * 0.8 - 1.5),
        )
        del cortical_depth
        self._deep_structures(labels)
        self._posterior_fossa(labels, rng, inside & fossa, fossa_depth)
        del fossa, inside, brain, depth, fossa_depth
        self._face(labels)
        dist_ventricle = self._ventricle_distance(labels)
        return labels, dist_ventricle

    def _deep_structures(self, labels: npt.NDArray[np.uint8]) -> None:
        y0, s = self.y0, self.ventricle_scale
        parenchyma = (Tissue.WHITE_MATTER, Tissue.CORTEX)
        for side in (-1.0, 1.0):
            _paint_ellipsoid(
                labels,
                Tissue.DEEP_GREY,
                (side * 12.0, y0 + 8.0, 0.0),
                (9.0, 15.0, 10.0),
                where=parenchyma,
            )
            _paint_ellipsoid(
                labels,
                Tissue.DEEP_GREY,
                (side * 24.0, y0 - 8.0, 2.0),
                (7.0, 17.0, 11.0),
                where=parenchyma,
            )
            _paint_ellipsoid(
                labels,
                Tissue.DEEP_GREY,
                (side * 14.0, y0 - 20.0, 9.0),
                (5.0, 9.0, 7.0),
                where=parenchyma,
            )
        inside = (*parenchyma, Tissue.DEEP_GREY, Tissue.CSF)
        for side in (-1.0, 1.0):
            sx = side * (8.0 + 1.5 * s)
            # Body, frontal horn, atrium, occipital and temporal horns of one lateral ventricle.
            _paint_ellipsoid(
                labels,
                Tissue.VENTRICLE,
                (sx, y0 - 2.0, 16.0),
                (4.0 * s, 30.0, 6.5 * s),
                where=inside,
            )
            _paint_ellipsoid(
                labels,
                Tissue.VENTRICLE,
                (side * (9.0 + 1.5 * s), y0 - 24.0, 9.0),
                (5.0 * s, 12.0, 8.0 * s),
                where=inside,
            )
            _paint_ellipsoid(
                labels,
                Tissue.VENTRICLE,
                (side * (14.0 + 2.0 * s), y0 + 26.0, 6.0),
                (6.5 * s, 13.0, 7.5 * s),
                where=inside,
            )
            _paint_ellipsoid(
                labels,
                Tissue.VENTRICLE,
                (side * (14.0 + 2.0 * s), y0 + 40.0, 3.0),
                (2.5 * s, 11.0, 3.5 * s),
                where=inside,
            )
            horn = _rotation_about_z(side * 25.0)
            _paint_ellipsoid(
                labels,
                Tissue.VENTRICLE,
                (side * 27.0, y0 + 2.0, -14.0),
                (2.5 * s, 13.0, 3.0 * s),
                horn,
                where=inside,
            )
        _paint_ellipsoid(
            labels, Tissue.VENTRICLE, (0.0, y0 + 4.0, -1.0), (1.0 + s, 13.0, 8.0), where=inside
        )

    def _posterior_fossa(
        self,
        labels: npt.NDArray[np.uint8],
        rng: np.random.Generator,
        fossa: BoolArray,
        fossa_depth: FloatArray,
    ) -> None:
        z, y, x = _coords()
        y0 = np.float32(self.y0)
        labels[fossa] = Tissue.CSF
        # The cerebellum fills the fossa behind the brainstem, under a thin layer of CSF.
        z1 = z[:, 0, 0]
        y_axis = (y0 + 6.0 + 0.12 * (-z1)).astype(np.float32)[:, None, None]
        rx = np.where(z1 > -22.0, 10.0, np.where(z1 > -46.0, 15.0, 8.5)).astype(np.float32)
        ry = np.where(z1 > -22.0, 10.0, np.where(z1 > -46.0, 12.0, 8.0)).astype(np.float32)
        rx, ry = rx[:, None, None], ry[:, None, None]
        r2 = (x / rx) ** 2 + ((y - y_axis) / ry) ** 2
        cerebellum = fossa & (fossa_depth > 0.0) & (y > y0 + 2.0 - 0.35 * np.abs(x))
        cerebellum &= (x / (rx + 2.0)) ** 2 + ((y - y_axis) / (ry + 2.0)) ** 2 > 1.0
        cerebellum &= ~((np.abs(x) < 1.0) & (y > y0 + 55.0))  # the falx cerebelli
        core = fossa_depth > 7.0 + 2.5 * _smooth_noise(rng, 8.0)
        phase = (z + 0.4 * (y - y0) + 3.0 * _smooth_noise(rng, 20.0)) / 4.5
        folia = np.abs(np.sin(np.pi * phase)) < 0.22
        labels[cerebellum] = Tissue.CEREBELLAR_GREY
        labels[cerebellum & core] = Tissue.CEREBELLAR_WHITE
        labels[cerebellum & ~core & folia & (fossa_depth > 0.8)] = Tissue.CSF
        del cerebellum, core, phase, folia
        # Brainstem: midbrain, pons and medulla, continuing as the cord through the foramen.
        stem = (r2 < 1.0) & (z < -4.0)
        canal = (r2 < 1.6) & (z < -0.8 * self.c_down)
        labels[canal] = Tissue.CSF
        labels[stem & ((labels != Tissue.BACKGROUND) | (z < -0.8 * self.c_down))] = Tissue.BRAINSTEM
        # Fourth ventricle behind the pons.
        _paint_ellipsoid(
            labels,
            Tissue.VENTRICLE,
            (0.0, self.y0 + 6.0 + 4.2 + 12.0 + 3.5, -35.0),
            (6.0, 3.5, 8.0),
            where=(Tissue.CEREBELLAR_GREY, Tissue.CEREBELLAR_WHITE, Tissue.CSF, Tissue.BRAINSTEM),
        )

    def _face(self, labels: npt.NDArray[np.uint8]) -> None:
        y0 = self.y0
        face_centre = (0.0, y0 - 0.62 * self.b_ic, -0.72 * self.c_down)
        _paint_ellipsoid(
            labels,
            Tissue.FACE,
            face_centre,
            (0.8 * self.a_ic, 42.0, 34.0),
            where=(Tissue.BACKGROUND, Tissue.SCALP),
        )
        for side in (-1.0, 1.0):
            orbit = (side * 31.0, y0 - 0.8 * self.b_ic, -0.5 * self.c_down)
            _paint_ellipsoid(
                labels,
                Tissue.ORBITAL_FAT,
                orbit,
                (14.0, 16.0, 13.0),
                where=(Tissue.FACE, Tissue.SCALP, Tissue.BONE, Tissue.MARROW),
            )
            globe = (side * 31.0, y0 - 0.8 * self.b_ic - 4.0, -0.5 * self.c_down)
            _paint_ellipsoid(
                labels,
                Tissue.GLOBE,
                globe,
                (11.5, 11.5, 11.5),
                where=(Tissue.ORBITAL_FAT, Tissue.FACE),
            )
        _paint_ellipsoid(
            labels,
            Tissue.SINUS,
            (0.0, y0 - 0.78 * self.b_ic, -0.78 * self.c_down),
            (18.0, 14.0, 12.0),
            where=(Tissue.FACE,),
        )

    def _ventricle_distance(self, labels: npt.NDArray[np.uint8]) -> FloatArray:
        """Distance (mm) to the nearest ventricle voxel; 99 far away from the ventricles."""
        out = np.full(PHANTOM_SHAPE, 99.0, dtype=np.float32)
        vent = labels == Tissue.VENTRICLE
        where = np.argwhere(vent)
        if not len(where):
            return out
        lo = np.maximum(where.min(axis=0) - 30, 0)
        hi = np.minimum(where.max(axis=0) + 31, np.array(PHANTOM_SHAPE))
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        dist = ndimage.distance_transform_edt(~vent[box], sampling=PHANTOM_MM).astype(np.float32)
        out[box] = np.minimum(dist, 99.0)
        return out

    def _candidates(self) -> dict[LesionKind, npt.NDArray[np.int64]]:
        """Flat phantom indices where a lesion of each kind may be centred."""
        labels = self.labels
        wm = labels == Tissue.WHITE_MATTER
        cortex = labels == Tissue.CORTEX
        z = _coords()[0]
        near_cortex = ndimage.binary_dilation(cortex, iterations=2)
        far_from_cortex = ~ndimage.binary_dilation(cortex, iterations=6)
        dv = self.dist_ventricle
        periventricular = wm & (dv > 0.5) & (dv <= 1.6) & (z > -8.0)
        juxtacortical = wm & near_cortex & (dv > 6.0)
        deep = wm & far_from_cortex & (dv > 7.0)
        infratentorial = (labels == Tissue.CEREBELLAR_WHITE) | (
            (labels == Tissue.BRAINSTEM) & (z > -60.0) & (z < -12.0)
        )
        return {
            "periventricular": np.flatnonzero(periventricular),
            "juxtacortical": np.flatnonzero(juxtacortical),
            "deep": np.flatnonzero(deep),
            "infratentorial": np.flatnonzero(infratentorial),
        }

    # -- lesions ------------------------------------------------------------------------------

    def random_lesions(
        self, rng: np.random.Generator, count: int, existing: Sequence[LesionSpec] = ()
    ) -> list[LesionSpec]:
        """Up to ``count`` lesions of random kinds that keep clear of ``existing`` and each other."""
        placed: list[LesionSpec] = []
        for _ in range(count):
            kind = LESION_KINDS[int(rng.choice(len(LESION_KINDS), p=KIND_WEIGHTS))]
            for _attempt in range(30):
                spec = self.lesion_at_random(rng, kind)
                if spec is not None and keeps_clear(spec, [*existing, *placed]):
                    placed.append(spec)
                    break
        return placed

    def lesion_at_random(
        self, rng: np.random.Generator, kind: LesionKind, long_semi_axis_mm: float | None = None
    ) -> LesionSpec | None:
        """A lesion of ``kind`` at a random admissible place (None if the kind has no room)."""
        pool = self.candidates[kind]
        if not len(pool):
            return None
        flat = int(pool[rng.integers(len(pool))])
        idx = np.unravel_index(flat, PHANTOM_SHAPE)
        point = (
            PHANTOM_MIN_XYZ[0] + idx[2] * PHANTOM_MM,
            PHANTOM_MIN_XYZ[1] + idx[1] * PHANTOM_MM,
            PHANTOM_MIN_XYZ[2] + idx[0] * PHANTOM_MM,
        )
        return self.lesion_near(point, kind, rng, long_semi_axis_mm)

    def lesion_near(
        self,
        point_mm: Vec3,
        kind: LesionKind,
        rng: np.random.Generator,
        long_semi_axis_mm: float | None = None,
    ) -> LesionSpec:
        """A lesion of ``kind`` placed at head-frame ``point_mm`` (periventricular lesions are
        pushed away from the ventricle wall along its normal, their long axis along it)."""
        if long_semi_axis_mm is None:
            # Many small lesions, few big ones.
            long_semi_axis_mm = float(
                np.clip(1.4 + rng.gamma(1.6, 1.5), MIN_LESION_SEMI_AXIS_MM, 9.0)
            )
        a1 = float(long_semi_axis_mm)
        if kind == "periventricular":
            normal = self._ventricle_normal(point_mm)
            ratios = (float(rng.uniform(0.4, 0.7)), float(rng.uniform(0.35, 0.6)))
            centre = tuple(p + n * a1 * 0.75 for p, n in zip(point_mm, normal, strict=True))
        else:
            normal = _unit(rng.normal(size=3))
            ratios = (float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.5, 0.9)))
            centre = point_mm
        a2 = max(MIN_LESION_SEMI_AXIS_MM, a1 * ratios[0])
        a3 = max(MIN_LESION_SEMI_AXIS_MM, a1 * min(ratios))
        second = _unit(np.cross(normal, rng.normal(size=3)))
        third = np.cross(normal, second)
        lo, hi = _LESION_SIGNAL["flair"]
        return LesionSpec(
            centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
            semi_axes_mm=(a1, a2, a3),
            axes=(_vec(normal), _vec(second), _vec(third)),
            kind=kind,
            signal=float(rng.uniform(lo, hi)),
        )

    def _ventricle_normal(self, point_mm: Vec3) -> npt.NDArray[np.float64]:
        """Unit direction of increasing distance from the ventricles at a head-frame point."""
        idx = [
            int(np.rint((point_mm[2] - PHANTOM_MIN_XYZ[2]) / PHANTOM_MM)),
            int(np.rint((point_mm[1] - PHANTOM_MIN_XYZ[1]) / PHANTOM_MM)),
            int(np.rint((point_mm[0] - PHANTOM_MIN_XYZ[0]) / PHANTOM_MM)),
        ]
        lo = [max(0, i - 2) for i in idx]
        patch = self.dist_ventricle[lo[0] : idx[0] + 3, lo[1] : idx[1] + 3, lo[2] : idx[2] + 3]
        if min(patch.shape) < 3:
            return np.array([0.0, 0.0, 1.0])
        gz, gy, gx = (np.asarray(g).mean() for g in np.gradient(patch.astype(np.float64)))
        return _unit(np.array([gx, gy, gz]))

    def point_of_kind(self, kind: LesionKind, draw: int = 0) -> Vec3:
        """A deterministic admissible head-frame point for a lesion of ``kind`` (for tests)."""
        rng = np.random.default_rng([self.seed, 23, draw])
        pool = self.candidates[kind]
        if not len(pool):
            raise ValueError(f"phantom {self.seed} has no room for a {kind} lesion")
        flat = int(pool[rng.integers(len(pool))])
        idx = np.unravel_index(flat, PHANTOM_SHAPE)
        return (
            PHANTOM_MIN_XYZ[0] + idx[2] * PHANTOM_MM,
            PHANTOM_MIN_XYZ[1] + idx[1] * PHANTOM_MM,
            PHANTOM_MIN_XYZ[2] + idx[0] * PHANTOM_MM,
        )

    # -- rendering ----------------------------------------------------------------------------

    def render(
        self,
        lesions: Sequence[LesionSpec],
        rng: np.random.Generator,
        contrast: Contrast = "flair",
    ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int16]]:
        """(signal, lesion fraction, lesion number) on the phantom grid for one exam."""
        table = _SIGNAL[contrast]
        lut = np.zeros(len(Tissue), dtype=np.float32)
        for tissue, (lo, hi) in table.items():
            lut[int(tissue)] = rng.uniform(lo, hi)
        signal = lut[self.labels]
        texture = 1.0 + np.float32(rng.uniform(0.015, 0.04)) * _smooth_noise(rng, 4.0)
        parenchyma = np.isin(self.labels, [int(t) for t in PARENCHYMA])
        signal *= np.where(parenchyma, texture, np.float32(1.0))
        if contrast == "flair":
            # Thin bright rim along the ventricles (ependymal signal, "caps" at the horns).
            rim = (self.dist_ventricle <= self.rim_width) & (self.labels == Tissue.WHITE_MATTER)
            signal[rim] *= np.float32(rng.uniform(1.08, 1.3))
        fraction = np.zeros(PHANTOM_SHAPE, dtype=np.float32)
        numbers = np.zeros(PHANTOM_SHAPE, dtype=np.int16)
        lesion_lo, lesion_hi = _LESION_SIGNAL[contrast]
        for number, spec in enumerate(lesions, start=1):
            level = spec.signal if contrast == "flair" else float(rng.uniform(lesion_lo, lesion_hi))
            self._paint_lesion(spec, number, level, signal, fraction, numbers, texture)
        return signal, fraction, numbers

    def _paint_lesion(
        self,
        spec: LesionSpec,
        number: int,
        level: float,
        signal: FloatArray,
        fraction: FloatArray,
        numbers: npt.NDArray[np.int16],
        texture: FloatArray,
    ) -> None:
        reach = max(spec.semi_axes_mm) + 2.0
        box = _box(spec.centre_mm, (reach, reach, reach))
        if box is None:
            return
        q = np.sqrt(_ellipsoid_q(box, spec.centre_mm, spec.semi_axes_mm, np.array(spec.axes)))
        edge = max(min(spec.semi_axes_mm), 1.0)
        frac = np.clip((1.0 - q) * np.float32(edge / 0.8) + 0.5, 0.0, 1.0).astype(np.float32)
        frac *= np.isin(self.labels[box], [int(t) for t in PARENCHYMA])
        if not frac.any():
            return
        view = signal[box]
        view += frac * (np.float32(level) * texture[box] - view)
        fraction[box] = np.maximum(fraction[box], frac)
        numbers[box] = np.where(frac >= 0.5, np.int16(number), numbers[box])

    def site_of(self, point_mm: Vec3) -> Tissue:
        idx = (
            int(np.rint((point_mm[2] - PHANTOM_MIN_XYZ[2]) / PHANTOM_MM)),
            int(np.rint((point_mm[1] - PHANTOM_MIN_XYZ[1]) / PHANTOM_MM)),
            int(np.rint((point_mm[0] - PHANTOM_MIN_XYZ[0]) / PHANTOM_MM)),
        )
        if not all(0 <= i < n for i, n in zip(idx, PHANTOM_SHAPE, strict=True)):
            return Tissue.BACKGROUND
        return Tissue(int(self.labels[idx]))


def _unit(v: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(arr))
    return arr / n if n > 1e-9 else np.array([0.0, 0.0, 1.0])


def _vec(v: npt.NDArray[np.float64]) -> Vec3:
    return (float(v[0]), float(v[1]), float(v[2]))


def keeps_clear(spec: LesionSpec, others: Sequence[LesionSpec], gap_mm: float = 2.5) -> bool:
    """True when ``spec`` keeps ``gap_mm`` from every other lesion (bounding spheres)."""
    c = np.array(spec.centre_mm)
    return all(
        float(np.linalg.norm(c - np.array(o.centre_mm)))
        > max(spec.semi_axes_mm) + max(o.semi_axes_mm) + gap_mm
        for o in others
    )
