"""Third-party models by manifest alone: parsing errors, preprocessing, output mapping, and a
manifest-only model running through a rule in a real router to an SR read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from algorithms import codes
from algorithms.contract import Code, Verdict
from algorithms.manifest.algorithm import ManifestAlgorithm, algorithm_class, check_series
from algorithms.manifest.discovery import discover_manifests
from algorithms.manifest.loader import ManifestError, load_manifest, parse_manifest
from algorithms.manifest.outputs import (
    ManifestRunError,
    RunOutputs,
    box_findings,
    classification_scores,
    component_findings,
    long_axis_mm,
    mask_findings,
    mask_on_input_grid,
)
from algorithms.manifest.preprocess import (
    ModelBatch,
    apply_intensity,
    plan_grid,
    prepare,
    to_input_grid,
    to_model_grid,
)
from algorithms.manifest.schema import (
    BoxesOutput,
    ClassificationOutput,
    CodeSpec,
    Layout,
    MaskOutput,
    Preprocessing,
)
from algorithms.registry import Registry
from dicom_sr.read import read_measurement_report
from router.route.check_config import check_config_file
from testing.dicom_tools import make_ct_slices, run_dciodvfy
from testing.router_process import StartRouter, storescu, study_uid_of, wait_state
from testing.storescp import ReceivingPacs
from tests.algorithms.manifest_support import (
    EXAMPLES,
    SEGMENTER_MANIFEST,
    ct_with_cube,
    example_builder,
    sha256_of,
    study,
    write_manifest,
)

VENDOR = example_builder()


@pytest.fixture(scope="module")
def vendor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example vendor models and their manifests, as ``make_example_model.py`` writes them."""
    folder = tmp_path_factory.mktemp("vendor")
    VENDOR.build_all(folder, torchscript=True)
    return folder


def loaded_algorithm(manifest: Path) -> ManifestAlgorithm:
    algorithm = algorithm_class(load_manifest(manifest))()
    algorithm.load("cpu")
    return algorithm


def segmenter_text(vendor_dir: Path, **changes: str) -> str:
    model = vendor_dir / "ct_bright_lesion.onnx"
    values = {"name": "test_segmenter", "model": str(model), "sha256": sha256_of(model)}
    values.update(changes)
    return SEGMENTER_MANIFEST.format(**values)


def line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if fragment in line)


# --------------------------------------------------------------------------------------------
# Parsing errors name the file, line and key


def test_the_shipped_example_manifests_load_once_their_models_are_built(vendor_dir: Path) -> None:
    found = discover_manifests([vendor_dir])
    assert found.problems == ()
    assert sorted(found.algorithms) == [
        "example_bright_region_detector",
        "example_ct_bright_lesion",
        "example_ct_bright_lesion_ts",
        "example_ct_dense_tissue",
    ]
    info = found.algorithms["example_ct_bright_lesion"].info
    assert info.modalities == frozenset({"CT"}) and info.clinical_use is False
    assert info.target == Code("52988006", "SCT", "Lesion")
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(
        p.name for p in vendor_dir.glob("*.yaml")
    )


def test_an_unknown_key_is_reported_with_line_column_and_a_suggestion(
    vendor_dir: Path, tmp_path: Path
) -> None:
    text = segmenter_text(vendor_dir).replace("  clip:", "  clipp:")
    path = write_manifest(tmp_path, text)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    (issue,) = caught.value.issues
    assert (issue.file, issue.line, issue.column) == (str(path), line_of(text, "clipp"), 3)
    assert issue.key == "preprocessing.clipp"
    assert "did you mean 'clip'" in issue.message and "allowed here:" in issue.message


def test_an_unknown_key_inside_an_output_lists_that_kind_s_keys(
    vendor_dir: Path, tmp_path: Path
) -> None:
    text = segmenter_text(vendor_dir).replace("    voxel_threshold:", "    voxel_treshold:")
    path = write_manifest(tmp_path, text)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    (issue,) = caught.value.issues
    assert issue.key == "outputs[0].voxel_treshold"
    assert issue.line == line_of(text, "voxel_treshold")
    assert "did you mean 'voxel_threshold'" in issue.message and "min_volume_mm3" in issue.message


def test_a_missing_model_file_points_at_model_file(tmp_path: Path) -> None:
    text = SEGMENTER_MANIFEST.format(name="m", model="absent.onnx", sha256="null")
    path = write_manifest(tmp_path, text)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    (issue,) = caught.value.issues
    assert issue.key == "model.file" and issue.line == line_of(text, "absent.onnx")
    assert "not found" in issue.message and str(tmp_path / "absent.onnx") in issue.message


def test_a_wrong_checksum_is_refused(vendor_dir: Path, tmp_path: Path) -> None:
    text = segmenter_text(vendor_dir, sha256="ab" * 32)
    path = write_manifest(tmp_path, text)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    (issue,) = caught.value.issues
    assert issue.key == "model.sha256" and issue.line == line_of(text, "sha256")
    assert sha256_of(vendor_dir / "ct_bright_lesion.onnx") in issue.message


def test_a_model_file_changed_after_start_up_is_refused_at_load(
    vendor_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes((vendor_dir / "ct_bright_lesion.onnx").read_bytes())
    path = write_manifest(
        tmp_path,
        segmenter_text(vendor_dir, model=str(model)).replace(
            sha256_of(vendor_dir / "ct_bright_lesion.onnx"), sha256_of(model)
        ),
    )
    plugin = algorithm_class(load_manifest(path))
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(RuntimeError, match="no longer matches the sha256"):
        plugin().load("cpu")


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (("display_name: Test segmenter\n", ""), "display_name", "missing required key"),
        (("kind: mask", "kind: maks"), "outputs[0].kind", "classification"),
        (("mode: volume", "mode: volumes"), "preprocessing.mode", "volume"),
        (("min_slices: 4", "min_slices: four"), "accepts.min_slices", "integer"),
        (("modalities: [CT]", "modalities: []"), "accepts.modalities", "at least 1"),
        # A model's own check is placed at the key it names, as in the routing YAML.
        (("clip: [-1000, 1000]", "clip: [1000, -1000]"), "preprocessing.clip", "low < high"),
        (
            ("  clip: [-1000, 1000]\n", "  clip: [-1000, 1000]\n  resample: {size: [8, 8]}\n"),
            "preprocessing.resample",
            "resample needs 3 values",
        ),
        (("kind: mask", "kind: boxes"), "outputs[0].voxel_threshold", "unknown key"),
    ],
)
def test_invalid_values_are_reported_at_their_key(
    vendor_dir: Path, tmp_path: Path, change: tuple[str, str], key: str, message: str
) -> None:
    text = segmenter_text(vendor_dir).replace(*change)
    path = write_manifest(tmp_path, text)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert any(i.key == key and message in i.message for i in caught.value.issues), [
        str(i) for i in caught.value.issues
    ]
    assert all(i.file == str(path) and i.line is not None for i in caught.value.issues)


def test_boxes_need_a_2d_mode(vendor_dir: Path, tmp_path: Path) -> None:
    text = segmenter_text(vendor_dir).replace(
        "  - kind: mask\n    output: probability\n    voxel_threshold: 0.5\n",
        "  - kind: boxes\n    output: probability\n",
    )
    with pytest.raises(ManifestError, match="boxes need preprocessing mode slices or image"):
        load_manifest(write_manifest(tmp_path, text))


def test_the_device_uid_is_derived_from_identity_when_left_out(
    vendor_dir: Path, tmp_path: Path
) -> None:
    first = load_manifest(write_manifest(tmp_path / "a", segmenter_text(vendor_dir)))
    again = load_manifest(write_manifest(tmp_path / "b", segmenter_text(vendor_dir)))
    other = load_manifest(
        write_manifest(tmp_path / "c", segmenter_text(vendor_dir).replace("1.0.0", "1.0.1"))
    )
    uid = first.manifest.algorithm_info().device_uid
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert uid == again.manifest.algorithm_info().device_uid
    assert uid != other.manifest.algorithm_info().device_uid


def test_a_broken_manifest_is_a_plugin_problem_and_the_others_still_load(
    vendor_dir: Path, tmp_path: Path
) -> None:
    write_manifest(tmp_path / "good", segmenter_text(vendor_dir, name="good_model"))
    write_manifest(
        tmp_path / "bad", segmenter_text(vendor_dir, name="bad_model").replace("kind:", "knd:")
    )
    write_manifest(tmp_path / "clash", segmenter_text(vendor_dir, name="lung_nodule"))
    registry = Registry.discover(manifest_dirs=[tmp_path, tmp_path / "missing"])
    assert "good_model" in registry and "lung_nodule" in registry
    assert registry.info("lung_nodule").manufacturer == "radrouter project"
    problems = {p.name: p.error for p in registry.problems}
    assert "bad_model" in problems
    assert "outputs[0].kind: missing required key 'kind'" in problems["bad_model"]
    assert "already the name of an installed plugin" in problems["lung_nodule"]
    assert any("not found" in error for error in problems.values())


def test_check_config_knows_manifest_names_and_reports_broken_manifests(
    vendor_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_manifest(models, segmenter_text(vendor_dir, name="vendor_seg"))
    config = tmp_path / "router.yaml"
    rules = (
        "rules:\n"
        "  - name: by-manifest\n    when: {Modality: CT}\n    run: vendor_seg\n"
        "  - name: typo\n    when: {Modality: MR}\n    run: vendor_segg\n"
    )
    config.write_text(f"model_dirs: [{models}]\n{rules}")
    _, issues = check_config_file(config, {"lung_nodule"})
    assert [i.key for i in issues] == ["rules[1].run"]
    assert "did you mean 'vendor_seg'" in issues[0].message

    broken = segmenter_text(vendor_dir, name="vendor_seg").replace("  clip:", "  clipp:")
    manifest = write_manifest(models, broken)
    _, issues = check_config_file(config, {"lung_nodule"})
    assert any(i.file == str(manifest) and i.key == "preprocessing.clipp" for i in issues)
    assert any(i.key == "rules[0].run" and "not installed" in i.message for i in issues)


# --------------------------------------------------------------------------------------------
# Preprocessing against numpy references written independently


def _interp_reference(array: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    moved = np.moveaxis(array, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    index = np.arange(moved.shape[-1])
    out = np.stack([np.interp(positions, index, line) for line in flat])
    return np.moveaxis(out.reshape(*moved.shape[:-1], len(positions)), -1, axis)


def test_resampling_to_a_spacing_matches_linear_interpolation() -> None:
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(9, 20, 30)).astype(np.float32)
    spec = Preprocessing.model_validate(
        {"mode": "volume", "resample": {"spacing_mm": [3.0, 1.5, 0.5]}}
    )
    grid = plan_grid(spec, (9, 20, 30), (2.0, 1.0, 1.0))
    assert grid.shape == (6, 13, 59)  # floor((n - 1) * input / model) + 1
    expected = volume.astype(np.float64)
    for axis, (n_in, step) in enumerate([(9, 1.5), (20, 1.5), (30, 0.5)]):
        positions = np.arange(grid.shape[axis]) * step
        assert positions[-1] <= n_in - 1
        expected = _interp_reference(expected, axis, positions)
    resampled = to_model_grid(volume, grid.axes)
    np.testing.assert_allclose(resampled, expected, atol=1e-5)


def test_resampling_to_a_size_keeps_the_corners_and_maps_back() -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(1, 37, 50)).astype(np.float32)
    spec = Preprocessing.model_validate({"mode": "image", "resample": {"size": [16, 64]}})
    grid = plan_grid(spec, (1, 37, 50), (1.0, 0.2, 0.2))
    resampled = to_model_grid(image, grid.axes[1:])
    expected = _interp_reference(image, 1, np.linspace(0, 36, 16))
    expected = _interp_reference(expected, 2, np.linspace(0, 49, 64))
    np.testing.assert_allclose(resampled, expected, atol=1e-5)
    # model -> input: a linear ramp comes back exactly
    ramp = np.broadcast_to(np.arange(64, dtype=np.float32), (1, 16, 64)).copy()
    back = to_input_grid(ramp, grid.axes[1:])
    np.testing.assert_allclose(back[0, 0], np.arange(50) * 63 / 49, atol=1e-4)


@pytest.mark.parametrize(
    ("normalise", "reference"),
    [
        ({"method": "scale", "scale": 0.0025, "offset": 0.4}, lambda w: w * 0.0025 + 0.4),
        (
            {"method": "minmax", "range": [-1, 1]},
            lambda w: (w - w.min()) / (w.max() - w.min()) * 2 - 1,
        ),
        ({"method": "zscore"}, lambda w: (w - w.mean()) / w.std()),
        ({"method": "none"}, lambda w: w),
    ],
)
def test_window_then_normalise_matches_numpy(
    normalise: dict[str, object], reference: object
) -> None:
    rng = np.random.default_rng(3)
    hu = rng.uniform(-1200, 1500, size=(3, 16, 16)).astype(np.float32)
    spec = Preprocessing.model_validate(
        {"mode": "volume", "window": {"center": 40, "width": 400}, "normalise": normalise}
    )
    windowed = np.clip(hu.astype(np.float64), -160.0, 240.0)
    assert callable(reference)
    np.testing.assert_allclose(apply_intensity(hu, spec), reference(windowed), rtol=1e-5, atol=1e-5)


def test_slices_are_batched_padded_and_laid_out_channels_last() -> None:
    volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    spec = Preprocessing.model_validate(
        {
            "mode": "slices",
            "layout": "NHWC",
            "channels": 3,
            "pad_to_multiple": 4,
            "batch_size": 2,
        }
    )
    grid, batches = prepare(volume, (1.0, 1.0, 1.0), spec)
    assert grid.padded == (8, 8)
    assert [b.slice_indices for b in batches] == [(0, 1), (2, 3), (4,)]
    first = batches[0].array
    assert first.shape == (2, 8, 8, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first[1, :6, :7, 2], volume[1])
    np.testing.assert_array_equal(first[1, 7, :7, 0], volume[1, 5])  # edge repeated
    np.testing.assert_array_equal(first[..., 0], first[..., 2])


def test_minmax_is_per_slice_in_slices_mode() -> None:
    volume = np.stack([np.full((4, 4), v, np.float32) for v in (0.0, 10.0)])
    volume[:, 0, 0] = -10.0
    spec = Preprocessing.model_validate({"mode": "slices", "normalise": {"method": "minmax"}})
    _, batches = prepare(volume, (1.0, 1.0, 1.0), spec)
    assert [float(b.array.max()) for b in batches] == [1.0, 1.0]


# --------------------------------------------------------------------------------------------
# Output mappings


def _outputs(name: str, arrays: list[np.ndarray], batches: list[ModelBatch]) -> RunOutputs:
    return RunOutputs(tuple((b, {name: a}) for b, a in zip(batches, arrays, strict=True)), (name,))


def test_classification_applies_the_activation_and_takes_the_index() -> None:
    batch = ModelBatch(np.zeros((2, 1, 4, 4), np.float32), (0, 1))
    logits = np.array([[0.0, 2.0], [1.0, -1.0]], np.float32)
    spec = ClassificationOutput(kind="classification", activation="softmax", index=1)
    scores = classification_scores(spec, _outputs("s", [logits], [batch]))
    expected = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    plain = ClassificationOutput(kind="classification", output="s", index=1)
    with pytest.raises(ManifestRunError, match="set activation"):
        classification_scores(plain, _outputs("s", [logits], [batch]))


def test_boxes_map_from_the_model_input_back_to_image_coordinates() -> None:
    spec_pre = Preprocessing.model_validate({"mode": "image", "resample": {"size": [101, 51]}})
    grid = plan_grid(spec_pre, (1, 201, 301), (1.0, 1.0, 1.0))  # rows x2, columns x6
    boxes = np.array([[[10.0, 20.0, 30.0, 60.0, 0.9, 1.0], [0, 0, 5, 5, 0.2, 1.0]]], np.float32)
    spec = BoxesOutput(
        kind="boxes",
        classes={1: CodeSpec(value="52988006", scheme_designator="SCT", meaning="Lesion")},
    )
    batch = ModelBatch(np.zeros((1, 1, 101, 51), np.float32), (0,))
    (finding,) = box_findings(spec, _outputs("b", [boxes], [batch]), grid, codes.LUNG, 0.5, None)
    # edge u -> centre u - 0.5 -> input centre (u - 0.5) * step -> input edge + 0.5
    c1, c2 = (10 - 0.5) * 6 + 0.5, (30 - 0.5) * 6 + 0.5
    r1, r2 = (20 - 0.5) * 2 + 0.5, (60 - 0.5) * 2 + 0.5
    assert finding.region.points == ((c1, r1), (c2, r1), (c2, r2), (c1, r2), (c1, r1))
    assert finding.finding_type.meaning == "Lesion" and finding.probability == pytest.approx(0.9)
    assert finding.centre_voxel == (0.0, (r1 + r2) / 2 - 0.5, (c1 + c2) / 2 - 0.5)


def test_mask_components_carry_their_volume_long_axis_and_outline() -> None:
    binary = np.zeros((6, 30, 30), bool)
    binary[1:4, 5:9, 10:16] = True  # 3 x 4 x 6 voxels
    binary[5, 20, 20] = True  # a single voxel, below min volume
    probability = np.where(binary, 0.8, 0.0).astype(np.float32)
    spacing = (2.0, 0.5, 0.75)
    spec = MaskOutput(kind="mask", min_volume_mm3=1.0)
    (finding,) = component_findings(
        binary, probability, spacing, codes.LUNG_NODULE, 0.5, spec, None
    )
    assert finding.mask is not None and int(finding.mask.sum()) == 72
    values = {m.name.meaning: m.value for m in finding.measurements}
    assert values["Volume"] == pytest.approx(72 * 2.0 * 0.5 * 0.75)
    assert values["Long axis"] == pytest.approx(np.hypot(4 * 0.5, 6 * 0.75), abs=0.01)
    assert finding.centre_voxel == pytest.approx((2.0, 6.5, 12.5))
    assert set(finding.region.points) == {(10.0, 5.0), (16.0, 5.0), (16.0, 9.0), (10.0, 9.0)}
    assert finding.probability == pytest.approx(0.8)
    assert component_findings(binary, probability, spacing, codes.LUNG, 0.9, spec, None) == []


def test_mask_findings_from_the_cropped_region_equal_those_of_the_whole_volume() -> None:
    pre = Preprocessing.model_validate(
        {"mode": "volume", "resample": {"spacing_mm": [2.0, 1.5, 1.5]}}
    )
    grid = plan_grid(pre, (20, 60, 70), (1.0, 0.6, 0.6))
    z, y, x = np.indices(grid.shape, dtype=np.float64)
    blobs = [(2.0, 5.0, 6.0, 1.0), (4.0, 9.0, 11.0, 1.3), (3.0, 4.0, 13.0, 0.9)]
    probability = np.zeros(grid.shape, np.float32)
    for cz, cy, cx, sigma in blobs:  # three separate bright blobs in one corner
        distance2 = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2
        probability += np.exp(-distance2 / (2 * sigma**2)).astype(np.float32)
    probability = np.clip(probability, 0.0, 1.0)
    batch = ModelBatch(np.zeros((1, 1, *grid.padded), np.float32), ())
    outputs = _outputs("p", [probability[None, None]], [batch])
    spec = MaskOutput(kind="mask", output="p", voxel_threshold=0.5, threshold=0.0, max_findings=100)
    region = mask_on_input_grid(spec, outputs, grid, Layout.NCDHW)
    assert region is not None and region.values.size < np.prod(grid.input_shape)
    found = mask_findings(spec, region, (1.0, 0.6, 0.6), codes.LUNG_NODULE, 0.0, None)
    whole = to_input_grid(probability, grid.axes) >= 0.5
    _, count = ndimage.label(whole)
    assert len(found) == count == 3
    union = np.zeros(grid.input_shape, bool)
    for finding in found:
        assert finding.mask is not None and not (union & finding.mask).any()
        union |= finding.mask
    np.testing.assert_array_equal(union, whole)
    nothing = MaskOutput(kind="mask", output="p", voxel_threshold=1.0)
    assert (
        mask_on_input_grid(
            nothing, _outputs("p", [probability[None, None] * 0.5], [batch]), grid, Layout.NCDHW
        )
        is None
    )


def test_long_axis_of_a_disc_is_its_diameter() -> None:
    r, c = np.mgrid[0:41, 0:41]
    disc = ((r - 20) ** 2 + (c - 20) ** 2 <= 15**2)[None]
    assert long_axis_mm(disc, (1.0, 0.5, 0.5)) == pytest.approx(31 * 0.5, abs=0.5)


# --------------------------------------------------------------------------------------------
# The example vendor models, run through the manifest algorithm


def test_classifier_score_is_the_sigmoid_of_the_windowed_mean(vendor_dir: Path) -> None:
    algorithm = loaded_algorithm(vendor_dir / "ct_dense_tissue.yaml")
    rng = np.random.default_rng(4)
    volume = rng.uniform(-1000, 400, size=(5, 40, 60)).astype(np.float32)
    volume[2] = 60.0  # one dense slice
    result = algorithm.run(study(volume))
    per_slice = []
    for k in range(5):
        resized = _interp_reference(volume[k].astype(np.float64), 0, np.linspace(0, 39, 128))
        resized = _interp_reference(resized, 1, np.linspace(0, 59, 128))
        mean = (np.clip(resized, -160, 240) * 0.0025 + 0.4).mean()
        per_slice.append(
            1 / (1 + np.exp(-VENDOR.CLASSIFIER_GAIN * (mean - VENDOR.CLASSIFIER_BIAS)))
        )
    assert result.probability == pytest.approx(max(per_slice), abs=1e-5)
    assert result.verdict is Verdict.PRESENT and result.findings == ()
    assert "threshold 0.500" in result.reason
    higher = algorithm.run(study(volume, threshold=min(1.0, max(per_slice) + 0.01)))
    assert higher.verdict is Verdict.ABSENT and higher.probability == result.probability


def test_segmenter_finds_the_bright_cube_with_its_volume(vendor_dir: Path) -> None:
    algorithm = loaded_algorithm(vendor_dir / "ct_bright_lesion.yaml")
    spacing = (2.5, 0.8, 0.8)
    volume = ct_with_cube(size=(4, 10, 12))
    result = algorithm.run(study(volume, spacing))
    assert result.verdict is Verdict.PRESENT
    (finding,) = result.findings
    assert finding.tracking_id == "Lesion 1" and finding.finding_site == codes.LUNG
    assert finding.probability == pytest.approx(1 / (1 + np.exp(-40 * (0.4 - 0.15))), abs=1e-3)
    volume_mm3 = next(m.value for m in finding.measurements if m.name == codes.VOLUME)
    cube_mm3 = 4 * 10 * 12 * 2.5 * 0.8 * 0.8
    assert volume_mm3 == pytest.approx(cube_mm3, rel=0.15)  # resampled to 1 mm and back
    assert finding.mask is not None
    truth = volume > 150
    overlap = (finding.mask & truth).sum() / (finding.mask | truth).sum()
    assert overlap > 0.75
    assert 4 <= finding.region.slice_index <= 7


def test_site_threshold_replaces_the_component_threshold(vendor_dir: Path) -> None:
    algorithm = loaded_algorithm(vendor_dir / "ct_bright_lesion.yaml")
    dim = ct_with_cube(hu=200.0)  # peak probability sigmoid(40 * 0.05) = 0.88
    assert algorithm.run(study(dim)).verdict is Verdict.PRESENT
    strict = algorithm.run(study(dim, threshold=0.95))
    assert strict.verdict is Verdict.ABSENT and strict.findings == ()


def test_label_maps_become_findings_per_label(vendor_dir: Path, tmp_path: Path) -> None:
    text = segmenter_text(vendor_dir).replace(
        "    output: probability\n    voxel_threshold: 0.5\n    threshold: 0.5\n",
        "    output: labels\n    encoding: labels\n    labels:\n"
        '      1: {value: "52988006", scheme_designator: SCT, meaning: Lesion}\n'
        '      2: {value: "18115005", scheme_designator: SCT, meaning: Calcification}\n',
    )
    algorithm = loaded_algorithm(write_manifest(tmp_path, text))
    volume = ct_with_cube(lo=(2, 10, 10), size=(3, 6, 6), hu=300.0)
    volume[7:10, 40:46, 40:46] = 800.0  # above level2 (0.5): label 2
    result = algorithm.run(study(volume))
    kinds = sorted(f.finding_type.meaning for f in result.findings)
    assert kinds == ["Calcification", "Lesion"]
    assert sorted(f.tracking_id for f in result.findings) == ["Calcification 1", "Lesion 1"]
    assert all(f.probability == 1.0 for f in result.findings)


def test_torchscript_and_onnx_versions_give_the_same_findings(vendor_dir: Path) -> None:
    onnx_model = loaded_algorithm(vendor_dir / "ct_bright_lesion.yaml")
    torch_model = loaded_algorithm(vendor_dir / "ct_bright_lesion_ts.yaml")
    assert torch_model.provider == "torch-cpu" and onnx_model.provider == "CPUExecutionProvider"
    volume = ct_with_cube()
    a, b = onnx_model.run(study(volume)), torch_model.run(study(volume))
    assert [f.measurements for f in a.findings] == [f.measurements for f in b.findings]
    assert a.findings[0].probability == pytest.approx(b.findings[0].probability, abs=1e-5)


def test_detector_boxes_the_bright_region_of_a_radiograph(vendor_dir: Path) -> None:
    algorithm = loaded_algorithm(vendor_dir / "bright_region_detector.yaml")
    image = np.zeros((1, 512, 384), np.float32)
    image[0, 100:180, 40:120] = 1000.0  # rows 100-179, columns 40-119
    header = {"Modality": "CR", "PhotometricInterpretation": "MONOCHROME2"}
    result = algorithm.run(study(image, (1.0, 0.2, 0.2), header))
    (finding,) = result.findings
    columns = [p[0] for p in finding.region.points]
    rows = [p[1] for p in finding.region.points]
    # the model sees 256 x 256: a box edge is within one model pixel of the truth
    assert min(columns) == pytest.approx(40, abs=384 / 256 + 0.5)
    assert max(columns) == pytest.approx(120, abs=384 / 256 + 0.5)
    assert min(rows) == pytest.approx(100, abs=2 + 0.5) and max(rows) == pytest.approx(180, abs=2.5)
    several = algorithm.run(study(np.zeros((2, 64, 64), np.float32), (1.0, 0.2, 0.2), header))
    assert several.verdict is Verdict.NOT_ASSESSED and "single image" in several.reason


def test_series_outside_accepts_are_not_assessed_with_the_reason(vendor_dir: Path) -> None:
    manifest = load_manifest(vendor_dir / "ct_bright_lesion.yaml").manifest
    volume = ct_with_cube()
    assert check_series(manifest, study(volume).series) == ""
    mr = study(volume, header={"Modality": "MR"}).series
    assert "needs ['CT']" in check_series(manifest, mr)
    thick = study(volume, (6.0, 0.8, 0.8)).series
    assert "exceeds 5 mm" in check_series(manifest, thick)
    few = study(volume[:2]).series
    assert "at least 4" in check_series(manifest, few)


# --------------------------------------------------------------------------------------------
# End to end: a manifest-only model through a rule in a running router


@pytest.mark.slow
def test_a_manifest_only_model_runs_through_a_rule_to_an_sr(
    vendor_dir: Path, tmp_path: Path, start_router: StartRouter, storescp: ReceivingPacs
) -> None:
    yaml_text = (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"model_dirs: [{vendor_dir}]\n"
        "destinations:\n"
        f"  pacs: {storescp.destination_yaml(timeout_s=5)}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, "
        "hard_cap_s: 60}\n"
        "rules:\n"
        "  - name: bright-lesions\n"
        "    when: {Modality: CT}\n"
        "    run: example_ct_bright_lesion\n"
        "    send_to: [pacs]\n"
    )
    router = start_router(yaml_text)
    assert "example_ct_bright_lesion" in router.service.registry
    folder = tmp_path / "ct"
    folder.mkdir()
    paths = []
    for k, ds in enumerate(make_ct_slices(12, rows=64, cols=64, spacing=(2.5, 0.8, 0.8))):
        if 4 <= k < 8:
            pixels = ds.pixel_array.copy()
            pixels[20:30, 24:36] = 400 + 1024  # stored value = HU - RescaleIntercept (-1024)
            ds.PixelData = pixels.tobytes()
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    storescu(router, paths)
    study_uid = study_uid_of(paths)
    view = wait_state(router, study_uid, {"done", "attention"}, timeout_s=120)
    assert view["state"] == "done", view
    assert view["jobs"][0]["verdict"] == "present"
    (sr_path,) = storescp.wait_for("SR", {study_uid}, timeout_s=30)[study_uid]
    assert run_dciodvfy(sr_path).errors == []
    report = read_measurement_report(pydicom.dcmread(sr_path))
    assert report.verdict is Verdict.PRESENT and report.study_instance_uid == study_uid
    assert (report.algorithm_name, report.algorithm_version) == (
        "example_ct_bright_lesion",
        "1.0.0",
    )
    (finding,) = report.findings
    assert finding.finding_type.meaning == "Lesion"
    cube_mm3 = 4 * 10 * 12 * 2.5 * 0.8 * 0.8
    assert finding.volume_mm3 == pytest.approx(cube_mm3, rel=0.15)


def test_the_full_example_in_the_documentation_is_a_valid_manifest() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "third-party-models.md").read_text()
    section = text.split("## A full example", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    manifest = parse_manifest(example, "docs/third-party-models.md")
    assert manifest.name == "acme_pe"
    assert [o.kind for o in manifest.outputs] == ["classification", "mask"]
