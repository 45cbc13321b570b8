"""Per-algorithm inference latency: every installed algorithm on a synthetic input it accepts.

Each algorithm runs through ``ModelRuntime`` as in the router (loaded once, warm, one untimed
run first), ``--runs`` times. Printed per algorithm: mean and p95 of the whole ``run`` (input
checks, preprocessing, model, postprocessing), and beside it, from the same runs, the time
spent inside the model sessions alone (onnxruntime ``InferenceSession.run`` and TorchScript
session calls, timed by wrapping them in this process) - the bare-model reference.

Inputs are synthetic: a manifest model gets a study its manifest accepts
(``testing.manifest_examples``), a shipped algorithm one or more from its training generator
(``BUILT_IN_FACTORIES``, from ``training/<name>/synth.py``; the pulmonary embolism plugin a
study with an embolus and one without, whose run times differ). An algorithm without a
factory is listed as skipped.

Run: ``.venv/bin/python -m benchmarks.algorithm_latency [--runs 10] [--device cpu]
[--models-dir DIR ...] [--no-examples] [--only NAME ...]``. The example manifest models of
``examples/third_party`` are built into a temporary folder and included unless
``--no-examples``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from algorithms.backends import TorchScriptSession
from algorithms.contract import StudyInput
from algorithms.registry import Registry
from algorithms.runtime import ModelRuntime
from testing.manifest_examples import example_study

if TYPE_CHECKING:
    from training.pe.synth import ClotSpec

LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
InputFactory = Callable[[], StudyInput]


def _lung_nodule_example() -> StudyInput:
    """A clinical-size synthetic chest CT (300 slices of 1 mm, 512 x 512 at 0.68 mm) with a
    12 mm nodule, made by the plugin's own generator."""
    from training.lung_nodule.evaluate import make_study
    from training.lung_nodule.synth import NoduleSpec, generate_chest_ct, right_lung_centre_mm

    shape, spacing = (300, 512, 512), (1.0, 350.0 / 512, 350.0 / 512)
    nodule = NoduleSpec(right_lung_centre_mm(shape, spacing), 12.0)
    return make_study(generate_chest_ct(7, shape=shape, spacing_mm=spacing, nodules=[nodule]))


def _ms_lesion_example() -> StudyInput:
    """One synthetic brain FLAIR exam (the generator's random protocol for seed 710000, the
    first held-out seed) without a prior, made by the plugin's own generator."""
    from training.ms_lesion.evaluate import make_study
    from training.ms_lesion.synth import generate_flair

    return make_study(generate_flair(710_000))


def _pe_example(clots: list[ClotSpec]) -> StudyInput:
    """A clinical-size synthetic CT pulmonary angiogram (300 slices of 1 mm, 512 x 512 at
    0.68 mm) with ``clots`` (``ClotSpec``), made by the plugin's own generator."""
    from training.pe.evaluate import make_study
    from training.pe.synth import generate_contrast_chest_ct

    ct = generate_contrast_chest_ct(
        7,
        shape=(300, 512, 512),
        spacing_mm=(1.0, 350.0 / 512, 350.0 / 512),
        phase="ctpa",
        clots=clots,
    )
    return make_study(ct)


def _pe_lobar_embolus() -> StudyInput:
    """The CT pulmonary angiogram with a right lobar embolus (the level network runs)."""
    from training.pe.synth import ClotSpec

    return _pe_example([ClotSpec("lobar", "right", occlusive=True)])


def _pe_no_embolus() -> StudyInput:
    """The same CT pulmonary angiogram without an embolus (no level network)."""
    return _pe_example([])


def _fracture_example() -> StudyInput:
    """A detector-size synthetic radiograph (2500 pixels on the long side) of a fractured
    long bone, made by the plugin's own generator."""
    from training.fracture.evaluate import make_study
    from training.fracture.synth import generate_radiograph

    return make_study(generate_radiograph(7, fracture=True, size=2500))


BUILT_IN_FACTORIES: dict[str, dict[str, InputFactory]] = {
    "lung_nodule": {"": _lung_nodule_example},
    "ms_lesion": {"": _ms_lesion_example},
    "pe": {"lobar embolus": _pe_lobar_embolus, "no embolus": _pe_no_embolus},
    "fracture": {"": _fracture_example},
}
"""Synthetic inputs of the shipped algorithms, from their training generators, by case (""
where an algorithm has one)."""


def input_factories(plugin: type) -> dict[str, InputFactory]:
    """The synthetic-input factories of ``plugin`` by case (see the module docstring); empty
    when it has none."""
    loaded = getattr(plugin, "loaded_manifest", None)
    if loaded is not None:
        manifest = loaded.manifest
        return {"": lambda: example_study(manifest)}
    info = getattr(plugin, "info", None)
    return BUILT_IN_FACTORIES.get(getattr(info, "name", ""), {})


class SessionClock:
    """Sums the seconds spent inside model sessions while installed. The benchmark runs one
    algorithm at a time, so the sum belongs to the run in progress (which the runtime executes
    on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = 0.0

    def reset(self) -> None:
        with self._lock:
            self._seconds = 0.0

    @property
    def seconds(self) -> float:
        with self._lock:
            return self._seconds

    def _timed(self, original: Callable[..., Any]) -> Callable[..., Any]:
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with clock._lock:
                    clock._seconds += time.perf_counter() - started

        return timed

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Wrap onnxruntime's ``InferenceSession.run`` and ``TorchScriptSession.run``."""
        import onnxruntime

        patched: list[tuple[type, str, Any]] = [
            (onnxruntime.InferenceSession, "run", onnxruntime.InferenceSession.run),
            (TorchScriptSession, "run", TorchScriptSession.run),
        ]
        for owner, name, original in patched:
            setattr(owner, name, self._timed(original))
        try:
            yield
        finally:
            for owner, name, original in patched:
                setattr(owner, name, original)


@dataclass(frozen=True)
class Timing:
    name: str
    """The algorithm, with its input's case when it has several."""
    device: str
    provider: str
    input_shape: tuple[int, ...]
    verdict: str
    total_s: list[float]
    model_s: list[float]


def _mean_p95(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.percentile(values, 95))


def measure(
    runtime: ModelRuntime,
    name: str,
    study: StudyInput,
    runs: int,
    clock: SessionClock,
    case: str = "",
) -> Timing:
    timeout = runtime.registry.info(name).max_runtime_s * 4
    runtime.warm([name])
    first = runtime.run(name, study, timeout)  # untimed: lazy allocations after warm-up
    total: list[float] = []
    model: list[float] = []
    for _ in range(runs):
        clock.reset()
        outcome = runtime.run(name, study, timeout)
        total.append(outcome.seconds)
        model.append(clock.seconds)
    status = runtime.status()[name]
    return Timing(
        f"{name} ({case})" if case else name,
        status.device,
        status.provider or status.backend,
        tuple(int(n) for n in study.series.array.shape),
        first.result.verdict.value,
        total,
        model,
    )


def machine_description() -> list[str]:
    import onnxruntime

    lines = [
        f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"python {platform.python_version()}",
        f"onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}",
    ]
    try:
        import torch

        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        lines.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cuda}")
    except ImportError:
        lines.append("torch not installed")
    return lines


def build_examples(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_example_model", ROOT / "examples" / "third_party" / "make_example_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_all(folder, torchscript=importlib.util.find_spec("torch") is not None)
    return folder


def report(timings: list[Timing], skipped: dict[str, str], runs: int) -> list[str]:
    header = (
        f"{'algorithm':<36}{'device':<7}{'provider':<22}{'input':<16}{'verdict':<13}"
        f"{'run mean':>9}{'run p95':>9}{'model mean':>11}{'model p95':>10}{'pre+post':>9}"
    )
    lines = [f"seconds per run, {runs} timed runs each (after one untimed run)", header]
    for t in timings:
        run_mean, run_p95 = _mean_p95(t.total_s)
        model_mean, model_p95 = _mean_p95(t.model_s)
        shape = "x".join(str(n) for n in t.input_shape)
        lines.append(
            f"{t.name:<36}{t.device:<7}{t.provider:<22}{shape:<16}{t.verdict:<13}"
            f"{run_mean:>9.3f}{run_p95:>9.3f}{model_mean:>11.3f}{model_p95:>10.3f}"
            f"{run_mean - model_mean:>9.3f}"
        )
    lines.extend(f"{name:<36}skipped: {why}" for name, why in sorted(skipped.items()))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--models-dir", type=Path, action="append", default=[])
    parser.add_argument("--no-examples", action="store_true")
    parser.add_argument("--only", action="append", default=[], help="algorithm name(s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="radrouter-examples-") as tmp:
        dirs = list(args.models_dir)
        if not args.no_examples:
            dirs.append(build_examples(Path(tmp)))
        registry = Registry.discover(manifest_dirs=dirs)
        names = [n for n in registry.names() if not args.only or n in args.only]
        runtime = ModelRuntime(registry, lambda: dict.fromkeys(names, args.device))
        clock = SessionClock()
        timings: list[Timing] = []
        skipped = {p.name: f"not loadable: {p.error}" for p in registry.problems}
        with clock.installed():
            for name in names:
                factories = input_factories(registry.plugin(name))
                if not factories:
                    skipped[name] = "no example input (see benchmarks/algorithm_latency.py)"
                for case, factory in factories.items():
                    try:
                        study = factory()
                        timings.append(measure(runtime, name, study, args.runs, clock, case))
                    except Exception as exc:  # boundary: one broken plugin must not end the run
                        label = f"{name} ({case})" if case else name
                        skipped[label] = f"failed: {type(exc).__name__}: {exc}"
        for line in [*machine_description(), "", *report(timings, skipped, args.runs)]:
            print(line)


if __name__ == "__main__":
    main()
