"""A synthetic chest CT for trying radrouter: a thorax phantom written as a DICOM CT series.

``radrouter demo-study`` writes it so that a new user, with only the installed package, can
send a study and watch the whole path: routing, the shipped lung nodule model, results, a flag.
The anatomy is analytic and simple; densities and spacings stay within what that model was
trained on (synthetic chest CT, 0.6-0.9 mm pixels). No stage of the router imports this module.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian

PIXEL_MM = 0.8
"""In-plane spacing, inside the 0.6-0.9 mm range the lung nodule model was trained on."""
NODULE_MM = (3.0, 30.0)
"""Nodule diameters the lung nodule model is made for."""
MANUFACTURER = "radrouter demo (synthetic)"

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
Tube = tuple[Array, Array, float, float]
"""A vessel segment: start and end (mm), radius at each end."""


@dataclass(frozen=True)
class DemoStudy:
    """What :func:`write_demo_study` wrote."""

    paths: tuple[Path, ...]
    """One file per slice, feet to head (slice ``k`` is InstanceNumber ``k + 1``)."""
    spacing_mm: tuple[float, float, float]
    """(slice, row, column) spacing."""
    nodule_voxel: tuple[float, float, float] | None
    """(slice, row, column) index of the nodule centre; None without a nodule."""
    study_instance_uid: str


class _Thorax:
    """Random analytic anatomy in mm: z up the slices (to the head), y down the rows (to the
    back), x along the columns (to the patient's left, so the right lung is at small x)."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, ...], spacing: Array) -> None:
        self.shape, self.spacing, self.z_ext = shape, spacing, (shape[0] - 1) * spacing[0]
        self.cx, self.cy = (shape[2] - 1) * spacing[2] / 2, (shape[1] - 1) * spacing[1] / 2
        self.a = min(rng.uniform(150.0, 170.0), 0.44 * shape[2] * spacing[2])  # body half-axes
        self.b = min(self.a * rng.uniform(0.66, 0.74), 0.42 * shape[1] * spacing[1])
        self.a_in, self.b_in = 0.81 * self.a, self.b - 0.19 * self.a  # inside the ribs
        self.r_vb = min(15.0, 0.2 * self.b_in)  # vertebral body
        self.y_vb = self.cy + self.b_in - 0.3 * self.r_vb
        self.w_med = min(16.0, 0.2 * self.a_in)  # mediastinum half-width
        self.heart = (self.cx + 0.15 * self.a_in, self.cy - 0.2 * self.b_in, 0.3 * self.z_ext)
        self.heart_axes = (0.38 * self.a_in, 0.55 * self.b_in, 0.22 * self.z_ext)
        self.lung_hu, self.rib_phase = rng.uniform(-870.0, -840.0), rng.uniform(0.0, 24.0)

    def _heart(self, z: Array, y: Array, x: Array) -> Mask:
        (hx, hy, hz), (ha, hb, hc) = self.heart, self.heart_axes
        inside: Mask = ((x - hx) / ha) ** 2 + ((y - hy) / hb) ** 2 + ((z - hz) / hc) ** 2 < 1.0
        return inside

    def lungs(self, z: Array, y: Array, x: Array) -> Mask:
        """Lung membership of points (z, y, x broadcast together)."""
        cx, cy, a_in, b_in, z_ext = self.cx, self.cy, self.a_in, self.b_in, self.z_ext
        room = (((x - cx) / a_in) ** 2 + ((y - cy) / b_in) ** 2 < 1.0) & ~self._heart(z, y, x)
        room &= np.abs(x - cx) > self.w_med  # beside the mediastinum ...
        room &= (x - cx) ** 2 + (y - self.y_vb) ** 2 > (self.r_vb + 8.0) ** 2  # ... and spine
        lx = np.where(x < cx, cx - 0.5 * a_in, cx + 0.5 * a_in)
        r2 = np.clip(((x - lx) / (0.5 * a_in)) ** 2 + ((y - cy) / (0.9 * b_in)) ** 2, 0.0, 1.0)
        dome = z_ext * (0.25 - 0.15 * r2 + np.where(x < cx, 0.03, 0.0))  # right dome higher
        dome -= 0.05 * z_ext * np.clip((y - cy) / b_in, 0.0, 1.0)  # deeper at the back
        apex = np.clip((1.05 * z_ext - z) / (0.22 * z_ext), 0.0, 1.0)
        cap = ((x - lx) / (0.6 * a_in)) ** 2 + ((y - cy) / (1.1 * b_in)) ** 2 < apex
        inside: Mask = room & cap & (z > dome)
        return inside

    def render(self) -> tuple[npt.NDArray[np.float32], Mask]:
        """HU without vessels, nodule and noise; and the lung mask."""
        cx, cy, a, b, r_vb, y_vb = self.cx, self.cy, self.a, self.b, self.r_vb, self.y_vb
        z, y, x = (np.arange(n) * s for n, s in zip(self.shape, self.spacing, strict=True))
        z, y, x = z[:, None, None], y[:, None], x[None, :]
        dx2, dy = (x - cx) ** 2, y - cy
        hu = np.full(dy.shape[:1] + x.shape[1:], -1000.0)  # one slice: all that is the same in z
        hu[(dy > b + 10.0) & (dy < b + 16.0) & (np.abs(x - cx) < 0.8 * a)] = 120.0  # table
        hu[dx2 / a**2 + dy**2 / b**2 < 1.0] = -95.0  # fat
        hu[dx2 / (0.93 * a) ** 2 + dy**2 / (b - 0.07 * a) ** 2 < 1.0] = 45.0  # muscle
        inner = dx2 / self.a_in**2 + dy**2 / self.b_in**2 < 1.0
        ribs = dx2 / (self.a_in + 9.0) ** 2 + dy**2 / (self.b_in + 9.0) ** 2 < 1.0
        ribs &= ~inner & ~((np.abs(x - cx) < 25.0) & (dy < 0))  # no ribs at the sternum
        hu[inner] = 40.0
        hu[inner & (dx2 < self.w_med**2)] = -70.0  # mediastinal fat
        hu[(x - cx - r_vb - 4.0) ** 2 + (y - y_vb + 0.7 * r_vb) ** 2 < (0.7 * r_vb) ** 2] = 45.0
        hu[dx2 + (y - y_vb - r_vb - 8.0) ** 2 < 121.0] = 600.0  # vertebral arch
        hu[dx2 + (y - y_vb - r_vb - 8.0) ** 2 < 49.0] = 15.0  # spinal canal
        hu[dx2 + (y - y_vb) ** 2 < r_vb**2] = 800.0  # vertebral body: cortex ...
        hu[dx2 + (y - y_vb) ** 2 < (r_vb - 2.0) ** 2] = 250.0  # ... and marrow
        volume = np.repeat(hu[None].astype(np.float32), len(z), axis=0)
        volume[ribs & (np.mod(z - 35.0 * dy / self.b_in + self.rib_phase, 24.0) < 8.0)] = 550.0
        volume[self._heart(z, y, x)] = 40.0
        trachea, top = dx2 + (y - y_vb + r_vb + 14.0) ** 2, slice(int(0.62 * len(z)), None)
        volume[top, trachea < 81.0] = 40.0  # above the carina
        volume[top, trachea < 49.0] = -1000.0
        lung = self.lungs(z, y, x)
        lung_hu = self.lung_hu + 40.0 * np.clip(dy / self.b_in, -1.0, 1.0)  # denser at the back
        return np.where(lung, lung_hu.astype(np.float32), volume), lung

    def vessels(self, rng: np.random.Generator, avoid: Array | None, gap: float) -> list[Tube]:
        """Tapered tubes branching from each hilum; none comes within ``gap`` of ``avoid``."""
        todo: list[tuple[Array, Array, float, int]] = []
        for sign in (-1.0, 1.0):
            x = self.cx + sign * (self.w_med + 6.0)
            hilum = np.array([0.55 * self.z_ext, self.cy - 0.1 * self.b_in, x])
            for _ in range(10):  # main branches: up, down, forward, back, all outwards
                d = rng.uniform((-0.9, -0.7, 0.3), (0.9, 0.7, 1.0)) * (1.0, 1.0, sign)
                todo.append((hilum, d / np.linalg.norm(d), rng.uniform(3.0, 4.0), 0))
        tubes: list[Tube] = []
        while todo:
            start, d, r, generation = todo.pop()
            length = r * rng.uniform(6.0, 9.0)
            children = [d + 0.6 * rng.normal(size=3) for _ in range(2)]
            shrink = rng.uniform(0.75, 0.9, size=2)
            if avoid is not None:
                along = np.clip((avoid - start) @ d, 0.0, length)
                if np.linalg.norm(start + along * d - avoid) < gap + r:
                    continue
            end = start + d * length
            tubes.append((start, end, r, 0.9 * r))
            if generation < 7 and 0.9 * r > 0.7 and self.lungs(*end[:, None])[0]:
                for child, f in zip(children, shrink, strict=True):
                    todo.append((end, child / np.linalg.norm(child), 0.9 * r * f, generation + 1))
        return tubes


def _tube(tube: Tube, spacing: Array, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], Array]:
    """Partial-volume fraction of a tapered tube (a ball when its ends coincide) in its box."""
    p0, p1, r0, r1 = tube
    edge, pad = float(np.cbrt(np.prod(spacing))), max(r0, r1) + 2 * spacing.max()
    lo = np.maximum(np.floor((np.minimum(p0, p1) - pad) / spacing).astype(int), 0)
    hi = np.ceil((np.maximum(p0, p1) + pad) / spacing).astype(int)
    hi = np.maximum(np.minimum(hi, shape), lo)
    axes = (np.arange(a, b) * s - o for a, b, s, o in zip(lo, hi, spacing, p0, strict=True))
    z, y, x = np.ix_(*axes)
    d = p1 - p0
    t = np.clip((z * d[0] + y * d[1] + x * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist = np.sqrt((z - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (x - t * d[2]) ** 2)
    part: Array = np.clip((r0 + t * (r1 - r0) - dist) / edge + 0.5, 0.0, 1.0)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)), part


def chest_phantom(
    seed: int,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    nodule_mm: float = 0.0,
) -> tuple[npt.NDArray[np.int16], tuple[float, float, float] | None]:
    """HU volume (slice, row, column) of a synthetic thorax, deterministic in its arguments,
    with a solid nodule of ``nodule_mm`` (0: none) in the right lung; and the nodule's centre
    as a (slice, row, column) index. Needs seed >= 0, 2 slices and 64 x 64 pixels or more."""
    if seed < 0 or shape[0] < 2 or min(shape[1:]) < 64 or min(spacing_mm) <= 0:
        raise ValueError(
            f"need seed >= 0, shape >= (2, 64, 64), spacing > 0: {seed}, {shape}, {spacing_mm}"
        )
    if nodule_mm and not NODULE_MM[0] <= nodule_mm <= NODULE_MM[1]:
        raise ValueError(
            f"nodule diameter {nodule_mm:g} mm must be 0 (none) or within {NODULE_MM} mm"
        )
    spacing = np.array(spacing_mm, dtype=np.float64)
    rng = np.random.default_rng(seed)
    body = _Thorax(rng, shape, spacing)
    hu, lung = body.render()
    centre = np.array([0.6 * body.z_ext, body.cy + 0.05 * body.b_in, body.cx - 0.55 * body.a_in])
    radius = nodule_mm / 2
    vessel = np.zeros(shape, dtype=np.float32)
    for tube in body.vessels(rng, centre if nodule_mm else None, radius + 3.0):
        box, part = _tube(tube, spacing, shape)
        np.maximum(vessel[box], part.astype(np.float32), out=vessel[box])
    hu[lung] += (vessel * (np.float32(40.0) - hu))[lung]
    if nodule_mm:  # solid: 35 HU, but what is denser (a vessel) stays
        box, part = _tube((centre, centre, radius, radius), spacing, shape)
        hu[box] = np.maximum(hu[box], hu[box] + part.astype(np.float32) * (35.0 - hu[box]))
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(18.0)
    k, i, j = (float(c) for c in centre / spacing)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), (k, i, j) if nodule_mm else None


def _uid(key: str) -> UID:
    """A UID under 2.25 from a name-based UUID: the same demo parameters give the same UIDs."""
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'radrouter-demo/{key}').int}")


def write_demo_study(
    out_dir: Path,
    *,
    seed: int,
    slices: int,
    size: int,
    slice_spacing_mm: float,
    nodule_mm: float,
    progress: Callable[[int], None] | None = None,
) -> DemoStudy:
    """Write an axial chest CT of ``slices`` images of ``size`` x ``size`` pixels to ``out_dir``
    as CT Image Storage files (Explicit VR Little Endian), with a ``nodule_mm`` solid nodule in
    the right lung (0: none). Patient and study come from ``seed``; all UIDs from every argument,
    so writing the same demo twice gives the same instances. ``progress(1)`` follows each file."""
    spacing = (float(slice_spacing_mm), PIXEL_MM, PIXEL_MM)
    hu, nodule = chest_phantom(seed, (slices, size, size), spacing, nodule_mm)
    key = f"{seed}/{slices}/{size}/{slice_spacing_mm:g}/{nodule_mm:g}"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet, ds.ImageType = "ISO_IR 100", ["ORIGINAL", "PRIMARY", "AXIAL"]
    # Patient and study: plainly fictitious.
    ds.PatientName, ds.PatientID = f"DEMO^SYNTHETIC CHEST {seed}", f"DEMO{seed:06d}"
    ds.PatientBirthDate, ds.PatientSex, ds.PatientPosition = "19600101", "O", "HFS"
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = _uid(f"{key}/study"), "1", ds.PatientID
    ds.StudyDescription, ds.ReferringPhysicianName = "DEMO CT CHEST (synthetic, not a patient)", ""
    today = datetime.date.today().strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "120000"
    # Series and equipment: what the shipped rules look at (Modality, BodyPartExamined, ...).
    ds.Modality, ds.BodyPartExamined = "CT", "CHEST"
    ds.SeriesDescription = "CT CHEST DEMO SYNTHETIC"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.AcquisitionNumber = _uid(f"{key}/series"), 1, 1
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, "radrouter demo-study"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = _uid(f"{key}/frame"), ""
    ds.SliceThickness, ds.KVP = f"{spacing[0]:g}", "120"
    # Image: 12-bit unsigned, HU = stored - 1024.
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [f"{PIXEL_MM:g}", f"{PIXEL_MM:g}"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = ["-600", "40"], ["1500", "400"]
    ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    origin = f"{-(size - 1) * PIXEL_MM / 2:g}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k in range(slices):  # one dataset, refilled per slice: each is written at once
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = _uid(f"{key}/image/{k}")
        ds.InstanceNumber, ds.SliceLocation = k + 1, f"{k * spacing[0]:g}"
        ds.ImagePositionPatient = [origin, origin, ds.SliceLocation]
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        paths.append(out_dir / f"CT{k + 1:05d}.dcm")
        dcmwrite(paths[-1], ds, enforce_file_format=True)
        if progress is not None:
            progress(1)
    return DemoStudy(tuple(paths), spacing, nodule, str(ds.StudyInstanceUID))
