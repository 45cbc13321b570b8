"""Fixtures for dicom_sr tests: a synthetic CT series, a real CR, a lung nodule algorithm and its
results (with and without masks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from algorithms import codes as finding_codes
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    ImageRegion,
    Measurement,
    Qualifier,
    Verdict,
    VolumeGeometry,
)
from dicom_sr.context import InstanceReference
from dicom_sr.io import write_dataset
from dicom_sr.result_objects import ResultObjects, build_result_objects
from dicom_sr.tid1500 import ResultVersion, SourceImage, StudyContext, build_measurement_report
from dicom_sr.uids import output_instance_uid, output_series_uid
from testing.corpus import pydicom_test_file
from testing.dicom_tools import make_ct_slices
from tests.dicom_sr.support import (
    BuildObjects,
    BuildReport,
    WriteReport,
    box_mask,
    geometry_of,
    square_region,
)

N_SLICES = 6
CT_SHAPE = (N_SLICES, 64, 64)
LATERALITY = Code("272741003", "SCT", "Laterality")
RIGHT = Code("24028007", "SCT", "Right")


@pytest.fixture(scope="session")
def ct_slices() -> list[pydicom.Dataset]:
    return make_ct_slices(N_SLICES)


@pytest.fixture(scope="session")
def source_images(ct_slices: list[pydicom.Dataset]) -> list[SourceImage]:
    return [SourceImage(ds.SOPClassUID, ds.SOPInstanceUID) for ds in ct_slices]


@pytest.fixture(scope="session")
def study(ct_slices: list[pydicom.Dataset]) -> StudyContext:
    return StudyContext(ct_slices[0])


@pytest.fixture(scope="session")
def info() -> AlgorithmInfo:
    return AlgorithmInfo(
        name="lung_nodule",
        display_name="Lung Nodule Detector",
        version="0.1.0",
        manufacturer="radrouter contributors",
        device_uid="1.2.826.0.1.3680043.10.1234.1.1",
        modalities=frozenset({"CT"}),
        intended_use="Detection of solid lung nodules on chest CT",
        max_runtime_s=60.0,
        target=finding_codes.LUNG_NODULE,
        clinical_use=False,
    )


@pytest.fixture(scope="session")
def present_result() -> AlgorithmResult:
    nodule_1 = Finding(
        finding_type=finding_codes.LUNG_NODULE,
        probability=0.87,
        centre_voxel=(2.0, 30.0, 20.0),
        region=square_region(2, column=20.0, row=30.0, half=4.0),
        measurements=(
            Measurement(finding_codes.LONG_AXIS, 8.4, finding_codes.MILLIMETRE),
            Measurement(finding_codes.VOLUME, 212.5, finding_codes.CUBIC_MILLIMETRE),
        ),
        finding_site=finding_codes.LUNG,
        tracking_id="Nodule 1",
    )
    nodule_2 = Finding(
        finding_type=finding_codes.LUNG_NODULE,
        probability=0.41,
        centre_voxel=(4.0, 25.5, 44.5),
        region=square_region(4, column=44.5, row=25.5, half=2.5),
        measurements=(Measurement(finding_codes.LONG_AXIS, 4.9, finding_codes.MILLIMETRE),),
        finding_site=finding_codes.LUNG,
        tracking_id="Nodule 2",
    )
    return AlgorithmResult(verdict=Verdict.PRESENT, findings=(nodule_1, nodule_2))


@pytest.fixture(scope="session")
def absent_result() -> AlgorithmResult:
    return AlgorithmResult(verdict=Verdict.ABSENT)


@pytest.fixture(scope="session")
def not_assessed_result() -> AlgorithmResult:
    return AlgorithmResult(
        verdict=Verdict.NOT_ASSESSED, reason="Slice thickness 5 mm is above the 3 mm limit"
    )


@pytest.fixture(scope="session")
def results(
    present_result: AlgorithmResult,
    absent_result: AlgorithmResult,
    not_assessed_result: AlgorithmResult,
) -> dict[Verdict, AlgorithmResult]:
    return {
        Verdict.PRESENT: present_result,
        Verdict.ABSENT: absent_result,
        Verdict.NOT_ASSESSED: not_assessed_result,
    }


@pytest.fixture
def build_report(
    info: AlgorithmInfo, source_images: list[SourceImage], study: StudyContext
) -> BuildReport:
    """Build the SR of a result the way the router will: UIDs derived from study and version."""
    default_info, default_study, default_sources = info, study, source_images

    def build(
        result: AlgorithmResult,
        *,
        info: AlgorithmInfo | None = None,
        version: ResultVersion | None = None,
        study: StudyContext | None = None,
        source_images: Sequence[SourceImage] | None = None,
    ) -> hd.sr.Comprehensive3DSR:
        info = info or default_info
        version = version or ResultVersion(number=1)
        study = study or default_study
        return build_measurement_report(
            result=result,
            info=info,
            source_images=source_images or default_sources,
            study=study,
            series_instance_uid=output_series_uid(study.study_instance_uid, info.name, "SR"),
            sop_instance_uid=output_instance_uid(
                study.study_instance_uid, info.name, "SR", version.number
            ),
            series_number=901,
            version=version,
        )

    return build


@pytest.fixture
def write_report(tmp_path: Path) -> WriteReport:
    def write(sr: hd.sr.Comprehensive3DSR) -> Path:
        return write_dataset(sr, tmp_path / f"{sr.SOPInstanceUID}.dcm")

    return write


@pytest.fixture(scope="session")
def geometry(ct_slices: list[pydicom.Dataset]) -> VolumeGeometry:
    return geometry_of(ct_slices)


@pytest.fixture(scope="session")
def masked_result() -> AlgorithmResult:
    """Three nodules with masks: one states its volume, one has none, one has no tracking id."""
    nodule_1 = Finding(
        finding_type=finding_codes.LUNG_NODULE,
        probability=0.92,
        centre_voxel=(1.5, 23.5, 15.5),
        region=square_region(1, column=15.5, row=23.5, half=4.0),
        measurements=(
            Measurement(finding_codes.LONG_AXIS, 6.4, finding_codes.MILLIMETRE),
            Measurement(finding_codes.VOLUME, 102.4, finding_codes.CUBIC_MILLIMETRE),
        ),
        finding_site=finding_codes.LUNG,
        tracking_id="Nodule 1",
        mask=box_mask(CT_SHAPE, range(1, 3), range(20, 28), range(12, 20)),
        qualifiers=(Qualifier(LATERALITY, RIGHT),),
    )
    nodule_2 = Finding(
        finding_type=finding_codes.LUNG_NODULE,
        probability=0.71,
        centre_voxel=(3.5, 33.5, 43.5),
        region=square_region(3, column=43.5, row=33.5, half=4.0),
        measurements=(Measurement(finding_codes.LONG_AXIS, 6.4, finding_codes.MILLIMETRE),),
        finding_site=finding_codes.LUNG,
        tracking_id="Nodule 2",
        mask=box_mask(CT_SHAPE, range(3, 5), range(30, 38), range(40, 48)),
    )
    nodule_3 = Finding(
        finding_type=finding_codes.LUNG_NODULE,
        probability=0.55,
        centre_voxel=(4.5, 10.0, 30.0),
        region=square_region(4, column=30.0, row=10.0, half=2.5),
        mask=box_mask(CT_SHAPE, range(4, 6), range(8, 13), range(28, 33)),
    )
    return AlgorithmResult(
        verdict=Verdict.PRESENT,
        findings=(nodule_1, nodule_2, nodule_3),
        probability=0.97,
        measurements=(Measurement(finding_codes.VOLUME, 1000.0, finding_codes.CUBIC_MILLIMETRE),),
    )


@pytest.fixture
def build_objects(
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    study: StudyContext,
    ct_slices: list[pydicom.Dataset],
    geometry: VolumeGeometry,
) -> BuildObjects:
    """Build every object of a CT result the way the router will."""

    def build(
        result: AlgorithmResult,
        *,
        version: ResultVersion | None = None,
        tracking_uids: dict[str, str] | None = None,
        prior_evidence: Sequence[InstanceReference] = (),
    ) -> ResultObjects:
        return build_result_objects(
            result=result,
            info=info,
            source_images=source_images,
            study=study,
            version=version or ResultVersion(1),
            source_headers=ct_slices,
            geometry=geometry,
            tracking_uids=tracking_uids,
            prior_evidence=prior_evidence,
        )

    return build


@pytest.fixture(scope="session")
def radiograph() -> pydicom.Dataset:
    """A real CR chest image (pydicom-data RG3_UNCR: 1760x1760, no frame of reference)."""
    return pydicom.dcmread(pydicom_test_file("RG3_UNCR.dcm"), stop_before_pixels=True)


@pytest.fixture(scope="session")
def radiograph_info(info: AlgorithmInfo) -> AlgorithmInfo:
    return AlgorithmInfo(
        name="chest_xray_nodule",
        display_name="Chest X-ray Nodule Detector",
        version="0.2.0",
        manufacturer=info.manufacturer,
        device_uid="1.2.826.0.1.3680043.10.1234.1.2",
        modalities=frozenset({"CR", "DX"}),
        intended_use="Detection of lung nodules on chest radiographs",
        max_runtime_s=30.0,
        target=finding_codes.LUNG_NODULE,
    )


def box(column: float, row: float, width: float, height: float) -> ImageRegion:
    """A box on the single image of a radiograph, as its closed 5-point polyline."""
    return ImageRegion(
        slice_index=0,
        points=(
            (column, row),
            (column + width, row),
            (column + width, row + height),
            (column, row + height),
            (column, row),
        ),
    )


@pytest.fixture(scope="session")
def radiograph_result() -> AlgorithmResult:
    """Two nodules on a radiograph, each a box (no masks)."""
    return AlgorithmResult(
        verdict=Verdict.PRESENT,
        findings=(
            Finding(
                finding_type=finding_codes.LUNG_NODULE,
                probability=0.81,
                centre_voxel=(0.0, 600.0, 500.0),
                region=box(460.0, 560.0, 80.0, 80.0),
                finding_site=finding_codes.LUNG,
                tracking_id="Nodule 1",
            ),
            Finding(
                finding_type=finding_codes.LUNG_NODULE,
                probability=0.64,
                centre_voxel=(0.0, 900.0, 1250.0),
                region=box(1220.0, 870.0, 60.0, 60.0),
                finding_site=finding_codes.LUNG,
                tracking_id="Nodule 2",
            ),
        ),
    )
