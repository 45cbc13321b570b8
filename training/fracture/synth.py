"""Synthetic radiographs of long bones, with and without fractures (numpy/scipy, seeded).

A limb is a soft-tissue cylinder (fat over muscle) holding one or two long bones, each a
tapered, slightly bowed tube of cortex around marrow, projected along the beam: the line
integral through a tube gives the bright cortical "tramlines" of a real radiograph. A bone
may end in the field with a metaphyseal flare, a rounded articular end, a joint space and the
next bone. Fractures cut a bone along a lucent line (transverse, oblique, spiral-like,
segmental or incomplete) and move the distal fragment (translation, shortening or distraction,
angulation). Look-alikes that are not fractures: growth plates, nutrient canals, joint spaces,
skin folds, splint edges, crossing bones. The detector adds exposure, scatter, heel effect,
blur, quantum noise, vendor processing (unsharp mask, gamma), collimation with a physical
(bright) or electronic (black) shutter, lead side markers and burned-in text; pixels are
stored as MONOCHROME1 or MONOCHROME2 integers of 10 to 16 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatImage = npt.NDArray[np.float32]

# Linear attenuation (1/mm) at a mid-range extremity kVp; bone values are excess over muscle.
MU_MUSCLE = 0.020
MU_FAT = 0.016
MU_CORTEX_EXCESS = 0.055
MU_MARROW_EXCESS = 0.006
MU_LEAD = 0.5
EDGE_MM = 0.35
"""Width of the soft edge given to fracture lines and fragment boundaries (anti-aliasing)."""
MIN_GAP_MM = 1.0
"""Narrowest fracture gap drawn. Thinner hairlines vanish once a 220-430 mm radiograph is
letterboxed to the detector's working size (448 pixels: 0.5-0.96 mm per pixel); labelling
invisible fractures would teach the detector to guess."""
MAX_GAP_MM = 3.0
"""Widest fracture gap drawn (before any distraction of a displaced fracture)."""
BOX_MARGIN_MM = 3.0
"""Truth boxes enclose the fracture line(s) on both fragments plus this margin."""
PATTERNS = ("transverse", "oblique", "spiral", "segmental", "incomplete")
PATTERN_WEIGHTS = (0.25, 0.25, 0.2, 0.1, 0.2)


@dataclass(frozen=True)
class BoneShape:
    """Size ranges of one long bone (mm)."""

    name: str
    radius_mm: tuple[float, float]
    cortex_fraction: tuple[float, float]
    """Cortical thickness as a fraction of the mid-shaft outer radius."""


@dataclass(frozen=True)
class LimbShape:
    """A limb segment: its bones, soft tissue and the usual detector size (mm)."""

    name: str
    body_part: str
    """DICOM BodyPartExamined defined term for this view."""
    bones: tuple[BoneShape, ...]
    separation_mm: tuple[float, float]
    """Distance between the two bones' centre lines (two-bone limbs)."""
    soft_radius_mm: tuple[float, float]
    detector_long_mm: tuple[float, float]


LIMBS: dict[str, LimbShape] = {
    "lower_leg": LimbShape(
        "lower_leg",
        "LEG",
        (
            BoneShape("tibia", (10.0, 14.0), (0.3, 0.45)),
            BoneShape("fibula", (5.0, 7.0), (0.3, 0.45)),
        ),
        (20.0, 30.0),
        (42.0, 62.0),
        (300.0, 430.0),
    ),
    "forearm": LimbShape(
        "forearm",
        "FOREARM",
        (BoneShape("radius", (7.0, 10.0), (0.3, 0.45)), BoneShape("ulna", (6.0, 8.5), (0.3, 0.45))),
        (13.0, 20.0),
        (28.0, 40.0),
        (220.0, 330.0),
    ),
    "femur": LimbShape(
        "femur",
        "FEMUR",
        (BoneShape("femur", (12.0, 16.0), (0.3, 0.45)),),
        (0.0, 0.0),
        (55.0, 85.0),
        (350.0, 430.0),
    ),
    "humerus": LimbShape(
        "humerus",
        "HUMERUS",
        (BoneShape("humerus", (9.0, 13.0), (0.3, 0.45)),),
        (0.0, 0.0),
        (38.0, 55.0),
        (280.0, 400.0),
    ),
}

_LETTERS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


@dataclass(frozen=True)
class FractureTruth:
    """Where a generated fracture is, in pixel coordinates of the generated image."""

    bone: str
    pattern: str
    box: tuple[float, float, float, float]
    """(row_min, col_min, row_max, col_max): the fracture line(s) on both fragments + margin."""
    centre: tuple[float, float]
    """(row, column) of the fracture centre on the bone axis."""
    displacement_mm: float
    angulation_deg: float
    line: tuple[tuple[float, float], ...] = ()
    """(row, column) points along the fracture line(s), on both fragments."""

    @property
    def displaced(self) -> bool:
        return self.displacement_mm >= 1.0 or self.angulation_deg >= 3.0


@dataclass(frozen=True)
class SyntheticRadiograph:
    """One generated radiograph with the header values a modality would send."""

    pixels: npt.NDArray[np.uint16]
    """Stored values (rows, columns); bone is bright only after MONOCHROME1 inversion."""
    photometric_interpretation: str
    bits_stored: int
    pixel_spacing_mm: float
    limb: str
    body_part: str
    bones: tuple[str, ...]
    fractures: tuple[FractureTruth, ...]
    confounders: tuple[str, ...] = field(default=())
    """Fracture look-alikes drawn in this image (growth plate, nutrient canal, ...)."""


@dataclass(frozen=True)
class _Line:
    """A fracture (or growth plate, canal) line in bone coordinates: s = s0 + tan*d + wave."""

    s0: float
    tan: float
    amplitude: float
    wavelength: float
    phase: float
    gap: float
    depth: float
    """Fraction of the bone's attenuation missing in the gap (1 = a clean full-width gap)."""
    d_range: tuple[float, float]

    def at(self, d: npt.ArrayLike) -> npt.NDArray[np.float32]:
        d = np.asarray(d)
        wave = self.amplitude * np.sin(2.0 * math.pi * d / self.wavelength + self.phase)
        out: npt.NDArray[np.float32] = np.asarray(self.s0 + self.tan * d + wave, dtype=np.float32)
        return out


@dataclass(frozen=True)
class _Rigid:
    """Rotation by ``angle`` about ``pivot`` then translation, in bone (s, d) coordinates."""

    angle: float = 0.0
    pivot: tuple[float, float] = (0.0, 0.0)
    shift: tuple[float, float] = (0.0, 0.0)

    def forward(self, s: npt.ArrayLike, d: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        c, sn = math.cos(self.angle), math.sin(self.angle)
        ds, dd = np.asarray(s) - self.pivot[0], np.asarray(d) - self.pivot[1]
        return (
            self.pivot[0] + c * ds - sn * dd + self.shift[0],
            self.pivot[1] + sn * ds + c * dd + self.shift[1],
        )

    def inverse(self, s: FloatImage, d: FloatImage) -> tuple[FloatImage, FloatImage]:
        c, sn = math.cos(self.angle), math.sin(self.angle)
        ds = s - np.float32(self.pivot[0] + self.shift[0])
        dd = d - np.float32(self.pivot[1] + self.shift[1])
        return (
            (np.float32(self.pivot[0]) + np.float32(c) * ds + np.float32(sn) * dd),
            (np.float32(self.pivot[1]) - np.float32(sn) * ds + np.float32(c) * dd),
        )


@dataclass
class _Bone:
    name: str
    origin: tuple[float, float]
    """(y, x) mm of the point s = 0 on the centre line."""
    direction: tuple[float, float]
    radius: float
    cortex: float
    taper: float
    bow: float
    depth_scale: float
    end_s: float | None
    flare: float
    flare_len: float
    lines: list[_Line] = field(default_factory=list)
    transforms: list[_Rigid] = field(default_factory=list)
    """transforms[k] moves fragment k + 1 (beyond lines[k]); fragment 0 stays put."""
    gaps: list[_Line] = field(default_factory=list)
    """Lucent lines that do not separate fragments (incomplete fracture, physis, canal)."""

    def local(self, y: FloatImage, x: FloatImage) -> tuple[FloatImage, FloatImage]:
        dy, dx = y - np.float32(self.origin[0]), x - np.float32(self.origin[1])
        ay, ax = self.direction
        s = dy * np.float32(ay) + dx * np.float32(ax)
        d = -dy * np.float32(ax) + dx * np.float32(ay) - np.float32(self.bow) * s * s
        return s, d

    def to_image(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image (y, x) mm of bone coordinates (s, d): the inverse of ``local``."""
        ay, ax = self.direction
        d_full = d + self.bow * s * s
        return (self.origin[0] + s * ay - d_full * ax, self.origin[1] + s * ax + d_full * ay)

    def outer_radius(self, s: npt.NDArray[np.float32]) -> tuple[FloatImage, FloatImage]:
        """Outer radius at ``s`` and the metaphysis weight (0 in the shaft, 1 at the end)."""
        r = np.float32(self.radius) * (1.0 + np.float32(self.taper) * s)
        if self.end_s is None:
            return r.astype(np.float32), np.zeros_like(r, dtype=np.float32)
        m = _smoothstep((s - np.float32(self.end_s - self.flare_len)) / np.float32(self.flare_len))
        r = r * (1.0 + np.float32(self.flare) * m)
        cap = np.float32(0.6 * self.radius * (1.0 + self.flare))
        beyond = np.clip((s - np.float32(self.end_s)) / cap, 0.0, 1.0)
        r = r * np.sqrt(np.clip(1.0 - beyond * beyond, 0.0, 1.0))
        r = np.where(s - np.float32(self.end_s) >= cap, np.float32(0.0), r)
        return r.astype(np.float32), m.astype(np.float32)

    def density(self, s: FloatImage, d: FloatImage, texture: FloatImage) -> FloatImage:
        """Excess line integral of the intact bone at bone coordinates (s, d)."""
        r_out, m = self.outer_radius(s)
        cortex = np.float32(self.cortex) * (1.0 - np.float32(0.75) * m)
        r_in = np.maximum(r_out - cortex, 0.0)
        d2 = d * d
        chord_out = 2.0 * np.sqrt(np.maximum(r_out * r_out - d2, 0.0))
        chord_in = 2.0 * np.sqrt(np.maximum(r_in * r_in - d2, 0.0))
        marrow = np.float32(MU_MARROW_EXCESS) * chord_in * (1.0 + (0.1 + 0.3 * m) * texture)
        out = np.float32(MU_CORTEX_EXCESS) * (chord_out - chord_in) + marrow
        result: FloatImage = (out * np.float32(self.depth_scale)).astype(np.float32)
        return result


def _smoothstep(x: npt.ArrayLike) -> FloatImage:
    t = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _smooth(image: FloatImage, sigma_px: float) -> FloatImage:
    """Gaussian blur with a wide kernel, computed on a 4x subsample and interpolated back."""
    rows, cols = image.shape
    small = image[::4, ::4]
    blurred = ndimage.gaussian_filter(small, max(1.0, sigma_px / 4.0))
    up = ndimage.zoom(blurred, (rows / small.shape[0], cols / small.shape[1]), order=1)
    out = np.empty_like(image)
    out[: up.shape[0], : up.shape[1]] = up[:rows, :cols]
    if up.shape[0] < rows:
        out[up.shape[0] :] = out[up.shape[0] - 1]
    if up.shape[1] < cols:
        out[:, up.shape[1] :] = out[:, up.shape[1] - 1 : up.shape[1]]
    return out


def _inside(u: FloatImage, edge: float) -> FloatImage:
    """Soft step: 0 for u << 0, 1 for u >> 0."""
    result: FloatImage = np.clip(u / np.float32(edge) + 0.5, 0.0, 1.0).astype(np.float32)
    return result


def _band(u: FloatImage, width: float, edge: float) -> FloatImage:
    """Soft band of full ``width`` centred on u = 0."""
    inside = (np.float32(width / 2) - np.abs(u)) / np.float32(edge) + 0.5
    result: FloatImage = np.clip(inside, 0.0, 1.0).astype(np.float32)
    return result


def _d_window(d: FloatImage, d_range: tuple[float, float], edge: float) -> FloatImage:
    return _inside(d - np.float32(d_range[0]), edge) * _inside(np.float32(d_range[1]) - d, edge)


def _bone_image(bone: _Bone, y: FloatImage, x: FloatImage, texture: FloatImage) -> FloatImage:
    """Line integral of a bone with its fragments and lucent lines, on the image grid."""
    s, d = bone.local(y, x)
    edge = EDGE_MM
    total = np.zeros_like(s)
    n_fragments = len(bone.lines) + 1
    for k in range(n_fragments):
        if k == 0:
            fs, fd = s, d
        else:
            fs, fd = bone.transforms[k - 1].inverse(s, d)
        dens = bone.density(fs, fd, texture)
        mask = np.ones_like(fs)
        if k > 0:
            line = bone.lines[k - 1]
            mask *= _inside(fs - line.at(fd) - np.float32(line.gap / 2), edge)
            # The gap is partly filled when the fracture plane is oblique to the beam.
            fill = _band(fs - line.at(fd), line.gap, edge) * np.float32(1.0 - line.depth)
            total += dens * fill
        if k < n_fragments - 1:
            line = bone.lines[k]
            mask *= _inside(line.at(fd) - fs - np.float32(line.gap / 2), edge)
        for gap in bone.gaps:
            window = _d_window(fd, gap.d_range, edge)
            mask *= 1.0 - np.float32(gap.depth) * _band(fs - gap.at(fd), gap.gap, edge) * window
        total += dens * mask
    return total


def _next_bone(bone: _Bone, y: FloatImage, x: FloatImage, gap_mm: float) -> FloatImage:
    """The bone across the joint from ``bone``'s articular end: a projected ellipsoid."""
    assert bone.end_s is not None
    s, d = bone.local(y, x)
    r_end = bone.radius * (1.0 + bone.flare)
    cap = 0.6 * r_end
    half_len = 1.3 * r_end
    centre = bone.end_s + cap + gap_mm + half_len
    u = (s - np.float32(centre)) / np.float32(half_len)
    v = d / np.float32(1.1 * r_end)
    inside = np.clip(1.0 - u * u - v * v, 0.0, 1.0)
    chord = 2.0 * np.float32(1.1 * r_end) * np.sqrt(inside)
    shell = np.sqrt(inside) < 0.35
    weight = np.where(
        shell, np.float32(0.9 * MU_CORTEX_EXCESS), np.float32(0.35 * MU_CORTEX_EXCESS)
    )
    return (weight * chord * np.float32(bone.depth_scale)).astype(np.float32)


def _letter_mask(
    letter: str, rows: int, cols: int, top: int, left: int, height_px: int, mirror: bool
) -> npt.NDArray[np.bool_]:
    glyph = np.array([[c == "1" for c in row] for row in _LETTERS[letter]], dtype=bool)
    if mirror:
        glyph = glyph[:, ::-1]
    scale = max(1, height_px // 7)
    big = np.kron(glyph, np.ones((scale, scale), dtype=bool))
    mask = np.zeros((rows, cols), dtype=bool)
    h, w = big.shape
    top = int(np.clip(top, 0, max(rows - h, 0)))
    left = int(np.clip(left, 0, max(cols - w, 0)))
    mask[top : top + h, left : left + w] = big[: rows - top, : cols - left]
    return mask


def _text_mask(
    rng: np.random.Generator, rows: int, cols: int, corner: tuple[bool, bool]
) -> npt.NDArray[np.bool_]:
    """Burned-in annotation: a few lines of random 5x7 glyphs near one corner."""
    mask = np.zeros((rows, cols), dtype=bool)
    scale = int(rng.integers(1, 3))
    n_lines = int(rng.integers(1, 4))
    char_h, char_w = 7 * scale, 6 * scale
    for line in range(n_lines):
        n_chars = int(rng.integers(4, 14))
        width = n_chars * char_w
        top = 4 + line * (char_h + 2 * scale)
        left = 4
        if corner[0]:
            top = rows - 4 - (line + 1) * (char_h + 2 * scale)
        if corner[1]:
            left = cols - 4 - width
        if top < 0 or left < 0 or top + char_h > rows or left + width > cols:
            continue
        for c in range(n_chars):
            glyph = rng.uniform(size=(7, 5)) < 0.45
            big = np.kron(glyph, np.ones((scale, scale), dtype=bool))
            r0, c0 = top, left + c * char_w
            mask[r0 : r0 + 7 * scale, c0 : c0 + 5 * scale] |= big
    return mask


def _random_line(rng: np.random.Generator, s0: float, radius: float, pattern: str) -> _Line:
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    amplitude, wavelength = 0.0, 4.0 * radius
    if pattern == "transverse":
        angle = rng.uniform(0.0, 15.0)
    elif pattern == "spiral":
        angle = rng.uniform(35.0, 62.0)
        amplitude = rng.uniform(0.15, 0.35) * radius
        wavelength = rng.uniform(2.5, 4.0) * radius
    else:
        angle = rng.uniform(22.0, 58.0)
    return _Line(
        s0=s0,
        tan=sign * math.tan(math.radians(angle)),
        amplitude=amplitude,
        wavelength=wavelength,
        phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        gap=float(rng.uniform(MIN_GAP_MM, MAX_GAP_MM)),
        depth=float(rng.uniform(0.6, 1.0)),
        d_range=(-4.0 * radius, 4.0 * radius),
    )


def _add_fracture(
    rng: np.random.Generator, bone: _Bone, s0: float, pattern: str
) -> tuple[float, float]:
    """Cut ``bone`` at ``s0``; returns (displacement mm, angulation degrees)."""
    r = bone.radius
    if pattern == "incomplete":
        line = _random_line(rng, s0, r, "oblique" if rng.uniform() < 0.5 else "transverse")
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        reach = float(rng.uniform(0.35, 0.8)) * 2.0 * r
        lo, hi = (r - reach, 2.0 * r) if side > 0 else (-2.0 * r, -r + reach)
        bone.gaps.append(
            _Line(line.s0, line.tan, 0.0, 1.0, 0.0, line.gap, max(line.depth, 0.7), (lo, hi))
        )
        return 0.0, 0.0
    displaced = rng.uniform() < 0.6
    shift_d = float(rng.uniform(-0.7, 0.7)) * r if displaced else float(rng.uniform(-0.4, 0.4))
    # An undisplaced fracture never overlaps its fragments: that would close the gap below
    # MIN_GAP_MM and leave nothing to see.
    shift_s = float(rng.uniform(-4.0, 3.0)) if displaced else float(rng.uniform(0.0, 0.5))
    angle = math.radians(float(rng.uniform(-18.0, 18.0))) if displaced else 0.0
    main = _random_line(rng, s0, r, pattern if pattern != "segmental" else "transverse")
    bone.lines.append(main)
    bone.transforms.append(_Rigid(angle, (s0, 0.0), (shift_s, shift_d)))
    if pattern == "segmental":
        second = _random_line(rng, s0 + float(rng.uniform(12.0, 30.0)), r, "oblique")
        bone.lines.append(second)
        extra = _Rigid(
            angle * 0.5, (second.s0, 0.0), (shift_s * 0.5, shift_d + float(rng.uniform(-2, 2)))
        )
        bone.transforms.append(extra)
    return math.hypot(shift_s, shift_d), abs(math.degrees(angle))


def _fracture_points(bone: _Bone) -> tuple[np.ndarray, np.ndarray]:
    """Image (y, x) points along every fracture line, on both of its fragments."""
    ys: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    for k, line in enumerate(bone.lines):
        r, _ = bone.outer_radius(np.array([line.s0], dtype=np.float32))
        d = np.linspace(-float(r[0]), float(r[0]), 25)
        s = line.at(d)
        before = bone.transforms[k - 1] if k > 0 else _Rigid()
        for transform in (before, bone.transforms[k]):
            fs, fd = transform.forward(s, d)
            y, x = bone.to_image(np.asarray(fs), np.asarray(fd))
            ys.append(y)
            xs.append(x)
    for gap in bone.gaps:
        d = np.linspace(gap.d_range[0], gap.d_range[1], 25)
        r, _ = bone.outer_radius(np.array([gap.s0], dtype=np.float32))
        d = np.clip(d, -float(r[0]), float(r[0]))
        y, x = bone.to_image(gap.at(d), d)
        ys.append(y)
        xs.append(x)
    return np.concatenate(ys), np.concatenate(xs)


def generate_radiograph(
    seed: int,
    *,
    fracture: bool | None = None,
    limb: str | None = None,
    size: int | None = None,
    photometric: str | None = None,
) -> SyntheticRadiograph:
    """A radiograph of one limb segment; deterministic by ``seed``.

    ``fracture`` None draws it (half the cases); ``size`` is the long side in pixels (random
    320-512 when None); ``limb`` one of ``LIMBS``; ``photometric`` MONOCHROME1 or MONOCHROME2.
    """
    rng = np.random.default_rng([seed, 20_231])
    if fracture is None:
        fracture = bool(rng.uniform() < 0.5)
    limb_name = limb or str(rng.choice(sorted(LIMBS)))
    if limb_name not in LIMBS:
        raise ValueError(f"limb {limb_name!r} is not one of {sorted(LIMBS)}")
    shape = LIMBS[limb_name]
    long_px = int(size) if size is not None else int(rng.integers(320, 513))
    if long_px < 64:
        raise ValueError(f"size {long_px} must be at least 64 pixels")
    if photometric is None:
        photometric = "MONOCHROME1" if rng.uniform() < 0.6 else "MONOCHROME2"
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric {photometric!r} must be MONOCHROME1 or MONOCHROME2")

    long_mm = float(rng.uniform(*shape.detector_long_mm))
    aspect = float(rng.uniform(0.6, 1.0))
    spacing = long_mm / long_px
    short_px = max(32, round(long_px * aspect))
    portrait = rng.uniform() < 0.7
    rows, cols = (long_px, short_px) if portrait else (short_px, long_px)
    height, width = rows * spacing, cols * spacing
    yy, xx = np.meshgrid(
        (np.arange(rows, dtype=np.float32) + 0.5) * np.float32(spacing),
        (np.arange(cols, dtype=np.float32) + 0.5) * np.float32(spacing),
        indexing="ij",
    )

    # Limb axis: along the long side of the image, sometimes at any angle.
    base = 0.0 if portrait else math.pi / 2
    theta = base + math.radians(float(rng.normal(0.0, 9.0)))
    if rng.uniform() < 0.12:
        theta = float(rng.uniform(0.0, math.pi))
    if rng.uniform() < 0.5:
        theta += math.pi
    axis = (math.cos(theta), math.sin(theta))  # (dy, dx)
    normal = (-axis[1], axis[0])
    centre = (
        height / 2 + float(rng.uniform(-0.08, 0.08)) * height,
        width / 2 + float(rng.uniform(-0.12, 0.12)) * width,
    )

    # Soft tissue: fat over muscle, tapered, with a muscle belly.
    dy, dx = yy - np.float32(centre[0]), xx - np.float32(centre[1])
    s_limb = dy * np.float32(axis[0]) + dx * np.float32(axis[1])
    t_limb = dy * np.float32(normal[0]) + dx * np.float32(normal[1])
    soft_r = float(rng.uniform(*shape.soft_radius_mm))
    belly = soft_r * float(rng.uniform(0.0, 0.25))
    belly_at = float(rng.uniform(-0.3, 0.3)) * long_mm
    half_width = np.float32(soft_r) * (1.0 + np.float32(rng.uniform(-0.0012, 0.0012)) * s_limb)
    half_width += np.float32(belly) * np.exp(-(((s_limb - belly_at) / (0.25 * long_mm)) ** 2))
    fat = float(rng.uniform(2.0, 0.3 * soft_r))
    depth = float(rng.uniform(0.85, 1.15))
    muscle_width = np.maximum(half_width - np.float32(fat), 0.0)
    t2 = t_limb * t_limb
    attenuation = np.float32(MU_FAT * 2 * depth) * np.sqrt(np.maximum(half_width**2 - t2, 0.0))
    attenuation += np.float32((MU_MUSCLE - MU_FAT) * 2 * depth) * np.sqrt(
        np.maximum(muscle_width**2 - t2, 0.0)
    )

    texture = ndimage.gaussian_filter(
        rng.normal(size=(rows, cols)).astype(np.float32), max(0.6, 1.2 / spacing)
    )
    texture /= max(float(texture.std()), 1e-6)

    # Bones.
    bones: list[_Bone] = []
    sep = float(rng.uniform(*shape.separation_mm))
    end_s: float | None = None
    if rng.uniform() < 0.55:
        end_s = float(rng.uniform(0.12, 0.42)) * long_mm
    offsets = [0.0] if len(shape.bones) == 1 else [-sep / 2, sep / 2]
    if len(shape.bones) == 2 and rng.uniform() < 0.5:
        offsets = offsets[::-1]
    for spec, offset in zip(shape.bones, offsets, strict=True):
        tilt = math.radians(float(rng.normal(0.0, 1.5)))
        b_theta = theta + tilt
        radius = float(rng.uniform(*spec.radius_mm))
        bones.append(
            _Bone(
                name=spec.name,
                origin=(centre[0] + offset * normal[0], centre[1] + offset * normal[1]),
                direction=(math.cos(b_theta), math.sin(b_theta)),
                radius=radius,
                cortex=radius * float(rng.uniform(*spec.cortex_fraction)),
                taper=float(rng.uniform(-0.0015, 0.0015)),
                bow=float(rng.uniform(-1.0, 1.0)) * 2e-4,
                depth_scale=float(rng.uniform(0.85, 1.15)),
                end_s=None if end_s is None else end_s + float(rng.uniform(-8.0, 8.0)),
                flare=float(rng.uniform(0.3, 0.8)),
                flare_len=float(rng.uniform(1.5, 3.0)) * radius,
            )
        )

    # Collimated field (in pixels): inset from the detector edges, slightly rotated.
    inset = [float(rng.uniform(0.0, 0.12)) if rng.uniform() < 0.7 else 0.0 for _ in range(4)]
    field_angle = math.radians(float(rng.uniform(-4.0, 4.0)))
    fy, fx = yy - np.float32(height / 2), xx - np.float32(width / 2)
    fr = fy * np.float32(math.cos(field_angle)) - fx * np.float32(math.sin(field_angle))
    fc = fy * np.float32(math.sin(field_angle)) + fx * np.float32(math.cos(field_angle))
    penumbra = float(rng.uniform(0.5, 2.5))
    in_field = (
        _inside(fr + np.float32(height / 2 * (1 - 2 * inset[0])), penumbra)
        * _inside(np.float32(height / 2 * (1 - 2 * inset[1])) - fr, penumbra)
        * _inside(fc + np.float32(width / 2 * (1 - 2 * inset[2])), penumbra)
        * _inside(np.float32(width / 2 * (1 - 2 * inset[3])) - fc, penumbra)
    )

    def visible(bone: _Bone, s: float, margin: float) -> bool:
        """Whether the point ``s`` on ``bone``'s axis is inside the field, ``margin`` mm in."""
        y, x = bone.to_image(np.array(s), np.array(0.0))
        r = int(float(y) / spacing)
        c = int(float(x) / spacing)
        if not (0 <= r < rows and 0 <= c < cols):
            return False
        m = int(margin / spacing)
        if r < m or c < m or r >= rows - m or c >= cols - m:
            return False
        return bool(in_field[r, c] > 0.99) and bool(
            in_field[min(max(r - m, 0), rows - 1), c] > 0.5
            and in_field[min(r + m, rows - 1), c] > 0.5
            and in_field[r, min(max(c - m, 0), cols - 1)] > 0.5
            and in_field[r, min(c + m, cols - 1)] > 0.5
        )

    confounders: list[str] = []
    fractures: list[FractureTruth] = []
    if fracture:
        n_fractures = 2 if (len(bones) == 2 and rng.uniform() < 0.25) else 1
        order = list(rng.permutation(len(bones)))
        for index in order[:n_fractures]:
            bone = bones[int(index)]
            candidates = np.linspace(-0.5 * long_mm, 0.5 * long_mm, 121)
            limit = bone.end_s - 0.4 * bone.radius if bone.end_s is not None else np.inf
            ok = [
                float(s)
                for s in candidates
                if s < limit - 30.0 * (len(fractures) > 0) and visible(bone, float(s), 25.0)
            ]
            if not ok:
                continue
            s0 = float(rng.choice(ok))
            pattern = str(rng.choice(PATTERNS, p=PATTERN_WEIGHTS))
            disp, ang = _add_fracture(rng, bone, s0, pattern)
            py, px = _fracture_points(bone)
            fy0, fx0 = bone.to_image(np.array(s0), np.array(0.0))
            pad = BOX_MARGIN_MM
            # Pixel (r, c) has its centre at ((r + 0.5), (c + 0.5)) * spacing mm.
            box = (
                max(0.0, (float(py.min()) - pad) / spacing - 0.5),
                max(0.0, (float(px.min()) - pad) / spacing - 0.5),
                min(rows - 1.0, (float(py.max()) + pad) / spacing - 0.5),
                min(cols - 1.0, (float(px.max()) + pad) / spacing - 0.5),
            )
            fractures.append(
                FractureTruth(
                    bone=bone.name,
                    pattern=pattern,
                    box=box,
                    centre=(float(fy0) / spacing - 0.5, float(fx0) / spacing - 0.5),
                    displacement_mm=disp,
                    angulation_deg=ang,
                    line=tuple(
                        (round(float(y) / spacing - 0.5, 2), round(float(x) / spacing - 0.5, 2))
                        for y, x in zip(py, px, strict=True)
                    ),
                )
            )
            if len(bones) == 2 and rng.uniform() < 0.5:
                break

    # Look-alikes that are not fractures.
    for bone in bones:
        if bone.end_s is not None and rng.uniform() < 0.35:
            plate = _Line(
                s0=bone.end_s - float(rng.uniform(0.1, 0.5)) * bone.radius,
                tan=float(rng.uniform(-0.1, 0.1)),
                amplitude=float(rng.uniform(0.03, 0.12)) * bone.radius,
                wavelength=float(rng.uniform(0.8, 2.0)) * bone.radius,
                phase=float(rng.uniform(0, 2 * math.pi)),
                gap=float(rng.uniform(1.0, 2.5)),
                depth=float(rng.uniform(0.5, 0.85)),
                d_range=(-10.0 * bone.radius, 10.0 * bone.radius),
            )
            bone.gaps.append(plate)
            confounders.append("growth plate")
        if rng.uniform() < 0.3:
            side = 1.0 if rng.uniform() < 0.5 else -1.0
            at = float(rng.uniform(-0.3, 0.3)) * long_mm
            canal = _Line(
                s0=at,
                tan=side * float(rng.uniform(1.0, 2.5)),
                amplitude=0.0,
                wavelength=1.0,
                phase=0.0,
                gap=float(rng.uniform(0.4, 0.8)),
                depth=float(rng.uniform(0.3, 0.6)),
                d_range=(bone.radius - bone.cortex, bone.radius)
                if side > 0
                else (-bone.radius, -bone.radius + bone.cortex),
            )
            bone.gaps.append(canal)
            confounders.append("nutrient canal")

    for bone in bones:
        attenuation += _bone_image(bone, yy, xx, texture)
    if end_s is not None:
        widest = max(bones, key=lambda b: b.radius)
        attenuation += _next_bone(widest, yy, xx, float(rng.uniform(2.5, 6.0)))
        confounders.append("joint space")
    in_limb = (np.abs(t_limb) < half_width).astype(np.float32)
    if rng.uniform() < 0.3:
        fold_angle = theta + math.pi / 2 + math.radians(float(rng.normal(0.0, 25.0)))
        fold_at = float(rng.uniform(-0.3, 0.3)) * long_mm
        dist = (
            dy * np.float32(math.cos(fold_angle)) + dx * np.float32(math.sin(fold_angle))
        ) - np.float32(fold_at)
        step = _inside(dist, 0.5) * np.exp(-np.maximum(dist, 0.0) / np.float32(8.0))
        attenuation += np.float32(MU_MUSCLE * rng.uniform(1.0, 4.0)) * step * in_limb
        confounders.append("skin fold")
    if rng.uniform() < 0.12:
        band_at = float(rng.uniform(0.6, 1.1)) * soft_r * (1 if rng.uniform() < 0.5 else -1)
        band_w = float(rng.uniform(8.0, 25.0))
        splint = _band(t_limb - np.float32(band_at), band_w, 0.4)
        attenuation += np.float32(rng.uniform(0.1, 0.4)) * splint
        confounders.append("splint")
    # Lead side marker inside the field, near a corner.
    letter_px = max(7, round(float(rng.uniform(8.0, 16.0)) / spacing))
    if rng.uniform() < 0.8:
        top = (
            int(rng.uniform(0.05, 0.2) * rows)
            if rng.uniform() < 0.5
            else int(rng.uniform(0.75, 0.9) * rows)
        )
        left = (
            int(rng.uniform(0.05, 0.2) * cols)
            if rng.uniform() < 0.5
            else int(rng.uniform(0.75, 0.9) * cols)
        )
        marker = _letter_mask(
            "L" if rng.uniform() < 0.5 else "R",
            rows,
            cols,
            top,
            left,
            letter_px,
            rng.uniform() < 0.3,
        )
        attenuation += np.float32(MU_LEAD * 6.0) * marker.astype(np.float32)

    # Detector: exposure, heel effect, scatter, collimation, blur, quantum and electronic noise.
    kvp_scale = float(rng.uniform(0.75, 1.25))
    primary = np.exp(-attenuation * np.float32(kvp_scale))
    heel = 1.0 + np.float32(rng.uniform(-0.2, 0.2)) * (yy / np.float32(height) - 0.5)
    primary *= heel * in_field
    scatter_fraction = float(rng.uniform(0.05, 0.35))
    scatter = _smooth(primary, float(rng.uniform(20.0, 60.0)) / spacing)
    exposure = primary * np.float32(1 - scatter_fraction) + np.float32(scatter_fraction) * scatter
    exposure = ndimage.gaussian_filter(exposure, float(rng.uniform(0.3, 1.1)))
    dose = float(rng.uniform(3e-5, 6e-4))
    noise_sd = np.sqrt(np.maximum(exposure, 1e-4) * np.float32(dose) + np.float32(4e-8))
    exposure = exposure + rng.standard_normal(size=(rows, cols), dtype=np.float32) * noise_sd
    log_signal = -np.log(np.clip(exposure, 2e-3, None)).astype(np.float32)

    # Vendor processing: window on the anatomy, unsharp mask, gamma.
    field_values = log_signal[in_field > 0.99]
    if field_values.size < 100:
        field_values = log_signal.ravel()
    lo, hi = np.percentile(field_values[:: max(1, field_values.size // 20000)], [0.5, 99.7])
    display = (log_signal - np.float32(lo)) / np.float32(max(hi - lo, 1e-3))
    if rng.uniform() < 0.7:
        amount = float(rng.uniform(0.2, 1.5))
        sigma = max(1.0, float(rng.uniform(3.0, 25.0)) / spacing)
        display = display + np.float32(amount) * (display - _smooth(display, sigma))
    display = np.clip(display * np.float32(rng.uniform(0.85, 1.0)), 0.0, 1.0)
    display = display ** np.float32(rng.uniform(0.6, 1.5))
    if rng.uniform() < 0.4:  # electronic shutter: outside the field is black
        display = display * np.clip(in_field * 4.0 - 1.0, 0.0, 1.0)
    if rng.uniform() < 0.6:
        text = _text_mask(rng, rows, cols, (rng.uniform() < 0.5, rng.uniform() < 0.5))
        display = np.where(text, np.float32(1.0), display)

    bits = int(rng.choice([10, 12, 14, 15, 16]))
    top_value = float(2**bits - 1)
    use = float(rng.uniform(0.6, 1.0))
    offset = float(rng.uniform(0.0, 1.0 - use)) * top_value
    stored = offset + display.astype(np.float64) * use * top_value
    if photometric == "MONOCHROME1":
        stored = top_value - stored
    pixels = np.clip(np.rint(stored), 0, top_value).astype(np.uint16)
    return SyntheticRadiograph(
        pixels=pixels,
        photometric_interpretation=photometric,
        bits_stored=bits,
        pixel_spacing_mm=spacing,
        limb=limb_name,
        body_part=shape.body_part,
        bones=tuple(b.name for b in bones),
        fractures=tuple(fractures),
        confounders=tuple(confounders),
    )
