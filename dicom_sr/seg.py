"""DICOM Segmentation (SEG) of a result's finding masks: one segment per finding with a mask."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from algorithms.contract import AlgorithmInfo, AlgorithmResult, Finding
from dicom_sr import codes
from dicom_sr.context import InstanceReference, ResultVersion, SourceImage, StudyContext
from dicom_sr.header import (
    LONG_STRING_MAX,
    MANUFACTURER,
    UTF8,
    algorithm_equipment,
    date_time_arguments,
    radrouter_version,
    result_datetime,
    series_description,
)
from dicom_sr.highdicom_speed import cache_multiframe_lookup
from dicom_sr.identity import check_object_identity
from dicom_sr.tracking import Tracking, finding_tracking

LOGGER = logging.getLogger(__name__)
cache_multiframe_lookup()  # highdicom asks it per source image: see dicom_sr.highdicom_speed

CONTENT_LABEL = "AI_FINDINGS"
"""Content Label (CS) of every SEG radrouter writes."""
UNSPECIFIED_DEVICE_SERIAL_NUMBER = "UNSPECIFIED"
"""Device Serial Number (Type 1 in a SEG) when the deployment names none."""

COMPRESSED_TRANSFER_SYNTAXES = frozenset({RLELossless, JPEG2000Lossless, JPEGLSLossless})
"""Lossless syntaxes a FRACTIONAL SEG may be written in (highdicom encodes BINARY uncompressed)."""

_TYPE_2_KEYWORDS = (
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

FloatVolume = npt.NDArray[np.floating]


@dataclass(frozen=True)
class _Segment:
    """One finding with a mask, as segment ``number`` of the SEG."""

    number: int
    finding: Finding
    tracking: Tracking
    mask: npt.NDArray[np.bool_]
    slices: npt.NDArray[np.intp]
    """The volume slices where the mask has voxels, ascending."""


@dataclass(frozen=True)
class _SourceLayout:
    """The source instances and where each volume slice lies in them.

    ``headers`` holds one header per slice (single-frame instances, slice order) or the one
    header of a multi-frame instance; ``frame_of_slice`` gives, for a multi-frame source, the
    0-based frame of each slice.
    """

    headers: list[pydicom.Dataset]
    frame_of_slice: npt.NDArray[np.intp] | None
    has_patient_coordinates: bool

    @property
    def frames_are_the_slices(self) -> bool:
        """Whether every frame of the multi-frame source is exactly one slice."""
        if self.frame_of_slice is None:
            return False
        frames = int(self.headers[0].get("NumberOfFrames", 1))
        return sorted(self.frame_of_slice.tolist()) == list(range(frames))


@dataclass(frozen=True)
class _Frames:
    """What highdicom encodes: ``slices`` of the volume (in array order) on ``source_headers``,
    with plane positions when the array covers only some frames of a multi-frame source."""

    slices: npt.NDArray[np.intp]
    source_headers: list[pydicom.Dataset]
    plane_positions: list[hd.PlanePositionSequence] | None


def has_masks(result: AlgorithmResult) -> bool:
    """Whether any finding of ``result`` carries a mask (and so needs a SEG)."""
    return any(finding.mask is not None for finding in result.findings)


def build_segmentation(
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
    probability_maps: Mapping[str, FloatVolume] | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    content_datetime: datetime.datetime | None = None,
) -> hd.seg.Segmentation:
    """The masks of ``result`` as one Segmentation in the source study, its own series.

    One segment per finding with a mask, in finding order: label = tracking identifier,
    Segmented Property Category "Morphologically Abnormal Structure", Type = the finding type,
    Anatomic Region = the finding site, algorithm AUTOMATIC with name, version and family
    "Artificial Intelligence", and the finding's tracking ID and UID (the SR uses the same, so
    a viewer links SR group and segment). BINARY, or FRACTIONAL (PROBABILITY, 8 bits) when
    ``probability_maps`` (tracking identifier -> float volume in [0, 1], the mask's shape) is
    given; a masked finding without a map is written with its mask as probability 0 or 1.

    ``source_images`` are the volume's slices in order (the masks' first axis);
    ``source_headers`` the headers (pixel data not needed) of their instances: one per
    single-frame instance, or the one multi-frame instance. Frames reference the source image
    (or frame) they lie on; only frames where a segment has voxels are stored. Instance Number
    is the result version; a later version names the SEG it replaces (docs/results.md).
    Series Date/Time and Content Date/Time are ``content_datetime``, when the result was made
    (default now; ``header.result_datetime``).
    """
    made = result_datetime(content_datetime)
    tracking = finding_tracking(result, study.study_instance_uid, info.name, tracking_uids)
    segments = _segments(result, tracking)
    layout = _source_layout(source_images, source_headers, study)
    _check_arguments(
        segments=segments,
        layout=layout,
        n_slices=len(source_images),
        probability_maps=probability_maps,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        version=version,
        transfer_syntax_uid=transfer_syntax_uid,
    )
    fractional = probability_maps is not None
    label_map_possible = not fractional and not _overlap(segments)
    frames = _frames(segments, layout, label_map_possible)
    pixel_array = (
        _label_map(segments, frames.slices)
        if label_map_possible
        else _stack(segments, probability_maps, frames.slices)
    )
    segmentation = hd.seg.Segmentation(
        source_images=frames.source_headers,
        pixel_array=pixel_array,
        plane_positions=frames.plane_positions,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL
            if fractional
            else hd.seg.SegmentationTypeValues.BINARY
        ),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        segment_descriptions=[_segment_description(segment, info) for segment in segments],
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
        transfer_syntax_uid=transfer_syntax_uid,
        omit_empty_frames=True,
        series_description=series_description(info),
        institution_name=institution_name,
        contributing_equipment=[algorithm_equipment(info, device_serial_number, made)],
        specific_character_set=UTF8,
        **date_time_arguments(made),
    )
    if not layout.has_patient_coordinates:
        # General Image Module, Type 2C for images without Image Position/Orientation
        # (Patient); highdicom leaves it out. The SEG's pixel grid is the source image's.
        segmentation.PatientOrientation = layout.headers[0].get("PatientOrientation", "")
    if version.predecessor_segmentation is not None:
        _reference_predecessor(segmentation, version.predecessor_segmentation)
    LOGGER.debug(
        "SEG of %s %s: %d segment(s), %d frame(s)",
        info.name,
        info.version,
        len(segments),
        segmentation.NumberOfFrames,
    )
    return segmentation


def _segments(result: AlgorithmResult, tracking: list[Tracking]) -> list[_Segment]:
    segments: list[_Segment] = []
    for finding, finding_tracking_ in zip(result.findings, tracking, strict=True):
        if finding.mask is None:
            continue
        mask = np.asarray(finding.mask, dtype=bool)
        segments.append(
            _Segment(
                number=len(segments) + 1,
                finding=finding,
                tracking=finding_tracking_,
                mask=mask,
                slices=_occupied_slices(mask),
            )
        )
    if not segments:
        raise ValueError("build_segmentation: result has no finding with a mask")
    return segments


def _occupied_slices(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Indices of the slices (first axis) where a 3-D mask has voxels; none for other shapes
    (refused later with the shape in the message)."""
    if mask.ndim != 3:
        return np.empty(0, dtype=np.intp)
    return np.flatnonzero(mask.any(axis=(1, 2)))


def _source_layout(
    source_images: Sequence[SourceImage],
    source_headers: Sequence[pydicom.Dataset],
    study: StudyContext,
) -> _SourceLayout:
    if not source_images:
        raise ValueError("build_segmentation: source_images must name at least one image")
    by_uid = {str(header.SOPInstanceUID): header for header in source_headers}
    missing = sorted({s.sop_instance_uid for s in source_images} - by_uid.keys())
    if missing:
        raise ValueError(
            f"build_segmentation: source_headers lack the header of {len(missing)} source "
            f"instance(s), e.g. {missing[0]}"
        )
    for header in by_uid.values():
        if str(header.StudyInstanceUID) != study.study_instance_uid:
            raise ValueError(
                "build_segmentation: every source header must be of study "
                f"{study.study_instance_uid}, one is of {header.StudyInstanceUID}"
            )
    frame_numbers = {s.frame_number is None for s in source_images}
    if frame_numbers == {True}:
        headers = [by_uid[s.sop_instance_uid] for s in source_images]
        if len({id(h) for h in headers}) != len(headers):
            raise ValueError(
                "build_segmentation: single-frame source_images must name each instance once"
            )
        frame_of_slice = None
    elif frame_numbers == {False} and len({s.sop_instance_uid for s in source_images}) == 1:
        headers = [by_uid[source_images[0].sop_instance_uid]]
        frame_of_slice = np.array([int(s.frame_number or 0) - 1 for s in source_images])
    else:
        raise ValueError(
            "build_segmentation: source_images must be single-frame instances or the frames "
            "of one multi-frame instance"
        )
    return _SourceLayout(
        headers=headers,
        frame_of_slice=frame_of_slice,
        has_patient_coordinates="FrameOfReferenceUID" in headers[0],
    )


def _with_type_2_attributes(header: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``header`` with the Type 2 patient and study attributes highdicom copies."""
    if all(keyword in header for keyword in _TYPE_2_KEYWORDS):
        return header
    filled = pydicom.Dataset()  # new elements only: the caller's header stays as it is
    for element in header:
        filled.add(element)
    for keyword in _TYPE_2_KEYWORDS:
        if keyword not in filled:
            setattr(filled, keyword, None)
    return filled


def _check_arguments(
    *,
    segments: list[_Segment],
    layout: _SourceLayout,
    n_slices: int,
    probability_maps: Mapping[str, FloatVolume] | None,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    version: ResultVersion,
    transfer_syntax_uid: str,
) -> None:
    check_object_identity(
        "build_segmentation", series_instance_uid, sop_instance_uid, series_number
    )
    predecessor = version.predecessor_segmentation
    if predecessor is not None:
        if predecessor.sop_instance_uid == sop_instance_uid:
            raise ValueError(
                "build_segmentation: sop_instance_uid must differ from "
                "version.predecessor_segmentation (a new version is a new instance)"
            )
        if predecessor.study_instance_uid != str(layout.headers[0].StudyInstanceUID):
            raise ValueError(
                "build_segmentation: version.predecessor_segmentation must be of the source study"
            )
    header = layout.headers[0]
    shape = (n_slices, int(header.Rows), int(header.Columns))
    for segment in segments:
        if segment.mask.shape != shape:
            raise ValueError(
                f"build_segmentation: mask of finding {segment.tracking.identifier!r} has shape "
                f"{segment.mask.shape}, the source images give {shape} (slices, rows, columns)"
            )
        if len(segment.slices) == 0:
            raise ValueError(
                f"build_segmentation: mask of finding {segment.tracking.identifier!r} is empty"
            )
    if probability_maps is not None:
        identifiers = {segment.tracking.identifier for segment in segments}
        unknown = sorted(probability_maps.keys() - identifiers)
        if unknown:
            raise ValueError(
                f"build_segmentation: probability_maps names no finding with a mask: {unknown}"
            )
        for identifier, probability in probability_maps.items():
            if probability.shape != shape:
                raise ValueError(
                    f"build_segmentation: probability_maps[{identifier!r}] has shape "
                    f"{probability.shape}, expected {shape}"
                )
            if probability.min() < 0.0 or probability.max() > 1.0:
                raise ValueError(
                    f"build_segmentation: probability_maps[{identifier!r}] has values "
                    "outside [0, 1]"
                )
    allowed = {ExplicitVRLittleEndian} | (
        set() if probability_maps is None else set(COMPRESSED_TRANSFER_SYNTAXES)
    )
    if UID(transfer_syntax_uid) not in allowed:
        raise ValueError(
            f"build_segmentation: transfer_syntax_uid {transfer_syntax_uid} is not one of "
            f"{sorted(allowed)} (compressed syntaxes need a FRACTIONAL SEG)"
        )
    if not layout.has_patient_coordinates and n_slices != 1:
        raise ValueError(
            "build_segmentation: source images without a frame of reference must be one image"
        )


def _frames(segments: list[_Segment], layout: _SourceLayout, label_map_possible: bool) -> _Frames:
    """Which slices to encode, on which source headers.

    Single-frame sources: only the slices where some segment has voxels, with their instances
    as highdicom's source images, so the work (and the references) grow with the findings,
    not with the series. A multi-frame source is one instance: the array covers all its
    frames in frame order when each frame is one slice and the array is a small label map;
    otherwise only the occupied slices, with their plane positions.
    """
    occupied = np.unique(np.concatenate([segment.slices for segment in segments]))
    if layout.frame_of_slice is None:
        headers = [layout.headers[int(k)] for k in occupied]
        headers[0] = _with_type_2_attributes(headers[0])
        return _Frames(slices=occupied, source_headers=headers, plane_positions=None)
    header = _with_type_2_attributes(layout.headers[0])
    all_frames = np.argsort(layout.frame_of_slice)
    if layout.frames_are_the_slices and (label_map_possible or not layout.has_patient_coordinates):
        return _Frames(slices=all_frames, source_headers=[header], plane_positions=None)
    if not layout.has_patient_coordinates:
        raise ValueError(
            "build_segmentation: a multi-frame source without plane positions must give one "
            "slice per frame"
        )
    positions = hd.utils.get_plane_positions_of_image(layout.headers[0])
    return _Frames(
        slices=occupied,
        source_headers=[header],
        plane_positions=[positions[int(layout.frame_of_slice[k])] for k in occupied],
    )


def _label_map(
    segments: list[_Segment], slices: npt.NDArray[np.intp]
) -> npt.NDArray[np.unsignedinteger]:
    """Segment number per voxel of ``slices``, for masks that do not overlap.

    A label map is the fast way through highdicom: it checks only the maximum and splits the
    segments itself, dropping frames where a segment is empty.
    """
    dtype = np.uint8 if len(segments) <= np.iinfo(np.uint8).max else np.uint16
    rows, columns = segments[0].mask.shape[1:]
    label_map = np.zeros((len(slices), rows, columns), dtype=dtype)
    position = {int(k): n for n, k in enumerate(slices)}
    for segment in segments:
        for k in segment.slices:
            label_map[position[int(k)]][segment.mask[k]] = segment.number
    return label_map


def _stack(
    segments: list[_Segment],
    probability_maps: Mapping[str, FloatVolume] | None,
    slices: npt.NDArray[np.intp],
) -> npt.NDArray[np.generic]:
    """(slices, rows, columns, segments): masks as bool, or probabilities as float32."""
    if probability_maps is None:
        return np.stack([segment.mask[slices] for segment in segments], axis=-1)
    return np.stack(
        [
            np.asarray(
                probability_maps.get(segment.tracking.identifier, segment.mask)[slices],
                dtype=np.float32,
            )
            for segment in segments
        ],
        axis=-1,
    )


def _overlap(segments: list[_Segment]) -> bool:
    """Whether two masks share a voxel."""
    seen: dict[int, npt.NDArray[np.bool_]] = {}
    for segment in segments:
        for k in segment.slices:
            plane = segment.mask[k]
            union = seen.get(int(k))
            if union is None:
                seen[int(k)] = plane.copy()
            elif (union & plane).any():
                return True
            else:
                union |= plane
    return False


def _segment_description(segment: _Segment, info: AlgorithmInfo) -> hd.seg.SegmentDescription:
    finding = segment.finding
    return hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=segment.tracking.identifier[:LONG_STRING_MAX],
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=codes.to_coded_concept(finding.finding_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=info.name,
            family=codes.ARTIFICIAL_INTELLIGENCE,
            version=info.version,
            source=info.manufacturer,
        ),
        tracking_uid=segment.tracking.uid,
        tracking_id=segment.tracking.identifier,
        anatomic_regions=(
            None if finding.finding_site is None else [codes.to_coded_concept(finding.finding_site)]
        ),
    )


def _reference_predecessor(
    segmentation: hd.seg.Segmentation, predecessor: InstanceReference
) -> None:
    """Name the SEG this version replaces (General Reference Module, Referenced Instance).

    The Segmentation IOD has no Predecessor Documents Sequence; the General Reference Module
    (User option in the SEG IOD) lists "other instances significantly related", with the
    purpose (121360, DCM, "Replaced report") from CID 7009. As an instance of this study it is
    also listed in the Common Instance Reference Module's Referenced Series Sequence.
    """
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = predecessor.sop_class_uid
    item.ReferencedSOPInstanceUID = predecessor.sop_instance_uid
    item.PurposeOfReferenceCodeSequence = [codes.to_coded_concept(codes.REPLACED_REPORT)]
    segmentation.ReferencedInstanceSequence = [item]
    instance = pydicom.Dataset()
    instance.ReferencedSOPClassUID = predecessor.sop_class_uid
    instance.ReferencedSOPInstanceUID = predecessor.sop_instance_uid
    series = pydicom.Dataset()
    series.SeriesInstanceUID = predecessor.series_instance_uid
    series.ReferencedInstanceSequence = [instance]
    segmentation.ReferencedSeriesSequence.append(series)
