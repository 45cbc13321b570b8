"""Secondary Capture summary of a result: valid, marked derived, outline where the finding is."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from algorithms.contract import AlgorithmInfo, AlgorithmResult, Verdict
from algorithms.finding_words import KeyImage
from dicom_sr.context import ResultVersion, StudyContext
from dicom_sr.summary_image import (
    BANNER_BACKGROUND,
    KEY_IMAGE_SIZE,
    SUMMARY_WIDTH,
    TEXT_PAGE_MIN_HEIGHT,
    build_summary_image,
    key_image_box,
    summary_text,
)
from dicom_sr.uids import output_instance_uid, output_series_uid
from router.worklist_page.thumbnails import MASK_COLOUR, REGION_COLOUR, Outline, render_key_image
from tests.dicom_sr.support import assert_valid_dicom, write_object

KEY_SLICE = 1
"""The slice of Nodule 1 in ``masked_result`` (its mask covers slices 1 and 2)."""
MADE = datetime.datetime(2024, 1, 15, 14, 30, 5, tzinfo=datetime.UTC)
PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
OUTLINE_REACH_PX = 12
"""How far (summary pixels) outline pixels may lie outside the mask's scaled bounding box."""

RgbImage = npt.NDArray[np.uint8]


def rendered(
    image: pydicom.Dataset, result: AlgorithmResult, slice_index: int, size: int = KEY_IMAGE_SIZE
) -> RgbImage:
    """``image`` as the worklist page draws it: regions and mask outlines of the slice's
    findings burned in, decoded from the PNG."""
    findings = result.findings
    png = render_key_image(
        image,
        regions=[Outline(f.region.points) for f in findings if f.region.slice_index == slice_index],
        masks=[f.mask[slice_index] for f in findings if f.mask is not None],
        size=size,
    )
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)


def build(
    result: AlgorithmResult,
    info: AlgorithmInfo,
    study: StudyContext,
    key_image: pydicom.Dataset | None = None,
    rendering: RgbImage | None = None,
    finding_images: tuple[KeyImage | None, ...] = (),
) -> hd.sc.SCImage:
    uid = study.study_instance_uid
    return build_summary_image(
        result=result,
        info=info,
        study=study,
        series_instance_uid=output_series_uid(uid, info.name, "SC"),
        sop_instance_uid=output_instance_uid(uid, info.name, "SC", 1),
        series_number=9003,
        version=ResultVersion(1),
        key_image=key_image,
        rendered_key_image=rendering,
        finding_images=finding_images,
        content_datetime=MADE,
    )


@pytest.fixture(scope="module")
def key_rendering(ct_slices: list[pydicom.Dataset], masked_result: AlgorithmResult) -> RgbImage:
    return rendered(ct_slices[KEY_SLICE], masked_result, KEY_SLICE)


@pytest.fixture
def positive(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
    key_rendering: RgbImage,
) -> hd.sc.SCImage:
    slices = [ct_slices[f.region.slice_index] for f in masked_result.findings]
    images = tuple(KeyImage(int(s.SeriesNumber), int(s.InstanceNumber)) for s in slices)
    return build(
        masked_result, info, study, ct_slices[KEY_SLICE], key_rendering, finding_images=images
    )


def pixels_of(image: pydicom.Dataset) -> RgbImage:
    return np.asarray(image.pixel_array, dtype=np.uint8)


def coloured(pixels: RgbImage, colour: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    return np.asarray(np.all(pixels == np.array(colour, dtype=np.uint8), axis=-1), dtype=bool)


def test_positive_summary_passes_dciodvfy_and_reads_back(
    positive: hd.sc.SCImage, tmp_path: Path
) -> None:
    path = write_object(positive, tmp_path)
    assert_valid_dicom(path)
    read = pydicom.dcmread(path)
    assert read.SOPClassUID == SecondaryCaptureImageStorage
    assert read.pixel_array.shape == (positive.Rows, SUMMARY_WIDTH, 3)
    assert np.array_equal(hd.imread(path).get_frame(1), read.pixel_array)


def test_positive_summary_is_a_derived_image_in_the_source_study(
    positive: hd.sc.SCImage,
    info: AlgorithmInfo,
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
) -> None:
    assert list(positive.ImageType) == ["DERIVED", "SECONDARY"]
    assert positive.BurnedInAnnotation == "YES"
    assert positive.ConversionType == "WSD"
    assert positive.Modality == "OT"
    assert positive.SeriesDescription.startswith("AI")
    assert f"{info.name} {info.version}" in positive.SeriesDescription
    assert (positive.PhotometricInterpretation, positive.BitsAllocated) == ("RGB", 8)
    assert "PixelSpacing" not in positive  # not for measuring
    for keyword in PATIENT_AND_STUDY:
        assert str(positive.get(keyword)) == str(study.dataset.get(keyword)), keyword
    assert positive.SeriesInstanceUID != study.series_instance_uid
    key = ct_slices[KEY_SLICE]
    (source,) = positive.SourceImageSequence
    assert (source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID) == (
        key.SOPClassUID,
        key.SOPInstanceUID,
    )
    assert "ReferencedFrameNumber" not in source
    assert list(positive.PatientOrientation) == ["L", "P"]  # axial CT
    assert positive.BodyPartExamined == study.dataset.BodyPartExamined
    assert positive.InstanceNumber == 1
    for date, time in (
        ("SeriesDate", "SeriesTime"),
        ("ContentDate", "ContentTime"),
        ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),
    ):
        assert (str(positive.get(date)), str(positive.get(time))[:6]) == ("20240115", "143005")


def test_outline_colour_lies_around_the_finding_and_nowhere_else(
    positive: hd.sc.SCImage, masked_result: AlgorithmResult, key_rendering: RgbImage
) -> None:
    pixels = pixels_of(positive)
    top, left, scale = key_image_box(positive.Rows, key_rendering.shape)
    key_part = pixels[top:, left : left + round(key_rendering.shape[1] * scale)]
    mask = masked_result.findings[0].mask
    assert mask is not None
    rows, columns = np.nonzero(mask[KEY_SLICE])
    # Source pixel (row, column) covers rendered pixels [row, row + 1) * rendered / source.
    per_pixel = key_rendering.shape[0] / mask.shape[1] * scale
    r0, r1 = rows.min() * per_pixel, (rows.max() + 1) * per_pixel
    c0, c1 = columns.min() * per_pixel, (columns.max() + 1) * per_pixel
    near = np.zeros(key_part.shape[:2], dtype=bool)
    reach = OUTLINE_REACH_PX
    near[
        max(0, int(r0) - reach) : int(np.ceil(r1)) + reach,
        max(0, int(c0) - reach) : int(np.ceil(c1)) + reach,
    ] = True
    for colour in (MASK_COLOUR, REGION_COLOUR):
        outline = coloured(key_part, colour)
        assert outline[near].sum() > 50, colour  # the outline is there ...
        assert not outline[~near].any(), colour  # ... and nowhere else in the key image
    assert not coloured(pixels[:top], MASK_COLOUR).any()  # not in the text either


def test_banner_says_ai_generated_and_is_not_blank(
    positive: hd.sc.SCImage, info: AlgorithmInfo
) -> None:
    pixels = pixels_of(positive)
    banner = coloured(pixels, BANNER_BACKGROUND)
    assert banner[0].all()  # the first row is banner
    banner_rows = int(np.argmin(banner[:, 0]))  # where the banner's background ends
    assert banner_rows > 40
    text = ~banner[:banner_rows]
    assert text.sum() > 2000  # letters on the banner
    comment = str(positive.ImageComments)
    assert comment.startswith("AI-GENERATED, NOT VERIFIED, NOT FOR CLINICAL USE")
    assert f"{info.display_name} ({info.name} {info.version})" in comment
    assert "Nodule: Present (AI probability 97%)" in comment


def test_details_name_every_finding_with_its_location_and_image(
    positive: hd.sc.SCImage, masked_result: AlgorithmResult, ct_slices: list[pydicom.Dataset]
) -> None:
    lines = str(positive.ImageComments).splitlines()
    series = ct_slices[0].SeriesNumber
    assert (
        f"Nodule 1: 6.4 mm nodule, right lung, volume 102.4 mm3, probability 92%, "
        f"series {series} image 2"
    ) in lines
    assert any(line.startswith("Nodule 2: ") and ", lung, " in line for line in lines)
    assert f"Nodule 3: suspected nodule, probability 55%, series {series} image 5" in lines
    assert f"Key image below, AI outlines burned in: series {series} image 2" in lines


def test_clinical_algorithm_is_not_called_not_for_clinical_use(
    present_result: AlgorithmResult, info: AlgorithmInfo
) -> None:
    clinical = dataclasses.replace(info, clinical_use=True)
    text = summary_text(present_result, clinical)
    assert text.banner[0] == "AI-GENERATED, NOT VERIFIED"
    assert not any("NOT FOR CLINICAL USE" in line for line in text.banner)


def test_frame_of_a_multi_frame_key_image_is_referenced_with_its_orientation(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
    key_rendering: RgbImage,
) -> None:
    multi_frame = copy.deepcopy(ct_slices[KEY_SLICE])
    multi_frame.NumberOfFrames = 4
    del multi_frame.ImageOrientationPatient
    plane = pydicom.Dataset()
    plane.ImageOrientationPatient = [0.0, 0.98, -0.2, 0.0, 0.0, -1.0]  # sagittal, tilted
    group = pydicom.Dataset()
    group.PlaneOrientationSequence = [plane]
    multi_frame.SharedFunctionalGroupsSequence = [group]
    summary = build_summary_image(
        result=masked_result,
        info=info,
        study=study,
        series_instance_uid=output_series_uid(study.study_instance_uid, info.name, "SC"),
        sop_instance_uid=output_instance_uid(study.study_instance_uid, info.name, "SC", 1),
        series_number=9003,
        version=ResultVersion(1),
        key_image=multi_frame,
        key_frame_index=2,
        rendered_key_image=key_rendering,
    )
    assert summary.SourceImageSequence[0].ReferencedFrameNumber == 3
    assert "frame 3" in str(summary.ImageComments)
    assert list(summary.PatientOrientation) == ["PF", "F"]


def test_smaller_rendering_is_fitted_to_the_key_image_size(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
) -> None:
    small = rendered(ct_slices[KEY_SLICE], masked_result, KEY_SLICE, size=128)
    summary = build(masked_result, info, study, ct_slices[KEY_SLICE], small)
    top, left, scale = key_image_box(summary.Rows, small.shape)
    assert (left, scale) == (0, KEY_IMAGE_SIZE / 128)
    assert summary.Rows - top == KEY_IMAGE_SIZE


def test_refuses_inconsistent_arguments(
    results: dict[Verdict, AlgorithmResult],
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
    key_rendering: RgbImage,
) -> None:
    key = ct_slices[KEY_SLICE]
    with pytest.raises(ValueError, match="together, or neither"):
        build(masked_result, info, study, key)
    with pytest.raises(ValueError, match="absent result has no key image"):
        build(results[Verdict.ABSENT], info, study, key, key_rendering)
    with pytest.raises(ValueError, match="not the shape of key_image"):
        build(masked_result, info, study, key, key_rendering[:, :300])
    with pytest.raises(ValueError, match="uint8 RGB"):
        build(masked_result, info, study, key, key_rendering[..., 0])
    other_study = copy.deepcopy(key)
    other_study.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="must be of study"):
        build(masked_result, info, study, other_study, key_rendering)
    with pytest.raises(ValueError, match="one per finding"):
        build(masked_result, info, study, finding_images=(None,))


@pytest.mark.parametrize(
    ("verdict", "says"),
    [
        (Verdict.ABSENT, "No finding"),
        (Verdict.NOT_ASSESSED, "Not assessed: Slice thickness 5 mm is above the 3 mm limit"),
    ],
)
def test_negative_and_not_assessed_are_a_text_page(
    verdict: Verdict,
    says: str,
    results: dict[Verdict, AlgorithmResult],
    info: AlgorithmInfo,
    study: StudyContext,
    tmp_path: Path,
) -> None:
    page = build(results[verdict], info, study)
    assert_valid_dicom(write_object(page, tmp_path))
    assert page.Columns == SUMMARY_WIDTH
    assert page.Rows >= TEXT_PAGE_MIN_HEIGHT
    assert "SourceImageSequence" not in page
    assert list(page.ImageType) == ["DERIVED", "SECONDARY"]
    assert page.BurnedInAnnotation == "YES"
    assert says in str(page.ImageComments)
    pixels = pixels_of(page)
    assert coloured(pixels[0:1], BANNER_BACKGROUND).all()
    details = pixels[np.argmin(coloured(pixels, BANNER_BACKGROUND)[:, 0]) :]
    colours = np.unique(details.reshape(-1, 3), axis=0)
    assert len(colours) > 10  # antialiased text, not a blank page
