"""Synthetic contrast chest CT: pulmonary artery tree, veins, aorta, airways and emboli.

Everything is drawn in millimetres from the centre of voxel (0, 0, 0) along (slice, row,
column) = (z, y, x): slice index increases towards the head, row index towards the back and
column index towards the patient's left, as in an axial CT with an LPS affine. The patient's
right lung therefore lies at small column indices.

A scan has a contrast phase: CT pulmonary angiography ("ctpa", pulmonary arteries 150-500 HU,
dense contrast in the superior vena cava with streaks, less in the aorta), portal-venous
("venous", 100-200 HU everywhere, as in an oncology follow-up) or "non_contrast" (blood 30-55
HU). The pulmonary artery tree runs from the trunk (arising from the right ventricle) to the
right and left main arteries, six lobar arteries (right upper, middle and lower; left upper,
lingula and lower) and their segmental branches, each accompanied by a bronchus, with smaller
branches growing into the lungs. Emboli are hypodense (20-70 HU) filling defects inside the
enhanced lumen: a saddle embolus across the bifurcation, or central (main artery), lobar or
segmental clots, occlusive (filling the lumen, the distal tree then less enhanced) or partial
(floating in the centre or against the wall); a clot placed at a branch's origin fills part of
the parent artery there, unless asked to stay within its artery (``clots_within_artery``).
Hilar lymph nodes, contrast mixing in the trunk, motion blur, streaks and correlated noise make
the task honest. Only numpy and scipy are used.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from training.pe.synth_thorax import (
    ENHANCEMENT_HU,
    BoolArray,
    Enhancement,
    FloatArray,
    Phase,
    SlicePainter,
    Thorax,
)
from training.pe.synth_vessels import (
    LOBAR,
    MAIN,
    SEGMENTAL,
    TRUNK,
    Branch,
    Side,
    Tubes,
    Vasculature,
    axes,
    bbox,
    paint,
    perpendicular,
    render_max,
    unit,
)

__all__ = [
    "ARTERY_CLASSES",
    "CLOT_HU",
    "ENHANCEMENT_HU",
    "LOBAR",
    "MAIN",
    "PHASES",
    "SEGMENTAL",
    "TRUNK",
    "ClotSpec",
    "ClotTruth",
    "Phase",
    "Side",
    "SyntheticContrastCT",
    "generate_contrast_chest_ct",
]

logger = logging.getLogger(__name__)

ClotKind = Literal["saddle", "central", "lobar", "segmental"]
ClotLevel = Literal["central", "lobar", "segmental"]

PHASES: tuple[Phase, ...] = ("ctpa", "venous", "non_contrast")
ARTERY_CLASSES = ("background", "trunk", "main", "lobar", "segmental")
"""Values of ``artery_classes``: pulmonary artery lumen by level (smaller arteries are 0)."""
LEVEL_OF_CLASS: dict[int, ClotLevel] = {
    TRUNK: "central",
    MAIN: "central",
    LOBAR: "lobar",
    SEGMENTAL: "segmental",
}
CLOT_LEVELS: tuple[ClotLevel, ...] = ("central", "lobar", "segmental")
"""From the heart outwards."""
CLOT_HU = (20.0, 70.0)
HU_MIN = -1024
HU_MAX = 3071
DEFAULT_ROWS_COLS = 256


@dataclass(frozen=True)
class ClotSpec:
    """An embolus a caller asks for; the generator places it on a matching artery."""

    kind: ClotKind
    side: Literal["right", "left"] | None = None
    """None: random side (ignored for a saddle embolus, which spans both)."""
    occlusive: bool | None = None
    """None: random (saddle emboli are never occlusive)."""


@dataclass(frozen=True)
class ClotTruth:
    """Ground truth of one embolus in a generated scan."""

    label: int
    """Its value in ``SyntheticContrastCT.clot_labels``."""
    centre_voxel: tuple[float, float, float]
    level: ClotLevel
    side: Side
    lobe: str
    """"right lower lobe", "lingula", ...; "" for central emboli."""
    occlusive: bool
    volume_mm3: float
    level_by_volume: ClotLevel | None = None
    """The level of the arteries holding most of the clot's voxels (trunk and main arteries
    central): ``level`` is the artery the clot was placed in, and a clot placed at a branch
    reaches back into its parent artery (unless generated ``clots_within_artery``) or on into
    the branches, where a radiologist, who names an embolus by the most proximal artery it
    fills, may name it otherwise."""


@dataclass(frozen=True)
class SyntheticContrastCT:
    """A generated contrast chest CT and its ground truth."""

    hu: npt.NDArray[np.int16]
    spacing_mm: tuple[float, float, float]
    phase: Phase
    artery_hu: float
    """Lumen HU of the pulmonary trunk (before noise)."""
    clots: tuple[ClotTruth, ...]
    clot_labels: npt.NDArray[np.uint8]
    """0 outside emboli, ``ClotTruth.label`` inside (partial volume >= 0.5)."""
    artery_classes: npt.NDArray[np.uint8]
    """Pulmonary artery lumen (emboli included) by level, see ``ARTERY_CLASSES``."""
    lung_mask: npt.NDArray[np.bool_]
    trunk_centre_voxel: tuple[float, float, float]
    """Middle of the pulmonary trunk's axis, (k, i, j)."""


@dataclass(frozen=True)
class _Clot:
    """Capsules along a branch that make up one embolus."""

    points: list[FloatArray]
    radii: list[float]
    level: ClotLevel
    side: Side
    lobe: str
    occlusive: bool
    host_tube: int


def _clot_along(
    branch: Branch,
    span: tuple[float, float],
    rng: np.random.Generator,
    occlusive: bool,
    eccentric: bool,
) -> tuple[list[FloatArray], list[float]]:
    """Capsule centres and radii from arc length span[0] to span[1] along ``branch``:
    filling the lumen, floating in its centre, or against the wall."""
    factor = rng.uniform(0.4, 0.72)
    shift = rng.uniform(0.3, 0.9)
    wall_dir: FloatArray | None = None
    pts: list[FloatArray] = []
    radii: list[float] = []
    for s in np.linspace(span[0], span[1], max(2, math.ceil((span[1] - span[0]) / 4.0) + 1)):
        p, r, d = branch.at(float(s))
        if occlusive:
            pts.append(p)
            radii.append(r + 1.5)
            continue
        rc = r * factor
        if eccentric:
            wall_dir = perpendicular(d, rng) if wall_dir is None else wall_dir
            wall_dir = unit(wall_dir - d * float(wall_dir @ d))
            p = p + wall_dir * (r - rc) * shift
        pts.append(p)
        radii.append(rc)
    return pts, radii


def _saddle(vasc: Vasculature, rng: np.random.Generator) -> _Clot:
    """A chain across the bifurcation: right main artery (distal to proximal), a stub back
    into the trunk, then the left main artery."""
    u = rng.uniform
    trunk = vasc.trunk
    right, left = vasc.branches["right main"], vasc.branches["left main"]
    factor = u(0.4, 0.65)
    pts: list[FloatArray] = []
    radii: list[float] = []
    reach_r, reach_l = u(12.0, 28.0), u(10.0, 24.0)
    for s in np.linspace(reach_r, 0.0, max(2, int(reach_r / 4.0) + 1)):
        p, r, _ = right.at(float(s))
        pts.append(p)
        radii.append(r * factor)
    p, r, _ = trunk.at(trunk.length() - u(4.0, 10.0))
    pts += [p, pts[-1]]
    radii += [r * factor, radii[-1]]
    for s in np.linspace(0.0, reach_l, max(2, int(reach_l / 4.0) + 1))[1:]:
        p, r, _ = left.at(float(s))
        pts.append(p)
        radii.append(r * factor)
    return _Clot(pts, radii, "central", "both", "", False, trunk.tubes[-1])


_CLOT_SHAPES: dict[str, tuple[float, tuple[float, float]]] = {
    "central": (0.12, (15.0, 35.0)),
    "lobar": (0.4, (10.0, 28.0)),
    "segmental": (0.5, (8.0, 20.0)),
}
"""Per kind: probability of an occlusive clot, length range in mm."""


def _place_clot(vasc: Vasculature, spec: ClotSpec, rng: np.random.Generator) -> _Clot | None:
    if spec.kind == "saddle":
        return _saddle(vasc, rng)
    u = rng.uniform
    side = spec.side or ("right" if u() < 0.5 else "left")
    if spec.kind == "central":
        hosts = [vasc.branches[f"{side} main"]]
    elif spec.kind == "lobar":
        hosts = [b for b in vasc.branches.values() if b.label == LOBAR and b.side == side]
    else:
        hosts = [b for b in vasc.segmental if b.side == side]
    if not hosts:
        return None
    branch = hosts[int(rng.integers(len(hosts)))]
    p_occlusive, lengths = _CLOT_SHAPES[spec.kind]
    occlusive = bool(u() < p_occlusive) if spec.occlusive is None else spec.occlusive
    total = branch.length()
    length = min(u(*lengths), 0.8 * total)
    s0 = u(0.05, 0.95) * (total - length)
    pts, radii = _clot_along(branch, (s0, s0 + length), rng, occlusive, bool(u() < 0.6))
    n_tubes = len(branch.tubes)
    host = branch.tubes[min(n_tubes - 1, int(n_tubes * (s0 + length) / total))]
    level = LEVEL_OF_CLASS[branch.label]
    return _Clot(pts, radii, level, branch.side, branch.lobe, occlusive, host)


def _random_specs(rng: np.random.Generator, count: int) -> list[ClotSpec]:
    kinds: tuple[ClotKind, ...] = ("saddle", "central", "lobar", "segmental")
    return [ClotSpec(kinds[int(rng.choice(4, p=[0.08, 0.2, 0.32, 0.4]))]) for _ in range(count)]


def _resolve_geometry(
    seed: int, shape: tuple[int, int, int] | None, spacing_mm: tuple[float, float, float] | None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    rng = np.random.default_rng([seed, 0])
    if spacing_mm is None:
        pixel = float(rng.uniform(0.6, 0.9))
        spacing_mm = (float(rng.uniform(0.6, 2.5)), pixel, pixel)
    else:
        rng.uniform(size=2)
    if shape is None:
        n_slices = max(20, round(float(rng.uniform(250.0, 320.0)) / spacing_mm[0]))
        shape = (n_slices, DEFAULT_ROWS_COLS, DEFAULT_ROWS_COLS)
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    if min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"bad shape {shape} or spacing {spacing_mm}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), spacing


def _streaks(
    hu: npt.NDArray[np.float32], vasc: Vasculature, spacing: FloatArray, rng: np.random.Generator
) -> None:
    """Bright and dark bands radiating from dense contrast in the superior vena cava."""
    svc_x, svc_y, z_low = vasc.svc
    strength = (vasc.enh.svc - 250.0) / 1250.0
    if strength <= 0.1:
        return
    nz, ny, nx = hu.shape
    y = (np.arange(ny) * spacing[1])[:, None] - svc_y
    x = (np.arange(nx) * spacing[2])[None, :] - svc_x
    r = np.sqrt(x**2 + y**2)
    n_lines = int(rng.integers(4, 10))
    angles = rng.uniform(0.0, math.pi, n_lines)
    amps = rng.uniform(40.0, 160.0, n_lines) * strength * rng.choice([-1.0, 1.0], n_lines)
    pattern = np.zeros((ny, nx), dtype=np.float32)
    for a, amp, w in zip(angles, amps, rng.uniform(1.0, 2.5, n_lines), strict=True):
        perp = np.abs(-np.sin(a) * x + np.cos(a) * y)
        pattern += (amp * np.exp(-((perp / w) ** 2)) * np.exp(-r / 90.0)).astype(np.float32)
    pattern *= (r > 10.0).astype(np.float32)
    for k in range(max(0, int(z_low / spacing[0])), nz):
        hu[k] += pattern * np.float32(rng.uniform(0.6, 1.0))


def _motion(
    hu: npt.NDArray[np.float32], th: Thorax, spacing: FloatArray, rng: np.random.Generator
) -> None:
    """Breathing blur along z in the lung bases, cardiac blur in-plane next to the heart."""
    nz, ny, nx = hu.shape
    z = np.arange(nz) * spacing[0]
    if rng.uniform() < 0.3:
        blurred = ndimage.gaussian_filter1d(hu, rng.uniform(1.0, 2.5) / spacing[0], axis=0)
        w = np.clip((th.z_car - 30.0 - z) / 40.0, 0.0, 1.0).astype(np.float32)[:, None, None]
        hu += w * (blurred - hu)
    if rng.uniform() < 0.35:
        sigma_mm = rng.uniform(0.8, 2.0)
        blurred = ndimage.gaussian_filter(hu, (0.0, sigma_mm / spacing[1], sigma_mm / spacing[2]))
        c, r = th.heart_c, th.heart_r + 25.0
        zz = ((z - c[0]) / r[0])[:, None, None]
        yy = ((np.arange(ny) * spacing[1] - c[1]) / r[1])[None, :, None]
        xx = ((np.arange(nx) * spacing[2] - c[2]) / r[2])[None, None, :]
        w = np.clip(1.5 - (zz**2 + yy**2 + xx**2), 0.0, 1.0).astype(np.float32)
        hu += w * (blurred - hu)


def _mixing_defect(
    hu: npt.NDArray[np.float32],
    art_f: npt.NDArray[np.float32],
    vasc: Vasculature,
    spacing: FloatArray,
    rng: np.random.Generator,
) -> None:
    """Unopacified blood streaming into the trunk: a soft-edged, low-contrast pseudo-defect."""
    t = vasc.trunk
    p, _, _ = t.at(t.length() * rng.uniform(0.2, 0.9))
    sigma = rng.uniform(4.0, 8.0)
    box = bbox(p - 3 * sigma, p + 3 * sigma, spacing, (hu.shape[0], hu.shape[1], hu.shape[2]))
    if box is None:
        return
    zz, yy, xx = axes(box, spacing)
    g = np.exp(-((zz - p[0]) ** 2 + (yy - p[1]) ** 2 + (xx - p[2]) ** 2) / (2 * sigma**2))
    drop = (vasc.enh.pulmonary - 40.0) * rng.uniform(0.2, 0.4)
    hu[box] -= (drop * g).astype(np.float32) * art_f[box]


def _lung_texture(
    hu: npt.NDArray[np.float32], lung: BoolArray, th: Thorax, spacing: FloatArray, seed: int
) -> None:
    found = ndimage.find_objects(lung.astype(np.uint8))
    if not found or found[0] is None:
        return
    box = found[0]
    shape = np.array([b.stop - b.start for b in box])
    rng = np.random.default_rng([seed, 4])
    coarse = np.maximum(np.ceil(shape * spacing / 6.0).astype(int), 2)
    texture = ndimage.gaussian_filter(rng.standard_normal(tuple(coarse)), 0.8)
    texture *= th.lung_texture / max(float(texture.std()), 1e-6)
    full = ndimage.zoom(texture.astype(np.float32), shape / coarse, order=1, mode="nearest")
    full = full[: shape[0], : shape[1], : shape[2]]
    hu[box] += np.where(lung[box], full, np.float32(0.0))


def _classes_before(level: ClotLevel) -> list[int]:
    """The artery classes of the levels more proximal than ``level``."""
    depth = CLOT_LEVELS.index(level)
    return [c for c, of in LEVEL_OF_CLASS.items() if CLOT_LEVELS.index(of) < depth]


def _level_by_volume(classes: npt.NDArray[np.uint8]) -> ClotLevel | None:
    """The level holding most of ``classes`` (one clot's voxels' artery classes); a tie goes
    to the more central level."""
    counts: dict[ClotLevel, int] = dict.fromkeys(CLOT_LEVELS, 0)
    for value, n in zip(*np.unique(classes, return_counts=True), strict=True):
        level = LEVEL_OF_CLASS.get(int(value))
        if level is not None:
            counts[level] += int(n)
    best = max(counts, key=lambda level: counts[level])
    return best if counts[best] else None


def generator_digest() -> str:
    """sha256 of the generator's source (this module and its two helpers): part of every cache
    key of generated scans, so that a changed generator never reuses scans an older one made."""
    digest = hashlib.sha256()
    for name in ("synth.py", "synth_thorax.py", "synth_vessels.py"):
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()


def generate_contrast_chest_ct(
    seed: int,
    *,
    shape: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    phase: Phase | None = None,
    clots: int | Sequence[ClotSpec] | None = None,
    artefacts: bool = True,
    clots_within_artery: bool = False,
) -> SyntheticContrastCT:
    """Generate a synthetic contrast chest CT, deterministic in all arguments.

    ``shape`` defaults to (slices covering 250-320 mm, 256, 256), ``spacing_mm`` to random
    (0.6-2.5 mm slices, 0.6-0.9 mm pixels). ``phase`` None: CTPA 55 %, venous 35 %,
    non-contrast 10 %. ``clots``: None gives 1-4 random emboli in 55 % of contrast scans (none
    in non-contrast ones), an int that many random ones, a sequence exactly those specs.
    ``clots_within_artery``: a clot fills its artery and the branches beyond but never reaches
    back into a more proximal artery, so that its level is the most proximal artery it fills
    (as a radiologist names an embolus); by default a clot placed at a branch's origin also
    fills part of the parent artery there (the training data of every shipped model).
    """
    shape_, spacing_t = _resolve_geometry(seed, shape, spacing_mm)
    spacing = np.array(spacing_t)
    th = Thorax(np.random.default_rng([seed, 1]), shape_, spacing_t)
    mode_rng = np.random.default_rng([seed, 7])
    if phase is None:
        phase = PHASES[int(mode_rng.choice(3, p=[0.55, 0.35, 0.1]))]
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {PHASES}")
    enh = Enhancement.draw(phase, mode_rng)
    vasc = Vasculature(th, enh, np.random.default_rng([seed, 2]))

    clot_rng = np.random.default_rng([seed, 3])
    if clots is None:
        n_random = int(clot_rng.integers(1, 5)) if clot_rng.uniform() < 0.55 else 0
        specs = _random_specs(clot_rng, 0 if phase == "non_contrast" else n_random)
    elif isinstance(clots, int):
        specs = _random_specs(clot_rng, clots)
    else:
        specs = list(clots)
    placed = [c for c in (_place_clot(vasc, s, clot_rng) for s in specs) if c is not None]
    for clot in placed:
        if clot.occlusive:  # the distal tree gets little contrast
            distal = 40.0 + (enh.pulmonary - 40.0) * clot_rng.uniform(0.15, 0.5)
            for i in vasc.arteries.descendants(clot.host_tube):
                vasc.arteries.value[i] = min(vasc.arteries.value[i], distal)

    nz, ny, nx = shape_
    y, x = np.meshgrid(np.arange(ny) * spacing[1], np.arange(nx) * spacing[2], indexing="ij")
    painter = SlicePainter(th, enh, y, x)
    hu = np.empty(shape_, dtype=np.float32)
    lung = np.empty(shape_, dtype=bool)
    for k in range(nz):
        hu[k], lung[k] = painter(k * float(spacing[0]))
    _lung_texture(hu, lung, th, spacing, seed)

    occupied = np.zeros(shape_, dtype=bool)
    paint(hu, occupied, vasc.veins, spacing)
    paint(hu, occupied, vasc.systemic, spacing)
    nodes = Tubes()
    node_hu = (enh.myocardium + 40.0) / 2.0 - 15.0
    for centre, radius in vasc.nodes:
        nodes.add(centre, centre + 1e-3, radius, radius, node_hu)
    paint(hu, occupied, nodes, spacing)
    paint(hu, occupied, vasc.airway_wall, spacing, th.hu_muscle)
    paint(hu, occupied, vasc.airway_lumen, spacing, -1000.0)
    art_f, art_v, art_i = render_max(vasc.arteries, shape_, spacing, capsule=False)
    hu += art_f * (art_v - hu)
    occupied |= art_f > 0.5

    art_rng = np.random.default_rng([seed, 6])
    if artefacts and art_rng.uniform() < {"ctpa": 0.1, "venous": 0.25}.get(phase, 0.0):
        _mixing_defect(hu, art_f, vasc, spacing, art_rng)

    art_label = np.asarray(vasc.arteries.label, dtype=np.uint8)
    labels = np.zeros(shape_, dtype=np.uint8)
    clot_f = np.zeros(shape_, dtype=np.float32)
    truths: list[ClotTruth] = []
    for clot in placed:
        capsules = Tubes()
        for a, b, ra, rb in zip(
            clot.points, clot.points[1:], clot.radii, clot.radii[1:], strict=False
        ):
            capsules.add(a, b, ra, rb, 0.0)
        f, _, _ = render_max(capsules, shape_, spacing, capsule=True)
        found = ndimage.find_objects((f > 0).astype(np.uint8))
        if not found or found[0] is None:
            continue
        box = found[0]
        fb = np.minimum(f[box], art_f[box])
        if clots_within_artery:  # never back into a more proximal artery
            fb[np.isin(art_label[np.maximum(art_i[box], 0)], _classes_before(clot.level))] = 0.0
        if not (fb >= 0.5).any():
            continue
        label = len(truths) + 1
        labels[box][(fb >= 0.5) & (fb > clot_f[box])] = label
        np.maximum(clot_f[box], fb, out=clot_f[box])
        c = np.array(ndimage.center_of_mass(fb)) + [b.start for b in box]
        truths.append(
            ClotTruth(
                label=label,
                centre_voxel=(float(c[0]), float(c[1]), float(c[2])),
                level=clot.level,
                side=clot.side,
                lobe=clot.lobe,
                occlusive=clot.occlusive,
                volume_mm3=float(fb.sum() * np.prod(spacing)),
            )
        )
    if truths:
        clot_hu = min(clot_rng.uniform(*CLOT_HU), enh.pulmonary - 25.0)
        hu += clot_f * (np.float32(clot_hu) - hu)

    classes = np.where(art_f >= 0.5, art_label[np.maximum(art_i, 0)], 0).astype(np.uint8)
    truths = [
        replace(t, level_by_volume=_level_by_volume(classes[labels == t.label])) for t in truths
    ]

    if artefacts:
        _motion(hu, th, spacing, art_rng)
        if phase == "ctpa":
            _streaks(hu, vasc, spacing, art_rng)
    noise_rng = np.random.default_rng([seed, 5])
    noise = ndimage.gaussian_filter(noise_rng.standard_normal(shape_, dtype=np.float32), 0.6)
    noise *= np.float32(noise_rng.uniform(8.0, 30.0) / max(float(noise.std()), 1e-6))
    hu += noise
    trunk_mid, _, _ = vasc.trunk.at(vasc.trunk.length() / 2)
    tc = trunk_mid / spacing
    return SyntheticContrastCT(
        hu=np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16),
        spacing_mm=spacing_t,
        phase=phase,
        artery_hu=enh.pulmonary,
        clots=tuple(truths),
        clot_labels=labels,
        artery_classes=classes,
        lung_mask=lung & ~occupied,
        trunk_centre_voxel=(float(tc[0]), float(tc[1]), float(tc[2])),
    )
