"""Series Date/Time and Content Date/Time: every object of a result says when it was made."""

from __future__ import annotations

import datetime

import pydicom
from pydicom.valuerep import DT

from algorithms.contract import AlgorithmInfo, AlgorithmResult, VolumeGeometry
from dicom_sr.context import ResultVersion, SourceImage, StudyContext
from dicom_sr.identity import ObjectKind
from dicom_sr.kos import build_key_object_selection
from dicom_sr.result_objects import ResultObjects, build_result_objects
from dicom_sr.uids import derive_uid

MADE = datetime.datetime(2024, 1, 15, 11, 42, 7, 250000, tzinfo=datetime.UTC)


def build(
    result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
    geometry: VolumeGeometry,
    content_datetime: datetime.datetime | None,
) -> ResultObjects:
    return build_result_objects(
        result=result,
        info=info,
        source_images=source_images,
        study=study,
        version=ResultVersion(1),
        source_headers=ct_slices,
        geometry=geometry,
        content_datetime=content_datetime,
    )


def date_time(ds: pydicom.Dataset, prefix: str) -> tuple[str, str]:
    return str(ds.get(f"{prefix}Date", "")), str(ds.get(f"{prefix}Time", ""))


def test_seg_sr_and_kos_carry_the_time_the_result_was_made(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
    geometry: VolumeGeometry,
) -> None:
    objects = build(masked_result, info, source_images, study, ct_slices, geometry, MADE)

    assert [o.kind for o in objects.all()] == [ObjectKind.SEG, ObjectKind.SR, ObjectKind.KOS]
    for item in objects.all():
        ds = item.dataset
        assert date_time(ds, "Series") == ("20240115", "114207.250000"), item.kind
        assert date_time(ds, "Content") == ("20240115", "114207.250000"), item.kind
        (algorithm,) = [
            e for e in ds.ContributingEquipmentSequence if e.get("DeviceUID") == info.device_uid
        ]
        assert DT(algorithm.ContributionDateTime) == MADE, item.kind
    assert date_time(study.dataset, "Study") == ("20240115", "101500")  # the study's own


def test_objects_of_one_result_share_one_time_by_default(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
    geometry: VolumeGeometry,
) -> None:
    before = datetime.datetime.now().astimezone()
    objects = build(masked_result, info, source_images, study, ct_slices, geometry, None)
    after = datetime.datetime.now().astimezone()

    stamps = {
        date_time(o.dataset, "Series") + date_time(o.dataset, "Content") for o in objects.all()
    }
    assert len(stamps) == 1
    ((series_date, series_time, content_date, content_time),) = stamps
    assert (series_date, series_time) == (content_date, content_time)
    made = datetime.datetime.strptime(f"{content_date}{content_time}", "%Y%m%d%H%M%S.%f")
    assert before.replace(tzinfo=None) <= made <= after.replace(tzinfo=None)


def test_a_builder_called_alone_dates_its_object_now(
    present_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
) -> None:
    today = datetime.date.today().strftime("%Y%m%d")
    kos = build_key_object_selection(
        result=present_result,
        info=info,
        source_images=source_images,
        study=study,
        series_instance_uid=derive_uid("test", "dates", "series"),
        sop_instance_uid=derive_uid("test", "dates", "instance"),
        series_number=9002,
        version=ResultVersion(1),
    )

    assert date_time(kos, "Series") == date_time(kos, "Content")
    assert str(kos.SeriesDate) in {today, datetime.date.today().strftime("%Y%m%d")}
