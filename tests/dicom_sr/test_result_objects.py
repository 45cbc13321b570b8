"""The router's entry point: which objects a result becomes, versions, follow-ups, a real PACS."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import (
    Comprehensive3DSRStorage,
    CTImageStorage,
    KeyObjectSelectionDocumentStorage,
    SegmentationStorage,
)

from algorithms.contract import AlgorithmInfo, AlgorithmResult, Verdict
from dicom_sr.context import InstanceReference, ResultVersion, SourceImage, StudyContext
from dicom_sr.identity import ObjectKind
from dicom_sr.io import write_dataset
from dicom_sr.read import read_measurement_report
from dicom_sr.read_kos import read_key_object_selection
from dicom_sr.read_seg import read_segmentation
from dicom_sr.result_objects import ResultObjects, build_result_objects, successor_version
from dicom_sr.uids import derive_uid
from testing.orthanc import Orthanc
from tests.dicom_sr.support import (
    KOS_PREDECESSOR_DCIODVFY_WARNINGS,
    BuildObjects,
    assert_valid_dicom,
)

PRIOR_STUDY_UID = derive_uid("test", "prior study")
PRIOR_EVIDENCE = (
    InstanceReference(
        PRIOR_STUDY_UID, derive_uid("test", "prior series"), CTImageStorage, derive_uid("p", "1")
    ),
    InstanceReference(
        PRIOR_STUDY_UID, derive_uid("test", "prior series"), CTImageStorage, derive_uid("p", "2")
    ),
)


def write_all(objects: ResultObjects, folder: Path) -> dict[ObjectKind, Path]:
    """Write every object as the worker will (atomic Part-10 files), keyed by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        o.kind: write_dataset(o.dataset, folder / f"{o.sop_instance_uid}.dcm")
        for o in objects.all()
    }


def test_ct_with_three_masked_findings_gives_seg_sr_and_kos_that_pass_dciodvfy(
    masked_result: AlgorithmResult, build_objects: BuildObjects, tmp_path: Path
) -> None:
    objects = build_objects(masked_result)
    paths = write_all(objects, tmp_path)

    assert [o.kind for o in objects.all()] == [ObjectKind.SEG, ObjectKind.SR, ObjectKind.KOS]
    for path in paths.values():
        assert_valid_dicom(path)


def test_ct_objects_read_back_and_agree_with_each_other(
    masked_result: AlgorithmResult,
    build_objects: BuildObjects,
    study: StudyContext,
    tmp_path: Path,
) -> None:
    objects = build_objects(masked_result)
    paths = write_all(objects, tmp_path)

    sr = hd.sr.srread(paths[ObjectKind.SR])
    seg = hd.seg.segread(paths[ObjectKind.SEG])
    report = read_measurement_report(sr)
    segmentation = read_segmentation(seg)
    key_objects = read_key_object_selection(pydicom.dcmread(paths[ObjectKind.KOS]))

    assert report.verdict is Verdict.PRESENT
    assert [f.tracking_uid for f in report.findings] == [
        s.tracking_uid for s in segmentation.segments
    ]
    assert [f.segment.sop_instance_uid if f.segment else None for f in report.findings] == [
        seg.SOPInstanceUID
    ] * 3
    assert [k.sop_instance_uid for k in key_objects.key_images] == [
        f.referenced_sop_instance_uid for f in report.findings
    ]
    assert {report.study_instance_uid, segmentation.study_instance_uid} == {
        key_objects.study_instance_uid
    }
    series = {o.series_instance_uid for o in objects.all()}
    assert len(series) == 3
    assert study.series_instance_uid not in series


def test_series_numbers_put_sr_seg_and_kos_of_a_run_side_by_side(
    masked_result: AlgorithmResult, build_objects: BuildObjects
) -> None:
    objects = build_objects(masked_result)
    assert objects.segmentation is not None and objects.key_object_selection is not None

    numbers = [
        objects.report.series_number,
        objects.segmentation.series_number,
        objects.key_object_selection.series_number,
    ]

    assert numbers == [numbers[0], numbers[0] + 10, numbers[0] + 20]
    assert all(9000 <= n <= 9899 for n in numbers)


def test_radiograph_with_boxes_gives_sr_and_kos_without_seg(
    radiograph: pydicom.Dataset,
    radiograph_info: AlgorithmInfo,
    radiograph_result: AlgorithmResult,
    tmp_path: Path,
) -> None:
    objects = build_result_objects(
        result=radiograph_result,
        info=radiograph_info,
        source_images=[SourceImage(radiograph.SOPClassUID, radiograph.SOPInstanceUID)],
        study=StudyContext(radiograph),
        version=ResultVersion(1),
    )
    paths = write_all(objects, tmp_path)
    report = read_measurement_report(pydicom.dcmread(paths[ObjectKind.SR]))
    key_objects = read_key_object_selection(pydicom.dcmread(paths[ObjectKind.KOS]))

    assert objects.segmentation is None
    for path in paths.values():
        assert_valid_dicom(path)
    assert [len(f.points) for f in report.findings] == [5, 5]
    assert [k.sop_instance_uid for k in key_objects.key_images] == [radiograph.SOPInstanceUID]


@pytest.mark.parametrize("verdict", [Verdict.ABSENT, Verdict.NOT_ASSESSED], ids=lambda v: v.value)
def test_result_without_findings_is_an_sr_alone_that_states_the_verdict(
    verdict: Verdict,
    results: dict[Verdict, AlgorithmResult],
    build_objects: BuildObjects,
    tmp_path: Path,
) -> None:
    objects = build_objects(results[verdict])
    paths = write_all(objects, tmp_path)
    report = read_measurement_report(pydicom.dcmread(paths[ObjectKind.SR]))

    assert [o.kind for o in objects.all()] == [ObjectKind.SR]
    assert (objects.segmentation, objects.key_object_selection) == (None, None)
    assert_valid_dicom(paths[ObjectKind.SR])
    assert report.verdict is verdict
    assert report.findings == ()
    if verdict is Verdict.NOT_ASSESSED:
        assert report.reason == results[verdict].reason
        assert objects.report.dataset.CompletionFlag == "PARTIAL"


def test_version_2_objects_each_name_their_predecessor(
    masked_result: AlgorithmResult, build_objects: BuildObjects, tmp_path: Path
) -> None:
    first = build_objects(masked_result)
    second = build_objects(masked_result, version=first.successor_version())
    paths = write_all(second, tmp_path)
    assert first.segmentation is not None and first.key_object_selection is not None

    report = read_measurement_report(pydicom.dcmread(paths[ObjectKind.SR]))
    segmentation = read_segmentation(pydicom.dcmread(paths[ObjectKind.SEG]))
    key_objects = read_key_object_selection(pydicom.dcmread(paths[ObjectKind.KOS]))

    assert_valid_dicom(paths[ObjectKind.SR])
    assert_valid_dicom(paths[ObjectKind.SEG])
    assert_valid_dicom(paths[ObjectKind.KOS], KOS_PREDECESSOR_DCIODVFY_WARNINGS)
    assert report.predecessor_sop_instance_uids == (first.report.sop_instance_uid,)
    assert segmentation.predecessors == (first.segmentation.reference(),)
    assert key_objects.predecessor_sop_instance_uids == (
        first.key_object_selection.sop_instance_uid,
    )
    for earlier, later in zip(first.all(), second.all(), strict=True):
        assert later.sop_instance_uid != earlier.sop_instance_uid
        assert later.series_instance_uid != earlier.series_instance_uid
        assert later.series_number == earlier.series_number + 1
        assert later.dataset.InstanceNumber == 2
    assert [f.tracking_uid for f in report.findings] == [
        f.tracking_uid for f in read_measurement_report(first.report.dataset).findings
    ]


def test_successor_version_from_stored_references_matches_the_objects_own(
    masked_result: AlgorithmResult, build_objects: BuildObjects
) -> None:
    first = build_objects(masked_result)

    from_references = successor_version(1, [o.reference() for o in first.all()])

    assert from_references == first.successor_version()
    assert from_references.number == 2


def test_successor_version_needs_the_earlier_sr(
    masked_result: AlgorithmResult, build_objects: BuildObjects
) -> None:
    first = build_objects(masked_result)
    assert first.segmentation is not None

    with pytest.raises(ValueError, match="must name the SR of the earlier version"):
        successor_version(1, [first.segmentation.reference()])


def test_rebuilding_a_version_gives_the_same_uids(
    masked_result: AlgorithmResult, build_objects: BuildObjects
) -> None:
    first, again = build_objects(masked_result), build_objects(masked_result)

    assert [(o.series_instance_uid, o.sop_instance_uid) for o in first.all()] == [
        (o.series_instance_uid, o.sop_instance_uid) for o in again.all()
    ]


def test_follow_up_reuses_carried_over_tracking_uids_in_sr_and_seg_and_cites_the_prior(
    masked_result: AlgorithmResult,
    build_objects: BuildObjects,
    tmp_path: Path,
) -> None:
    carried_over = {"Nodule 1": derive_uid("prior result", "Nodule 1")}

    objects = build_objects(
        masked_result, tracking_uids=carried_over, prior_evidence=PRIOR_EVIDENCE
    )
    paths = write_all(objects, tmp_path)
    report = read_measurement_report(pydicom.dcmread(paths[ObjectKind.SR]))
    segmentation = read_segmentation(pydicom.dcmread(paths[ObjectKind.SEG]))
    fresh = read_measurement_report(build_objects(masked_result).report.dataset)

    for path in paths.values():
        assert_valid_dicom(path)
    assert report.findings[0].tracking_uid == carried_over["Nodule 1"]
    assert segmentation.segments[0].tracking_uid == carried_over["Nodule 1"]
    assert [f.tracking_uid for f in report.findings[1:]] == [
        f.tracking_uid for f in fresh.findings[1:]
    ]
    assert report.prior_evidence == PRIOR_EVIDENCE
    current = objects.report.dataset.get_evidence(current_procedure_only=True)
    assert PRIOR_STUDY_UID not in {study_uid for study_uid, *_ in current}


def test_prior_evidence_from_the_current_study_is_refused(
    masked_result: AlgorithmResult, build_objects: BuildObjects, study: StudyContext
) -> None:
    same_study = InstanceReference(
        study.study_instance_uid, study.series_instance_uid, CTImageStorage, derive_uid("x")
    )

    with pytest.raises(ValueError, match=r"prior_evidence\[0\] is of the current study"):
        build_objects(masked_result, prior_evidence=[same_study])


def test_one_tracking_uid_for_two_findings_is_refused(
    masked_result: AlgorithmResult, build_objects: BuildObjects
) -> None:
    shared = derive_uid("prior result", "Nodule 1")

    with pytest.raises(ValueError, match="one tracking UID to several findings"):
        build_objects(masked_result, tracking_uids={"Nodule 1": shared, "Nodule 2": shared})


def test_masks_without_source_headers_are_refused(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
) -> None:
    with pytest.raises(ValueError, match="source_headers must be given when findings carry"):
        build_result_objects(
            result=masked_result,
            info=info,
            source_images=source_images,
            study=study,
            version=ResultVersion(1),
        )


@pytest.mark.slow
def test_a_real_pacs_stores_every_object_in_the_source_study(
    orthanc: Orthanc,
    masked_result: AlgorithmResult,
    build_objects: BuildObjects,
    ct_slices: list[pydicom.Dataset],
    radiograph: pydicom.Dataset,
    radiograph_info: AlgorithmInfo,
    radiograph_result: AlgorithmResult,
    tmp_path: Path,
) -> None:
    first = build_objects(masked_result)
    second = build_objects(masked_result, version=first.successor_version())
    radiograph_objects = build_result_objects(
        result=radiograph_result,
        info=radiograph_info,
        source_images=[SourceImage(radiograph.SOPClassUID, radiograph.SOPInstanceUID)],
        study=StudyContext(radiograph),
        version=ResultVersion(1),
    )
    sources = [tmp_path / f"ct{k}.dcm" for k in range(len(ct_slices))]
    for path, ds in zip(sources, ct_slices, strict=True):
        ds.save_as(path, enforce_file_format=True)
    results = [
        path
        for objects in (first, second, radiograph_objects)
        for path in write_all(objects, tmp_path / "results").values()
    ]

    sent = subprocess.run(
        [
            "/usr/bin/storescu",
            "-R",  # propose only the SOP classes and transfer syntaxes of the files
            "-aet",
            "RADROUTER",
            "-aec",
            orthanc.ae_title,
            "127.0.0.1",
            str(orthanc.dicom_port),
            *map(str, [*sources, *results]),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=120,
        check=False,
    )

    assert sent.returncode == 0, sent.stdout + sent.stderr
    study_id = orthanc.study_id_for_uid(str(ct_slices[0].StudyInstanceUID))
    assert study_id is not None
    stored = {
        (series["MainDicomTags"]["Modality"], series["MainDicomTags"]["SeriesInstanceUID"])
        for series in orthanc.get(f"/studies/{study_id}/series")
    }
    expected = {("CT", str(ct_slices[0].SeriesInstanceUID))} | {
        (o.dataset.Modality, o.series_instance_uid) for o in (*first.all(), *second.all())
    }
    assert stored == expected
    for objects in (first, second, radiograph_objects):
        for item in objects.all():
            found = orthanc.http.post("/tools/lookup", content=item.sop_instance_uid.encode())
            assert [hit["Type"] for hit in found.json()] == ["Instance"], item.kind
    sop_classes = {
        o.sop_class_uid for objects in (first, radiograph_objects) for o in objects.all()
    }
    assert sop_classes == {
        Comprehensive3DSRStorage,
        SegmentationStorage,
        KeyObjectSelectionDocumentStorage,
    }
