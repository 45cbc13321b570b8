"""Train a small 2-D CNN that scores the pe plugin's filling-defect candidates from their
vessel-aligned patches (``algorithms.pe.vessel_patches``), on generated training scans.

The plugin's second stage from version 0.3.0 (``algorithms/pe/defects_cnn.onnx``, its card
``defects_cnn.json``; ``algorithms.pe.second_stage``), in place of the trees of
``train_defects`` (docs/algorithms/pe.md):

    python -m training.pe.train_defect_cnn --scans 600 --epochs 14

``--scales 2`` adds the patches' second, wider view (``vessel_patches.SCALES``) and
``--within-share`` draws that share of the training scans with clots that stay within their
own artery (``train_defects.training_scan``).

Collecting the 600 scans' candidates and patches takes about 20 minutes with 2 processes on
the 2-core machine (cached in ``--cache-dir`` in runs of 300 scans), training about 16
minutes. Writing the shipped file drops its record from ``model.json``: choose the operating
point again (``python -m training.pe.evaluate --split validation --write-operating-point``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import platform
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from algorithms.pe import filling_defects, second_stage, vessel_patches
from training.onnx_export import export, max_difference
from training.pe.evaluate import auc
from training.pe.train_defects import (
    cached_scans,
    defect_seeds,
    forget_evaluated_scorer,
    label_candidates,
    network_candidates,
    training_scan,
)

INPUT_NAME = "patches"
SHIPPED = Path(str(resources.files("algorithms.pe").joinpath(second_stage.PATCH_NETWORK)))
STEP_MM = float(vessel_patches.ALONG_MM[1] - vessel_patches.ALONG_MM[0])
"""Sample spacing of the patches' first scale."""
BATCH_NEGATIVES, BATCH_POSITIVES = 192, 64
"""Each step sees every negative once per epoch and positives drawn with replacement."""
LAYOUTS = {"channels-last": torch.channels_last, "contiguous": torch.contiguous_format}
"""Memory layout of the network and its batches while training: channels-last (from 0.5.0)
takes about 0.16 s a step on the 2-core machine against 0.22 s; the CNNs of 0.3.0 and 0.4.0
were trained contiguous (``--layout contiguous`` reproduces them)."""


@dataclass(frozen=True)
class ScanPatches:
    seed: int
    patches: npt.NDArray[np.float16]
    is_embolus: npt.NDArray[np.bool_]
    near_embolus: npt.NDArray[np.bool_]


def scan_patches(seed: int, scales: int = 1, within_share: float = 0.0) -> ScanPatches | None:
    """One generated training scan's candidates (as the plugin finds them), their patches at
    ``scales`` scales and labels; None when the scan is not assessed."""
    ct = training_scan(seed, within_share)
    seen = network_candidates(ct, seed)
    if seen is None:
        return None
    study, analysis, found = seen
    if found is None or not found.count:
        return None
    is_embolus, near, _ = label_candidates(ct, found)
    patches = vessel_patches.vessel_patches(
        study.series.array, ct.spacing_mm, found.regions(), analysis.trunk.median_hu, scales
    )
    return ScanPatches(seed, patches.astype(np.float16), is_embolus, near)


def cached_patches(
    seeds: range, workers: int, cache_dir: Path, scales: int = 1, within_share: float = 0.0
) -> list[ScanPatches]:
    """``scan_patches`` of every seed, or their earlier result (``cached_scans``; the scales
    and the share of within-artery scans name the cache)."""
    code = (
        filling_defects,
        vessel_patches,
        training_scan,
        network_candidates,
        scan_patches,
        label_candidates,
    )
    name = "pe_patches" + (f"_s{scales}" if scales > 1 else "")
    name += f"_w{round(within_share * 100)}" if within_share else ""
    job = functools.partial(scan_patches, scales=scales, within_share=within_share)
    return cached_scans(name, job, code, seeds, workers, cache_dir)


def stack(
    scans: list[ScanPatches], scales: int = 1
) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.bool_]]:
    """Patches and labels to learn from (candidates near an embolus left out, as for the
    trees)."""
    shape = (
        0,
        vessel_patches.channels(scales),
        len(vessel_patches.ACROSS_MM),
        len(vessel_patches.ALONG_MM),
    )
    if not scans:
        return np.zeros(shape, np.float16), np.zeros(0, bool)
    keep = [~s.near_embolus for s in scans]
    x = np.concatenate([s.patches[k] for s, k in zip(scans, keep, strict=True)])
    y = np.concatenate([s.is_embolus[k] for s, k in zip(scans, keep, strict=True)])
    return x, y


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
        nn.Conv2d(channels_out, channels_out, 3, padding=1),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    )


class DefectNet(nn.Module):
    """Three blocks of two 3x3 convolutions (24, 48, 64 channels, max-pooling between),
    mean and max over the patch, two linear layers: the logit that a candidate is an
    embolus."""

    def __init__(self, scales: int = 1) -> None:
        super().__init__()
        self.scales = scales
        self.features = nn.Sequential(
            _block(vessel_patches.channels(scales), 24),
            nn.MaxPool2d(2),
            _block(24, 48),
            nn.MaxPool2d(2),
            _block(48, 64),
        )
        self.head = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        logit: torch.Tensor = self.head(pooled).squeeze(1)
        return logit


def views(x: torch.Tensor, scales: int = 1) -> list[torch.Tensor]:
    """The patch and its mirror images: along the vessel, across it, the two planes swapped
    (a vessel has no preferred direction)."""
    return [x, x.flip(3), x.flip(2), x[:, vessel_patches.planes_swapped(scales)]]


def augmented(x: torch.Tensor, rng: np.random.Generator, scales: int = 1) -> torch.Tensor:
    """Each of the mirror images of ``views`` with probability 1/2, independently."""
    if rng.uniform() < 0.5:
        x = x.flip(3)
    if rng.uniform() < 0.5:
        x = x.flip(2)
    if rng.uniform() < 0.5:
        x = x[:, vessel_patches.planes_swapped(scales)]
    return x


class AveragedProbability(nn.Module):
    """What the plugin runs: the probability averaged over ``views``."""

    def __init__(self, net: DefectNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mirrored = views(x, self.net.scales)
        return torch.stack([torch.sigmoid(self.net(v)) for v in mirrored]).mean(dim=0)


def with_layout(net: DefectNet, memory_format: torch.memory_format) -> DefectNet:
    """``net`` with its convolution weights in ``memory_format`` (what ``Module.to`` does
    with a memory format, which its type hints do not name)."""
    for parameter in net.parameters():
        if parameter.dim() == 4:
            parameter.data = parameter.data.contiguous(memory_format=memory_format)
    return net


def train(
    x: npt.NDArray[np.float16],
    y: npt.NDArray[np.bool_],
    epochs: int,
    seed: int = 0,
    scales: int = 1,
    layout: str = "contiguous",
) -> DefectNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    memory_format = LAYOUTS[layout]
    net = with_layout(DefectNet(scales), memory_format)
    positives, negatives = np.flatnonzero(y), np.flatnonzero(~y)
    steps = max(1, len(negatives) // BATCH_NEGATIVES)
    optimiser = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=epochs * steps)
    loss_of = nn.BCEWithLogitsLoss()
    patches, labels = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    start = time.monotonic()
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(negatives)
        total = 0.0
        for step in range(steps):
            batch = np.concatenate(
                [
                    order[step * BATCH_NEGATIVES : (step + 1) * BATCH_NEGATIVES],
                    rng.choice(positives, BATCH_POSITIVES),
                ]
            )
            inputs = augmented(patches[batch].float(), rng, scales)
            loss = loss_of(net(inputs.contiguous(memory_format=memory_format)), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.item())
        print(
            f"  epoch {epoch + 1}/{epochs}: loss {total / steps:.4f}, "
            f"{time.monotonic() - start:.0f} s",
            flush=True,
        )
    return with_layout(net, torch.contiguous_format).eval()


def probabilities(model: nn.Module, x: npt.NDArray[np.float16]) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        parts = [
            model(torch.from_numpy(x[i : i + 2048]).float()).numpy() for i in range(0, len(x), 2048)
        ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--check-fraction",
        type=float,
        default=0.0,
        help="train on the first scans only and report the candidate AUC on this last "
        "fraction of them (0: train on all)",
    )
    parser.add_argument(
        "--scales",
        type=int,
        default=1,
        choices=range(1, len(vessel_patches.SCALES) + 1),
        help="views of each candidate: 1 (20 x 8 mm at 0.5 mm) or 2 (and 40 x 16 mm at 1 mm)",
    )
    parser.add_argument(
        "--within-share",
        type=float,
        default=0.0,
        help="share of training scans whose clots stay within their own artery",
    )
    parser.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        default="channels-last",
        help="memory layout while training (contiguous: as the CNNs of 0.3.0 and 0.4.0)",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("training-data"))
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args(argv)
    seeds = defect_seeds(parser, args.scans)
    torch.set_num_threads(max(1, args.workers))
    start = time.monotonic()
    if not 0.0 <= args.within_share <= 1.0:
        parser.error("--within-share must be between 0 and 1")
    scans = cached_patches(seeds, args.workers, args.cache_dir, args.scales, args.within_share)
    collect_s = time.monotonic() - start
    cut = len(scans) - round(len(scans) * args.check_fraction)
    x, y = stack(scans[:cut], args.scales)
    print(f"{len(scans)} scans; training on {cut}: {len(y)} candidates ({int(y.sum())} emboli)")
    if not y.any() or y.all():
        raise SystemExit("train_defect_cnn: the candidates need both emboli and others")
    t_train = time.monotonic()
    net = train(x, y, args.epochs, scales=args.scales, layout=args.layout)
    train_s = time.monotonic() - t_train
    model = AveragedProbability(net).eval()
    check: float | None = None
    if cut < len(scans):
        x_check, y_check = stack(scans[cut:], args.scales)
        p = probabilities(model, x_check)
        measured = auc(p[y_check].tolist(), p[~y_check].tolist())
        check = measured if np.isfinite(measured) else None  # no embolus among them
        print(
            f"check: candidate AUC {measured:.3f} on {len(y_check)} candidates of "
            f"{len(scans) - cut} scans"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(x[:2].astype(np.float32))
    export(model, args.out, example, INPUT_NAME, spatial_dynamic=False)
    difference = max_difference(model, args.out, x[:64].astype(np.float32), INPUT_NAME)
    card = {
        "what": "candidate CNN of the pe plugin's second stage (algorithms.pe.second_stage)",
        "sha256": hashlib.sha256(args.out.read_bytes()).hexdigest(),
        "input": {
            "name": INPUT_NAME,
            "channels": [
                f"plane {plane} {what}, {vessel_patches.SCALES[s] * STEP_MM:g} mm"
                for s in range(args.scales)
                for plane in (1, 2)
                for what in ("HU", "mask")
            ],
            "along_mm": [
                [float(vessel_patches.ALONG_MM[0] * f), float(vessel_patches.ALONG_MM[-1] * f)]
                for f in vessel_patches.SCALES[: args.scales]
            ],
            "across_mm": [
                [float(vessel_patches.ACROSS_MM[0] * f), float(vessel_patches.ACROSS_MM[-1] * f)]
                for f in vessel_patches.SCALES[: args.scales]
            ],
        },
        "training": {
            "seeds": [seeds.start, seeds.stop - 1],
            "clots_within_artery_share": args.within_share,
            "scans_assessed": len(scans),
            "trained_on_scans": cut,
            "candidates": len(y),
            "candidate_emboli": int(y.sum()),
            "epochs": args.epochs,
            "layout": args.layout,
            "check_auc": None if check is None else round(check, 4),
            "collect_s": round(collect_s, 1),
            "train_s": round(train_s, 1),
            "onnx_max_difference": difference,
            "machine": f"{platform.machine()} CPU, {args.workers} threads",
            "data": "synthetic contrast chest CT only (training.pe.synth)",
        },
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out} (onnx vs torch max difference {difference:.2e})")
    if args.out.resolve() == SHIPPED.resolve():
        forget_evaluated_scorer(second_stage.PATCH_NETWORK)


if __name__ == "__main__":
    main()
