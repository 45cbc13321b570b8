"""Plugins are discovered through entry points and validated before use."""

from __future__ import annotations

from typing import ClassVar

import pytest

from algorithms.contract import Algorithm, AlgorithmInfo
from algorithms.registry import PluginError, Registry, validate_plugin
from algorithms.runtime import AlgorithmTimeoutError, ModelRuntime, choose_device
from testing.plugins import AlwaysNegative, HangingAlgorithm


def test_the_installed_lung_nodule_plugin_is_discovered_and_valid() -> None:
    registry = Registry.discover()
    assert "lung_nodule" in registry.names()
    assert registry.problems == ()
    info = registry.info("lung_nodule")
    assert info.modalities == frozenset({"CT"}) and info.clinical_use is False


def test_a_plugin_registered_under_another_name_is_rejected() -> None:
    with pytest.raises(PluginError, match=r"info\.name"):
        validate_plugin("other_name", AlwaysNegative)


def test_an_object_without_info_is_rejected() -> None:
    class NoInfo:
        def load(self, device: str) -> None: ...

    with pytest.raises(PluginError, match="AlgorithmInfo"):
        validate_plugin("no_info", NoInfo)


def test_a_plugin_without_run_is_rejected() -> None:
    class NoRun:
        info: ClassVar[AlgorithmInfo] = AlwaysNegative.info

        def load(self, device: str) -> None: ...

    with pytest.raises(PluginError, match="run"):
        validate_plugin("always_negative", NoRun)


def test_valid_test_plugin_satisfies_the_protocol() -> None:
    assert isinstance(AlwaysNegative(), Algorithm)


def test_auto_device_is_cpu_without_cuda_and_explicit_choice_is_kept() -> None:
    import onnxruntime

    expected = "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    assert choose_device("auto") == expected
    assert choose_device("cpu") == "cpu"


def test_runtime_times_out_a_hanging_model_and_replaces_it() -> None:
    from testing.study_inputs import tiny_study

    HangingAlgorithm.release.clear()
    runtime = ModelRuntime(Registry({"hanging": HangingAlgorithm}), lambda: {})
    with pytest.raises(AlgorithmTimeoutError):
        runtime.run("hanging", tiny_study(), timeout_s=0.2)
    assert runtime.loaded() == {}, "the hung instance is dropped"
    HangingAlgorithm.release.set()
