"""Read path of ``dicom_sr.tid1500``: a TID 1500 SR back to the verdict and findings it states."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import pydicom
from pydicom.sr.coding import Code as DicomCode
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

from algorithms.codes import CUBIC_MILLIMETRE, LONG_AXIS, MILLIMETRE, VOLUME
from algorithms.contract import Code, Measurement, Qualifier, Verdict
from dicom_sr import codes
from dicom_sr.context import InstanceReference

_CODE = hd.sr.ValueTypeValues.CODE
_NUM = hd.sr.ValueTypeValues.NUM
_TEXT = hd.sr.ValueTypeValues.TEXT
_CONTAINER = hd.sr.ValueTypeValues.CONTAINER


@dataclass(frozen=True)
class SegmentReference:
    """The SEG segment a TID 1411 Volumetric ROI group references."""

    sop_class_uid: str
    sop_instance_uid: str
    segment_number: int
    source_series_instance_uid: str | None


@dataclass(frozen=True)
class FindingSummary:
    """One finding as the writer made it from a ``Finding``: its TID 1410 Planar ROI group and,
    when a SEG holds its mask, the TID 1411 Volumetric ROI group with the same tracking UID."""

    tracking_id: str
    tracking_uid: str
    finding_type: Code
    finding_site: Code | None
    probability: float | None
    """Certainty of Finding (%) as a probability in [0, 1]."""
    measurements: tuple[Measurement, ...]
    """Every other TID 300 measurement, in document order."""
    referenced_sop_class_uid: str
    referenced_sop_instance_uid: str
    referenced_frame_number: int | None
    points: tuple[tuple[float, float], ...]
    """The SCOORD POLYLINE, (column, row) pixel points (stored as 32-bit floats)."""
    qualifiers: tuple[Qualifier, ...] = ()
    """Qualitative evaluations of the planar group (laterality, change, ...)."""
    segment: SegmentReference | None = None
    """The segment of the finding's mask, from its volumetric group; None without one."""

    def measurement(self, name: Code, unit: Code) -> float | None:
        """The value of the measurement called ``name`` in ``unit``, or None if there is none."""
        for m in self.measurements:
            if codes.same_concept(m.name, name) and codes.same_concept(m.unit, unit):
                return m.value
        return None

    @property
    def long_axis_mm(self) -> float | None:
        return self.measurement(LONG_AXIS, MILLIMETRE)

    @property
    def volume_mm3(self) -> float | None:
        return self.measurement(VOLUME, CUBIC_MILLIMETRE)


@dataclass(frozen=True)
class ReportSummary:
    """What a radrouter TID 1500 Measurement Report states."""

    study_instance_uid: str
    sop_instance_uid: str
    verdict: Verdict
    target: Code
    """The concept the study-level statement is about (``AlgorithmInfo.target``)."""
    reason: str
    """The study-level comment: why not assessed, or a summary; "" if none."""
    algorithm_name: str
    algorithm_version: str
    findings: tuple[FindingSummary, ...]
    statements: tuple[str, ...]
    """Document-wide comments (AI-generated and not verified; not for clinical use)."""
    predecessor_sop_instance_uids: tuple[str, ...]
    probability: float | None = None
    """Study-level probability of the target (the statement's certainty of finding)."""
    measurements: tuple[Measurement, ...] = ()
    """Study-level measurements (the statement's NUM properties), in document order."""
    prior_evidence: tuple[InstanceReference, ...] = ()
    """Instances of other studies listed in Pertinent Other Evidence."""


_SR_READERS: dict[str, type[hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR | hd.sr.EnhancedSR]] = {
    Comprehensive3DSRStorage: hd.sr.Comprehensive3DSR,
    ComprehensiveSRStorage: hd.sr.ComprehensiveSR,
    EnhancedSRStorage: hd.sr.EnhancedSR,
}
"""The SR classes a TID 1500 report may come in: radrouter writes Comprehensive 3D SR; a
vendor's answer may use the others (``router.external``)."""


def read_measurement_report(
    ds: pydicom.Dataset, *, require_algorithm: bool = True
) -> ReportSummary:
    """Read a TID 1500 Measurement Report as ``build_measurement_report`` writes it (from the
    PACS), or a vendor's that states its result the same way.

    Raises ValueError naming what is missing when ``ds`` is not such a report.
    """
    reader = _SR_READERS.get(str(ds.get("SOPClassUID", "")))
    if reader is None:
        raise ValueError(
            f"read_measurement_report: ds.SOPClassUID must be Comprehensive 3D, Comprehensive "
            f"or Enhanced SR, got {ds.get('SOPClassUID')!r}"
        )
    sr = reader.from_dataset(ds)
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("read_measurement_report: ds content is not a TID 1500 Measurement Report")

    assessment = _study_level_assessment(report)
    algorithm = _algorithm(ds, report) if require_algorithm else _algorithm_if_named(ds, report)
    volumetric = {
        str(group.tracking_uid): group for group in report.get_volumetric_roi_measurement_groups()
    }
    findings = tuple(
        _finding(group, volumetric.get(str(group.tracking_uid)))
        for group in report.get_planar_roi_measurement_groups()
    )
    return ReportSummary(
        study_instance_uid=str(ds.StudyInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        verdict=assessment.verdict,
        target=assessment.target,
        reason=assessment.reason,
        algorithm_name=algorithm[0],
        algorithm_version=algorithm[1],
        findings=findings,
        statements=_document_statements(report),
        predecessor_sop_instance_uids=tuple(
            str(instance.ReferencedSOPInstanceUID)
            for study in ds.get("PredecessorDocumentsSequence", [])
            for series in study.ReferencedSeriesSequence
            for instance in series.ReferencedSOPSequence
        ),
        probability=assessment.probability,
        measurements=assessment.measurements,
        prior_evidence=_references(ds.get("PertinentOtherEvidenceSequence", [])),
    )


@dataclass(frozen=True)
class _StudyLevelAssessment:
    """What the study-level statement says."""

    target: Code
    verdict: Verdict
    reason: str
    probability: float | None
    measurements: tuple[Measurement, ...]


def _study_level_assessment(report: hd.sr.MeasurementReport) -> _StudyLevelAssessment:
    """The study-level statement: the CODE item with a CID 240 value in the row 12 Qualitative
    Evaluations container (with its comment and NUM properties), or, in SRs radrouter wrote
    before 2026-12, in a TID 1501 measurement group."""
    for container in _children(report, name=codes.QUALITATIVE_EVALUATIONS, value_type=_CONTAINER):
        statement = _stated_verdict([container], properties_of_item=True)
        if statement is not None:
            return statement
    for group in report.get_image_measurement_groups():
        statement = _stated_verdict(group, properties_of_item=False)
        if statement is not None:
            return statement
    raise ValueError(
        "read_measurement_report: no study-level statement: the target Present, Absent or "
        "Undetermined (CID 240)"
    )


def _stated_verdict(
    parent: Sequence[pydicom.Dataset], *, properties_of_item: bool
) -> _StudyLevelAssessment | None:
    """The verdict CODE item among the children of ``parent``, with the comment, certainty and
    measurements that are its properties (``properties_of_item``: its own children, as in the
    row 12 statement) or its siblings (in a TID 1501 group)."""
    verdict_by_value = {
        (code.value, code.scheme_designator): verdict
        for verdict, code in codes.VERDICT_VALUES.items()
    }
    for item in _children(parent, value_type=_CODE):
        value = item.ConceptCodeSequence[0]
        verdict = verdict_by_value.get((value.CodeValue, value.CodingSchemeDesignator))
        if verdict is None:
            continue
        holder = [item] if properties_of_item else parent
        probability, measurements = _measurements(holder)
        return _StudyLevelAssessment(
            target=codes.to_contract_code(item.ConceptNameCodeSequence[0]),
            verdict=verdict,
            reason=" ".join(_texts(holder, codes.COMMENT)),
            probability=probability,
            measurements=measurements,
        )
    return None


def _finding(
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
    volumetric: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | None,
) -> FindingSummary:
    tracking_id = group.tracking_identifier
    tracking_uid = group.tracking_uid
    finding_type = group.finding_type
    region = group.roi
    if tracking_id is None or tracking_uid is None or finding_type is None:
        raise ValueError(
            "read_measurement_report: a TID 1410 group lacks its tracking identifier, "
            "tracking UID or finding type"
        )
    if not isinstance(region, hd.sr.ImageRegion):
        raise ValueError(f"read_measurement_report: group {tracking_id!r} has no SCOORD region")
    source = region.ContentSequence[0].ReferencedSOPSequence[0]
    frames = source.get("ReferencedFrameNumber")
    probability, measurements = _measurements(group)
    segment = None
    if volumetric is not None:
        segment = _segment_reference(volumetric)
        measurements += _measurements(volumetric)[1]
    sites = group.finding_sites
    return FindingSummary(
        tracking_id=tracking_id,
        tracking_uid=str(tracking_uid),
        finding_type=codes.to_contract_code(finding_type),
        finding_site=codes.to_contract_code(sites[0].value) if sites else None,
        probability=probability,
        measurements=measurements,
        referenced_sop_class_uid=str(source.ReferencedSOPClassUID),
        referenced_sop_instance_uid=str(source.ReferencedSOPInstanceUID),
        referenced_frame_number=None if frames is None else int(frames),
        points=tuple((float(c), float(r)) for c, r in region.value),
        qualifiers=tuple(
            Qualifier(
                name=codes.to_contract_code(evaluation.name),
                # highdicom types QualitativeEvaluation.value as a number; read the code.
                value=codes.to_contract_code(
                    hd.sr.CodedConcept.from_dataset(evaluation[0].ConceptCodeSequence[0])
                ),
            )
            for evaluation in group.get_qualitative_evaluations()
        ),
        segment=segment,
    )


def _measurements(
    group: Sequence[pydicom.Dataset],
) -> tuple[float | None, tuple[Measurement, ...]]:
    """The certainty of finding of a group as a probability, and its other measurements."""
    probability: float | None = None
    measurements: list[Measurement] = []
    for item in _children(group, value_type=_NUM):
        m = hd.sr.NumContentItem.from_dataset(item)
        if codes.same_concept(m.name, codes.CERTAINTY_OF_FINDING):
            probability = float(m.value) / codes.PERCENT_PER_PROBABILITY
        else:
            measurements.append(
                Measurement(
                    name=codes.to_contract_code(m.name),
                    value=float(m.value),
                    unit=codes.to_contract_code(m.unit),
                )
            )
    return probability, tuple(measurements)


def _segment_reference(
    group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations,
) -> SegmentReference:
    referenced = group.referenced_segment
    if referenced is None:
        raise ValueError(
            f"read_measurement_report: volumetric group {group.tracking_identifier!r} "
            "references no segment"
        )
    numbers = referenced.referenced_segment_numbers or []
    if len(numbers) != 1:
        raise ValueError(
            f"read_measurement_report: volumetric group {group.tracking_identifier!r} must "
            f"reference one segment, references {numbers}"
        )
    series = referenced.source_series_for_segmentation
    return SegmentReference(
        sop_class_uid=str(referenced.referenced_sop_class_uid),
        sop_instance_uid=str(referenced.referenced_sop_instance_uid),
        segment_number=int(numbers[0]),
        source_series_instance_uid=None if series is None else str(series.value),
    )


def _references(sequence: Sequence[pydicom.Dataset]) -> tuple[InstanceReference, ...]:
    """Hierarchical SOP Instance References (evidence sequences) as ``InstanceReference``."""
    return tuple(
        InstanceReference(
            study_instance_uid=str(study.StudyInstanceUID),
            series_instance_uid=str(series.SeriesInstanceUID),
            sop_class_uid=str(instance.ReferencedSOPClassUID),
            sop_instance_uid=str(instance.ReferencedSOPInstanceUID),
        )
        for study in sequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    )


def _algorithm(ds: pydicom.Dataset, report: hd.sr.MeasurementReport) -> tuple[str, str]:
    """(name, version) of the algorithm: the device observer's name and the software version
    of the Contributing Equipment item with the IHE "Processing Algorithm" purpose; in an SR
    written before 2026-12, TID 4019 of the study-level group."""
    version = next(
        (
            str(item.SoftwareVersions)
            for item in ds.get("ContributingEquipmentSequence", [])
            if "SoftwareVersions" in item
            and any(
                code.CodeValue == codes.IHE_PROCESSING_ALGORITHM.value
                and code.CodingSchemeDesignator == codes.IHE_PROCESSING_ALGORITHM.scheme_designator
                for code in item.get("PurposeOfReferenceCodeSequence", [])
            )
        ),
        None,
    )
    names = [
        str(item.TextValue)
        for context in report.get_observer_contexts(observer_type=codes.DEVICE_OBSERVER)
        for item in context
        if codes.same_concept(item.name, codes.DEVICE_OBSERVER_NAME)
    ]
    if version is not None and names:
        return names[0], version
    for group in report.get_image_measurement_groups():
        found = _algorithm_identification(group)
        if found is not None:
            return found
    raise ValueError(
        "read_measurement_report: the algorithm is not named (device observer name and "
        "Contributing Equipment software version, or TID 4019)"
    )


def _algorithm_if_named(ds: pydicom.Dataset, report: hd.sr.MeasurementReport) -> tuple[str, str]:
    """``_algorithm``, or ("", "") for a report that does not name it (a vendor's, whose
    algorithm radrouter names from its declaration)."""
    try:
        return _algorithm(ds, report)
    except ValueError:
        return "", ""


def _algorithm_identification(group: Sequence[pydicom.Dataset]) -> tuple[str, str] | None:
    """TID 4019 (name, version) of a group, if it has them."""
    names = _texts(group, codes.ALGORITHM_NAME)
    versions = _texts(group, codes.ALGORITHM_VERSION)
    if not names or not versions:
        return None
    return names[0], versions[0]


def _document_statements(report: hd.sr.MeasurementReport) -> tuple[str, ...]:
    """TEXT comments in the TID 1500 row 12 "Qualitative Evaluations" container."""
    return tuple(
        text
        for container in _children(
            report, name=codes.QUALITATIVE_EVALUATIONS, value_type=_CONTAINER
        )
        for text in _texts([container], codes.COMMENT)
    )


def _texts(group: Sequence[pydicom.Dataset], name: DicomCode) -> list[str]:
    return [str(item.TextValue) for item in _children(group, name=name, value_type=_TEXT)]


def _children(
    group: Sequence[pydicom.Dataset],
    *,
    value_type: hd.sr.ValueTypeValues,
    name: DicomCode | None = None,
) -> list[pydicom.Dataset]:
    """Direct children of the single root item of ``group`` (a template content sequence)."""
    if "ContentSequence" not in group[0]:
        return []
    return hd.sr.utils.find_content_items(group[0], name=name, value_type=value_type)
