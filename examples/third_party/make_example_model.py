"""Build the example third-party models (ONNX, optionally TorchScript) and their manifests.

The models are small but real functions of the image, written without any radrouter code, as
a vendor's model would be:

- ``ct_dense_tissue.onnx`` (2-D classifier): sigmoid(gain * (mean(x) - bias)) per image;
- ``ct_bright_lesion.onnx`` (3-D segmenter): a per-voxel probability sigmoid(gain * (x -
  level)) and a label map (1 above ``level``, 2 above ``level2``);
- ``bright_region_detector.onnx`` (2-D detector): the bounding box (x1, y1, x2, y2) of the
  pixels above ``level``, its score (the highest per-pixel probability) and class 1.

Run: ``.venv/bin/python examples/third_party/make_example_model.py OUT_DIR [--torchscript]``.
Each model is written to OUT_DIR with a copy of its manifest from this folder, its
``sha256:`` filled in. Point ``model_dirs:`` in the routing YAML at OUT_DIR to use them.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8
"""Old enough for every onnxruntime this project supports (>= 1.18)."""
HERE = Path(__file__).resolve().parent

CLASSIFIER_GAIN, CLASSIFIER_BIAS = 12.0, 0.5
SEGMENTER_GAIN, SEGMENTER_LEVEL, SEGMENTER_LEVEL2 = 40.0, 0.15, 0.5
DETECTOR_GAIN, DETECTOR_LEVEL = 40.0, 0.85


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="radrouter-example-vendor",
        producer_version="1.0",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_classifier(
    path: Path, gain: float = CLASSIFIER_GAIN, bias: float = CLASSIFIER_BIAS
) -> Path:
    """image (N, 1, H, W) -> score (N, 1) = sigmoid(gain * (mean over the image - bias))."""
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Sub", ["mean", "bias"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "example_dense_tissue_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[_scalar("gain", gain), _scalar("bias", bias)],
    )
    return _save(graph, path)


def build_segmenter(
    path: Path,
    gain: float = SEGMENTER_GAIN,
    level: float = SEGMENTER_LEVEL,
    level2: float = SEGMENTER_LEVEL2,
) -> Path:
    """volume (N, 1, D, H, W) -> probability (N, 1, D, H, W) = sigmoid(gain * (x - level)),
    labels (N, D, H, W) = 1 where x > level, 2 where x > level2, else 0."""
    nodes = [
        helper.make_node("Sub", ["volume", "level"], ["above"]),
        helper.make_node("Mul", ["above", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
        helper.make_node("Greater", ["volume", "level"], ["is1"]),
        helper.make_node("Greater", ["volume", "level2"], ["is2"]),
        helper.make_node("Cast", ["is1"], ["one"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["is2"], ["two"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["one", "two"], ["labels_c"]),
        helper.make_node("Squeeze", ["labels_c", "channel_axis"], ["labels"]),
    ]
    graph = helper.make_graph(
        nodes,
        "example_bright_lesion_segmenter",
        [helper.make_tensor_value_info("volume", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])],
        [
            helper.make_tensor_value_info(
                "probability", TensorProto.FLOAT, ["N", 1, "D", "H", "W"]
            ),
            helper.make_tensor_value_info("labels", TensorProto.FLOAT, ["N", "D", "H", "W"]),
        ],
        initializer=[
            _scalar("gain", gain),
            _scalar("level", level),
            _scalar("level2", level2),
            helper.make_tensor("channel_axis", TensorProto.INT64, [1], [1]),
        ],
    )
    return _save(graph, path)


def build_detector(path: Path, gain: float = DETECTOR_GAIN, level: float = DETECTOR_LEVEL) -> Path:
    """image (N, 1, H, W) -> boxes (N, 1, 6): x1, y1, x2, y2 (pixel edges) of the pixels above
    ``level``, score = max sigmoid(gain * (x - level)), class 1."""
    nodes = [
        helper.make_node("Greater", ["image", "level"], ["inside_b"]),
        helper.make_node("Cast", ["inside_b"], ["inside"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["inside"], ["rows"], axes=[1, 3], keepdims=0),
        helper.make_node("ReduceMax", ["inside"], ["cols"], axes=[1, 2], keepdims=0),
        helper.make_node("ArgMax", ["rows"], ["y1_i"], axis=1, keepdims=1),
        helper.make_node("ArgMax", ["rows"], ["y2_last"], axis=1, keepdims=1, select_last_index=1),
        helper.make_node("ArgMax", ["cols"], ["x1_i"], axis=1, keepdims=1),
        helper.make_node("ArgMax", ["cols"], ["x2_last"], axis=1, keepdims=1, select_last_index=1),
        helper.make_node("Add", ["y2_last", "one_i"], ["y2_i"]),
        helper.make_node("Add", ["x2_last", "one_i"], ["x2_i"]),
        *[
            helper.make_node("Cast", [f"{n}_i"], [n], to=TensorProto.FLOAT)
            for n in ("x1", "y1", "x2", "y2")
        ],
        helper.make_node("Sub", ["image", "level"], ["above"]),
        helper.make_node("Mul", ["above", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["pixel_score"]),
        helper.make_node("ReduceMax", ["pixel_score"], ["score"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["score", "last_axis"], ["score_c"]),
        helper.make_node("Mul", ["score_c", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "class_id"], ["class_c"]),
        helper.make_node("Concat", ["x1", "y1", "x2", "y2", "score_c", "class_c"], ["row"], axis=1),
        helper.make_node("Unsqueeze", ["row", "box_axis"], ["boxes"]),
    ]
    graph = helper.make_graph(
        nodes,
        "example_bright_region_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 1, 6])],
        initializer=[
            _scalar("gain", gain),
            _scalar("level", level),
            _scalar("zero", 0.0),
            _scalar("class_id", 1.0),
            helper.make_tensor("one_i", TensorProto.INT64, [], [1]),
            helper.make_tensor("last_axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("box_axis", TensorProto.INT64, [1], [1]),
        ],
    )
    return _save(graph, path)


def build_segmenter_torchscript(
    path: Path,
    gain: float = SEGMENTER_GAIN,
    level: float = SEGMENTER_LEVEL,
    level2: float = SEGMENTER_LEVEL2,
) -> Path:
    """The segmenter as a TorchScript module (needs torch): the same two outputs, in a dict."""
    import torch

    class BrightLesionSegmenter(torch.nn.Module):
        def __init__(self, gain: float, level: float, level2: float) -> None:
            super().__init__()
            self.gain = gain
            self.level = level
            self.level2 = level2

        def forward(self, volume: torch.Tensor) -> dict[str, torch.Tensor]:
            probability = torch.sigmoid((volume - self.level) * self.gain)
            labels = (volume > self.level).float() + (volume > self.level2).float()
            return {"probability": probability, "labels": labels.squeeze(1)}

    with warnings.catch_warnings():  # TorchScript is deprecated upstream, still loadable
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(BrightLesionSegmenter(gain, level, level2))
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))  # type: ignore[no-untyped-call]
    return path


EXAMPLES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "ct_dense_tissue.yaml": ("ct_dense_tissue.onnx", build_classifier),
    "ct_bright_lesion.yaml": ("ct_bright_lesion.onnx", build_segmenter),
    "bright_region_detector.yaml": ("bright_region_detector.onnx", build_detector),
}


def write_manifest(template: Path, model: Path, out_dir: Path) -> Path:
    """Copy ``template`` into ``out_dir`` with ``sha256:`` set to ``model``'s digest."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    text = template.read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^(\s*sha256:).*$", rf"\g<1> {digest}", text)
    if count != 1:
        raise ValueError(f"{template} needs exactly one sha256: line to fill in")
    target = out_dir / template.name
    target.write_text(text, encoding="utf-8")
    return target


def build_all(out_dir: Path, torchscript: bool = False) -> list[Path]:
    """Every example model and its manifest in ``out_dir``; returns the manifests."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifests: list[Path] = []
    for manifest_name, (model_name, build) in EXAMPLES.items():
        model = build(out_dir / model_name)
        manifests.append(write_manifest(HERE / manifest_name, model, out_dir))
    if torchscript:
        model = build_segmenter_torchscript(out_dir / "ct_bright_lesion_ts.pt")
        manifests.append(write_manifest(HERE / "ct_bright_lesion_ts.yaml", model, out_dir))
    return manifests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder for the models and manifests")
    parser.add_argument(
        "--torchscript", action="store_true", help="also the TorchScript segmenter (needs torch)"
    )
    args = parser.parse_args(argv)
    for manifest in build_all(args.out_dir, args.torchscript):
        print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
