"""TID 1500 with a SEG: a TID 1411 volumetric group per masked finding, referencing its segment."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage

from algorithms import codes as finding_codes
from algorithms.contract import AlgorithmInfo, AlgorithmResult, Verdict, VolumeGeometry
from dicom_sr.context import ResultVersion, SourceImage, StudyContext
from dicom_sr.read import read_measurement_report
from dicom_sr.seg import build_segmentation
from dicom_sr.tid1500 import build_measurement_report
from dicom_sr.uids import derive_uid
from tests.dicom_sr.support import assert_valid_dicom, write_object


def segmentation_of(
    result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
) -> hd.seg.Segmentation:
    return build_segmentation(
        result=result,
        info=info,
        source_images=source_images,
        source_headers=ct_slices,
        study=StudyContext(ct_slices[0]),
        series_instance_uid=derive_uid("test", "seg series"),
        sop_instance_uid=derive_uid("test", "seg"),
        series_number=9011,
        version=ResultVersion(1),
    )


def report_of(
    result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    segmentation: pydicom.Dataset,
    geometry: VolumeGeometry | None,
) -> hd.sr.Comprehensive3DSR:
    return build_measurement_report(
        result=result,
        info=info,
        source_images=source_images,
        study=study,
        series_instance_uid=derive_uid("test", "sr series"),
        sop_instance_uid=derive_uid("test", "sr"),
        series_number=9001,
        version=ResultVersion(1),
        segmentation=segmentation,
        geometry=geometry,
    )


@pytest.fixture
def segmentation(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
) -> hd.seg.Segmentation:
    return segmentation_of(masked_result, info, source_images, ct_slices)


@pytest.fixture
def report(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    segmentation: hd.seg.Segmentation,
    geometry: VolumeGeometry,
    tmp_path: Path,
) -> hd.sr.Comprehensive3DSR:
    sr = report_of(masked_result, info, source_images, study, segmentation, geometry)
    back = hd.sr.srread(write_object(sr, tmp_path))
    assert isinstance(back, hd.sr.Comprehensive3DSR)
    return back


def test_report_with_segments_passes_dciodvfy_without_errors(
    report: hd.sr.Comprehensive3DSR, tmp_path: Path
) -> None:
    assert_valid_dicom(write_object(report, tmp_path))


def test_each_masked_finding_has_a_volumetric_group_on_its_segment(
    report: hd.sr.Comprehensive3DSR, segmentation: hd.seg.Segmentation
) -> None:
    content = report.content
    assert isinstance(content, hd.sr.MeasurementReport)
    groups = content.get_volumetric_roi_measurement_groups()
    tracking_uid_of_segment = {
        int(item.SegmentNumber): str(item.TrackingUID) for item in segmentation.SegmentSequence
    }

    assert [g.tracking_identifier for g in groups] == ["Nodule 1", "Nodule 2", "Nodule 3"]
    for group in groups:
        segment = group.referenced_segment
        assert segment is not None
        assert segment.referenced_sop_class_uid == SegmentationStorage
        assert segment.referenced_sop_instance_uid == segmentation.SOPInstanceUID
        (number,) = segment.referenced_segment_numbers or []
        assert tracking_uid_of_segment[number] == str(group.tracking_uid)


def test_planar_and_volumetric_groups_of_a_finding_share_its_tracking(
    report: hd.sr.Comprehensive3DSR, segmentation: hd.seg.Segmentation
) -> None:
    summary = read_measurement_report(report)

    assert [f.tracking_id for f in summary.findings] == ["Nodule 1", "Nodule 2", "Nodule 3"]
    assert [f.segment.segment_number if f.segment else None for f in summary.findings] == [
        1,
        2,
        3,
    ]
    assert {f.segment.sop_instance_uid for f in summary.findings if f.segment} == {
        segmentation.SOPInstanceUID
    }
    assert [f.tracking_uid for f in summary.findings] == [
        str(item.TrackingUID) for item in segmentation.SegmentSequence
    ]


def test_volume_is_the_stated_one_or_else_computed_from_the_mask(
    report: hd.sr.Comprehensive3DSR, masked_result: AlgorithmResult, geometry: VolumeGeometry
) -> None:
    summary = read_measurement_report(report)
    voxel_mm3 = float(np.prod(geometry.spacing_mm))
    masks = [f.mask for f in masked_result.findings]

    assert summary.findings[0].volume_mm3 == pytest.approx(102.4)
    assert masks[1] is not None and masks[2] is not None
    assert summary.findings[1].volume_mm3 == pytest.approx(masks[1].sum() * voxel_mm3)
    assert summary.findings[2].volume_mm3 == pytest.approx(masks[2].sum() * voxel_mm3)


def test_volume_is_stated_once_in_the_volumetric_group_not_in_the_planar_one(
    report: hd.sr.Comprehensive3DSR,
) -> None:
    content = report.content
    assert isinstance(content, hd.sr.MeasurementReport)
    volume = hd.sr.CodedConcept(
        finding_codes.VOLUME.value,
        finding_codes.VOLUME.scheme_designator,
        finding_codes.VOLUME.meaning,
    )

    for planar in content.get_planar_roi_measurement_groups():
        assert planar.get_measurements(name=volume) == []
    for volumetric in content.get_volumetric_roi_measurement_groups():
        assert len(volumetric.get_measurements(name=volume)) == 1


def test_segmentation_is_listed_as_current_evidence(
    report: hd.sr.Comprehensive3DSR, segmentation: hd.seg.Segmentation
) -> None:
    evidence = report.get_evidence(current_procedure_only=True)

    assert (
        segmentation.StudyInstanceUID,
        segmentation.SeriesInstanceUID,
        segmentation.SOPInstanceUID,
        SegmentationStorage,
    ) in evidence


def test_masked_finding_without_a_segment_is_refused(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
    geometry: VolumeGeometry,
) -> None:
    first_only = AlgorithmResult(Verdict.PRESENT, masked_result.findings[:1])
    segmentation = segmentation_of(first_only, info, source_images, ct_slices)

    with pytest.raises(ValueError, match="'Nodule 2' has a mask but segmentation has no segment"):
        report_of(masked_result, info, source_images, study, segmentation, geometry)


def test_segment_without_stated_volume_needs_the_geometry(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    segmentation: hd.seg.Segmentation,
) -> None:
    with pytest.raises(ValueError, match="'Nodule 2' has a segment but no Volume measurement"):
        report_of(masked_result, info, source_images, study, segmentation, geometry=None)


def test_findings_that_all_state_their_volume_need_no_geometry(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
) -> None:
    first = masked_result.findings[0]
    result = AlgorithmResult(Verdict.PRESENT, (first, replace(first, tracking_id="Nodule 4")))
    segmentation = segmentation_of(result, info, source_images, ct_slices)

    summary = read_measurement_report(
        report_of(result, info, source_images, study, segmentation, geometry=None)
    )

    assert [f.volume_mm3 for f in summary.findings] == pytest.approx([102.4, 102.4])
