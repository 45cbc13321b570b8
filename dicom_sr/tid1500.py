"""TID 1500 Measurement Report: an algorithm's result as a Comprehensive 3D SR in its study."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.coding import Code as DicomCode
from pydicom.uid import SegmentationStorage

from algorithms.codes import VOLUME
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    Measurement,
    Verdict,
    VolumeGeometry,
)
from dicom_sr import codes
from dicom_sr.context import InstanceReference, ResultVersion, SourceImage, StudyContext
from dicom_sr.header import (
    AI_NOT_VERIFIED_STATEMENT,
    MANUFACTURER,
    NOT_FOR_CLINICAL_USE_STATEMENT,
    UTF8,
    algorithm_equipment,
    algorithm_identification,
    date_time_arguments,
    device_observer_context,
    document_statements,
    evidence,
    radrouter_version,
    result_datetime,
    series_description,
)
from dicom_sr.tracking import Tracking, finding_tracking, tracking_uid
from dicom_sr.uids import is_valid_uid

__all__ = [
    "AI_NOT_VERIFIED_STATEMENT",
    "MANUFACTURER",
    "NOT_FOR_CLINICAL_USE_STATEMENT",
    "InstanceReference",
    "ResultVersion",
    "SourceImage",
    "StudyContext",
    "build_measurement_report",
    "series_description",
    "tracking_uid",
]

_CUBIC_MILLIMETRE = DicomCode("mm3", "UCUM", "cubic millimeter")

MeasurementGroup = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class _SegmentOfFinding:
    """The SEG segment that holds a finding's mask (matched by tracking UID)."""

    sop_instance_uid: str
    segment_number: int


def build_measurement_report(
    *,
    result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: Sequence[SourceImage],
    study: StudyContext,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    version: ResultVersion,
    institution_name: str | None = None,
    device_serial_number: str | None = None,
    procedure_reported: Code | None = None,
    segmentation: pydicom.Dataset | None = None,
    geometry: VolumeGeometry | None = None,
    tracking_uids: Mapping[str, str] | None = None,
    prior_evidence: Sequence[InstanceReference] = (),
    content_datetime: datetime.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build ``result`` as a TID 1500 Measurement Report that belongs in the source study.

    Content: TID 1001 observation context with the algorithm as device observer; one TID 1410
    Planar ROI group per finding (TID 4108 tracking, finding type and site, SCOORD POLYLINE on
    the source slice ``finding.region.slice_index`` of ``source_images`` (a box is its 5-point
    polyline), the measurements, the certainty of finding, the qualifiers as qualitative
    evaluations, TID 4019); the row 12 Qualitative Evaluations container, holding the
    study-level statement (the target Present / Absent / Undetermined, with the reason as a
    comment, the study-level probability as certainty and the study-level measurements as its
    properties) and comments saying the document is AI-generated and unverified (and not for
    clinical use where that applies). A result without findings has no Imaging Measurements
    container: every measurement group there can be drawn on an image, as OHIF needs.

    With ``segmentation`` (the SEG written for the same result), each finding whose tracking UID
    is a segment's gets a TID 1411 Volumetric ROI group as well, with the same tracking, that
    references the segment and states its volume: the finding's Volume measurement (moved
    there from the planar group), else the mask's voxel count times the voxel volume of
    ``geometry``.

    Tracking UIDs are derived from study, algorithm and tracking identifier, except for
    identifiers in ``tracking_uids`` (findings carried over from a prior exam), which keep the
    UID given. ``prior_evidence`` (instances of earlier studies the result was compared with)
    is listed in Pertinent Other Evidence.

    Header: Verification Flag UNVERIFIED, Completion Flag COMPLETE (PARTIAL when not assessed),
    Current Requested Procedure Evidence for every source image (and the SEG), Contributing
    Equipment naming the algorithm (IHE AIR), Predecessor Documents Sequence for versions after
    the first, Instance Number = version. Procedure reported defaults to a CID 100 code for the
    source modality; ``device_serial_number`` (the deployment running the algorithm) goes into
    the device observer and the equipment. Series Date/Time and Content Date/Time are
    ``content_datetime``, when the result was made (default now; ``header.result_datetime``).
    """
    made = result_datetime(content_datetime)
    study_uid = study.study_instance_uid
    tracking = finding_tracking(result, study_uid, info.name, tracking_uids)
    _check_arguments(
        result=result,
        source_images=source_images,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        version=version,
        study_uid=study_uid,
        prior_evidence=prior_evidence,
    )
    segments = _segments_of_findings(segmentation, study_uid, tracking, result)
    groups: list[MeasurementGroup] = []
    for finding, finding_tracking_ in zip(result.findings, tracking, strict=True):
        segment = segments.get(finding_tracking_.uid)
        volume = None if segment is None else _segment_volume(finding, finding_tracking_, geometry)
        groups.append(
            _planar_roi_measurements(
                finding,
                finding_tracking_,
                info,
                source_images,
                exclude=() if volume is None else (volume,),
            )
        )
        if segment is not None and volume is not None:
            groups.append(
                _volumetric_roi_measurements(
                    finding, finding_tracking_, info, segment, volume, study
                )
            )
    report = _measurement_report(
        groups,
        hd.sr.ObservationContext(
            observer_device_context=device_observer_context(info, device_serial_number)
        ),
        _procedure_reported(procedure_reported, study.dataset),
        _qualitative_evaluations(result, info),
    )

    evidence_items = evidence(study, source_images)
    if segmentation is not None:
        evidence_items.append(_reference_dataset(segmentation))
    evidence_items.extend(reference.as_dataset() for reference in prior_evidence)
    predecessor = version.predecessor_report(study_uid)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence_items,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=version.number,
        manufacturer=MANUFACTURER,
        is_complete=result.verdict is not Verdict.NOT_ASSESSED,
        is_final=False,
        is_verified=False,
        institution_name=institution_name,
        previous_versions=None if predecessor is None else [predecessor.as_dataset()],
        contributing_equipment=[algorithm_equipment(info, device_serial_number, made)],
        series_description=series_description(info),
        manufacturer_model_name=MANUFACTURER,
        software_versions=radrouter_version(),
        specific_character_set=UTF8,
        **date_time_arguments(made),
    )


def _check_arguments(
    *,
    result: AlgorithmResult,
    source_images: Sequence[SourceImage],
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    version: ResultVersion,
    study_uid: str,
    prior_evidence: Sequence[InstanceReference],
) -> None:
    if not source_images:
        raise ValueError("build_measurement_report: source_images must name at least one image")
    for name, uid in (
        ("series_instance_uid", series_instance_uid),
        ("sop_instance_uid", sop_instance_uid),
    ):
        if not is_valid_uid(uid):
            raise ValueError(f"build_measurement_report: {name} {uid!r} is not a DICOM UID")
    if series_number < 1:
        raise ValueError(
            f"build_measurement_report: series_number must be >= 1, got {series_number}"
        )
    if sop_instance_uid == version.predecessor_sop_instance_uid:
        raise ValueError(
            "build_measurement_report: sop_instance_uid must differ from "
            "version.predecessor_sop_instance_uid (a new version is a new instance)"
        )
    for index, finding in enumerate(result.findings):
        slice_index = finding.region.slice_index
        if not 0 <= slice_index < len(source_images):
            raise ValueError(
                f"build_measurement_report: result.findings[{index}].region.slice_index "
                f"{slice_index} does not index source_images (0..{len(source_images) - 1})"
            )
    for index, reference in enumerate(prior_evidence):
        if reference.study_instance_uid == study_uid:
            raise ValueError(
                f"build_measurement_report: prior_evidence[{index}] is of the current study; "
                "prior evidence must be of an earlier study"
            )


def _segments_of_findings(
    segmentation: pydicom.Dataset | None,
    study_uid: str,
    tracking: list[Tracking],
    result: AlgorithmResult,
) -> dict[str, _SegmentOfFinding]:
    """Tracking UID -> segment, for the findings ``segmentation`` has a segment of."""
    if segmentation is None:
        return {}
    if segmentation.get("SOPClassUID") != SegmentationStorage:
        raise ValueError(
            f"build_measurement_report: segmentation.SOPClassUID must be Segmentation Storage "
            f"({SegmentationStorage}), got {segmentation.get('SOPClassUID')!r}"
        )
    if str(segmentation.StudyInstanceUID) != study_uid:
        raise ValueError("build_measurement_report: segmentation must be of the source study")
    by_tracking_uid = {
        str(item.TrackingUID): _SegmentOfFinding(
            sop_instance_uid=str(segmentation.SOPInstanceUID),
            segment_number=int(item.SegmentNumber),
        )
        for item in segmentation.SegmentSequence
        if "TrackingUID" in item
    }
    for finding, finding_tracking_ in zip(result.findings, tracking, strict=True):
        if finding.mask is not None and finding_tracking_.uid not in by_tracking_uid:
            raise ValueError(
                f"build_measurement_report: finding {finding_tracking_.identifier!r} has a mask "
                "but segmentation has no segment with its tracking UID"
            )
    return by_tracking_uid


def _segment_volume(
    finding: Finding, tracking: Tracking, geometry: VolumeGeometry | None
) -> Measurement:
    """The finding's Volume measurement, else its mask's volume on ``geometry``'s grid."""
    for measurement in finding.measurements:
        if codes.same_concept(measurement.name, VOLUME):
            return measurement
    if finding.mask is None or geometry is None:
        raise ValueError(
            f"build_measurement_report: finding {tracking.identifier!r} has a segment but no "
            "Volume measurement; give geometry so its volume is computed from the mask"
        )
    voxel_mm3 = float(np.prod(geometry.spacing_mm))
    return Measurement(
        name=VOLUME,
        value=float(np.count_nonzero(finding.mask)) * voxel_mm3,
        unit=codes.to_contract_code(_CUBIC_MILLIMETRE),
    )


def _procedure_reported(
    procedure: Code | None, dataset: pydicom.Dataset
) -> hd.sr.CodedConcept | DicomCode:
    """TID 1500 row 4: the caller's code, else a CID 100 code for the source modality."""
    if procedure is not None:
        return codes.to_coded_concept(procedure)
    return codes.PROCEDURE_BY_MODALITY.get(
        str(dataset.get("Modality", "")), codes.IMAGING_PROCEDURE
    )


def _study_level_statement(result: AlgorithmResult, info: AlgorithmInfo) -> hd.sr.CodeContentItem:
    """The study-level statement, for the row 12 Qualitative Evaluations container: the target
    (e.g. Nodule) is Present / Absent / Undetermined (CODE, CID 240), with, as its properties,
    the result's reason (required when not assessed) as a TEXT (121106, DCM, "Comment"), the
    study-level probability as a certainty of finding (%) and the study-level measurements.

    Never implicit: an ABSENT result without findings still says "Absent" here. Not a TID 1501
    group inside Imaging Measurements, which TID 1500 also allows: OHIF (3.13.2, 3.14 beta)
    takes every group there for a measurement with image coordinates, and its SR view fails on
    a group without them (docs/viewing-results.md). The properties extend row 13 (TID 1500 is
    extensible).
    """
    statement = hd.sr.CodeContentItem(
        name=codes.to_coded_concept(info.target),
        value=codes.VERDICT_VALUES[result.verdict],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    properties: list[hd.sr.ContentItem] = []
    if result.reason:
        properties.append(
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=result.reason,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
            )
        )
    numbers: list[tuple[Code | DicomCode, float, Code | DicomCode]] = [
        (m.name, m.value, m.unit) for m in result.measurements
    ]
    if result.probability is not None:
        numbers.insert(
            0,
            (
                codes.CERTAINTY_OF_FINDING,
                result.probability * codes.PERCENT_PER_PROBABILITY,
                codes.PERCENT,
            ),
        )
    properties.extend(
        hd.sr.NumContentItem(
            name=codes.to_coded_concept(name),
            value=value,
            unit=codes.to_coded_concept(unit),
            relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
        )
        for name, value, unit in numbers
    )
    if properties:
        statement.ContentSequence = hd.sr.ContentSequence(properties)
    return statement


def _planar_roi_measurements(
    finding: Finding,
    tracking: Tracking,
    info: AlgorithmInfo,
    source_images: Sequence[SourceImage],
    exclude: Sequence[Measurement],
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group for one finding: region on its source slice, measurements, certainty,
    qualifiers. Measurements in ``exclude`` are written elsewhere (the volumetric group)."""
    source = source_images[finding.region.slice_index]
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(finding.region.points, dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.sop_class_uid,
            referenced_sop_instance_uid=source.sop_instance_uid,
            referenced_frame_numbers=(
                None if source.frame_number is None else [source.frame_number]
            ),
        ),
    )
    measurements = [_measurement(m) for m in finding.measurements if m not in exclude]
    measurements.append(_certainty(finding.probability))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking.uid, identifier=tracking.identifier
        ),
        referenced_region=region,
        finding_type=codes.to_coded_concept(finding.finding_type),
        algorithm_id=algorithm_identification(info),
        finding_sites=_finding_sites(finding),
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.to_coded_concept(qualifier.name),
                value=codes.to_coded_concept(qualifier.value),
            )
            for qualifier in finding.qualifiers
        ]
        or None,
    )


def _volumetric_roi_measurements(
    finding: Finding,
    tracking: Tracking,
    info: AlgorithmInfo,
    segment: _SegmentOfFinding,
    volume: Measurement,
    study: StudyContext,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 group for one finding: its SEG segment and the segment's volume.

    The Referenced Segment is built by hand: ``ReferencedSegment.from_segmentation()`` fails on a
    single-segment SEG written by highdicom itself.
    """
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking.uid, identifier=tracking.identifier
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=SegmentationStorage,
            sop_instance_uid=segment.sop_instance_uid,
            segment_number=segment.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(study.series_instance_uid),
        ),
        finding_type=codes.to_coded_concept(finding.finding_type),
        algorithm_id=algorithm_identification(info),
        finding_sites=_finding_sites(finding),
        measurements=[_measurement(volume)],
    )


def _finding_sites(finding: Finding) -> list[hd.sr.FindingSite] | None:
    if finding.finding_site is None:
        return None
    return [hd.sr.FindingSite(anatomic_location=codes.to_coded_concept(finding.finding_site))]


def _measurement(measurement: Measurement) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=codes.to_coded_concept(measurement.name),
        value=measurement.value,
        unit=codes.to_coded_concept(measurement.unit),
    )


def _certainty(probability: float) -> hd.sr.Measurement:
    """A probability in [0, 1] as (111012, DCM, "Certainty of Finding") in percent."""
    return hd.sr.Measurement(
        name=codes.CERTAINTY_OF_FINDING,
        value=probability * codes.PERCENT_PER_PROBABILITY,
        unit=codes.PERCENT,
    )


def _measurement_report(
    groups: Sequence[MeasurementGroup],
    observation_context: hd.sr.ObservationContext,
    procedure_reported: hd.sr.CodedConcept | DicomCode,
    qualitative_evaluations: hd.sr.ContainerContentItem,
) -> hd.sr.MeasurementReport:
    """The TID 1500 content: row 6 Imaging Measurements holding ``groups`` (left out when there
    are none: a result without findings), then the row 12 container.

    highdicom's MeasurementReport demands at least one measurement group (it supports neither
    row 10 nor row 12), while TID 1500 asks for one of rows 6, 10 and 12; so a report without
    groups is built around a placeholder group whose container is then taken out.
    """
    placeholder = not groups
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure_reported,
        imaging_measurements=list(groups)
        or [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(identifier="placeholder")
            )
        ],
        title=codes.IMAGING_MEASUREMENT_REPORT if groups else codes.DIAGNOSTIC_IMAGING_REPORT,
    )
    content = report[0].ContentSequence
    if placeholder:
        for index, item in enumerate(content):
            if item.ValueType == "CONTAINER" and codes.same_concept(
                item.name, codes.IMAGING_MEASUREMENTS
            ):
                del content[index]
                break
    content.append(qualitative_evaluations)
    return report


def _qualitative_evaluations(
    result: AlgorithmResult, info: AlgorithmInfo
) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12 container: the study-level statement, then what the document says
    about itself (AI-generated, unverified; not for clinical use where that applies) as TEXT
    comments (rows 13-14).

    highdicom's MeasurementReport has no argument for row 12, so the container is built from
    highdicom content items and appended to the root.
    """
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [_study_level_statement(result, info)]
        + [
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=statement,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for statement in document_statements(info)
        ]
    )
    return container


def _reference_dataset(instance: pydicom.Dataset) -> pydicom.Dataset:
    """The four UIDs of ``instance``, as an evidence item."""
    return InstanceReference(
        study_instance_uid=str(instance.StudyInstanceUID),
        series_instance_uid=str(instance.SeriesInstanceUID),
        sop_class_uid=str(instance.SOPClassUID),
        sop_instance_uid=str(instance.SOPInstanceUID),
    ).as_dataset()
