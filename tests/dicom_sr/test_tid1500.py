"""TID 1500 Measurement Report writer: valid DICOM, and everything it states reads back."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedCTImageStorage

from algorithms import codes as finding_codes
from algorithms.contract import AlgorithmInfo, AlgorithmResult, Finding, Verdict
from dicom_sr import codes
from dicom_sr.read import read_measurement_report
from dicom_sr.tid1500 import (
    AI_NOT_VERIFIED_STATEMENT,
    NOT_FOR_CLINICAL_USE_STATEMENT,
    ResultVersion,
    SourceImage,
    StudyContext,
    build_measurement_report,
    series_description,
)
from dicom_sr.uids import derive_uid
from testing.dicom_tools import run_dciodvfy
from tests.dicom_sr.support import (
    ACCEPTED_DCIODVFY_WARNINGS,
    BuildReport,
    WriteReport,
    square_region,
)

VERDICTS = [Verdict.PRESENT, Verdict.ABSENT, Verdict.NOT_ASSESSED]


def read_back(path: Path) -> hd.sr.Comprehensive3DSR:
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    return sr


def measurement_report(sr: pydicom.Dataset) -> hd.sr.MeasurementReport:
    """The TID 1500 content of an SR, built in memory or read from a file, as highdicom types."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


@pytest.mark.parametrize("verdict", VERDICTS, ids=lambda v: v.value)
def test_report_passes_dciodvfy_without_errors(
    verdict: Verdict,
    results: dict[Verdict, AlgorithmResult],
    build_report: BuildReport,
    write_report: WriteReport,
) -> None:
    report = run_dciodvfy(write_report(build_report(results[verdict])))

    assert report.errors == [], report.output
    assert set(report.warnings) <= ACCEPTED_DCIODVFY_WARNINGS, report.output


@pytest.mark.parametrize("verdict", VERDICTS, ids=lambda v: v.value)
def test_report_reads_back_as_tid_1500_with_the_stated_verdict(
    verdict: Verdict,
    results: dict[Verdict, AlgorithmResult],
    build_report: BuildReport,
    write_report: WriteReport,
    info: AlgorithmInfo,
) -> None:
    sr = read_back(write_report(build_report(results[verdict])))
    statement = study_level_statement(sr)

    assert measurement_report(sr).get_image_measurement_groups() == []
    assert statement.name == codes.to_coded_concept(info.target)
    assert statement.value == codes.VERDICT_VALUES[verdict]
    assert read_measurement_report(sr).verdict is verdict


def study_level_statement(sr: pydicom.Dataset) -> hd.sr.CodeContentItem:
    """The CODE item of the row 12 Qualitative Evaluations container with a CID 240 value."""
    (container,) = hd.sr.utils.find_content_items(
        measurement_report(sr)[0], name=codes.QUALITATIVE_EVALUATIONS
    )
    (item,) = hd.sr.utils.find_content_items(container, value_type=hd.sr.ValueTypeValues.CODE)
    return hd.sr.CodeContentItem.from_dataset(item)


@pytest.mark.parametrize("verdict", VERDICTS, ids=lambda v: v.value)
def test_every_measurement_group_has_image_coordinates_as_ohif_needs(
    verdict: Verdict,
    masked_result: AlgorithmResult,
    results: dict[Verdict, AlgorithmResult],
    build_report: BuildReport,
) -> None:
    """OHIF merges the groups of one tracking UID and takes each for a measurement drawn on
    an image: its SR view fails on one without SCOORD (docs/viewing-results.md)."""
    result = masked_result if verdict is Verdict.PRESENT else results[verdict]
    sr = build_report(result)
    report = measurement_report(sr)
    containers = hd.sr.utils.find_content_items(
        report[0], name=codes.IMAGING_MEASUREMENTS, value_type=hd.sr.ValueTypeValues.CONTAINER
    )
    by_tracking: dict[str, list[pydicom.Dataset]] = {}
    for container in containers:
        for group in container.ContentSequence:
            items = list(group.ContentSequence)
            (uid,) = [i.UID for i in items if i.ConceptNameCodeSequence[0].CodeValue == "112040"]
            by_tracking.setdefault(str(uid), []).extend(items)

    assert len(by_tracking) == len(result.findings)
    for items in by_tracking.values():
        assert any(item.ValueType == "SCOORD" for item in items)


def test_present_report_has_one_planar_roi_group_per_finding(
    present_result: AlgorithmResult, build_report: BuildReport, write_report: WriteReport
) -> None:
    sr = read_back(write_report(build_report(present_result)))
    groups = measurement_report(sr).get_planar_roi_measurement_groups()

    assert len(groups) == len(present_result.findings)
    assert [g.tracking_identifier for g in groups] == ["Nodule 1", "Nodule 2"]
    assert all(g.finding_type == codes.to_coded_concept(finding_codes.LUNG_NODULE) for g in groups)
    assert all(
        [site.value for site in g.finding_sites] == [codes.to_coded_concept(finding_codes.LUNG)]
        for g in groups
    )


def test_present_report_round_trips_measurements_and_probability(
    present_result: AlgorithmResult, build_report: BuildReport, write_report: WriteReport
) -> None:
    summary = read_measurement_report(pydicom.dcmread(write_report(build_report(present_result))))

    assert [f.tracking_id for f in summary.findings] == ["Nodule 1", "Nodule 2"]
    assert [f.long_axis_mm for f in summary.findings] == pytest.approx([8.4, 4.9])
    assert summary.findings[0].volume_mm3 == pytest.approx(212.5)
    assert summary.findings[1].volume_mm3 is None
    assert [f.probability for f in summary.findings] == pytest.approx([0.87, 0.41])
    assert [f.measurements for f in summary.findings] == [
        f.measurements for f in present_result.findings
    ]


def test_probability_is_written_as_certainty_of_finding_in_percent(
    present_result: AlgorithmResult, build_report: BuildReport
) -> None:
    group = measurement_report(build_report(present_result)).get_planar_roi_measurement_groups()[0]

    (certainty,) = group.get_measurements(name=codes.CERTAINTY_OF_FINDING)
    assert certainty.unit == codes.to_coded_concept(codes.PERCENT)
    assert certainty.value == pytest.approx(87.0)


def test_finding_region_is_a_polyline_on_its_source_slice(
    present_result: AlgorithmResult,
    build_report: BuildReport,
    write_report: WriteReport,
    source_images: list[SourceImage],
) -> None:
    sr = read_back(write_report(build_report(present_result)))
    groups = measurement_report(sr).get_planar_roi_measurement_groups()
    summary = read_measurement_report(sr)

    for group, found, finding in zip(
        groups, summary.findings, present_result.findings, strict=True
    ):
        source = source_images[finding.region.slice_index]
        assert isinstance(group.roi, hd.sr.ImageRegion)
        assert group.roi.graphic_type is hd.sr.GraphicTypeValues.POLYLINE
        assert group.roi.ContentSequence[0].referenced_sop_instance_uid == source.sop_instance_uid
        assert found.referenced_sop_instance_uid == source.sop_instance_uid
        assert found.referenced_sop_class_uid == source.sop_class_uid
        assert np.allclose(found.points, finding.region.points)


def test_absent_report_states_absent_without_planar_roi_groups(
    absent_result: AlgorithmResult, build_report: BuildReport
) -> None:
    sr = build_report(absent_result)
    summary = read_measurement_report(sr)

    assert measurement_report(sr).get_planar_roi_measurement_groups() == []
    assert summary.verdict is Verdict.ABSENT
    assert summary.findings == ()
    assert sr.CompletionFlag == "COMPLETE"


def test_not_assessed_report_is_partial_and_gives_the_reason(
    not_assessed_result: AlgorithmResult, build_report: BuildReport
) -> None:
    sr = build_report(not_assessed_result)
    summary = read_measurement_report(sr)

    assert summary.verdict is Verdict.NOT_ASSESSED
    assert summary.reason == not_assessed_result.reason
    assert sr.CompletionFlag == "PARTIAL"


@pytest.mark.parametrize("verdict", VERDICTS, ids=lambda v: v.value)
def test_every_measurement_group_identifies_algorithm_name_and_version(
    verdict: Verdict,
    results: dict[Verdict, AlgorithmResult],
    build_report: BuildReport,
    info: AlgorithmInfo,
) -> None:
    report = measurement_report(build_report(results[verdict]))
    groups = [
        *report.get_image_measurement_groups(),
        *report.get_planar_roi_measurement_groups(),
    ]

    for group in groups:
        names = hd.sr.utils.find_content_items(group[0], name=codes.ALGORITHM_NAME)
        versions = hd.sr.utils.find_content_items(group[0], name=codes.ALGORITHM_VERSION)
        assert [item.TextValue for item in names] == [info.name]
        assert [item.TextValue for item in versions] == [info.version]
    summary = read_measurement_report(build_report(results[verdict]))
    assert (summary.algorithm_name, summary.algorithm_version) == (info.name, info.version)


def test_device_observer_is_the_algorithm(
    present_result: AlgorithmResult, build_report: BuildReport, info: AlgorithmInfo
) -> None:
    (observer,) = measurement_report(build_report(present_result)).get_observer_contexts(
        observer_type=codes.DEVICE_OBSERVER
    )
    device = observer.observer_identifying_attributes

    assert isinstance(device, hd.sr.DeviceObserverIdentifyingAttributes)
    assert device.uid == info.device_uid
    assert device.name == info.name
    assert device.manufacturer_name == info.manufacturer
    assert device.model_name == info.display_name


def test_series_description_says_ai_not_verified_and_names_algorithm_and_version(
    absent_result: AlgorithmResult, build_report: BuildReport, info: AlgorithmInfo
) -> None:
    description = build_report(absent_result).SeriesDescription

    assert "AI" in description
    assert "NOT VERIFIED" in description
    assert f"{info.name} {info.version}" in description
    assert len(description) <= 64


@pytest.mark.parametrize("clinical_use", [False, True])
def test_series_description_fits_64_characters_for_a_long_algorithm_name(
    info: AlgorithmInfo, clinical_use: bool
) -> None:
    long_info = replace(info, name="a_very_long_algorithm_name_" * 3, clinical_use=clinical_use)

    description = series_description(long_info)

    assert len(description) <= 64
    assert description.startswith("AI")
    assert "NOT VERIFIED" in description
    assert description.endswith(f" {info.version}")


def test_not_for_clinical_use_algorithm_says_so_in_document_and_series(
    absent_result: AlgorithmResult, build_report: BuildReport
) -> None:
    sr = build_report(absent_result)
    summary = read_measurement_report(sr)

    assert summary.statements == (AI_NOT_VERIFIED_STATEMENT, NOT_FOR_CLINICAL_USE_STATEMENT)
    assert "NOT FOR CLINICAL USE" in sr.SeriesDescription


def test_clinical_algorithm_report_does_not_say_not_for_clinical_use(
    absent_result: AlgorithmResult, build_report: BuildReport, info: AlgorithmInfo
) -> None:
    sr = build_report(absent_result, info=replace(info, clinical_use=True))

    assert read_measurement_report(sr).statements == (AI_NOT_VERIFIED_STATEMENT,)
    assert "CLINICAL" not in sr.SeriesDescription


def test_header_marks_report_unverified_and_written_by_radrouter(
    present_result: AlgorithmResult, build_report: BuildReport
) -> None:
    sr = build_report(present_result)

    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.Manufacturer == "radrouter"
    assert sr.Modality == "SR"
    assert sr.InstanceNumber == 1
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.ContentDate and sr.ContentTime


def test_report_goes_into_the_source_study_with_its_patient(
    absent_result: AlgorithmResult, build_report: BuildReport, ct_slices: list[pydicom.Dataset]
) -> None:
    sr = build_report(absent_result)
    source = ct_slices[0]

    assert read_measurement_report(sr).study_instance_uid == source.StudyInstanceUID
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        assert sr[keyword].value == source[keyword].value, keyword
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert "PixelData" not in sr


def test_evidence_references_every_source_image(
    absent_result: AlgorithmResult,
    build_report: BuildReport,
    source_images: list[SourceImage],
    study: StudyContext,
) -> None:
    evidence = build_report(absent_result).get_evidence(current_procedure_only=True)

    assert sorted(evidence) == sorted(
        (
            study.study_instance_uid,
            study.series_instance_uid,
            source.sop_instance_uid,
            source.sop_class_uid,
        )
        for source in source_images
    )


def test_contributing_equipment_names_the_algorithm_with_the_ihe_air_purpose(
    present_result: AlgorithmResult, build_report: BuildReport, info: AlgorithmInfo
) -> None:
    sequence = build_report(present_result).ContributingEquipmentSequence
    (algorithm,) = [
        item
        for item in sequence
        if codes.same_concept(
            item.PurposeOfReferenceCodeSequence[0], codes.IHE_PROCESSING_ALGORITHM
        )
    ]

    assert algorithm.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
    assert algorithm.Manufacturer == info.manufacturer
    assert algorithm.ManufacturerModelName == info.display_name
    assert algorithm.SoftwareVersions == info.version
    assert algorithm.DeviceUID == info.device_uid


def test_version_2_references_its_predecessor_and_keeps_tracking_uids(
    present_result: AlgorithmResult, build_report: BuildReport, write_report: WriteReport
) -> None:
    first = build_report(present_result)
    second = build_report(
        present_result,
        version=ResultVersion(
            number=2,
            predecessor_sop_instance_uid=first.SOPInstanceUID,
            predecessor_series_instance_uid=first.SeriesInstanceUID,
        ),
    )
    dciodvfy = run_dciodvfy(write_report(second))

    assert dciodvfy.errors == [], dciodvfy.output
    assert set(dciodvfy.warnings) <= ACCEPTED_DCIODVFY_WARNINGS, dciodvfy.output
    (study_item,) = second.PredecessorDocumentsSequence
    (series_item,) = study_item.ReferencedSeriesSequence
    (instance_item,) = series_item.ReferencedSOPSequence
    assert study_item.StudyInstanceUID == first.StudyInstanceUID
    assert series_item.SeriesInstanceUID == first.SeriesInstanceUID
    assert instance_item.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert instance_item.ReferencedSOPClassUID == first.SOPClassUID
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.InstanceNumber == 2
    assert read_measurement_report(second).predecessor_sop_instance_uids == (first.SOPInstanceUID,)
    assert [f.tracking_uid for f in read_measurement_report(second).findings] == [
        f.tracking_uid for f in read_measurement_report(first).findings
    ]
    assert "PredecessorDocumentsSequence" not in first


def test_rebuilding_the_same_result_version_gives_the_same_uids(
    present_result: AlgorithmResult, build_report: BuildReport
) -> None:
    first, again = build_report(present_result), build_report(present_result)

    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (
        first.SOPInstanceUID,
        first.SeriesInstanceUID,
    )
    assert read_measurement_report(again).findings == read_measurement_report(first).findings


def test_finding_without_tracking_id_is_named_after_its_type(
    present_result: AlgorithmResult, build_report: BuildReport
) -> None:
    unnamed = AlgorithmResult(
        verdict=Verdict.PRESENT,
        findings=tuple(replace(f, tracking_id="") for f in present_result.findings),
    )

    summary = read_measurement_report(build_report(unnamed))

    assert [f.tracking_id for f in summary.findings] == ["Nodule 1", "Nodule 2"]


def test_multiframe_source_is_referenced_by_frame_number(
    present_result: AlgorithmResult,
    build_report: BuildReport,
    write_report: WriteReport,
    study: StudyContext,
) -> None:
    enhanced_uid = derive_uid("test", "enhanced ct instance")
    frames = [
        SourceImage(EnhancedCTImageStorage, enhanced_uid, frame_number=k + 1) for k in range(6)
    ]

    sr = build_report(present_result, source_images=frames)
    summary = read_measurement_report(sr)
    dciodvfy = run_dciodvfy(write_report(sr))

    assert [f.referenced_frame_number for f in summary.findings] == [3, 5]
    assert {f.referenced_sop_instance_uid for f in summary.findings} == {enhanced_uid}
    assert sr.get_evidence() == [
        (study.study_instance_uid, study.series_instance_uid, enhanced_uid, EnhancedCTImageStorage)
    ]
    assert dciodvfy.errors == [], dciodvfy.output


def test_source_header_without_type_2_study_attributes_still_gives_a_valid_report(
    absent_result: AlgorithmResult,
    build_report: BuildReport,
    write_report: WriteReport,
    ct_slices: list[pydicom.Dataset],
) -> None:
    sparse = copy.deepcopy(ct_slices[0])
    for keyword in ("AccessionNumber", "ReferringPhysicianName", "StudyID", "PatientBirthDate"):
        delattr(sparse, keyword)

    sr = build_report(absent_result, study=StudyContext(sparse))
    dciodvfy = run_dciodvfy(write_report(sr))

    assert dciodvfy.errors == [], dciodvfy.output
    assert sr.AccessionNumber in ("", None)


def test_building_a_report_leaves_the_source_header_unchanged(
    absent_result: AlgorithmResult, build_report: BuildReport, ct_slices: list[pydicom.Dataset]
) -> None:
    header = ct_slices[0]
    before = (header.SOPInstanceUID, header.SOPClassUID, len(header), "PixelData" in header)

    build_report(absent_result, study=StudyContext(header))

    assert (header.SOPInstanceUID, header.SOPClassUID, len(header), "PixelData" in header) == (
        before
    )


def test_region_on_a_slice_outside_source_images_is_refused(
    present_result: AlgorithmResult, build_report: BuildReport, source_images: list[SourceImage]
) -> None:
    outside = replace(present_result.findings[0], region=square_region(len(source_images), 9, 9, 2))

    with pytest.raises(ValueError, match=r"findings\[0\]\.region\.slice_index"):
        build_report(AlgorithmResult(verdict=Verdict.PRESENT, findings=(outside,)))


def test_repeated_tracking_ids_are_refused(
    present_result: AlgorithmResult, build_report: BuildReport
) -> None:
    finding: Finding = present_result.findings[0]

    with pytest.raises(ValueError, match="tracking_id must be unique"):
        build_report(AlgorithmResult(verdict=Verdict.PRESENT, findings=(finding, finding)))


def test_empty_source_images_are_refused(
    absent_result: AlgorithmResult,
    info: AlgorithmInfo,
    study: StudyContext,
) -> None:
    with pytest.raises(ValueError, match="source_images must name at least one image"):
        build_measurement_report(
            result=absent_result,
            info=info,
            source_images=[],
            study=study,
            series_instance_uid=derive_uid("series"),
            sop_instance_uid=derive_uid("instance"),
            series_number=901,
            version=ResultVersion(number=1),
        )


@pytest.mark.parametrize(
    ("number", "sop_uid", "series_uid", "message"),
    [
        (0, None, None, "number must be >= 1"),
        (1, "1.2.3", "1.2.4", "version 1 has no predecessor"),
        (2, None, "1.2.4", "predecessor_sop_instance_uid must be the DICOM UID"),
        (2, "1.2.3", "1.02.4", "predecessor_series_instance_uid must be the DICOM UID"),
    ],
)
def test_result_version_refuses_inconsistent_predecessors(
    number: int, sop_uid: str | None, series_uid: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ResultVersion(number, sop_uid, series_uid)


def test_study_context_needs_study_and_series_uids(ct_slices: list[pydicom.Dataset]) -> None:
    header = copy.deepcopy(ct_slices[0])
    del header.SeriesInstanceUID

    with pytest.raises(ValueError, match=r"StudyContext\.dataset\.SeriesInstanceUID"):
        StudyContext(header)


def test_source_image_refuses_frame_zero() -> None:
    with pytest.raises(ValueError, match="frame_number must be >= 1"):
        SourceImage(EnhancedCTImageStorage, "1.2.3", frame_number=0)


def test_qualifiers_are_written_as_qualitative_evaluations_of_their_finding(
    masked_result: AlgorithmResult, build_report: BuildReport, write_report: WriteReport
) -> None:
    sr = read_back(write_report(build_report(masked_result)))
    summary = read_measurement_report(sr)
    group = measurement_report(sr).get_planar_roi_measurement_groups()[0]

    assert [f.qualifiers for f in summary.findings] == [
        f.qualifiers for f in masked_result.findings
    ]
    assert len(group.get_qualitative_evaluations()) == 1


def test_study_level_probability_and_measurements_are_properties_of_the_statement(
    masked_result: AlgorithmResult, build_report: BuildReport, write_report: WriteReport
) -> None:
    sr = read_back(write_report(build_report(masked_result)))
    statement = study_level_statement(sr)
    summary = read_measurement_report(sr)

    (certainty,) = hd.sr.utils.find_content_items(statement, name=codes.CERTAINTY_OF_FINDING)
    assert float(certainty.MeasuredValueSequence[0].NumericValue) == pytest.approx(97.0)
    assert summary.probability == pytest.approx(0.97)
    assert summary.measurements == masked_result.measurements


def test_result_without_study_level_probability_reads_back_none(
    present_result: AlgorithmResult, build_report: BuildReport
) -> None:
    summary = read_measurement_report(build_report(present_result))

    assert summary.probability is None
    assert summary.measurements == ()


def test_radiograph_boxes_are_planar_groups_on_the_single_image(
    radiograph: pydicom.Dataset,
    radiograph_info: AlgorithmInfo,
    radiograph_result: AlgorithmResult,
    build_report: BuildReport,
    write_report: WriteReport,
) -> None:
    source = SourceImage(radiograph.SOPClassUID, radiograph.SOPInstanceUID)

    sr = build_report(
        radiograph_result,
        info=radiograph_info,
        study=StudyContext(radiograph),
        source_images=[source],
    )
    path = write_report(sr)
    dciodvfy = run_dciodvfy(path)
    summary = read_measurement_report(pydicom.dcmread(path))

    assert dciodvfy.errors == [], dciodvfy.output
    assert set(dciodvfy.warnings) <= ACCEPTED_DCIODVFY_WARNINGS, dciodvfy.output
    assert [f.referenced_sop_instance_uid for f in summary.findings] == [
        radiograph.SOPInstanceUID
    ] * 2
    assert [f.referenced_frame_number for f in summary.findings] == [None, None]
    for found, finding in zip(summary.findings, radiograph_result.findings, strict=True):
        assert np.allclose(found.points, finding.region.points)
    assert [len(f.points) for f in summary.findings] == [5, 5]
    assert sr.StudyInstanceUID == radiograph.StudyInstanceUID
