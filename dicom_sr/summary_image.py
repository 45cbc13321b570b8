"""Secondary Capture summary of one result: the key image with its outlines, and the result in words.

A viewer that shows nothing but images (no SR, SEG or presentation-state support) still shows
this: a banner saying the picture is AI-generated and not verified (not for clinical use where
that applies), the algorithm and version, the verdict, one line per finding, and below them the
key image with the AI outlines burned in. A negative or not-assessed result is a single text
page saying so, and why. The object says what it is too: Image Type DERIVED\\SECONDARY, Burned
In Annotation YES, Conversion Type WSD, and the Series Description the SR, SEG and KOS of the
result carry (``header.series_description``, starting "AI"), in its own series.

The key image is drawn by the caller (``rendered_key_image``): the worklist page's renderer
(``render_key_image`` in ``router/worklist_page/thumbnails.py``, windowing and outline colours
included) lives in the router, which ``dicom_sr`` does not import.
"""

from __future__ import annotations

import datetime
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.sr.coding import Code as DicomCode
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from algorithms.contract import AlgorithmInfo, AlgorithmResult, Finding, Verdict
from algorithms.finding_words import (
    KeyImage,
    describe_location,
    measurement_words,
    plain_name,
    size_measurement,
    sized_name,
)
from dicom_sr import codes
from dicom_sr.context import ResultVersion, StudyContext
from dicom_sr.header import (
    MANUFACTURER,
    UTF8,
    algorithm_equipment,
    date_time_arguments,
    document_statements,
    radrouter_version,
    result_datetime,
    series_description,
)
from dicom_sr.identity import check_object_identity
from dicom_sr.tracking import tracking_identifiers

LOGGER = logging.getLogger(__name__)

SUMMARY_WIDTH = 512
"""Width in pixels of every summary image."""
KEY_IMAGE_SIZE = 512
"""The key image is fitted into KEY_IMAGE_SIZE x KEY_IMAGE_SIZE; render it at this size (the
worklist renderer's ``size``) and its outline colours reach the summary unresampled."""
TEXT_PAGE_MIN_HEIGHT = 512
"""A summary without a key image (negative, not assessed) is at least this tall."""
MAX_FINDING_LINES = 12
"""Findings listed one per line; more are summed up in one line (the SR lists them all)."""

BANNER_BACKGROUND = (150, 0, 0)
"""Dark red behind the AI statement: not a grey and not an outline colour."""
BANNER_TEXT = (255, 255, 255)
DETAILS_BACKGROUND = (40, 40, 40)
DETAILS_TEXT = (235, 235, 235)
KEY_IMAGE_BACKGROUND = (0, 0, 0)

IMAGE_TYPE = ("DERIVED", "SECONDARY")
CONVERSION_TYPE = "WSD"
"""SC Equipment Conversion Type: made on a workstation (PS3.3 C.8.6.1)."""
DERIVATION_DESCRIPTION = (
    "AI result summary: the algorithm, its verdict and findings as burned-in text above the "
    "key image with the AI outlines burned in; not an original image"
)
SOURCE_IMAGE_PURPOSE = DicomCode("121322", "DCM", "Source image for image processing operation")
"""Purpose of Reference of the key image (CID 7202 Source Image Purposes of Reference)."""

_MARGIN = 10
_LINE_GAP = 4
_HEADLINE_POINTS, _TEXT_POINTS = 16, 14
_FONT_DIRECTORY = Path("/usr/share/fonts/truetype/dejavu")
_REGULAR_FONT, _BOLD_FONT = "DejaVuSans.ttf", "DejaVuSans-Bold.ttf"
_ORIENTATION_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
"""Patient Orientation letters of the +/- x, y and z patient axes (LPS)."""
_SIGNIFICANT_COSINE = 1e-3
_IMAGE_COMMENTS_MAX = 10240
"""Image Comments is LT: at most 10240 characters."""

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RgbImage = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class SummaryText:
    """What the summary says: the banner (AI statement) and the details below it."""

    banner: tuple[str, ...]
    details: tuple[str, ...]

    def as_comment(self) -> str:
        """All of it as plain text, one statement per line (the SC's Image Comments)."""
        return "\n".join((*self.banner, *self.details))[:_IMAGE_COMMENTS_MAX]


@dataclass(frozen=True)
class _Fonts:
    headline: Font
    text: Font


def banner_headline(info: AlgorithmInfo) -> str:
    """The first line of every summary: AI-generated, not verified (not for clinical use)."""
    headline = "AI-GENERATED, NOT VERIFIED"
    return headline if info.clinical_use else f"{headline}, NOT FOR CLINICAL USE"


def summary_text(
    result: AlgorithmResult,
    info: AlgorithmInfo,
    *,
    key_image: KeyImage | None = None,
    finding_images: Sequence[KeyImage | None] = (),
) -> SummaryText:
    """The words of the summary of ``result``.

    Banner: ``banner_headline`` and the document statements the SR and KOS carry
    (``header.document_statements``). Details: the algorithm (display name, name and version);
    "No finding" or "Not assessed: <reason>" for a negative or not-assessed result; the target
    and the verdict (CID 240 meaning, with the study-level probability); the result's summary
    or reason; study-level measurements; one line per finding (tracking identifier, type,
    location as the worklist words it, measurements, probability, and the series and image of
    its slice from ``finding_images``, one per finding in finding order, when given); and where
    the key image below comes from (``key_image``), when there is one.
    """
    if finding_images and len(finding_images) != len(result.findings):
        raise ValueError(
            f"summary_text: {len(finding_images)} finding_images for {len(result.findings)} "
            "finding(s); give one per finding, or none"
        )
    details = [f"AI algorithm {info.display_name} ({info.name} {info.version})"]
    if result.verdict is Verdict.ABSENT:
        details.append("No finding")
    elif result.verdict is Verdict.NOT_ASSESSED:
        details.append(f"Not assessed: {_one_line(result.reason)}")
    details.append(_verdict_words(result, info))
    if result.reason and result.verdict is not Verdict.NOT_ASSESSED:
        details.append(_one_line(result.reason))
    if result.measurements:
        details.append("Study: " + ", ".join(measurement_words(m) for m in result.measurements))
    details.extend(_finding_lines(result, finding_images))
    if key_image is not None:
        where = key_image.words()
        details.append("Key image below, AI outlines burned in" + (f": {where}" if where else ""))
    return SummaryText(
        banner=(banner_headline(info), *document_statements(info)), details=tuple(details)
    )


def build_summary_image(
    *,
    result: AlgorithmResult,
    info: AlgorithmInfo,
    study: StudyContext,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    version: ResultVersion,
    key_image: pydicom.Dataset | None = None,
    key_frame_index: int = 0,
    rendered_key_image: RgbImage | None = None,
    finding_images: Sequence[KeyImage | None] = (),
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    content_datetime: datetime.datetime | None = None,
) -> hd.sc.SCImage:
    """The summary of ``result`` as an RGB Secondary Capture Image in the source study.

    ``key_image`` is the header (pixel data not needed) of the source instance the key image
    comes from, ``key_frame_index`` its 0-based frame, and ``rendered_key_image`` that frame
    as the viewer should see it, (rows, columns, 3) uint8 RGB with the findings' outlines
    burned in: the worklist page's ``render_key_image(key_image, frame_number=..., regions=...,
    masks=..., size=KEY_IMAGE_SIZE)``, decoded. Give both for a PRESENT result with findings;
    without them the summary is a text page, as for a negative or not-assessed result (which
    have no key image). ``finding_images``:
    series and image number of each finding's slice, in finding order, as the worklist gets
    them (empty when unknown).

    Layout, SUMMARY_WIDTH pixels wide: the banner on dark red; the details (``summary_text``)
    on dark grey; the key image fitted into KEY_IMAGE_SIZE x KEY_IMAGE_SIZE, centred, at the
    bottom. Without a key image the page is at least TEXT_PAGE_MIN_HEIGHT tall. The text is
    also the Image Comments.

    Header: Patient and General Study from ``study``; Modality OT; Series Description as the
    SR's (``header.series_description``); Image Type DERIVED\\SECONDARY, Burned In Annotation
    YES, Conversion Type WSD, a Derivation Description; the key image in the Source Image
    Sequence (with its frame for a multi-frame image) and its Patient Orientation (derived
    from its Image Orientation (Patient) where it has one); no Pixel Spacing (the summary is
    not for measuring); Contributing Equipment naming the algorithm; Instance Number = result
    version; Series, Content and Secondary Capture Date/Time ``content_datetime``, when the
    result was made (default now; ``header.result_datetime``).
    """
    _check_arguments(
        result=result,
        study=study,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        key_image=key_image,
        key_frame_index=key_frame_index,
        rendered_key_image=rendered_key_image,
    )
    made = result_datetime(content_datetime)
    text = summary_text(
        result,
        info,
        key_image=None if key_image is None else _key_image_words(key_image, key_frame_index),
        finding_images=finding_images,
    )
    pixels = render_summary(text, rendered_key_image)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=study.dataset,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        # highdicom asks a PATIENT image for single-letter orientations; the real Patient
        # Orientation (Type 2C, oblique values or empty) is set below.
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "P"),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=version.number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=radrouter_version(),
        device_serial_number=device_serial_number,
        institution_name=institution_name,
        series_description=series_description(info),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[algorithm_equipment(info, device_serial_number, made)],
        specific_character_set=UTF8,
        **date_time_arguments(made),
    )
    _mark_derived(image, made, text)
    image.PatientOrientation = (
        [] if key_image is None else _patient_orientation(key_image, key_frame_index)
    )
    _copy_body_part(study.dataset, key_image, image)
    if key_image is not None:
        image.SourceImageSequence = [_source_image_item(key_image, key_frame_index)]
        _copy_lossy_compression(key_image, image)
    LOGGER.debug(
        "summary image of %s %s: %s, %dx%d",
        info.name,
        info.version,
        result.verdict.value,
        image.Columns,
        image.Rows,
    )
    return image


def render_summary(text: SummaryText, rendered_key_image: RgbImage | None = None) -> RgbImage:
    """The summary's pixels, (rows, SUMMARY_WIDTH, 3) uint8 RGB: banner, details, key image."""
    fonts = _fonts()
    banner = _text_block(
        [(text.banner[0], fonts.headline), *((line, fonts.text) for line in text.banner[1:])],
        background=BANNER_BACKGROUND,
        colour=BANNER_TEXT,
    )
    details = _text_block(
        [(line, fonts.text) for line in text.details],
        background=DETAILS_BACKGROUND,
        colour=DETAILS_TEXT,
    )
    parts = [banner, details]
    if rendered_key_image is not None:
        parts.append(_fitted_key_image(rendered_key_image))
    height = sum(part.height for part in parts)
    if rendered_key_image is None:
        height = max(height, TEXT_PAGE_MIN_HEIGHT)
    page = Image.new("RGB", (SUMMARY_WIDTH, height), DETAILS_BACKGROUND)
    top = 0
    for part in parts:
        page.paste(part, (0, top))
        top += part.height
    return np.asarray(page, dtype=np.uint8)


def key_image_box(summary_rows: int, rendered_shape: tuple[int, ...]) -> tuple[int, int, float]:
    """Where a rendered key image of ``rendered_shape`` lies in a summary of ``summary_rows``:
    (top row, left column, scale from rendered to summary pixels)."""
    rows, columns = rendered_shape[0], rendered_shape[1]
    scale = min(KEY_IMAGE_SIZE / columns, KEY_IMAGE_SIZE / rows)
    width, height = _fitted_size(columns, rows, scale)
    return summary_rows - height, (SUMMARY_WIDTH - width) // 2, scale


# --- arguments -------------------------------------------------------------------------------


def _check_arguments(
    *,
    result: AlgorithmResult,
    study: StudyContext,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    key_image: pydicom.Dataset | None,
    key_frame_index: int,
    rendered_key_image: RgbImage | None,
) -> None:
    check_object_identity(
        "build_summary_image", series_instance_uid, sop_instance_uid, series_number
    )
    if (key_image is None) != (rendered_key_image is None):
        raise ValueError(
            "build_summary_image: give key_image and rendered_key_image together, or neither"
        )
    if key_image is None or rendered_key_image is None:
        return
    if result.verdict is not Verdict.PRESENT:
        raise ValueError(
            f"build_summary_image: a {result.verdict.value} result has no key image; "
            "its summary is a text page"
        )
    if str(key_image.get("StudyInstanceUID", "")) != study.study_instance_uid:
        raise ValueError(
            f"build_summary_image: key_image must be of study {study.study_instance_uid}, "
            f"it is of {key_image.get('StudyInstanceUID')}"
        )
    frames = int(key_image.get("NumberOfFrames", 1) or 1)
    if not 0 <= key_frame_index < frames:
        raise ValueError(
            f"build_summary_image: key_frame_index must be in [0, {frames - 1}], "
            f"got {key_frame_index}"
        )
    _check_rendering(key_image, rendered_key_image)


def _check_rendering(key_image: pydicom.Dataset, rendered: RgbImage) -> None:
    """``rendered`` is RGB uint8 with the key image's aspect ratio (to a pixel)."""
    if rendered.dtype != np.uint8 or rendered.ndim != 3 or rendered.shape[2] != 3:
        raise ValueError(
            "build_summary_image: rendered_key_image must be (rows, columns, 3) uint8 RGB, "
            f"got {rendered.shape} {rendered.dtype}"
        )
    rows, columns = int(key_image.Rows), int(key_image.Columns)
    height, width = rendered.shape[:2]
    if abs(width - height * columns / rows) > 1.0 and abs(height - width * rows / columns) > 1.0:
        raise ValueError(
            f"build_summary_image: rendered_key_image is {width}x{height}, not the shape of "
            f"key_image ({columns}x{rows})"
        )


# --- words -----------------------------------------------------------------------------------


def _verdict_words(result: AlgorithmResult, info: AlgorithmInfo) -> str:
    """``Nodule: Present (AI probability 97%)``: the target and the CID 240 verdict."""
    words = f"{info.target.meaning}: {codes.VERDICT_VALUES[result.verdict].meaning}"
    if result.probability is not None:
        words += f" (AI probability {_percent(result.probability)})"
    return words


def _finding_lines(result: AlgorithmResult, finding_images: Sequence[KeyImage | None]) -> list[str]:
    """One line per finding, at most MAX_FINDING_LINES (the last then counts the rest)."""
    images = list(finding_images) or [None] * len(result.findings)
    lines = [
        f"{identifier}: {_finding_words(finding, image)}"
        for identifier, finding, image in zip(
            tracking_identifiers(result), result.findings, images, strict=True
        )
    ]
    if len(lines) <= MAX_FINDING_LINES:
        return lines
    rest = len(lines) - (MAX_FINDING_LINES - 1)
    return [*lines[: MAX_FINDING_LINES - 1], f"+{rest} more findings (listed in the SR)"]


def _finding_words(finding: Finding, image: KeyImage | None) -> str:
    """``6.4 mm nodule, right lung, volume 102.4 mm3, probability 92%, series 2 image 3``: as
    the worklist reason names a finding (size first), then its other measurements."""
    image = image or KeyImage()
    size = size_measurement(finding.measurements)
    parts = [
        sized_name(plain_name(finding.finding_type), finding.measurements),
        describe_location(finding.finding_site, finding.qualifiers, image.laterality),
        *(measurement_words(m) for m in finding.measurements if m is not size),
        f"probability {_percent(finding.probability)}",
        image.words(),
    ]
    return ", ".join(part for part in parts if part)


def _key_image_words(key_image: pydicom.Dataset, key_frame_index: int) -> KeyImage:
    """The key image's series, image and (multi-frame) frame number, as the worklist words them."""
    series, instance = key_image.get("SeriesNumber"), key_image.get("InstanceNumber")
    multi_frame = int(key_image.get("NumberOfFrames", 1) or 1) > 1
    return KeyImage(
        series_number=None if series in (None, "") else int(series),
        instance_number=None if instance in (None, "") or int(instance) < 1 else int(instance),
        frame_number=key_frame_index + 1 if multi_frame else None,
    )


def _percent(probability: float) -> str:
    return f"{round(probability * codes.PERCENT_PER_PROBABILITY)}%"


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- pixels ----------------------------------------------------------------------------------


@functools.cache
def _fonts() -> _Fonts:
    """DejaVu Sans where installed, else Pillow's built-in font (the same on every machine)."""
    return _Fonts(
        headline=_font(_BOLD_FONT, _HEADLINE_POINTS), text=_font(_REGULAR_FONT, _TEXT_POINTS)
    )


def _font(name: str, size: int) -> Font:
    path = _FONT_DIRECTORY / name
    if path.is_file():
        try:
            return ImageFont.truetype(str(path), size)
        except OSError:
            LOGGER.warning("cannot load font %s; using Pillow's built-in font", path)
    return ImageFont.load_default(size=size)


def _text_block(
    lines: Sequence[tuple[str, Font]],
    *,
    background: tuple[int, int, int],
    colour: tuple[int, int, int],
) -> Image.Image:
    """``lines``, each wrapped to the page width, on ``background``, SUMMARY_WIDTH wide."""
    room = SUMMARY_WIDTH - 2 * _MARGIN
    wrapped = [(piece, font) for text, font in lines for piece in _wrap(text, font, room)]
    height = 2 * _MARGIN + sum(_line_height(font) for _, font in wrapped)
    block = Image.new("RGB", (SUMMARY_WIDTH, height), background)
    draw = ImageDraw.Draw(block)
    top = _MARGIN
    for piece, font in wrapped:
        draw.text((_MARGIN, top), piece, fill=colour, font=font)
        top += _line_height(font)
    return block


def _wrap(text: str, font: Font, room: int) -> list[str]:
    """``text`` in lines no wider than ``room`` pixels, broken between words (inside a word
    only when the word alone is too wide)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= room:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = word
        while font.getlength(line) > room and len(line) > 1:
            cut = len(line) - 1
            while cut > 1 and font.getlength(line[:cut]) > room:
                cut -= 1
            lines.append(line[:cut])
            line = line[cut:]
    if line:
        lines.append(line)
    return lines


def _line_height(font: Font) -> int:
    return int(font.getbbox("Ag")[3]) + _LINE_GAP


def _fitted_size(columns: int, rows: int, scale: float) -> tuple[int, int]:
    return max(1, round(columns * scale)), max(1, round(rows * scale))


def _fitted_key_image(rendered: RgbImage) -> Image.Image:
    """The rendered key image fitted into KEY_IMAGE_SIZE x KEY_IMAGE_SIZE, centred on a black
    strip SUMMARY_WIDTH wide (unresampled when it already fits exactly)."""
    picture = Image.fromarray(np.ascontiguousarray(rendered))
    scale = min(KEY_IMAGE_SIZE / picture.width, KEY_IMAGE_SIZE / picture.height)
    size = _fitted_size(picture.width, picture.height, scale)
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    strip = Image.new("RGB", (SUMMARY_WIDTH, picture.height), KEY_IMAGE_BACKGROUND)
    strip.paste(picture, ((SUMMARY_WIDTH - picture.width) // 2, 0))
    return strip


# --- header ----------------------------------------------------------------------------------


def _mark_derived(image: hd.sc.SCImage, made: datetime.datetime, text: SummaryText) -> None:
    """What tells every viewer this is a derived picture with burned-in text, not an original."""
    image.ImageType = list(IMAGE_TYPE)
    image.BurnedInAnnotation = "YES"
    image.ConversionType = CONVERSION_TYPE
    image.DateOfSecondaryCapture = DA(made.date())
    image.TimeOfSecondaryCapture = TM(made.time())
    image.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    image.SecondaryCaptureDeviceManufacturerModelName = MANUFACTURER
    image.SecondaryCaptureDeviceSoftwareVersions = radrouter_version()
    image.DerivationDescription = DERIVATION_DESCRIPTION
    image.ImageComments = text.as_comment()


def _source_image_item(key_image: pydicom.Dataset, key_frame_index: int) -> pydicom.Dataset:
    """Source Image Sequence item of the key image (its frame, 1-based, when multi-frame)."""
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = key_image.SOPClassUID
    item.ReferencedSOPInstanceUID = key_image.SOPInstanceUID
    if int(key_image.get("NumberOfFrames", 1) or 1) > 1:
        item.ReferencedFrameNumber = key_frame_index + 1
    item.PurposeOfReferenceCodeSequence = [codes.to_coded_concept(SOURCE_IMAGE_PURPOSE)]
    return item


def _patient_orientation(key_image: pydicom.Dataset, frame_index: int) -> list[str]:
    """Patient Orientation of the key frame's rows and columns: from its Image Orientation
    (Patient) (an enhanced image's per-frame, else shared, Plane Orientation), most
    significant letter first (``L``, ``P``; oblique ``LP``), else the image's own Patient
    Orientation, else empty (unknown)."""
    cosines = key_image.get("ImageOrientationPatient") or _frame_orientation(key_image, frame_index)
    if cosines is not None and len(cosines) == 6:
        values = [float(v) for v in cosines]
        return [_direction_letters(values[:3]), _direction_letters(values[3:])]
    own = key_image.get("PatientOrientation")
    return [str(v) for v in own] if own and len(own) == 2 else []


def _frame_orientation(key_image: pydicom.Dataset, frame_index: int) -> Sequence[float] | None:
    """Image Orientation (Patient) of one frame of an enhanced multi-frame image, or None."""
    per_frame = key_image.get("PerFrameFunctionalGroupsSequence")
    shared = key_image.get("SharedFunctionalGroupsSequence")
    groups = [
        *([per_frame[frame_index]] if per_frame and frame_index < len(per_frame) else []),
        *([shared[0]] if shared else []),
    ]
    for group in groups:
        orientation = group.get("PlaneOrientationSequence")
        if orientation and "ImageOrientationPatient" in orientation[0]:
            return [float(v) for v in orientation[0].ImageOrientationPatient]
    return None


def _direction_letters(direction: Sequence[float]) -> str:
    axes = sorted(range(3), key=lambda axis: -abs(direction[axis]))
    return "".join(
        _ORIENTATION_LETTERS[axis][0 if direction[axis] > 0 else 1]
        for axis in axes
        if abs(direction[axis]) > _SIGNIFICANT_COSINE
    )


def _copy_body_part(
    source: pydicom.Dataset, key_image: pydicom.Dataset | None, image: hd.sc.SCImage
) -> None:
    """Body Part Examined and Laterality of the source series, Image Laterality of the key image.

    General Series Laterality is Type 2C: needed for a paired body part unless Image Laterality
    is given. When the source names neither body part nor laterality, it is unknown: empty.
    """
    for keyword in ("BodyPartExamined", "Laterality"):
        if source.get(keyword):
            setattr(image, keyword, source[keyword].value)
    if key_image is not None and key_image.get("ImageLaterality"):
        image.ImageLaterality = key_image.ImageLaterality
    if not any(
        keyword in image for keyword in ("BodyPartExamined", "Laterality", "ImageLaterality")
    ):
        image.Laterality = ""  # Type 2: empty is "unknown"


def _copy_lossy_compression(key_image: pydicom.Dataset, image: hd.sc.SCImage) -> None:
    """A picture of a lossy-compressed image says so (General Image, Type 1C)."""
    if key_image.get("LossyImageCompression") != "01":
        return
    image.LossyImageCompression = "01"
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in key_image:
            setattr(image, keyword, key_image[keyword].value)
