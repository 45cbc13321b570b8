"""Train the embolus U-Net on synthetic contrast chest CTs and export it to ONNX (CLI, torch)."""

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

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage

from algorithms.pe import preprocess
from training import onnx_export
from training.pe.network import DEFAULT_WIDTHS, EmbolusUNet
from training.pe.synth import (
    PHASES,
    SyntheticContrastCT,
    generate_contrast_chest_ct,
    generator_digest,
)
from training.unet import ProbabilityModel, parameter_count

SHIPPED_MODEL = Path(str(resources.files("algorithms.pe").joinpath("model.onnx")))
"""Where the plugin loads its weights from: the default output (in the algorithm's package)."""

logger = logging.getLogger(__name__)

TRAIN_SEED_BASE = 300_000
"""Training volumes use seeds TRAIN_SEED_BASE + i; validation and test use seeds far away."""
CLOT_LOSS_WEIGHT = 300.0
"""Total BCE weight of one embolus' voxels (capped at 40 per voxel), so that a small
segmental clot counts about as much as a saddle embolus."""
VESSEL_LOSS_WEIGHT = 0.5
"""Weight of the artery and trunk BCE terms against the embolus terms."""
VESSEL_POS_WEIGHT = 3.0
"""BCE weight of artery and trunk voxels (rare in a patch) against the background."""
CLOT_FRACTION = 0.3
"""A model voxel is embolus when at least this fraction of it is (small clots survive)."""
ARTERY, TRUNK = 1, 2
"""Bits of ``Example.vessels``."""
DATA_VERSION = 2
"""Bump when make_example changes, to invalidate the cached training volumes."""
DATA_PAD = 20
"""Voxels of edge padding around each training volume (at least half the largest patch)."""
HEAD_BIAS_INIT = (-4.0, -2.0, -4.0)
"""Initial output biases (embolus, artery, trunk): the logit of a rare-foreground prior. The
head reads non-negative (ReLU) features, so with a zero bias the network can settle on
"foreground = no feature active", which caps that output at sigmoid(bias) (a 1500-step run
ended with the embolus output capped at 0.37 and the trunk at 0.50). Starting from a
background prior, foreground has to be signalled by active features."""


@dataclass(frozen=True)
class TrainConfig:
    volumes: int = 120
    steps: int = 2000
    batch: int = 4
    patch: int = 40
    lr: float = 2e-3
    seed: int = 0
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    workers: int = 2
    mine_at: float = 0.45
    """Fraction of training after which false positives on training volumes are mined."""
    max_minutes: float = 24.0
    """Wall-clock budget for data generation plus training (the schedule adapts)."""
    init: str = ""
    """State dict to start from (continue a run that a busy machine cut short), or ""."""


@dataclass
class Example:
    """One resampled training volume, padded by half a patch on every side."""

    hu: npt.NDArray[np.int16]
    clots: npt.NDArray[np.uint8]
    """0 outside emboli, the embolus' number inside."""
    clot_weight: npt.NDArray[np.float32]
    """Per embolus number: the BCE weight of each of its voxels."""
    vessels: npt.NDArray[np.uint8]
    """Bit ``ARTERY``: pulmonary artery lumen (trunk to segmental); bit ``TRUNK``: trunk."""
    clot_points: npt.NDArray[np.int64]
    artery_points: npt.NDArray[np.int64]
    central_points: npt.NDArray[np.int64]
    lung_points: npt.NDArray[np.int64]
    hard_points: npt.NDArray[np.int64]
    phase: str


def _pick(points: npt.NDArray[np.int64], rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
    if len(points) <= n:
        return points
    chosen: npt.NDArray[np.int64] = points[rng.choice(len(points), n, replace=False)]
    return chosen


def draw_training_scan(
    seed: int, rng: np.random.Generator
) -> tuple[SyntheticContrastCT, tuple[float, float, float]]:
    """One random training scan as the embolus network is trained on (1.1-1.7 mm pixels,
    1-2.5 mm slices, CTPA / venous / unenhanced, 0-4 emboli; drawn with ``rng``) and its
    spacing."""
    pixel = float(rng.uniform(1.1, 1.7))
    spacing = (float(rng.uniform(1.0, 2.5)), pixel, pixel)
    size = round(float(rng.uniform(290.0, 340.0)) / pixel)
    n_slices = round(float(rng.uniform(200.0, 270.0)) / spacing[0])
    phase = PHASES[int(rng.choice(3, p=[0.5, 0.4, 0.1]))]
    n_clots = 0 if phase == "non_contrast" or rng.uniform() < 0.3 else int(rng.integers(1, 5))
    ct = generate_contrast_chest_ct(
        seed, shape=(n_slices, size, size), spacing_mm=spacing, phase=phase, clots=n_clots
    )
    return ct, spacing


def make_example(seed: int, pad: int) -> Example:
    """Generate one random scan, resample it like the plugin does and build its targets."""
    rng = np.random.default_rng([seed, 99])
    ct, spacing = draw_training_scan(seed, rng)
    box = preprocess.find_lung_box(ct.hu.astype(np.float32), spacing)
    target_mm = preprocess.MODEL_SPACING_MM

    def fraction(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
        return preprocess.resample(mask.astype(np.float32), spacing, box, target_mm)[0]

    vol, grid = preprocess.resample(ct.hu, spacing, box, target_mm)
    clot_target = fraction(ct.clot_labels > 0) >= CLOT_FRACTION
    instances = preprocess.resample_labels(ct.clot_labels, grid)
    instances = np.where(clot_target, ndimage.grey_dilation(instances, size=3), 0)
    clot_target &= instances > 0
    vessels = (fraction(ct.artery_classes > 0) >= 0.5).astype(np.uint8) * ARTERY
    vessels |= (fraction(ct.artery_classes == 1) >= 0.5).astype(np.uint8) * TRUNK
    vessels[clot_target] |= ARTERY
    vol = np.pad(vol, pad, mode="edge")
    clots = np.pad(instances.astype(np.uint8), pad)
    vessels = np.pad(vessels, pad)
    counts = np.bincount(clots.ravel(), minlength=256).astype(np.float64)
    weight = np.clip(CLOT_LOSS_WEIGHT / np.maximum(counts, 1.0), 1.0, 40.0).astype(np.float32)
    weight[0] = 1.0
    return Example(
        hu=np.clip(np.rint(vol), -1024, 3071).astype(np.int16),
        clots=clots,
        clot_weight=weight,
        vessels=vessels,
        clot_points=_pick(np.argwhere(clots > 0), rng, 300),
        artery_points=_pick(np.argwhere((vessels & ARTERY) > 0), rng, 400),
        central_points=_pick(np.argwhere((vessels & TRUNK) > 0), rng, 100),
        lung_points=_pick(np.argwhere(vol < -400.0), rng, 300),
        hard_points=np.zeros((0, 3), dtype=np.int64),
        phase=ct.phase,
    )


def _make_example_job(args: tuple[int, int]) -> Example:
    return make_example(*args)


def build_dataset(config: TrainConfig, cache_dir: Path | None = None) -> list[Example]:
    """Generate the training volumes (``workers`` processes), or load them from ``cache_dir``."""
    cache = None
    if cache_dir is not None:
        # The generator's source is part of the key: a refactored generator must not reuse
        # volumes (and labels) cached by an older one.
        key = generator_digest()[:10]
        cache = cache_dir / f"pe_v{DATA_VERSION}_{key}_{config.volumes}_{2 * DATA_PAD}.pkl"
        if cache.exists():
            print(f"  loading cached volumes from {cache}", flush=True)
            with cache.open("rb") as f:
                cached: list[Example] = pickle.load(f)
            return cached
    jobs = [(TRAIN_SEED_BASE + i, DATA_PAD) for i in range(config.volumes)]
    start = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
        examples = []
        for i, ex in enumerate(pool.imap(_make_example_job, jobs, chunksize=2)):
            examples.append(ex)
            if (i + 1) % 10 == 0:
                print(
                    f"  generated {i + 1}/{len(jobs)} volumes, {time.monotonic() - start:.0f} s",
                    flush=True,
                )
    if cache is not None:
        with cache.open("wb") as f:
            pickle.dump(examples, f, protocol=pickle.HIGHEST_PROTOCOL)
    return examples


RANDOM_CENTRE_FRACTION = 0.15
"""Share of patches centred anywhere in the volume. Without them the upper abdomen under the
diaphragm was almost never seen, and a model trained only on patches at emboli, arteries and
lungs called it pulmonary trunk (larger than the real trunk, so the contrast check failed)."""


def _sample_centre(ex: Example, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    if rng.uniform() < RANDOM_CENTRE_FRACTION:
        inner = np.array(ex.hu.shape, dtype=np.int64) - 2 * DATA_PAD
        anywhere: npt.NDArray[np.int64] = DATA_PAD + rng.integers(0, inner)
        return anywhere
    kind = float(rng.uniform())
    choices = (
        (0.55, ex.clot_points),
        (0.7, ex.hard_points),
        (0.85, ex.artery_points),
        (0.95, ex.central_points),
        (1.0, ex.lung_points),
    )
    for upper, points in choices:
        if kind < upper and len(points):
            chosen: npt.NDArray[np.int64] = points[rng.integers(len(points))]
            jitter = rng.integers(-12, 13, size=3)
            return chosen + jitter
    half: npt.NDArray[np.int64] = np.array(ex.hu.shape, dtype=np.int64) // 2
    return half


def sample_batch(
    examples: list[Example], rng: np.random.Generator, batch: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input patches, targets (embolus, artery, trunk) and embolus voxel weights."""
    xs = np.empty((batch, 2, patch, patch, patch), dtype=np.float32)
    ts = np.empty((batch, 3, patch, patch, patch), dtype=np.float32)
    ws = np.empty((batch, 1, patch, patch, patch), dtype=np.float32)
    half = patch // 2
    for b in range(batch):
        ex = examples[rng.integers(len(examples))]
        centre = _sample_centre(ex, rng)
        lo = np.clip(centre - half, 0, np.array(ex.hu.shape) - patch)
        box = tuple(slice(int(a), int(a) + patch) for a in lo)
        x = ex.hu[box].astype(np.float32)
        x = x * float(rng.uniform(0.95, 1.05)) + float(rng.uniform(-20.0, 20.0))
        if rng.uniform() < 0.3:
            x += rng.normal(0.0, float(rng.uniform(3.0, 12.0)), x.shape).astype(np.float32)
        clots, vessels = ex.clots[box], ex.vessels[box]
        xs[b] = preprocess.normalise(x)
        ts[b, 0] = clots > 0
        ts[b, 1] = (vessels & ARTERY) > 0
        ts[b, 2] = (vessels & TRUNK) > 0
        ws[b, 0] = ex.clot_weight[clots]
    return torch.from_numpy(xs), torch.from_numpy(ts), torch.from_numpy(ws)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Size-weighted BCE plus soft Dice on the embolus channel, BCE on artery and trunk."""
    clot_logits, clot = logits[:, :1], target[:, :1]
    bce = F.binary_cross_entropy_with_logits(clot_logits, clot, weight=weight)
    prob = torch.sigmoid(clot_logits)
    inter = (prob * clot).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + clot.sum() + 1.0)
    pos_weight = torch.full((2, 1, 1, 1), VESSEL_POS_WEIGHT, dtype=logits.dtype)
    vessels = F.binary_cross_entropy_with_logits(
        logits[:, 1:], target[:, 1:], pos_weight=pos_weight
    )
    return bce + 0.5 * dice + VESSEL_LOSS_WEIGHT * vessels


def mine_hard_negatives(
    net: EmbolusUNet, examples: list[Example], rng: np.random.Generator, patches: int, patch: int
) -> int:
    """Run the current model on patches at arteries and trunks; centres of embolus blobs away
    from true emboli become sampling points of their volume."""
    net.eval()
    found = 0
    half = patch // 2
    with torch.no_grad():
        for _ in range(patches // 8):
            chosen = []
            for _b in range(8):
                i = int(rng.integers(len(examples)))
                ex = examples[i]
                points = ex.artery_points if rng.uniform() < 0.7 else ex.central_points
                if not len(points):
                    points = ex.lung_points
                centre = points[rng.integers(len(points))] + rng.integers(-8, 9, size=3)
                lo = np.clip(centre - half, 0, np.array(ex.hu.shape) - patch)
                chosen.append((i, lo))
            x = np.stack(
                [
                    preprocess.normalise(
                        examples[i].hu[tuple(slice(int(a), int(a) + patch) for a in lo)]
                    )
                    for i, lo in chosen
                ]
            )
            prob = torch.sigmoid(net(torch.from_numpy(x))[:, 0]).numpy()
            for (i, lo), p in zip(chosen, prob, strict=True):
                ex = examples[i]
                box = tuple(slice(int(a), int(a) + patch) for a in lo)
                near_clot = ndimage.binary_dilation(ex.clots[box] > 0, iterations=3)
                labels, n = ndimage.label((p > 0.3) & ~near_clot)
                if n == 0:
                    continue
                centres = np.rint(np.array(ndimage.center_of_mass(p, labels, range(1, n + 1))))
                points = centres.astype(np.int64).reshape(-1, 3) + lo
                ex.hard_points = np.concatenate([ex.hard_points, points])
                found += n
    net.train()
    return found


def export_onnx(net: EmbolusUNet, path: Path) -> None:
    onnx_export.export(ProbabilityModel(net), path, torch.zeros(1, 2, 32, 32, 32), "ct")


def check_onnx(net: EmbolusUNet, path: Path) -> float:
    """Largest difference between torch and onnxruntime on a random input."""
    x = np.random.default_rng(0).normal(size=(1, 2, 40, 48, 56)).astype(np.float32)
    return onnx_export.max_difference(ProbabilityModel(net), path, x, "ct")


def train(config: TrainConfig, out: Path) -> dict[str, object]:
    torch.set_num_threads(2)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    t0 = time.monotonic()
    print(f"generating {config.volumes} synthetic training volumes ...", flush=True)
    examples = build_dataset(config, Path("training-data"))
    gen_s = time.monotonic() - t0
    n_clots = sum(int(e.clots.max()) for e in examples)
    phases = {p: sum(e.phase == p for e in examples) for p in PHASES}
    print(
        f"dataset ready in {gen_s:.0f} s: {len(examples)} volumes {phases}, {n_clots} emboli",
        flush=True,
    )

    net = EmbolusUNet(config.widths)
    assert net.head.bias is not None
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor(HEAD_BIAS_INIT))
    if config.init:
        net.load_state_dict(torch.load(config.init, weights_only=True))
        print(f"starting from {config.init}", flush=True)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = 50
    # Progress is steps done or time used, whichever is further, so that the learning rate
    # is annealed before the time limit even when the machine is busy.
    budget_s = max(60.0, config.max_minutes * 60 - gen_s - 90.0)

    def lr_at(step: int, progress: float) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return config.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    t_train = time.monotonic()
    mined = -1
    running = 0.0
    steps_done = 0
    for step in range(config.steps):
        progress = max(step / config.steps, (time.monotonic() - t_train) / budget_s)
        if progress >= 1.0:
            print(f"time budget used after {step} steps", flush=True)
            break
        if mined < 0 and progress >= config.mine_at:
            mined = mine_hard_negatives(net, examples, rng, 160, config.patch)
            print(f"step {step}: mined {mined} false-positive blobs as hard negatives", flush=True)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, progress)
        x, target, weight = sample_batch(examples, rng, config.batch, config.patch)
        loss = loss_fn(net(x), target, weight)
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
    meta = model_card(config, net, out, diff, steps_done, gen_s, train_s, running, mined, n_clots)
    earlier = Path(config.init).with_suffix(".json") if config.init else None
    if earlier is not None and earlier.exists():
        training = meta["training"]
        assert isinstance(training, dict)
        training["continued_from"] = json.loads(earlier.read_text())["training"]
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    torch.save(net.state_dict(), Path("training-data") / f"{out.stem}_pe_last.pt")
    return meta


def model_card(
    config: TrainConfig,
    net: EmbolusUNet,
    out: Path,
    diff: float,
    steps_done: int,
    gen_s: float,
    train_s: float,
    final_loss: float,
    mined: int,
    n_clots: int,
) -> dict[str, object]:
    """The ``model.json`` written beside the model (the operating point comes later, from
    ``evaluate --split validation --write-operating-point``)."""
    return {
        "model_file": out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "format": f"ONNX opset {onnx_export.ONNX_OPSET}",
        "input": {
            "name": "ct",
            "layout": "N,2,D,H,W (slice, row, column), any size that is a multiple of "
            f"{net.divisor}",
            "spacing_mm": preprocess.MODEL_SPACING_MM,
            "windows": [list(preprocess.LUNG_WINDOW), list(preprocess.VASCULAR_WINDOW)],
            "normalisation": "channel c: clip HU to windows[c], then map linearly to [-1, 1]",
        },
        "output": {
            "name": "probability",
            "channels": [
                "embolus probability",
                "pulmonary artery lumen probability (trunk to segmental, emboli included)",
                "pulmonary trunk probability",
            ],
        },
        "architecture": {
            "type": "3-D U-Net, 2 conv3x3x3+BN+ReLU per level, max-pool down, "
            "transposed-conv up, three sigmoid outputs",
            "widths": list(config.widths),
            "parameters": parameter_count(net),
            "size_divisor": net.divisor,
        },
        "training": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "steps_done": steps_done,
            "train_seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + config.volumes - 1],
            "emboli": n_clots,
            "hard_negatives_mined": max(mined, 0),
            "data_generation_s": round(gen_s, 1),
            "training_s": round(train_s, 1),
            "final_loss": round(final_loss, 5),
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, 2 threads",
            "data": "synthetic contrast chest CT only (training.pe.synth)",
        },
        "torch_onnx_max_abs_diff": diff,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=SHIPPED_MODEL)
    defaults = TrainConfig()
    parser.add_argument("--volumes", type=int, default=defaults.volumes)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--patch", type=int, default=defaults.patch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--max-minutes", type=float, default=defaults.max_minutes)
    parser.add_argument("--init", default="", help="state dict to start from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    Path("training-data").mkdir(exist_ok=True)
    config = TrainConfig(
        volumes=args.volumes,
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
