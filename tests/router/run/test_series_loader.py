"""Loading received series as volumes: sorting, geometry, modality LUT, refusals, real files."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from router.run.series_loader import (
    DEFAULT_HEADER_KEYWORDS,
    IDENTIFYING_KEYWORDS,
    LoadedSeries,
    VolumeError,
    load_series,
)
from testing.corpus import CorpusFile, pydicom_test_file, real_corpus
from testing.synthetic_dicom import new_patient_study, write_ct_series

SPACING = (2.0, 0.8, 0.6)


def _hu(shape: tuple[int, int, int] = (10, 24, 32)) -> npt.NDArray[np.int16]:
    return np.random.default_rng(5).integers(-1024, 2500, size=shape).astype(np.int16)


def _series(directory: Path, hu: npt.NDArray[np.int16] | None = None) -> list[Path]:
    volume = _hu() if hu is None else hu
    return write_ct_series(volume, SPACING, new_patient_study(seed=1), directory)


def _edit(path: Path, change: Callable[[Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def _load_error(paths: Sequence[Path]) -> str:
    with pytest.raises(VolumeError) as raised:
        load_series(paths)
    return str(raised.value)


# --- ordering and geometry -------------------------------------------------------------------


def test_slices_shuffled_on_disk_load_sorted_along_the_normal(tmp_path: Path) -> None:
    hu = _hu()
    paths = _series(tmp_path, hu)
    shuffled = list(paths)
    random.Random(3).shuffle(shuffled)
    assert shuffled != paths
    loaded = load_series(shuffled)
    np.testing.assert_array_equal(loaded.series.array, hu.astype(np.float32))
    expected_uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    assert [s.sop_instance_uid for s in loaded.slices] == expected_uids
    assert all(s.frame_number is None for s in loaded.slices)
    assert {s.sop_class_uid for s in loaded.slices} == {pydicom.uid.CTImageStorage}


def test_affine_maps_every_slice_index_to_its_image_position(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    loaded = load_series(paths)
    for k, path in enumerate(paths):
        ipp = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        np.testing.assert_allclose(loaded.series.geometry.to_lps((k, 0, 0)), ipp, atol=1e-6)


def test_column_index_follows_row_cosine_and_row_index_follows_column_cosine(
    tmp_path: Path,
) -> None:
    """Sagittal slices with anisotropic pixels: j moves along IOP[:3] by PixelSpacing[1]."""
    paths = _series(tmp_path, _hu((4, 6, 8)))
    row_cosine = (0.0, 1.0, 0.0)
    column_cosine = (0.0, 0.0, -1.0)
    normal = np.cross(row_cosine, column_cosine)  # -x: patient right

    for k, path in enumerate(paths):

        def sagittal(ds: Dataset, k: int = k) -> None:
            ds.ImageOrientationPatient = [*row_cosine, *column_cosine]
            ds.ImagePositionPatient = [str(v) for v in (5.0 + 3.0 * k) * normal + [0, -7, 9]]
            ds.PixelSpacing = ["0.5", "1.5"]  # [row spacing, column spacing]

        _edit(path, sagittal)
    geometry = load_series(paths).series.geometry
    origin = np.array([-5.0, -7.0, 9.0])
    np.testing.assert_allclose(geometry.to_lps((0, 0, 0)), origin, atol=1e-9)
    np.testing.assert_allclose(
        geometry.to_lps((0, 0, 1)), origin + np.array([0, 1.5, 0]), atol=1e-9
    )
    np.testing.assert_allclose(
        geometry.to_lps((0, 1, 0)), origin + np.array([0, 0, -0.5]), atol=1e-9
    )
    np.testing.assert_allclose(
        geometry.to_lps((1, 0, 0)), origin + np.array([-3.0, 0, 0]), atol=1e-9
    )
    assert geometry.spacing_mm == pytest.approx((3.0, 0.5, 1.5))


def test_gantry_tilt_gives_an_oblique_slice_step(tmp_path: Path) -> None:
    paths = _series(tmp_path, _hu((5, 8, 8)))
    for k, path in enumerate(paths):

        def tilt(ds: Dataset, k: int = k) -> None:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [f"{x:.4f}", f"{y + 0.5 * k:.4f}", f"{z:.4f}"]

        _edit(path, tilt)
    geometry = load_series(paths).series.geometry
    np.testing.assert_allclose(geometry.affine[:3, 0], [0.0, 0.5, SPACING[0]], atol=1e-9)
    last = pydicom.dcmread(paths[-1]).ImagePositionPatient
    np.testing.assert_allclose(geometry.to_lps((4, 0, 0)), [float(v) for v in last], atol=1e-9)


# --- pixel values ---------------------------------------------------------------------------


def test_rescale_slope_and_intercept_are_applied_as_float32(tmp_path: Path) -> None:
    hu = _hu((2, 4, 4))
    paths = _series(tmp_path, hu)

    def rescale(ds: Dataset) -> None:
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-10.25"

    for path in paths:
        _edit(path, rescale)
    stored = (hu.astype(np.float64) + 1024.0) * 0.5 - 10.25
    array = load_series(paths).series.array
    assert array.dtype == np.float32
    np.testing.assert_allclose(array, stored, rtol=0, atol=1e-3)


def test_unused_high_bits_are_ignored_like_pydicom_does(tmp_path: Path) -> None:
    """12 bits stored in 16 allocated, signed: high bits hold garbage, values sign-extend."""
    path = _series(tmp_path, _hu((1, 4, 4)))[0]
    raw = np.array([[0x0FFF, 0xF800, 0x07FF, 0x1001]] * 4, dtype="<u2")

    def twelve_bit(ds: Dataset) -> None:
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.PixelData = raw.tobytes()

    _edit(path, twelve_bit)
    array = load_series([path]).series.array
    np.testing.assert_array_equal(array[0, 0], [-1.0, -2048.0, 2047.0, 1.0])
    np.testing.assert_array_equal(array[0], pydicom.dcmread(path).pixel_array.astype(np.float32))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_loads_the_same_values(tmp_path: Path, syntax: pydicom.uid.UID) -> None:
    hu = _hu((3, 64, 64))
    paths = _series(tmp_path, hu)
    for path in paths:
        _edit(path, lambda ds: ds.compress(syntax))
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(load_series(paths).series.array, hu.astype(np.float32))


# --- header and sources ---------------------------------------------------------------------


def test_header_holds_acquisition_values_as_strings_and_no_identifiers(tmp_path: Path) -> None:
    loaded = load_series(_series(tmp_path))
    header = loaded.series.header
    assert header["Modality"] == "CT"
    assert header["BodyPartExamined"] == "CHEST"
    assert header["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert header["SliceThickness"] == "2"
    assert all(isinstance(value, str) for value in header.values())
    assert set(header) <= set(DEFAULT_HEADER_KEYWORDS)
    assert not set(DEFAULT_HEADER_KEYWORDS) & IDENTIFYING_KEYWORDS
    patient = new_patient_study(seed=1)
    assert patient.patient_id not in header.values()
    assert patient.patient_name not in header.values()


def test_identifying_header_keywords_are_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path, _hu((1, 4, 4)))
    with pytest.raises(ValueError, match="PatientName"):
        load_series(paths, header_keywords=("Modality", "PatientName"))
    with pytest.raises(ValueError, match="NotAKeyword"):
        load_series(paths, header_keywords=("NotAKeyword",))


def test_first_header_is_the_first_slice_without_pixel_data(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    loaded = load_series(list(reversed(paths)))
    assert "PixelData" not in loaded.first_header
    assert loaded.first_header.SOPInstanceUID == loaded.slices[0].sop_instance_uid
    assert loaded.first_header.PatientID == new_patient_study(seed=1).patient_id


def test_first_header_stays_complete_after_the_files_are_gone(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    blob = bytes(range(256)) * 512  # 128 KiB: large enough that reading defers it

    def add_private_blob(ds: Dataset) -> None:
        block = ds.private_block(0x0011, "RADROUTER TEST", create=True)
        block.add_new(0x01, "OB", blob)

    _edit(paths[0], add_private_blob)
    loaded = load_series(paths)
    for path in paths:
        path.unlink()
    block = loaded.first_header.private_block(0x0011, "RADROUTER TEST")
    assert block[0x01].value == blob


# --- refusals -------------------------------------------------------------------------------


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    _edit(paths[3], lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]))
    message = _load_error(paths)
    assert "2 different orientations" in message
    assert "mixes imaging planes" in message


def test_missing_pixel_data_is_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    _edit(paths[2], lambda ds: delattr(ds, "PixelData"))
    assert _load_error(paths) == f"file 3 of {len(paths)} (CT Image Storage) has no pixel data"


def test_a_localizer_alone_is_refused(tmp_path: Path) -> None:
    path = _series(tmp_path, _hu((1, 8, 8)))[0]
    _edit(path, lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    assert "only localizer images" in _load_error([path])


def test_localizers_in_a_series_are_left_out(tmp_path: Path) -> None:
    hu = _hu()
    paths = _series(tmp_path / "axial", hu)
    scout = _series(tmp_path / "scout", _hu((1, 24, 32)))[0]
    series_uid = pydicom.dcmread(paths[0]).SeriesInstanceUID

    def localizer(ds: Dataset) -> None:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesInstanceUID = series_uid
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    _edit(scout, localizer)
    loaded = load_series([scout, *paths])
    np.testing.assert_array_equal(loaded.series.array, hu.astype(np.float32))


def test_a_missing_slice_is_refused_as_non_uniform_spacing(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    message = _load_error(paths[:4] + paths[5:])
    assert "slice spacing is not uniform" in message
    assert "1 slice(s) appear to be missing" in message


def test_irregular_positions_are_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path)

    def shift(ds: Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [str(x), str(y), str(z + 0.6)]

    _edit(paths[4], shift)
    assert "not on a regular grid" in _load_error(paths)


def test_the_same_instance_received_twice_is_used_once(tmp_path: Path) -> None:
    hu = _hu()
    paths = _series(tmp_path / "a", hu)
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(paths[5].read_bytes())
    loaded = load_series([*paths, copy])
    assert loaded.series.array.shape[0] == len(paths)


def test_two_images_at_one_position_are_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    position = pydicom.dcmread(paths[1]).ImagePositionPatient
    _edit(paths[2], lambda ds: setattr(ds, "ImagePositionPatient", position))
    message = _load_error(paths)
    assert "share a slice position" in message
    assert "more than one acquisition" in message


def test_mixed_matrix_sizes_are_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path / "a")
    other = _series(tmp_path / "b", _hu((1, 16, 16)))[0]
    series_uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    _edit(other, lambda ds: setattr(ds, "SeriesInstanceUID", series_uid))
    assert "different matrix sizes (rows x columns: 16x16, 24x32)" in _load_error([*paths, other])


def test_mixed_frames_of_reference_are_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    _edit(paths[0], lambda ds: setattr(ds, "FrameOfReferenceUID", generate_uid()))
    assert "2 different frames of reference" in _load_error(paths)


def test_files_from_two_series_are_refused(tmp_path: Path) -> None:
    paths = _series(tmp_path / "a") + _series(tmp_path / "b")
    assert _load_error(paths) == "the files belong to 2 different series"


def test_images_without_position_cannot_be_stacked(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    _edit(paths[1], lambda ds: delattr(ds, "ImagePositionPatient"))
    assert "1 of 10 images have no ImagePositionPatient" in _load_error(paths)


def test_undecodable_pixels_name_the_file_by_its_position_among_the_paths(tmp_path: Path) -> None:
    paths = _series(tmp_path / "a")
    repeat = tmp_path / "repeat.dcm"
    repeat.write_bytes(paths[0].read_bytes())

    def truncate(ds: Dataset) -> None:
        ds.PixelData = ds.PixelData[:100]

    _edit(paths[4], truncate)
    message = _load_error([repeat, *paths])
    assert message.startswith("pixel data of file 6 of 11 could not be decoded (Explicit VR")


def test_non_dicom_file_and_no_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    assert _load_error([junk]) == "file 1 of 1 is not a DICOM Part-10 file"
    assert _load_error([]) == "no files were given"


def test_error_messages_carry_no_patient_identity_or_paths(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    _edit(paths[3], lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]))
    study = new_patient_study(seed=1)
    message = _load_error(paths)
    for secret in (study.patient_id, study.patient_name, study.study_instance_uid, str(tmp_path)):
        assert secret not in message


# --- multi-frame and single images ----------------------------------------------------------


def test_enhanced_ct_loads_one_slice_per_frame_with_frame_numbers() -> None:
    loaded = load_series([pydicom_test_file("eCT_Supplemental.dcm")])
    assert loaded.series.array.shape == (2, 512, 512)
    # The normal is -z for this orientation, so frame 2 (z = -149) comes first.
    assert [s.frame_number for s in loaded.slices] == [2, 1]
    assert loaded.series.geometry.spacing_mm == pytest.approx((10.0, 0.388672, 0.388672))
    np.testing.assert_allclose(loaded.series.geometry.to_lps((0, 0, 0)), [99.5, -301.5, -149.0])
    assert loaded.series.header["SliceThickness"] == "10.0000"
    assert float(loaded.series.array.min()) == -1024.0


def test_legacy_converted_enhanced_ct_loads_like_its_single_frame_source(tmp_path: Path) -> None:
    hd = pytest.importorskip("highdicom")
    hu = _hu((6, 12, 10))
    paths = _series(tmp_path, hu)
    multi = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in paths],
        series_instance_uid=generate_uid(),
        series_number=9,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    multi_path = tmp_path / "enhanced.dcm"
    multi.save_as(multi_path, enforce_file_format=True)
    single = load_series(paths)
    enhanced = load_series([multi_path])
    np.testing.assert_array_equal(enhanced.series.array, hu.astype(np.float32))
    np.testing.assert_allclose(enhanced.series.geometry.affine, single.series.geometry.affine)
    assert sorted(s.frame_number or 0 for s in enhanced.slices) == list(range(1, 7))
    assert {s.sop_instance_uid for s in enhanced.slices} == {str(multi.SOPInstanceUID)}


def test_cr_loads_as_a_one_slice_volume_at_the_origin() -> None:
    loaded = load_series([pydicom_test_file("RG3_UNCR.dcm")])
    assert loaded.series.array.shape == (1, 1760, 1760)
    assert loaded.series.header["Modality"] == "CR"
    np.testing.assert_allclose(loaded.series.geometry.to_lps((0, 0, 0)), (0.0, 0.0, 0.0))
    assert loaded.slices[0].frame_number is None


def test_multi_frame_without_plane_positions_is_refused() -> None:
    message = _load_error([pydicom_test_file("emri_small.dcm")])
    assert "10 frames but no per-frame plane positions" in message


def test_colour_images_are_refused() -> None:
    message = _load_error([pydicom_test_file("SC_rgb_jpeg_dcmtk.dcm")])
    assert message == "colour images (YBR_FULL, 3 samples per pixel) cannot be a volume"


# --- the real corpus ------------------------------------------------------------------------

# Expected result of load_series([file]): number of slices, or a VolumeError fragment.
_CORPUS_EXPECTATIONS: dict[str, int | str] = {
    "MR_small_implicit.dcm": 1,
    "CT_small.dcm": 1,
    "image_dfl.dcm": 1,
    "MR_small_RLE.dcm": 1,
    "SC_rgb_jpeg_dcmtk.dcm": "colour images",
    "JPGExtended.dcm": "could not be decoded (JPEG Extended",
    "JPEG-LL.dcm": 1,
    "MR_small_jpeg_ls_lossless.dcm": 1,
    "JPEGLSNearLossless_16.dcm": "no SeriesInstanceUID",
    "693_J2KR.dcm": 1,
    "693_J2KI.dcm": 1,
    "eCT_Supplemental.dcm": 2,
    "emri_small_jpeg_ls_lossless.dcm": "no per-frame plane positions",
    "RG3_UNCR.dcm": 1,
    "693_UNCR.dcm": 1,
}


def _corpus_ids(entry: CorpusFile) -> str:
    return entry.name


def test_corpus_covers_the_required_transfer_syntaxes() -> None:
    syntaxes = {entry.transfer_syntax_uid for entry in real_corpus()}
    uid = pydicom.uid
    required = {
        uid.ImplicitVRLittleEndian,
        uid.ExplicitVRLittleEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.RLELossless,
        uid.JPEGBaseline8Bit,
        uid.JPEGLosslessSV1,
        uid.JPEGLSLossless,
        uid.JPEGLSNearLossless,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
    }
    assert required <= syntaxes
    classes = {entry.sop_class_uid for entry in real_corpus()}
    assert {uid.EnhancedCTImageStorage, uid.ComputedRadiographyImageStorage} <= classes
    assert set(_CORPUS_EXPECTATIONS) == {entry.name for entry in real_corpus()}


@pytest.mark.parametrize("entry", real_corpus(), ids=_corpus_ids)
def test_corpus_entry_metadata_matches_the_file(entry: CorpusFile) -> None:
    ds = pydicom.dcmread(entry.path, stop_before_pixels=True)
    assert str(ds.file_meta.TransferSyntaxUID) == entry.transfer_syntax_uid
    assert str(ds.SOPClassUID) == entry.sop_class_uid
    has_uids = bool(ds.get("StudyInstanceUID")) and bool(ds.get("SeriesInstanceUID"))
    assert has_uids == entry.has_study_and_series_uids


@pytest.mark.parametrize("entry", real_corpus(), ids=_corpus_ids)
def test_corpus_file_pixels_decode_as_declared(entry: CorpusFile) -> None:
    ds = pydicom.dcmread(entry.path)
    if entry.decodes:
        assert ds.pixel_array.size == int(ds.Rows) * int(ds.Columns) * int(
            ds.get("NumberOfFrames", 1) or 1
        ) * int(ds.SamplesPerPixel)
    else:
        with pytest.raises(Exception, match="JPEG Extended"):
            _ = ds.pixel_array


@pytest.mark.parametrize("entry", real_corpus(), ids=_corpus_ids)
def test_corpus_file_loads_as_a_volume_or_says_why_not(entry: CorpusFile) -> None:
    expected = _CORPUS_EXPECTATIONS[entry.name]
    if isinstance(expected, str):
        assert expected in _load_error([entry.path])
        return
    loaded: LoadedSeries = load_series([entry.path])
    assert loaded.series.array.shape[0] == expected
    assert loaded.series.array.dtype == np.float32
    assert np.isfinite(loaded.series.array).all()
    assert len(loaded.slices) == expected
    ds = pydicom.dcmread(entry.path)
    if expected == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        reference = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        np.testing.assert_array_equal(loaded.series.array[0], reference)
