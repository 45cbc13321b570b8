"""Train the second-stage filling-defect classifier of the PE plugin (CLI, scikit-learn).

Generates contrast chest CTs as a PACS would send them (about 1 mm pixels, 0.8-3 mm slices,
like the held-out splits) from seeds ``DEFECT_SEED_BASE + i`` (never the validation or test
seeds), runs the shipped first-stage network and the candidate search on each, labels every
candidate by whether it overlaps a true embolus, and fits gradient-boosted trees on the
candidates' features. Writes ``algorithms/pe/defects.json`` (and, when it replaces the shipped
one, removes its record from ``model.json``: run the validation split again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import inspect
import json
import multiprocessing
import pickle
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from algorithms.contract import StudyInput
from algorithms.pe import filling_defects, second_stage
from algorithms.pe.plugin import Analysis, PulmonaryEmbolismDetector
from training.pe import synth
from training.pe.evaluate import SLICE_MM, make_study
from training.pe.synth import (
    PHASES,
    ClotKind,
    ClotSpec,
    SyntheticContrastCT,
    generate_contrast_chest_ct,
)

DEFECT_SEED_BASE = 400_000
"""Seeds of the classifier's training scans (the first stage trained on 300000+i; validation
700000+i and test 900000+i are never used here)."""
DEFECT_SCANS_MAX = 10_000
"""The second stage is never trained on more scans than this, so that its seeds stay below the
level network's (500000+) and apart from every held-out split."""
CHUNK = 300
"""Scans are collected (and cached) in runs of this many seeds."""
SHIPPED = Path(str(resources.files("algorithms.pe").joinpath(second_stage.TREES)))
KINDS: tuple[ClotKind, ...] = ("saddle", "central", "lobar", "segmental")
T = TypeVar("T")

KIND_WEIGHTS = (0.05, 0.1, 0.25, 0.6)
"""Segmental emboli are what the second stage is for: most training emboli are segmental."""


def training_scan(seed: int, clots_within_artery_share: float = 0.0) -> SyntheticContrastCT:
    """A scan drawn like the held-out ones (``evaluate.eval_scan``), contrast-enhanced, with
    1-3 emboli in 70 % of scans, mostly segmental; in about ``clots_within_artery_share`` of
    the scans (drawn apart, so that the rest are the same scans) each clot stays within its
    own artery (``generate_contrast_chest_ct(clots_within_artery=True)``)."""
    within = bool(np.random.default_rng([seed, 79]).uniform() < clots_within_artery_share)
    rng = np.random.default_rng([seed, 78])
    pixel = float(rng.uniform(0.85, 1.05))
    spacing = (float(rng.choice(SLICE_MM)), pixel, pixel)
    n_slices = round(float(rng.uniform(240.0, 320.0)) / spacing[0])
    phase = PHASES[int(rng.choice(2, p=[0.55, 0.45]))]
    count = int(rng.integers(1, 4)) if rng.uniform() < 0.7 else 0
    specs = [ClotSpec(KINDS[int(rng.choice(4, p=KIND_WEIGHTS))]) for _ in range(count)]
    return generate_contrast_chest_ct(
        seed,
        shape=(n_slices, 320, 320),
        spacing_mm=spacing,
        phase=phase,
        clots=specs,
        clots_within_artery=within,
    )


@dataclass
class ScanCandidates:
    seed: int
    features: npt.NDArray[np.float32]
    is_embolus: npt.NDArray[np.bool_]
    """Per candidate: overlaps a true embolus."""
    near_embolus: npt.NDArray[np.bool_]
    """Per candidate: within ``NEAR_VOXELS`` of a true embolus without overlapping it (the
    rim of a clot, where its label and its partial-volume edge disagree; left out of
    training)."""
    truth_levels: list[str]
    truth_found: list[bool]
    """Per true embolus: overlapped by at least one candidate."""
    seconds: float


NEAR_VOXELS = 3


def label_candidates(
    ct: SyntheticContrastCT, found: filling_defects.Candidates | None
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], list[bool]]:
    """Per candidate: overlaps a true embolus, lies near one; per true embolus: overlapped by
    a candidate."""
    if found is None or not found.count:
        empty = np.zeros(0, dtype=bool)
        return empty, empty, [False] * len(ct.clots)
    truth = ct.clot_labels[found.box]
    touching = np.unique(np.stack([found.labels[truth > 0], truth[truth > 0]]), axis=1)
    touching = touching[:, touching[0] > 0]
    is_embolus = np.zeros(found.count, dtype=bool)
    is_embolus[touching[0] - 1] = True
    near = ndimage.binary_dilation(truth > 0, iterations=NEAR_VOXELS)
    near_embolus = np.zeros(found.count, dtype=bool)
    close = np.unique(found.labels[near])
    near_embolus[close[close > 0] - 1] = True
    seen = {int(t) for t in touching[1]}
    return is_embolus, near_embolus & ~is_embolus, [t.label in seen for t in ct.clots]


_DETECTOR: PulmonaryEmbolismDetector | None = None


def _network() -> PulmonaryEmbolismDetector:
    """The shipped plugin without its second stage: ``scan_candidates`` runs the candidate
    search itself and keeps every candidate, not only those the shipped scorer keeps."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = PulmonaryEmbolismDetector()
        _DETECTOR.load("cpu")
        _DETECTOR.second_stage = None
    return _DETECTOR


def network_candidates(
    ct: SyntheticContrastCT, seed: int
) -> tuple[StudyInput, Analysis, filling_defects.Candidates | None] | None:
    """A generated scan as the plugin sees it: the study, the network's analysis and every
    filling-defect candidate (None: not assessed)."""
    study = make_study(ct, seed)
    analysis = _network().analyse(study)
    if not isinstance(analysis, Analysis):
        return None
    assert analysis.radius_mm is not None  # analyse() always measures it
    found = filling_defects.find_candidates(
        study.series.array,
        ct.spacing_mm,
        analysis.prob,
        analysis.grid,
        analysis.trunk.median_hu,
        analysis.trunk.bifurcation_lps,
        analysis.affine,
        analysis.radius_mm,
    )
    return study, analysis, found


def scan_candidates(seed: int) -> ScanCandidates | None:
    """Generate one training scan and return its labelled candidates (None: not assessed)."""
    ct = training_scan(seed)
    start = time.monotonic()
    seen = network_candidates(ct, seed)
    if seen is None:
        return None
    _, _, found = seen
    seconds = time.monotonic() - start
    is_embolus, near, truth_found = label_candidates(ct, found)
    width = len(filling_defects.FEATURES)
    features = found.features if found is not None else np.zeros((0, width), np.float32)
    levels = [str(t.level) for t in ct.clots]
    return ScanCandidates(seed, features, is_embolus, near, levels, truth_found, seconds)


def collect(job: Callable[[int], T | None], seeds: range, workers: int) -> list[T]:
    """``job`` of every seed in ``workers`` processes; the scans it did not assess left out."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        out = []
        start = time.monotonic()
        for n, scan in enumerate(pool.imap(job, seeds)):
            if scan is not None:
                out.append(scan)
            if (n + 1) % 10 == 0:
                print(f"  {n + 1}/{len(seeds)} scans, {time.monotonic() - start:.0f} s", flush=True)
    return out


CACHE_HITS: list[str] = []
"""Cache files read by ``cached_scans`` in this process (recorded in the card)."""


def cached_scans(
    name: str,
    job: Callable[[int], T | None],
    code: tuple[ModuleType | Callable[..., object], ...],
    seeds: range,
    workers: int,
    cache_dir: Path,
) -> list[T]:
    """``collect(job, ...)``, or its earlier result for the same seeds, generator, network
    and ``code`` (modules by their file, functions by their source), kept in ``cache_dir``
    in runs of ``CHUNK`` seeds (600 scans reuse the first 300) as
    ``{name}_{digest}_{first seed}_{count}.pkl``."""
    digest = hashlib.sha256(synth.generator_digest().encode())
    for piece in code:
        if isinstance(piece, ModuleType):
            digest.update(Path(str(piece.__file__)).read_bytes())
        else:
            digest.update(inspect.getsource(piece).encode())
    digest.update(Path(str(resources.files("algorithms.pe").joinpath("model.onnx"))).read_bytes())
    scans: list[T] = []
    for first in range(seeds.start, seeds.stop, CHUNK):
        chunk = range(first, min(first + CHUNK, seeds.stop))
        cache = cache_dir / f"{name}_{digest.hexdigest()[:10]}_{chunk.start}_{len(chunk)}.pkl"
        scans += _cached_chunk(cache, job, chunk, workers)
    return scans


def _cached_chunk(
    cache: Path, job: Callable[[int], T | None], seeds: range, workers: int
) -> list[T]:
    if cache.exists():
        print(f"  loading cached scans from {cache}", flush=True)
        CACHE_HITS.append(cache.name)
        with cache.open("rb") as f:
            cached: list[T] = pickle.load(f)
        return cached
    scans = collect(job, seeds, workers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("wb") as f:
        pickle.dump(scans, f, protocol=pickle.HIGHEST_PROTOCOL)
    return scans


def cached_collect(seeds: range, workers: int, cache_dir: Path) -> list[ScanCandidates]:
    """The labelled candidates of these training scans (``cached_scans``)."""
    code = (filling_defects, training_scan, network_candidates, scan_candidates, label_candidates)
    return cached_scans("pe_defects", scan_candidates, code, seeds, workers, cache_dir)


def _stack(scans: list[ScanCandidates]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Features and labels of the candidates to learn from (those near an embolus left out)."""
    width = len(filling_defects.FEATURES)
    keep = [~s.near_embolus for s in scans]
    if not scans:
        return np.zeros((0, width), np.float32), np.zeros(0, bool)
    x = np.concatenate([s.features[k] for s, k in zip(scans, keep, strict=True)])
    y = np.concatenate([s.is_embolus[k] for s, k in zip(scans, keep, strict=True)])
    return x.astype(np.float32), y.astype(bool)


@dataclass(frozen=True)
class BoostingSettings:
    trees: int = 400
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 20
    l2_regularization: float = 1.0


def fit_classifier(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.bool_], settings: BoostingSettings
) -> filling_defects.DefectClassifier:
    """scikit-learn's histogram gradient boosting (log loss, no class weights: its output is
    the probability that a candidate of this kind of scan is an embolus), exported as plain
    node tables."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(
        max_iter=settings.trees,
        learning_rate=settings.learning_rate,
        max_leaf_nodes=settings.max_leaf_nodes,
        min_samples_leaf=settings.min_samples_leaf,
        l2_regularization=settings.l2_regularization,
        early_stopping=False,
        random_state=0,
    )
    model.fit(x, y)
    trees = []
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        trees.append(
            np.stack(
                [
                    nodes["feature_idx"].astype(np.float64),
                    nodes["num_threshold"].astype(np.float64),
                    nodes["left"].astype(np.float64),
                    nodes["right"].astype(np.float64),
                    nodes["value"].astype(np.float64),
                    nodes["is_leaf"].astype(np.float64),
                    nodes["missing_go_to_left"].astype(np.float64),
                ],
                axis=1,
            )
        )
    classifier = filling_defects.DefectClassifier(
        baseline=float(np.ravel(model._baseline_prediction)[0]), trees=tuple(trees)
    )
    exported = classifier.probabilities(x[:500])
    if not np.allclose(exported, model.predict_proba(x[:500])[:, 1], atol=1e-6):
        raise RuntimeError("the exported trees do not reproduce scikit-learn's probabilities")
    return classifier


def candidate_auc(p: npt.NDArray[np.float64], y: npt.NDArray[np.bool_]) -> float:
    from training.pe.evaluate import auc

    return auc(list(p[y]), list(p[~y]))


def recall_by_level(scans: list[ScanCandidates]) -> dict[str, str]:
    out = {}
    for level in ("central", "lobar", "segmental"):
        hits = [
            f
            for s in scans
            for lv, f in zip(s.truth_levels, s.truth_found, strict=True)
            if lv == level
        ]
        out[level] = f"{sum(hits)}/{len(hits)}"
    return out


def defect_seeds(parser: argparse.ArgumentParser, scans: int) -> range:
    """The seeds of ``scans`` second-stage training scans; a count outside 1 to
    ``DEFECT_SCANS_MAX`` is a usage error (``parser.error``)."""
    if not 1 <= scans <= DEFECT_SCANS_MAX:
        parser.error(f"--scans must be between 1 and {DEFECT_SCANS_MAX}")
    return range(DEFECT_SEED_BASE, DEFECT_SEED_BASE + scans)


def forget_evaluated_scorer(file: str) -> None:
    """Drop the second stage the operating point was chosen with from model.json when it is
    ``file`` (just replaced): a new one must be evaluated (``evaluate --split validation
    --write-operating-point``) before its sha256 is recorded there again; until then the
    plugin loads it with a warning."""
    card_path = Path(str(resources.files("algorithms.pe").joinpath("model.json")))
    card = json.loads(card_path.read_text())
    if second_stage.recorded_file(card) == file:
        del card["second_stage"]
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"{card_path}: second_stage removed; choose the operating point again")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trees", type=int, default=BoostingSettings.trees)
    parser.add_argument("--cache-dir", type=Path, default=Path("training-data"))
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args(argv)
    seeds = defect_seeds(parser, args.scans)
    start = time.monotonic()
    scans = cached_collect(seeds, args.workers, args.cache_dir)
    collect_s = time.monotonic() - start
    print(
        f"{len(scans)} assessed scans in {collect_s:.0f} s; candidates found emboli "
        f"{recall_by_level(scans)}",
        flush=True,
    )
    # An internal check on the last fifth of the scans (by scan), then the final fit on all.
    cut = len(scans) * 4 // 5
    x_fit, y_fit = _stack(scans[:cut])
    x_check, y_check = _stack(scans[cut:])
    settings = BoostingSettings(trees=args.trees)
    check = fit_classifier(x_fit, y_fit, settings)
    check_auc = candidate_auc(check.probabilities(x_check), y_check)
    print(
        f"internal check: candidate AUC {check_auc:.3f} on {len(y_check)} candidates "
        f"({int(y_check.sum())} emboli) of {len(scans) - cut} scans",
        flush=True,
    )
    x, y = _stack(scans)
    t_fit = time.monotonic()
    classifier = fit_classifier(x, y, settings)
    card = {
        "what": "second-stage filling-defect classifier of the pe plugin",
        **classifier.to_json(),
        "training": {
            "seeds": [seeds.start, seeds.stop - 1],
            "scans_assessed": len(scans),
            "candidates": len(y),
            "candidate_emboli": int(y.sum()),
            "candidate_recall_by_level": recall_by_level(scans),
            "internal_check_auc": round(check_auc, 4),
            "classifier": {"scikit-learn HistGradientBoostingClassifier": asdict(settings)},
            "collect_s": round(collect_s, 1),
            "candidates_read_from_cache": list(CACHE_HITS),
            "fit_s": round(time.monotonic() - t_fit, 1),
            "machine": f"{platform.machine()} CPU, {args.workers} processes",
            "data": "synthetic contrast chest CT only (training.pe.synth)",
        },
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    # One line per top-level key: the trees are long, the metadata stays readable in a diff.
    lines = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in card.items()]
    args.out.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    if args.out.resolve() == SHIPPED.resolve():
        forget_evaluated_scorer(second_stage.TREES)

    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
