"""A result's key image: the SR's referenced slice in the spool, its outlines and SEG masks;
and the slices that hold a finding (its SEG segment's frames), to step through."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom

from dicom_sr.read import FindingSummary, ReportSummary, read_measurement_report
from router.logs import log_safe
from router.store.database import Database
from router.worklist_page.thumbnails import (
    DEFAULT_SIZE,
    Outline,
    WindowChoice,
    auto_window_choice,
    render_key_image,
)

LOGGER = logging.getLogger(__name__)

SegmentationLookup = Callable[[int], Sequence[Path]]
"""Paths of the SEG objects written for a result id (the extension point for SEG outlines)."""


def no_segmentations(result_id: int) -> Sequence[Path]:
    """The lookup while results record no SEG: SR outlines only."""
    return ()


class KeyImageNotFoundError(LookupError):
    """The result has no key image to show (no finding, or its source left the spool)."""


SourceFrame = tuple[str, int | None]
"""A source image as the SR and SEG reference it: SOP Instance UID and frame number (None for
a single-frame image)."""


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
    report, finding = _report_finding(db, result_id, finding_index)
    regions = _outlines_on(report, _frame_of(finding))
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


def _report_finding(
    db: Database, result_id: int, finding_index: int
) -> tuple[ReportSummary, FindingSummary]:
    if finding_index < 0:
        raise ValueError(f"finding_index must be >= 0, got {finding_index}")
    row = db.query_one("SELECT path FROM results WHERE id = ?", (result_id,))
    if row is None:
        raise KeyImageNotFoundError(f"no result {result_id}")
    report = read_measurement_report(pydicom.dcmread(row["path"]))
    if finding_index >= len(report.findings):
        raise KeyImageNotFoundError(
            f"result {result_id} has {len(report.findings)} finding(s) with a region; "
            f"finding_index {finding_index} is not one of them"
        )
    return report, report.findings[finding_index]


def _frame_of(finding: FindingSummary) -> SourceFrame:
    return (finding.referenced_sop_instance_uid, finding.referenced_frame_number)


def _outlines_on(report: ReportSummary, frame: SourceFrame) -> tuple[Outline, ...]:
    """Every finding's SR region drawn on ``frame``."""
    return tuple(Outline(f.points) for f in report.findings if _frame_of(f) == frame)


@dataclass(frozen=True)
class FindingSlice:
    """One source frame that holds a finding: its file in the spool and its numbers."""

    sop_instance_uid: str
    frame_number: int | None
    path: Path
    instance_number: int | None
    regions: tuple[Outline, ...]
    """The SR regions drawn on this frame (the finding's own on its key slice)."""


@dataclass(frozen=True)
class FindingSlices:
    """The slices a finding covers, in Instance Number (then frame) order, as a viewer steps
    through them: the frames of its SEG segment, and always its key slice."""

    result_id: int
    finding_index: int
    series_number: int | None
    slices: tuple[FindingSlice, ...]
    key_index: int
    """Which of ``slices`` the SR region is on (the key image)."""
    window: WindowChoice
    """The window ``auto`` chose on the key slice, used for every slice so the grey values
    do not jump while stepping."""
    segmentation_paths: tuple[Path, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.key_index < len(self.slices):
            raise ValueError(
                f"FindingSlices.key_index {self.key_index} is not one of {len(self.slices)} slices"
            )


def finding_slices(
    db: Database,
    result_id: int,
    *,
    finding_index: int = 0,
    segmentations: SegmentationLookup = no_segmentations,
) -> FindingSlices:
    """The slices that hold finding ``finding_index`` of a result: the source frames of the SEG
    segment its SR names (TID 1411), else its key slice alone. Frames no longer in the spool
    are left out; the key slice must be there (KeyImageNotFoundError otherwise)."""
    report, finding = _report_finding(db, result_id, finding_index)
    key = _frame_of(finding)
    seg_paths = tuple(segmentations(result_id))
    frames = {key, *_segment_frames(finding, seg_paths)}
    rows: dict[str, tuple[Path, int | None]] = {}
    for uid in sorted({uid for uid, _ in frames}):
        row = db.query_one(
            "SELECT path, instance_number FROM instances WHERE sop_instance_uid = ?", (uid,)
        )
        if row is not None and Path(row["path"]).is_file():
            rows[uid] = (Path(row["path"]), row["instance_number"])
    if key[0] not in rows:
        raise KeyImageNotFoundError(f"the source image of result {result_id} is not in the spool")
    slices = sorted(
        (
            FindingSlice(uid, frame, *rows[uid], regions=_outlines_on(report, (uid, frame)))
            for uid, frame in frames
            if uid in rows
        ),
        key=lambda s: (
            s.instance_number is None,
            s.instance_number or 0,
            s.frame_number or 0,
            s.sop_instance_uid,
        ),
    )
    key_index = [(s.sop_instance_uid, s.frame_number) for s in slices].index(key)
    key_slice = slices[key_index]
    source = pydicom.dcmread(key_slice.path)
    window = auto_window_choice(
        source,
        frame_number=key_slice.frame_number,
        regions=key_slice.regions,
        masks=segmentation_masks(seg_paths, key_slice.sop_instance_uid, key_slice.frame_number),
    )
    series_number = source.get("SeriesNumber")
    return FindingSlices(
        result_id=result_id,
        finding_index=finding_index,
        series_number=None if series_number in (None, "") else int(series_number),
        slices=tuple(slices),
        key_index=key_index,
        window=window,
        segmentation_paths=seg_paths,
    )


def _segment_frames(finding: FindingSummary, paths: Sequence[Path]) -> set[SourceFrame]:
    """The source frames of the finding's segment, read from the SEG its SR names when that
    SEG is one of ``paths`` (its frames' Segment Identification and Derivation Image)."""
    segment = finding.segment
    if segment is None:
        return set()
    for path in paths:
        seg = pydicom.dcmread(path, stop_before_pixels=True)
        if str(seg.get("SOPInstanceUID", "")) != segment.sop_instance_uid:
            continue
        shared = seg.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]
        frames: set[SourceFrame] = set()
        for item in seg.get("PerFrameFunctionalGroupsSequence", []):
            number = _group(item, shared, "SegmentIdentificationSequence")
            derivation = _group(item, shared, "DerivationImageSequence")
            if number is None or derivation is None:
                continue
            if int(number.ReferencedSegmentNumber) != segment.segment_number:
                continue
            for source in derivation.get("SourceImageSequence", []):
                frame = source.get("ReferencedFrameNumber")
                frames.add(
                    (str(source.ReferencedSOPInstanceUID), None if frame is None else int(frame))
                )
        return frames
    return set()


def _group(frame: pydicom.Dataset, shared: pydicom.Dataset, keyword: str) -> pydicom.Dataset | None:
    """A frame's functional group item, per-frame first, then shared."""
    for groups in (frame, shared):
        items = groups.get(keyword)
        if items:
            item: pydicom.Dataset = items[0]
            return item
    return None


def finding_slice_png(
    slices: FindingSlices,
    index: int,
    *,
    size: int = DEFAULT_SIZE,
    window: WindowChoice = WindowChoice.AUTO,
) -> bytes:
    """Slice ``index`` of a finding's slices with its SR regions and SEG outlines, as PNG;
    ``auto`` uses the window chosen on the key slice."""
    if not 0 <= index < len(slices.slices):
        raise KeyImageNotFoundError(
            f"finding {slices.finding_index} of result {slices.result_id} covers "
            f"{len(slices.slices)} slice(s); slice {index} is not one of them"
        )
    chosen = slices.slices[index]
    return render_key_image(
        pydicom.dcmread(chosen.path),
        frame_number=chosen.frame_number,
        regions=chosen.regions,
        masks=segmentation_masks(
            slices.segmentation_paths, chosen.sop_instance_uid, chosen.frame_number
        ),
        size=size,
        window=slices.window if window is WindowChoice.AUTO else window,
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
            LOGGER.info(
                "SEG %s (study %s) does not cover key image %s: %s",
                log_safe(path.stem),
                log_safe(seg.get("StudyInstanceUID", "unknown")),
                log_safe(sop_instance_uid),
                log_safe(exc, 300),
            )
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
