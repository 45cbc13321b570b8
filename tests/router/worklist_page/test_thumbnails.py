"""Key-image thumbnails: windowing, MONOCHROME1, downscaling, SR region and SEG mask outlines."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image

from dicom_sr.windows import LUNG_WINDOW, Window, header_window
from router.worklist_page.key_images import segmentation_masks
from router.worklist_page.thumbnails import (
    MASK_COLOUR,
    REGION_COLOUR,
    SOFT_TISSUE_WINDOW,
    Outline,
    WindowChoice,
    auto_window_choice,
    choose_window,
    render_key_image,
)
from testing.corpus import pydicom_test_file
from testing.dicom_tools import make_ct_slices
from testing.segmentation import write_segmentation

BOX = Outline(((10.0, 20.0), (30.0, 20.0), (30.0, 40.0), (10.0, 40.0), (10.0, 20.0)))


def decode(png: bytes) -> npt.NDArray[np.uint8]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def coloured(pixels: npt.NDArray[np.uint8], colour: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    matches: npt.NDArray[np.bool_] = (pixels == np.array(colour, dtype=np.uint8)).all(axis=-1)
    return matches


def test_region_outline_is_drawn_in_the_overlay_colour_on_its_points() -> None:
    [ct] = make_ct_slices(1, rows=64, cols=64)

    pixels = decode(render_key_image(ct, regions=[BOX], size=256))

    assert pixels.shape == (256, 256, 3)
    rows, cols = np.nonzero(coloured(pixels, REGION_COLOUR))
    # The 64-pixel frame is scaled by 4: the box spans columns 40-120 and rows 80-160.
    assert rows.size > 200
    assert abs(cols.min() - 40) <= 2 and abs(cols.max() - 120) <= 2
    assert abs(rows.min() - 80) <= 2 and abs(rows.max() - 160) <= 2
    inside = coloured(pixels[90:150, 50:110], REGION_COLOUR)
    assert not inside.any(), "only the outline is drawn, not a filled box"
    grey = pixels[:, :, 0] == pixels[:, :, 1]
    assert grey.mean() > 0.95, "the image itself is grey-scale"


def test_monochrome1_is_displayed_inverted() -> None:
    [mono2] = make_ct_slices(1)
    mono1 = copy.deepcopy(mono2)
    mono1.PhotometricInterpretation = "MONOCHROME1"

    normal = decode(render_key_image(mono2, window=WindowChoice.LUNG))[:, :, 0].astype(int)
    inverted = decode(render_key_image(mono1, window=WindowChoice.LUNG))[:, :, 0].astype(int)

    assert normal.std() > 10
    assert np.abs(normal + inverted - 255).max() <= 1


def test_ct_auto_window_is_lung_around_a_lung_region_and_soft_tissue_elsewhere() -> None:
    [ct] = make_ct_slices(1, rows=64, cols=64)
    hu = np.full((64, 64), 40.0)
    hu[10:40, 10:30] = -850.0
    in_lung = np.zeros((64, 64), dtype=bool)
    in_lung[15:35, 12:28] = True
    in_tissue = np.zeros((64, 64), dtype=bool)
    in_tissue[45:60, 40:60] = True

    assert choose_window(ct, hu, 0, in_lung, WindowChoice.AUTO) == LUNG_WINDOW
    assert choose_window(ct, hu, 0, in_tissue, WindowChoice.AUTO) == SOFT_TISSUE_WINDOW
    assert choose_window(ct, hu, 0, None, WindowChoice.AUTO) == Window(-600.0, 1500.0)


def test_auto_window_is_fixed_on_the_key_slice_for_the_slices_next_to_it() -> None:
    [ct] = make_ct_slices(1, rows=64, cols=64)
    ct.WindowCenter, ct.WindowWidth = "50", "350"  # neither the lung nor the soft-tissue window
    lung_box = Outline(((14.0, 24.0), (22.0, 24.0), (22.0, 40.0), (14.0, 40.0), (14.0, 24.0)))
    tissue = copy.deepcopy(ct)
    tissue.PixelData = np.full((64, 64), 40 + 1024, dtype=np.int16).tobytes()
    mr = copy.deepcopy(ct)
    mr.Modality = "MR"

    assert auto_window_choice(ct, regions=[lung_box]) is WindowChoice.LUNG
    assert auto_window_choice(tissue, regions=[lung_box]) is WindowChoice.SOFT_TISSUE
    assert auto_window_choice(ct) is WindowChoice.AUTO  # no finding: the header's window
    assert auto_window_choice(mr, regions=[lung_box]) is WindowChoice.AUTO


def test_other_modalities_use_the_header_window_else_percentiles() -> None:
    [image] = make_ct_slices(1)
    image.Modality = "MR"
    image.WindowCenter = ["300", "40"]
    image.WindowWidth = ["800", "400"]
    values = np.linspace(0.0, 1000.0, 64 * 64).reshape(64, 64)

    assert header_window(image) == Window(300.0, 800.0)
    assert choose_window(image, values, 0, None, WindowChoice.AUTO) == Window(300.0, 800.0)
    del image.WindowCenter, image.WindowWidth
    window = choose_window(image, values, 0, None, WindowChoice.AUTO)
    assert window.low == pytest.approx(10.0, abs=0.5) and window.high == pytest.approx(
        990.0, abs=0.5
    )


def test_a_real_monochrome1_radiograph_is_fitted_into_the_thumbnail() -> None:
    radiograph = pydicom.dcmread(pydicom_test_file("RG1_UNCI.dcm"))
    assert radiograph.PhotometricInterpretation == "MONOCHROME1"

    pixels = decode(render_key_image(radiograph, size=256))

    rows, columns = int(radiograph.Rows), int(radiograph.Columns)
    assert max(pixels.shape[:2]) == 256
    assert pixels.shape[1] / pixels.shape[0] == pytest.approx(columns / rows, rel=0.02)
    assert pixels[:, :, 0].std() > 20, "windowed into a readable range, not flat"


def test_render_refuses_a_size_or_frame_out_of_range() -> None:
    [ct] = make_ct_slices(1)
    with pytest.raises(ValueError, match="size must be in"):
        render_key_image(ct, size=8)
    with pytest.raises(ValueError, match="frame_number must be in"):
        render_key_image(ct, frame_number=2)
    with pytest.raises(ValueError, match="a mask has shape"):
        render_key_image(ct, masks=[np.zeros((3, 3), dtype=bool)])


def test_seg_mask_outline_is_drawn_on_the_frame_it_covers(tmp_path: Path) -> None:
    slices = make_ct_slices(4, rows=64, cols=64)
    mask = np.zeros((4, 64, 64), dtype=bool)
    mask[2, 20:36, 12:28] = True
    seg_path = write_segmentation(slices, mask, tmp_path / "seg.dcm")
    other_series = make_ct_slices(2, rows=64, cols=64)
    other_mask = np.ones((2, 64, 64), dtype=bool)
    other_path = write_segmentation(other_series, other_mask, tmp_path / "other.dcm")
    key_uid = str(slices[2].SOPInstanceUID)

    [found] = segmentation_masks([seg_path, other_path], key_uid, None)
    empty = segmentation_masks([seg_path], str(slices[0].SOPInstanceUID), None)
    pixels = decode(render_key_image(slices[2], masks=[found], size=256))

    assert np.array_equal(found, mask[2])
    assert empty == []
    rows, cols = np.nonzero(coloured(pixels, MASK_COLOUR))
    assert rows.size > 100
    assert rows.min() == 80 and rows.max() == 143 and cols.min() == 48 and cols.max() == 111
    assert not coloured(pixels[84:140, 52:108], MASK_COLOUR).any(), "outline, not a fill"
