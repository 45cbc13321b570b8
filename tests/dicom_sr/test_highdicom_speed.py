"""The cached multi-frame lookup answers as highdicom's own, and is in place where it calls it."""

from __future__ import annotations

import highdicom
import highdicom.image
import highdicom.pr.content
import pydicom
import pytest
from highdicom._standard_utils import is_multiframe_image as highdicoms_own
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

import dicom_sr.seg  # noqa: F401 - installs the cached lookup
from dicom_sr.highdicom_speed import WRITTEN_FOR, is_multiframe_image


@pytest.mark.parametrize(
    "sop_class_uid",
    [
        CTImageStorage,
        MRImageStorage,
        ComputedRadiographyImageStorage,
        SecondaryCaptureImageStorage,
        EnhancedCTImageStorage,
        EnhancedMRImageStorage,
        SegmentationStorage,
    ],
)
def test_the_cached_lookup_answers_as_highdicoms_own(sop_class_uid: str) -> None:
    dataset = pydicom.Dataset()
    dataset.SOPClassUID = sop_class_uid
    assert is_multiframe_image(dataset) is highdicoms_own(dataset)


def test_it_is_installed_for_the_pinned_highdicom() -> None:
    assert highdicom.__version__ == WRITTEN_FOR  # another version: check its callers again
    assert highdicom.image.is_multiframe_image is is_multiframe_image  # type: ignore[attr-defined]
    assert highdicom.pr.content.is_multiframe_image is is_multiframe_image  # type: ignore[attr-defined]
