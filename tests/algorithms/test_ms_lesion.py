"""Tests of the MS lesion generator, input rules, model grid, registration, change analysis and
plugin (the real ONNX model), and of the whole path through the router."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pydicom
import pytest

from algorithms import codes
from algorithms.contract import Algorithm, Finding, PriorStudy, StudyInput, Verdict
from algorithms.ms_lesion import change, inputs, preprocess
from algorithms.ms_lesion.plugin import MSLesionSegmenter
from algorithms.ms_lesion.registration import register_rigid
from dicom_sr.read import read_measurement_report
from router.service import wait_for
from testing.dicom_tools import run_dciodvfy
from testing.mr_dicom import write_mr_series
from testing.router_process import StartRouter
from testing.storescp import DCMTK_ENV, complete_objects, running_storescp
from testing.synthetic_dicom import new_patient_study
from training.ms_lesion import synth
from training.ms_lesion.evaluate import (
    FLAIR_HEADER,
    make_study,
    prior_findings_of,
    series_of,
)

SEED = 4242
SMALL_2D = synth.Protocol(
    mode="2d",
    pixel_mm=1.0,
    slice_spacing_mm=5.0,
    slice_thickness_mm=5.0,
    rows=220,
    columns=184,
    slices=29,
    orientation="axial",
    centre_head_mm=(0.0, 0.0, 8.0),
)
POSE = synth.HeadPose((3.0, -2.0, 4.0), (2.0, -5.0, 3.0))


@pytest.fixture(scope="module")
def phantom() -> synth.BrainPhantom:
    return synth.BrainPhantom(SEED)


@pytest.fixture(scope="module")
def segmenter() -> MSLesionSegmenter:
    plugin = MSLesionSegmenter()
    plugin.load("cpu")
    return plugin


def _lesion(
    phantom: synth.BrainPhantom, kind: synth.LesionKind, draw: int, size: float
) -> synth.LesionSpec:
    rng = np.random.default_rng([SEED, draw])
    spec = phantom.lesion_near(phantom.point_of_kind(kind, draw), kind, rng, long_semi_axis_mm=size)
    return spec


@pytest.fixture(scope="module")
def three_lesions(phantom: synth.BrainPhantom) -> list[synth.LesionSpec]:
    return [
        _lesion(phantom, "periventricular", 1, 5.0),
        _lesion(phantom, "juxtacortical", 2, 4.0),
        _lesion(phantom, "deep", 3, 4.0),
    ]


@pytest.fixture(scope="module")
def positive_exam(
    phantom: synth.BrainPhantom, three_lesions: list[synth.LesionSpec]
) -> synth.SyntheticFlair:
    return synth.acquire(phantom, three_lesions, SMALL_2D, POSE, np.random.default_rng(1))


@pytest.fixture(scope="module")
def negative_exam(phantom: synth.BrainPhantom) -> synth.SyntheticFlair:
    return synth.acquire(phantom, [], SMALL_2D, POSE, np.random.default_rng(2))


def _distance_mm(a: tuple[float, ...], b: tuple[float, ...], spacing: tuple[float, ...]) -> float:
    return float(np.linalg.norm((np.array(a) - np.array(b)) * np.array(spacing)))


# --- generator -------------------------------------------------------------------------------


def test_generator_is_deterministic_by_seed(phantom: synth.BrainPhantom) -> None:
    a = synth.generate_flair(SEED, protocol=SMALL_2D, lesions=3, phantom=phantom)
    b = synth.generate_flair(SEED, protocol=SMALL_2D, lesions=3, phantom=phantom)
    assert a.image.dtype == np.uint16 and a.image.shape == (29, 220, 184)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lesion_labels, b.lesion_labels)
    assert a.lesions == b.lesions and 1 <= len(a.lesions) <= 3
    with pytest.raises(ValueError, match="seed"):
        synth.generate_flair(SEED + 1, protocol=SMALL_2D, phantom=phantom)


def test_flair_has_dark_fluid_bright_cortex_and_bright_lesions(
    positive_exam: synth.SyntheticFlair,
) -> None:
    image, anatomy = positive_exam.image.astype(float), positive_exam.anatomy
    labels = positive_exam.lesion_labels
    wm = np.median(image[(anatomy == synth.Tissue.WHITE_MATTER) & (labels == 0)])
    assert np.median(image[anatomy == synth.Tissue.VENTRICLE]) < 0.35 * wm
    assert np.median(image[anatomy == synth.Tissue.CSF]) < 0.5 * wm
    assert np.median(image[anatomy == synth.Tissue.CORTEX]) > 1.03 * wm
    assert np.median(image[labels > 0]) > 1.25 * wm
    assert image[0, :5, :5].mean() < 0.2 * wm  # air outside the head (Rician noise floor)


def test_t2_contrast_makes_fluid_bright(phantom: synth.BrainPhantom) -> None:
    exam = synth.acquire(phantom, [], SMALL_2D, POSE, np.random.default_rng(3), contrast="t2")
    image, anatomy = exam.image.astype(float), exam.anatomy
    assert np.median(image[anatomy == synth.Tissue.VENTRICLE]) > 1.5 * np.median(
        image[anatomy == synth.Tissue.WHITE_MATTER]
    )


def test_lesions_lie_where_their_kind_says(phantom: synth.BrainPhantom) -> None:
    spec = _lesion(phantom, "periventricular", 1, 5.0)
    centre = np.array(spec.centre_mm)
    idx = tuple(int(np.rint(v)) for v in (centre[::-1] - np.array(synth.PHANTOM_MIN_XYZ)[::-1]))
    assert phantom.dist_ventricle[idx] < 6.0
    # Dawson's finger: the long axis points away from the ventricle wall.
    outward = phantom._ventricle_normal(spec.centre_mm)
    assert abs(float(np.dot(spec.axes[0], outward))) > 0.7
    infra = _lesion(phantom, "infratentorial", 4, 3.0)
    assert phantom.site_of(infra.centre_mm) in synth.INFRATENTORIAL
    assert phantom.site_of(_lesion(phantom, "deep", 3, 3.0).centre_mm) == synth.Tissue.WHITE_MATTER


def test_thick_slices_and_3d_variants_have_their_own_geometry(phantom: synth.BrainPhantom) -> None:
    rng = np.random.default_rng(5)
    thick = synth.random_protocol(rng, mode="2d")
    iso = synth.random_protocol(rng, mode="3d", orientation="sagittal")
    assert 3.0 <= thick.slice_thickness_mm <= 5.0 and thick.orientation == "axial"
    assert iso.slice_spacing_mm == iso.pixel_mm <= 1.2 and iso.orientation == "sagittal"
    affine = synth.protocol_affine(iso, POSE)
    assert abs(affine[0, 0]) == pytest.approx(iso.pixel_mm)  # sagittal: slices along x


def test_followup_pair_shares_the_brain_and_records_each_change(
    phantom: synth.BrainPhantom,
) -> None:
    pair = synth.generate_followup_pair(
        SEED, prior_lesions=8, new_lesions=2, protocols=(SMALL_2D, SMALL_2D), phantom=phantom
    )
    statuses = {c.number: c.status for c in pair.changes}
    assert sum(s == "new" for s in statuses.values()) == 2
    prior_numbers = {le.number for le in pair.prior.lesions}
    current_numbers = {le.number for le in pair.current.lesions}
    assert not any(statuses[n] == "new" for n in prior_numbers)
    assert not any(statuses[n] == "resolved" for n in current_numbers)
    for c in pair.changes:
        if c.status == "enlarged":
            assert c.current_volume_mm3 > 2.0 * c.prior_volume_mm3
        if c.status == "stable":
            assert c.current_volume_mm3 == c.prior_volume_mm3
    assert pair.prior.pose != pair.current.pose
    assert np.isin(pair.prior.anatomy, list(synth.Tissue)).all()


def test_synth_and_plugin_do_not_import_torch() -> None:
    code = (
        "import sys, training.ms_lesion.synth, algorithms.ms_lesion.plugin; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- input rules and model grid ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "refused_because"),
    [
        ({"SeriesDescription": "AX T2 FLAIR", "InversionTime": "2500"}, ""),
        ({"SeriesDescription": "3D DARK FLUID"}, ""),
        ({"SequenceName": "*spcir_220ns"}, ""),
        ({}, ""),
        ({"InversionTime": "2200", "ScanningSequence": "SE\\IR"}, ""),
        ({"SeriesDescription": "AX T1 FLAIR"}, "T1-weighted FLAIR"),
        ({"SeriesDescription": "AX FLAIR", "InversionTime": "900"}, "too short"),
        ({"SeriesDescription": "SAG T1 MPRAGE"}, "not a FLAIR"),
        ({"SeriesDescription": "AX T2 TSE"}, "'T2'"),
        ({"SeriesDescription": "DWI b1000"}, "not a FLAIR"),
        ({"InversionTime": "160"}, "not a fluid-attenuating"),
        ({"ScanningSequence": "GR"}, "no inversion recovery"),
    ],
)
def test_header_rules_refuse_what_is_not_flair(
    header: dict[str, str], refused_because: str
) -> None:
    problem = inputs.check_header({"Modality": "MR", **header})
    if refused_because:
        assert refused_because in problem
    else:
        assert problem == ""


def test_header_rules_refuse_other_modalities() -> None:
    assert "needs MR" in inputs.check_header({"Modality": "CT", "SeriesDescription": "FLAIR"})


def test_geometry_rules_refuse_unreadable_volumes(positive_exam: synth.SyntheticFlair) -> None:
    array, affine = positive_exam.image.astype(np.float32), positive_exam.affine
    assert inputs.check_geometry(array, affine) == ""
    assert "Only 8 slices" in inputs.check_geometry(array[:8], affine)
    thick = affine.copy()
    thick[:3, 0] *= 1.6
    assert "Slice spacing" in inputs.check_geometry(array, thick)
    assert "Field of view" in inputs.check_geometry(array[:, :100, :100], affine)
    sagittal = np.array([[5.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])
    assert "not axial" in inputs.check_geometry(array, sagittal)


def test_model_grid_keeps_axial_slices_and_maps_back(positive_exam: synth.SyntheticFlair) -> None:
    k_, i_, j_ = positive_exam.image.shape
    shape = (k_, i_, j_)
    grid = preprocess.plan_grid(positive_exam.affine, shape)
    assert grid is not None and grid.slice_preserving
    assert grid.model_to_input[0, :3] == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    assert np.allclose(positive_exam.affine @ grid.model_to_input, grid.affine)
    smooth = np.fromfunction(lambda k, i, j: np.sin(i / 9.0) + np.cos(j / 7.0) + k, shape)
    back = preprocess.to_input(preprocess.resample(smooth, grid), grid, shape)
    inner = (slice(None), slice(20, -20), slice(20, -20))
    assert np.abs(back[inner] - smooth[inner]).max() < 0.05


def test_model_grid_reformats_isotropic_sagittal_volumes_to_axial() -> None:
    sagittal = np.array([[1.0, 0, 0, -80], [0, 0, 1.0, -100], [0, -1.0, 0, 90], [0, 0, 0, 1.0]])
    grid = preprocess.plan_grid(sagittal, (160, 180, 200))
    assert grid is not None and not grid.slice_preserving
    assert np.allclose(grid.affine[:3, :3], np.diag([1.0, 1.0, 1.0])[:, ::-1])
    thick = sagittal.copy()
    thick[:3, 0] *= 4.0
    assert preprocess.plan_grid(thick, (40, 180, 200)) is None


# --- registration and change ----------------------------------------------------------------


def test_registration_recovers_a_known_head_movement(phantom: synth.BrainPhantom) -> None:
    moved = synth.HeadPose((-4.0, 3.0, -6.0), (-6.0, 8.0, -4.0))
    a = synth.acquire(phantom, [], SMALL_2D, POSE, np.random.default_rng(6))
    b = synth.acquire(phantom, [], SMALL_2D, moved, np.random.default_rng(7))
    reg = register_rigid(a.image, a.affine, b.image, b.affine)
    head = np.random.default_rng(0).uniform(-45.0, 45.0, size=(100, 3))
    in_a = head @ POSE.matrix().T + np.array(POSE.translation_mm)
    in_b = head @ moved.matrix().T + np.array(moved.translation_mm)
    error = np.linalg.norm(reg.apply(in_a) - in_b, axis=1)
    assert reg.aligned and error.mean() < 1.0 and error.max() < 2.0
    assert np.linalg.norm(in_a - in_b, axis=1).mean() > 8.0


def test_change_classification_uses_ratio_and_minimum_growth() -> None:
    assert change.classify(50.0, 0.0) is change.Change.NEW
    assert change.classify(300.0, 100.0) is change.Change.ENLARGING
    assert change.classify(24.0, 12.0) is change.Change.STABLE  # doubled but only 12 mm3 more
    assert change.classify(120.0, 100.0) is change.Change.STABLE
    assert change.classify(40.0, 100.0) is change.Change.DECREASED
    assert change.tracking_number("Lesion 12") == 12 and change.tracking_number("x") is None


# --- plugin ------------------------------------------------------------------------------------


def test_model_card_matches_the_shipped_model() -> None:
    package = resources.files("algorithms.ms_lesion")
    model = package.joinpath("model.onnx").read_bytes()
    card = json.loads(package.joinpath("model.json").read_text())
    assert card["sha256"] == hashlib.sha256(model).hexdigest()
    assert len(model) < 2_000_000
    assert card["input"]["pixel_mm"] == preprocess.MODEL_PIXEL_MM
    assert card["output"]["channels"][0] == "lesion"


def test_plugin_satisfies_the_algorithm_protocol() -> None:
    assert isinstance(MSLesionSegmenter(), Algorithm)
    info = MSLesionSegmenter.info
    assert info.name == "ms_lesion" and info.modalities == frozenset({"MR"})
    assert info.target == codes.DEMYELINATION and info.clinical_use is False
    assert "not for clinical use" in info.intended_use.lower()
    assert "synthetic" in info.intended_use.lower()


def test_run_before_load_is_an_error(negative_exam: synth.SyntheticFlair) -> None:
    with pytest.raises(RuntimeError, match="load"):
        MSLesionSegmenter().run(make_study(negative_exam))


def test_plugin_outlines_each_lesion_at_its_place(
    segmenter: MSLesionSegmenter, positive_exam: synth.SyntheticFlair
) -> None:
    result = segmenter.run(make_study(positive_exam))
    assert result.verdict is Verdict.PRESENT, result.reason
    spacing = positive_exam.spacing_mm
    for truth in positive_exam.lesions:
        best = min(
            result.findings, key=lambda f: _distance_mm(f.centre_voxel, truth.centre_voxel, spacing)
        )
        assert _distance_mm(best.centre_voxel, truth.centre_voxel, spacing) < 5.0, truth.kind
        assert (
            best.mask is not None
            and (best.mask & (positive_exam.lesion_labels == truth.number)).any()
        )
        assert best.finding_type == codes.DEMYELINATION
        assert best.finding_site == codes.CEREBRAL_WHITE_MATTER
        values = {m.name: m for m in best.measurements}
        assert values[codes.VOLUME].unit == codes.CUBIC_MILLIMETRE
        physical = truth.spec.volume_mm3  # the ellipsoid; thick slices blur any voxel count
        assert 0.4 * physical < values[codes.VOLUME].value < 2.5 * physical
        assert values[codes.LONG_AXIS].unit == codes.MILLIMETRE
        assert best.qualifiers == ()  # no prior: no change statement
        k = best.region.slice_index
        assert best.mask[k].any()
    ids = [f.tracking_id for f in result.findings]
    assert ids == [f"Lesion {n}" for n in range(1, len(ids) + 1)]
    study_level = {m.name: m.value for m in result.measurements}
    assert study_level[codes.NUMBER_OF_LESIONS] == len(result.findings)
    assert study_level[codes.VOLUME] == pytest.approx(
        sum(m.value for f in result.findings for m in f.measurements if m.name == codes.VOLUME),
        rel=0.01,
    )
    assert codes.NUMBER_OF_NEW_LESIONS not in study_level
    assert "periventricular" in result.reason


def test_plugin_says_absent_for_a_lesion_free_brain(
    segmenter: MSLesionSegmenter, negative_exam: synth.SyntheticFlair
) -> None:
    result = segmenter.run(make_study(negative_exam))
    assert result.verdict is Verdict.ABSENT, result.reason
    assert result.findings == ()
    assert "no flair-hyperintense white matter lesion" in result.reason.lower()
    assert {m.name: m.value for m in result.measurements}[codes.NUMBER_OF_LESIONS] == 0


def test_plugin_reads_an_isotropic_sagittal_3d_flair(
    segmenter: MSLesionSegmenter, phantom: synth.BrainPhantom, three_lesions: list[synth.LesionSpec]
) -> None:
    protocol = synth.Protocol("3d", 1.2, 1.2, 1.2, 150, 180, 125, "sagittal", (0.0, 0.0, 8.0))
    exam = synth.acquire(phantom, three_lesions[:1], protocol, POSE, np.random.default_rng(8))
    result = segmenter.run(make_study(exam, header={**FLAIR_HEADER, "MRAcquisitionType": "3D"}))
    assert result.verdict is Verdict.PRESENT, result.reason
    truth = exam.lesions[0]
    best = min(
        result.findings,
        key=lambda f: _distance_mm(f.centre_voxel, truth.centre_voxel, exam.spacing_mm),
    )
    assert _distance_mm(best.centre_voxel, truth.centre_voxel, exam.spacing_mm) < 5.0


def test_plugin_uses_the_study_threshold(
    segmenter: MSLesionSegmenter, positive_exam: synth.SyntheticFlair
) -> None:
    study = make_study(positive_exam)
    volumes = []
    for threshold in (0.2, 0.9):
        result = segmenter.run(
            StudyInput(study.study_instance_uid, study.series, threshold=threshold)
        )
        volumes.append({m.name: m.value for m in result.measurements}[codes.VOLUME])
    assert volumes[0] > volumes[1]


def test_plugin_does_not_assess_wrong_inputs(
    segmenter: MSLesionSegmenter, phantom: synth.BrainPhantom, negative_exam: synth.SyntheticFlair
) -> None:
    ct = segmenter.run(make_study(negative_exam, header={"Modality": "CT"}))
    assert ct.verdict is Verdict.NOT_ASSESSED and "needs MR" in ct.reason
    t1 = segmenter.run(
        make_study(negative_exam, header={"Modality": "MR", "SeriesDescription": "SAG T1 MPRAGE"})
    )
    assert t1.verdict is Verdict.NOT_ASSESSED and "not a FLAIR" in t1.reason
    t2_image = synth.acquire(phantom, [], SMALL_2D, POSE, np.random.default_rng(9), contrast="t2")
    t2 = segmenter.run(make_study(t2_image, header={"Modality": "MR"}))
    assert t2.verdict is Verdict.NOT_ASSESSED, t2.reason
    assert "FLAIR" in t2.reason
    study = make_study(negative_exam)
    few = StudyInput(
        study.study_instance_uid,
        type(study.series)(
            study.series.series_instance_uid,
            study.series.array[:8],
            type(study.series.geometry)(study.series.geometry.affine, (8, 220, 184), "2.25.9"),
            study.series.header,
        ),
    )
    short = segmenter.run(few)
    assert short.verdict is Verdict.NOT_ASSESSED and "8 slices" in short.reason


def test_followup_marks_new_and_enlarging_lesions_and_keeps_tracking_ids(
    segmenter: MSLesionSegmenter, phantom: synth.BrainPhantom, three_lesions: list[synth.LesionSpec]
) -> None:
    stable, growing, _ = three_lesions
    new = _lesion(phantom, "juxtacortical", 11, 4.5)
    prior_exam = synth.acquire(
        phantom, [stable, growing], SMALL_2D, POSE, np.random.default_rng(10), numbers=[1, 2]
    )
    moved = synth.HeadPose((-3.0, 2.0, 5.0), (4.0, 6.0, -5.0))
    current_exam = synth.acquire(
        phantom,
        [stable, growing.scaled(1.6), new],
        SMALL_2D,
        moved,
        np.random.default_rng(11),
        numbers=[1, 2, 3],
    )
    prior_result = segmenter.run(make_study(prior_exam, "2.25.101"))
    assert prior_result.verdict is Verdict.PRESENT
    prior = PriorStudy(
        "2.25.101",
        series_of(prior_exam, "2.25.101"),
        "20230115",
        prior_findings_of(prior_result, prior_exam.affine),
    )
    result = segmenter.run(make_study(current_exam, "2.25.102", priors=(prior,)))
    assert result.verdict is Verdict.PRESENT, result.reason
    assert "compared with prior of 2023-01-15" in result.reason

    def finding_over(
        exam: synth.SyntheticFlair, findings: tuple[Finding, ...], number: int
    ) -> Finding:
        hits = [
            f
            for f in findings
            if f.mask is not None and (f.mask & (exam.lesion_labels == number)).any()
        ]
        assert hits, f"lesion {number} not found"
        return hits[0]

    changes = {}
    for number in (1, 2, 3):
        f = finding_over(current_exam, result.findings, number)
        (qualifier,) = f.qualifiers
        assert qualifier.name == codes.CHANGED_STATUS
        changes[number] = (qualifier.value, f.tracking_id)
    assert changes[1][0] == codes.STABLE
    assert changes[2][0] == codes.INCREASED
    assert changes[3][0] == codes.NEW
    for number in (1, 2):
        earlier = finding_over(prior_exam, prior_result.findings, number)
        assert changes[number][1] == earlier.tracking_id
    highest = max(change.tracking_number(f.tracking_id) or 0 for f in prior_result.findings)
    assert (change.tracking_number(changes[3][1]) or 0) > highest
    study_level = {m.name: m.value for m in result.measurements}
    assert study_level[codes.NUMBER_OF_NEW_LESIONS] >= 1
    assert study_level[codes.NUMBER_OF_ENLARGING_LESIONS] >= 1


def test_prior_that_is_not_flair_is_not_used(
    segmenter: MSLesionSegmenter,
    positive_exam: synth.SyntheticFlair,
    negative_exam: synth.SyntheticFlair,
) -> None:
    prior = PriorStudy(
        "2.25.201",
        series_of(
            negative_exam, "2.25.201", header={"Modality": "MR", "SeriesDescription": "AX T2 TSE"}
        ),
        "20220101",
    )
    result = segmenter.run(make_study(positive_exam, "2.25.202", priors=(prior,)))
    assert result.verdict is Verdict.PRESENT
    assert "prior of 2022-01-01 not used" in result.reason
    assert all(f.qualifiers == () for f in result.findings)


# --- through the router ------------------------------------------------------------------------


def _router_yaml(destination_port: int) -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"destinations:\n  pacs: {{ae_title: STORESCP, host: 127.0.0.1, port: {destination_port}, timeout_s: 10}}\n"
        "completion: {settle_after_release_s: 0.3, series_idle_s: 5, study_idle_s: 20, hard_cap_s: 300}\n"
        "rules:\n"
        "  - name: brain-flair-ms\n"
        "    when: {Modality: MR, SeriesDescription: {regex: '(?i)flair'}}\n"
        "    run: ms_lesion\n"
        "    send_to: [pacs]\n"
    )


def test_router_returns_an_sr_with_the_lesion_for_a_flair_study(
    start_router: StartRouter,
    tmp_path: Path,
    positive_exam: synth.SyntheticFlair,
    negative_exam: synth.SyntheticFlair,
) -> None:
    with running_storescp(tmp_path / "pacs") as pacs:
        port, received = pacs.port, pacs.folder
        router = start_router(_router_yaml(port))
        studies = {}
        for name, exam, seed in (("positive", positive_exam, 1), ("negative", negative_exam, 2)):
            study = new_patient_study(SEED * 10 + seed)
            paths = write_mr_series(exam.image, exam.affine, study, tmp_path / name)
            studies[name] = (study.study_instance_uid, paths, exam)
            subprocess.run(
                [
                    "/usr/bin/storescu",
                    "-aet",
                    "PACS",
                    "-aec",
                    "RADROUTER",
                    "127.0.0.1",
                    str(router.dicom_port),
                    *map(str, paths),
                ],
                check=True,
                capture_output=True,
                env=DCMTK_ENV,
                timeout=60,
            )

        def reports() -> dict[str, tuple[Path, pydicom.Dataset]]:
            found: dict[str, tuple[Path, pydicom.Dataset]] = {}
            for path, ds in complete_objects(received):
                if ds.Modality == "SR":
                    found[str(ds.StudyInstanceUID)] = (path, ds)
            return found

        assert wait_for(lambda: len(reports()) == 2, 240, 0.5), f"SRs received: {len(reports())}"
        by_study = reports()
        positive_uid, positive_paths, exam = studies["positive"]
        path, ds = by_study[positive_uid]
        assert run_dciodvfy(path).errors == []
        summary = read_measurement_report(ds)
        assert summary.verdict is Verdict.PRESENT, summary.reason
        slice_of = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): int(
                pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber
            )
            - 1
            for p in positive_paths
        }
        spacing = exam.spacing_mm
        for truth in exam.lesions:
            distances = []
            for f in summary.findings:
                k = slice_of[f.referenced_sop_instance_uid]
                col, row = np.mean(np.array(f.points[:-1]), axis=0)
                distances.append(_distance_mm((k, row, col), truth.centre_voxel, spacing))
            assert min(distances) < 6.0, (truth.kind, distances)
        negative_uid = studies["negative"][0]
        negative = read_measurement_report(by_study[negative_uid][1])
        assert negative.verdict is Verdict.ABSENT and negative.findings == ()
