"""Train the fracture detector on synthetic radiographs, pick its operating point on
validation seeds and export it to ONNX (CLI, needs torch)."""

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
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage

from algorithms.fracture import pipeline, postprocess, preprocess
from algorithms.fracture.inference import INPUT_NAME, OUTPUT_NAME
from training import onnx_export
from training.fracture.evaluate import roc_auc
from training.fracture.network import (
    DEFAULT_WIDTHS,
    OUTPUT_STRIDE,
    ExportModel,
    FractureNet,
)
from training.fracture.synth import generate_radiograph
from training.unet import parameter_count

SHIPPED_MODEL = Path(str(resources.files("algorithms.fracture").joinpath("model.onnx")))
"""Where the plugin loads its weights from: the default output (in the algorithm's package)."""

logger = logging.getLogger(__name__)

TRAIN_SEED_BASE = 1_000_000
"""Training images use seeds TRAIN_SEED_BASE + i."""
VALIDATION_SEED_BASE = 2_000_000
"""Operating-point images use seeds VALIDATION_SEED_BASE + i; evaluation uses 9_000_000 + i."""
DATA_VERSION = 6
"""Bump when the generator or make_example changes, to invalidate cached training images."""
TARGET_SENSITIVITY = 0.90
"""The operating point is the highest threshold whose validation sensitivity reaches this."""
POSITIVE_WEIGHT = 10.0
"""BCE weight of fracture-line cells (they are a few dozen of the ~1600 cells of a crop)."""


@dataclass(frozen=True)
class TrainConfig:
    images: int = 3000
    crop: int = 128
    batch: int = 24
    steps: int = 12000
    lr: float = 3e-3
    seed: int = 0
    widths: tuple[int, int, int, int] = DEFAULT_WIDTHS
    workers: int = 2
    positive_crop: float = 0.5
    """Fraction of crops from fracture images placed so that a fracture is inside."""
    bright_crop: float = 0.7
    """Of the other crops, the fraction centred on a bright pixel (bone, marker, text)
    rather than anywhere (mostly air, collimation and padding)."""
    hard_crop: float = 0.5
    """Of the other crops, the fraction centred on a mined false positive, when there is one."""
    mine_at: tuple[float, ...] = (0.15, 0.3, 0.45, 0.6, 0.75)
    """Training progress at which false positives on the training images are mined."""
    validation_images: int = 400
    max_minutes: float = 30.0
    """Wall-clock budget for data generation, training and calibration together."""
    threads: int = 1
    """torch threads. One is the default: on a shared 2-core machine, two threads that wait
    for each other at every convolution run up to 10 times slower than one."""
    mine_images: int = 250
    """Training images searched for false positives at each mining round."""
    init: str = ""
    """A state dict (.pt) of an earlier run to start from instead of random weights."""


@dataclass
class Example:
    """One training radiograph, windowed and letterboxed like the plugin does it."""

    image: npt.NDArray[np.uint8]
    """(S, S) network input quantised to 0..255."""
    boxes: npt.NDArray[np.float32]
    """(n, 4) fracture boxes (row_min, col_min, row_max, col_max) in network input pixels."""
    line: npt.NDArray[np.float32]
    """(m, 2) (row, column) points along every fracture line, in network input pixels."""
    bright: npt.NDArray[np.int16]
    """(k, 2) random pixels among the brightest quarter of the image (crop centres)."""
    hard: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros((0, 2), np.int16))
    """(k, 2) pixels where the model in training saw a fracture that is not there."""


def make_example(seed: int, size: int = preprocess.WORKING_SIZE) -> Example:
    """Generate radiograph ``seed`` (fractured for even offsets) and prepare it."""
    radiograph = generate_radiograph(seed, fracture=seed % 2 == 0)
    canvas, box, _ = preprocess.prepare(
        radiograph.pixels, radiograph.photometric_interpretation, size
    )
    rows = []
    points = []
    for truth in radiograph.fractures:
        r0, c0 = box.to_model(truth.box[0], truth.box[1])
        r1, c1 = box.to_model(truth.box[2], truth.box[3])
        rows.append([r0, c0, r1, c1])
        points += [box.to_model(r, c) for r, c in truth.line]
    image = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
    candidates = np.argwhere(image >= np.percentile(image[image > 0], 75))
    rng = np.random.default_rng([seed, 5])
    chosen = rng.choice(len(candidates), size=min(300, len(candidates)), replace=False)
    return Example(
        image=image,
        boxes=np.array(rows, dtype=np.float32).reshape(-1, 4),
        line=np.array(points, dtype=np.float32).reshape(-1, 2),
        bright=candidates[chosen].astype(np.int16),
    )


def build_dataset(config: TrainConfig, cache_dir: Path | None) -> list[Example]:
    """Generate the training images on ``config.workers`` processes, or load the cache."""
    cache = None
    if cache_dir is not None:
        name = f"fracture_v{DATA_VERSION}_{config.images}_{preprocess.WORKING_SIZE}.pkl"
        cache = cache_dir / name
        if cache.exists():
            print(f"  loading cached images from {cache}", flush=True)
            with cache.open("rb") as f:
                cached: list[Example] = pickle.load(f)
            return cached
    seeds = [TRAIN_SEED_BASE + i for i in range(config.images)]
    start = time.monotonic()
    examples: list[Example] = []
    with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
        for i, ex in enumerate(pool.imap(make_example, seeds, chunksize=16)):
            examples.append(ex)
            if (i + 1) % 500 == 0:
                print(
                    f"  generated {i + 1}/{len(seeds)}, {time.monotonic() - start:.0f} s",
                    flush=True,
                )
    if cache is not None:
        with cache.open("wb") as f:
            pickle.dump(examples, f, protocol=pickle.HIGHEST_PROTOCOL)
    return examples


def _crop_origin(ex: Example, rng: np.random.Generator, config: TrainConfig) -> tuple[int, int]:
    """Top-left corner of a training crop: around a fracture, on something bright, or
    anywhere."""
    crop = config.crop
    top = ex.image.shape[0] - crop
    margin = crop // 5
    if len(ex.boxes) and rng.uniform() < config.positive_crop:
        box = ex.boxes[rng.integers(len(ex.boxes))]
        centre_r, centre_c = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    elif len(ex.hard) and rng.uniform() < config.hard_crop:
        centre_r, centre_c = (float(v) for v in ex.hard[rng.integers(len(ex.hard))])
    elif len(ex.bright) and rng.uniform() < config.bright_crop:
        centre_r, centre_c = (float(v) for v in ex.bright[rng.integers(len(ex.bright))])
    else:
        return int(rng.integers(0, top + 1)), int(rng.integers(0, top + 1))
    r = int(centre_r - rng.uniform(margin, crop - margin))
    c = int(centre_c - rng.uniform(margin, crop - margin))
    return int(np.clip(r, 0, top)), int(np.clip(c, 0, top))


def targets(line: npt.NDArray[np.float32], crop: int) -> npt.NDArray[np.float32]:
    """The heatmap target of a ``crop`` x ``crop`` input: 1 in the cells the fracture line
    points fall in and their 8 neighbours, 0 elsewhere."""
    grid = crop // OUTPUT_STRIDE
    heat = np.zeros((grid + 2, grid + 2), dtype=np.float32)
    cells = np.floor((line + 0.5) / OUTPUT_STRIDE).astype(np.int64)
    inside = np.all((cells >= -1) & (cells <= grid), axis=1)
    for i, j in cells[inside] + 1:
        heat[i - 1 : i + 2, j - 1 : j + 2] = 1.0
    return np.ascontiguousarray(heat[1:-1, 1:-1])


def _augment(
    image: npt.NDArray[np.float32], line: npt.NDArray[np.float32], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    n = image.shape[0] - 1
    line = line.copy()
    if rng.uniform() < 0.5:
        image = image[::-1]
        line[:, 0] = n - line[:, 0]
    if rng.uniform() < 0.5:
        image = image[:, ::-1]
        line[:, 1] = n - line[:, 1]
    if rng.uniform() < 0.5:
        image = image.T
        line = line[:, ::-1]
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    image = np.clip(image, 0.0, 1.0) ** np.float32(gamma)
    image = image * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.05, 0.05))
    if rng.uniform() < 0.3:
        image = image + rng.normal(0.0, rng.uniform(0.005, 0.02), image.shape).astype(np.float32)
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32), line


def sample_batch(
    examples: list[Example], rng: np.random.Generator, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    crop, grid = config.crop, config.crop // OUTPUT_STRIDE
    xs = np.empty((config.batch, 1, crop, crop), dtype=np.float32)
    heats = np.empty((config.batch, 1, grid, grid), dtype=np.float32)
    for b in range(config.batch):
        ex = examples[rng.integers(len(examples))]
        r, c = _crop_origin(ex, rng, config)
        # Dither undoes the uint8 quantisation of the cache.
        dither = rng.uniform(-0.5, 0.5, (crop, crop)).astype(np.float32)
        image = (ex.image[r : r + crop, c : c + crop].astype(np.float32) + dither) / 255.0
        line = ex.line - np.array([r, c], dtype=np.float32)
        image, line = _augment(image, line, rng)
        xs[b, 0] = image
        heats[b, 0] = targets(line, crop)
    # channels_last: PyTorch's CPU convolutions with few channels are several times faster
    # in this layout (the NCHW path of the 4-channel stem is pathologically slow).
    return (
        torch.from_numpy(xs).contiguous(memory_format=torch.channels_last),
        torch.from_numpy(heats),
    )


def loss_fn(logits: torch.Tensor, heat: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE with fracture cells weighted POSITIVE_WEIGHT, plus half a batch soft Dice."""
    weight = torch.where(heat > 0, torch.full_like(heat, POSITIVE_WEIGHT), torch.ones_like(heat))
    bce = F.binary_cross_entropy_with_logits(logits, heat, weight=weight)
    prob = torch.sigmoid(logits)
    inter = (prob * heat).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + heat.sum() + 1.0)
    parts = {"bce": float(bce.detach()), "dice": float(dice.detach())}
    return bce + 0.5 * dice, parts


def mine_false_positives(net: FractureNet, examples: list[Example], limit: int) -> int:
    """Run the model on up to ``limit`` training images; remember its peaks (>= 0.3) that
    are not within 3 cells of a fracture line as hard crop centres. Returns how many."""
    net.eval()
    found = 0
    with torch.no_grad():
        for ex in examples[:limit]:
            x = torch.from_numpy(ex.image.astype(np.float32) / 255.0)[None, None]
            x = x.contiguous(memory_format=torch.channels_last)
            heat = torch.sigmoid(net(x))[0, 0].numpy()
            truth = targets(ex.line, ex.image.shape[0])
            near = ndimage.binary_dilation(truth > 0, iterations=2)
            peaks = (heat == ndimage.maximum_filter(heat, size=5)) & (heat >= 0.3) & ~near
            cells = np.argwhere(peaks)
            ex.hard = (cells * OUTPUT_STRIDE + OUTPUT_STRIDE // 2).astype(np.int16)
            found += len(cells)
    net.train()
    return found


def with_memory_format(net: FractureNet, memory_format: torch.memory_format) -> FractureNet:
    """``net.to(memory_format=...)``: documented, but missing from torch's type stubs."""
    moved: FractureNet = net.to(memory_format=memory_format)  # type: ignore[call-overload]
    return moved


def validation_max_logits(
    net: FractureNet, config: TrainConfig
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per validation image: the largest heatmap logit on the radiograph (the study score
    before the sigmoid) and whether it has a fracture."""
    net.eval()
    scores, labels = [], []
    with torch.no_grad():
        for i in range(config.validation_images):
            radiograph = generate_radiograph(VALIDATION_SEED_BASE + i, fracture=i % 2 == 0)
            canvas, letterbox, _ = preprocess.prepare(
                radiograph.pixels, radiograph.photometric_interpretation
            )
            logits = net(torch.from_numpy(canvas)[None, None])[0, 0].numpy()
            valid = postprocess.valid_cells(letterbox, (logits.shape[0], logits.shape[1]))
            scores.append(float(logits[valid].max()))
            labels.append(1.0 if radiograph.fractures else 0.0)
    return np.asarray(scores), np.asarray(labels)


def fit_platt(
    scores: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """(scale, shift) minimising the log loss of sigmoid(scale * score + shift): a grid over
    scale (0.001-10, logarithmic) and shift (-30 to 30), robust where Newton's method
    diverges on nearly separable scores."""
    shifts = np.linspace(-30.0, 30.0, 1201)
    best = (np.inf, 1.0, 0.0)
    sign = 2.0 * labels - 1.0  # +1 fracture, -1 none
    for scale in np.geomspace(1e-3, 10.0, 400):
        margin = sign[None, :] * (scale * scores[None, :] + shifts[:, None])
        loss = np.logaddexp(0.0, -margin).sum(axis=1)
        i = int(np.argmin(loss))
        if loss[i] < best[0]:
            best = (float(loss[i]), float(scale), float(shifts[i]))
    return best[1], best[2]


def export_onnx(net: FractureNet, path: Path, scale: float = 1.0, shift: float = 0.0) -> None:
    net = with_memory_format(net, torch.contiguous_format)
    size = preprocess.WORKING_SIZE
    model = ExportModel(net, scale, shift)
    onnx_export.export(model, path, torch.zeros(1, 1, size, size), INPUT_NAME, OUTPUT_NAME)


def check_onnx(net: FractureNet, path: Path, scale: float = 1.0, shift: float = 0.0) -> float:
    """Largest difference between torch and onnxruntime outputs on a random input."""
    x = np.random.default_rng(0).uniform(size=(1, 1, 320, 256)).astype(np.float32)
    return onnx_export.max_difference(ExportModel(net, scale, shift), path, x, INPUT_NAME)


def choose_operating_point(positive: list[float], negative: list[float], target: float) -> float:
    """The highest threshold at which at least ``target`` of the positives are called."""
    ranked = sorted(positive, reverse=True)
    needed = max(1, math.ceil(target * len(ranked)))
    threshold = ranked[needed - 1]
    return float(np.clip(threshold, 1e-3, 0.99))


def calibrate(model_path: Path, config: TrainConfig) -> dict[str, object]:
    """Run the exported model like the plugin on validation seeds; pick the operating point."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    positive: list[float] = []
    negative: list[float] = []
    for i in range(config.validation_images):
        seed = VALIDATION_SEED_BASE + i
        radiograph = generate_radiograph(seed, fracture=i % 2 == 0)
        result = pipeline.assess(
            session, radiograph.pixels, radiograph.photometric_interpretation, 1.0
        )
        (positive if radiograph.fractures else negative).append(result.probability)
    threshold = choose_operating_point(positive, negative, TARGET_SENSITIVITY)
    sensitivity = float(np.mean(np.asarray(positive) >= threshold))
    specificity = float(np.mean(np.asarray(negative) < threshold))
    return {
        "threshold": round(threshold, 4),
        "rule": f"highest threshold with validation sensitivity >= {TARGET_SENSITIVITY}",
        "validation_seeds": [
            VALIDATION_SEED_BASE,
            VALIDATION_SEED_BASE + config.validation_images - 1,
        ],
        "validation_auc": round(roc_auc(positive, negative), 4),
        "validation_sensitivity": round(sensitivity, 4),
        "validation_specificity": round(specificity, 4),
    }


def train(config: TrainConfig, out: Path) -> dict[str, object]:
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    t0 = time.monotonic()
    print(f"generating {config.images} synthetic radiographs ...", flush=True)
    examples = build_dataset(config, Path("training-data"))
    gen_s = time.monotonic() - t0
    n_fractures = sum(len(e.boxes) for e in examples)
    print(
        f"dataset ready in {gen_s:.0f} s: {len(examples)} images, {n_fractures} fractures",
        flush=True,
    )

    net = FractureNet(config.widths)
    if config.init:
        net.load_state_dict(torch.load(config.init, weights_only=True))
        print(f"starting from {config.init}", flush=True)
    net = with_memory_format(net, torch.channels_last)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = 50
    # Leave time for export and calibration (about 2 s per validation image on a busy CPU).
    budget_s = max(60.0, config.max_minutes * 60 - gen_s - 60.0 - 0.3 * config.validation_images)

    def lr_at(step: int, progress: float) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return config.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    t_train = time.monotonic()
    running: dict[str, float] = {}
    steps_done = 0
    mined: list[int] = []
    for step in range(config.steps):
        progress = max(step / config.steps, (time.monotonic() - t_train) / budget_s)
        if progress >= 1.0:
            print(f"time budget used after {step} steps", flush=True)
            break
        if len(mined) < len(config.mine_at) and progress >= config.mine_at[len(mined)]:
            order = rng.permutation(len(examples))
            mined.append(
                mine_false_positives(net, [examples[i] for i in order], limit=config.mine_images)
            )
            print(f"step {step}: mined {mined[-1]} false-positive peaks", flush=True)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, progress)
        x, heat = sample_batch(examples, rng, config)
        loss, parts = loss_fn(net(x), heat)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        parts["loss"] = float(loss.detach())
        for key, value in parts.items():
            running[key] = 0.95 * running[key] + 0.05 * value if step else value
        steps_done = step + 1
        if steps_done % 25 == 0:
            elapsed = time.monotonic() - t_train
            summary = " ".join(f"{k} {v:.4f}" for k, v in running.items())
            print(
                f"step {steps_done}/{config.steps} {summary} lr {lr_at(step, progress):.2e} "
                f"{elapsed:.0f} s",
                flush=True,
            )
    train_s = time.monotonic() - t_train
    net = with_memory_format(net, torch.contiguous_format)

    training: dict[str, object] = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "steps_done": steps_done,
        "train_seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + config.images - 1],
        "fractures": n_fractures,
        "false_positives_mined": mined,
        "data_generation_s": round(gen_s, 1),
        "training_s": round(train_s, 1),
        "final_loss": {k: round(v, 5) for k, v in running.items()},
        "torch": torch.__version__,
        "machine": f"{platform.machine()} CPU, {config.threads} torch thread(s)",
        "data": "synthetic radiographs of long bones only (training.fracture.synth)",
    }
    meta = finish(net, config, out, training)
    training["total_s"] = round(time.monotonic() - t0, 1)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    torch.save(net.state_dict(), Path("training-data") / "fracture_last.pt")
    return meta


def finish(
    net: FractureNet, config: TrainConfig, out: Path, training: dict[str, object]
) -> dict[str, object]:
    """Fit the output scaling, export, check, choose the operating point; the model card."""
    t_cal = time.monotonic()
    scores, labels = validation_max_logits(net, config)
    scale, shift = fit_platt(scores, labels)
    print(f"output scaling: sigmoid({scale:.4f} * logit + {shift:.4f})", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(net, out, scale, shift)
    diff = check_onnx(net, out, scale, shift)
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB), torch/onnx max diff {diff:.2e}")
    operating_point = calibrate(out, config)
    training["calibration_s"] = round(time.monotonic() - t_cal, 1)
    print(f"operating point: {operating_point}", flush=True)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    meta: dict[str, object] = {
        "model_file": out.name,
        "sha256": digest,
        "format": f"ONNX opset {onnx_export.ONNX_OPSET}",
        "input": {
            "name": INPUT_NAME,
            "layout": "N,1,H,W; the plugin feeds one letterboxed "
            f"{preprocess.WORKING_SIZE}x{preprocess.WORKING_SIZE} image (any multiple of "
            f"{net.divisor} works)",
            "working_size": preprocess.WORKING_SIZE,
            "window_percentiles": list(preprocess.WINDOW_PERCENTILES),
            "normalisation": "MONOCHROME1 inverted (bone bright); values at the window "
            "percentiles map to 0 and 1, clipped; long side resized to working_size "
            "(area average, then linear); short side padded with 0",
        },
        "output": {
            "name": OUTPUT_NAME,
            "meaning": "(N,1,H/4,W/4) probability that a fracture line passes through the "
            "4x4-pixel cell or its neighbours; the study probability is its maximum",
            "scaling": {
                "scale": round(scale, 6),
                "shift": round(shift, 6),
                "rule": "sigmoid(scale * logit + shift), Platt scaling of the study-level "
                "maximum logit fitted on the validation seeds",
            },
        },
        "operating_point": operating_point,
        "architecture": {
            "type": "2-D heatmap network: pixel-unshuffle stem, strided and dilated "
            "conv+BN+ReLU encoder to 1/16, U-Net-like decoder with additive skips to 1/4, "
            "one sigmoid output; boxes are connected regions of the heatmap",
            "widths": list(config.widths),
            "parameters": parameter_count(net),
            "output_stride": OUTPUT_STRIDE,
            "size_divisor": net.divisor,
        },
        "training": training,
        "torch_onnx_max_abs_diff": diff,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return meta


def recalibrate(state: Path, config: TrainConfig, out: Path) -> dict[str, object]:
    """Redo the output scaling, export and operating point of a trained state dict, keeping
    the training record of the model card already at ``out``'s .json."""
    torch.set_num_threads(config.threads)
    net = FractureNet(config.widths)
    net.load_state_dict(torch.load(state, weights_only=True))
    card = json.loads(out.with_suffix(".json").read_text())
    training = dict(card["training"])
    training["recalibrated"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = finish(net, config, out, training)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=SHIPPED_MODEL)
    defaults = TrainConfig()
    parser.add_argument("--images", type=int, default=defaults.images)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--crop", type=int, default=defaults.crop)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--validation-images", type=int, default=defaults.validation_images)
    parser.add_argument("--max-minutes", type=float, default=defaults.max_minutes)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--mine-images", type=int, default=defaults.mine_images)
    parser.add_argument("--init", default="", help="state dict (.pt) of an earlier run")
    parser.add_argument(
        "--recalibrate",
        type=Path,
        default=None,
        help="state dict (.pt) of a finished run: only refit the output scaling, re-export "
        "and choose the operating point (keeps the training record of --out's .json)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    Path("training-data").mkdir(exist_ok=True)
    config = TrainConfig(
        images=args.images,
        steps=args.steps,
        batch=args.batch,
        crop=args.crop,
        lr=args.lr,
        seed=args.seed,
        workers=args.workers,
        validation_images=args.validation_images,
        max_minutes=args.max_minutes,
        threads=args.threads,
        mine_images=args.mine_images,
        init=args.init,
    )
    if args.recalibrate is not None:
        meta = recalibrate(args.recalibrate, config, args.out)
    else:
        meta = train(config, args.out)
    print(json.dumps({k: meta[k] for k in ("operating_point", "training")}, indent=2))


if __name__ == "__main__":
    main()
