"""Display windows of grey-scale images: the presets radrouter draws findings in, and the
window an image's own header gives. Shared by the presentation state (``dicom_sr``) and the
worklist page's key images (``router.worklist_page.thumbnails``), so both show a finding alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pydicom
from pydicom.multival import MultiValue


@dataclass(frozen=True)
class Window:
    """A linear VOI window (PS3.3 C.11.2.1.2: centre and width); ``explanation`` is what it
    is for (Window Center & Width Explanation), not part of its identity."""

    center: float
    width: float
    explanation: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"Window.width must be positive, got {self.width}")

    @property
    def low(self) -> float:
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        return self.center + self.width / 2.0


LUNG_WINDOW = Window(center=-600.0, width=1500.0, explanation="LUNG")
MEDIASTINAL_WINDOW = Window(center=40.0, width=400.0, explanation="MEDIASTINUM")
"""The soft-tissue window of the chest."""
BONE_WINDOW = Window(center=500.0, width=2000.0, explanation="BONE")
BRAIN_WINDOW = Window(center=40.0, width=80.0, explanation="BRAIN")


def header_window(dataset: pydicom.Dataset, frame_index: int = 0) -> Window | None:
    """The first Window Center/Width of the image, or of its frame's Frame VOI LUT; None when
    there is none (or its width is not positive)."""
    item = functional_group(dataset, frame_index, "FrameVOILUTSequence") or dataset
    center, width = item.get("WindowCenter"), item.get("WindowWidth")
    if center is None or width is None:
        return None
    center = center[0] if isinstance(center, MultiValue) else center
    width = width[0] if isinstance(width, MultiValue) else width
    if float(width) <= 0:
        return None
    return Window(float(center), float(width), "SOURCE IMAGE WINDOW")


def functional_group(
    dataset: pydicom.Dataset, frame_index: int, keyword: str
) -> pydicom.Dataset | None:
    """The single item of ``keyword`` for a frame of a multi-frame image, per-frame first,
    then shared; None for an image without functional groups."""
    for groups, index in (
        (dataset.get("PerFrameFunctionalGroupsSequence"), frame_index),
        (dataset.get("SharedFunctionalGroupsSequence"), 0),
    ):
        if groups is not None and index < len(groups):
            items = groups[index].get(keyword)
            if items:
                return items[0]  # type: ignore[no-any-return]
    return None
