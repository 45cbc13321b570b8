"""GSPS writer: valid DICOM, outlines on the finding, labels, window, references, read back."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import EnhancedCTImageStorage, GrayscaleSoftcopyPresentationStateStorage

from algorithms import codes as finding_codes
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    Measurement,
    Verdict,
)
from dicom_sr.context import ResultVersion, SourceImage, StudyContext
from dicom_sr.header import series_description
from dicom_sr.presentation_state import (
    CONTENT_LABEL,
    GRAPHIC_LAYER,
    LAYER_COLOUR_RGB,
    MAX_OUTLINE_POINTS,
    build_presentation_state,
    choose_window,
    has_findings,
    mask_outlines,
)
from dicom_sr.tracking import finding_tracking
from dicom_sr.uids import derive_uid
from dicom_sr.windows import BONE_WINDOW, BRAIN_WINDOW, LUNG_WINDOW, MEDIASTINAL_WINDOW, Window
from testing.corpus import pydicom_test_file
from testing.dicom_tools import make_ct_slices
from tests.dicom_sr.support import assert_valid_dicom, box_mask, square_region, write_object

N_SLICES = 8
SHAPE = (N_SLICES, 64, 64)
UNKNOWN_LATERALITY_WARNING = (
    "is only permitted to be empty when actually unknown; should be absent (not empty) if an "
    "unpaired body part, and have a value if a paired body part - attribute <Laterality>"
)
MADE = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
NODULE_SLICES = range(2, 6)


def disk_mask(
    shape: tuple[int, int, int], radius_of_slice: dict[int, float], row: float, column: float
) -> npt.NDArray[np.bool_]:
    """A mask of ``shape`` holding a disk of the given radius (pixels) on each slice named."""
    rows, columns = np.mgrid[: shape[1], : shape[2]]
    mask = np.zeros(shape, dtype=bool)
    for k, radius in radius_of_slice.items():
        mask[k] = (rows - row) ** 2 + (columns - column) ** 2 <= radius**2
    return mask


@pytest.fixture(scope="module")
def slices() -> list[pydicom.Dataset]:
    return make_ct_slices(N_SLICES)


@pytest.fixture(scope="module")
def sources(slices: list[pydicom.Dataset]) -> list[SourceImage]:
    return [SourceImage(ds.SOPClassUID, ds.SOPInstanceUID) for ds in slices]


@pytest.fixture(scope="module")
def nodule_mask() -> npt.NDArray[np.bool_]:
    """A round nodule over four slices, largest in the middle, near the image's left edge."""
    return disk_mask(SHAPE, {2: 3.0, 3: 6.0, 4: 7.5, 5: 4.0}, row=30.0, column=8.0)


@pytest.fixture(scope="module")
def masked_nodule(nodule_mask: npt.NDArray[np.bool_]) -> AlgorithmResult:
    """A 12 mm lung nodule with a mask, and a second nodule with only a region (no mask)."""
    return AlgorithmResult(
        verdict=Verdict.PRESENT,
        findings=(
            Finding(
                finding_type=finding_codes.LUNG_NODULE,
                probability=0.98,
                centre_voxel=(4.0, 30.0, 8.0),
                region=square_region(4, column=8.5, row=30.5, half=7.5),
                measurements=(
                    Measurement(finding_codes.VOLUME, 310.0, finding_codes.CUBIC_MILLIMETRE),
                    Measurement(finding_codes.LONG_AXIS, 12.0, finding_codes.MILLIMETRE),
                ),
                finding_site=finding_codes.LUNG,
                tracking_id="Nodule 1",
                mask=nodule_mask,
            ),
            Finding(
                finding_type=finding_codes.LUNG_NODULE,
                probability=0.61,
                centre_voxel=(6.0, 12.0, 44.0),
                region=square_region(6, column=44.0, row=12.0, half=3.0),
                finding_site=finding_codes.LUNG,
                tracking_id="Nodule 2",
            ),
        ),
    )


def build(
    result: AlgorithmResult,
    info: AlgorithmInfo,
    sources: Sequence[SourceImage],
    headers: Sequence[pydicom.Dataset],
    *,
    version: ResultVersion | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    version = version or ResultVersion(1)
    return build_presentation_state(
        result=result,
        info=info,
        source_images=sources,
        source_headers=headers,
        study=StudyContext(headers[0]),
        series_instance_uid=derive_uid("test", "gsps series"),
        sop_instance_uid=derive_uid("test", "gsps", str(version.number)),
        series_number=9041,
        version=version,
        content_datetime=MADE,
    )


@pytest.fixture(scope="module")
def gsps_file(
    masked_nodule: AlgorithmResult,
    info: AlgorithmInfo,
    sources: list[SourceImage],
    slices: list[pydicom.Dataset],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    gsps = build(masked_nodule, info, sources, slices)
    return write_object(gsps, tmp_path_factory.mktemp("gsps"))


@pytest.fixture(scope="module")
def gsps(gsps_file: Path) -> pydicom.Dataset:
    """The GSPS of ``masked_nodule`` as read back from its file."""
    return pydicom.dcmread(gsps_file)


def annotations_of(gsps: pydicom.Dataset, tracking_id: str) -> dict[str, list[pydicom.Dataset]]:
    """SOP Instance UID of each image -> the graphic objects of ``tracking_id`` drawn on it."""
    drawn: dict[str, list[pydicom.Dataset]] = {}
    for annotation in gsps.GraphicAnnotationSequence:
        (image,) = annotation.ReferencedImageSequence
        for graphic in annotation.get("GraphicObjectSequence", []):
            if graphic.TrackingID == tracking_id:
                drawn.setdefault(str(image.ReferencedSOPInstanceUID), []).append(graphic)
    return drawn


def texts_of(gsps: pydicom.Dataset, tracking_id: str) -> list[pydicom.Dataset]:
    return [
        text
        for annotation in gsps.GraphicAnnotationSequence
        for text in annotation.get("TextObjectSequence", [])
        if text.TrackingID == tracking_id
    ]


def points(graphic: pydicom.Dataset) -> npt.NDArray[np.float64]:
    return np.asarray(graphic.GraphicData, dtype=np.float64).reshape(-1, 2)


def touches_mask(plane: npt.NDArray[np.bool_], column: float, row: float) -> bool:
    """Whether the pixel corner (column, row) is a corner of a pixel of the mask."""
    c, r = round(column), round(row)
    return bool(plane[max(r - 1, 0) : r + 1, max(c - 1, 0) : c + 1].any())


def polygon_area(polyline: npt.NDArray[np.float64]) -> float:
    x, y = polyline[:, 0], polyline[:, 1]
    return abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))) / 2.0


# --- (a) valid DICOM, read back -----------------------------------------------------------


def test_gsps_of_a_masked_ct_nodule_passes_dciodvfy(gsps_file: Path) -> None:
    assert_valid_dicom(gsps_file)


def test_gsps_reads_back_with_pydicom_and_highdicom(
    gsps: pydicom.Dataset, info: AlgorithmInfo, slices: list[pydicom.Dataset]
) -> None:
    # highdicom 0.28.2 has no GrayscaleSoftcopyPresentationState.from_dataset: the file is read
    # with pydicom and its coded values and colour are parsed with highdicom's own types.
    assert gsps.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert gsps.Modality == "PR"
    assert gsps.StudyInstanceUID == slices[0].StudyInstanceUID
    assert gsps.PatientID == slices[0].PatientID
    assert gsps.SeriesDescription == series_description(info)
    assert gsps.ContentLabel == CONTENT_LABEL
    assert info.name in gsps.ContentDescription and "not verified" in gsps.ContentDescription
    assert gsps.InstanceNumber == 1
    assert (gsps.SeriesDate, gsps.PresentationCreationDate) == ("20250304", "20250304")
    assert gsps.ContributingEquipmentSequence[0].DeviceUID == info.device_uid
    (layer,) = gsps.GraphicLayerSequence
    assert layer.GraphicLayer == GRAPHIC_LAYER
    colour = hd.color.CIELabColor.from_dicom_value(layer.GraphicLayerRecommendedDisplayCIELabValue)
    assert colour.to_rgb() == LAYER_COLOUR_RGB
    assert [group.GraphicGroupLabel for group in gsps.GraphicGroupSequence] == [
        "Nodule 1",
        "Nodule 2",
    ]
    for annotation in gsps.GraphicAnnotationSequence:
        assert annotation.GraphicLayer == GRAPHIC_LAYER
        for graphic in annotation.GraphicObjectSequence:
            assert hd.pr.GraphicTypeValues(graphic.GraphicType) is hd.pr.GraphicTypeValues.POLYLINE
            assert (
                hd.pr.AnnotationUnitsValues(graphic.GraphicAnnotationUnits)
                is hd.pr.AnnotationUnitsValues.PIXEL
            )
            assert graphic.NumberOfGraphicPoints == len(points(graphic))
    assert gsps.RescaleType == "HU"
    assert gsps.PresentationLUTShape == "IDENTITY"


# --- (b) outlines on the finding -----------------------------------------------------------


def test_mask_outline_lies_on_the_mask_of_each_slice_that_holds_it(
    gsps: pydicom.Dataset,
    sources: list[SourceImage],
    nodule_mask: npt.NDArray[np.bool_],
) -> None:
    drawn = annotations_of(gsps, "Nodule 1")
    slice_of = {source.sop_instance_uid: k for k, source in enumerate(sources)}

    holding = np.flatnonzero(nodule_mask.any(axis=(1, 2))).tolist()
    assert holding == list(NODULE_SLICES)
    assert sorted(slice_of[uid] for uid in drawn) == holding  # every slice with voxels
    for uid, graphics in drawn.items():
        plane = nodule_mask[slice_of[uid]]
        (graphic,) = graphics  # one connected part per slice
        polyline = points(graphic)
        assert len(polyline) <= MAX_OUTLINE_POINTS
        assert np.array_equal(polyline[0], polyline[-1])  # closed
        assert np.array_equal(polyline, np.round(polyline))  # pixel corners
        assert all(touches_mask(plane, x, y) for x, y in polyline)
        # Along the pixel edges around the mask: it encloses exactly the mask's pixels.
        assert polygon_area(polyline) == pytest.approx(float(plane.sum()))


def test_region_only_finding_is_drawn_as_its_region_on_its_slice(
    gsps: pydicom.Dataset, sources: list[SourceImage], masked_nodule: AlgorithmResult
) -> None:
    region = masked_nodule.findings[1].region

    drawn = annotations_of(gsps, "Nodule 2")

    assert list(drawn) == [sources[region.slice_index].sop_instance_uid]
    (graphic,) = drawn[sources[region.slice_index].sop_instance_uid]
    assert np.allclose(points(graphic), np.asarray(region.points))


def test_outline_and_label_carry_the_tracking_of_the_sr_and_seg(
    gsps: pydicom.Dataset, masked_nodule: AlgorithmResult, info: AlgorithmInfo
) -> None:
    tracking = finding_tracking(masked_nodule, str(gsps.StudyInstanceUID), info.name)

    for t in tracking:
        graphics = [g for gs in annotations_of(gsps, t.identifier).values() for g in gs]
        assert {str(g.TrackingUID) for g in graphics} == {t.uid}
        assert {str(text.TrackingUID) for text in texts_of(gsps, t.identifier)} == {t.uid}


# --- (c) the label --------------------------------------------------------------------------


def test_label_says_ai_algorithm_size_probability_and_not_verified(
    gsps: pydicom.Dataset, info: AlgorithmInfo
) -> None:
    texts = texts_of(gsps, "Nodule 1")

    assert len(texts) == len(NODULE_SLICES)  # a label on every slice with an outline
    assert {text.UnformattedTextValue for text in texts} == {
        f"AI {info.name} {info.version}: 12 mm nodule, p=0.98 \u2014 not verified, "
        "not for clinical use"
    }
    (unsized,) = texts_of(gsps, "Nodule 2")
    assert "suspected nodule, p=0.61" in unsized.UnformattedTextValue


def test_label_sits_inside_the_image_anchored_on_its_outline(gsps: pydicom.Dataset) -> None:
    for annotation in gsps.GraphicAnnotationSequence:
        outline = np.vstack([points(g) for g in annotation.GraphicObjectSequence])
        for text in annotation.TextObjectSequence:
            left, top = text.BoundingBoxTopLeftHandCorner
            right, bottom = text.BoundingBoxBottomRightHandCorner
            assert 0.0 <= left < right <= 64.0 and 0.0 <= top < bottom <= 64.0
            column, row = text.AnchorPoint
            assert outline[:, 0].min() <= column <= outline[:, 0].max()
            assert row == outline[:, 1].min()


def test_clinical_algorithm_label_drops_not_for_clinical_use(
    masked_nodule: AlgorithmResult,
    info: AlgorithmInfo,
    sources: list[SourceImage],
    slices: list[pydicom.Dataset],
) -> None:
    clinical = dataclasses.replace(info, clinical_use=True)

    gsps = build(masked_nodule, clinical, sources, slices)

    (text,) = texts_of(gsps, "Nodule 2")
    assert text.UnformattedTextValue.endswith("p=0.61 \u2014 not verified")


# --- (d) the window -------------------------------------------------------------------------


def test_lung_ct_finding_is_shown_in_the_lung_window(gsps: pydicom.Dataset) -> None:
    (voi,) = gsps.SoftcopyVOILUTSequence
    assert "ReferencedImageSequence" not in voi  # one window for every referenced image
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (-600.0, 1500.0)
    assert voi.WindowCenterWidthExplanation == "LUNG"


@pytest.mark.parametrize(
    ("finding_type", "site", "window"),
    [
        (finding_codes.LUNG_NODULE, None, LUNG_WINDOW),
        (finding_codes.PULMONARY_EMBOLISM, finding_codes.PULMONARY_ARTERY, MEDIASTINAL_WINDOW),
        (finding_codes.FRACTURE, None, BONE_WINDOW),
        (finding_codes.PULMONARY_EMBOLISM, finding_codes.FEMUR, BONE_WINDOW),
        (finding_codes.DEMYELINATION, finding_codes.CEREBRAL_WHITE_MATTER, BRAIN_WINDOW),
    ],
    ids=["nodule", "pe", "fracture", "site-decides", "brain"],
)
def test_ct_window_follows_the_finding(
    finding_type: Code,
    site: Code | None,
    window: Window,
    slices: list[pydicom.Dataset],
) -> None:
    region = square_region(1, 5.0, 5.0, 2.0)
    finding = Finding(finding_type, 0.9, (1.0, 5.0, 5.0), region, finding_site=site)

    assert choose_window(slices[1], finding) == window


def test_image_with_two_findings_is_shown_in_the_window_of_the_more_probable(
    info: AlgorithmInfo, sources: list[SourceImage], slices: list[pydicom.Dataset]
) -> None:
    def finding(finding_type: Code, probability: float, slice_: int) -> Finding:
        return Finding(
            finding_type,
            probability,
            (float(slice_), 20.0, 20.0),
            square_region(slice_, 20.0 + probability * 10, 20.0, 2.0),
            tracking_id=f"{finding_type.meaning} {slice_} {probability}",
        )

    result = AlgorithmResult(
        Verdict.PRESENT,
        (
            finding(finding_codes.LUNG_NODULE, 0.4, 1),
            finding(finding_codes.PULMONARY_EMBOLISM, 0.9, 1),
            finding(finding_codes.LUNG_NODULE, 0.7, 3),
        ),
    )

    gsps = build(result, info, sources, slices)

    windows = {
        str(item.ReferencedSOPInstanceUID): (float(voi.WindowCenter), float(voi.WindowWidth))
        for voi in gsps.SoftcopyVOILUTSequence
        for item in voi.ReferencedImageSequence
    }
    assert windows == {
        sources[1].sop_instance_uid: (40.0, 400.0),
        sources[3].sop_instance_uid: (-600.0, 1500.0),
    }


def test_mr_window_is_the_source_images_own_else_their_whole_range() -> None:
    mr = pydicom.dcmread(pydicom_test_file("MR_small.dcm"), stop_before_pixels=True)
    lesion = Finding(
        finding_codes.DEMYELINATION, 0.8, (0.0, 30.0, 30.0), square_region(0, 30.0, 30.0, 3.0)
    )

    window = choose_window(mr, lesion)

    assert (window.center, window.width) == (600.0, 1600.0)
    del mr.WindowCenter, mr.WindowWidth
    whole = choose_window(mr, lesion)
    assert whole.explanation == "FULL RANGE"
    assert whole.width >= 2.0 ** int(mr.BitsStored) - 1


# --- (e) region-only findings, radiographs --------------------------------------------------


def test_radiograph_boxes_are_drawn_inverse_in_the_images_own_window(
    radiograph: pydicom.Dataset,
    radiograph_info: AlgorithmInfo,
    radiograph_result: AlgorithmResult,
    tmp_path: Path,
) -> None:
    sources = [SourceImage(radiograph.SOPClassUID, radiograph.SOPInstanceUID)]

    path = write_object(build(radiograph_result, radiograph_info, sources, [radiograph]), tmp_path)
    gsps = pydicom.dcmread(path)

    assert_valid_dicom(path)
    (annotation,) = gsps.GraphicAnnotationSequence  # both boxes on the one image
    assert [points(g).tolist() for g in annotation.GraphicObjectSequence] == [
        [list(p) for p in finding.region.points] for finding in radiograph_result.findings
    ]
    assert len(annotation.TextObjectSequence) == 2
    assert gsps.PresentationLUTShape == "INVERSE"  # RG3_UNCR is MONOCHROME1
    (voi,) = gsps.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (550.0, 1024.0)
    assert gsps.BodyPartExamined == radiograph.BodyPartExamined


def test_region_is_clipped_to_the_image(
    info: AlgorithmInfo, sources: list[SourceImage], slices: list[pydicom.Dataset]
) -> None:
    at_edge = Finding(
        finding_codes.LUNG_NODULE, 0.9, (0.0, 1.0, 62.0), square_region(0, 62.0, 1.0, 4.0)
    )

    gsps = build(AlgorithmResult(Verdict.PRESENT, (at_edge,)), info, sources, slices)

    (graphic,) = gsps.GraphicAnnotationSequence[0].GraphicObjectSequence
    polyline = points(graphic)
    assert polyline.min() >= 0.0 and polyline.max() <= 64.0


# --- (f) no findings, no GSPS ---------------------------------------------------------------


@pytest.mark.parametrize("verdict", [Verdict.ABSENT, Verdict.NOT_ASSESSED])
def test_result_without_findings_gets_no_gsps(
    verdict: Verdict,
    info: AlgorithmInfo,
    sources: list[SourceImage],
    slices: list[pydicom.Dataset],
) -> None:
    result = AlgorithmResult(verdict, reason="too thick slices")

    assert not has_findings(result)
    with pytest.raises(ValueError, match="no findings"):
        build(result, info, sources, slices)


# --- (g) references -------------------------------------------------------------------------


def test_references_are_exactly_the_source_images_drawn_on(
    gsps: pydicom.Dataset, sources: list[SourceImage], slices: list[pydicom.Dataset]
) -> None:
    drawn_on = [*NODULE_SLICES, 6]

    (series,) = gsps.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == slices[0].SeriesInstanceUID
    assert [
        (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        for item in series.ReferencedImageSequence
    ] == [(sources[k].sop_class_uid, sources[k].sop_instance_uid) for k in drawn_on]
    annotated = [
        str(annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
        for annotation in gsps.GraphicAnnotationSequence
    ]
    assert annotated == [sources[k].sop_instance_uid for k in drawn_on]


def test_every_annotation_has_the_structure_highdicom_gave_the_first(
    gsps: pydicom.Dataset,
) -> None:
    """Only the first annotation of a SOP class is built (and checked) by highdicom; the
    others must come out the same way."""
    first, *others = gsps.GraphicAnnotationSequence
    assert others

    def shape(item: pydicom.Dataset) -> list[str]:
        return sorted(
            f"{element.keyword}:{sorted(e.keyword for e in element.value[0])}"
            if element.VR == "SQ"
            else element.keyword
            for element in item
        )

    assert all(shape(item) == shape(first) for item in others)


def test_multiframe_source_is_annotated_by_frame(info: AlgorithmInfo, tmp_path: Path) -> None:
    enhanced = pydicom.dcmread(pydicom_test_file("eCT_Supplemental.dcm"), stop_before_pixels=True)
    sources = [
        SourceImage(EnhancedCTImageStorage, enhanced.SOPInstanceUID, frame_number=frame)
        for frame in (1, 2)
    ]
    mask = box_mask(
        (2, int(enhanced.Rows), int(enhanced.Columns)),
        range(1, 2),
        range(200, 260),
        range(240, 300),
    )
    nodule = Finding(
        finding_codes.LUNG_NODULE,
        0.9,
        (1.0, 230.0, 270.0),
        square_region(1, 270.0, 230.0, 30.0),
        finding_site=finding_codes.LUNG,
        mask=mask,
    )

    path = write_object(
        build(AlgorithmResult(Verdict.PRESENT, (nodule,)), info, sources, [enhanced]), tmp_path
    )
    gsps = pydicom.dcmread(path)

    # The Enhanced CT names its body part only as a code in its Frame Anatomy (no Body Part
    # Examined), so the GSPS cannot tell whether it is paired: Laterality (Type 2C) is empty,
    # "unknown", which dciodvfy allows with this warning (absent would be an error).
    assert_valid_dicom(path, accepted_warnings=[UNKNOWN_LATERALITY_WARNING])
    assert gsps.Laterality == "" and "BodyPartExamined" not in gsps
    (annotation,) = gsps.GraphicAnnotationSequence
    (image,) = annotation.ReferencedImageSequence
    assert image.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
    assert image.ReferencedFrameNumber == 2
    (graphic,) = annotation.GraphicObjectSequence
    assert points(graphic)[:-1].tolist() == [[240, 200], [300, 200], [300, 260], [240, 260]]


# --- mask_outlines --------------------------------------------------------------------------


def test_box_outline_is_its_four_corners() -> None:
    plane = box_mask((1, 16, 16), range(0, 1), range(3, 7), range(5, 12))[0]

    (outline,) = mask_outlines(plane)

    assert outline.tolist() == [[5, 3], [12, 3], [12, 7], [5, 7], [5, 3]]


def test_large_outline_is_simplified_to_the_point_limit_on_the_mask() -> None:
    plane = disk_mask((1, 64, 64), {0: 28.0}, row=31.5, column=31.5)[0]

    (outline,) = mask_outlines(plane, max_points=24)

    assert len(outline) <= 24
    assert all(touches_mask(plane, x, y) for x, y in outline)
    assert polygon_area(outline) == pytest.approx(float(plane.sum()), rel=0.05)


def test_each_part_gets_its_own_outline_and_holes_are_not_drawn() -> None:
    plane = np.zeros((20, 20), dtype=bool)
    plane[2:10, 2:10] = True
    plane[4:6, 4:6] = False  # a hole
    plane[12:15, 14:18] = True
    plane[15, 18] = True  # touches the part above only at a corner: a part of its own

    outlines = mask_outlines(plane)

    assert [polygon_area(outline) for outline in outlines] == [64.0, 12.0, 1.0]
