"""The objects for viewers that show neither SEG nor SR: which ones a job's destinations want
(``destinations.<name>.results``), and the key picture a summary image shows."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image

from algorithms.contract import AlgorithmResult, Finding, Verdict
from algorithms.finding_words import KeyImage
from config.schema import RouterConfig
from dicom_sr.identity import ObjectKind
from dicom_sr.result_objects import SummaryPicture
from router.logs import log_safe
from router.run.series_loader import LoadedSeries
from router.store.database import Database
from router.worklist_page.thumbnails import Outline, render_key_image

LOGGER = logging.getLogger(__name__)

SUMMARY_PICTURE_SIZE = 512
"""The key image's long side in the summary (its outline colours come through unresampled)."""

_PRESENTATION_KINDS = {"gsps": ObjectKind.GSPS, "sc": ObjectKind.SC}


def wanted_presentation_kinds(
    config: RouterConfig, destinations: Iterable[str]
) -> frozenset[ObjectKind]:
    """The presentation state and summary image, where any of ``destinations`` asks for them."""
    wanted = {
        kind
        for name in destinations
        if (destination := config.destinations.get(name)) is not None
        for kind in destination.results
    }
    return frozenset(kind for name, kind in _PRESENTATION_KINDS.items() if name in wanted)


def summary_picture(
    db: Database,
    result: AlgorithmResult,
    loaded: LoadedSeries,
    key_images: Sequence[KeyImage | None],
) -> SummaryPicture | None:
    """The most probable finding's slice with every outline on it, as the worklist page draws
    it; None for a result without findings, or when the slice cannot be read (the summary is
    then a text page, which says where to look)."""
    if result.verdict is not Verdict.PRESENT or not result.findings:
        return None
    shown = max(result.findings, key=lambda finding: finding.probability)
    index = shown.region.slice_index
    if not 0 <= index < len(loaded.slices):
        return None
    source = loaded.slices[index]
    row = db.query_one(
        "SELECT path FROM instances WHERE sop_instance_uid = ?", (source.sop_instance_uid,)
    )
    try:
        if row is None:
            raise FileNotFoundError(source.sop_instance_uid)
        dataset = pydicom.dcmread(row["path"])
        on_slice = [f for f in result.findings if f.region.slice_index == index]
        png = render_key_image(
            dataset,
            frame_number=source.frame_number,
            regions=[Outline(f.region.points) for f in on_slice],
            masks=_masks_on(on_slice, index, (int(dataset.Rows), int(dataset.Columns))),
            size=SUMMARY_PICTURE_SIZE,
        )
    except Exception as exc:  # boundary: the summary falls back to its text page
        LOGGER.warning(
            "summary image of instance %s: key image not drawn (%s)",
            log_safe(source.sop_instance_uid),
            type(exc).__name__,
        )
        return None
    rendered = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)
    del dataset.PixelData  # the summary needs the header only
    return SummaryPicture(
        key_image=dataset,
        frame_index=(source.frame_number or 1) - 1,
        rendered=rendered,
        finding_images=tuple(key_images),
    )


def _masks_on(
    findings: Sequence[Finding], index: int, shape: tuple[int, int]
) -> list[npt.NDArray[np.bool_]]:
    """The findings' mask planes on slice ``index`` that match the image and are not empty."""
    planes = []
    for finding in findings:
        if finding.mask is None or finding.mask.ndim != 3 or index >= finding.mask.shape[0]:
            continue
        plane = finding.mask[index]
        if plane.shape == shape and plane.any():
            planes.append(plane)
    return planes
