"""What each result records of its source's acquisition (``acquisition_of``): equipment
settings from the header, tolerant of hostile values, and from enhanced functional groups."""

from __future__ import annotations

from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from router.deliver.result_writer import acquisition_of
from testing.dicom_tools import make_ct_slices


def raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def test_kernel_kvp_thickness_and_row_spacing_are_read_from_the_header() -> None:
    ds = make_ct_slices(1)[0]
    ds.ConvolutionKernel = ["Br40d", "3"]
    assert acquisition_of(ds) == {
        "kernel": "Br40d\\3",
        "kvp": 120.0,
        "slice_thickness_mm": 2.5,
        "pixel_spacing_mm": 0.8,
    }
    assert acquisition_of(Dataset()) == {
        "kernel": "",
        "kvp": None,
        "slice_thickness_mm": None,
        "pixel_spacing_mm": None,
    }


def test_malformed_or_absurd_values_are_left_out() -> None:
    ds = make_ct_slices(1)[0]
    raw(ds, 0x00180060, "DS", b"abc")  # KVP
    raw(ds, 0x00280030, "DS", b"x\\1")  # PixelSpacing
    raw(ds, 0x00180050, "DS", b"-2")  # SliceThickness
    raw(ds, 0x00181210, "SH", b"K" * 500)  # ConvolutionKernel
    values = acquisition_of(ds)
    assert values["kvp"] is None and values["pixel_spacing_mm"] is None
    assert values["slice_thickness_mm"] is None
    assert values["kernel"] == "K" * 64


def test_enhanced_images_are_read_from_their_functional_groups() -> None:
    measures, details, reconstruction, shared = Dataset(), Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [0.5, 0.6]
    measures.SliceThickness = "1.25"
    details.KVP = 100
    reconstruction.ConvolutionKernel = "FC13"
    shared.PixelMeasuresSequence = [measures]
    shared.CTAcquisitionDetailsSequence = [details]
    shared.CTReconstructionSequence = [reconstruction]
    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = [shared]
    assert acquisition_of(ds) == {
        "kernel": "FC13",
        "kvp": 100.0,
        "slice_thickness_mm": 1.25,
        "pixel_spacing_mm": 0.5,
    }
