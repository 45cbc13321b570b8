"""Tubes of the synthetic contrast CT: the named pulmonary artery tree (trunk, main, lobar and
segmental arteries with smaller branches), pulmonary veins, aorta, superior vena cava, airways
and hilar lymph nodes, and their partial-volume rendering."""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from training.pe.synth_thorax import Enhancement, FloatArray, Thorax

logger = logging.getLogger(__name__)

Side = Literal["right", "left", "both"]
TRUNK, MAIN, LOBAR, SEGMENTAL = 1, 2, 3, 4
"""Artery levels (values of ``SyntheticContrastCT.artery_classes``)."""
Box = tuple[slice, slice, slice]


def unit(v: FloatArray) -> FloatArray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def perpendicular(d: FloatArray, rng: np.random.Generator) -> FloatArray:
    return unit(np.cross(d, unit(rng.normal(size=3))))


@dataclass
class Tubes:
    """Tapered cylinders from ``p0`` (radius ``r0``) to ``p1`` (``r1``) with a lumen HU."""

    p0: list[FloatArray] = field(default_factory=list)
    p1: list[FloatArray] = field(default_factory=list)
    r0: list[float] = field(default_factory=list)
    r1: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)

    def add(
        self,
        p0: FloatArray,
        p1: FloatArray,
        r0: float,
        r1: float,
        value: float,
        label: int = 0,
        parent: int = -1,
    ) -> int:
        self.p0.append(np.asarray(p0, dtype=np.float64))
        self.p1.append(np.asarray(p1, dtype=np.float64))
        self.r0.append(float(r0))
        self.r1.append(float(r1))
        self.value.append(float(value))
        self.label.append(label)
        self.parent.append(parent)
        return len(self.p0) - 1

    def __len__(self) -> int:
        return len(self.p0)

    def descendants(self, index: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for i, p in enumerate(self.parent):
            children.setdefault(p, []).append(i)
        out: list[int] = []
        todo = list(children.get(index, []))
        while todo:
            i = todo.pop()
            out.append(i)
            todo.extend(children.get(i, []))
        return out


@dataclass
class Branch:
    """A named artery: a polyline of tubes, e.g. the right lower lobe artery."""

    name: str
    label: int
    side: Side
    lobe: str
    points: list[FloatArray]
    radii: list[float]
    tubes: list[int]

    def length(self) -> float:
        return float(sum(np.linalg.norm(b - a) for a, b in itertools.pairwise(self.points)))

    def at(self, s: float) -> tuple[FloatArray, float, FloatArray]:
        """Point, radius and direction at arc length ``s`` (clamped)."""
        s = max(0.0, s)
        pairs = zip(itertools.pairwise(self.points), itertools.pairwise(self.radii), strict=True)
        for (a, b), (ra, rb) in pairs:
            seg = float(np.linalg.norm(b - a))
            if s <= seg or b is self.points[-1]:
                t = min(s / max(seg, 1e-9), 1.0)
                return a + t * (b - a), ra + t * (rb - ra), unit(b - a)
            s -= seg
        raise AssertionError("unreachable")


def add_polyline(
    tubes: Tubes,
    points: list[FloatArray],
    radius: tuple[float, float],
    value: float,
    label: int,
    parent: int,
) -> tuple[list[int], list[float]]:
    """Tubes along ``points``, the radius tapering linearly with arc length."""
    lengths = [float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(points)]
    cum = np.concatenate([[0.0], np.cumsum(lengths)]) / max(sum(lengths), 1e-9)
    radii = [radius[0] + float(c) * (radius[1] - radius[0]) for c in cum]
    idx: list[int] = []
    for (a, b), (ra, rb) in zip(itertools.pairwise(points), itertools.pairwise(radii), strict=True):
        parent = tubes.add(a, b, ra, rb, value, label, parent)
        idx.append(parent)
    return idx, radii


def bent(
    origin: FloatArray, end: FloatArray, rng: np.random.Generator, n: int = 3
) -> list[FloatArray]:
    """Polyline from ``origin`` to ``end`` with gently displaced inner points."""
    d = end - origin
    length = float(np.linalg.norm(d))
    pts = [origin]
    for i in range(1, n):
        jitter = perpendicular(d, rng) * rng.uniform(0.0, 0.06) * length
        pts.append(origin + d * (i / n) + jitter)
    pts.append(end)
    return pts


@dataclass(frozen=True)
class LobeRule:
    """Where a lobar artery starts and the part of the lung its segments aim at."""

    lobe: str
    side: int
    origin: str
    """"main": at ``at`` along the main artery; else the name of the lobar artery it leaves."""
    at: tuple[float, float]
    z_range: tuple[float, float]
    """Target region in mm (times the chest scale) relative to the carina."""
    y_limit: float
    """Target region: y > cy + y_limit * b_in if > 0; y < cy + y_limit * b_in if < 0; 0 none."""
    length: tuple[float, float]
    radius: tuple[float, float]
    segments: tuple[int, int]


LOBES = (
    LobeRule("right upper lobe", 0, "main", (0.7, 0.85), (5, 200), 0.0, (26, 34), (5, 6.5), (2, 4)),
    LobeRule("right lower lobe", 0, "main", (1, 1), (-200, -55), 0.0, (38, 50), (6, 7.5), (3, 6)),
    LobeRule(
        "right middle lobe",
        0,
        "right lower lobe",
        (0.25, 0.45),
        (-90, -35),
        -0.15,
        (22, 30),
        (4.5, 5.5),
        (2, 3),
    ),
    LobeRule("left upper lobe", 1, "main", (1, 1), (5, 200), 0.0, (24, 32), (5, 6.5), (2, 4)),
    LobeRule("left lower lobe", 1, "main", (1, 1), (-200, -55), 0.0, (38, 50), (6, 7.5), (3, 6)),
    LobeRule(
        "lingula",
        1,
        "left lower lobe",
        (0.25, 0.45),
        (-85, -30),
        -0.1,
        (20, 28),
        (4.5, 5.5),
        (2, 3),
    ),
)
SIDE_NAMES: tuple[Side, Side] = ("right", "left")


class Vasculature:
    """The pulmonary arteries (named branches), pulmonary veins, systemic vessels, airways and
    hilar lymph nodes of one thorax."""

    def __init__(self, th: Thorax, enh: Enhancement, rng: np.random.Generator) -> None:
        self.th, self.enh, self.rng = th, enh, rng
        self.arteries = Tubes()
        self.veins = Tubes()
        self.systemic = Tubes()
        self.airway_wall = Tubes()
        self.airway_lumen = Tubes()
        self.nodes: list[tuple[FloatArray, float]] = []
        self.branches: dict[str, Branch] = {}
        self.segmental: list[Branch] = []
        self.svc = (0.0, 0.0, 0.0)
        self._build_airways()
        self.trunk, right, left = self._build_central()
        self._build_lobar((right, left))
        self._build_veins()
        self._build_systemic()
        self._build_nodes()

    # -- helpers --------------------------------------------------------------------------------

    def _lung_points(self, rule: LobeRule, n: int) -> FloatArray:
        th, k = self.th, self.th.k
        lo = np.array([th.z_car + rule.z_range[0] * k, th.cy - th.b_in, th.cx - th.a_in])
        hi = np.array([th.z_car + rule.z_range[1] * k, th.cy + th.b_in, th.cx + th.a_in])
        lo[0], hi[0] = max(lo[0], th.z_dome[rule.side] - th.recess), min(hi[0], th.z_apex)
        if rule.side == 0:
            hi[2] = th.cx
        else:
            lo[2] = th.cx
        if rule.y_limit > 0:
            lo[1] = th.cy + rule.y_limit * th.b_in
        elif rule.y_limit < 0:
            hi[1] = th.cy + rule.y_limit * th.b_in
        if np.any(hi <= lo):
            return np.zeros((0, 3))
        out = np.zeros((0, 3))
        for _ in range(10):
            pts = self.rng.uniform(lo, hi, size=(400, 3))
            out = np.concatenate([out, pts[th.in_lung(pts, rule.side)]])
            if len(out) >= n:
                break
        return out[:n]

    def _fit_in_lung(
        self, origin: FloatArray, direction: FloatArray, length: float, side: int
    ) -> float:
        """Longest length <= ``length`` whose outer half lies in the lung (0 if none)."""
        ts = np.linspace(0.5, 1.0, 4)[:, None]
        for scale in (1.0, 0.8, 0.6, 0.45):
            pts = origin[None, :] + ts * direction[None, :] * length * scale
            if self.th.in_lung(pts, side).all():
                return length * scale
        return 0.0

    def _airway(self, points: list[FloatArray], r_outer: float, offset: FloatArray) -> None:
        wall = max(0.8, 0.18 * r_outer)
        for a, b in itertools.pairwise(points):
            self.airway_wall.add(a + offset, b + offset, r_outer, r_outer * 0.95, 0.0)
            self.airway_lumen.add(
                a + offset, b + offset, r_outer - wall, r_outer * 0.95 - wall, -1000.0
            )

    def _branch(
        self,
        name: str,
        label: int,
        side: Side,
        lobe: str,
        points: list[FloatArray],
        radius: tuple[float, float],
        parent: int,
        bronchus: bool = True,
    ) -> Branch:
        tubes, radii = add_polyline(
            self.arteries, points, radius, self.enh.pulmonary, label, parent
        )
        branch = Branch(name, label, side, lobe, points, radii, tubes)
        self.branches[name] = branch
        if bronchus:
            r_b = radius[0] * self.rng.uniform(0.7, 0.9)
            offset = perpendicular(points[-1] - points[0], self.rng) * (radius[0] + r_b + 0.8)
            self._airway(points, r_b, offset)
        return branch

    def _subtree(
        self,
        tubes: Tubes,
        root: tuple[FloatArray, FloatArray, float, int],
        side: int,
        generations: int,
        value: float,
    ) -> None:
        """Binary tree of thinner branches turning away from the parent, clipped to the lung."""
        rng = self.rng
        front = [root]
        for _ in range(generations):
            nxt = []
            for p, d, r, par in front:
                for _child in range(2):
                    for _try in range(3):
                        turn = math.radians(rng.uniform(15.0, 45.0))
                        nd = unit(d * math.cos(turn) + perpendicular(d, rng) * math.sin(turn))
                        rc = r * rng.uniform(0.75, 0.85)
                        length = self._fit_in_lung(p, nd, rc * rng.uniform(6.0, 10.0), side)
                        if length >= 3.0:
                            end = p + nd * length
                            idx = tubes.add(p, end, rc, rc * 0.92, value, 0, par)
                            if rc * 0.92 > 0.55:
                                nxt.append((end, nd, rc * 0.92, idx))
                            break
            front = nxt

    # -- anatomy --------------------------------------------------------------------------------

    def _build_airways(self) -> None:
        th, k, cx, zc = self.th, self.th.k, self.th.cx, self.th.z_car
        carina = np.array([zc, th.y_tr, cx])
        self._airway([np.array([th.z_ext + 20.0, th.y_tr, cx]), carina], th.r_tr, np.zeros(3))
        right = [
            carina,
            np.array([zc - 22 * k, th.y_tr + 4 * k, cx - 28 * k]),
            np.array([zc - 45 * k, th.y_tr + 8 * k, cx - 34 * k]),
        ]
        self._airway(right, 0.7 * th.r_tr, np.zeros(3))
        left = [carina, np.array([zc - 30 * k, th.y_tr + 6 * k, cx + 42 * k])]
        self._airway(left, 0.65 * th.r_tr, np.zeros(3))

    def _build_central(self) -> tuple[Branch, Branch, Branch]:
        """Pulmonary trunk from the right ventricle, bifurcation, right and left main arteries."""
        th, rng, u = self.th, self.rng, self.rng.uniform
        k, cx, zc = th.k, th.cx, th.z_car
        y_b = th.y_tr - th.r_tr - u(18.0, 24.0) * k
        bif = np.array([zc - u(10.0, 16.0) * k, y_b, cx + u(12.0, 18.0) * k])
        rv_c, rv_r = th.chambers["rv"]
        valve = rv_c + rv_r * np.array([0.6, -0.1, 0.5])
        r_trunk = u(11.5, 14.5) * k
        trunk = self._branch(
            "trunk",
            TRUNK,
            "both",
            "",
            bent(valve, bif, rng, 2),
            (r_trunk, 0.95 * r_trunk),
            -1,
            bronchus=False,
        )
        r_main = r_trunk * u(0.72, 0.82)
        hila = [
            np.array([zc - u(20.0, 28.0) * k, y_b + u(0.0, 6.0) * k, cx - th.w_med - 12.0 * k]),
            np.array([zc - u(4.0, 10.0) * k, th.y_tr + u(0.0, 8.0) * k, cx + th.w_med + 14 * k]),
        ]
        for side, hilum in enumerate(hila):
            for _ in range(30):
                if th.in_lung(hilum[None, :], side)[0]:
                    break
                hilum[2] += 3.0 if side else -3.0
        middles = [
            np.array([(bif[0] + hila[0][0]) / 2, y_b + 3.0 * k, cx - 2.0 * k]),
            np.array(
                [zc + u(0.0, 5.0) * k, (y_b + hila[1][1]) / 2 - 2 * k, (bif[2] + hila[1][2]) / 2]
            ),
        ]
        mains = [
            self._branch(
                f"{SIDE_NAMES[side]} main",
                MAIN,
                SIDE_NAMES[side],
                "",
                [bif, middles[side], hila[side]],
                (r_main, 0.87 * r_main),
                trunk.tubes[-1],
                bronchus=False,
            )
            for side in (0, 1)
        ]
        self.bifurcation = bif
        return trunk, mains[0], mains[1]

    def _build_lobar(self, mains: tuple[Branch, Branch]) -> None:
        """Lobar arteries aimed into their lobe, their segmental arteries and smaller branches."""
        rng, u, k = self.rng, self.rng.uniform, self.th.k
        for rule in LOBES:
            host = mains[rule.side] if rule.origin == "main" else self.branches.get(rule.origin)
            targets = self._lung_points(rule, 32)
            if host is None or len(targets) < 2:
                logger.debug("no room for the %s artery", rule.lobe)
                continue
            origin, _, _ = host.at(host.length() * u(*rule.at))
            target = targets[int(rng.integers(len(targets)))]
            d = unit(target - origin)
            length = min(u(*rule.length) * k, 0.9 * float(np.linalg.norm(target - origin)))
            r0 = u(*rule.radius) * k
            branch = self._branch(
                rule.lobe,
                LOBAR,
                SIDE_NAMES[rule.side],
                rule.lobe,
                bent(origin, origin + d * length, rng),
                (r0, 0.85 * r0),
                host.tubes[-1],
            )
            for n in range(int(rng.integers(rule.segments[0], rule.segments[1] + 1))):
                o, r_here, _ = branch.at(branch.length() * (1.0 if n == 0 else u(0.45, 0.95)))
                t = targets[int(rng.integers(len(targets)))]
                d = unit(unit(t - o) + 0.3 * rng.normal(size=3))
                r_seg = max(r_here * u(0.5, 0.65), 2.0 * k)
                length = self._fit_in_lung(o, d, u(18.0, 30.0) * k, rule.side)
                if length < 8.0:
                    continue
                seg = self._branch(
                    f"{rule.lobe} segment {n + 1}",
                    SEGMENTAL,
                    SIDE_NAMES[rule.side],
                    rule.lobe,
                    bent(o, o + d * length, rng, 2),
                    (r_seg, 0.85 * r_seg),
                    branch.tubes[-1],
                )
                self.segmental.append(seg)
                root = (seg.points[-1], d, seg.radii[-1], seg.tubes[-1])
                self._subtree(self.arteries, root, rule.side, 6, self.enh.pulmonary)

    def _build_veins(self) -> None:
        """Four pulmonary veins from the left atrium to the lungs, with their trees."""
        th, rng, u = self.th, self.rng, self.rng.uniform
        la_c, la_r = th.chambers["la"]
        for side, sign in ((0, -1.0), (1, 1.0)):
            for dz in (0.5, -0.6):
                o = la_c + np.array([dz * la_r[0], 0.2 * la_r[1], sign * 0.8 * la_r[2]])
                d = unit(np.array([dz * 0.8 + u(-0.2, 0.2), u(-0.3, 0.3), sign]))
                r_v = u(5.5, 7.5) * th.k
                end = o + d * u(25.0, 35.0) * th.k
                for _ in range(20):
                    if th.in_lung(end[None, :], side)[0]:
                        break
                    end = end + d * 3.0
                idx = self.veins.add(o, end, r_v, 0.9 * r_v, self.enh.systemic)
                for _ in range(3):
                    root = (end, unit(d + 0.8 * rng.normal(size=3)), 0.75 * r_v, idx)
                    self._subtree(self.veins, root, side, 7, self.enh.systemic)

    def _build_systemic(self) -> None:
        """Aorta (ascending from the left ventricle, arch, descending) and superior vena cava."""
        th, u = self.th, self.rng.uniform
        k, cx, zc = th.k, th.cx, th.z_car
        lv_c, _ = th.chambers["lv"]
        r_asc = u(12.0, 15.0) * k
        asc_x = cx - u(10.0, 16.0) * k
        asc_y = self.bifurcation[1] - u(24.0, 30.0) * k
        arch = [
            np.array([lv_c[0], lv_c[1], lv_c[2] - 10 * k]),
            np.array([zc - 30 * k, asc_y, asc_x]),
            np.array([zc + 25 * k, asc_y, asc_x]),
            np.array([zc + 38 * k, (asc_y + th.aorta_y) / 2, cx]),
            np.array([zc + 25 * k, th.aorta_y, th.aorta_x]),
            np.array([-20.0, th.aorta_y, th.aorta_x]),
        ]
        add_polyline(self.systemic, arch, (r_asc, th.aorta_r), self.enh.systemic, 0, -1)
        svc_x, svc_y = asc_x - r_asc - u(9.0, 12.0) * k, asc_y + u(0.0, 6.0) * k
        ra_c, _ = th.chambers["ra"]
        self.svc = (svc_x, svc_y, float(ra_c[0]))
        top, bottom = np.array([th.z_ext + 20.0, svc_y, svc_x]), np.array([ra_c[0], svc_y, svc_x])
        self.systemic.add(top, bottom, 9.0 * k, 9.5 * k, self.enh.svc)

    def _build_nodes(self) -> None:
        """Hilar lymph nodes touching central and lobar arteries: mimics of a filling defect."""
        rng = self.rng
        hosts = [b for b in self.branches.values() if b.label in (MAIN, LOBAR)]
        for _ in range(int(rng.integers(0, 4))):
            b = hosts[int(rng.integers(len(hosts)))]
            p, r, d = b.at(b.length() * rng.uniform(0.2, 0.9))
            rn = rng.uniform(3.0, 6.0)
            self.nodes.append((p + perpendicular(d, rng) * (r + rn - 0.5), rn))


def bbox(
    lo_mm: FloatArray, hi_mm: FloatArray, spacing: FloatArray, shape: tuple[int, int, int]
) -> tuple[slice, slice, slice] | None:
    lo = np.maximum(np.floor(lo_mm / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(hi_mm / spacing).astype(int) + 1, np.array(shape))
    if np.any(hi <= lo):
        return None
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def axes(
    box: tuple[slice, slice, slice], spacing: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    z = (np.arange(box[0].start, box[0].stop) * spacing[0])[:, None, None]
    y = (np.arange(box[1].start, box[1].stop) * spacing[1])[None, :, None]
    x = (np.arange(box[2].start, box[2].stop) * spacing[2])[None, None, :]
    return z, y, x


def tube_fraction(
    tubes: Tubes, i: int, spacing: FloatArray, shape: tuple[int, int, int], capsule: bool
) -> tuple[Box, npt.NDArray[np.float32]] | None:
    """Partial-volume fraction of tube ``i`` (round ends if ``capsule``, else flat)."""
    p0, p1, r0, r1 = tubes.p0[i], tubes.p1[i], tubes.r0[i], tubes.r1[i]
    edge = float(np.prod(spacing) ** (1.0 / 3.0))
    pad = max(r0, r1) + edge
    box = bbox(np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad, spacing, shape)
    if box is None:
        return None
    z, y, x = axes(box, spacing)
    d = p1 - p0
    length2 = max(float(d @ d), 1e-9)
    qz, qy, qx = z - p0[0], y - p0[1], x - p0[2]
    t_raw = (qz * d[0] + qy * d[1] + qx * d[2]) / length2
    t = np.clip(t_raw, 0.0, 1.0)
    dist = np.sqrt((qz - t * d[0]) ** 2 + (qy - t * d[1]) ** 2 + (qx - t * d[2]) ** 2)
    frac = np.clip((r0 + t * (r1 - r0) - dist) / edge + 0.5, 0.0, 1.0)
    if not capsule:
        # Flat ends (the next tube of a polyline continues from there).
        beyond = np.maximum(-t_raw, t_raw - 1.0) * math.sqrt(length2)
        frac = frac * np.clip(0.5 - beyond / edge, 0.0, 1.0)
    return box, frac.astype(np.float32)


def render_max(
    tubes: Tubes, shape: tuple[int, int, int], spacing: FloatArray, capsule: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """Max partial-volume fraction over the tubes, the HU of the tube giving it and its index."""
    frac_max = np.zeros(shape, dtype=np.float32)
    value = np.zeros(shape, dtype=np.float32)
    index = np.full(shape, -1, dtype=np.int32)
    for i in range(len(tubes)):
        got = tube_fraction(tubes, i, spacing, shape, capsule)
        if got is None:
            continue
        box, frac = got
        view = frac_max[box]
        better = frac > view
        view[better] = frac[better]
        value[box][better] = tubes.value[i]
        index[box][better] = i
    return frac_max, value, index


def paint(
    hu: npt.NDArray[np.float32],
    occupied: npt.NDArray[np.bool_],
    tubes: Tubes,
    spacing: FloatArray,
    value: float | None = None,
) -> None:
    """Mix each tube's HU (or ``value``) into ``hu`` by its partial-volume fraction."""
    shape = (hu.shape[0], hu.shape[1], hu.shape[2])
    for i in range(len(tubes)):
        got = tube_fraction(tubes, i, spacing, shape, True)
        if got is None:
            continue
        box, frac = got
        view = hu[box]
        view += frac * (np.float32(tubes.value[i] if value is None else value) - view)
        occupied[box] |= frac > 0.5
