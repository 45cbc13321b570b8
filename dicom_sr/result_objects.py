"""One entry point for the router: a result as its SR, SEG and KOS, each with its identity."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pydicom
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from algorithms.contract import AlgorithmInfo, AlgorithmResult, Code, Verdict, VolumeGeometry
from algorithms.finding_words import KeyImage
from dicom_sr.context import InstanceReference, ResultVersion, SourceImage, StudyContext
from dicom_sr.header import result_datetime
from dicom_sr.identity import ObjectKind, result_object_identity
from dicom_sr.kos import build_key_object_selection
from dicom_sr.presentation_state import build_presentation_state, has_findings
from dicom_sr.seg import FloatVolume, build_segmentation, has_masks
from dicom_sr.summary_image import RgbImage, build_summary_image
from dicom_sr.tid1500 import build_measurement_report

LOGGER = logging.getLogger(__name__)

_KIND_OF_SOP_CLASS: dict[str, ObjectKind] = {
    Comprehensive3DSRStorage: ObjectKind.SR,
    SegmentationStorage: ObjectKind.SEG,
    KeyObjectSelectionDocumentStorage: ObjectKind.KOS,
    GrayscaleSoftcopyPresentationStateStorage: ObjectKind.GSPS,
    SecondaryCaptureImageStorage: ObjectKind.SC,
}


@dataclass(frozen=True)
class SummaryPicture:
    """The key image of a summary: the source header, its 0-based frame, that frame rendered
    (rows, columns, 3 uint8 RGB) with the outlines drawn, and each finding's image in words."""

    key_image: pydicom.Dataset
    frame_index: int
    rendered: RgbImage
    finding_images: tuple[KeyImage | None, ...] = ()


@dataclass(frozen=True, eq=False)
class ResultObject:
    """One object written for a result: its kind and the data set (a highdicom SOP instance)."""

    kind: ObjectKind
    dataset: pydicom.Dataset

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)

    @property
    def series_number(self) -> int:
        return int(self.dataset.SeriesNumber)

    def reference(self) -> InstanceReference:
        return InstanceReference(
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
        )


@dataclass(frozen=True, eq=False)
class ResultObjects:
    """Everything one result version is written as: always an SR; a SEG when findings carry
    masks; a KOS when the verdict is PRESENT with findings."""

    version: ResultVersion
    report: ResultObject
    segmentation: ResultObject | None = None
    key_object_selection: ResultObject | None = None
    presentation_state: ResultObject | None = None
    """A GSPS, when asked for and the result has findings."""
    summary_image: ResultObject | None = None
    """A secondary-capture summary, when asked for."""

    def all(self) -> tuple[ResultObject, ...]:
        """Every object, in the order to store and send them: SEG, then the SR that references
        it, then the KOS, the presentation state and the summary image."""
        return tuple(
            o
            for o in (
                self.segmentation,
                self.report,
                self.key_object_selection,
                self.presentation_state,
                self.summary_image,
            )
            if o is not None
        )

    def successor_version(self) -> ResultVersion:
        """The version a re-run writes after this one, naming these objects as predecessors."""
        return successor_version(self.version.number, (o.reference() for o in self.all()))


def successor_version(number: int, written: Iterable[InstanceReference]) -> ResultVersion:
    """The version after version ``number`` whose objects were ``written`` (SR, SEG, KOS).

    For a router that keeps the references of what it wrote (e.g. in its database) rather
    than the ``ResultObjects``.
    """
    by_kind: dict[ObjectKind, InstanceReference] = {}
    for reference in written:
        kind = _KIND_OF_SOP_CLASS.get(reference.sop_class_uid)
        if kind is None:
            raise ValueError(
                f"successor_version: written names SOP class {reference.sop_class_uid}, "
                "not an SR, SEG or KOS"
            )
        if kind in by_kind:
            raise ValueError(f"successor_version: written names two {kind.value} objects")
        by_kind[kind] = reference
    report = by_kind.get(ObjectKind.SR)
    if report is None:
        raise ValueError("successor_version: written must name the SR of the earlier version")
    return ResultVersion(
        number=number + 1,
        predecessor_sop_instance_uid=report.sop_instance_uid,
        predecessor_series_instance_uid=report.series_instance_uid,
        predecessor_segmentation=by_kind.get(ObjectKind.SEG),
        predecessor_key_object_selection=by_kind.get(ObjectKind.KOS),
    )


def build_result_objects(
    *,
    result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: Sequence[SourceImage],
    study: StudyContext,
    version: ResultVersion,
    source_headers: Sequence[pydicom.Dataset] = (),
    geometry: VolumeGeometry | None = None,
    prior_evidence: Sequence[InstanceReference] = (),
    tracking_uids: Mapping[str, str] | None = None,
    probability_maps: Mapping[str, FloatVolume] | None = None,
    seg_transfer_syntax_uid: str = ExplicitVRLittleEndian,
    institution_name: str | None = None,
    device_serial_number: str | None = None,
    procedure_reported: Code | None = None,
    content_datetime: datetime.datetime | None = None,
    presentation_kinds: frozenset[ObjectKind] = frozenset(),
    summary_picture: SummaryPicture | None = None,
) -> ResultObjects:
    """Build every object of one result version, in the source study, each in its own series.

    - SEG (``build_segmentation``) when any finding has a mask: needs ``source_headers`` (the
      headers of the source instances, pixel data not needed) and ``geometry`` (the volume's,
      for segment volumes the finding does not state);
    - SR (``build_measurement_report``), always, referencing the SEG's segments;
    - KOS (``build_key_object_selection``) when the verdict is PRESENT with findings.

    UIDs and series numbers come from ``result_object_identity`` (study, algorithm, algorithm
    version, result version, kind), so rebuilding a version gives the same UIDs.
    ``tracking_uids`` (tracking identifier -> UID of a finding carried over from a prior exam)
    and ``prior_evidence`` (instances of the prior exam) make a follow-up result.
    ``content_datetime`` (default now) is when the result was made: every object carries it as
    Series Date/Time and Content Date/Time, and names it as its Contribution DateTime.
    ``presentation_kinds`` asks for a GSPS (written when the result has findings) and a
    summary image (always; with ``summary_picture`` as its key image for a positive result,
    else a text page), for destinations whose viewers show neither SEG nor SR.
    """
    made = result_datetime(content_datetime)
    study_uid = study.study_instance_uid

    def identity(kind: ObjectKind) -> tuple[str, str, int]:
        found = result_object_identity(
            study_instance_uid=study_uid,
            algorithm_name=info.name,
            algorithm_version=info.version,
            version_number=version.number,
            kind=kind,
        )
        return found.series_instance_uid, found.sop_instance_uid, found.series_number

    segmentation = None
    if has_masks(result):
        if not source_headers:
            raise ValueError(
                "build_result_objects: source_headers must be given when findings carry masks"
            )
        series_uid, sop_uid, series_number = identity(ObjectKind.SEG)
        segmentation = build_segmentation(
            result=result,
            info=info,
            source_images=source_images,
            source_headers=source_headers,
            study=study,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            series_number=series_number,
            version=version,
            tracking_uids=tracking_uids,
            probability_maps=probability_maps,
            transfer_syntax_uid=seg_transfer_syntax_uid,
            device_serial_number=device_serial_number,
            institution_name=institution_name,
            content_datetime=made,
        )
    series_uid, sop_uid, series_number = identity(ObjectKind.SR)
    report = build_measurement_report(
        result=result,
        info=info,
        source_images=source_images,
        study=study,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        series_number=series_number,
        version=version,
        institution_name=institution_name,
        device_serial_number=device_serial_number,
        procedure_reported=procedure_reported,
        segmentation=segmentation,
        geometry=geometry,
        tracking_uids=tracking_uids,
        prior_evidence=prior_evidence,
        content_datetime=made,
    )
    key_objects = None
    if result.verdict is Verdict.PRESENT and result.findings:
        series_uid, sop_uid, series_number = identity(ObjectKind.KOS)
        key_objects = build_key_object_selection(
            result=result,
            info=info,
            source_images=source_images,
            study=study,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            series_number=series_number,
            version=version,
            device_serial_number=device_serial_number,
            institution_name=institution_name,
            content_datetime=made,
        )
    presentation_state = None
    if ObjectKind.GSPS in presentation_kinds and has_findings(result):
        series_uid, sop_uid, series_number = identity(ObjectKind.GSPS)
        presentation_state = build_presentation_state(
            result=result,
            info=info,
            source_images=source_images,
            source_headers=source_headers,
            study=study,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            series_number=series_number,
            version=version,
            tracking_uids=tracking_uids,
            device_serial_number=device_serial_number,
            institution_name=institution_name,
            content_datetime=made,
        )
    summary = None
    if ObjectKind.SC in presentation_kinds:
        series_uid, sop_uid, series_number = identity(ObjectKind.SC)
        picture = summary_picture if result.verdict is Verdict.PRESENT else None
        summary = build_summary_image(
            result=result,
            info=info,
            study=study,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            series_number=series_number,
            version=version,
            key_image=None if picture is None else picture.key_image,
            key_frame_index=0 if picture is None else picture.frame_index,
            rendered_key_image=None if picture is None else picture.rendered,
            finding_images=() if picture is None else picture.finding_images,
            device_serial_number=device_serial_number,
            institution_name=institution_name,
            content_datetime=made,
        )
    objects = ResultObjects(
        version=version,
        report=ResultObject(ObjectKind.SR, report),
        segmentation=None if segmentation is None else ResultObject(ObjectKind.SEG, segmentation),
        key_object_selection=(
            None if key_objects is None else ResultObject(ObjectKind.KOS, key_objects)
        ),
        presentation_state=(
            None
            if presentation_state is None
            else ResultObject(ObjectKind.GSPS, presentation_state)
        ),
        summary_image=None if summary is None else ResultObject(ObjectKind.SC, summary),
    )
    LOGGER.debug(
        "result version %d of %s %s: %s",
        version.number,
        info.name,
        info.version,
        ", ".join(o.kind.value for o in objects.all()),
    )
    return objects
