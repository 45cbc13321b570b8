"""Train both stages of the nodule detector on synthetic chest CTs and export them to ONNX:
stage 1, the candidate U-Net (this module), then stage 2, the candidate classifier
(:mod:`training.lung_nodule.train_fp`). CLI, needs torch."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import multiprocessing
import os
import pickle
import platform
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

# Before torch loads OpenMP: with the default spinning wait policy, torch's 2 threads on a
# 2-core machine that also runs other jobs burn ~4x the CPU time per step (measured: 9.5 s
# instead of 2.6 s wall per U-Net step); passive waiting costs little on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage

from algorithms.lung_nodule import preprocess
from training import onnx_export
from training.lung_nodule.network import (
    DEFAULT_WIDTHS,
    NoduleUNet,
)
from training.lung_nodule.synth import SyntheticChestCT, generate_chest_ct
from training.lung_nodule.train_fp import FPConfig, train_classifier
from training.unet import ProbabilityModel, parameter_count

SHIPPED_MODEL = Path(str(resources.files("algorithms.lung_nodule").joinpath("model.onnx")))
"""Where the plugin loads its weights from: the default output (in the algorithm's package)."""

logger = logging.getLogger(__name__)

TRAIN_SEED_BASE = 100_000
"""Training volumes use seeds TRAIN_SEED_BASE + i; evaluation uses seeds far from these."""
FP_MODEL_FILE = "fp_reduction.onnx"
NODULE_LOSS_WEIGHT = 3000.0
"""Total BCE weight of one nodule's voxels (capped at MAX_VOXEL_WEIGHT per voxel), so that a
3 mm nodule counts about as much as a 15 mm one. High: stage 1 should rather propose too many
candidates (stage 2 removes false positives) than miss a nodule."""
MAX_VOXEL_WEIGHT = 400.0
DATA_VERSION = 4
"""Bump when make_example changes, to invalidate the cached training volumes."""
PIXEL_SPACING_MM = (0.6, 1.3)
"""Range of the training scans' pixel spacing (real chest CT: ~0.5-1.0 mm, up to ~1.4 mm)."""
SLICE_SPACING_MM = (0.8, 3.0)
"""Range of the training scans' slice spacing."""


@dataclass(frozen=True)
class TrainConfig:
    volumes: int = 160
    steps: int = 1300
    batch: int = 12
    patch: int = 32
    lr: float = 2e-3
    seed: int = 0
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    workers: int = 2
    mine_at: float | None = None
    """Fraction of training after which false positives on training volumes are mined as hard
    negatives; None: never (the default since stage 2 removes false positives, and stage 1
    should rather not learn to suppress nodules that touch vessels)."""
    max_minutes: float = 22.0
    """Wall-clock budget for data generation plus training (the schedule adapts)."""


@dataclass
class Example:
    """One resampled training volume, padded by half a patch on every side."""

    hu: npt.NDArray[np.int16]
    weight: npt.NDArray[np.float16]
    """0 outside nodules, the voxel's loss weight (>= 1) inside them."""
    nodules: npt.NDArray[np.float64]  # (n, 4): model-grid k, i, j, radius in voxels
    vessel_points: npt.NDArray[np.int64]
    lung_points: npt.NDArray[np.int64]
    hard_points: npt.NDArray[np.int64]


def random_training_scan(seed: int) -> SyntheticChestCT:
    """One random training scan (both stages): 100-180 mm long, 256-320 pixels square, pixel
    and slice spacing drawn from PIXEL_SPACING_MM and SLICE_SPACING_MM, 0-8 nodules."""
    rng = np.random.default_rng([seed, 99])
    pixel = float(rng.uniform(*PIXEL_SPACING_MM))
    spacing = (float(rng.uniform(*SLICE_SPACING_MM)), pixel, pixel)
    size = int(rng.integers(256, 321))
    n_slices = max(24, round(float(rng.uniform(100.0, 180.0)) / spacing[0]))
    return generate_chest_ct(
        seed,
        shape=(n_slices, size, size),
        spacing_mm=spacing,
        nodules=int(rng.integers(0, 9)),
    )


def make_example(seed: int, pad: int) -> Example:
    """Generate one random scan, resample it like the plugin does and build its targets."""
    rng = np.random.default_rng([seed, 98])
    ct = random_training_scan(seed)
    spacing = ct.spacing_mm
    box = preprocess.find_lung_box(ct.hu.astype(np.float32), spacing)
    vol, grid = preprocess.resample(ct.hu, spacing, box)
    lung, _ = preprocess.resample(ct.lung_mask.astype(np.float32), spacing, box)
    vol = np.pad(vol, pad, mode="edge")
    lung_mask = np.pad(lung, pad) > 0.5
    weight = np.zeros(vol.shape, dtype=np.float32)
    rows = []
    for nod in ct.nodules:
        centre = grid.to_model(nod.centre_voxel) + pad
        radius = nod.diameter_mm / 2 / preprocess.MODEL_SPACING_MM
        lo = np.maximum(np.floor(centre - radius - 1).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radius + 2).astype(int), np.array(vol.shape))
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        dist2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
        inside = dist2 <= max(radius, 1.0) ** 2
        # Every nodule gets about the same total loss weight, however small it is.
        w = float(np.clip(NODULE_LOSS_WEIGHT / max(int(inside.sum()), 1), 1.0, MAX_VOXEL_WEIGHT))
        view = weight[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        view[inside] = np.maximum(view[inside], w)
        rows.append([*centre, radius])
    vessel = np.argwhere((vol > -400.0) & lung_mask & (weight == 0))
    lungs = np.argwhere(lung_mask)
    return Example(
        hu=np.clip(np.rint(vol), -1024, 3071).astype(np.int16),
        weight=weight.astype(np.float16),
        nodules=np.array(rows, dtype=np.float64).reshape(-1, 4),
        vessel_points=vessel[rng.choice(len(vessel), min(400, len(vessel)), replace=False)],
        lung_points=lungs[rng.choice(len(lungs), min(400, len(lungs)), replace=False)],
        hard_points=np.zeros((0, 3), dtype=np.int64),
    )


def _make_example_job(args: tuple[int, int]) -> Example:
    return make_example(*args)


def build_dataset(config: TrainConfig, cache_dir: Path | None = None) -> list[Example]:
    """Generate the training volumes (2 processes), or load them from ``cache_dir``."""
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"lung_nodule_v{DATA_VERSION}_{config.volumes}_{config.patch}.pkl"
        if cache.exists():
            print(f"  loading cached volumes from {cache}")
            with cache.open("rb") as f:
                cached: list[Example] = pickle.load(f)
            return cached
    jobs = [(TRAIN_SEED_BASE + i, config.patch // 2) for i in range(config.volumes)]
    start = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
        examples = []
        for i, ex in enumerate(pool.imap(_make_example_job, jobs, chunksize=2)):
            examples.append(ex)
            if (i + 1) % 20 == 0:
                print(f"  generated {i + 1}/{len(jobs)} volumes, {time.monotonic() - start:.0f} s")
    if cache is not None:
        with cache.open("wb") as f:
            pickle.dump(examples, f, protocol=pickle.HIGHEST_PROTOCOL)
    return examples


def _sample_centre(
    ex: Example, rng: np.random.Generator, kind: float, patch: int
) -> npt.NDArray[np.int64]:
    half: npt.NDArray[np.int64] = np.array(ex.hu.shape, dtype=np.int64) // 2
    points: npt.NDArray[np.int64]
    if kind < 0.6 and len(ex.nodules):
        nod = ex.nodules[rng.integers(len(ex.nodules))]
        # The nodule lands anywhere in the patch but at least 4 voxels inside it.
        jitter = max(2.0, patch / 2 - 4.0 - nod[3])
        near: npt.NDArray[np.int64] = np.rint(nod[:3] + rng.uniform(-jitter, jitter, 3)).astype(
            np.int64
        )
        return near
    if kind < 0.7 and len(ex.hard_points):
        points = ex.hard_points
    elif kind < 0.85 and len(ex.vessel_points):
        points = ex.vessel_points
    elif kind < 0.95 and len(ex.lung_points):
        points = ex.lung_points
    else:
        return half
    chosen: npt.NDArray[np.int64] = points[rng.integers(len(points))]
    return chosen


def sample_batch(
    examples: list[Example], rng: np.random.Generator, batch: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    xs = np.empty((batch, 1, patch, patch, patch), dtype=np.float32)
    ws = np.empty((batch, 1, patch, patch, patch), dtype=np.float32)
    half = patch // 2
    for b in range(batch):
        ex = examples[rng.integers(len(examples))]
        centre = _sample_centre(ex, rng, float(rng.uniform()), patch)
        lo = np.clip(centre - half, 0, np.array(ex.hu.shape) - patch)
        box = tuple(slice(int(a), int(a) + patch) for a in lo)
        x = ex.hu[box].astype(np.float32)
        w = ex.weight[box].astype(np.float32)
        for axis in range(3):
            if rng.uniform() < 0.5:
                x, w = np.flip(x, axis), np.flip(w, axis)
        if rng.uniform() < 0.5:
            x, w = x.transpose(0, 2, 1), w.transpose(0, 2, 1)
        x = x * float(rng.uniform(0.97, 1.03)) + float(rng.uniform(-30.0, 30.0))
        xs[b, 0] = preprocess.normalise(x)
        ws[b, 0] = w
    return torch.from_numpy(xs), torch.from_numpy(ws)


def loss_fn(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Size-weighted BCE (small nodules count as much as big ones) plus half a batch soft Dice."""
    target = (weight > 0).float()
    voxel_w = torch.where(weight > 0, weight, torch.ones_like(weight))
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=voxel_w)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + 0.5 * dice


def _pad_to(vol: npt.NDArray[np.float32], divisor: int) -> npt.NDArray[np.float32]:
    pads = [(0, (-n) % divisor) for n in vol.shape]
    return np.pad(vol, pads, mode="edge")


def mine_hard_negatives(net: NoduleUNet, examples: list[Example], limit: int) -> int:
    """Add centres of false-positive blobs of the current model as hard negative points."""
    net.eval()
    found = 0
    with torch.no_grad():
        for ex in examples[:limit]:
            vol = _pad_to(preprocess.normalise(ex.hu), net.divisor)
            prob = torch.sigmoid(net(torch.from_numpy(vol)[None, None]))[0, 0].numpy()
            prob = prob[: ex.hu.shape[0], : ex.hu.shape[1], : ex.hu.shape[2]]
            labels, n = ndimage.label(prob > 0.3)
            if n == 0:
                continue
            truth = ex.weight > 0
            hits = np.unique(labels[truth])
            fp = [i for i in range(1, n + 1) if i not in set(hits.tolist())]
            if not fp:
                continue
            centres = ndimage.center_of_mass(prob, labels, fp)
            ex.hard_points = np.rint(np.array(centres)).astype(np.int64).reshape(-1, 3)
            found += len(fp)
    net.train()
    return found


def export_onnx(net: NoduleUNet, path: Path) -> None:
    onnx_export.export(ProbabilityModel(net), path, torch.zeros(1, 1, 32, 32, 32), "ct")


def check_onnx(net: NoduleUNet, path: Path) -> float:
    """Largest difference between torch and onnxruntime on a random input."""
    x = np.random.default_rng(0).normal(size=(1, 1, 40, 48, 56)).astype(np.float32)
    return onnx_export.max_difference(ProbabilityModel(net), path, x, "ct")


def train(config: TrainConfig, out: Path) -> dict[str, object]:
    torch.set_num_threads(2)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    t0 = time.monotonic()
    print(f"generating {config.volumes} synthetic training volumes ...", flush=True)
    examples = build_dataset(config, Path("training-data"))
    gen_s = time.monotonic() - t0
    n_nod = sum(len(e.nodules) for e in examples)
    print(f"dataset ready in {gen_s:.0f} s: {len(examples)} volumes, {n_nod} nodules", flush=True)

    net = NoduleUNet(config.widths)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = 50

    # Progress is steps done or time used, whichever is further, so that the learning rate
    # is annealed before the time limit even when the machine is busy.
    budget_s = max(60.0, config.max_minutes * 60 - gen_s - 60.0)

    def lr_at(step: int, progress: float) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return config.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    t_train = time.monotonic()
    progress = 0.0
    mined = -1
    running = 0.0
    steps_done = 0
    for step in range(config.steps):
        progress = max(step / config.steps, (time.monotonic() - t_train) / budget_s)
        if progress >= 1.0:
            print(f"time budget used after {step} steps", flush=True)
            break
        if mined < 0 and config.mine_at is not None and progress >= config.mine_at:
            mined = mine_hard_negatives(net, examples, limit=40)
            print(f"step {step}: mined {mined} false-positive blobs as hard negatives", flush=True)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, progress)
        x, w = sample_batch(examples, rng, config.batch, config.patch)
        loss = loss_fn(net(x), w)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        value = float(loss.detach())
        running = 0.95 * running + 0.05 * value if step else value
        steps_done = step + 1
        if steps_done % 25 == 0:
            elapsed = time.monotonic() - t_train
            print(
                f"step {steps_done}/{config.steps} loss {running:.4f} "
                f"lr {lr_at(step, progress):.2e} {elapsed:.0f} s",
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
            "name": "ct",
            "layout": "N,1,D,H,W (slice, row, column), any size that is a multiple of "
            f"{net.divisor}",
            "spacing_mm": preprocess.MODEL_SPACING_MM,
            "hu_window": list(preprocess.HU_WINDOW),
            "normalisation": "clip HU to hu_window, then map linearly to [-1, 1]",
        },
        "output": {"name": "probability", "meaning": "per-voxel nodule probability"},
        "architecture": {
            "type": "3-D U-Net, 2 conv3x3x3+BN+ReLU per level, max-pool down, "
            "transposed-conv up, sigmoid head",
            "widths": list(config.widths),
            "parameters": parameter_count(net),
            "size_divisor": net.divisor,
        },
        "training": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "steps_done": steps_done,
            "train_seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + config.volumes - 1],
            "nodules": n_nod,
            "hard_negatives_mined": max(mined, 0),
            "data_generation_s": round(gen_s, 1),
            "training_s": round(train_s, 1),
            "final_loss": round(running, 5),
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, 2 threads",
            "data": "synthetic chest CT only (training.lung_nodule.synth)",
        },
        "torch_onnx_max_abs_diff": diff,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    torch.save(net.state_dict(), Path("training-data") / "lung_nodule_last.pt")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=SHIPPED_MODEL)
    parser.add_argument(
        "--stage",
        choices=("all", "1", "2"),
        default="all",
        help="1: the U-Net only; 2: the candidate classifier only, on the stage-1 model at "
        "--out (a new stage 1 always needs a new stage 2); all: both (default)",
    )
    defaults = TrainConfig()
    parser.add_argument("--volumes", type=int, default=defaults.volumes)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--patch", type=int, default=defaults.patch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--max-minutes", type=float, default=defaults.max_minutes)
    fp_defaults = FPConfig()
    parser.add_argument("--fp-volumes", type=int, default=fp_defaults.volumes)
    parser.add_argument("--fp-steps", type=int, default=fp_defaults.steps)
    parser.add_argument("--fp-max-minutes", type=float, default=fp_defaults.max_minutes)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    Path("training-data").mkdir(exist_ok=True)
    started = time.monotonic()
    card = args.out.with_suffix(".json")
    if args.stage in ("all", "1"):
        config = TrainConfig(
            volumes=args.volumes,
            steps=args.steps,
            batch=args.batch,
            patch=args.patch,
            lr=args.lr,
            seed=args.seed,
            workers=args.workers,
            max_minutes=args.max_minutes,
        )
        meta = train(config, args.out)
        print(json.dumps(meta["training"], indent=2))
    else:
        meta = json.loads(card.read_text())
    if args.stage in ("all", "2"):
        fp_config = FPConfig(
            volumes=args.fp_volumes,
            steps=args.fp_steps,
            seed=args.seed,
            workers=args.workers,
            max_minutes=args.fp_max_minutes,
        )
        fp_meta = train_classifier(fp_config, args.out, args.out.with_name(FP_MODEL_FILE))
        meta["fp_reduction"] = fp_meta
        print(json.dumps(fp_meta["training"], indent=2))
    if args.stage == "all":
        meta["total_wall_clock_s"] = round(time.monotonic() - started, 1)
    meta["created"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    card.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {card}; wall clock {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
