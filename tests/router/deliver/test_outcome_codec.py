"""The stored result JSON keeps each finding's key image: the numbers a PACS viewer shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from algorithms import codes
from algorithms.contract import (
    AlgorithmResult,
    Finding,
    ImageRegion,
    SeriesInput,
    Verdict,
    VolumeGeometry,
)
from algorithms.finding_words import KeyImage
from router.deliver.outcome_codec import (
    key_images_from_json,
    key_images_of,
    result_from_json,
    result_to_json,
)
from router.run.series_loader import LoadedSeries, SliceSource, load_series
from testing.dicom_tools import make_ct_slices


def nodule_on(slice_index: int) -> Finding:
    return Finding(
        codes.LUNG_NODULE,
        0.9,
        (float(slice_index), 30.0, 20.0),
        ImageRegion(slice_index, ((18.0, 28.0), (22.0, 28.0), (22.0, 32.0), (18.0, 28.0))),
        finding_site=codes.LUNG,
    )


def test_key_images_round_trip_beside_an_unchanged_result() -> None:
    result = AlgorithmResult(Verdict.PRESENT, (nodule_on(1), nodule_on(3)))
    images = (KeyImage(7, 40, laterality="R"), None)

    data = result_to_json(result, images)

    assert key_images_from_json(data) == images
    assert result_from_json(data) == result


def test_a_result_stored_without_key_images_reads_back_as_unknown_per_finding() -> None:
    result = AlgorithmResult(Verdict.PRESENT, (nodule_on(1), nodule_on(3)))

    assert key_images_from_json(result_to_json(result)) == (None, None)
    assert key_images_from_json(result_to_json(AlgorithmResult(Verdict.ABSENT))) == ()


def test_slice_index_becomes_the_series_and_instance_number_of_the_received_file(
    tmp_path: Path,
) -> None:
    # Instance numbers run against the slice order (head first), so slice k is not image k+1.
    paths = []
    for z_order, ds in enumerate(make_ct_slices(5)):
        ds.SeriesNumber = 7
        ds.InstanceNumber = 50 - 10 * z_order
        ds.Laterality = "L"
        paths.append(tmp_path / f"{z_order}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    loaded = load_series(paths)
    numbers = {
        str(ds.SOPInstanceUID): int(ds.InstanceNumber)
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)
    }
    result = AlgorithmResult(Verdict.PRESENT, (nodule_on(1), nodule_on(4), nodule_on(9)))

    images = key_images_of(result, loaded)

    assert [numbers[s.sop_instance_uid] for s in loaded.slices] == [50, 40, 30, 20, 10]
    assert images == (KeyImage(7, 40, laterality="L"), KeyImage(7, 10, laterality="L"), None)


def test_a_frame_of_a_multi_frame_image_is_named_with_its_frame() -> None:
    header = pydicom.Dataset()
    header.SOPInstanceUID = "1.2.3.4"
    header.SeriesNumber = "3"
    header.InstanceNumber = "1"
    header.NumberOfFrames = 4
    geometry = VolumeGeometry(np.eye(4), (4, 8, 8), "1.2.3")
    loaded = LoadedSeries(
        series=SeriesInput("1.2.3.5", np.zeros((4, 8, 8), np.float32), geometry, {}),
        slices=tuple(
            SliceSource("1.2.840.10008.5.1.4.1.1.2.1", "1.2.3.4", n) for n in (1, 2, 3, 4)
        ),
        first_header=header,
        headers=(header,),
    )

    images = key_images_of(AlgorithmResult(Verdict.PRESENT, (nodule_on(2),)), loaded)

    assert images == (KeyImage(3, 1, frame_number=3),)
