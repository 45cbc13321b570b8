"""KOS writer: valid DICOM, the key image of each finding, said to be AI-selected, versions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import EnhancedCTImageStorage, KeyObjectSelectionDocumentStorage

from algorithms.contract import AlgorithmInfo, AlgorithmResult, Verdict
from dicom_sr import codes
from dicom_sr.context import InstanceReference, ResultVersion, SourceImage, StudyContext
from dicom_sr.header import AI_NOT_VERIFIED_STATEMENT, NOT_FOR_CLINICAL_USE_STATEMENT
from dicom_sr.kos import build_key_object_selection
from dicom_sr.read_kos import KeyImage, read_key_object_selection
from dicom_sr.uids import derive_uid
from tests.dicom_sr.support import (
    KOS_PREDECESSOR_DCIODVFY_WARNINGS,
    assert_valid_dicom,
    write_object,
)


def build(
    result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    version: ResultVersion | None = None,
) -> hd.ko.KeyObjectSelectionDocument:
    version = version or ResultVersion(1)
    return build_key_object_selection(
        result=result,
        info=info,
        source_images=source_images,
        study=study,
        series_instance_uid=derive_uid("test", "kos series"),
        sop_instance_uid=derive_uid("test", "kos", str(version.number)),
        series_number=9021,
        version=version,
    )


@pytest.fixture
def document(
    present_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
) -> hd.ko.KeyObjectSelectionDocument:
    return build(present_result, info, source_images, study)


def test_key_object_selection_passes_dciodvfy_without_errors(
    document: hd.ko.KeyObjectSelectionDocument, tmp_path: Path
) -> None:
    assert_valid_dicom(write_object(document, tmp_path))


def test_key_images_are_the_slices_of_the_findings(
    document: hd.ko.KeyObjectSelectionDocument,
    present_result: AlgorithmResult,
    source_images: list[SourceImage],
    tmp_path: Path,
) -> None:
    summary = read_key_object_selection(pydicom.dcmread(write_object(document, tmp_path)))

    assert summary.key_images == tuple(
        KeyImage(
            source_images[f.region.slice_index].sop_class_uid,
            source_images[f.region.slice_index].sop_instance_uid,
        )
        for f in present_result.findings
    )
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in document.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {image.sop_instance_uid for image in summary.key_images}


def test_findings_on_one_slice_select_it_once(
    present_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
) -> None:
    first, second = present_result.findings
    same_slice = replace(second, region=replace(second.region, slice_index=2))
    result = AlgorithmResult(Verdict.PRESENT, (first, same_slice))

    summary = read_key_object_selection(build(result, info, source_images, study))

    assert [image.sop_instance_uid for image in summary.key_images] == [
        source_images[2].sop_instance_uid
    ]


def test_title_is_of_interest_and_the_text_names_algorithm_and_says_unverified(
    document: hd.ko.KeyObjectSelectionDocument, info: AlgorithmInfo, tmp_path: Path
) -> None:
    summary = read_key_object_selection(pydicom.dcmread(write_object(document, tmp_path)))

    assert codes.same_concept(summary.title, codes.OF_INTEREST)
    assert f"{info.name} {info.version}" in summary.description
    assert info.display_name in summary.description
    assert AI_NOT_VERIFIED_STATEMENT in summary.description
    assert NOT_FOR_CLINICAL_USE_STATEMENT in summary.description
    assert "Nodule 1, Nodule 2" in summary.description
    assert summary.observer_device_uid == info.device_uid


def test_key_object_selection_is_in_the_source_study_in_its_own_series(
    document: hd.ko.KeyObjectSelectionDocument,
    ct_slices: list[pydicom.Dataset],
    info: AlgorithmInfo,
) -> None:
    source = ct_slices[0]

    assert document.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert document.Modality == "KO"
    assert document.StudyInstanceUID == source.StudyInstanceUID
    assert document.SeriesInstanceUID != source.SeriesInstanceUID
    assert document.PatientID == source.PatientID
    assert "NOT VERIFIED" in document.SeriesDescription
    assert f"{info.name} {info.version}" in document.SeriesDescription
    assert document.InstanceNumber == 1
    assert "PredecessorDocumentsSequence" not in document


def test_multiframe_key_images_name_their_frames(
    present_result: AlgorithmResult,
    info: AlgorithmInfo,
    study: StudyContext,
    tmp_path: Path,
) -> None:
    enhanced_uid = derive_uid("test", "enhanced ct instance")
    frames = [
        SourceImage(EnhancedCTImageStorage, enhanced_uid, frame_number=k + 1) for k in range(6)
    ]

    document = build(present_result, info, frames, study)
    path = write_object(document, tmp_path)

    assert_valid_dicom(path)
    assert read_key_object_selection(pydicom.dcmread(path)).key_images == (
        KeyImage(EnhancedCTImageStorage, enhanced_uid, (3, 5)),
    )


def test_version_2_names_the_key_object_selection_it_replaces(
    document: hd.ko.KeyObjectSelectionDocument,
    present_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    tmp_path: Path,
) -> None:
    earlier = InstanceReference(
        document.StudyInstanceUID,
        document.SeriesInstanceUID,
        document.SOPClassUID,
        document.SOPInstanceUID,
    )
    version = ResultVersion(
        2,
        predecessor_sop_instance_uid=derive_uid("test", "sr", "1"),
        predecessor_series_instance_uid=derive_uid("test", "sr series"),
        predecessor_key_object_selection=earlier,
    )

    second = build(present_result, info, source_images, study, version)
    path = write_object(second, tmp_path)
    summary = read_key_object_selection(pydicom.dcmread(path))

    assert_valid_dicom(path, KOS_PREDECESSOR_DCIODVFY_WARNINGS)
    assert summary.predecessor_sop_instance_uids == (earlier.sop_instance_uid,)
    assert summary.instance_number == 2
    assert summary.sop_instance_uid != earlier.sop_instance_uid


@pytest.mark.parametrize("verdict", [Verdict.ABSENT, Verdict.NOT_ASSESSED], ids=lambda v: v.value)
def test_result_without_findings_has_no_key_objects(
    verdict: Verdict,
    results: dict[Verdict, AlgorithmResult],
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
) -> None:
    with pytest.raises(ValueError, match="result must be PRESENT with findings"):
        build(results[verdict], info, source_images, study)
