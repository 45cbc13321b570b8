"""Stage 2 training: the candidate classifier that removes the U-Net's false positives.

As in the LUNA16 false-positive-reduction track: the trained stage-1 model (``model.onnx``) is
run exactly as the plugin runs it on fresh synthetic scans (seeds the U-Net never saw); every
candidate it proposes becomes a 32^3 cube (CT and stage-1 probability) labelled nodule / not
nodule by its distance to the true nodules, and cubes around every true nodule (jittered) and
at a few random lung points are added. A small 3-D CNN learns to tell them apart and is
exported to ``fp_reduction.onnx``.

CLI (needs torch): ``python -m training.lung_nodule.train_fp [--stage1 PATH]`` trains stage 2
on the stage-1 model at ``--stage1`` (default: the plugin's ``model.onnx``), writes
``fp_reduction.onnx`` beside it and adds the ``fp_reduction`` section to its model card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import platform
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

# Before torch loads OpenMP (see train.py): passive waiting on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812

from algorithms.lung_nodule import fp_reduction, preprocess
from training import onnx_export
from training.lung_nodule.network import CLASSIFIER_WIDTHS, CandidateNet
from training.unet import ProbabilityModel, parameter_count

SHIPPED_MODEL = Path(str(resources.files("algorithms.lung_nodule").joinpath("model.onnx")))
"""Where the plugin loads its weights from: the default output (in the algorithm's package)."""

STAGE2_SEED_BASE = 200_000
"""Stage-2 scans use seeds STAGE2_SEED_BASE + i: unseen by the U-Net, far from evaluation."""
JITTER = 2
"""Cubes are stored JITTER voxels larger on every side; training crops at a random offset."""
MATCH_MIN_MM = 5.0
"""A candidate is a nodule when its centre is within max(5 mm, radius) of a true centre (the
evaluation's criterion)."""
EASY_NEGATIVES = 4
"""Random lung points per scan added as negatives (the rest are stage-1 false positives)."""
NEGATIVES_PER_TRAINING_SCAN = 40
"""Non-nodule candidates kept per training scan (a random subset; validation keeps all)."""
OPERATING_FP_PER_SCAN = 0.25
"""The operating threshold written to the model card is the lowest of 0.50, 0.52, ..., 0.98 at
which the validation scans have at most this many false positives per scan (they are smaller
than the evaluation's scans, which have about 1.5x as many)."""
VALIDATION_EVERY = 7
"""Every 7th stage-2 scan is held out for validation (reported in the model card)."""


@dataclass(frozen=True)
class FPConfig:
    volumes: int = 200
    steps: int = 2000
    batch: int = 32
    lr: float = 2e-3
    seed: int = 0
    widths: tuple[int, int, int] = CLASSIFIER_WIDTHS
    workers: int = 2
    jitters_per_nodule: int = 3
    positive_fraction: float = 0.35
    """Share of nodule cubes in a training batch."""
    max_minutes: float = 20.0
    """Wall-clock budget for mining plus training (the schedule adapts)."""
    mine_fraction: float = 0.5
    """Mining stops after this share of ``max_minutes``."""


@dataclass
class Mined:
    """Cubes from one stage-2 scan."""

    seed: int
    cubes: npt.NDArray[np.float16]
    """(n, CHANNELS, S, S, S) normalised CT and stage-1 probability, S = PATCH_SIZE + 2 *
    JITTER."""
    labels: npt.NDArray[np.uint8]
    """1 = nodule."""
    from_candidate: npt.NDArray[np.bool_]
    """True: a stage-1 candidate; False: a jittered cube around a true nodule."""
    truth_index: npt.NDArray[np.int16]
    """For candidates: the true nodule matched, -1 for none."""
    diameters_mm: npt.NDArray[np.float32]
    """Diameter of each true nodule of the scan."""
    seconds: float


_SESSIONS: dict[str, Any] = {}


def _stage1_session(path: str) -> Any:
    if path not in _SESSIONS:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        _SESSIONS[path] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return _SESSIONS[path]


def mine_volume(seed: int, model_path: str, jitters: int, keep_all: bool) -> Mined:
    """Run stage 1 on one fresh scan as the plugin does and cut labelled cubes; unless
    ``keep_all``, only NEGATIVES_PER_TRAINING_SCAN random non-nodule candidates are kept."""
    from training.lung_nodule.train import random_training_scan

    start = time.monotonic()
    rng = np.random.default_rng([seed, 55])
    ct = random_training_scan(seed)
    size = fp_reduction.PATCH_SIZE + 2 * JITTER
    diameters = np.array([t.diameter_mm for t in ct.nodules], dtype=np.float32)
    box = preprocess.find_lung_box(ct.hu.astype(np.float32), ct.spacing_mm)
    if box is None:
        empty = np.zeros((0, fp_reduction.CHANNELS, size, size, size), dtype=np.float16)
        none = np.zeros(0, dtype=np.int16)
        return Mined(seed, empty, none.astype(np.uint8), none > 0, none, diameters, 0.0)
    stage1 = fp_reduction.run_stage1(_stage1_session(model_path), "ct", ct.hu, ct.spacing_mm, box)
    truth = stage1.grid.to_model(np.array([t.centre_voxel for t in ct.nodules]).reshape(-1, 3))
    reach = np.maximum(MATCH_MIN_MM, diameters / 2) / preprocess.MODEL_SPACING_MM
    centres = np.array([c.centre for c in stage1.candidates]).reshape(-1, 3)
    dist = np.linalg.norm(centres[:, None, :] - truth[None, :, :], axis=2)
    matched = np.where(dist <= reach[None, :], dist, np.inf)
    truth_index = np.where(
        np.isfinite(matched).any(axis=1), np.argmin(matched, axis=1) if len(truth) else -1, -1
    ).astype(np.int16)
    # Jittered copies of the nodules stage 1 proposed (the classifier never sees the others).
    found = np.isin(np.arange(len(truth)), truth_index[truth_index >= 0])
    extra = np.repeat(truth[found], jitters, axis=0)
    extra += rng.uniform(-JITTER, JITTER, size=extra.shape)
    # A few easy negatives: random lung points away from every nodule.
    lung = np.argwhere(stage1.lungs)
    easy = lung[rng.choice(len(lung), min(len(lung), 4 * EASY_NEGATIVES), replace=False)]
    if len(truth):
        clear = np.linalg.norm(easy[:, None, :] - truth[None, :, :], axis=2) > 2 * reach + 4
        easy = easy[clear.all(axis=1)]
    easy = easy[:EASY_NEGATIVES].astype(np.float64)
    if not keep_all:
        negative = np.flatnonzero(truth_index < 0)
        drop = rng.permutation(negative)[NEGATIVES_PER_TRAINING_SCAN:]
        keep = np.setdiff1d(np.arange(len(centres)), drop)
        centres, truth_index = centres[keep], truth_index[keep]
    points = np.concatenate([centres, extra, easy])
    cubes = fp_reduction.candidate_cubes(stage1, points, size).astype(np.float16)
    labels = np.concatenate(
        [truth_index >= 0, np.ones(len(extra), dtype=bool), np.zeros(len(easy), dtype=bool)]
    ).astype(np.uint8)
    from_candidate = np.arange(len(points)) < len(centres)
    truth_index = np.concatenate([truth_index, np.full(len(extra) + len(easy), -1, dtype=np.int16)])
    return Mined(
        seed, cubes, labels, from_candidate, truth_index, diameters, time.monotonic() - start
    )


def _mine_job(args: tuple[int, str, int, bool]) -> Mined:
    return mine_volume(*args)


def is_validation(index: int) -> bool:
    return index % VALIDATION_EVERY == 0


def mine(config: FPConfig, model_path: Path) -> list[Mined]:
    """Mine the stage-2 scans (2 processes); stops early after ``mine_fraction`` of the
    time budget so that training keeps its share on a busy machine."""
    jobs = [
        (STAGE2_SEED_BASE + i, str(model_path), config.jitters_per_nodule, is_validation(i))
        for i in range(config.volumes)
    ]
    start = time.monotonic()
    limit_s = config.max_minutes * 60 * config.mine_fraction
    mined: list[Mined] = []
    with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
        for i, m in enumerate(pool.imap(_mine_job, jobs, chunksize=2)):
            mined.append(m)
            elapsed = time.monotonic() - start
            if (i + 1) % 20 == 0:
                n = sum(len(x.labels) for x in mined)
                print(
                    f"  stage 2: mined {i + 1}/{len(jobs)} scans, {n} cubes, {elapsed:.0f} s",
                    flush=True,
                )
            if elapsed > limit_s and i + 1 < len(jobs):
                print(f"  stage 2: mining time budget used after {i + 1} scans", flush=True)
                pool.terminate()
                break
    return mined


def _augment(
    cubes: npt.NDArray[np.float16], rng: np.random.Generator, patch: int
) -> npt.NDArray[np.float32]:
    out = np.empty((len(cubes), cubes.shape[1], patch, patch, patch), dtype=np.float32)
    for n, cube in enumerate(cubes):
        o = rng.integers(0, 2 * JITTER + 1, size=3)
        x = cube[:, o[0] : o[0] + patch, o[1] : o[1] + patch, o[2] : o[2] + patch]
        x = x.astype(np.float32)
        for axis in (1, 2, 3):
            if rng.uniform() < 0.5:
                x = np.flip(x, axis)
        if rng.uniform() < 0.5:
            x = x.transpose(0, 1, 3, 2)
        out[n] = x
        out[n, 0] = x[0] * float(rng.uniform(0.96, 1.04)) + float(rng.uniform(-0.04, 0.04))
    return out


def _centre(cubes: npt.NDArray[np.float16], patch: int) -> npt.NDArray[np.float32]:
    c = slice(JITTER, JITTER + patch)
    return np.ascontiguousarray(cubes[:, :, c, c, c], dtype=np.float32)


def _predict(
    net: CandidateNet, x: npt.NDArray[np.float32], batch: int = 64
) -> npt.NDArray[np.float32]:
    net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            out.append(torch.sigmoid(net(torch.from_numpy(x[s : s + batch])))[:, 0].numpy())
    net.train()
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _val_fp_per_scan(
    mined: list[Mined], scores: list[npt.NDArray[np.float32]], threshold: float
) -> float:
    fps = sum(
        int((m.from_candidate & (s >= threshold) & (m.labels == 0)).sum())
        for m, s in zip(mined, scores, strict=True)
    )
    return fps / max(len(mined), 1)


def choose_threshold(mined: list[Mined], scores: list[npt.NDArray[np.float32]]) -> float:
    """The lowest threshold of 0.50, 0.52, ..., 0.98 meeting OPERATING_FP_PER_SCAN."""
    grid = [round(0.5 + 0.02 * n, 2) for n in range(25)]
    for threshold in grid:
        if _val_fp_per_scan(mined, scores, threshold) <= OPERATING_FP_PER_SCAN:
            return threshold
    return grid[-1]


def validation_report(
    mined: list[Mined], scores: list[npt.NDArray[np.float32]], thresholds: tuple[float, ...]
) -> dict[str, object]:
    """Per threshold, on the held-out stage-2 scans: share of true nodules (all, >= 6 mm) with
    a candidate scoring >= it, and non-nodule candidates scoring >= it per scan."""
    n_truth = sum(len(m.diameters_mm) for m in mined)
    n_big = sum(int((m.diameters_mm >= 6.0).sum()) for m in mined)
    rows: dict[str, object] = {"scans": len(mined), "nodules": n_truth}
    for thr in thresholds:
        hit = big = fps = 0
        for m, s in zip(mined, scores, strict=True):
            cand = m.from_candidate
            found = set(m.truth_index[cand & (s >= thr) & (m.labels == 1)].tolist())
            hit += len(found)
            big += sum(1 for t in found if m.diameters_mm[t] >= 6.0)
            fps += int((cand & (s >= thr) & (m.labels == 0)).sum())
        rows[f"{thr:g}"] = {
            "sensitivity": round(hit / max(n_truth, 1), 3),
            "sensitivity_6mm_plus": round(big / max(n_big, 1), 3),
            "fp_per_scan": round(fps / max(len(mined), 1), 2),
        }
    return rows


def train_classifier(config: FPConfig, model_path: Path, out: Path) -> dict[str, object]:
    """Mine cubes with the stage-1 model at ``model_path``, train, export to ``out``."""
    torch.set_num_threads(2)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 2])
    t0 = time.monotonic()
    started = _utc_now()
    key = hashlib.sha256(model_path.read_bytes())
    settings = (
        fp_reduction.CANDIDATE_THRESHOLD,
        fp_reduction.CANDIDATE_MIN_PEAK,
        fp_reduction.MAX_CANDIDATES,
        fp_reduction.PATCH_SIZE,
        JITTER,
        EASY_NEGATIVES,
        NEGATIVES_PER_TRAINING_SCAN,
        config.volumes,
        config.jitters_per_nodule,
        config.max_minutes * config.mine_fraction,
    )
    key.update(repr(settings).encode())
    cache = Path("training-data") / f"lung_nodule_fp_{key.hexdigest()[:16]}.pkl"
    from_cache = cache.exists()
    if from_cache:
        print(f"stage 2: loading cubes mined with this stage-1 model from {cache}", flush=True)
        with cache.open("rb") as f:
            mined: list[Mined] = pickle.load(f)
    else:
        print(f"stage 2: running stage 1 on {config.volumes} fresh scans ...", flush=True)
        mined = mine(config, model_path)
        if cache.parent.is_dir():
            with cache.open("wb") as out_file:
                pickle.dump(mined, out_file, protocol=pickle.HIGHEST_PROTOCOL)
    mine_s = time.monotonic() - t0
    val = [m for i, m in enumerate(mined) if is_validation(i)]
    train = [m for i, m in enumerate(mined) if not is_validation(i)]
    cubes = np.concatenate([m.cubes for m in train])
    labels = np.concatenate([m.labels for m in train])
    from_cand = np.concatenate([m.from_candidate for m in train])
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if not len(pos) or not len(neg):
        raise SystemExit(
            f"stage 2 needs nodule and non-nodule cubes; the stage-1 model at {model_path} gave "
            f"{len(pos)} and {len(neg)} on {config.volumes} scans: train stage 1 longer or mine "
            "more scans (--volumes)"
        )
    n_cand = int(from_cand.sum())
    n_cand_pos = int((from_cand & (labels == 1)).sum())
    stage1_recall = {
        "nodules": sum(len(m.diameters_mm) for m in mined),
        "found_by_a_candidate": sum(
            len(set(m.truth_index[m.truth_index >= 0].tolist())) for m in mined
        ),
    }
    print(
        f"stage 2: {len(cubes)} training cubes ({n_cand} candidates of which {n_cand_pos} "
        f"nodules, {len(pos) - n_cand_pos} jittered nodule cubes), {len(neg)} negatives; "
        f"stage-1 candidates found {stage1_recall['found_by_a_candidate']}/"
        f"{stage1_recall['nodules']} nodules; mining took {mine_s:.0f} s",
        flush=True,
    )
    patch = fp_reduction.PATCH_SIZE
    net = CandidateNet(config.widths, patch, fp_reduction.CHANNELS)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = 50
    budget_s = max(60.0, config.max_minutes * 60 - mine_s - 30.0)

    def lr_at(step: int, progress: float) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return config.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    val_x = [_centre(m.cubes[m.from_candidate], patch) for m in val]
    n_pos = max(1, round(config.batch * config.positive_fraction))
    t_train = time.monotonic()
    running = 0.0
    steps_done = 0
    for step in range(config.steps):
        progress = max(step / config.steps, (time.monotonic() - t_train) / budget_s)
        if progress >= 1.0:
            print(f"stage 2: time budget used after {step} steps", flush=True)
            break
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, progress)
        idx = np.concatenate([rng.choice(pos, n_pos), rng.choice(neg, config.batch - n_pos)])
        x = torch.from_numpy(_augment(cubes[idx], rng, patch))
        y = torch.from_numpy(labels[idx].astype(np.float32))[:, None]
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        steps_done = step + 1
        if steps_done % 100 == 0:
            print(
                f"stage 2: step {steps_done}/{config.steps} loss {running:.4f} "
                f"lr {lr_at(step, progress):.2e} {time.monotonic() - t_train:.0f} s",
                flush=True,
            )
    train_s = time.monotonic() - t_train
    net.eval()
    val_scores = []
    for m, x_val in zip(val, val_x, strict=True):
        s = np.zeros(len(m.labels), dtype=np.float32)
        s[m.from_candidate] = _predict(net, x_val)
        val_scores.append(s)
    operating = choose_threshold(val, val_scores)
    thresholds = tuple(sorted({0.0, 0.5, 0.7, 0.9, operating}))
    validation = validation_report(val, val_scores, thresholds)
    print(f"stage 2 validation ({len(val)} held-out scans): {validation}", flush=True)
    print(f"stage 2 operating threshold: {operating}", flush=True)

    export_onnx(net, out)
    diff = check_onnx(net, out)
    print(f"exported {out} ({out.stat().st_size / 1e3:.0f} kB), torch/onnx max diff {diff:.2e}")
    return {
        "operating_threshold": operating,
        "operating_threshold_rule": "lowest of 0.50, 0.52, ..., 0.98 with at most "
        f"{OPERATING_FP_PER_SCAN} false positives per validation scan",
        "model_file": out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "format": f"ONNX opset {onnx_export.ONNX_OPSET}",
        "input": {
            "name": "patch",
            "layout": f"N,{fp_reduction.CHANNELS},{patch},{patch},{patch}: channel 0 the "
            "stage-1 input volume (model grid, normalised), channel 1 the stage-1 "
            "probability, around the candidate centre (centre voxel at index "
            f"{patch // 2}), edge-padded",
        },
        "output": {"name": "probability", "meaning": "N,1 probability that it is a nodule"},
        "candidates": {
            "stage1_voxel_threshold": fp_reduction.CANDIDATE_THRESHOLD,
            "stage1_min_peak": fp_reduction.CANDIDATE_MIN_PEAK,
            "max_per_scan": fp_reduction.MAX_CANDIDATES,
        },
        "architecture": {
            "type": "3-D CNN: conv3x3x3+BN+ReLU at 1/1, 2 at 1/2, 2 at 1/4 (max-pool "
            "between), 1x1x1 to 16 channels at 1/8, FC 1024-32-1, sigmoid",
            "widths": list(config.widths),
            "parameters": parameter_count(net),
        },
        "training": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "steps_done": steps_done,
            "seeds": [STAGE2_SEED_BASE, STAGE2_SEED_BASE + len(mined) - 1],
            "scans_mined": len(mined),
            "validation_scans": f"every {VALIDATION_EVERY}th seed from the first",
            "training_cubes": len(cubes),
            "candidate_cubes": n_cand,
            "candidate_nodule_cubes": n_cand_pos,
            "jittered_nodule_cubes": int(len(pos) - n_cand_pos),
            "stage1_recall": stage1_recall,
            "mining_s": round(mine_s, 1),
            "mined_cubes_from_cache": from_cache,
            "training_s": round(train_s, 1),
            "final_loss": round(running, 5),
            "stage1_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, 2 threads",
            "started": started,
            "finished": _utc_now(),
            "wall_clock_s": round(time.monotonic() - t0, 1),
            "data": "synthetic chest CT only (training.lung_nodule.synth)",
        },
        "validation": validation,
        "torch_onnx_max_abs_diff": diff,
    }


def export_onnx(net: CandidateNet, path: Path) -> None:
    size = fp_reduction.PATCH_SIZE
    example = torch.zeros(2, fp_reduction.CHANNELS, size, size, size)
    onnx_export.export(ProbabilityModel(net), path, example, "patch", spatial_dynamic=False)


def check_onnx(net: CandidateNet, path: Path) -> float:
    """Largest difference between torch and onnxruntime on random input."""
    size = fp_reduction.PATCH_SIZE
    shape = (5, fp_reduction.CHANNELS, size, size, size)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return onnx_export.max_difference(ProbabilityModel(net), path, x, "patch")


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--stage1",
        type=Path,
        default=SHIPPED_MODEL,
        help="the stage-1 U-Net; its model card (same name, .json) must carry its sha256 and "
        "gets the fp_reduction section; fp_reduction.onnx is written beside it",
    )
    defaults = FPConfig()
    parser.add_argument("--volumes", type=int, default=defaults.volumes)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--max-minutes", type=float, default=defaults.max_minutes)
    args = parser.parse_args(argv)
    card = args.stage1.with_suffix(".json")
    meta = json.loads(card.read_text())
    digest = hashlib.sha256(args.stage1.read_bytes()).hexdigest()
    if meta.get("sha256") != digest:
        raise SystemExit(f"{args.stage1} sha256 {digest} does not match {card}")
    Path("training-data").mkdir(exist_ok=True)
    config = FPConfig(
        volumes=args.volumes,
        steps=args.steps,
        seed=args.seed,
        workers=args.workers,
        max_minutes=args.max_minutes,
    )
    fp_meta = train_classifier(config, args.stage1, args.stage1.with_name("fp_reduction.onnx"))
    meta["fp_reduction"] = fp_meta
    meta.pop("total_wall_clock_s", None)
    meta["created"] = _utc_now()
    card.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(fp_meta["training"], indent=2))
    print(f"wrote {card}")


if __name__ == "__main__":
    main()
