"""Grayscale Softcopy Presentation State (GSPS) of a result: finding outlines, labels, window."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from scipy import ndimage

from algorithms import codes as finding_codes
from algorithms.contract import AlgorithmInfo, AlgorithmResult, Finding
from algorithms.finding_words import plain_name, sized_name
from dicom_sr.context import ResultVersion, SourceImage, StudyContext
from dicom_sr.header import (
    LONG_STRING_MAX,
    MANUFACTURER,
    UTF8,
    algorithm_equipment,
    radrouter_version,
    result_datetime,
    series_description,
)
from dicom_sr.highdicom_speed import cache_multiframe_lookup
from dicom_sr.identity import check_object_identity
from dicom_sr.seg import UNSPECIFIED_DEVICE_SERIAL_NUMBER
from dicom_sr.tracking import Tracking, finding_tracking
from dicom_sr.windows import (
    BONE_WINDOW,
    BRAIN_WINDOW,
    LUNG_WINDOW,
    MEDIASTINAL_WINDOW,
    Window,
    functional_group,
    header_window,
)

LOGGER = logging.getLogger(__name__)
cache_multiframe_lookup()  # highdicom asks it per source image: see dicom_sr.highdicom_speed

CONTENT_LABEL = "AI_FINDINGS"
"""Content Label (CS) of every GSPS radrouter writes (the SEG's too)."""
GRAPHIC_LAYER = "AI"
"""The one graphic layer that holds every outline and label."""
LAYER_COLOUR_RGB = (255, 255, 0)
"""Recommended display colour of the layer: yellow, seen on any grey."""
MAX_OUTLINE_POINTS = 200
"""Most points of one outline polyline (the closing point included)."""

PointArray = npt.NDArray[np.float64]
"""(n, 2) points in PIXEL units: (column, row), (0, 0) the top-left corner of the image."""

_LABEL_ROWS_PER_IMAGE = 16
"""A label's box is 1/16 of the image high (its text size in a viewer that fits the box)."""
_LABEL_GAP_PX = 1.0


_CT_WINDOW_OF_CODE: Mapping[tuple[str, str], Window] = {
    (code.scheme_designator, code.value): window
    for window, members in (
        (LUNG_WINDOW, (finding_codes.LUNG_NODULE, finding_codes.LUNG)),
        (
            BONE_WINDOW,
            (
                finding_codes.FRACTURE,
                finding_codes.FEMUR,
                finding_codes.TIBIA,
                finding_codes.FIBULA,
                finding_codes.HUMERUS,
                finding_codes.RADIUS,
                finding_codes.ULNA,
            ),
        ),
        (
            BRAIN_WINDOW,
            (
                finding_codes.DEMYELINATION,
                finding_codes.CEREBRAL_WHITE_MATTER,
                finding_codes.CEREBELLUM,
                finding_codes.BRAIN_STEM,
            ),
        ),
    )
    for code in members
}
"""Finding sites and types (scheme, value) whose CT findings are read in a special window."""


@dataclass(frozen=True)
class _Mark:
    """One finding drawn on one source image: its outlines there."""

    finding_index: int
    outlines: tuple[PointArray, ...]


@dataclass(frozen=True)
class _Image:
    """A source image that carries marks, with its header (rows, columns, modality, VOI)."""

    source: SourceImage
    header: pydicom.Dataset
    marks: list[_Mark]

    @property
    def frame_index(self) -> int:
        return 0 if self.source.frame_number is None else self.source.frame_number - 1

    @property
    def size(self) -> tuple[int, int]:
        """(columns, rows): the largest PIXEL coordinates on the image."""
        return int(self.header.Columns), int(self.header.Rows)


def has_findings(result: AlgorithmResult) -> bool:
    """Whether ``result`` has findings to draw (and so gets a GSPS)."""
    return bool(result.findings)


def build_presentation_state(
    *,
    result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: Sequence[SourceImage],
    source_headers: Sequence[pydicom.Dataset],
    study: StudyContext,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    version: ResultVersion,
    tracking_uids: Mapping[str, str] | None = None,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    content_datetime: datetime.datetime | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The findings of ``result`` drawn on its source images, as one GSPS in its own series.

    Only for a result with findings: a result without (a negative, "not assessed") raises
    ``ValueError``; ``has_findings`` says which results get one.

    Each finding is drawn on the slices that hold it, in one graphic layer ``GRAPHIC_LAYER``
    (recommended colour yellow): a finding with a mask as the outer boundary of each connected
    part of the mask on every slice where the mask has voxels (closed POLYLINEs along the pixel
    edges, at most ``MAX_OUTLINE_POINTS`` points each); a finding without a mask as its
    region's polyline on the region's slice (clipped to the image). Beside each outline a
    label (``finding_label``) says AI, the algorithm and version, size, probability and "not
    verified". Outline and label of a finding carry its tracking identifier and UID (as the
    SR and SEG, ``tracking_uids`` for findings carried over from a prior exam) and form one
    graphic group named after it.

    The window of each referenced image is the one of ``choose_window``; the Modality LUT is
    copied from the images (so their rescale must agree); MONOCHROME1 images get an INVERSE
    Presentation LUT (a presentation state ignores the image's Photometric Interpretation).
    Only the source images that carry a drawing are referenced, by frame for a multi-frame
    source.

    ``source_images`` are the volume's slices in order (the masks' first axis);
    ``source_headers`` the headers (pixel data not needed) of their instances. Series
    Description as the SR's, Content Label ``CONTENT_LABEL``, Contributing Equipment naming
    the algorithm, Instance Number = version. Series Date/Time and Presentation Creation
    Date/Time (the GSPS has no Content Date/Time) are ``content_datetime``, when the result
    was made (default now; ``header.result_datetime``), as in the SR, SEG and KOS.
    """
    _check_arguments(
        result=result,
        source_images=source_images,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
    )
    made = result_datetime(content_datetime)
    tracking = finding_tracking(result, study.study_instance_uid, info.name, tracking_uids)
    images = _marked_images(result, source_images, _headers_by_uid(source_headers, study))
    layer = hd.pr.GraphicLayer(
        layer_name=GRAPHIC_LAYER,
        order=1,
        description=f"AI findings, not verified: {info.name} {info.version}"[:LONG_STRING_MAX],
        display_color=hd.color.CIELabColor.from_rgb(*LAYER_COLOUR_RGB),
    )
    groups = [
        hd.pr.GraphicGroup(graphic_group_id=index + 1, label=t.identifier[:LONG_STRING_MAX])
        for index, t in enumerate(tracking)
    ]
    checked: set[str] = set()  # SOP classes whose annotation highdicom built (and checked)
    annotations = [
        _annotation(image, result, info, tracking, groups, layer, checked) for image in images
    ]
    referenced = _referenced_headers(images, study)
    presentation_state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=referenced,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=version.number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=radrouter_version(),
        device_serial_number=device_serial_number or UNSPECIFIED_DEVICE_SERIAL_NUMBER,
        content_label=CONTENT_LABEL,
        content_description=(
            f"AI-generated, not verified: {info.name} {info.version}"[:LONG_STRING_MAX]
        ),
        graphic_annotations=annotations,
        graphic_layers=[layer],
        graphic_groups=groups,
        institution_name=institution_name,
        voi_lut_transformations=_voi_transformations(images, result),
        presentation_lut_transformation=_presentation_lut(images),
        contributing_equipment=[algorithm_equipment(info, device_serial_number, made)],
        series_description=series_description(info),
        specific_character_set=UTF8,
        series_date=made.date(),
        series_time=made.time(),
    )
    presentation_state.PresentationCreationDate = made.strftime("%Y%m%d")
    presentation_state.PresentationCreationTime = made.strftime("%H%M%S.%f")
    _copy_body_part(presentation_state, referenced)
    LOGGER.debug(
        "GSPS of %s %s: %d finding(s) on %d image(s)",
        info.name,
        info.version,
        len(result.findings),
        len(images),
    )
    return presentation_state


def finding_label(finding: Finding, info: AlgorithmInfo) -> str:
    """``AI lung_nodule 0.2.0: 12 mm nodule, p=0.98 — not verified, not for clinical use``.

    The finding named by its size (long axis or diameter, else its first length) as the
    worklist reason does, or as "suspected" without one; its probability; that it is not
    verified (and not for clinical use where the algorithm is not).
    """
    what = sized_name(plain_name(finding.finding_type), finding.measurements)
    status = "not verified" if info.clinical_use else "not verified, not for clinical use"
    return f"AI {info.name} {info.version}: {what}, p={finding.probability:.2f} \u2014 {status}"


def choose_window(header: pydicom.Dataset, finding: Finding, frame_index: int = 0) -> Window:
    """The window to read ``finding`` in on one image (``header``, 0-based ``frame_index``).

    CT: by the finding's site, else its type, in the table ``_CT_WINDOW_OF_CODE`` (lung nodule
    or lung: lung window; fracture or a long bone: bone window; brain structures: brain
    window), else the mediastinal (soft-tissue) window. Other modalities (radiographs, MR,
    ...), whose values are not calibrated: the image's own first window (or its frame's Frame
    VOI LUT), else the whole range of its stored values.
    """
    if str(header.get("Modality", "")) == "CT":
        for code in (finding.finding_site, finding.finding_type):
            if code is not None:
                window = _CT_WINDOW_OF_CODE.get((code.scheme_designator, code.value))
                if window is not None:
                    return window
        return MEDIASTINAL_WINDOW
    return header_window(header, frame_index) or _stored_range_window(header, frame_index)


def mask_outlines(
    plane: npt.NDArray[np.bool_], max_points: int = MAX_OUTLINE_POINTS
) -> list[PointArray]:
    """The outer boundary of each 4-connected part of a 2-D mask, as closed polylines.

    Points are pixel corners in PIXEL units ((column, row); the pixel at row r, column c is
    the square [c, c + 1] x [r, r + 1]), the first point repeated last, so every point touches
    a pixel of the mask. Holes are not drawn. A boundary of more than ``max_points`` points is
    simplified (Douglas-Peucker, keeping a subset of its corners) until it fits.
    """
    if plane.ndim != 2:
        raise ValueError(f"mask_outlines: plane must be 2-D, got shape {plane.shape}")
    if max_points < 4:
        raise ValueError(f"mask_outlines: max_points must be >= 4, got {max_points}")
    rows, columns = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if rows.size == 0:
        return []
    # Label only the mask's bounding box: a nodule is a few dozen pixels of a 512 x 512 plane.
    top, left = int(rows[0]), int(columns[0])
    labels, _ = ndimage.label(plane[top : int(rows[-1]) + 1, left : int(columns[-1]) + 1])
    outlines: list[PointArray] = []
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        part = np.pad(labels[box] == number, 1)
        corners = _outer_boundary(ndimage.binary_fill_holes(part))
        offset = np.array([left + box[1].start - 1.0, top + box[0].start - 1.0])
        outlines.append(_close(_simplify(corners, max_points - 1) + offset))
    return outlines


# --- checks and inputs -----------------------------------------------------------------------


def _check_arguments(
    *,
    result: AlgorithmResult,
    source_images: Sequence[SourceImage],
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
) -> None:
    if not has_findings(result):
        raise ValueError(
            "build_presentation_state: result has no findings to draw "
            f"(verdict {result.verdict.value}); only a result with findings gets a GSPS"
        )
    check_object_identity(
        "build_presentation_state", series_instance_uid, sop_instance_uid, series_number
    )
    if not source_images:
        raise ValueError("build_presentation_state: source_images must name at least one image")
    single_frame = {image.frame_number is None for image in source_images}
    instances = {image.sop_instance_uid for image in source_images}
    if single_frame == {False, True} or (single_frame == {False} and len(instances) > 1):
        raise ValueError(
            "build_presentation_state: source_images must be single-frame instances or the "
            "frames of one multi-frame instance"
        )
    for index, finding in enumerate(result.findings):
        if not 0 <= finding.region.slice_index < len(source_images):
            raise ValueError(
                f"build_presentation_state: result.findings[{index}].region.slice_index "
                f"{finding.region.slice_index} does not index source_images "
                f"(0..{len(source_images) - 1})"
            )
        if finding.mask is not None:
            mask = np.asarray(finding.mask)
            if mask.ndim != 3 or mask.shape[0] != len(source_images):
                raise ValueError(
                    f"build_presentation_state: mask of result.findings[{index}] has shape "
                    f"{mask.shape}, expected ({len(source_images)}, rows, columns)"
                )
            if not mask.any():
                raise ValueError(
                    f"build_presentation_state: mask of result.findings[{index}] is empty"
                )


def _headers_by_uid(
    source_headers: Sequence[pydicom.Dataset], study: StudyContext
) -> dict[str, pydicom.Dataset]:
    by_uid: dict[str, pydicom.Dataset] = {}
    for header in source_headers:
        if str(header.StudyInstanceUID) != study.study_instance_uid:
            raise ValueError(
                "build_presentation_state: every source header must be of study "
                f"{study.study_instance_uid}, one is of {header.StudyInstanceUID}"
            )
        by_uid[str(header.SOPInstanceUID)] = header
    return by_uid


def _marked_images(
    result: AlgorithmResult,
    source_images: Sequence[SourceImage],
    headers: Mapping[str, pydicom.Dataset],
) -> list[_Image]:
    """The source images that carry a finding, in slice order, with each finding's outlines
    (clipped to the image)."""
    marks: dict[int, list[_Mark]] = {}
    for index, finding in enumerate(result.findings):
        for slice_index, outlines in _finding_outlines(finding):
            marks.setdefault(slice_index, []).append(_Mark(index, outlines))
    images: list[_Image] = []
    for slice_index in sorted(marks):
        source = source_images[slice_index]
        header = headers.get(source.sop_instance_uid)
        if header is None:
            raise ValueError(
                "build_presentation_state: source_headers lack the header of source instance "
                f"{source.sop_instance_uid}"
            )
        size = (int(header.Columns), int(header.Rows))
        for mark in marks[slice_index]:
            _check_mask_fits(result.findings[mark.finding_index], mark.finding_index, size)
        clipped = [
            _Mark(mark.finding_index, tuple(_clip(outline, size) for outline in mark.outlines))
            for mark in marks[slice_index]
        ]
        images.append(_Image(source, header, clipped))
    return images


def _finding_outlines(finding: Finding) -> list[tuple[int, tuple[PointArray, ...]]]:
    """(slice index, outlines) of each slice a finding is drawn on."""
    if finding.mask is None:
        region = np.asarray(finding.region.points, dtype=np.float64)
        return [(finding.region.slice_index, (region,))]
    mask = np.asarray(finding.mask, dtype=bool)
    return [(int(k), tuple(mask_outlines(mask[k]))) for k in np.flatnonzero(mask.any(axis=(1, 2)))]


def _check_mask_fits(finding: Finding, index: int, size: tuple[int, int]) -> None:
    """A finding's mask must have the rows and columns of the image it is drawn on."""
    columns, rows = size
    if finding.mask is not None and finding.mask.shape[1:] != (rows, columns):
        raise ValueError(
            f"build_presentation_state: mask of result.findings[{index}] has "
            f"{finding.mask.shape[1]}x{finding.mask.shape[2]} pixels per slice, its source "
            f"image has {rows}x{columns}"
        )


def _clip(outline: PointArray, size: tuple[int, int]) -> PointArray:
    """``outline`` with every point moved inside the image of ``size`` (columns, rows)."""
    columns, rows = size
    return np.column_stack(
        [np.clip(outline[:, 0], 0.0, columns), np.clip(outline[:, 1], 0.0, rows)]
    )


def _referenced_headers(images: Sequence[_Image], study: StudyContext) -> list[pydicom.Dataset]:
    """Each marked instance once; the first with the Type 2 patient and study attributes
    highdicom copies into the GSPS (from ``study`` where the header lacks them)."""
    headers: dict[str, pydicom.Dataset] = {}
    for image in images:
        headers.setdefault(image.source.sop_instance_uid, image.header)
    referenced = list(headers.values())
    referenced[0] = _with_patient_and_study(referenced[0], study)
    return referenced


def _with_patient_and_study(header: pydicom.Dataset, study: StudyContext) -> pydicom.Dataset:
    """A copy of ``header`` (new elements only) with every Type 2 patient and study attribute
    highdicom reads from it: the header's own, else the study's, else empty."""
    keywords = (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    )
    filled = pydicom.Dataset()
    for element in header:
        filled.add(element)
    for keyword in keywords:
        if keyword not in filled:
            setattr(filled, keyword, study.dataset.get(keyword))
    return filled


def _copy_body_part(
    presentation_state: pydicom.Dataset, referenced: Sequence[pydicom.Dataset]
) -> None:
    """Body Part Examined and Laterality (General Series) of the images drawn on.

    Laterality is Type 2C (a paired body part): the source series' own, else the Image
    Laterality all referenced images share; empty ("unknown") when the body part is not
    named either, since then nobody can tell whether it is paired.
    """
    first = referenced[0]
    if first.get("BodyPartExamined"):
        presentation_state.BodyPartExamined = first.BodyPartExamined
    image_sides = {str(header.get("ImageLaterality", "")) for header in referenced}
    laterality = str(first.get("Laterality", "")) or (
        image_sides.pop() if len(image_sides) == 1 else ""
    )
    if laterality in ("R", "L"):
        presentation_state.Laterality = laterality
    elif "BodyPartExamined" not in presentation_state:
        presentation_state.Laterality = None


# --- drawing ---------------------------------------------------------------------------------


def _annotation(
    image: _Image,
    result: AlgorithmResult,
    info: AlgorithmInfo,
    tracking: Sequence[Tracking],
    groups: Sequence[hd.pr.GraphicGroup],
    layer: hd.pr.GraphicLayer,
    checked: set[str],
) -> hd.pr.GraphicAnnotation:
    """The outlines and labels of every finding on one image.

    highdicom checks each annotation's image against the standard's module tables (about
    10 ms an image: a 300-slice CT with five nodules took a second for that alone). The
    check depends only on the SOP class, so highdicom builds the first annotation of each SOP
    class and the others are made as the same structure directly (``checked``: the SOP
    classes done); the coordinates are inside the image by construction (``_clip``)."""
    graphics: list[hd.pr.GraphicObject] = []
    texts: list[hd.pr.TextObject] = []
    for mark in image.marks:
        finding_tracking_ = tracking[mark.finding_index]
        group = groups[mark.finding_index]
        graphics.extend(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=outline,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                tracking_id=finding_tracking_.identifier,
                tracking_uid=finding_tracking_.uid,
                graphic_group=group,
            )
            for outline in mark.outlines
        )
        texts.append(
            _label(
                finding_label(result.findings[mark.finding_index], info),
                np.concatenate(mark.outlines),
                image.size,
                finding_tracking_,
                group,
            )
        )
    sop_class = str(image.header.SOPClassUID)
    if sop_class not in checked:
        checked.add(sop_class)
        return hd.pr.GraphicAnnotation(
            referenced_images=[image.header],
            graphic_layer=layer,
            referenced_frame_number=image.source.frame_number,
            graphic_objects=graphics,
            text_objects=texts,
        )
    return _annotation_as_checked(image, layer, graphics, texts)


def _annotation_as_checked(
    image: _Image,
    layer: hd.pr.GraphicLayer,
    graphics: Sequence[hd.pr.GraphicObject],
    texts: Sequence[hd.pr.TextObject],
) -> hd.pr.GraphicAnnotation:
    """A Graphic Annotation Sequence item as highdicom writes it (PS3.3 C.10.5), for an image
    of a SOP class highdicom already checked."""
    annotation = hd.pr.GraphicAnnotation.__new__(hd.pr.GraphicAnnotation)
    pydicom.Dataset.__init__(annotation)
    annotation.GraphicLayer = layer.GraphicLayer
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID = image.header.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.header.SOPInstanceUID
    if image.source.frame_number is not None:
        reference.ReferencedFrameNumber = image.source.frame_number
    annotation.ReferencedImageSequence = pydicom.Sequence([reference])  # type: ignore[assignment]
    if graphics:
        annotation.GraphicObjectSequence = list(graphics)
    if texts:
        annotation.TextObjectSequence = list(texts)
    return annotation


def _label(
    text: str,
    points: PointArray,
    size: tuple[int, int],
    tracking: Tracking,
    group: hd.pr.GraphicGroup,
) -> hd.pr.TextObject:
    """``text`` in a box above the outline (below it when there is no room above), as wide
    as half the image, anchored (visibly) to the top centre of the outline."""
    columns, rows = size
    left, top = float(points[:, 0].min()), float(points[:, 1].min())
    right, bottom = float(points[:, 0].max()), float(points[:, 1].max())
    height = min(float(rows), max(1.0, rows / _LABEL_ROWS_PER_IMAGE))
    width = min(float(columns), max(1.0, columns / 2.0))
    box_top = top - _LABEL_GAP_PX - height
    if box_top < 0.0:
        box_top = min(bottom + _LABEL_GAP_PX, rows - height)
    box_left = min(max(0.0, left), columns - width)
    return hd.pr.TextObject(
        text_value=text,
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=(box_left, box_top, box_left + width, box_top + height),
        anchor_point=((left + right) / 2.0, top),
        text_justification=hd.pr.TextJustificationValues.LEFT,
        anchor_point_visible=True,
        tracking_id=tracking.identifier,
        tracking_uid=tracking.uid,
        graphic_group=group,
    )


# --- display ---------------------------------------------------------------------------------


def _voi_transformations(
    images: Sequence[_Image], result: AlgorithmResult
) -> list[hd.pr.SoftcopyVOILUTTransformation]:
    """One Softcopy VOI LUT item per window; each names its images when windows differ.

    An image with several findings is shown in the window of its most probable finding.
    """
    by_window: dict[Window, list[_Image]] = {}
    for image in images:
        most_probable = max(
            (result.findings[mark.finding_index] for mark in image.marks),
            key=lambda finding: finding.probability,
        )
        window = choose_window(image.header, most_probable, image.frame_index)
        by_window.setdefault(window, []).append(image)
    # One-item lists: highdicom 0.28.2 writes a single explanation string letter by letter.
    return [
        hd.pr.SoftcopyVOILUTTransformation(
            window_center=[window.center],
            window_width=[window.width],
            window_explanation=[window.explanation],
            referenced_images=None if len(by_window) == 1 else _image_references(shown),
        )
        for window, shown in by_window.items()
    ]


def _image_references(images: Sequence[_Image]) -> hd.ReferencedImageSequence:
    """The images (or frames of one multi-frame image) a VOI item applies to."""
    frames = [image.source.frame_number for image in images]
    if all(frame is None for frame in frames):
        return hd.ReferencedImageSequence(referenced_images=[image.header for image in images])
    return hd.ReferencedImageSequence(
        referenced_images=[images[0].header],
        referenced_frame_number=[int(frame or 0) for frame in frames],
    )


def _presentation_lut(images: Sequence[_Image]) -> hd.PresentationLUTTransformation:
    """IDENTITY for MONOCHROME2 images, INVERSE for MONOCHROME1 ones (never both in one)."""
    interpretations = {
        str(image.header.get("PhotometricInterpretation", "MONOCHROME2")) for image in images
    }
    if len(interpretations) > 1:
        raise ValueError(
            "build_presentation_state: the marked images mix photometric interpretations "
            f"{sorted(interpretations)}; one presentation state cannot show them all"
        )
    shape = (
        hd.PresentationLUTShapeValues.INVERSE
        if interpretations == {"MONOCHROME1"}
        else hd.PresentationLUTShapeValues.IDENTITY
    )
    return hd.PresentationLUTTransformation(presentation_lut_shape=shape)


def _stored_range_window(header: pydicom.Dataset, frame_index: int) -> Window:
    """Every value the image can store, through its rescale: shows anything, just flat."""
    bits = int(header.get("BitsStored", 16))
    if int(header.get("PixelRepresentation", 0)) == 1:
        low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1.0
    else:
        low, high = 0.0, 2.0**bits - 1.0
    item = functional_group(header, frame_index, "PixelValueTransformationSequence") or header
    slope = float(item.get("RescaleSlope", 1.0))
    intercept = float(item.get("RescaleIntercept", 0.0))
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    return Window((low + high) / 2.0, max(high - low, 1.0), "FULL RANGE")


# --- outlines --------------------------------------------------------------------------------

_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))
"""Directions of boundary edges, clockwise on the screen (rows grow downwards): right, down,
left, up. Turning right from direction d is direction d + 1."""


def _outer_boundary(part: npt.NDArray[np.bool_]) -> PointArray:
    """The corners of the boundary of a hole-free, 4-connected part (padded by one empty
    pixel), clockwise on the screen, each corner once, straight runs merged."""
    edges: dict[tuple[int, int], list[int]] = {}
    neighbours = (
        (np.roll(part, 1, axis=0), 0, (0, 0)),  # pixel above empty: top edge, rightwards
        (np.roll(part, -1, axis=1), 1, (1, 0)),  # right empty: right edge, downwards
        (np.roll(part, -1, axis=0), 2, (1, 1)),  # below empty: bottom edge, leftwards
        (np.roll(part, 1, axis=1), 3, (0, 1)),  # left empty: left edge, upwards
    )
    for neighbour, direction, (dx, dy) in neighbours:
        rows, columns = np.nonzero(part & ~neighbour)
        for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
            edges.setdefault((column + dx, row + dy), []).append(direction)
    start = min(edges, key=lambda corner: (corner[1], corner[0]))
    corner, direction = start, edges[start][0]
    corners: list[tuple[int, int]] = []
    while True:
        corners.append(corner)
        dx, dy = _STEPS[direction]
        corner = (corner[0] + dx, corner[1] + dy)
        if corner == start:
            break
        outgoing = edges[corner]
        right_turn = (direction + 1) % 4
        direction = right_turn if right_turn in outgoing else outgoing[0]
    return _corners_only(np.array(corners, dtype=np.float64))


def _corners_only(points: PointArray) -> PointArray:
    """A closed loop (not repeated at its end) without the points inside straight runs."""
    before = np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0)
    cross = (points[:, 0] - before[:, 0]) * (after[:, 1] - points[:, 1]) - (
        points[:, 1] - before[:, 1]
    ) * (after[:, 0] - points[:, 0])
    return np.asarray(points[cross != 0], dtype=np.float64)


def _simplify(loop: PointArray, max_points: int) -> PointArray:
    """A closed loop (not repeated at its end) cut to ``max_points`` of its own points."""
    tolerance = 0.5
    simplified = loop
    while len(simplified) > max_points:
        simplified = _douglas_peucker_loop(loop, tolerance)
        tolerance *= 1.5
    return simplified


def _douglas_peucker_loop(loop: PointArray, tolerance: float) -> PointArray:
    """Douglas-Peucker on a closed loop, split at its first point and the point farthest
    from it."""
    far = int(np.argmax(np.linalg.norm(loop - loop[0], axis=1)))
    path = np.vstack([loop, loop[:1]])
    keep = np.zeros(len(path), dtype=bool)
    keep[[0, far, len(path) - 1]] = True
    stack = [(0, far), (far, len(path) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        inner = path[first + 1 : last]
        distance = _distance_to_segment(inner, path[first], path[last])
        worst = int(np.argmax(distance))
        if distance[worst] > tolerance:
            middle = first + 1 + worst
            keep[middle] = True
            stack.extend([(first, middle), (middle, last)])
    return path[:-1][keep[:-1]]


def _distance_to_segment(
    points: PointArray, start: npt.NDArray[np.float64], end: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    segment = end - start
    length_2 = float(segment @ segment)
    if length_2 == 0.0:
        return np.asarray(np.linalg.norm(points - start, axis=1), dtype=np.float64)
    t = np.clip((points - start) @ segment / length_2, 0.0, 1.0)
    nearest = start + t[:, None] * segment
    return np.asarray(np.linalg.norm(points - nearest, axis=1), dtype=np.float64)


def _close(loop: PointArray) -> PointArray:
    return np.vstack([loop, loop[:1]])
