"""The model runtime and its backends: devices, warm models, concurrency limits, timeouts."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime
import pytest

from algorithms.backends import (
    ModelSession,
    TensorSpec,
    choose_device,
    load_model,
    warm_up,
)
from algorithms.contract import AlgorithmInfo, AlgorithmResult, StudyInput, Verdict
from algorithms.registry import Registry
from algorithms.runtime import AlgorithmTimeoutError, ModelRuntime
from testing.plugins import HangingAlgorithm, _info
from testing.study_inputs import tiny_study
from tests.algorithms.manifest_support import ROOT, example_builder

VENDOR = example_builder()


@pytest.fixture(scope="module")
def vendor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vendor")
    VENDOR.build_all(folder, torchscript=True)
    return folder


def torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# --------------------------------------------------------------------------------------------
# Backends


def test_onnx_session_runs_by_name_and_says_where_it_runs(vendor_dir: Path) -> None:
    session = load_model(vendor_dir / "ct_bright_lesion.onnx", "cpu")
    assert (session.device, session.provider) == ("cpu", "CPUExecutionProvider")
    assert session.inputs == (TensorSpec("volume", (None, 1, None, None, None)),)
    assert [o.name for o in session.outputs] == ["probability", "labels"]
    volume = np.linspace(-0.5, 0.8, 3 * 4 * 5, dtype=np.float32).reshape(1, 1, 3, 4, 5)
    out = session.run({"volume": volume})
    expected = 1 / (1 + np.exp(-VENDOR.SEGMENTER_GAIN * (volume - VENDOR.SEGMENTER_LEVEL)))
    np.testing.assert_allclose(out["probability"], expected, rtol=1e-5, atol=1e-7)
    assert out["labels"].shape == (1, 3, 4, 5)


def test_torchscript_session_gives_what_the_onnx_session_gives(vendor_dir: Path) -> None:
    torch_session = load_model(vendor_dir / "ct_bright_lesion_ts.pt", "cpu")
    onnx_session = load_model(vendor_dir / "ct_bright_lesion.onnx", "cpu")
    assert (torch_session.device, torch_session.provider) == ("cpu", "torch-cpu")
    assert [i.name for i in torch_session.inputs] == ["volume"]
    volume = np.random.default_rng(0).uniform(-1, 1, (1, 1, 4, 8, 8)).astype(np.float32)
    a, b = onnx_session.run({"volume": volume}), torch_session.run({"volume": volume})
    assert sorted(b) == ["labels", "probability"]
    assert [o.name for o in torch_session.outputs] == list(b)
    for name in ("probability", "labels"):
        np.testing.assert_allclose(a[name], b[name], atol=1e-6)


def test_auto_device_follows_what_each_backend_offers() -> None:
    onnx_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert choose_device("auto", "onnxruntime") == ("cuda" if onnx_cuda else "cpu")
    assert choose_device("auto", "torch") == ("cuda" if torch_cuda() else "cpu")
    assert choose_device("cpu", "torch") == "cpu" and choose_device("cuda") == "cuda"
    with pytest.raises(ValueError, match="'gpu'"):
        choose_device("gpu")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="has a GPU"
)
def test_asking_for_cuda_without_a_gpu_runs_on_cpu_and_says_so(
    vendor_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="algorithms.backends"):
        session = load_model(vendor_dir / "ct_dense_tissue.onnx", "cuda")
    assert session.device == "cpu" and session.provider == "CPUExecutionProvider"
    assert "no CUDA provider" in caplog.text


class RecordingSession:
    """A real session that records the inputs it was given."""

    def __init__(self, inner: ModelSession) -> None:
        self.inner = inner
        self.fed: list[dict[str, tuple[int, ...]]] = []

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def provider(self) -> str:
        return self.inner.provider

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.outputs

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self.fed.append({name: tuple(a.shape) for name, a in inputs.items()})
        return self.inner.run(inputs)


def test_warm_up_is_one_run_on_zeros_of_the_declared_shape(vendor_dir: Path) -> None:
    session = RecordingSession(load_model(vendor_dir / "ct_bright_lesion.onnx", "cpu"))
    assert warm_up(session) >= 0.0
    assert session.fed == [{"volume": (1, 1, 32, 32, 32)}]
    warm_up(session, {"volume": (1, 1, 8, 16, 16)})
    assert session.fed[-1] == {"volume": (1, 1, 8, 16, 16)}
    torch_session = load_model(vendor_dir / "ct_bright_lesion_ts.pt", "cpu")
    with pytest.raises(ValueError, match="not declared"):
        warm_up(torch_session)


# --------------------------------------------------------------------------------------------
# The runtime


class RunCounter:
    """Loads and overlapping runs, shared by every counting plugin."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.run_s = 0.0
        self.loads = self.running = self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


COUNTER = RunCounter()


@pytest.fixture
def counter() -> RunCounter:
    COUNTER.reset()
    return COUNTER


class CountingAlgorithm:
    """Counts loads and overlapping runs (in ``COUNTER``); each run takes ``COUNTER.run_s``.
    Says what runs it the way plugins wrapping an onnxruntime session do (``providers``)."""

    info: ClassVar[AlgorithmInfo] = _info("counting")
    backend: ClassVar[str] = "torch"

    def __init__(self) -> None:
        self.providers: list[str] = []

    def load(self, device: str) -> None:
        COUNTER.loads += 1
        self.providers = [f"counting-{device}", "CPUExecutionProvider"]

    def run(self, study: StudyInput) -> AlgorithmResult:
        COUNTER.enter()
        time.sleep(COUNTER.run_s)
        COUNTER.leave()
        return AlgorithmResult(Verdict.ABSENT, reason="counted")


class OtherCountingAlgorithm(CountingAlgorithm):
    info: ClassVar[AlgorithmInfo] = _info("other_counting")


class BrokenLoadAlgorithm:
    info: ClassVar[AlgorithmInfo] = _info("broken_load")

    def load(self, device: str) -> None:
        raise OSError("weights file is missing")

    def run(self, study: StudyInput) -> AlgorithmResult:
        raise AssertionError("never loaded")


def run_in_threads(runtime: ModelRuntime, names: list[str]) -> float:
    started = time.perf_counter()
    threads = [
        threading.Thread(target=runtime.run, args=(name, tiny_study(), 10.0)) for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    return time.perf_counter() - started


def test_each_model_is_loaded_once_on_its_device_and_kept_warm(counter: RunCounter) -> None:
    runtime = ModelRuntime(Registry({"counting": CountingAlgorithm}), lambda: {"counting": "cpu"})
    runtime.warm(["counting"])
    for _ in range(3):
        outcome = runtime.run("counting", tiny_study(), 5.0)
        assert outcome.device == "cpu" and outcome.result.verdict is Verdict.ABSENT
    assert counter.loads == 1
    status = runtime.status()["counting"]
    assert (status.device, status.provider, status.backend) == ("cpu", "counting-cpu", "torch")
    assert status.load_seconds >= 0.0
    assert status.max_concurrent == 1 and runtime.loaded() == {"counting": "cpu"}


@pytest.mark.parametrize("limit", [1, 2])
def test_max_concurrent_bounds_the_runs_of_one_model(limit: int, counter: RunCounter) -> None:
    counter.run_s = 0.2
    runtime = ModelRuntime(
        Registry({"counting": CountingAlgorithm}), lambda: {}, lambda: {"counting": limit}
    )
    elapsed = run_in_threads(runtime, ["counting"] * 4)
    assert counter.peak == limit
    assert elapsed >= 0.2 * 4 / limit - 0.05
    assert counter.loads == 1


def test_different_models_run_side_by_side(counter: RunCounter) -> None:
    counter.run_s = 1.0
    registry = Registry({"counting": CountingAlgorithm, "other_counting": OtherCountingAlgorithm})
    runtime = ModelRuntime(registry, lambda: {})
    runtime.warm(["counting", "other_counting"])  # loading (device choice) outside the timing
    elapsed = run_in_threads(runtime, ["counting", "other_counting"])
    assert counter.peak == 2
    assert elapsed < 1.8, "one after the other would take 2 s"


def test_a_model_that_fails_to_load_is_reported_and_the_others_still_load(
    counter: RunCounter,
) -> None:
    registry = Registry({"broken_load": BrokenLoadAlgorithm, "counting": CountingAlgorithm})
    runtime = ModelRuntime(registry, lambda: {})
    runtime.warm(["broken_load", "counting"])
    assert runtime.loaded() == {"counting": "cpu"} or runtime.loaded() == {"counting": "cuda"}
    assert runtime.load_errors() == {"broken_load": "OSError: weights file is missing"}
    with pytest.raises(OSError, match="weights file"):
        runtime.run("broken_load", tiny_study(), 5.0)


def test_a_timed_out_run_frees_its_slot_and_the_next_run_gets_a_new_instance() -> None:
    HangingAlgorithm.release.clear()
    runtime = ModelRuntime(Registry({"hanging": HangingAlgorithm}), lambda: {})
    with pytest.raises(AlgorithmTimeoutError, match="within 0 s"):
        runtime.run("hanging", tiny_study(), timeout_s=0.2)
    assert runtime.loaded() == {}
    HangingAlgorithm.release.set()
    outcome = runtime.run("hanging", tiny_study(), timeout_s=5.0)
    assert outcome.result.reason == "late"


def test_manifest_models_report_backend_and_provider(vendor_dir: Path) -> None:
    registry = Registry.discover(manifest_dirs=[vendor_dir])
    runtime = ModelRuntime(registry, lambda: {"example_ct_bright_lesion": "cpu"})
    runtime.warm(["example_ct_bright_lesion", "example_ct_bright_lesion_ts"])
    status = runtime.status()
    assert status["example_ct_bright_lesion"].backend == "onnxruntime"
    assert status["example_ct_bright_lesion"].provider == "CPUExecutionProvider"
    assert status["example_ct_bright_lesion_ts"].backend == "torch"
    expected_torch = "torch-cuda" if torch_cuda() else "torch-cpu"
    assert status["example_ct_bright_lesion_ts"].provider == expected_torch
    assert runtime.load_errors() == {}


WITHOUT_TORCH = """
import sys
from pathlib import Path
sys.modules["torch"] = None  # as if torch were not installed: `import torch` raises
from algorithms.registry import Registry
from algorithms.runtime import ModelRuntime
import router.service  # the router imports without torch
from testing.manifest_examples import example_study
registry = Registry.discover(manifest_dirs=[Path(sys.argv[1])])
runtime = ModelRuntime(registry, lambda: {})
runtime.warm(["example_ct_bright_lesion", "example_ct_bright_lesion_ts"])
plugin = registry.plugin("example_ct_bright_lesion")
study = example_study(plugin.loaded_manifest.manifest)
outcome = runtime.run("example_ct_bright_lesion", study, 60.0)
print("verdict", outcome.result.verdict.value, outcome.device)
print("errors", runtime.load_errors())
"""


def test_the_router_runs_onnx_models_without_torch_installed(vendor_dir: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(vendor_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "verdict present cpu" in completed.stdout
    assert "example_ct_bright_lesion_ts" in completed.stdout
    assert "torch is not installed" in completed.stdout
