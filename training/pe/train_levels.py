"""Train the artery-level network: which predicted pulmonary artery voxels are segmental (CLI,
torch).

The embolus network (``model.onnx``) finds the pulmonary arteries but not their level; the
plugin named the level of an embolus from the lumen radius, and lobar and segmental arteries
overlap in width (docs/algorithms/pe.md, *Level*). A radiologist names the level by the branch.
This small 3-D U-Net sees the embolus network's artery and trunk probabilities and the
vascular window on the same 2 mm grid, with a field of view of several centimetres (the
branching around a voxel), and gives each voxel the probability that it lies in a segmental
artery rather than a lobar, main artery or the trunk. It is trained on generated scans, whose
generator knows every artery's level, with the shipped embolus network's outputs as input.

    python -m training.pe.train_levels --volumes 70 --max-minutes 14
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import multiprocessing
import platform
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812

from algorithms import packaged_model
from algorithms.pe import inference, preprocess
from algorithms.pe.artery_levels import CHANNELS, LEVEL_CARD, LEVEL_MODEL, level_input
from training import onnx_export
from training.pe.synth import SEGMENTAL
from training.pe.train import draw_training_scan
from training.unet import ProbabilityModel, UNet, parameter_count

SEED_BASE = 500_000
"""Training scans of the level network: seeds SEED_BASE + i (other splits are far away)."""
HELD_OUT = 0.15
"""Share of the scans kept out of training to report the voxel accuracy."""
WIDTHS = (8, 16, 32, 32)
PATCH = 48
PAD = PATCH // 2
SEGMENTAL_WEIGHT = 4.0
"""BCE weight of segmental voxels: about one predicted artery voxel in seven is segmental, and
an embolus's level is decided at a mean probability of 0.5."""
IGNORE, LARGER, SEGMENT = 0, 1, 2
"""Target values: not an artery (no loss), trunk / main / lobar artery, segmental artery."""

SHIPPED = Path(str(resources.files("algorithms.pe").joinpath(LEVEL_MODEL)))


@dataclass
class LevelExample:
    x: npt.NDArray[np.float16]
    """(CHANNELS, D, H, W) network input, padded by ``PAD``."""
    target: npt.NDArray[np.uint8]
    points: npt.NDArray[np.int64]
    """Patch centres (padded coordinates): up to 300 segmental artery voxels and up to 300
    other artery voxels, so that about half the patches are centred on a segmental artery."""


_SESSION: Any = None


def make_level_example(seed: int) -> LevelExample:
    """A generated training scan on the model grid: the embolus network's outputs and the
    vascular window as input, the generator's artery level as target."""
    global _SESSION
    if _SESSION is None:
        card = packaged_model.read_card("algorithms.pe", "model.json")
        raw = packaged_model.read_checked("algorithms.pe", "model.onnx", card.get("sha256"))
        _SESSION = packaged_model.onnx_session(raw, "cpu")
    ct, spacing = draw_training_scan(seed, np.random.default_rng([seed, 99]))
    box = preprocess.find_lung_box(ct.hu.astype(np.float32), spacing)
    vol, _grid = preprocess.resample(ct.hu, spacing, box, preprocess.MODEL_SPACING_MM)
    prob = inference.predict(_SESSION, "ct", preprocess.normalise(vol))

    def fraction(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
        return preprocess.resample(
            mask.astype(np.float32), spacing, box, preprocess.MODEL_SPACING_MM
        )[0]

    artery = fraction(ct.artery_classes > 0)
    segmental = fraction(ct.artery_classes == SEGMENTAL)
    target = np.full(vol.shape, IGNORE, dtype=np.uint8)
    inside = artery >= 0.5
    target[inside] = np.where(segmental[inside] >= 0.5 * artery[inside], SEGMENT, LARGER)
    x = np.pad(level_input(prob, vol), [(0, 0)] + [(PAD, PAD)] * 3, mode="edge")
    target = np.pad(target, PAD)
    rng = np.random.default_rng([seed, 5])
    seg_points = np.argwhere(target == SEGMENT)
    other = np.argwhere(target == LARGER)
    picks = [
        p[rng.choice(len(p), min(len(p), 300), replace=False)]
        for p in (seg_points, other)
        if len(p)
    ]
    return LevelExample(x.astype(np.float16), target, np.concatenate(picks))


def build(volumes: int, workers: int) -> list[LevelExample]:
    seeds = [SEED_BASE + i for i in range(volumes)]
    start = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        examples = []
        for n, ex in enumerate(pool.imap(make_level_example, seeds)):
            examples.append(ex)
            if (n + 1) % 10 == 0:
                print(f"  {n + 1}/{volumes} scans, {time.monotonic() - start:.0f} s", flush=True)
    return examples


def batch(
    examples: list[LevelExample], rng: np.random.Generator, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    xs = np.empty((size, CHANNELS, PATCH, PATCH, PATCH), dtype=np.float32)
    ts = np.empty((size, 1, PATCH, PATCH, PATCH), dtype=np.int64)
    for b in range(size):
        ex = examples[int(rng.integers(len(examples)))]
        centre = ex.points[int(rng.integers(len(ex.points)))] + rng.integers(-8, 9, size=3)
        lo = np.clip(centre - PATCH // 2, 0, np.array(ex.target.shape) - PATCH)
        box = tuple(slice(int(a), int(a) + PATCH) for a in lo)
        xs[b] = ex.x[(slice(None), *box)].astype(np.float32)
        ts[b, 0] = ex.target[box]
    return torch.from_numpy(xs), torch.from_numpy(ts)


def masked_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    known = target != IGNORE
    if not bool(known.any()):
        return logits.sum() * 0.0
    y = (target == SEGMENT).to(logits.dtype)
    pos_weight = torch.tensor(SEGMENTAL_WEIGHT, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits[known], y[known], pos_weight=pos_weight)


def voxel_accuracy(net: UNet, examples: list[LevelExample]) -> dict[str, float]:
    """Share of artery voxels of ``examples`` whose level (segmental or larger) is right."""
    net.eval()
    right = {LARGER: 0, SEGMENT: 0}
    total = {LARGER: 0, SEGMENT: 0}
    with torch.no_grad():
        for ex in examples:
            x = ex.x.astype(np.float32)
            pads = [(0, 0)] + [(0, (-n) % 8) for n in x.shape[1:]]
            p = torch.sigmoid(net(torch.from_numpy(np.pad(x, pads))[None]))[0, 0].numpy()
            p = p[: x.shape[1], : x.shape[2], : x.shape[3]]
            for level in (LARGER, SEGMENT):
                sel = ex.target == level
                total[level] += int(sel.sum())
                right[level] += int(((p[sel] >= 0.5) == (level == SEGMENT)).sum())
    net.train()
    return {
        "segmental": right[SEGMENT] / max(total[SEGMENT], 1),
        "larger": right[LARGER] / max(total[LARGER], 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--volumes", type=int, default=70)
    parser.add_argument("--max-minutes", type=float, default=14.0)
    parser.add_argument("--steps", type=int, default=100_000, help="at most this many steps")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    start = time.monotonic()
    examples = build(args.volumes, args.workers)
    data_s = time.monotonic() - start
    held = max(1, round(HELD_OUT * len(examples)))
    train, held_out = examples[:-held], examples[-held:]
    net = UNet(CHANNELS, 1, WIDTHS, dims=3)
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.max_minutes * 60.0
    step, t0, losses = 0, time.monotonic(), []
    while time.monotonic() - t0 < budget and step < args.steps:
        frac = (time.monotonic() - t0) / budget
        for group in optimiser.param_groups:
            group["lr"] = args.lr * 0.5 * (1.0 + np.cos(np.pi * min(frac, 1.0)))
        x, t = batch(train, rng, args.batch)
        loss = masked_loss(net(x), t)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"  step {step} loss {np.mean(losses[-50:]):.4f}", flush=True)
    train_s = time.monotonic() - t0
    accuracy = voxel_accuracy(net, held_out)
    print(f"held-out voxel accuracy {accuracy}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, CHANNELS, 32, 32, 32)
    onnx_export.export(ProbabilityModel(net), args.out, example, "levels")
    raw = args.out.read_bytes()
    card = {
        "model_file": args.out.name,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "format": f"ONNX opset {onnx_export.ONNX_OPSET}",
        "input": {
            "name": "levels",
            "channels": [
                "embolus network's pulmonary artery probability",
                "embolus network's pulmonary trunk probability",
                "vascular window (preprocess.normalise channel 1)",
            ],
            "grid": f"the embolus network's ({preprocess.MODEL_SPACING_MM} mm)",
        },
        "output": "probability that the voxel lies in a segmental artery (rather than the "
        "trunk, a main or a lobar artery); meaningful inside the predicted arteries",
        "architecture": {
            "type": "3-D U-Net",
            "widths": list(WIDTHS),
            "parameters": parameter_count(net),
        },
        "training": {
            "seeds": [SEED_BASE, SEED_BASE + len(train) - 1],
            "held_out_seeds": [SEED_BASE + len(train), SEED_BASE + len(examples) - 1],
            "steps": step,
            "batch": args.batch,
            "patch": PATCH,
            "lr": args.lr,
            "data_generation_s": round(data_s, 1),
            "training_s": round(train_s, 1),
            "final_loss": round(float(np.mean(losses[-100:])), 4),
            "held_out_voxel_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
            "data": "synthetic contrast chest CT only (training.pe.synth)",
        },
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (args.out.parent / LEVEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out} ({len(raw)} bytes) and its card", flush=True)


if __name__ == "__main__":
    main()
