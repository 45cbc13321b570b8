"""A lookup highdicom repeats for every source image, answered once per SOP Class.

highdicom 0.28.2 asks ``is_multiframe_image(dataset)`` for each image a SEG or presentation
state references; the answer depends only on the SOP Class UID (whether its IOD has Number of
Frames), yet each call walks the IOD's module tables again: about 0.6 ms, 260 calls for a
300-slice CT's SEG and GSPS, a sixth of the time to write a result's objects
(``benchmarks.result_objects``). :func:`cache_multiframe_lookup` replaces the function in the
highdicom modules that call it by one that remembers the answer per SOP Class UID. Same
answers (``tests/dicom_sr/test_highdicom_speed.py``); written for the pinned highdicom.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import highdicom
import highdicom.content
import highdicom.image
import highdicom.pr.content
from highdicom import _standard_utils

WRITTEN_FOR = "0.28.2"
"""The highdicom version whose callers this was checked against."""
_CALLERS = (highdicom.image, highdicom.content, highdicom.pr.content)
_lock = threading.Lock()
_done = False


@functools.lru_cache(maxsize=256)
def _iod_has_frames(sop_class_uid: str) -> bool:
    return bool(_standard_utils.is_attribute_in_iod("NumberOfFrames", sop_class_uid))


def is_multiframe_image(dataset: Any) -> bool:
    """Whether the IOD of ``dataset`` allows several frames (highdicom's definition)."""
    return _iod_has_frames(str(dataset.SOPClassUID))


def cache_multiframe_lookup() -> None:
    """Install :func:`is_multiframe_image` in highdicom's calling modules (once; a no-op for
    another highdicom version, whose callers were not checked)."""
    global _done
    with _lock:
        if _done or highdicom.__version__ != WRITTEN_FOR:
            return
        for module in _CALLERS:
            if hasattr(module, "is_multiframe_image"):
                module.is_multiframe_image = is_multiframe_image  # type: ignore[attr-defined]
        _done = True
