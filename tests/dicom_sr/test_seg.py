"""SEG writer: valid DICOM, one segment per masked finding, voxels and references read back."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import (
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SegmentationStorage,
)

from algorithms import codes as finding_codes
from algorithms.contract import AlgorithmInfo, AlgorithmResult, Finding, ImageRegion, Verdict
from dicom_sr import codes
from dicom_sr.context import InstanceReference, ResultVersion, SourceImage, StudyContext
from dicom_sr.read_seg import read_segment_volumes, read_segmentation
from dicom_sr.seg import build_segmentation
from dicom_sr.tracking import finding_tracking
from dicom_sr.uids import derive_uid
from testing.corpus import pydicom_test_file
from testing.dicom_tools import run_dciodvfy
from tests.dicom_sr.conftest import CT_SHAPE
from tests.dicom_sr.support import assert_valid_dicom, box_mask, square_region, write_object

SEG_SERIES_UID = derive_uid("test", "seg series")


def build(
    result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    headers: list[pydicom.Dataset],
    *,
    version: ResultVersion | None = None,
    probability_maps: dict[str, npt.NDArray[np.float32]] | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> hd.seg.Segmentation:
    version = version or ResultVersion(1)
    return build_segmentation(
        result=result,
        info=info,
        source_images=source_images,
        source_headers=headers,
        study=StudyContext(headers[0]),
        series_instance_uid=SEG_SERIES_UID,
        sop_instance_uid=derive_uid("test", "seg", str(version.number)),
        series_number=9011,
        version=version,
        probability_maps=probability_maps,
        transfer_syntax_uid=transfer_syntax_uid,
    )


@pytest.fixture
def segmentation(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
) -> hd.seg.Segmentation:
    return build(masked_result, info, source_images, ct_slices)


def test_segmentation_passes_dciodvfy_without_errors(
    segmentation: hd.seg.Segmentation, tmp_path: Path
) -> None:
    assert_valid_dicom(write_object(segmentation, tmp_path))


def test_segmentation_has_one_described_segment_per_masked_finding(
    segmentation: hd.seg.Segmentation,
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    study: StudyContext,
    tmp_path: Path,
) -> None:
    summary = read_segmentation(pydicom.dcmread(write_object(segmentation, tmp_path)))
    tracking = finding_tracking(masked_result, study.study_instance_uid, info.name)

    assert summary.segmentation_type == "BINARY"
    assert [s.number for s in summary.segments] == [1, 2, 3]
    assert [s.label for s in summary.segments] == ["Nodule 1", "Nodule 2", "Nodule 3"]
    assert [(s.tracking_id, s.tracking_uid) for s in summary.segments] == [
        (t.identifier, t.uid) for t in tracking
    ]
    for segment in summary.segments:
        assert codes.same_concept(segment.category, codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE)
        assert segment.property_type == finding_codes.LUNG_NODULE
        assert segment.algorithm_type == "AUTOMATIC"
        assert (segment.algorithm_name, segment.algorithm_version) == (info.name, info.version)
        assert codes.same_concept(segment.algorithm_family, codes.ARTIFICIAL_INTELLIGENCE)
    assert [s.anatomic_region for s in summary.segments] == [
        finding_codes.LUNG,
        finding_codes.LUNG,
        None,
    ]


def test_segment_voxels_read_back_as_the_finding_masks(
    segmentation: hd.seg.Segmentation,
    masked_result: AlgorithmResult,
    source_images: list[SourceImage],
    tmp_path: Path,
) -> None:
    volumes = read_segment_volumes(
        pydicom.dcmread(write_object(segmentation, tmp_path)), source_images
    )

    assert sorted(volumes) == [1, 2, 3]
    for number, finding in enumerate(masked_result.findings, start=1):
        assert finding.mask is not None
        assert np.array_equal(volumes[number] > 0.5, finding.mask), number


def test_segmentation_reads_back_through_highdicom_segread(
    segmentation: hd.seg.Segmentation,
    masked_result: AlgorithmResult,
    source_images: list[SourceImage],
    tmp_path: Path,
) -> None:
    seg = hd.seg.segread(write_object(segmentation, tmp_path))
    key_slice = masked_result.findings[0].region.slice_index

    pixels = seg.get_pixels_by_source_instance(
        [source_images[key_slice].sop_instance_uid], segment_numbers=[1]
    )

    mask = masked_result.findings[0].mask
    assert mask is not None
    assert np.array_equal(pixels[0, :, :, 0].astype(bool), mask[key_slice])


def test_only_frames_where_a_segment_has_voxels_are_stored(
    segmentation: hd.seg.Segmentation, masked_result: AlgorithmResult
) -> None:
    occupied = sum(
        int(np.count_nonzero(f.mask.any(axis=(1, 2))))
        for f in masked_result.findings
        if f.mask is not None
    )

    assert segmentation.NumberOfFrames == occupied
    for frame in segmentation.PerFrameFunctionalGroupsSequence:
        assert frame.DerivationImageSequence[0].SourceImageSequence


def test_every_frame_references_the_source_image_it_lies_on(
    segmentation: hd.seg.Segmentation, ct_slices: list[pydicom.Dataset]
) -> None:
    position_of = {
        ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient] for ds in ct_slices
    }
    referenced = set()

    for frame in segmentation.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position_of[source.ReferencedSOPInstanceUID] == pytest.approx(position)
        referenced.add(source.ReferencedSOPInstanceUID)
    listed = {
        item.ReferencedSOPInstanceUID
        for series in segmentation.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert listed == referenced


def test_segmentation_is_in_the_source_study_in_its_own_series_marked_ai_unverified(
    segmentation: hd.seg.Segmentation, ct_slices: list[pydicom.Dataset], info: AlgorithmInfo
) -> None:
    source = ct_slices[0]

    assert segmentation.SOPClassUID == SegmentationStorage
    assert segmentation.Modality == "SEG"
    assert segmentation.StudyInstanceUID == source.StudyInstanceUID
    assert segmentation.SeriesInstanceUID not in (source.SeriesInstanceUID, None)
    assert segmentation.FrameOfReferenceUID == source.FrameOfReferenceUID
    for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyDate"):
        assert segmentation[keyword].value == source[keyword].value, keyword
    description = segmentation.SeriesDescription
    assert "AI" in description and "NOT VERIFIED" in description
    assert f"{info.name} {info.version}" in description
    assert segmentation.InstanceNumber == 1


def test_contributing_equipment_names_the_algorithm_as_in_the_sr(
    segmentation: hd.seg.Segmentation, info: AlgorithmInfo
) -> None:
    (algorithm,) = [
        item
        for item in segmentation.ContributingEquipmentSequence
        if codes.same_concept(
            hd.sr.CodedConcept.from_dataset(item.PurposeOfReferenceCodeSequence[0]),
            codes.IHE_PROCESSING_ALGORITHM,
        )
    ]

    assert algorithm.ManufacturerModelName == info.display_name
    assert algorithm.SoftwareVersions == info.version
    assert algorithm.DeviceUID == info.device_uid


def test_overlapping_masks_become_overlapping_segments(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
    tmp_path: Path,
) -> None:
    first = masked_result.findings[0]
    overlapping = replace(
        masked_result.findings[1],
        mask=box_mask(CT_SHAPE, range(2, 4), range(24, 32), range(16, 24)),
        region=ImageRegion(2, first.region.points),
    )
    result = AlgorithmResult(Verdict.PRESENT, (first, overlapping))

    path = write_object(build(result, info, source_images, ct_slices), tmp_path)
    volumes = read_segment_volumes(pydicom.dcmread(path), source_images)

    assert_valid_dicom(path)
    assert pydicom.dcmread(path).SegmentsOverlap == "YES"
    assert first.mask is not None and overlapping.mask is not None
    assert np.array_equal(volumes[1] > 0.5, first.mask)
    assert np.array_equal(volumes[2] > 0.5, overlapping.mask)


@pytest.mark.parametrize(
    "transfer_syntax_uid",
    [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless],
    ids=["explicit-le", "rle", "jpeg2000-lossless", "jpeg-ls-lossless"],
)
def test_probability_maps_give_a_fractional_segmentation(
    transfer_syntax_uid: str,
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
    tmp_path: Path,
) -> None:
    mask = masked_result.findings[0].mask
    assert mask is not None
    ramp = np.linspace(0.2, 1.0, mask.size, dtype=np.float32).reshape(mask.shape)
    probability = np.where(mask, ramp, 0.0).astype(np.float32)

    seg = build(
        masked_result,
        info,
        source_images,
        ct_slices,
        probability_maps={"Nodule 1": probability},
        transfer_syntax_uid=transfer_syntax_uid,
    )
    path = write_object(seg, tmp_path)
    back = pydicom.dcmread(path)
    volumes = read_segment_volumes(back, source_images)

    assert_valid_dicom(path)
    assert back.file_meta.TransferSyntaxUID == transfer_syntax_uid
    assert (back.SegmentationType, back.SegmentationFractionalType) == (
        "FRACTIONAL",
        "PROBABILITY",
    )
    assert np.abs(volumes[1] - probability).max() <= 0.5 / 255 + 1e-6
    other = masked_result.findings[1].mask
    assert other is not None
    assert np.array_equal(volumes[2], other.astype(np.float32))


def nodule_with_mask(
    mask: npt.NDArray[np.bool_], slice_index: int, row: float, column: float
) -> Finding:
    """A nodule with ``mask``, its region a square around (row, column) on ``slice_index``."""
    return Finding(
        finding_type=finding_codes.LUNG_NODULE,
        probability=0.8,
        centre_voxel=(float(slice_index), row, column),
        region=square_region(slice_index, column=column, row=row, half=20.0),
        tracking_id="Nodule 1",
        mask=mask,
    )


@pytest.mark.parametrize("fractional", [False, True], ids=["label-map", "probability-stack"])
def test_multiframe_source_is_referenced_by_frame_number(
    fractional: bool, info: AlgorithmInfo, tmp_path: Path
) -> None:
    enhanced = pydicom.dcmread(pydicom_test_file("eCT_Supplemental.dcm"), stop_before_pixels=True)
    frames = enhanced.PerFrameFunctionalGroupsSequence
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in frames]
    in_slice_order = sorted(range(len(frames)), key=lambda frame: z[frame])
    sources = [
        SourceImage(EnhancedCTImageStorage, enhanced.SOPInstanceUID, frame_number=frame + 1)
        for frame in in_slice_order
    ]
    shape = (len(sources), int(enhanced.Rows), int(enhanced.Columns))
    mask = box_mask(shape, range(1, 2), range(200, 260), range(240, 300))
    result = AlgorithmResult(Verdict.PRESENT, (nodule_with_mask(mask, 1, 230.0, 270.0),))

    maps = {"Nodule 1": mask.astype(np.float32)} if fractional else None

    seg = build(result, info, sources, [enhanced], probability_maps=maps)
    path = write_object(seg, tmp_path)
    volumes = read_segment_volumes(pydicom.dcmread(path), sources)

    assert_valid_dicom(path)
    (frame,) = seg.PerFrameFunctionalGroupsSequence
    source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
    assert source.ReferencedFrameNumber == sources[1].frame_number
    assert np.array_equal(volumes[1] > 0.5, mask)


def test_radiograph_mask_gives_a_one_frame_segmentation_of_the_image(
    radiograph: pydicom.Dataset, radiograph_info: AlgorithmInfo, tmp_path: Path
) -> None:
    sources = [SourceImage(radiograph.SOPClassUID, radiograph.SOPInstanceUID)]
    shape = (1, int(radiograph.Rows), int(radiograph.Columns))
    mask = box_mask(shape, range(0, 1), range(560, 640), range(460, 540))
    result = AlgorithmResult(Verdict.PRESENT, (nodule_with_mask(mask, 0, 600.0, 500.0),))

    seg = build(result, radiograph_info, sources, [radiograph])
    path = write_object(seg, tmp_path)
    volumes = read_segment_volumes(pydicom.dcmread(path), sources)

    assert_valid_dicom(path)
    assert seg.NumberOfFrames == 1
    assert "FrameOfReferenceUID" not in seg
    source = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert source.SourceImageSequence[0].ReferencedSOPInstanceUID == radiograph.SOPInstanceUID
    assert np.array_equal(volumes[1] > 0.5, mask)


def test_version_2_names_the_segmentation_it_replaces(
    segmentation: hd.seg.Segmentation,
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
    tmp_path: Path,
) -> None:
    earlier = InstanceReference(
        segmentation.StudyInstanceUID,
        segmentation.SeriesInstanceUID,
        segmentation.SOPClassUID,
        segmentation.SOPInstanceUID,
    )
    version = ResultVersion(
        2,
        predecessor_sop_instance_uid=derive_uid("test", "sr", "1"),
        predecessor_series_instance_uid=derive_uid("test", "sr series"),
        predecessor_segmentation=earlier,
    )

    second = build(masked_result, info, source_images, ct_slices, version=version)
    path = write_object(second, tmp_path)
    summary = read_segmentation(pydicom.dcmread(path))

    assert_valid_dicom(path)
    assert summary.predecessors == (earlier,)
    assert summary.instance_number == 2
    assert summary.sop_instance_uid != earlier.sop_instance_uid
    assert read_segmentation(segmentation).predecessors == ()


def test_result_without_masks_is_refused(
    present_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
) -> None:
    with pytest.raises(ValueError, match="no finding with a mask"):
        build(present_result, info, source_images, ct_slices)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((2, 64, 64), dtype=bool), r"has shape \(2, 64, 64\)"),
        (np.zeros(CT_SHAPE, dtype=bool), "is empty"),
    ],
    ids=["wrong-shape", "empty"],
)
def test_mask_that_does_not_fit_the_source_images_is_refused(
    mask: npt.NDArray[np.bool_],
    message: str,
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
) -> None:
    broken = replace(masked_result.findings[0], mask=mask)

    with pytest.raises(ValueError, match=message):
        build(AlgorithmResult(Verdict.PRESENT, (broken,)), info, source_images, ct_slices)


def test_missing_source_header_is_refused(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
) -> None:
    with pytest.raises(ValueError, match="source_headers lack the header of 1 source"):
        build(masked_result, info, source_images, ct_slices[:-1])


def test_probability_map_of_no_masked_finding_is_refused(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
) -> None:
    with pytest.raises(ValueError, match=r"probability_maps names no finding with a mask"):
        build(
            masked_result,
            info,
            source_images,
            ct_slices,
            probability_maps={"Nodule 9": np.zeros(CT_SHAPE, dtype=np.float32)},
        )


def test_compressed_binary_segmentation_is_refused(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
) -> None:
    with pytest.raises(ValueError, match="compressed syntaxes need a FRACTIONAL SEG"):
        build(masked_result, info, source_images, ct_slices, transfer_syntax_uid=RLELossless)


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "RG3_UNCR.dcm"])
def test_real_single_frame_images_get_a_valid_segmentation(
    name: str, info: AlgorithmInfo, tmp_path: Path
) -> None:
    source_path = pydicom_test_file(name)
    header = pydicom.dcmread(source_path, stop_before_pixels=True)
    sources = [SourceImage(header.SOPClassUID, header.SOPInstanceUID)]
    rows, columns = int(header.Rows), int(header.Columns)
    mask = box_mask(
        (1, rows, columns),
        range(0, 1),
        range(rows // 4, rows // 2),
        range(columns // 4, columns // 2),
    )
    result = AlgorithmResult(
        Verdict.PRESENT, (nodule_with_mask(mask, 0, rows * 0.375, columns * 0.375),)
    )

    path = write_object(build(result, info, sources, [header]), tmp_path)

    # Patient and study attributes are copied from the source, with their flaws (CT_small and
    # MR_small state a Patient's Weight of 0, which dciodvfy warns about in them too).
    assert_valid_dicom(path, accepted_warnings=run_dciodvfy(source_path).warnings)
    assert np.array_equal(read_segment_volumes(pydicom.dcmread(path), sources)[1] > 0.5, mask)


def test_source_headers_without_type_2_study_attributes_give_a_valid_segmentation(
    masked_result: AlgorithmResult,
    info: AlgorithmInfo,
    source_images: list[SourceImage],
    ct_slices: list[pydicom.Dataset],
    tmp_path: Path,
) -> None:
    sparse = [copy.deepcopy(ds) for ds in ct_slices]
    removed = ("AccessionNumber", "ReferringPhysicianName", "StudyID", "PatientBirthDate")
    for ds in sparse:
        for keyword in removed:
            delattr(ds, keyword)

    path = write_object(build(masked_result, info, source_images, sparse), tmp_path)

    # An empty Study ID is valid (Type 2); dciodvfy only notes that a DICOMDIR would want one.
    no_study_id = "Missing attribute or value that would be needed to build DICOMDIR - Study ID"
    assert_valid_dicom(path, accepted_warnings=[no_study_id])
    assert pydicom.dcmread(path).StudyID in ("", None)
    assert all(keyword not in ds for ds in sparse for keyword in removed)
