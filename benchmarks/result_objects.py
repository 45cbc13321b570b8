"""Result objects: time to build and write SEG + SR + KOS (and with the GSPS and summary image
a legacy destination adds) for a 300-slice 512x512 chest CT.

Five findings, each a sphere of 10-15 mm radius (masks of a few cm), on a 300-slice 512x512 CT
(1.0 x 0.7 x 0.7 mm). Timed: ``dicom_sr.result_objects.build_result_objects`` (SEG, SR, KOS)
plus writing the three objects as Part-10 files (``dicom_sr.io.write_dataset``: fsync'd,
atomic), median of ``--repeat`` runs after one warm-up, wall-clock and CPU time. References,
in the same run:
- pydicom writing the 300 source slices (``save_as``, no fsync),
- highdicom's own SEG of the same masks with default settings (a 4-D stack of the whole volume
  over all source images), built and written.

Run: ``.venv/bin/python -m benchmarks.result_objects [--repeat 7]``
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image

from algorithms import codes as finding_codes
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Finding,
    ImageRegion,
    Measurement,
    Verdict,
    VolumeGeometry,
)
from dicom_sr import codes
from dicom_sr.context import ResultVersion, SourceImage, StudyContext
from dicom_sr.identity import ObjectKind
from dicom_sr.io import write_dataset
from dicom_sr.result_objects import ResultObjects, SummaryPicture, build_result_objects
from router.worklist_page.thumbnails import Outline, render_key_image
from testing.dicom_tools import make_ct_slices

SHAPE = (300, 512, 512)
SPACING_MM = (1.0, 0.7, 0.7)
# (slice, row, column) centre in voxels and radius in mm of each finding
FINDINGS = (
    ((60, 180, 150), 10.0),
    ((110, 300, 360), 12.0),
    ((160, 220, 120), 15.0),
    ((210, 330, 180), 11.0),
    ((250, 200, 380), 14.0),
)

INFO = AlgorithmInfo(
    name="lung_nodule",
    display_name="Lung Nodule Detector",
    version="0.1.0",
    manufacturer="radrouter contributors",
    device_uid="1.2.826.0.1.3680043.10.1234.1.1",
    modalities=frozenset({"CT"}),
    intended_use="Detection of solid lung nodules on chest CT",
    max_runtime_s=60.0,
    target=finding_codes.LUNG_NODULE,
)


def sphere(centre: tuple[int, int, int], radius_mm: float) -> npt.NDArray[np.bool_]:
    mask = np.zeros(SHAPE, dtype=bool)
    reach = [int(np.ceil(radius_mm / s)) for s in SPACING_MM]
    window = tuple(slice(c - r, c + r + 1) for c, r in zip(centre, reach, strict=True))
    k, i, j = np.ogrid[window]
    distance = (
        ((k - centre[0]) * SPACING_MM[0]) ** 2
        + ((i - centre[1]) * SPACING_MM[1]) ** 2
        + ((j - centre[2]) * SPACING_MM[2]) ** 2
    )
    mask[window] = distance <= radius_mm**2
    return mask


def make_result() -> AlgorithmResult:
    findings = []
    for number, (centre, radius_mm) in enumerate(FINDINGS, start=1):
        k, row, column = centre
        half = radius_mm / SPACING_MM[1]
        box = (
            (column - half, row - half),
            (column + half, row - half),
            (column + half, row + half),
            (column - half, row + half),
            (column - half, row - half),
        )
        findings.append(
            Finding(
                finding_type=finding_codes.LUNG_NODULE,
                probability=0.9,
                centre_voxel=(float(k), float(row), float(column)),
                region=ImageRegion(slice_index=k, points=box),
                measurements=(
                    Measurement(finding_codes.LONG_AXIS, 2 * radius_mm, finding_codes.MILLIMETRE),
                ),
                finding_site=finding_codes.LUNG,
                tracking_id=f"Nodule {number}",
                mask=sphere(centre, radius_mm),
            )
        )
    return AlgorithmResult(verdict=Verdict.PRESENT, findings=tuple(findings))


def geometry_of(slices: list[pydicom.Dataset]) -> VolumeGeometry:
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, SPACING_MM[0])
    affine[:3, 1] = (0.0, SPACING_MM[1], 0.0)
    affine[:3, 2] = (SPACING_MM[2], 0.0, 0.0)
    affine[:3, 3] = [float(v) for v in slices[0].ImagePositionPatient]
    return VolumeGeometry(affine, SHAPE, str(slices[0].FrameOfReferenceUID))


@dataclass(frozen=True)
class Timing:
    """Median wall-clock and CPU (this process) seconds of several runs, and the wall times."""

    wall_s: float
    cpu_s: float
    runs_s: list[float]


def timed(action: Callable[[], object], repeat: int) -> Timing:
    """Run ``action`` once to warm up, then ``repeat`` times. CPU time is reported beside wall
    time because this machine is shared: other jobs inflate wall time, not CPU time."""
    action()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(statistics.median(walls), statistics.median(cpus), walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    slices = make_ct_slices(SHAPE[0], rows=SHAPE[1], cols=SHAPE[2], spacing=SPACING_MM)
    headers = []  # what the router passes: each instance's header, without pixel data
    for ds in slices:
        header = pydicom.Dataset()
        for element in ds:
            if element.keyword != "PixelData":
                header.add(element)
        headers.append(header)
    sources = [SourceImage(ds.SOPClassUID, ds.SOPInstanceUID) for ds in slices]
    study = StudyContext(headers[0])
    result = make_result()
    geometry = geometry_of(slices)

    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        frames: list[int] = []

        def build_and_write(kinds: frozenset[ObjectKind]) -> ResultObjects:
            """The result's objects built and written; ``kinds``: what a legacy destination
            adds (the GSPS, and the summary image with its key image drawn as the router
            draws it, at 512 px)."""
            objects = build_result_objects(
                result=result,
                info=INFO,
                source_images=sources,
                study=study,
                version=ResultVersion(1),
                source_headers=headers,
                geometry=geometry,
                presentation_kinds=kinds,
                summary_picture=picture() if ObjectKind.SC in kinds else None,
            )
            for item in objects.all():
                write_dataset(item.dataset, out / f"{item.kind.value}.dcm")
            return objects

        def radrouter_objects() -> None:
            objects = build_and_write(frozenset())
            assert objects.segmentation is not None
            frames[:] = [int(objects.segmentation.dataset.NumberOfFrames)]

        def radrouter_all_objects() -> None:
            objects = build_and_write(frozenset({ObjectKind.GSPS, ObjectKind.SC}))
            assert objects.presentation_state is not None and objects.summary_image is not None

        def picture() -> SummaryPicture:
            shown = result.findings[0]
            index = shown.region.slice_index
            png = render_key_image(
                slices[index],
                regions=[Outline(shown.region.points)],
                masks=[shown.mask[index]] if shown.mask is not None else [],
                size=512,
            )
            rendered = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)
            return SummaryPicture(headers[index], 0, rendered)

        def source_slices() -> None:
            for index, ds in enumerate(slices):
                ds.save_as(out / f"ct{index}.dcm", enforce_file_format=True)

        def highdicom_default_seg() -> None:
            stack = np.stack([f.mask for f in result.findings if f.mask is not None], axis=-1)
            seg = hd.seg.Segmentation(
                source_images=headers,
                pixel_array=stack,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[
                    hd.seg.SegmentDescription(
                        segment_number=n + 1,
                        segment_label=f"Nodule {n + 1}",
                        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                        segmented_property_type=codes.to_coded_concept(finding_codes.LUNG_NODULE),
                        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                        algorithm_identification=hd.AlgorithmIdentificationSequence(
                            name=INFO.name,
                            family=codes.ARTIFICIAL_INTELLIGENCE,
                            version=INFO.version,
                        ),
                    )
                    for n in range(stack.shape[-1])
                ],
                series_instance_uid=hd.UID(),
                series_number=1,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="radrouter",
                manufacturer_model_name="radrouter",
                software_versions="0",
                device_serial_number="0",
            )
            seg.save_as(out / "hd-seg.dcm", enforce_file_format=True)

        ours = timed(radrouter_objects, args.repeat)
        everything = timed(radrouter_all_objects, args.repeat)
        written = timed(source_slices, max(1, args.repeat // 2))
        default_seg = timed(highdicom_default_seg, max(1, args.repeat // 2))

    print(
        f"machine: {platform.node()} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs)"
    )
    print(
        f"input: {SHAPE[0]} slices {SHAPE[1]}x{SHAPE[2]}, {len(FINDINGS)} findings with masks, "
        f"SEG of {frames[0]} frames; median of {args.repeat} runs"
    )
    print(f"load average before the runs: {load_before}")
    print(f"{'what':58s} {'wall s':>8s} {'cpu s':>8s}")
    for label, timing in (
        ("radrouter SEG + SR + KOS, built and written (fsync)", ours),
        ("radrouter SEG + SR + KOS + GSPS + summary image (fsync)", everything),
        ("reference: pydicom writes the 300 source slices", written),
        ("reference: highdicom SEG with default settings, written", default_seg),
    ):
        print(f"{label:58s} {timing.wall_s:8.3f} {timing.cpu_s:8.3f}")
    print(f"radrouter wall-clock runs: {' '.join(f'{t:.3f}' for t in ours.runs_s)}")


if __name__ == "__main__":
    main()
