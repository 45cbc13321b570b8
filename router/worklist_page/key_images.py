"""A result's key image: the SR's referenced slice in the spool, its outlines and SEG masks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom

from dicom_sr.read import read_measurement_report
from router.store.database import Database
from router.worklist_page.thumbnails import DEFAULT_SIZE, Outline, WindowChoice, render_key_image

LOGGER = logging.getLogger(__name__)

SegmentationLookup = Callable[[int], Sequence[Path]]
"""Paths of the SEG objects written for a result id (the extension point for SEG outlines)."""


def no_segmentations(result_id: int) -> Sequence[Path]:
    """The lookup while results record no SEG: SR outlines only."""
    return ()


class KeyImageNotFoundError(LookupError):
    """The result has no key image to show (no finding, or its source left the spool)."""


@dataclass(frozen=True)
class KeyImage:
    """Where to draw what: the source frame of one finding and every outline on that frame."""

    result_id: int
    source_path: Path
    sop_instance_uid: str
    frame_number: int | None
    regions: tuple[Outline, ...]
    segmentation_paths: tuple[Path, ...]


def locate_key_image(
    db: Database,
    result_id: int,
    *,
    finding_index: int = 0,
    segmentations: SegmentationLookup = no_segmentations,
) -> KeyImage:
    """Read the result's SR back and find the slice its finding ``finding_index`` is drawn on.

    Every finding on the same frame is outlined too. Raises KeyImageNotFoundError when there
    is no such result, finding or source image.
    """
    if finding_index < 0:
        raise ValueError(f"locate_key_image: finding_index must be >= 0, got {finding_index}")
    row = db.query_one("SELECT path FROM results WHERE id = ?", (result_id,))
    if row is None:
        raise KeyImageNotFoundError(f"no result {result_id}")
    report = read_measurement_report(pydicom.dcmread(row["path"]))
    if finding_index >= len(report.findings):
        raise KeyImageNotFoundError(
            f"result {result_id} has {len(report.findings)} finding(s) with a region; "
            f"finding_index {finding_index} is not one of them"
        )
    finding = report.findings[finding_index]
    key = (finding.referenced_sop_instance_uid, finding.referenced_frame_number)
    regions = tuple(
        Outline(f.points)
        for f in report.findings
        if (f.referenced_sop_instance_uid, f.referenced_frame_number) == key
    )
    source = db.query_one(
        "SELECT path FROM instances WHERE sop_instance_uid = ?",
        (finding.referenced_sop_instance_uid,),
    )
    if source is None or not Path(source["path"]).is_file():
        raise KeyImageNotFoundError(f"the source image of result {result_id} is not in the spool")
    return KeyImage(
        result_id=result_id,
        source_path=Path(source["path"]),
        sop_instance_uid=finding.referenced_sop_instance_uid,
        frame_number=finding.referenced_frame_number,
        regions=regions,
        segmentation_paths=tuple(segmentations(result_id)),
    )


def segmentation_masks(
    paths: Sequence[Path], sop_instance_uid: str, frame_number: int | None
) -> list[npt.NDArray[np.bool_]]:
    """The union of all segments of each SEG on one source frame; SEGs not covering it skipped."""
    masks: list[npt.NDArray[np.bool_]] = []
    for path in paths:
        seg = hd.seg.segread(path)
        try:
            if frame_number is None:
                pixels = seg.get_pixels_by_source_instance(
                    [sop_instance_uid],
                    ignore_spatial_locations=True,
                    assert_missing_frames_are_empty=True,
                )
            else:
                pixels = seg.get_pixels_by_source_frame(
                    sop_instance_uid,
                    [frame_number],
                    ignore_spatial_locations=True,
                    assert_missing_frames_are_empty=True,
                )
        except (KeyError, ValueError) as exc:
            # A SEG of another series or frame of reference says nothing about this frame.
            LOGGER.info("SEG %s does not cover the key image: %s", path.name, exc)
            continue
        frame = np.asarray(pixels[0])
        mask = np.any(frame.reshape(frame.shape[0], frame.shape[1], -1), axis=-1).astype(bool)
        if mask.any():
            masks.append(mask)
    return masks


def key_image_png(
    db: Database,
    result_id: int,
    *,
    finding_index: int = 0,
    size: int = DEFAULT_SIZE,
    window: WindowChoice = WindowChoice.AUTO,
    segmentations: SegmentationLookup = no_segmentations,
) -> bytes:
    """The thumbnail of a result's key image with its region and SEG outlines, as PNG."""
    key = locate_key_image(db, result_id, finding_index=finding_index, segmentations=segmentations)
    source = pydicom.dcmread(key.source_path)
    return render_key_image(
        source,
        frame_number=key.frame_number,
        regions=key.regions,
        masks=segmentation_masks(key.segmentation_paths, key.sop_instance_uid, key.frame_number),
        size=size,
        window=window,
    )
