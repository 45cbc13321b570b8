"""The model runtime: picks the device, keeps models loaded, bounds and times out runs."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from algorithms.backends import choose_device as choose_backend_device
from algorithms.contract import Algorithm, AlgorithmResult, StudyInput
from algorithms.registry import Registry

LOGGER = logging.getLogger(__name__)

DEFAULT_BACKEND = "onnxruntime"
"""Backend assumed for a plugin class without a ``backend`` attribute ("onnxruntime" or
"torch"): it decides what ``device: auto`` means for that plugin."""


class AlgorithmTimeoutError(Exception):
    """The plugin did not return within its time limit."""


def cuda_available(backend: str = DEFAULT_BACKEND) -> bool:
    """True when ``backend`` (onnxruntime by default) can use a CUDA GPU on this machine."""
    return choose_backend_device("auto", backend) == "cuda"


def choose_device(requested: str, backend: str = DEFAULT_BACKEND) -> str:
    """``auto`` becomes ``cuda`` when ``backend`` offers CUDA here, else ``cpu``; explicit
    choices are kept."""
    return choose_backend_device(requested, backend)


@dataclass(frozen=True)
class RunOutcome:
    result: AlgorithmResult
    seconds: float
    """Time inside the plugin's ``run`` (waiting for a free slot not included)."""
    device: str


@dataclass(frozen=True)
class ModelStatus:
    """A loaded model as ``/readyz`` and the metrics show it."""

    device: str
    provider: str
    """What runs it (e.g. CPUExecutionProvider, CUDAExecutionProvider, torch-cuda) when the
    plugin says (a ``provider`` or ``providers`` attribute); empty otherwise."""
    backend: str
    max_concurrent: int
    load_seconds: float


class _LoadedModel:
    """One warm algorithm instance and the slots that bound its concurrent runs."""

    def __init__(self, algorithm: Algorithm, status: ModelStatus) -> None:
        self.algorithm = algorithm
        self.status = status
        self.slots = threading.BoundedSemaphore(status.max_concurrent)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=status.max_concurrent, thread_name_prefix="model"
        )


class ModelRuntime:
    """Loads each algorithm once, on the device its settings ask for, and keeps it warm.

    At most ``max_concurrent`` runs per model at once (default 1), so several workers running
    different models do not oversubscribe a GPU, and a second run of the same model waits for
    the first. A run that exceeds its timeout is abandoned: its thread is left to finish in the
    background and the model instance is replaced for the next run (a Python thread cannot be
    killed).

    ``devices`` and ``max_concurrent`` are read when a model is loaded: algorithm name ->
    ``auto``/``cpu``/``cuda``, and name -> runs at once. A change takes effect when the model
    is next loaded.
    """

    def __init__(
        self,
        registry: Registry,
        devices: Callable[[], Mapping[str, str]],
        max_concurrent: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = registry
        self._devices = devices
        self._max_concurrent = max_concurrent or (lambda: {})
        self._models: dict[str, _LoadedModel] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._load_errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def loaded(self) -> dict[str, str]:
        """Algorithm name -> device, for every model currently loaded."""
        with self._lock:
            return {name: model.status.device for name, model in self._models.items()}

    def status(self) -> dict[str, ModelStatus]:
        """Algorithm name -> device, provider, backend and concurrency of each loaded model."""
        with self._lock:
            return {name: model.status for name, model in self._models.items()}

    def load_errors(self) -> dict[str, str]:
        """Algorithm name -> why its last load failed (cleared by a successful load)."""
        with self._lock:
            return dict(self._load_errors)

    def warm(self, names: list[str]) -> None:
        """Load (and so warm up) each model now. A model that fails to load is logged and
        listed by ``load_errors``; the others still load and the router still starts."""
        for name in names:
            try:
                self._model(name)
            except Exception as exc:  # boundary: one broken model must not stop the others
                LOGGER.error("algorithm %s could not be loaded: %s", name, exc)

    def _model(self, name: str) -> _LoadedModel:
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                return model
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:  # one load per model at a time; other models load in parallel
            with self._lock:
                model = self._models.get(name)
            if model is not None:
                return model
            try:
                model = self._load(name)
            except Exception as exc:
                with self._lock:
                    self._load_errors[name] = f"{type(exc).__name__}: {exc}"
                raise
            with self._lock:
                self._models[name] = model
                self._load_errors.pop(name, None)
            return model

    def _load(self, name: str) -> _LoadedModel:
        plugin = self.registry.plugin(name)
        backend = str(getattr(plugin, "backend", DEFAULT_BACKEND))
        device = choose_device(self._devices().get(name, "auto"), backend)
        max_concurrent = int(self._max_concurrent().get(name, 1))
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent for {name} must be at least 1, got {max_concurrent}")
        started = time.perf_counter()
        algorithm = self.registry.create(name)
        algorithm.load(device)
        seconds = time.perf_counter() - started
        status = ModelStatus(
            device=str(getattr(algorithm, "device", device)),
            provider=_provider_of(algorithm),
            backend=backend,
            max_concurrent=max_concurrent,
            load_seconds=seconds,
        )
        LOGGER.info(
            "algorithm %s %s loaded on %s (%s) in %.2f s, %d run(s) at once",
            name,
            self.registry.info(name).version,
            status.device,
            status.provider or backend,
            seconds,
            max_concurrent,
        )
        return _LoadedModel(algorithm, status)

    def run(self, name: str, study: StudyInput, timeout_s: float) -> RunOutcome:
        model = self._model(name)
        with model.slots:
            started = time.perf_counter()
            future = model.executor.submit(model.algorithm.run, study)
            try:
                result = future.result(timeout=timeout_s)
            except concurrent.futures.TimeoutError as exc:
                with self._lock:
                    if self._models.get(name) is model:
                        del self._models[name]
                model.executor.shutdown(wait=False, cancel_futures=True)
                raise AlgorithmTimeoutError(
                    f"{name} did not finish within {timeout_s:.0f} s"
                ) from exc
            seconds = time.perf_counter() - started
        if not isinstance(result, AlgorithmResult):
            raise TypeError(f"{name}.run returned {type(result).__name__}, not AlgorithmResult")
        return RunOutcome(result, seconds, model.status.device)


def _provider_of(algorithm: object) -> str:
    provider = getattr(algorithm, "provider", None)
    if isinstance(provider, str):
        return provider
    providers = getattr(algorithm, "providers", None)
    if isinstance(providers, list | tuple) and providers and isinstance(providers[0], str):
        return providers[0]
    return ""
