"""``radrouter demo-study``: valid DICOM, routed to lung_nodule by the shipped rules, its nodule
found (and nothing else) by the shipped model, and no training or test code needed."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from algorithms import codes
from algorithms.contract import Algorithm, AlgorithmResult, Qualifier, StudyInput, Verdict
from algorithms.lung_nodule.preprocess import MODEL_SPACING_MM
from algorithms.registry import Registry
from config.loader import load_default_config
from router.cli import build_parser
from router.demo import MANUFACTURER, DemoStudy, write_demo_study
from router.route.matching import SeriesFacts, route
from router.run.series_loader import load_series
from testing.dicom_tools import run_dciodvfy

REPO = Path(__file__).resolve().parents[2]


def _defaults(out: Path, *options: str) -> argparse.Namespace:
    """What ``radrouter demo-study OUT [options]`` asks for (the CLI holds the defaults)."""
    return build_parser().parse_args(["demo-study", str(out), *options])


def _write(args: argparse.Namespace) -> DemoStudy:
    return write_demo_study(
        args.out,
        seed=args.seed,
        slices=args.slices,
        size=args.size,
        slice_spacing_mm=args.slice_spacing,
        nodule_mm=args.nodule_mm,
    )


def _small(out: Path, seed: int = 1) -> DemoStudy:
    return write_demo_study(
        out, seed=seed, slices=24, size=128, slice_spacing_mm=2.5, nodule_mm=10.0
    )


@pytest.fixture(scope="module")
def detector() -> Algorithm:
    """The lung nodule plugin as the router finds it: through its entry point."""
    algorithm = Registry.discover().create("lung_nodule")
    algorithm.load("cpu")
    return algorithm


def _run(detector: Algorithm, demo: DemoStudy) -> AlgorithmResult:
    """Read the written files back as the router does and run the plugin on them."""
    loaded = load_series(list(demo.paths))
    return detector.run(StudyInput(demo.study_instance_uid, loaded.series))


def test_the_series_passes_dciodvfy(tmp_path: Path) -> None:
    demo = _small(tmp_path)
    for path in (demo.paths[0], demo.paths[len(demo.paths) // 2], demo.paths[-1]):
        report = run_dciodvfy(path)
        assert report.errors == [], report.output


def test_the_files_are_plainly_synthetic_and_uncompressed(tmp_path: Path) -> None:
    demo = _small(tmp_path)
    ds = pydicom.dcmread(demo.paths[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.Manufacturer == MANUFACTURER and "synthetic" in ds.Manufacturer
    assert str(ds.PatientName).startswith("DEMO^") and "not a patient" in ds.StudyDescription
    assert ds.StudyInstanceUID == demo.study_instance_uid
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.min() < -900 and hu.max() > 400  # air outside the body, bone in the spine


def test_each_seed_is_its_own_patient_and_study_and_the_same_seed_the_same(
    tmp_path: Path,
) -> None:
    first = pydicom.dcmread(_small(tmp_path / "a", seed=1).paths[0])
    again = pydicom.dcmread(_small(tmp_path / "b", seed=1).paths[0])
    other = pydicom.dcmread(_small(tmp_path / "c", seed=2).paths[0])
    keys = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    assert all(first[k].value == again[k].value for k in keys)
    assert all(first[k].value != other[k].value for k in keys)
    assert np.array_equal(first.pixel_array, again.pixel_array)


def test_the_shipped_rules_route_the_demo_to_lung_nodule(tmp_path: Path) -> None:
    demo = _write(_defaults(tmp_path, "--slices", "2"))
    header = pydicom.dcmread(demo.paths[0], stop_before_pixels=True)
    decision = route(load_default_config(), SeriesFacts.from_dataset(header, "SCU", "RADROUTER"))
    assert not decision.used_fallback, decision.explain()
    assert [action.run for action in decision.actions] == ["lung_nodule"], decision.explain()


def test_the_shipped_model_finds_the_default_demos_nodule_and_nothing_else(
    tmp_path: Path, detector: Algorithm
) -> None:
    args = _defaults(tmp_path)
    demo = _write(args)
    assert demo.nodule_voxel is not None and len(demo.paths) == args.slices
    result = _run(detector, demo)
    assert result.verdict is Verdict.PRESENT, result.reason
    assert len(result.findings) == 1, [(f.centre_voxel, f.probability) for f in result.findings]
    (finding,) = result.findings
    offset_mm = (np.array(finding.centre_voxel) - demo.nodule_voxel) * demo.spacing_mm
    assert np.linalg.norm(offset_mm) < 3.0
    long_axis = {m.name: m.value for m in finding.measurements}[codes.LONG_AXIS]
    # The measurement's resolution is the model grid (MODEL_SPACING_MM, docs/lung_nodule.md).
    assert abs(long_axis - args.nodule_mm) <= MODEL_SPACING_MM
    assert finding.probability >= 0.9
    assert finding.qualifiers == (Qualifier(codes.LATERALITY, codes.RIGHT),), "in the right lung"


def test_without_a_nodule_the_shipped_model_says_absent(
    tmp_path: Path, detector: Algorithm
) -> None:
    demo = _write(_defaults(tmp_path, "--nodule-mm", "0"))
    assert demo.nodule_voxel is None
    result = _run(detector, demo)
    assert result.verdict is Verdict.ABSENT, result.reason


def test_demo_study_runs_without_training_or_test_code(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "for name in ('training', 'testing', 'tests'):\n"
        "    sys.modules[name] = None  # importing any of them now fails\n"
        "from router.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "demo"
    options = ["--slices", "24", "--size", "128", "--quiet"]
    command = [sys.executable, "-c", code, "demo-study", str(out), *options]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("*.dcm"))) == 24
    assert f"radrouter send {out}" in done.stdout


def test_demo_study_refuses_a_nodule_the_model_is_not_made_for(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nodule diameter 45 mm"):
        _write(_defaults(tmp_path, "--nodule-mm", "45"))
    assert not list(tmp_path.glob("*.dcm"))
