"""Read path of ``dicom_sr.seg``: a SEG back to its segments and their voxels on the source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.uid import SegmentationStorage

from algorithms.contract import Code
from dicom_sr import codes
from dicom_sr.context import InstanceReference, SourceImage


@dataclass(frozen=True)
class SegmentSummary:
    """One segment as ``build_segmentation`` wrote it from a finding."""

    number: int
    label: str
    category: Code
    property_type: Code
    """Segmented Property Type: the finding type."""
    anatomic_region: Code | None
    """The finding site, when the finding had one."""
    algorithm_type: str
    algorithm_name: str
    algorithm_version: str
    algorithm_family: Code
    tracking_id: str
    tracking_uid: str


@dataclass(frozen=True)
class SegmentationSummary:
    """What a radrouter SEG states, without its pixels."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    instance_number: int
    series_description: str
    segmentation_type: str
    """BINARY or FRACTIONAL."""
    segments: tuple[SegmentSummary, ...]
    source_instances: tuple[str, ...]
    """SOP Instance UIDs the frames are derived from (Derivation Image Sequence), sorted."""
    predecessors: tuple[InstanceReference, ...]
    """Earlier SEGs this one replaces (Referenced Instance Sequence, "Replaced report")."""


def read_segmentation(ds: pydicom.Dataset) -> SegmentationSummary:
    """Read a SEG written by ``build_segmentation`` (e.g. from the PACS) through highdicom."""
    if ds.get("SOPClassUID") != SegmentationStorage:
        raise ValueError(
            f"read_segmentation: ds.SOPClassUID must be Segmentation Storage "
            f"({SegmentationStorage}), got {ds.get('SOPClassUID')!r}"
        )
    seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    segments = tuple(
        _segment(seg.get_segment_description(number)) for number in seg.segment_numbers
    )
    shared = seg.SharedFunctionalGroupsSequence[0]
    sources = {
        str(source.ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in [_functional_group(frame, shared, "DerivationImageSequence")]
        for source in derivation.SourceImageSequence
    }
    series_of = {
        str(instance.ReferencedSOPInstanceUID): str(series.SeriesInstanceUID)
        for series in seg.get("ReferencedSeriesSequence", [])
        for instance in series.ReferencedInstanceSequence
    }
    predecessors = tuple(
        InstanceReference(
            study_instance_uid=str(seg.StudyInstanceUID),
            series_instance_uid=series_of.get(str(item.ReferencedSOPInstanceUID), ""),
            sop_class_uid=str(item.ReferencedSOPClassUID),
            sop_instance_uid=str(item.ReferencedSOPInstanceUID),
        )
        for item in seg.get("ReferencedInstanceSequence", [])
        if any(
            codes.same_concept(hd.sr.CodedConcept.from_dataset(purpose), codes.REPLACED_REPORT)
            for purpose in item.get("PurposeOfReferenceCodeSequence", [])
        )
    )
    return SegmentationSummary(
        study_instance_uid=str(seg.StudyInstanceUID),
        series_instance_uid=str(seg.SeriesInstanceUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        instance_number=int(seg.InstanceNumber),
        series_description=str(seg.get("SeriesDescription", "")),
        segmentation_type=str(seg.SegmentationType),
        segments=segments,
        source_instances=tuple(sorted(sources)),
        predecessors=predecessors,
    )


def read_segment_volumes(
    ds: pydicom.Dataset, source_images: Sequence[SourceImage]
) -> dict[int, npt.NDArray[np.float32]]:
    """Each segment's values on the volume ``source_images`` describe: segment number ->
    (slices, rows, columns) array, 0 or 1 for BINARY, the probability for FRACTIONAL.

    Frames are placed by the source image (and frame) their Derivation Image Sequence names;
    slices without a frame of a segment are 0.
    """
    seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    slice_of = {
        (image.sop_instance_uid, image.frame_number): index
        for index, image in enumerate(source_images)
    }
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    scale = float(seg.MaximumFractionalValue) if str(seg.SegmentationType) == "FRACTIONAL" else 1.0
    shape = (len(source_images), int(seg.Rows), int(seg.Columns))
    volumes = {number: np.zeros(shape, dtype=np.float32) for number in seg.segment_numbers}
    shared = seg.SharedFunctionalGroupsSequence[0]
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment_item = _functional_group(frame, shared, "SegmentIdentificationSequence")
        number = int(segment_item.ReferencedSegmentNumber)
        derivation = _functional_group(frame, shared, "DerivationImageSequence")
        source = derivation.SourceImageSequence[0]
        frame_number = source.get("ReferencedFrameNumber")
        key = (
            str(source.ReferencedSOPInstanceUID),
            None if frame_number is None else int(frame_number),
        )
        if key not in slice_of:
            raise ValueError(
                f"read_segment_volumes: frame {index + 1} lies on {key[0]} (frame {key[1]}), "
                "which is not one of source_images"
            )
        volumes[number][slice_of[key]] = pixels[index] / scale
    return volumes


def _functional_group(
    frame: pydicom.Dataset, shared: pydicom.Dataset, keyword: str
) -> pydicom.Dataset:
    """The item of functional group ``keyword`` for a frame: per-frame, else shared (highdicom
    moves a group that is the same for every frame into the shared groups)."""
    for groups in (frame, shared):
        if keyword in groups:
            item: pydicom.Dataset = groups[keyword].value[0]
            return item
    raise ValueError(f"read_segmentation: a frame has no {keyword}")


def _segment(description: hd.seg.SegmentDescription) -> SegmentSummary:
    algorithm = description.algorithm_identification
    if algorithm is None:
        raise ValueError(
            f"read_segmentation: segment {description.segment_number} has no algorithm "
            "identification"
        )
    regions = description.anatomic_regions
    return SegmentSummary(
        number=int(description.segment_number),
        label=str(description.segment_label),
        category=codes.to_contract_code(description.segmented_property_category),
        property_type=codes.to_contract_code(description.segmented_property_type),
        anatomic_region=codes.to_contract_code(regions[0]) if regions else None,
        algorithm_type=description.algorithm_type.value,
        algorithm_name=str(algorithm[0].AlgorithmName),
        algorithm_version=str(algorithm[0].AlgorithmVersion),
        algorithm_family=codes.to_contract_code(
            hd.sr.CodedConcept.from_dataset(algorithm[0].AlgorithmFamilyCodeSequence[0])
        ),
        tracking_id=str(description.tracking_id or ""),
        tracking_uid=str(description.tracking_uid or ""),
    )
