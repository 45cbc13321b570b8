"""Synthetic brain FLAIR exams and follow-up pairs: a ``phantom.BrainPhantom`` head scanned.

The phantom (scalp, skull, CSF and sulci, a folded cortical ribbon, white matter, deep grey
nuclei, ventricles, brainstem, cerebellum, orbits; periventricular lesions oriented away from
the ventricle wall like Dawson's fingers, juxtacortical, deep white matter and infratentorial
lesions) is sampled onto a scanner grid with an LPS affine: 2-D thick slices (slice profile
averaged) or a 3-D isotropic volume, axial or sagittal, a head pose (rotation and
translation), a smooth bias field, Rician noise and a random intensity scale.

Follow-up pairs share the anatomy and differ in lesions (new, enlarged, stable, shrunk) and in
head position. Only numpy and scipy are used, so tests can import this module without torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from training.ms_lesion.phantom import (
    INFRATENTORIAL,
    KIND_WEIGHTS,
    LESION_KINDS,
    MIN_LESION_SEMI_AXIS_MM,
    PARENCHYMA,
    PHANTOM_MIN_XYZ,
    PHANTOM_MM,
    PHANTOM_SHAPE,
    BoolArray,
    BrainPhantom,
    Contrast,
    FloatArray,
    LesionKind,
    LesionSpec,
    Tissue,
    Vec3,
    keeps_clear,
)

__all__ = [
    "INFRATENTORIAL",
    "KIND_WEIGHTS",
    "LESION_KINDS",
    "PARENCHYMA",
    "PHANTOM_MIN_XYZ",
    "PHANTOM_MM",
    "PHANTOM_SHAPE",
    "BrainPhantom",
    "ChangeStatus",
    "Contrast",
    "FollowupPair",
    "HeadPose",
    "LesionChange",
    "LesionKind",
    "LesionSpec",
    "LesionTruth",
    "Orientation",
    "Protocol",
    "SyntheticFlair",
    "Tissue",
    "acquire",
    "evolve_lesions",
    "generate_flair",
    "generate_followup_pair",
    "protocol_affine",
    "random_lesion_count",
    "random_pose",
    "random_protocol",
]

logger = logging.getLogger(__name__)

Orientation = Literal["axial", "sagittal", "coronal"]
ChangeStatus = Literal["new", "enlarged", "stable", "shrunk", "resolved"]

SLICE_PROFILE_STEP_MM = 1.25
"""Thick slices average phantom samples this far apart across the slice thickness."""


@dataclass(frozen=True)
class HeadPose:
    """Where the head lies in the scanner: LPS = R(rotation) @ head + translation."""

    rotation_deg: Vec3 = (0.0, 0.0, 0.0)
    """Rotations about the x (nodding), y (rolling) and z (turning) axes, degrees."""
    translation_mm: Vec3 = (0.0, 0.0, 0.0)

    def matrix(self) -> npt.NDArray[np.float64]:
        rx, ry, rz = (math.radians(a) for a in self.rotation_deg)
        cx, sx, cy, sy, cz, sz = (
            math.cos(rx),
            math.sin(rx),
            math.cos(ry),
            math.sin(ry),
            math.cos(rz),
            math.sin(rz),
        )
        mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        result: npt.NDArray[np.float64] = mz @ my @ mx
        return result

    def head_to_lps(self, point: Vec3) -> Vec3:
        p = self.matrix() @ np.asarray(point, dtype=np.float64) + np.asarray(self.translation_mm)
        return (float(p[0]), float(p[1]), float(p[2]))


@dataclass(frozen=True)
class Protocol:
    """How the scanner samples the head."""

    mode: Literal["2d", "3d"]
    pixel_mm: float
    slice_spacing_mm: float
    slice_thickness_mm: float
    rows: int
    columns: int
    slices: int
    orientation: Orientation = "axial"
    centre_head_mm: Vec3 = (0.0, 0.0, 5.0)
    """Head-frame point at the centre of the field of view."""

    def __post_init__(self) -> None:
        if min(self.pixel_mm, self.slice_spacing_mm, self.slice_thickness_mm) <= 0:
            raise ValueError("Protocol spacings and thickness must be positive")
        if min(self.rows, self.columns, self.slices) < 1:
            raise ValueError("Protocol rows, columns and slices must be at least 1")


@dataclass(frozen=True)
class LesionTruth:
    """A lesion as it appears in one generated exam."""

    number: int
    """1-based; the same lesion keeps its number in both exams of a follow-up pair."""
    kind: LesionKind
    spec: LesionSpec
    centre_lps: Vec3
    centre_voxel: Vec3
    """Centroid of the lesion's voxels in the exam's (k, i, j) index space."""
    voxels: int
    volume_mm3: float
    """Voxel count times voxel volume (what a perfect segmentation would measure)."""


@dataclass(frozen=True)
class SyntheticFlair:
    """A generated exam and its ground truth."""

    image: npt.NDArray[np.uint16]
    """(slices, rows, columns) stored values (MR has no physical unit)."""
    affine: npt.NDArray[np.float64]
    """4x4: (k, i, j, 1) -> LPS mm."""
    lesion_labels: npt.NDArray[np.int16]
    """Lesion number per voxel (0 = no lesion): the reference segmentation."""
    anatomy: npt.NDArray[np.uint8]
    """``Tissue`` label per voxel (nearest phantom voxel at the slice centre)."""
    lesions: tuple[LesionTruth, ...]
    """Lesions with at least one voxel in this exam."""
    protocol: Protocol
    pose: HeadPose
    contrast: Contrast

    @property
    def spacing_mm(self) -> Vec3:
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def lesion_mask(self) -> BoolArray:
        result: BoolArray = self.lesion_labels > 0
        return result


@dataclass(frozen=True)
class LesionChange:
    """How one lesion changed between the exams of a pair."""

    number: int
    status: ChangeStatus
    prior_volume_mm3: float
    """Ellipsoid volume in the prior exam (0 for a new lesion)."""
    current_volume_mm3: float
    """Ellipsoid volume in the current exam (0 for a resolved lesion)."""


@dataclass(frozen=True)
class FollowupPair:
    prior: SyntheticFlair
    current: SyntheticFlair
    changes: tuple[LesionChange, ...]


# ---------------------------------------------------------------------------------------------
# Acquisition


_DIRECTIONS: dict[Orientation, tuple[Vec3, Vec3, Vec3]] = {
    # (slice, row, column) directions in the scanner's LPS frame.
    "axial": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),
    "sagittal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "coronal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
}


def protocol_affine(protocol: Protocol, pose: HeadPose) -> npt.NDArray[np.float64]:
    """The (k, i, j) -> LPS affine of an acquisition centred on the protocol's head point."""
    slice_dir, row_dir, col_dir = (np.array(d) for d in _DIRECTIONS[protocol.orientation])
    steps = (protocol.slice_spacing_mm, protocol.pixel_mm, protocol.pixel_mm)
    centre = np.array(pose.head_to_lps(protocol.centre_head_mm))
    sizes = (protocol.slices, protocol.rows, protocol.columns)
    affine = np.eye(4)
    for axis, (direction, step) in enumerate(
        zip((slice_dir, row_dir, col_dir), steps, strict=True)
    ):
        affine[:3, axis] = direction * step
    origin = centre - sum(affine[:3, axis] * (n - 1) / 2.0 for axis, n in enumerate(sizes))
    affine[:3, 3] = origin
    return affine


def acquire(
    phantom: BrainPhantom,
    lesions: Sequence[LesionSpec],
    protocol: Protocol,
    pose: HeadPose,
    rng: np.random.Generator,
    *,
    contrast: Contrast = "flair",
    numbers: Sequence[int] | None = None,
) -> SyntheticFlair:
    """Sample one exam of ``phantom`` with ``lesions`` (numbered ``numbers``, default 1..n)."""
    signal, fraction, painted = phantom.render(lesions, rng, contrast)
    if numbers is not None:
        if len(numbers) != len(lesions):
            raise ValueError("acquire: numbers must have one entry per lesion")
        remap = np.zeros(len(lesions) + 1, dtype=np.int16)
        remap[1:] = np.asarray(numbers, dtype=np.int16)
        painted = remap[painted]
    if protocol.pixel_mm > 1.15:
        sigma = math.sqrt(protocol.pixel_mm**2 - 1.0) / 2.355
        signal = ndimage.gaussian_filter(signal, (0.0, sigma, sigma))
    affine = protocol_affine(protocol, pose)
    to_head = np.linalg.inv(
        np.vstack(
            [np.hstack([pose.matrix(), np.array(pose.translation_mm)[:, None]]), [0, 0, 0, 1]]
        )
    )
    # (k, i, j) -> phantom (z, y, x) index: head = to_head @ affine; index = (head - min) / mm.
    head_of_index = to_head @ affine
    permute = np.zeros((4, 4))
    permute[0, 2] = permute[1, 1] = permute[2, 0] = 1.0 / PHANTOM_MM
    permute[3, 3] = 1.0
    shift = np.eye(4)
    shift[:3, 3] = -np.array(PHANTOM_MIN_XYZ)
    phantom_of_index = permute @ shift @ head_of_index

    n_sub = max(1, math.ceil(protocol.slice_thickness_mm / SLICE_PROFILE_STEP_MM))
    offsets = (np.arange(n_sub) + 0.5) / n_sub - 0.5  # fractions of the slice thickness
    offsets_k = offsets * protocol.slice_thickness_mm / protocol.slice_spacing_mm
    shape = (protocol.slices, protocol.rows, protocol.columns)
    image = np.empty(shape, dtype=np.float32)
    frac_out = np.zeros(shape, dtype=np.float32)
    numbers_out = np.zeros(shape, dtype=np.int16)
    anatomy = np.empty(shape, dtype=np.uint8)
    # Lesion maps are sampled only where a lesion may be (cheap nearest-neighbour test first).
    near_lesion = ndimage.binary_dilation(fraction > 0, iterations=2).astype(np.uint8)
    ii, jj = np.meshgrid(
        np.arange(protocol.rows, dtype=np.float64),
        np.arange(protocol.columns, dtype=np.float64),
        indexing="ij",
    )
    plane = np.stack([np.zeros_like(ii), ii, jj, np.ones_like(ii)]).reshape(4, -1)
    in_plane = (protocol.rows, protocol.columns)
    for k in range(protocol.slices):
        acc = np.zeros(protocol.rows * protocol.columns, dtype=np.float32)
        acc_f = np.zeros_like(acc)
        best_num = np.zeros(protocol.rows * protocol.columns, dtype=np.int16)
        for n, dk in enumerate(offsets_k):
            plane[0] = k + dk
            coords = (phantom_of_index @ plane)[:3]
            acc += ndimage.map_coordinates(signal, coords, order=1, mode="constant", cval=0.0)
            if n == n_sub // 2:
                anatomy[k] = ndimage.map_coordinates(
                    phantom.labels, coords, order=0, mode="constant", cval=0
                ).reshape(in_plane)
            near = ndimage.map_coordinates(near_lesion, coords, order=0, mode="constant") > 0
            if not near.any():
                continue
            sub = coords[:, near]
            acc_f[near] += ndimage.map_coordinates(fraction, sub, order=1, mode="constant")
            best_num[near] = np.maximum(
                best_num[near], ndimage.map_coordinates(painted, sub, order=0, mode="constant")
            )
        image[k] = (acc / n_sub).reshape(in_plane)
        frac_out[k] = (acc_f / n_sub).reshape(in_plane)
        numbers_out[k] = best_num.reshape(in_plane)
    numbers_out[frac_out < 0.5] = 0
    stored = _scanner_effects(image, rng)
    lesions_truth = _lesion_truths(
        numbers_out, affine, lesions, numbers or list(range(1, len(lesions) + 1))
    )
    return SyntheticFlair(
        image=stored,
        affine=affine,
        lesion_labels=numbers_out,
        anatomy=anatomy,
        lesions=lesions_truth,
        protocol=protocol,
        pose=pose,
        contrast=contrast,
    )


def _scanner_effects(signal: FloatArray, rng: np.random.Generator) -> npt.NDArray[np.uint16]:
    """Bias field, Rician noise and a random intensity scale; rounded to 12-bit-ish integers."""
    nk, ni, nj = signal.shape
    w, v, u = np.meshgrid(
        np.linspace(-1.0, 1.0, nk, dtype=np.float32),
        np.linspace(-1.0, 1.0, ni, dtype=np.float32),
        np.linspace(-1.0, 1.0, nj, dtype=np.float32),
        indexing="ij",
        sparse=True,
    )
    strength = float(rng.uniform(0.05, 0.25))
    terms = (u, v, w, u * v, v * w, u * w, u * u, v * v, w * w)
    log_bias = sum(np.float32(rng.normal(0.0, strength / 2.0)) * t for t in terms)
    signal = signal * np.exp(np.asarray(log_bias, dtype=np.float32))
    sigma = np.float32(1.0 / rng.uniform(12.0, 40.0))
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imag * imag)
    scale = float(rng.uniform(150.0, 1500.0))
    out: npt.NDArray[np.uint16] = np.clip(np.rint(magnitude * scale), 0, 65535).astype(np.uint16)
    return out


def _lesion_truths(
    numbers: npt.NDArray[np.int16],
    affine: npt.NDArray[np.float64],
    specs: Sequence[LesionSpec],
    spec_numbers: Sequence[int],
) -> tuple[LesionTruth, ...]:
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    by_number = dict(zip(spec_numbers, specs, strict=True))
    present = [int(n) for n in np.unique(numbers) if n > 0]
    if not present:
        return ()
    centres = ndimage.center_of_mass(np.ones_like(numbers, dtype=np.float32), numbers, present)
    counts = ndimage.sum_labels(np.ones_like(numbers), numbers, present)
    truths = []
    for n, centre, count in zip(present, centres, counts, strict=True):
        spec = by_number[n]
        lps = affine @ np.array([*centre, 1.0])
        truths.append(
            LesionTruth(
                number=n,
                kind=spec.kind,
                spec=spec,
                centre_lps=(float(lps[0]), float(lps[1]), float(lps[2])),
                centre_voxel=(float(centre[0]), float(centre[1]), float(centre[2])),
                voxels=int(count),
                volume_mm3=float(count) * voxel_mm3,
            )
        )
    return tuple(truths)


# ---------------------------------------------------------------------------------------------
# Random protocols, poses and whole exams


def random_protocol(
    rng: np.random.Generator,
    mode: Literal["2d", "3d"] | None = None,
    orientation: Orientation | None = None,
) -> Protocol:
    """A clinical-looking FLAIR protocol: 2-D axial 3-5 mm slices or 3-D ~1 mm isotropic."""
    if mode is None:
        mode = "2d" if rng.uniform() < 0.55 else "3d"
    z_lo = float(rng.uniform(-68.0, -52.0))
    z_hi = float(rng.uniform(74.0, 84.0))
    centre = (float(rng.uniform(-3.0, 3.0)), float(rng.uniform(-6.0, 6.0)), (z_lo + z_hi) / 2)
    if mode == "2d":
        thickness = float(rng.uniform(3.0, 5.0))
        spacing = thickness * float(rng.choice([1.0, 1.0, 1.1, 1.2]))
        pixel = float(rng.uniform(0.7, 1.0))
        fov = float(rng.uniform(220.0, 240.0))
        matrix = round(fov / pixel / 2.0) * 2
        slices = round((z_hi - z_lo) / spacing) + 1
        return Protocol("2d", pixel, spacing, thickness, matrix, matrix, slices, "axial", centre)
    iso = float(rng.uniform(0.9, 1.2))
    if orientation is None:
        orientation = "axial" if rng.uniform() < 0.7 else "sagittal"
    extent = (z_hi - z_lo, 230.0, 180.0)  # head-feet, antero-posterior, left-right
    if orientation == "axial":
        sizes_mm = (extent[0], extent[1], extent[2])
    elif orientation == "sagittal":
        sizes_mm = (extent[2], extent[0] + 10.0, extent[1])
    else:
        sizes_mm = (extent[1] - 20.0, extent[0] + 10.0, extent[2])
    return Protocol(
        "3d",
        iso,
        iso,
        iso,
        round(sizes_mm[1] / iso),
        round(sizes_mm[2] / iso),
        round(sizes_mm[0] / iso),
        orientation,
        centre,
    )


def random_pose(rng: np.random.Generator, scale: float = 1.0) -> HeadPose:
    """A head position in the coil: a few degrees of tilt and up to ~10 mm of shift."""
    return HeadPose(
        rotation_deg=(
            float(rng.uniform(-10.0, 10.0)) * scale,
            float(rng.uniform(-5.0, 5.0)) * scale,
            float(rng.uniform(-5.0, 5.0)) * scale,
        ),
        translation_mm=(
            float(rng.uniform(-6.0, 6.0)) * scale,
            float(rng.uniform(-10.0, 10.0)) * scale,
            float(rng.uniform(-10.0, 10.0)) * scale,
        ),
    )


def random_lesion_count(rng: np.random.Generator) -> int:
    """0 for about one exam in six, else 1-24 with more small counts than large ones."""
    if rng.uniform() < 0.16:
        return 0
    return int(min(24, 1 + rng.geometric(0.12)))


def generate_flair(
    seed: int,
    *,
    protocol: Protocol | None = None,
    pose: HeadPose | None = None,
    lesions: int | Sequence[LesionSpec] | None = None,
    contrast: Contrast = "flair",
    phantom: BrainPhantom | None = None,
) -> SyntheticFlair:
    """One synthetic exam, deterministic in its arguments.

    ``lesions``: None draws a random count, an int that many random lesions (fewer when there
    is no room), a sequence exactly those. ``phantom`` reuses an already built anatomy of the
    same seed (building one takes a few seconds).
    """
    if phantom is None:
        phantom = BrainPhantom(seed)
    elif phantom.seed != seed:
        raise ValueError(f"generate_flair: phantom is of seed {phantom.seed}, not {seed}")
    rng = np.random.default_rng([seed, 31])
    if protocol is None:
        protocol = random_protocol(rng)
    if pose is None:
        pose = random_pose(rng)
    if lesions is None or isinstance(lesions, int):
        count = random_lesion_count(rng) if lesions is None else lesions
        specs = phantom.random_lesions(rng, count)
    else:
        specs = list(lesions)
    return acquire(phantom, specs, protocol, pose, rng, contrast=contrast)


@dataclass(frozen=True)
class _Evolution:
    specs_current: list[LesionSpec] = field(default_factory=list)
    numbers_current: list[int] = field(default_factory=list)
    changes: list[LesionChange] = field(default_factory=list)


def evolve_lesions(
    phantom: BrainPhantom,
    prior: Sequence[LesionSpec],
    rng: np.random.Generator,
    new_count: int | None = None,
) -> _Evolution:
    """The current exam's lesions: most prior lesions stable, some enlarged, shrunk or gone,
    and ``new_count`` (default 0-4) new ones; numbers continue after the prior's."""
    out = _Evolution()
    for number, spec in enumerate(prior, start=1):
        draw = float(rng.uniform())
        if draw < 0.6:
            status: ChangeStatus = "stable"
            now: LesionSpec | None = spec
        elif draw < 0.78:
            status = "enlarged"
            now = spec.scaled(float(rng.uniform(1.35, 1.7)))
        elif draw < 0.94:
            status = "shrunk"
            now = spec.scaled(float(rng.uniform(0.6, 0.8)))
            if min(now.semi_axes_mm) < MIN_LESION_SEMI_AXIS_MM:
                now = None
                status = "resolved"
        else:
            status, now = "resolved", None
        if (
            now is not None
            and status == "enlarged"
            and not keeps_clear(now, [s for s in prior if s is not spec], 1.0)
        ):
            status, now = "stable", spec
        if now is not None:
            out.specs_current.append(now)
            out.numbers_current.append(number)
        out.changes.append(
            LesionChange(number, status, spec.volume_mm3, 0.0 if now is None else now.volume_mm3)
        )
    count = int(rng.integers(0, 5)) if new_count is None else new_count
    fresh = phantom.random_lesions(rng, count, existing=[*prior, *out.specs_current])
    for n, spec in enumerate(fresh, start=len(prior) + 1):
        out.specs_current.append(spec)
        out.numbers_current.append(n)
        out.changes.append(LesionChange(n, "new", 0.0, spec.volume_mm3))
    return out


def generate_followup_pair(
    seed: int,
    *,
    prior_lesions: int | Sequence[LesionSpec] | None = None,
    new_lesions: int | None = None,
    protocols: tuple[Protocol, Protocol] | None = None,
    poses: tuple[HeadPose, HeadPose] | None = None,
    phantom: BrainPhantom | None = None,
) -> FollowupPair:
    """A prior and a current exam of the same synthetic brain, deterministic in the arguments.

    The head lies differently in each exam; by default both use the same random protocol
    (as a follow-up protocol should) with a one-in-four chance of a different one.
    """
    if phantom is None:
        phantom = BrainPhantom(seed)
    rng = np.random.default_rng([seed, 41])
    if prior_lesions is None or isinstance(prior_lesions, int):
        count = int(rng.integers(2, 16)) if prior_lesions is None else prior_lesions
        prior_specs = phantom.random_lesions(rng, count)
    else:
        prior_specs = list(prior_lesions)
    evolution = evolve_lesions(phantom, prior_specs, rng, new_lesions)
    if protocols is None:
        first = random_protocol(rng)
        second = first if rng.uniform() < 0.75 else random_protocol(rng)
        protocols = (first, second)
    if poses is None:
        poses = (random_pose(rng), random_pose(rng))
    prior = acquire(phantom, prior_specs, protocols[0], poses[0], rng)
    current = acquire(
        phantom,
        evolution.specs_current,
        protocols[1],
        poses[1],
        rng,
        numbers=evolution.numbers_current,
    )
    return FollowupPair(prior=prior, current=current, changes=tuple(evolution.changes))
