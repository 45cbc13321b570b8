"""Combine second-stage CNNs (``train_defect_cnn``) into one ONNX file that averages them.

    python -m training.pe.combine_patch_networks A.onnx B.onnx --out algorithms/pe/defects_cnn.onnx

The combined network takes the patches of the member with the most views (``vessel_patches``:
4 channels a view) and gives each member the channels it was trained on, which are the first
ones (a 2-view patch starts with the 1-view patch); its output is the mean of the members'
probabilities. The plugin runs it like any one CNN (``second_stage.PatchNetwork`` reads the
views from its input). An average of networks trained on different data keeps what each is
sure of and halves what only one of them believes, which is what an ensemble is for: the
twelfth session's 2-view CNN raised scores on real clots and on false candidates alike
(docs/algorithms/pe.md).

The card written beside the output (``.json``) records each member's file, sha256 and card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import onnx
from onnx import TensorProto, compose, helper

from algorithms.pe import second_stage
from training.pe.train_defect_cnn import INPUT_NAME, SHIPPED
from training.pe.train_defects import forget_evaluated_scorer

OUTPUT_NAME = "probability"


def _channels(model: onnx.ModelProto) -> int:
    (first,) = model.graph.input
    dim = first.type.tensor_type.shape.dim[1]
    if not dim.HasField("dim_value"):
        raise ValueError(f"{first.name}: the channel axis has no fixed size")
    return int(dim.dim_value)


def combined(members: list[onnx.ModelProto]) -> onnx.ModelProto:
    """One model whose input has the most channels of ``members`` and whose output is the
    mean of their outputs; each member reads the first channels, as many as it takes."""
    if len(members) < 2:
        raise ValueError("combine at least two networks")
    opsets = {m.opset_import[0].version for m in members}
    if len(opsets) != 1:
        raise ValueError(f"the networks use different ONNX opsets: {sorted(opsets)}")
    channels = [_channels(m) for m in members]
    width = max(channels)
    reference = members[channels.index(width)].graph.input[0].type.tensor_type.shape
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    outputs: list[str] = []
    for n, (member, count) in enumerate(zip(members, channels, strict=True)):
        prefixed = compose.add_prefix(member, f"m{n}/")
        graph = prefixed.graph
        (member_input,) = graph.input
        (member_output,) = graph.output
        ends = f"m{n}/slice_ends"
        initializers += [
            helper.make_tensor(f"m{n}/slice_starts", TensorProto.INT64, [1], [0]),
            helper.make_tensor(ends, TensorProto.INT64, [1], [count]),
            helper.make_tensor(f"m{n}/slice_axes", TensorProto.INT64, [1], [1]),
        ]
        nodes.append(
            helper.make_node(
                "Slice",
                [INPUT_NAME, f"m{n}/slice_starts", ends, f"m{n}/slice_axes"],
                [member_input.name],
                name=f"m{n}/channels",
            )
        )
        nodes += list(graph.node)
        initializers += list(graph.initializer)
        outputs.append(member_output.name)
    nodes.append(helper.make_node("Mean", outputs, [OUTPUT_NAME], name="mean"))
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, None)
    x.type.tensor_type.shape.CopyFrom(reference)
    y = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, None)
    y.type.tensor_type.shape.CopyFrom(members[0].graph.output[0].type.tensor_type.shape)
    graph = helper.make_graph(nodes, "mean_of_patch_networks", [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=list(members[0].opset_import))
    model.ir_version = max(m.ir_version for m in members)
    model.producer_name = "radrouter training.pe.combine_patch_networks"
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("members", type=Path, nargs="+", help="ONNX files of train_defect_cnn")
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args(argv)
    raws = [p.read_bytes() for p in args.members]
    cards = []
    for path, raw in zip(args.members, raws, strict=True):
        card_path = path.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else None
        cards.append({"file": path.name, "sha256": hashlib.sha256(raw).hexdigest(), "card": card})
    model = combined([onnx.load_from_string(raw) for raw in raws])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    network = second_stage.PatchNetwork.from_onnx(args.out.read_bytes(), "cpu")
    card = {
        "what": "mean of candidate CNNs of the pe plugin's second stage "
        "(algorithms.pe.second_stage; training.pe.combine_patch_networks)",
        "sha256": hashlib.sha256(args.out.read_bytes()).hexdigest(),
        "input": {"name": INPUT_NAME, "channels": _channels(model), "views": network.scales},
        "members": cards,
        "data": "synthetic contrast chest CT only (training.pe.synth)",
    }
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out}: mean of {len(raws)} networks, {network.scales} view(s) of input")
    if args.out.resolve() == SHIPPED.resolve():
        forget_evaluated_scorer(second_stage.PATCH_NETWORK)


if __name__ == "__main__":
    main()
