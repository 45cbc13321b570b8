"""Every shipped algorithm against every real image of pydicom and pydicom-data that the
volume loader accepts: an algorithm may find nothing to assess, but it must say so with a
reason, never raise and never answer for a modality it does not read."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from algorithms.contract import Algorithm, StudyInput, Verdict
from algorithms.registry import Registry
from router.run.series_loader import VolumeError, load_series
from testing.corpus import pydicom_data_files, real_corpus

SHIPPED = ("lung_nodule", "ms_lesion", "pe", "fracture")


def real_image_files() -> list[Path]:
    """Files of pydicom's curated corpus and the pydicom-data wheel that load as a series."""
    paths = {c.path for c in real_corpus()} | set(pydicom_data_files())
    loadable = []
    for path in sorted(paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # the wheel also holds a few files that are not DICOM
            continue
        if ds.get("Rows") is not None:  # an image (pixel data itself is not read here)
            loadable.append(path)
    return loadable


@pytest.fixture(scope="module")
def algorithms() -> dict[str, Algorithm]:
    registry = Registry.discover()
    assert set(SHIPPED) <= set(registry.names())
    loaded = {}
    for name in SHIPPED:
        algorithm = registry.create(name)
        algorithm.load("cpu")
        loaded[name] = algorithm
    return loaded


def test_every_algorithm_answers_every_real_image_with_a_result(
    algorithms: dict[str, Algorithm],
) -> None:
    files = real_image_files()
    assert len(files) >= 30, f"only {len(files)} real image files found offline"
    answered = 0
    for path in files:
        try:
            series = load_series([path]).series
        except VolumeError:
            continue  # refused by the loader, with its reason (tested in tests/router)
        modality = str(series.header.get("Modality", ""))
        for name, algorithm in algorithms.items():
            result = algorithm.run(StudyInput("2.25.77", series))
            assert isinstance(result.verdict, Verdict), (name, path.name)
            if result.verdict is Verdict.NOT_ASSESSED:
                assert result.reason.strip(), (name, path.name)
            else:
                assert modality in algorithm.info.modalities, (name, path.name, result.reason)
            answered += 1
    assert answered >= 4 * 20
