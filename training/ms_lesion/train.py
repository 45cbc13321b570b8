"""Train the FLAIR lesion U-Net on synthetic brains and export it to ONNX (CLI, needs torch)."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import multiprocessing
import pickle
import platform
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812

from algorithms.ms_lesion import preprocess
from training import onnx_export
from training.ms_lesion import synth
from training.ms_lesion.network import (
    DEFAULT_WIDTHS,
    OUTPUT_CHANNELS,
    FlairUNet,
)
from training.unet import ProbabilityModel, parameter_count

SHIPPED_MODEL = Path(str(resources.files("algorithms.ms_lesion").joinpath("model.onnx")))
"""Where the plugin loads its weights from: the default output (in the algorithm's package)."""

logger = logging.getLogger(__name__)

TRAIN_SEED_BASE = 300_000
"""Training phantoms use seeds TRAIN_SEED_BASE + i; evaluation uses seeds far from these."""
EXAMS_PER_PHANTOM = 2
"""Each synthetic brain is scanned twice (different protocol, pose, lesions): anatomy is the
expensive part of generation."""
DATA_VERSION = 1
"""Bump when make_examples changes, to invalidate cached training data."""
INTENSITY_QUANTUM = 50.0
"""Cached images are stored as uint8 of normalised intensity x this (0..5.1)."""
THREE_D_SLICE_STRIDE = 2
"""Every second slice of 3-D exams is kept (neighbouring 1 mm slices are nearly identical)."""
TISSUE_BITS = (
    (synth.Tissue.VENTRICLE,),
    (synth.Tissue.CORTEX,),
    (synth.Tissue.BRAINSTEM,),
    (synth.Tissue.CEREBELLAR_GREY, synth.Tissue.CEREBELLAR_WHITE),
)
"""Anatomy targets, in OUTPUT_CHANNELS order after the lesion channel."""


@dataclass(frozen=True)
class TrainConfig:
    phantoms: int = 56
    steps: int = 3000
    batch: int = 12
    patch: int = 96
    lr: float = 2e-3
    seed: int = 0
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    workers: int = 2
    max_minutes: float = 25.0
    """Wall-clock budget for data generation plus training (the schedule adapts)."""
    init: str = ""
    """Weights (a state dict saved by an earlier run) to start from instead of random ones."""


@dataclass
class Example:
    """One exam on its model grid: quantised image and bit-packed targets."""

    image: npt.NDArray[np.uint8]
    targets: npt.NDArray[np.uint8]
    """Bit c set = OUTPUT_CHANNELS[c] present."""
    lesion_points: npt.NDArray[np.int64]
    """(n, 3) slice/row/column of lesion pixels (subsampled), for lesion-centred patches."""
    head_points: npt.NDArray[np.int64]
    mode: str


def make_examples(seed: int) -> list[Example]:
    """Scan one synthetic brain twice and bring each exam onto its model grid like the plugin."""
    phantom = synth.BrainPhantom(seed)
    rng = np.random.default_rng([seed, 97])
    examples: list[Example] = []
    for n in range(EXAMS_PER_PHANTOM):
        mode: Literal["2d", "3d"] = "2d" if (seed + n) % 2 == 0 else "3d"
        protocol = synth.random_protocol(rng, mode=mode)
        pose = synth.random_pose(rng)
        count = int(min(24, 1 + rng.geometric(0.1))) if rng.uniform() > 0.1 else 0
        lesions = phantom.random_lesions(rng, count)
        exam = synth.acquire(phantom, lesions, protocol, pose, rng)
        prepared = preprocess.prepare(exam.image.astype(np.float32), exam.affine)
        if prepared is None:
            continue
        grid = prepared.grid
        masks = [exam.lesion_labels > 0] + [
            np.isin(exam.anatomy, [int(t) for t in tissues]) for tissues in TISSUE_BITS
        ]
        targets = np.zeros(grid.shape, dtype=np.uint8)
        for bit, mask in enumerate(masks):
            on_grid = preprocess.resample(mask.astype(np.float32), grid) >= 0.5
            targets |= on_grid.astype(np.uint8) << bit
        image = prepared.image
        if mode == "3d":
            image, targets = image[::THREE_D_SLICE_STRIDE], targets[::THREE_D_SLICE_STRIDE]
        quantised = np.clip(np.rint(image * INTENSITY_QUANTUM), 0, 255).astype(np.uint8)
        lesion = np.argwhere(targets & 1)
        head = np.argwhere(quantised[:, ::4, ::4] > 10) * np.array([1, 4, 4])
        examples.append(
            Example(
                image=quantised,
                targets=targets,
                lesion_points=lesion[
                    rng.choice(len(lesion), min(3000, len(lesion)), replace=False)
                ],
                head_points=head[rng.choice(len(head), min(3000, len(head)), replace=False)],
                mode=mode,
            )
        )
    return examples


def build_dataset(config: TrainConfig, cache_dir: Path | None) -> list[Example]:
    """Generate the training exams (worker processes), or load them from ``cache_dir``."""
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"ms_lesion_v{DATA_VERSION}_{config.phantoms}.pkl"
        if cache.exists():
            print(f"  loading cached exams from {cache}", flush=True)
            with cache.open("rb") as f:
                cached: list[Example] = pickle.load(f)
            return cached
    seeds = [TRAIN_SEED_BASE + i for i in range(config.phantoms)]
    start = time.monotonic()
    examples: list[Example] = []
    with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
        for i, batch in enumerate(pool.imap(make_examples, seeds)):
            examples.extend(batch)
            if (i + 1) % 10 == 0:
                print(
                    f"  generated {i + 1}/{len(seeds)} phantoms, {time.monotonic() - start:.0f} s",
                    flush=True,
                )
    if cache is not None:
        with cache.open("wb") as f:
            pickle.dump(examples, f, protocol=pickle.HIGHEST_PROTOCOL)
    return examples


def _patch(
    array: npt.NDArray[np.uint8], k: int, r0: int, c0: int, patch: int
) -> npt.NDArray[np.uint8]:
    out = np.zeros((patch, patch), dtype=np.uint8)
    plane = array[k]
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + patch, plane.shape[0]), min(c0 + patch, plane.shape[1])
    if re > rs and ce > cs:
        out[rs - r0 : re - r0, cs - c0 : ce - c0] = plane[rs:re, cs:ce]
    return out


def sample_batch(
    examples: list[Example], rng: np.random.Generator, batch: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches centred on a lesion pixel half of the time, else anywhere in the head; random
    left-right flips, intensity scale, gamma and noise."""
    xs = np.empty((batch, 1, patch, patch), dtype=np.float32)
    ys = np.empty((batch, len(OUTPUT_CHANNELS), patch, patch), dtype=np.float32)
    for b in range(batch):
        ex = examples[int(rng.integers(len(examples)))]
        points = (
            ex.lesion_points if len(ex.lesion_points) and rng.uniform() < 0.5 else ex.head_points
        )
        k, r, c = (int(v) for v in points[int(rng.integers(len(points)))])
        jitter = rng.integers(-patch // 3, patch // 3 + 1, size=2)
        r0, c0 = r - patch // 2 + int(jitter[0]), c - patch // 2 + int(jitter[1])
        x = _patch(ex.image, k, r0, c0, patch).astype(np.float32) / INTENSITY_QUANTUM
        t = _patch(ex.targets, k, r0, c0, patch)
        y = ((t[None] >> np.arange(len(OUTPUT_CHANNELS))[:, None, None]) & 1).astype(np.float32)
        if rng.uniform() < 0.5:
            x, y = x[:, ::-1], y[:, :, ::-1]
        x = np.power(x / 2.0, float(rng.uniform(0.8, 1.25))) * 2.0 * float(rng.uniform(0.85, 1.15))
        x = x + rng.normal(0.0, float(rng.uniform(0.0, 0.05)), size=x.shape)
        xs[b, 0] = np.clip(x, 0.0, preprocess.INTENSITY_CLIP)
        ys[b] = y
    return torch.from_numpy(xs), torch.from_numpy(ys)


def _soft_dice(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per channel over the batch, averaged over channels."""
    dims = (0, 2, 3)
    inter = (prob * target).sum(dim=dims)
    dice = (2.0 * inter + 1.0) / (prob.sum(dim=dims) + target.sum(dim=dims) + 1.0)
    return 1.0 - dice.mean()


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per channel BCE (lesion positives weighted 3x, anatomy 2x) plus soft Dice over the batch,
    so that small structures (lesions, ventricles, the cortical ribbon) are not drowned out."""
    lesion_logits, lesion_target = logits[:, :1], target[:, :1]
    lesion = F.binary_cross_entropy_with_logits(
        lesion_logits, lesion_target, pos_weight=torch.tensor(3.0)
    ) + _soft_dice(torch.sigmoid(lesion_logits), lesion_target)
    anatomy_logits, anatomy_target = logits[:, 1:], target[:, 1:]
    anatomy = F.binary_cross_entropy_with_logits(
        anatomy_logits, anatomy_target, pos_weight=torch.tensor(2.0)
    ) + _soft_dice(torch.sigmoid(anatomy_logits), anatomy_target)
    return lesion + anatomy


def export_onnx(net: FlairUNet, path: Path) -> None:
    onnx_export.export(ProbabilityModel(net), path, torch.zeros(2, 1, 64, 64), "flair")


def check_onnx(net: FlairUNet, path: Path) -> float:
    """Largest difference between torch and onnxruntime on a random input."""
    x = np.random.default_rng(0).uniform(0, 2, size=(3, 1, 96, 112)).astype(np.float32)
    return onnx_export.max_difference(ProbabilityModel(net), path, x, "flair")


def train(config: TrainConfig, out: Path) -> dict[str, object]:
    torch.set_num_threads(2)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    t0 = time.monotonic()
    print(
        f"generating {config.phantoms} synthetic brains x {EXAMS_PER_PHANTOM} exams ...", flush=True
    )
    examples = build_dataset(config, Path("training-data"))
    gen_s = time.monotonic() - t0
    n_lesion_px = sum(int((e.targets & 1).sum()) for e in examples)
    n_slices = sum(e.image.shape[0] for e in examples)
    print(
        f"dataset ready in {gen_s:.0f} s: {len(examples)} exams, {n_slices} slices, "
        f"{n_lesion_px} lesion pixels",
        flush=True,
    )
    net = FlairUNet(config.widths)
    if config.init:
        net.load_state_dict(torch.load(config.init, weights_only=True))
        print(f"starting from the weights in {config.init}", flush=True)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = 50
    budget_s = max(60.0, config.max_minutes * 60 - gen_s - 45.0)

    def lr_at(step: int, progress: float) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return config.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    t_train = time.monotonic()
    running = 0.0
    steps_done = 0
    net.train()
    for step in range(config.steps):
        progress = max(step / config.steps, (time.monotonic() - t_train) / budget_s)
        if progress >= 1.0:
            print(f"time budget used after {step} steps", flush=True)
            break
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, progress)
        x, y = sample_batch(examples, rng, config.batch, config.patch)
        loss = loss_fn(net(x), y)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        value = float(loss.detach())
        running = 0.95 * running + 0.05 * value if step else value
        steps_done = step + 1
        if steps_done % 25 == 0:
            print(
                f"step {steps_done}/{config.steps} loss {running:.4f} "
                f"lr {lr_at(step, progress):.2e} {time.monotonic() - t_train:.0f} s",
                flush=True,
            )
    train_s = time.monotonic() - t_train

    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(net, out)
    diff = check_onnx(net, out)
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB), torch/onnx max diff {diff:.2e}")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    meta: dict[str, object] = {
        "model_file": out.name,
        "sha256": digest,
        "format": f"ONNX opset {onnx_export.ONNX_OPSET}",
        "input": {
            "name": "flair",
            "layout": "N,1,H,W: axial slices on the model grid (rows posterior, columns left), "
            f"H and W multiples of {net.divisor}",
            "pixel_mm": preprocess.MODEL_PIXEL_MM,
            "normalisation": "divide by the median of head voxels (> 10 % of the 99th "
            f"percentile), clip to [0, {preprocess.INTENSITY_CLIP}]",
        },
        "output": {
            "name": "probability",
            "channels": list(OUTPUT_CHANNELS),
            "meaning": "per-pixel probability of each channel (independent sigmoids)",
        },
        "architecture": {
            "type": "2-D U-Net, 2 conv3x3+BN+ReLU per level, max-pool down, transposed-conv up, "
            "sigmoid head",
            "widths": list(config.widths),
            "parameters": parameter_count(net),
            "size_divisor": net.divisor,
        },
        "training": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "steps_done": steps_done,
            "train_seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + config.phantoms - 1],
            "exams": len(examples),
            "slices": n_slices,
            "data_generation_s": round(gen_s, 1),
            "training_s": round(train_s, 1),
            "final_loss": round(running, 5),
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, 2 threads",
            "data": "synthetic brain FLAIR only (training.ms_lesion.synth)",
        },
        "torch_onnx_max_abs_diff": diff,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    torch.save(net.state_dict(), Path("training-data") / "ms_lesion_last.pt")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=SHIPPED_MODEL)
    defaults = TrainConfig()
    parser.add_argument("--phantoms", type=int, default=defaults.phantoms)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--patch", type=int, default=defaults.patch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--max-minutes", type=float, default=defaults.max_minutes)
    parser.add_argument("--init", default=defaults.init, help="state dict to start from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    Path("training-data").mkdir(exist_ok=True)
    config = TrainConfig(
        phantoms=args.phantoms,
        steps=args.steps,
        batch=args.batch,
        patch=args.patch,
        lr=args.lr,
        seed=args.seed,
        workers=args.workers,
        max_minutes=args.max_minutes,
        init=args.init,
    )
    meta = train(config, args.out)
    print(json.dumps(meta["training"], indent=2))


if __name__ == "__main__":
    main()
