"""Local validation before go-live on generated cases with a known truth: the figures of the
report against the same figures counted by hand, and ``radrouter validate`` end to end."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from algorithms.codes import LUNG_NODULE
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Finding,
    ImageRegion,
    StudyInput,
    Verdict,
)
from algorithms.registry import Registry
from config.loader import parse_config
from router.cli import configured_database_of_router, existing_sqlite
from router.store.database import SqliteDatabase
from router.store.postgres import PostgresDatabase
from router.validate import metrics
from router.validate.cases import Truth, TruthFileError, find_studies, read_truth
from router.validate.from_feedback import validation_from_feedback
from router.validate.localisation import parse_location
from router.validate.report import summarise, write_report
from router.validate.run import validate
from testing.dicom_tools import make_ct_slices
from testing.phantoms import WaterPhantom, write_water_phantom_series
from testing.plugins import AlwaysNegative, DarkestRegionOutliner
from testing.router_process import StartRouter, storescu, study_uid_of, wait_state, write_series


class BrightestVoxel:
    """Scores a CT by its brightest voxel: (max HU - 100) / 1000, clipped to [0, 1]; PRESENT
    at or above the threshold the router passes (0.5 by default). Not assessed below 4
    slices."""

    info: ClassVar[AlgorithmInfo] = AlgorithmInfo(
        name="brightest",
        display_name="test brightest voxel",
        version="1.0",
        manufacturer="radrouter tests",
        device_uid="2.25.99",
        modalities=frozenset({"CT"}),
        intended_use="tests only",
        max_runtime_s=10.0,
        target=LUNG_NODULE,
    )

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        if study.series.array.shape[0] < 4:
            return AlgorithmResult(Verdict.NOT_ASSESSED, reason="fewer than 4 slices")
        score = float(np.clip((float(study.series.array.max()) - 100.0) / 1000.0, 0.0, 1.0))
        threshold = 0.5 if study.threshold is None else study.threshold
        verdict = Verdict.PRESENT if score >= threshold else Verdict.ABSENT
        return AlgorithmResult(verdict, probability=score)


def write_case(folder: Path, peak_hu: float, scanner: str, slices: int = 4) -> str:
    """A small CT whose brightest voxel is ``peak_hu``; returns its study UID."""
    folder.mkdir(parents=True)
    datasets = make_ct_slices(slices, rows=32, cols=32)
    for ds in datasets:
        ds.ManufacturerModelName = scanner
        values = np.full((32, 32), -900.0)
        ds.PixelData = (values - float(ds.RescaleIntercept)).astype(np.int16).tobytes()
    values = np.full((32, 32), -900.0)
    values[16, 16] = peak_hu
    datasets[1].PixelData = (
        (values - float(datasets[1].RescaleIntercept)).astype(np.int16).tobytes()
    )
    for ds in datasets:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return str(datasets[0].StudyInstanceUID)


# Peaks (HU) of the generated cases: positives mostly bright, negatives mostly dark, with an
# overlap; scores are (peak - 100) / 1000.
POSITIVE_PEAKS = [1100, 900, 800, 700, 650, 500, 400]
NEGATIVE_PEAKS = [100, 200, 300, 450, 550, 700, 250]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Truth], list[float]]:
    folder = tmp_path_factory.mktemp("cases")
    truth: dict[str, Truth] = {}
    peaks = []
    for number, (peak, positive) in enumerate(
        itertools.chain(((p, True) for p in POSITIVE_PEAKS), ((p, False) for p in NEGATIVE_PEAKS))
    ):
        scanner = "Scanner A" if number % 2 == 0 else "Scanner B"
        uid = write_case(folder / f"case{number}", float(peak), scanner)
        truth[uid] = Truth(positive)
        peaks.append(float(peak))
    short = write_case(folder / "short", 1000.0, "Scanner A", slices=2)  # not assessed
    truth[short] = Truth(True)
    truth["1.2.3.4.5.6"] = Truth(False)  # in the truth file, not in the folder
    return folder, truth, peaks


def test_the_report_figures_are_those_counted_by_hand(
    cases: tuple[Path, dict[str, Truth], list[float]],
) -> None:
    folder, truth, _ = cases
    run = validate("brightest", Registry({"brightest": BrightestVoxel}), folder, truth)
    summary = summarise(run)

    positives = [(p - 100) / 1000 for p in POSITIVE_PEAKS]
    negatives = [(p - 100) / 1000 for p in NEGATIVE_PEAKS]
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    assert summary["auc"] == pytest.approx(sum(pairs) / len(pairs))
    low, high = summary["auc_95ci"]
    assert low < summary["auc"] < high
    operating = summary["at_operating_point"]  # score >= 0.5: peaks of 600 HU and more
    assert (operating["tp"], operating["fn"]) == (5, 2)
    assert (operating["tn"], operating["fp"]) == (6, 1)
    assert operating["sensitivity_95ci"] == pytest.approx([0.3589, 0.9178], abs=1e-4)  # 5 of 7
    assert operating["specificity_95ci"] == pytest.approx([0.4869, 0.9743], abs=1e-4)  # 6 of 7
    assert summary["assessed"] == 14 and summary["cases"] == 15
    assert summary["not_assessed"] == {"fewer than 4 slices": 1}
    assert summary["truth_without_study"] == ["1.2.3.4.5.6"]
    assert set(summary["by_scanner"]) == {"Scanner A", "Scanner B"}
    assert sum(f["n"] for f in summary["by_scanner"].values()) == 14
    suggested = summary["at_suggested_threshold"]
    assert suggested["sensitivity"] + suggested["specificity"] >= (
        operating["sensitivity"] + operating["specificity"]
    )


def test_the_configured_threshold_is_the_operating_point(
    cases: tuple[Path, dict[str, Truth], list[float]],
) -> None:
    folder, truth, _ = cases
    config = parse_config(
        "algorithms:\n  brightest: {threshold: 0.3}\n"
        "rules:\n  - {name: ct, when: {Modality: CT}, run: brightest}\n",
        "site.yaml",
    )
    run = validate(
        "brightest", Registry({"brightest": BrightestVoxel}), folder, truth, config=config
    )
    operating = summarise(run)["at_operating_point"]
    assert (operating["tp"], operating["fp"]) == (7, 3)  # peaks of 400 HU and more


def test_the_html_report_holds_the_plots_and_the_json_the_figures(
    cases: tuple[Path, dict[str, Truth], list[float]], tmp_path: Path
) -> None:
    folder, truth, _ = cases
    run = validate("brightest", Registry({"brightest": BrightestVoxel}), folder, truth)
    json_path, html_path = write_report(run, tmp_path / "report")

    figures = json.loads(json_path.read_text())
    page = html_path.read_text()
    assert figures["algorithm"] == {"name": "brightest", "version": "1.0"}
    assert page.count("<svg") == 2 and "<polyline" in page
    assert f"{figures['auc']:.3f}" in page
    assert "Scanner B" in page and "fewer than 4 slices" in page
    assert "sensitivity 71.4 % (95 % CI 35.9 to 91.8 %)" in page
    assert "<script" not in page


def test_proportion_intervals_are_wilson_intervals() -> None:
    # Wilson score intervals at 95 % (Newcombe 1998, Table I: 0/10 -> 0 to 0.2775).
    assert metrics.proportion_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert metrics.proportion_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert metrics.proportion_interval(16, 25) == pytest.approx((0.4452, 0.7975), abs=1e-4)
    narrow = metrics.proportion_interval(160, 250)
    assert narrow is not None and narrow[1] - narrow[0] < 0.13  # ten times the cases
    assert metrics.proportion_interval(0, 0) is None
    with pytest.raises(ValueError):
        metrics.proportion_interval(3, 2)


def test_metrics_on_small_cases() -> None:
    assert metrics.auc([0.1, 0.9], [False, True]) == 1.0
    assert metrics.auc([0.5, 0.5], [False, True]) == 0.5
    assert metrics.auc([0.1, 0.2], [True, True]) is None
    bins = metrics.calibration([0.05, 0.15, 0.95, 1.0], [False, True, True, True])
    assert [(b.count, b.observed_rate) for b in bins] == [(1, 0.0), (1, 1.0), (2, 1.0)]


def test_a_truth_file_with_a_bad_label_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "truth.csv"
    path.write_text("study_uid,label\n1.2.3,present\n1.2.4,maybe\n")
    with pytest.raises(TruthFileError, match=r"truth.csv:3: label 'maybe'"):
        read_truth(path)
    path.write_text("study,label\n")
    with pytest.raises(TruthFileError, match="must name study_uid and label"):
        read_truth(path)


@pytest.mark.slow
def test_radrouter_validate_on_water_phantoms(tmp_path: Path) -> None:
    """The command with a shipped algorithm: water phantoms, the truth their known bias."""
    rows = ["study_uid,label"]
    for number, bias in enumerate([0.0, 1.5, 6.0, -7.0, 2.0, 9.0]):
        phantom = WaterPhantom(bias_hu=bias, size=256, pixel_mm=1.0, seed=number)
        paths = write_water_phantom_series(tmp_path / "cases" / str(number), phantom)
        uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
        rows.append(f"{uid},{'present' if abs(bias) > 4 else 'absent'}")
    (tmp_path / "truth.csv").write_text("\n".join(rows) + "\n")

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "router.cli",
            "validate",
            "ct_water_qa",
            str(tmp_path / "cases"),
            "--truth",
            str(tmp_path / "truth.csv"),
            "--out",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "report" / "report.json").read_text())
    assert figures["assessed"] == 6
    assert figures["auc"] == 1.0
    assert figures["at_operating_point"]["sensitivity"] == 1.0
    assert "AUC 1.000" in done.stdout
    assert (tmp_path / "report" / "report.html").is_file()


SHADOW_CONFIG = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "completion: {settle_after_release_s: 0.2, series_idle_s: 2, study_idle_s: 4, hard_cap_s: 60}\n"
    "algorithms:\n"
    "  darkest_region: {shadow: true}\n"
    "  always_negative: {shadow: true}\n"
    "rules:\n"
    "  - {name: a, when: {Modality: CT}, run: darkest_region, continue: true}\n"
    "  - {name: b, when: {Modality: CT}, run: always_negative}\n"
)


@pytest.mark.slow
@pytest.mark.both_engines
def test_shadow_results_with_the_readers_feedback_are_a_validation(
    start_router: StartRouter, router_engine: str, tmp_path: Path
) -> None:
    """Agreeing confirms the verdict, disagreeing says the opposite is true. The database is
    the one ``validate --from-shadow`` opens: the data folder's SQLite file, or the config's
    PostgreSQL."""
    router = start_router(
        SHADOW_CONFIG,
        registry=Registry(
            {"darkest_region": DarkestRegionOutliner, "always_negative": AlwaysNegative}
        ),
        config_file=True,
    )
    studies = []
    for number in range(3):
        paths = write_series(tmp_path / f"s{number}")
        storescu(router, paths)
        studies.append(study_uid_of(paths))
    base = f"http://127.0.0.1:{router.http_port}"
    for study_uid, agree in zip(studies[:2], [True, False], strict=True):
        view = wait_state(router, study_uid, {"done", "attention"})
        for result in view["results"]:
            answer = httpx.post(
                f"{base}/api/results/{result['id']}/feedback",
                json={"agree": agree, "reader": "Dr Test"},
                timeout=10,
            )
            assert answer.status_code == 201, answer.text
    wait_state(router, studies[2], {"done", "attention"})  # no feedback on this one

    config_path = tmp_path / "radrouter.yaml"
    config = parse_config(config_path.read_text(encoding="utf-8"), str(config_path))
    on_sqlite = router_engine == "sqlite"
    db = existing_sqlite(tmp_path / "data") if on_sqlite else configured_database_of_router(config)
    assert db is not None
    assert isinstance(db, SqliteDatabase if on_sqlite else PostgresDatabase)
    try:
        present = summarise(validation_from_feedback(db, DarkestRegionOutliner.info))
        absent = summarise(validation_from_feedback(db, AlwaysNegative.info))
    finally:
        db.close_all()

    # darkest_region said present twice: agreed -> positive, disagreed -> negative
    assert (present["positives"], present["negatives"]) == (1, 1)
    assert present["at_operating_point"]["tp"] == 1 and present["at_operating_point"]["fp"] == 1
    # always_negative said absent twice: agreed -> negative, disagreed -> positive
    assert absent["at_operating_point"]["tn"] == 1 and absent["at_operating_point"]["fn"] == 1
    assert present["studies_without_truth"] == 1 == absent["studies_without_truth"]
    assert "shadow-mode results" in present["source"]


def test_validate_needs_a_folder_and_a_truth_file_or_shadow_results(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from router.cli import main

    assert main(["validate", "ct_water_qa"]) == 2
    assert "give a folder of cases and --truth CSV, or --from-shadow" in capsys.readouterr().err
    assert main(["validate", "ct_water_qa", str(tmp_path), "--from-shadow"]) == 2
    assert "--from-shadow takes no folder" in capsys.readouterr().err
    assert main(["validate", "ct_water_qa", "--from-shadow", "--data-dir", str(tmp_path)]) == 2
    assert "no radrouter database at" in capsys.readouterr().err


def test_validate_from_shadow_refuses_a_broken_config_named_by_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.cli import CONFIG_ENV, main

    broken = tmp_path / "radrouter.yaml"
    broken.write_text("node: {port: [unclosed\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(broken))
    args = ["validate", "ct_water_qa", "--from-shadow", "--out", str(tmp_path / "report")]
    assert main(args) == 2
    assert "config rejected" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_validate_from_shadow_names_an_unreachable_postgresql_without_its_password(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.cli import main
    from testing.orthanc import free_port

    config = tmp_path / "radrouter.yaml"
    config.write_text(
        f"storage: {{data_dir: {tmp_path / 'data'}, database: {{engine: postgresql, "
        f"url: 'postgresql://radrouter@127.0.0.1:{free_port()}/radrouter', "
        "password_env: RADROUTER_TEST_DB_PASSWORD}}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("RADROUTER_TEST_DB_PASSWORD", "s3cret-value")
    args = ["validate", "ct_water_qa", "--from-shadow", "--config", str(config)]
    assert main([*args, "--out", str(tmp_path / "report")]) == 2
    said = capsys.readouterr()
    assert "validate: database:" in said.err
    assert "s3cret-value" not in said.err + said.out
    assert not (tmp_path / "report").exists()


def test_a_broken_file_among_the_cases_is_left_out_not_fatal(
    cases: tuple[Path, dict[str, Truth], list[float]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = cases[0]
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    (mixed / "notes.txt").write_text("not DICOM")
    # A study of its own whose Instance Number cannot be read (IS "x1").
    (ds,) = make_ct_slices(1)
    ds.InstanceNumber = 1
    ds.save_as(tmp_path / "good.dcm", enforce_file_format=True)
    good = (tmp_path / "good.dcm").read_bytes()
    element = b"\x20\x00\x13\x00IS\x02\x001 "
    assert element in good
    (mixed / "broken.dcm").write_bytes(good.replace(element, element[:-2] + b"x1"))

    studies = find_studies(mixed)

    assert set(studies) == set(find_studies(folder))
    assert "1 file(s) are broken DICOM: left out" in caplog.text
    assert "broken.dcm" not in caplog.text


# Localisation: generated cases with bright spots, the truth a point in patient coordinates.


class BrightSpotFinder:
    """One finding per bright spot (a connected region above 0 HU) whose score,
    (peak HU - 100) / 1000, reaches the threshold (0.5 by default): centred on its brightest
    voxel, outlined by the 3x3 pixels around it."""

    info: ClassVar[AlgorithmInfo] = dataclasses.replace(BrightestVoxel.info, name="spots")

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        volume = study.series.array
        threshold = 0.5 if study.threshold is None else study.threshold
        labels, count = ndimage.label(volume > 0.0)
        findings = []
        scores = [0.0]
        for number in range(1, count + 1):
            spot = np.where(labels == number, volume, -np.inf)
            k, i, j = (int(v) for v in np.unravel_index(int(np.argmax(spot)), volume.shape))
            score = float(np.clip((float(volume[k, i, j]) - 100.0) / 1000.0, 0.0, 1.0))
            scores.append(score)
            if score >= threshold:
                box = (
                    (j - 1, i - 1),
                    (j + 2, i - 1),
                    (j + 2, i + 2),
                    (j - 1, i + 2),
                    (j - 1, i - 1),
                )
                findings.append(
                    Finding(
                        finding_type=LUNG_NODULE,
                        probability=score,
                        centre_voxel=(float(k), float(i), float(j)),
                        region=ImageRegion(k, tuple((float(x), float(y)) for x, y in box)),
                    )
                )
        if findings:
            return AlgorithmResult(
                Verdict.PRESENT, findings=tuple(findings), probability=max(scores)
            )
        return AlgorithmResult(Verdict.ABSENT, probability=max(scores))


Spot = tuple[int, int, int, float]
"""(slice, row, column, HU) of a bright voxel."""


def write_spots_case(folder: Path, spots: list[Spot]) -> tuple[str, list[pydicom.Dataset]]:
    """A small CT (4 slices of 32 x 32, spacing 2.5 x 0.8 x 0.8 mm) dark but for ``spots``."""
    folder.mkdir(parents=True)
    datasets = make_ct_slices(4, rows=32, cols=32)
    for k, ds in enumerate(datasets):
        ds.ManufacturerModelName = "Scanner A"
        values = np.full((32, 32), -900.0)
        for slice_index, row, column, hu in spots:
            if slice_index == k:
                values[row, column] = hu
        ds.PixelData = (values - float(ds.RescaleIntercept)).astype(np.int16).tobytes()
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return str(datasets[0].StudyInstanceUID), datasets


def lps(datasets: list[pydicom.Dataset], k: float, row: float, column: float) -> str:
    """The truth file's ``x y z`` (mm, LPS) of voxel (k, row, column) of an axial series."""
    x0, y0, z0 = (float(v) for v in datasets[0].ImagePositionPatient)
    row_mm, column_mm = (float(v) for v in datasets[0].PixelSpacing)
    step = float(datasets[1].ImagePositionPatient[2]) - z0
    return f"{x0 + column * column_mm:g} {y0 + row * row_mm:g} {z0 + k * step:g}"


@pytest.fixture(scope="module")
def spot_cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """The cases, their truth file, and each case's study UID by name."""
    folder = tmp_path_factory.mktemp("spots")
    rows = ["study_uid,label,location"]
    uids: dict[str, str] = {}

    def case(name: str, spots: list[Spot], label: str, where: str = "") -> list[pydicom.Dataset]:
        uid, datasets = write_spots_case(folder / name, spots)
        uids[name] = uid
        rows.append(f"{uid},{label},{where}")
        return datasets

    # Found: the truth one pixel (0.8 mm) from the finding's centre, inside its outline.
    ds = case("outlined", [(1, 16, 16, 900.0)], "present")
    rows[-1] += lps(ds, 1, 16, 17)
    # Found only by distance: 5 mm (6.25 pixels) beside the centre, outside the outline.
    ds = case("near", [(1, 16, 16, 900.0)], "present")
    rows[-1] += lps(ds, 1, 16, 16 + 5.0 / 0.8)
    # Missed: the finding in one corner, the truth in the other, on another slice.
    ds = case("elsewhere", [(1, 4, 4, 900.0)], "present")
    rows[-1] += lps(ds, 2, 28, 28)
    # Found, and a far-away false positive in the same case; two truth points, one found.
    ds = case("two", [(2, 10, 10, 800.0), (0, 28, 28, 700.0)], "present")
    rows[-1] += f"{lps(ds, 2, 10, 10)};{lps(ds, 3, 28, 4)}"
    # Missed: too dim to be called (score 0.35).
    ds = case("dim", [(1, 16, 16, 450.0)], "present")
    rows[-1] += lps(ds, 1, 16, 16)
    # A positive without a location: its finding cannot be judged.
    case("unlocated", [(1, 20, 20, 900.0)], "present")
    # Negatives: one with a false-positive finding, one dark.
    case("bright_negative", [(1, 8, 24, 800.0)], "absent")
    case("dark_negative", [], "absent")
    truth = folder.parent / f"{folder.name}-truth.csv"
    truth.write_text("\n".join(rows) + "\n")
    return folder, truth, uids


def _by_uid(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["study_uid"]: row for row in figures["cases"]}


def test_localisation_counts_hits_misses_and_false_positive_findings(
    spot_cases: tuple[Path, Path, dict[str, str]],
) -> None:
    folder, truth_path, uids = spot_cases
    truth = read_truth(truth_path)
    assert len(truth[uids["two"]].locations) == 2 and truth[uids["unlocated"]].locations == ()
    run = validate("spots", Registry({"spots": BrightSpotFinder}), folder, truth)

    place = summarise(run)["localisation"]

    assert place["hit_mm"] == 10.0
    assert place["positives_with_location"] == 5  # outlined, near, elsewhere, two, dim
    assert place["localised"] == 3  # outlined, near, two
    assert place["sensitivity"] == pytest.approx(3 / 5)
    assert place["positives_found_elsewhere"] == 1  # elsewhere
    assert (place["lesions"], place["lesions_found"]) == (6, 3)
    # judged: the 5 located positives and the 2 negatives; false positives: the finding of
    # "elsewhere", the far-away one of "two", the one on the bright negative
    assert place["cases_judged"] == 7
    assert place["false_positive_findings"] == 3
    assert place["false_positives_per_case"] == pytest.approx(3 / 7)
    rows = _by_uid(place)
    assert rows[uids["two"]]["found"] == [True, False]
    far = [f for f in rows[uids["two"]]["findings"] if not f["at_truth"]]
    assert len(far) == 1 and far[0]["nearest_mm"] > 15.0
    assert rows[uids["near"]]["findings"][0]["nearest_mm"] == pytest.approx(5.0)
    assert rows[uids["dim"]]["verdict"] == "absent" and rows[uids["dim"]]["found"] == [False]
    assert uids["unlocated"] not in rows and uids["dark_negative"] not in rows
    assert rows[uids["bright_negative"]]["truth"] == "negative"


def test_the_hit_distance_decides_centres_but_not_outlines(
    spot_cases: tuple[Path, Path, dict[str, str]],
) -> None:
    folder, truth_path, uids = spot_cases
    run = validate(
        "spots", Registry({"spots": BrightSpotFinder}), folder, read_truth(truth_path), hit_mm=0.5
    )

    place = summarise(run)["localisation"]

    rows = _by_uid(place)
    assert rows[uids["outlined"]]["found"] == [True]  # 0.8 mm off, inside the outline
    assert rows[uids["near"]]["found"] == [False]  # 5 mm off, outside the outline
    assert place["localised"] == 2
    assert place["false_positive_findings"] == 4
    wider = summarise(dataclasses.replace(run, hit_mm=10.0))["localisation"]
    assert wider["localised"] == 3
    with pytest.raises(ValueError, match="hit_mm"):
        validate("spots", Registry({"spots": BrightSpotFinder}), folder, {}, hit_mm=0.0)


def test_the_report_lists_the_localisation(
    spot_cases: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, truth_path, uids = spot_cases
    run = validate("spots", Registry({"spots": BrightSpotFinder}), folder, read_truth(truth_path))
    json_path, html_path = write_report(run, tmp_path / "report")

    figures = json.loads(json_path.read_text())
    page = html_path.read_text()
    assert figures["localisation"]["localised"] == 3
    assert len(figures["localisation"]["cases"]) == 6
    assert "Localisation (at the operating point)" in page
    assert "3 of 5 (60.0 %)" in page
    assert "0.43 (3 findings on 7 cases" in page
    assert uids["elsewhere"] in page and "missed" in page and "found" in page
    assert "mm from the nearest truth location" in page


def test_without_locations_the_report_has_no_localisation(
    cases: tuple[Path, dict[str, Truth], list[float]], tmp_path: Path
) -> None:
    folder, truth, _ = cases
    run = validate("brightest", Registry({"brightest": BrightestVoxel}), folder, truth)
    _, html_path = write_report(run, tmp_path / "report")
    assert summarise(run)["localisation"] is None
    assert "Localisation" not in html_path.read_text()


def test_a_truth_file_with_a_bad_location_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "truth.csv"
    path.write_text('study_uid,label,location\n1.2.3,present,"1,2,3"\n\n1.2.4,present,10 20\n')
    with pytest.raises(TruthFileError, match=r"truth.csv:4: location '10 20' is not three"):
        read_truth(path)
    path.write_text("study_uid,label,location\n1.2.3,present,1 2 3\n1.2.4,1,1 2 z\n")
    with pytest.raises(TruthFileError, match=r"truth.csv:3: location '1 2 z' has a coordinate"):
        read_truth(path)
    path.write_text("study_uid,label,location\n1.2.3,absent,1 2 3\n")
    with pytest.raises(TruthFileError, match=r"truth.csv:2: a location on a negative case"):
        read_truth(path)
    path.write_text("study_uid,label,location\n1.2.3,present,1,2,3\n")
    with pytest.raises(TruthFileError, match=r"truth.csv:2: more fields than the header"):
        read_truth(path)
    path.write_text("study_uid,label,location\n1.2.3,present, 1 2 3 ; -4.5 6e1 nan \n")
    with pytest.raises(TruthFileError, match=r"truth.csv:2: .*not finite"):
        read_truth(path)
    assert parse_location(" 1 2 3 ; -4.5,6e1,7 ") == ((1.0, 2.0, 3.0), (-4.5, 60.0, 7.0))
    assert parse_location("") == ()


def test_validate_with_a_bad_location_says_which_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from router.cli import main

    (tmp_path / "truth.csv").write_text("study_uid,label,location\n1.2.3,present,1;2;3\n")
    code = main(["validate", "ct_water_qa", str(tmp_path), "--truth", str(tmp_path / "truth.csv")])
    assert code == 2
    assert "truth.csv:2: location '1' is not three coordinates" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["validate", "ct_water_qa", str(tmp_path), "--hit-mm", "0"])
    assert "give a distance in mm above 0" in capsys.readouterr().err


# The ROC sweep against counting every threshold afresh.


def _brute_roc(scores: list[float], labels: list[bool]) -> list[tuple[float, float]]:
    points = [(0.0, 0.0)]
    for threshold in sorted(set(scores), reverse=True):
        rates = metrics.rates_at(scores, labels, threshold)
        points.append((1.0 - rates.specificity, rates.sensitivity))
    return [*points, (1.0, 1.0)]


def _brute_youden(scores: list[float], labels: list[bool]) -> metrics.Rates | None:
    if all(labels) or not any(labels):
        return None
    best = None
    for threshold in sorted(set(scores), reverse=True):
        rates = metrics.rates_at(scores, labels, threshold)
        if best is None or rates.sensitivity + rates.specificity > (
            best.sensitivity + best.specificity
        ):
            best = rates
    return best


def test_the_roc_sweep_equals_counting_every_threshold() -> None:
    rng = random.Random(12)
    for trial in range(300):
        n = rng.randint(1, 60)
        grain = rng.choice([2, 5, 20, 1000])  # few distinct scores: many ties
        scores = [rng.randint(0, grain) / grain for _ in range(n)]
        labels = [rng.random() < rng.choice([0.0, 0.3, 0.5, 1.0]) for _ in range(n)]
        assert repr(metrics.roc_points(scores, labels)) == repr(_brute_roc(scores, labels)), trial
        assert metrics.youden_threshold(scores, labels) == _brute_youden(scores, labels), trial
    assert math.isnan(metrics.roc_points([0.2, 0.4], [True, True])[1][0])
    assert metrics.roc_points([], []) == [(0.0, 0.0), (1.0, 1.0)]
