"""Key Object Selection (KOS, TID 2010): the key images of a result's findings, "Of Interest"."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import highdicom as hd
import pydicom

from algorithms.contract import AlgorithmInfo, AlgorithmResult, Verdict
from dicom_sr import codes
from dicom_sr.context import ResultVersion, SourceImage, StudyContext
from dicom_sr.header import (
    MANUFACTURER,
    UTF8,
    algorithm_equipment,
    date_time_arguments,
    device_observer_context,
    document_statements,
    evidence,
    radrouter_version,
    result_datetime,
    series_description,
)
from dicom_sr.identity import check_object_identity
from dicom_sr.tracking import tracking_identifiers

_SOURCE = hd.sr.CodedConcept(value="260753009", scheme_designator="SCT", meaning="Source")
"""Concept name highdicom requires while it builds an IMAGE item; not written (TID 2010)."""

_REFERENCING_VALUE_TYPES = frozenset(
    value.value
    for value in (
        hd.sr.ValueTypeValues.IMAGE,
        hd.sr.ValueTypeValues.WAVEFORM,
        hd.sr.ValueTypeValues.COMPOSITE,
    )
)


def key_images(result: AlgorithmResult, source_images: Sequence[SourceImage]) -> list[SourceImage]:
    """The slice of each finding's region, in finding order, each slice once."""
    selected: list[SourceImage] = []
    for finding in result.findings:
        image = source_images[finding.region.slice_index]
        if image not in selected:
            selected.append(image)
    return selected


def build_key_object_selection(
    *,
    result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: Sequence[SourceImage],
    study: StudyContext,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    version: ResultVersion,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    content_datetime: datetime.datetime | None = None,
) -> hd.ko.KeyObjectSelectionDocument:
    """The key images of a PRESENT result as a Key Object Selection Document in its study.

    Title (113000, DCM, "Of Interest"); the algorithm as device observer; a Key Object
    Description naming the algorithm and version, saying the selection is AI-generated and
    not verified (and not for clinical use where that applies), and listing the findings; one
    IMAGE item per key image (with its frame for a multi-frame source), without a concept name:
    TID 2010 forbids a Purpose of Reference on them, so the title and the description say why
    the images are key. Series Description as the SR's, Contributing Equipment naming the
    algorithm, Instance Number = version, Series Date/Time and Content Date/Time
    ``content_datetime``, when the result was made (default now; ``header.result_datetime``).

    The KOS IOD has no Predecessor Documents Sequence: a later version names the KOS it
    replaces in one anyway, as a Standard Extended SOP Class (PS3.4 B.1.3; docs/results.md).
    """
    _check_arguments(
        result=result,
        source_images=source_images,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        version=version,
        study=study,
    )
    made = result_datetime(content_datetime)
    selected = key_images(result, source_images)
    evidence_items = evidence(study, selected)
    content = hd.ko.KeyObjectSelection(
        document_title=codes.OF_INTEREST,
        referenced_objects=evidence_items,
        observer_device_context=device_observer_context(info, device_serial_number),
        description=_description(result, info),
    )
    _image_items(content, selected)
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence_items,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=version.number,
        manufacturer=MANUFACTURER,
        institution_name=institution_name,
        contributing_equipment=[algorithm_equipment(info, device_serial_number, made)],
        series_description=series_description(info),
        manufacturer_model_name=MANUFACTURER,
        software_versions=radrouter_version(),
        specific_character_set=UTF8,
        **date_time_arguments(made),
    )
    _drop_purpose_of_reference(document)
    predecessor = version.predecessor_key_object_selection
    if predecessor is not None:
        document.PredecessorDocumentsSequence = _predecessor_documents(predecessor.as_dataset())
    return document


def _check_arguments(
    *,
    result: AlgorithmResult,
    source_images: Sequence[SourceImage],
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    version: ResultVersion,
    study: StudyContext,
) -> None:
    if result.verdict is not Verdict.PRESENT or not result.findings:
        raise ValueError(
            "build_key_object_selection: result must be PRESENT with findings "
            f"(verdict {result.verdict.value}, {len(result.findings)} finding(s))"
        )
    check_object_identity(
        "build_key_object_selection", series_instance_uid, sop_instance_uid, series_number
    )
    for index, finding in enumerate(result.findings):
        if not 0 <= finding.region.slice_index < len(source_images):
            raise ValueError(
                f"build_key_object_selection: result.findings[{index}].region.slice_index "
                f"{finding.region.slice_index} does not index source_images "
                f"(0..{len(source_images) - 1})"
            )
    predecessor = version.predecessor_key_object_selection
    if predecessor is not None:
        if predecessor.sop_instance_uid == sop_instance_uid:
            raise ValueError(
                "build_key_object_selection: sop_instance_uid must differ from "
                "version.predecessor_key_object_selection (a new version is a new instance)"
            )
        if predecessor.study_instance_uid != study.study_instance_uid:
            raise ValueError(
                "build_key_object_selection: version.predecessor_key_object_selection must be "
                "of the source study"
            )


def _description(result: AlgorithmResult, info: AlgorithmInfo) -> str:
    """Key Object Description: who selected the images, that it is unverified, and why."""
    findings = ", ".join(tracking_identifiers(result))
    return " ".join(
        [
            f"Key images selected by AI algorithm {info.display_name} "
            f"({info.name} {info.version}) for: {findings}.",
            *document_statements(info),
        ]
    )


def _image_items(content: hd.ko.KeyObjectSelection, selected: Sequence[SourceImage]) -> None:
    """Make every selected object an IMAGE item, with its key frames for a multi-frame source.

    highdicom's KeyObjectSelection makes an IMAGE item only for data sets with Rows and
    Columns and never names frames; the source images are images, so each reference is
    replaced by a highdicom IMAGE item (frames named for multi-frame sources). highdicom's
    content items and sequences need a concept name; ``_drop_purpose_of_reference`` removes it
    from the finished document.
    """
    frames: dict[str, list[int]] = {}
    for image in selected:
        if image.frame_number is not None:
            frames.setdefault(image.sop_instance_uid, []).append(image.frame_number)
    referencing = {hd.sr.ValueTypeValues.IMAGE.value, hd.sr.ValueTypeValues.COMPOSITE.value}
    items: list[hd.sr.ContentItem] = []
    for item in content[0].ContentSequence:
        if item.ValueType not in referencing:
            items.append(item)
            continue
        reference = item.ReferencedSOPSequence[0]
        numbers = frames.get(str(reference.ReferencedSOPInstanceUID))
        items.append(
            hd.sr.ImageContentItem(
                name=_SOURCE,
                referenced_sop_class_uid=str(reference.ReferencedSOPClassUID),
                referenced_sop_instance_uid=str(reference.ReferencedSOPInstanceUID),
                referenced_frame_numbers=None if numbers is None else sorted(numbers),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    content[0].ContentSequence = hd.sr.ContentSequence(items)


def _drop_purpose_of_reference(document: hd.ko.KeyObjectSelectionDocument) -> None:
    """Remove the concept name of every selected object's item in the written content.

    TID 2010 says "Purpose of Reference shall not be present" for the selected objects (the
    IMAGE items, row 8; WAVEFORM and COMPOSITE alike): the concept name of a referencing item
    is its purpose of reference, and PixelMed's validator rejects highdicom's SCT "Source" as
    one. dciodvfy accepts the items without a name. ``document.content`` (highdicom's copy,
    for reading) keeps the name, as highdicom's read path gives it back to an unnamed item.
    """
    for item in document.ContentSequence:
        if item.ValueType in _REFERENCING_VALUE_TYPES and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence


def _predecessor_documents(predecessor: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Predecessor Documents Sequence (Hierarchical SOP Instance Reference) of one document."""
    instance = pydicom.Dataset()
    instance.ReferencedSOPClassUID = predecessor.SOPClassUID
    instance.ReferencedSOPInstanceUID = predecessor.SOPInstanceUID
    series = pydicom.Dataset()
    series.SeriesInstanceUID = predecessor.SeriesInstanceUID
    series.ReferencedSOPSequence = [instance]
    study = pydicom.Dataset()
    study.StudyInstanceUID = predecessor.StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    return [study]
