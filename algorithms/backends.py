"""Inference backends behind one interface: onnxruntime (ONNX) and torch (TorchScript).

A backend loads a model file onto a device and returns a :class:`ModelSession`, whose ``run``
takes and returns numpy arrays by name. Plugins and manifest models use the same sessions, so
the runtime can report the device and provider of every model the same way. torch is imported
only when a TorchScript model is loaded: the router runs without torch installed.
"""

from __future__ import annotations

import enum
import io
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

LOGGER = logging.getLogger(__name__)

Array = npt.NDArray[Any]

DYNAMIC_DIMENSION_FOR_WARM_UP = 32
"""Size used for a dynamic (unnamed-size) input dimension in the warm-up run."""


class ModelFormat(enum.StrEnum):
    """File formats a backend can load."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"

    @classmethod
    def from_path(cls, path: Path) -> ModelFormat:
        """The format a file name implies: ``.onnx`` or ``.pt``/``.pth``/``.ts`` (TorchScript)."""
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return cls.ONNX
        if suffix in (".pt", ".pth", ".ts"):
            return cls.TORCHSCRIPT
        raise ValueError(
            f"model file {path.name!r}: cannot tell its format from the suffix "
            "(.onnx for ONNX; .pt, .pth or .ts for TorchScript)"
        )


class BackendUnavailableError(RuntimeError):
    """The package a backend needs (onnxruntime, torch) is not installed."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name and shape (``None`` for a dynamic dimension)."""

    name: str
    shape: tuple[int | None, ...] | None
    """``None`` when the format does not declare shapes (TorchScript)."""


class ModelSession(Protocol):
    """A loaded model, warm and ready: numpy arrays in, numpy arrays out, by name."""

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda``: where the model actually runs."""
        ...

    @property
    def provider(self) -> str:
        """What runs it, e.g. ``CUDAExecutionProvider`` or ``torch-cpu``."""
        ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Declared outputs (TorchScript: empty until the first run names them)."""
        ...

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """One forward pass. Thread-safe: several runs may overlap (``max_concurrent``)."""
        ...


class InferenceBackend(Protocol):
    """Loads model files of one format."""

    @property
    def name(self) -> str: ...

    def cuda_available(self) -> bool:
        """True when this backend can run on a CUDA GPU on this machine."""
        ...

    def load(self, model: Path | bytes, device: str) -> ModelSession:
        """Load ``model`` (a file, or its bytes) onto ``device`` (``cpu`` or ``cuda``)."""
        ...


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not 'cpu' or 'cuda'")


# --------------------------------------------------------------------------------------------
# onnxruntime


class OnnxRuntimeSession:
    """An ``onnxruntime.InferenceSession`` (whose ``run`` is thread-safe)."""

    def __init__(self, session: Any, device: str) -> None:
        self._session = session
        self._device = device
        self._inputs = tuple(
            TensorSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in session.get_inputs()
        )
        self._outputs = tuple(
            TensorSpec(o.name, tuple(d if isinstance(d, int) else None for d in o.shape))
            for o in session.get_outputs()
        )

    @property
    def device(self) -> str:
        return self._device

    @property
    def provider(self) -> str:
        return str(self._session.get_providers()[0])

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        names = [o.name for o in self._outputs]
        values = self._session.run(names, dict(inputs))
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


class OnnxRuntimeBackend:
    """ONNX models with onnxruntime: the CUDA provider when asked for and present, else CPU."""

    name = "onnxruntime"

    def cuda_available(self) -> bool:
        try:
            import onnxruntime
        except ImportError:
            return False
        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()

    def load(self, model: Path | bytes, device: str) -> ModelSession:
        _check_device(device)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed") from exc
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if self.cuda_available():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                LOGGER.warning("CUDA asked for, but onnxruntime has no CUDA provider: using CPU")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = model if isinstance(model, bytes) else str(model)
        session = ort.InferenceSession(source, options, providers=providers)
        actual = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        return OnnxRuntimeSession(session, actual)


# --------------------------------------------------------------------------------------------
# torch (TorchScript)


class TorchScriptSession:
    """A ``torch.jit`` module run under ``torch.inference_mode``. Inputs are passed to
    ``forward`` in the order of its parameters; outputs are named by the dict keys it returns,
    or ``"0"``, ``"1"``, ... for a tensor or a tuple of tensors."""

    def __init__(self, module: Any, device: str) -> None:
        self._module = module
        self._device = device
        arguments = module.forward.schema.arguments[1:]  # [0] is self
        self._inputs = tuple(TensorSpec(a.name, None) for a in arguments)
        self._outputs: tuple[TensorSpec, ...] = ()

    @property
    def device(self) -> str:
        return self._device

    @property
    def provider(self) -> str:
        return f"torch-{self._device}"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        import torch

        missing = [spec.name for spec in self._inputs if spec.name not in inputs]
        if missing:
            raise ValueError(f"TorchScript model input(s) {missing} not given")
        tensors = [
            torch.from_numpy(np.ascontiguousarray(inputs[spec.name])).to(self._device)
            for spec in self._inputs
        ]
        with torch.inference_mode():
            result = self._module(*tensors)
        named = _name_outputs(result)
        if not self._outputs:
            self._outputs = tuple(TensorSpec(name, None) for name in named)
        return {name: value.detach().cpu().numpy() for name, value in named.items()}


def _name_outputs(result: Any) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return {str(key): value for key, value in result.items()}
    if isinstance(result, list | tuple):
        return {str(index): value for index, value in enumerate(result)}
    return {"0": result}


class TorchScriptBackend:
    """TorchScript modules (``torch.jit.load``), on CUDA when asked for and present."""

    name = "torch"

    def cuda_available(self) -> bool:
        try:
            import torch
        except ImportError:
            return False
        return bool(torch.cuda.is_available())

    def load(self, model: Path | bytes, device: str) -> ModelSession:
        _check_device(device)
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError(
                "torch is not installed; TorchScript models need it (pip install torch)"
            ) from exc
        if device == "cuda" and not self.cuda_available():
            LOGGER.warning("CUDA asked for, but torch sees no CUDA device: using CPU")
            device = "cpu"
        source = io.BytesIO(model) if isinstance(model, bytes) else str(model)
        with warnings.catch_warnings():  # TorchScript is deprecated upstream, still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(source, map_location=device)  # type: ignore[no-untyped-call]
        module.eval()
        return TorchScriptSession(module, device)


# --------------------------------------------------------------------------------------------
# Choosing


BACKENDS: Mapping[ModelFormat, InferenceBackend] = {
    ModelFormat.ONNX: OnnxRuntimeBackend(),
    ModelFormat.TORCHSCRIPT: TorchScriptBackend(),
}
BACKEND_NAMES: Mapping[str, InferenceBackend] = {b.name: b for b in BACKENDS.values()}


def backend_for(model_format: ModelFormat | str) -> InferenceBackend:
    return BACKENDS[ModelFormat(model_format)]


def choose_device(requested: str, backend: InferenceBackend | str = "onnxruntime") -> str:
    """``auto`` becomes ``cuda`` when ``backend`` can use a GPU here, else ``cpu``;
    ``cpu`` and ``cuda`` are kept."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {requested!r} is not 'auto', 'cpu' or 'cuda'")
    if requested != "auto":
        return requested
    if isinstance(backend, str):
        if backend not in BACKEND_NAMES:
            raise ValueError(f"backend {backend!r} is not one of {sorted(BACKEND_NAMES)}")
        chosen = BACKEND_NAMES[backend]
    else:
        chosen = backend
    return "cuda" if chosen.cuda_available() else "cpu"


def load_model(
    model: Path | bytes, device: str, model_format: ModelFormat | str | None = None
) -> ModelSession:
    """Load a model file with the backend its format (or suffix) calls for."""
    if model_format is None:
        if isinstance(model, bytes):
            raise ValueError("load_model: give model_format when passing the model as bytes")
        model_format = ModelFormat.from_path(model)
    return backend_for(model_format).load(model, device)


def warm_up(
    session: ModelSession,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> float:
    """One run on zeros, so the first real run does not pay for lazy initialisation (CUDA
    context, kernel selection, memory arenas). ``shapes`` names the shape of each input; by
    default the declared shape is used with a dynamic batch dimension set to 1 and other
    dynamic dimensions to ``DYNAMIC_DIMENSION_FOR_WARM_UP``. Returns the seconds it took."""
    feed: dict[str, Array] = {}
    for spec in session.inputs:
        if shapes is not None and spec.name in shapes:
            shape = tuple(int(n) for n in shapes[spec.name])
        elif spec.shape is not None:
            shape = tuple(
                n if n is not None else (1 if axis == 0 else DYNAMIC_DIMENSION_FOR_WARM_UP)
                for axis, n in enumerate(spec.shape)
            )
        else:
            raise ValueError(f"warm_up: the shape of input {spec.name!r} is not declared; give it")
        feed[spec.name] = np.zeros(shape, dtype=np.float32)
    started = time.perf_counter()
    session.run(feed)
    return time.perf_counter() - started
