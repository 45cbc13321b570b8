"""Held-out evaluation of the PE plugin on synthetic contrast chest CTs; picks the default
operating point on the validation split (CLI)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing
import pickle
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from algorithms.contract import (
    AlgorithmResult,
    SeriesInput,
    StudyInput,
    Verdict,
    VolumeGeometry,
)
from algorithms.pe import postprocess
from algorithms.pe.plugin import (
    DEFECT_FLOOR,
    Analysis,
    PulmonaryEmbolismDetector,
    second_stage_shift_from_card,
    shift_probability,
)
from algorithms.pe.second_stage import FILES
from router.validate.metrics import proportion_interval
from training.pe import synth
from training.pe.synth import PHASES, ClotTruth, SyntheticContrastCT, generate_contrast_chest_ct

SPLITS = {"validation": 700_000, "confirmation": 710_000, "tuning": 720_000, "test": 900_000}
"""Seed bases of the held-out splits (training uses 300000 + i, 400000 + i and 500000 + i,
i < 10000). Choices are made on validation; confirmation (first used in the twelfth session) is
a second validation split for when a choice made there needs more scans before the test split
is run again; tuning (thirteenth session) is a larger split on which to choose an operating
point (``--scans 300 --write-operating-point``: 97 validation scans leave the second stage's
threshold to one or two studies); test is never used for a choice."""
SPLIT_SCANS_MAX = 10_000
"""No split is drawn with more scans than this, so that no two overlap."""
SLICE_MM = (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
LEVELS = synth.CLOT_LEVELS


def make_study(ct: SyntheticContrastCT, uid_suffix: int = 1) -> StudyInput:
    """Wrap a synthetic CT as the router would: float32 HU, axial LPS affine, CT header."""
    dz, dy, dx = ct.spacing_mm
    nz, ny, nx = ct.hu.shape
    affine = np.zeros((4, 4))
    affine[0, 2] = dx  # column index -> patient left (+x)
    affine[1, 1] = dy  # row index -> posterior (+y)
    affine[2, 0] = dz  # slice index -> head (+z)
    affine[:3, 3] = (-(nx - 1) * dx / 2, -(ny - 1) * dy / 2, -150.0)
    affine[3, 3] = 1.0
    series = SeriesInput(
        series_instance_uid=f"2.25.{uid_suffix}2",
        array=ct.hu.astype(np.float32),
        geometry=VolumeGeometry(affine, (nz, ny, nx), f"2.25.{uid_suffix}1"),
        header={
            "Modality": "CT",
            "BodyPartExamined": "CHEST",
            "SliceThickness": f"{dz:g}",
            "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
        },
    )
    return StudyInput(study_instance_uid=f"2.25.{uid_suffix}3", series=series)


def eval_scan(seed: int, clots_within_artery: bool = False) -> SyntheticContrastCT:
    """A held-out scan as a PACS would send it: 0.85-1.05 mm pixels on a 320 matrix,
    0.8-3 mm slices over 240-320 mm; CTPA or venous phase (5 % unenhanced); half of the
    contrast scans with 1-3 emboli (``clots_within_artery``: none reaching back into a more
    proximal artery, so that each is labelled by the most proximal artery it fills)."""
    rng = np.random.default_rng([seed, 77])
    pixel = float(rng.uniform(0.85, 1.05))
    spacing = (float(rng.choice(SLICE_MM)), pixel, pixel)
    n_slices = round(float(rng.uniform(240.0, 320.0)) / spacing[0])
    phase = PHASES[int(rng.choice(3, p=[0.5, 0.45, 0.05]))]
    positive = phase != "non_contrast" and rng.uniform() < 0.5
    return generate_contrast_chest_ct(
        seed,
        shape=(n_slices, 320, 320),
        spacing_mm=spacing,
        phase=phase,
        clots=int(rng.integers(1, 4)) if positive else 0,
        clots_within_artery=clots_within_artery,
    )


@dataclass
class ScanOutcome:
    seed: int
    phase: str
    truths: tuple[ClotTruth, ...]
    verdict: Verdict
    probability: float | None
    detected: list[bool]
    """Per truth: overlapped by a reported finding."""
    side_ok: list[bool | None]
    level_ok: list[bool | None]
    levels_named: list[str | None]
    """Per truth: the level its finding names (None: not detected, or no level given)."""
    spans_levels: list[bool]
    """Per truth: its finding also overlaps an embolus of another level (one finding names
    one level, so one of them is named wrong)."""
    false_findings: int
    seconds: float
    reason: str


def score(
    ct: SyntheticContrastCT, result: AlgorithmResult, seed: int, seconds: float
) -> ScanOutcome:
    detected: list[bool] = []
    side_ok: list[bool | None] = []
    level_ok: list[bool | None] = []
    levels_named: list[str | None] = []
    spans_levels: list[bool] = []
    used: set[int] = set()
    masks = {t.label: ct.clot_labels == t.label for t in ct.clots}
    for t in ct.clots:
        truth = masks[t.label]
        best, overlap = -1, 0
        for n, f in enumerate(result.findings):
            if f.mask is None:
                continue
            hit = int(np.count_nonzero(f.mask & truth))
            if hit > overlap:
                best, overlap = n, hit
        detected.append(best >= 0)
        if best < 0:
            side_ok.append(None)
            level_ok.append(None)
            levels_named.append(None)
            spans_levels.append(False)
            continue
        used.add(best)
        finding = result.findings[best]
        names = {q.name.meaning: q.value.meaning for q in finding.qualifiers}
        side = {"Right": "right", "Left": "left", "Bilateral": "both"}.get(
            names.get("Laterality", "")
        )
        level = names.get("Topographical modifier", "").lower()
        side_ok.append(side == t.side)
        level_ok.append(level == t.level)
        levels_named.append(level or None)
        assert finding.mask is not None
        spans_levels.append(
            any(
                u.level != t.level and bool((finding.mask & masks[u.label]).any()) for u in ct.clots
            )
        )
    return ScanOutcome(
        seed=seed,
        phase=ct.phase,
        truths=ct.clots,
        verdict=result.verdict,
        probability=result.probability,
        detected=detected,
        side_ok=side_ok,
        level_ok=level_ok,
        levels_named=levels_named,
        spans_levels=spans_levels,
        false_findings=len(result.findings) - len(used),
        seconds=seconds,
        reason=result.reason,
    )


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half)."""
    if not positives or not negatives:
        return float("nan")
    pos = np.asarray(positives)[:, None]
    neg = np.asarray(negatives)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def youden_threshold(
    positives: Sequence[float], negatives: Sequence[float], min_specificity: float | None = None
) -> float:
    """The threshold maximising sensitivity + specificity (midway between neighbouring scores;
    the lowest such threshold on ties, favouring sensitivity); with ``min_specificity``, the
    one maximising sensitivity among those whose specificity reaches it (the lowest such)."""
    scores = np.unique(np.concatenate([positives, negatives]))
    candidates = np.concatenate([[scores[0] / 2], (scores[:-1] + scores[1:]) / 2, [1.0]])
    best, best_value = 0.5, -np.inf
    for c in candidates:
        sensitivity = float(np.mean(np.asarray(positives) >= c))
        specificity = float(np.mean(np.asarray(negatives) < c))
        value = _objective(sensitivity, specificity, min_specificity)
        if value > best_value + 1e-12:
            best, best_value = float(c), value
    return float(np.clip(best, 0.01, 0.99))


def _objective(sensitivity: float, specificity: float, min_specificity: float | None) -> float:
    """What an operating point maximises: Youden J, or sensitivity where specificity reaches
    ``min_specificity`` (minus infinity where it does not)."""
    if min_specificity is None:
        return sensitivity + specificity
    return sensitivity if specificity >= min_specificity - 1e-12 else -np.inf


def network_threshold(
    network: Sequence[float],
    second_stage: Sequence[float],
    is_pe: Sequence[bool],
    second_stage_threshold: float,
    min_specificity: float | None = None,
) -> float:
    """The network's own threshold, with the second stage flagging the studies whose
    ``second_stage`` probability reaches ``second_stage_threshold``: of the thresholds giving
    the maximum Youden J (with ``min_specificity``: the highest sensitivity at that
    specificity or more), the middle of the widest range (the furthest from the studies on
    either side)."""
    pn = np.asarray(network, dtype=np.float64)
    by_second = np.asarray(second_stage, dtype=np.float64) >= second_stage_threshold
    y = np.asarray(is_pe, dtype=bool)
    if not y.any() or y.all():
        raise ValueError("choosing a threshold needs studies with and without PE")
    edges = np.unique(np.concatenate([[0.0, 1.0], pn]))
    # every threshold in (edges[k], edges[k + 1]] flags the same studies
    j = np.array(
        [
            _objective(float(np.mean(flag[y])), float(np.mean(~flag[~y])), min_specificity)
            for flag in ((pn >= upper) | by_second for upper in edges[1:])
        ]
    )
    if not np.isfinite(j.max()):
        raise ValueError("no network threshold reaches the specificity asked for")
    best = j >= j.max() - 1e-12
    runs: list[tuple[float, float]] = []
    for k in np.flatnonzero(best):
        if k > 0 and best[k - 1]:
            runs[-1] = (runs[-1][0], float(edges[k + 1]))
        else:
            runs.append((float(edges[k]), float(edges[k + 1])))
    low, high = max(runs, key=lambda r: r[1] - r[0])
    return float(np.clip((low + high) / 2, 0.01, 0.99))


def sensitivity_at_specificity(
    positives: Sequence[float], negatives: Sequence[float], specificity: float
) -> tuple[float, float]:
    """The highest sensitivity of any threshold whose specificity on these scores reaches
    ``specificity``, and that threshold (a point of the ROC curve, not an operating point)."""
    best, at = 0.0, 1.0
    for c in np.unique(np.concatenate([positives, negatives, [np.inf]])):
        if np.mean(np.asarray(negatives) < c) >= specificity:
            sens = float(np.mean(np.asarray(positives) >= c))
            if sens > best:
                best, at = sens, float(c)
    return best, at


def _pct(hits: int, total: int) -> str:
    return f"{100.0 * hits / total:5.1f} % ({hits}/{total})" if total else "  n/a"


def _pct_ci(hits: int, total: int) -> str:
    """``_pct`` with the 95 % Wilson interval: with 25 positive studies one study is 4 points."""
    interval = proportion_interval(hits, total)
    if interval is None:
        return _pct(hits, total)
    return f"{_pct(hits, total)}, 95 % CI {100 * interval[0]:.1f}-{100 * interval[1]:.1f} %"


def level_confusion(outcomes: list[ScanOutcome]) -> list[str]:
    """Report lines: the detected emboli by true level (rows) and the level their finding
    names (columns), and how many share a finding with an embolus of another level."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    spanning = total = 0
    for o in outcomes:
        for t, named, spans in zip(o.truths, o.levels_named, o.spans_levels, strict=True):
            if named is None:
                continue
            counts[(t.level, named)] += 1
            spanning += spans
            total += 1
    lines = [
        "  level named (detected), true level in rows:",
        f"    {'':<12}" + "".join(f"{named:>11}" for named in LEVELS),
    ]
    for level in LEVELS:
        row = "".join(f"{counts[(level, named)]:>11}" for named in LEVELS)
        lines.append(f"    {level:<12}{row}")
    lines.append(
        f"  sharing a finding with an embolus of another level: {spanning} of {total} detected"
    )
    return lines


def report(outcomes: list[ScanOutcome], threshold: float) -> str:
    lines: list[str] = []
    assessed = [o for o in outcomes if o.verdict is not Verdict.NOT_ASSESSED]
    skipped = [o for o in outcomes if o.verdict is Verdict.NOT_ASSESSED]
    lines.append(
        f"scans: {len(outcomes)}, assessed {len(assessed)}, not assessed {len(skipped)} "
        f"({', '.join(sorted({o.phase for o in skipped})) or 'none'})"
    )
    for o in skipped:
        lines.append(
            f"  not assessed seed {o.seed} ({o.phase}, {len(o.truths)} emboli): {o.reason}"
        )
    unenhanced = [o for o in outcomes if o.phase == "non_contrast"]
    if unenhanced:
        lines.append(
            "non-contrast scans called not assessed: "
            + _pct(sum(o.verdict is Verdict.NOT_ASSESSED for o in unenhanced), len(unenhanced))
        )
    lines.append(f"operating point: threshold {threshold:.3f}")
    groups = {
        "all": assessed,
        **{p: [o for o in assessed if o.phase == p] for p in ("ctpa", "venous")},
    }
    for name, group in groups.items():
        pos = [o for o in group if o.truths and o.probability is not None]
        neg = [o for o in group if not o.truths and o.probability is not None]
        p_pos = [float(o.probability or 0.0) for o in pos]
        p_neg = [float(o.probability or 0.0) for o in neg]
        tp = sum(o.verdict is Verdict.PRESENT for o in pos)
        tn = sum(o.verdict is Verdict.ABSENT for o in neg)
        lines.append("")
        lines.append(f"[{name}] studies: {len(pos)} with PE, {len(neg)} without")
        lines.append(f"  study-level AUC        {auc(p_pos, p_neg):.3f}")
        lines.append(f"  sensitivity            {_pct_ci(tp, len(pos))}")
        lines.append(f"  specificity            {_pct_ci(tn, len(neg))}")
        if p_pos and p_neg:
            roc_sens, roc_at = sensitivity_at_specificity(p_pos, p_neg, 0.9)
            lines.append(
                f"  ROC: sensitivity {100 * roc_sens:.1f} % at specificity >= 90 % "
                f"(threshold {roc_at:.3f} on this split)"
            )
    lines.append("")
    lines.append("per embolus (all assessed scans), detected = overlapped by a reported finding:")
    by_level: dict[str, list[bool]] = defaultdict(list)
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for o in assessed:
        for t, hit in zip(o.truths, o.detected, strict=True):
            by_level[t.level].append(hit)
            by_kind[f"{t.level}, {'occlusive' if t.occlusive else 'partial'}"].append(hit)
            by_kind[f"{t.level}, {o.phase}"].append(hit)
    for level in LEVELS:
        lines.append(f"  {level:<24} {_pct(sum(by_level[level]), len(by_level[level]))}")
    for key in sorted(by_kind):
        lines.append(f"  {key:<24} {_pct(sum(by_kind[key]), len(by_kind[key]))}")
    sides = [s for o in assessed for s in o.side_ok if s is not None]
    levels = [s for o in assessed for s in o.level_ok if s is not None]
    lines.append(f"  side correct (detected) {_pct(sum(sides), len(sides))}")
    lines.append(f"  level correct (detected) {_pct(sum(levels), len(levels))}")
    by_volume = [
        named == (t.level_by_volume or t.level)
        for o in assessed
        for t, hit, named in zip(o.truths, o.detected, o.levels_named, strict=True)
        if hit
    ]
    lines.append(
        "  level correct against where most of each clot lies (detected) "
        + _pct(sum(by_volume), len(by_volume))
    )
    lines.extend(level_confusion(assessed))
    study_level: dict[str, list[bool]] = defaultdict(list)
    for o in assessed:
        if o.truths:
            most_central = min(LEVELS.index(t.level) for t in o.truths)
            study_level[LEVELS[most_central]].append(o.verdict is Verdict.PRESENT)
    lines.append("study sensitivity by most central embolus:")
    for level in LEVELS:
        hits = study_level[level]
        lines.append(f"  {level:<24} {_pct_ci(sum(hits), len(hits))}")
    neg = [o for o in assessed if not o.truths]
    fp = sum(o.false_findings for o in neg)
    lines.append(f"false findings per PE-free scan: {fp / max(len(neg), 1):.2f} ({fp} in total)")
    secs = [o.seconds for o in outcomes]
    lines.append(f"plugin run time per scan: mean {np.mean(secs):.1f} s, max {np.max(secs):.1f} s")
    return "\n".join(lines)


@dataclass
class AnalysedScan:
    seed: int
    truth: SyntheticContrastCT
    """The generated scan without its pixels (``hu`` emptied to save memory)."""
    analysis: Analysis | AlgorithmResult
    """The model's analysis, or the NOT_ASSESSED result."""
    seconds: float


def cached_scan(
    seed: int, cache_dir: Path | None, clots_within_artery: bool = False
) -> SyntheticContrastCT:
    """``eval_scan(seed)``, kept in ``cache_dir`` (keyed by the generator's source) when given:
    generating a scan takes longer than analysing it."""
    if cache_dir is None:
        return eval_scan(seed, clots_within_artery)
    within = "_within" if clots_within_artery else ""
    path = cache_dir / f"pe_eval_{synth.generator_digest()[:10]}{within}_{seed}.pkl"
    if path.exists():
        with path.open("rb") as f:
            cached: SyntheticContrastCT = pickle.load(f)
        return cached
    # The evaluation reads the pixels, the emboli and their labels only.
    ct = replace(
        eval_scan(seed, clots_within_artery),
        artery_classes=np.zeros((0, 0, 0), np.uint8),
        lung_mask=np.zeros((0, 0, 0), bool),
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(ct, f, protocol=pickle.HIGHEST_PROTOCOL)
    return ct


_WORKER: PulmonaryEmbolismDetector | None = None


def _analyse_job(job: tuple[int, str, Path | None, str | None, bool]) -> AnalysedScan:
    global _WORKER
    seed, device, cache_dir, second_stage_file, clots_within_artery = job
    if _WORKER is None:
        _WORKER = PulmonaryEmbolismDetector(second_stage_file)
        _WORKER.load(device)
    return analyse_scan(_WORKER, seed, cache_dir, clots_within_artery)


def analyse_scan(
    detector: PulmonaryEmbolismDetector,
    seed: int,
    cache_dir: Path | None = None,
    clots_within_artery: bool = False,
) -> AnalysedScan:
    """Generate (or load) one held-out scan and run the model on it."""
    ct = cached_scan(seed, cache_dir, clots_within_artery)
    start = time.monotonic()
    analysis = detector.analyse(make_study(ct, seed))
    seconds = time.monotonic() - start
    pixels_dropped = replace(ct, hu=np.zeros((0, 0, 0), np.int16))
    return AnalysedScan(seed, pixels_dropped, analysis, seconds)


def analyse_scans(
    detector: PulmonaryEmbolismDetector,
    seeds: Iterable[int],
    workers: int = 1,
    cache_dir: Path | None = None,
    device: str = "cpu",
    clots_within_artery: bool = False,
) -> list[AnalysedScan]:
    """Generate each held-out scan and run the model on it (the expensive part), in
    ``workers`` processes (run times are then measured with the other processes busy)."""
    seeds = list(seeds)
    if workers <= 1:
        done = (analyse_scan(detector, seed, cache_dir, clots_within_artery) for seed in seeds)
        return _reported(done)
    jobs = [
        (seed, device, cache_dir, detector.second_stage_file, clots_within_artery) for seed in seeds
    ]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return _reported(pool.imap(_analyse_job, jobs))


def _reported(done: Iterable[AnalysedScan]) -> list[AnalysedScan]:
    scans = []
    for n, scan in enumerate(done):
        print(f"analysed {n + 1} (seed {scan.seed}) in {scan.seconds:.1f} s", flush=True)
        scans.append(scan)
    return scans


def decide_and_score(
    detector: PulmonaryEmbolismDetector, scans: list[AnalysedScan], threshold: float
) -> list[ScanOutcome]:
    """Verdicts at ``threshold`` with the detector's calibration, scored against the truth."""
    outcomes = []
    for n, scan in enumerate(scans):
        ct = scan.truth
        start = time.monotonic()
        if isinstance(scan.analysis, AlgorithmResult):
            result = scan.analysis
        else:
            result = detector.decide(scan.analysis, threshold)
        seconds = scan.seconds + time.monotonic() - start
        outcome = score(ct, result, scan.seed, seconds)
        outcomes.append(outcome)
        levels = ",".join(t.level[0] for t in ct.clots) or "-"
        print(
            f"scan {n + 1:3d} seed {scan.seed} {ct.phase:<12} {ct.clot_labels.shape} "
            f"slice {ct.spacing_mm[0]:.2f} emboli [{levels}] -> {result.verdict.value} "
            f"p={result.probability or 0:.3f} detected {sum(outcome.detected)}/{len(ct.clots)} "
            f"extra {outcome.false_findings} {seconds:.1f} s",
            flush=True,
        )
    return outcomes


def assessed(scans: list[AnalysedScan]) -> Iterator[tuple[AnalysedScan, Analysis]]:
    """The scans the plugin assessed, each with its analysis (NOT_ASSESSED ones left out)."""
    for scan in scans:
        if not isinstance(scan.analysis, AlgorithmResult):
            yield scan, scan.analysis


def candidate_masses(scans: list[AnalysedScan]) -> tuple[list[float], list[bool]]:
    """Every candidate component of the assessed scans (no threshold): its probability mass
    and whether it overlaps a true embolus."""
    masses: list[float] = []
    labels: list[bool] = []
    for scan, a in assessed(scans):
        truth = scan.truth.clot_labels > 0
        for e in postprocess.find_emboli(
            a.prob, a.zone, a.trunk, a.grid, a.input_shape, a.affine, 0.0, None, 10_000
        ):
            masses.append(e.mass_ml)
            labels.append(bool(np.any(truth & e.mask)))
    return masses, labels


def second_stage_record(detector: PulmonaryEmbolismDetector) -> dict[str, object] | None:
    """What model.json records of the second stage the operating point is chosen with: its
    file, sha256 and candidate floor (None: the detector runs without one)."""
    stage = detector.second_stage
    if stage is None:
        return None
    return {"file": stage.file, "sha256": stage.sha256, "candidate_floor": DEFECT_FLOOR}


def stage_thresholds(
    detector: PulmonaryEmbolismDetector,
    scans: list[AnalysedScan],
    min_specificity: float | None = None,
) -> tuple[float, float | None]:
    """The network's threshold and the second stage's (None without one), chosen on these
    scans with the detector's calibration: first one threshold for both stages'
    probabilities (max Youden J, or with ``min_specificity`` the highest sensitivity at that
    specificity or more), which becomes the second stage's; then the network's own
    (``network_threshold``, by the same criterion) with the second stage at it.

    The two scales differ: the network's candidates are calibrated (Platt, on their mass)
    while the second stage's network saturates near 1 on true and false candidates alike, so
    the single threshold lands where the second stage's false candidates end, well above the
    network's (0.3.0: 0.893 where the network's highest candidate on a PE-free study is
    0.627), and a network finding between them is lost for nothing."""
    network: list[float] = []
    second: list[float] = []
    is_pe: list[bool] = []
    for scan, a in assessed(scans):
        network.append(postprocess.study_probability(a.prob, a.zone, detector.calibration))
        second.append(max((d.probability for d in a.defects), default=0.0))
        is_pe.append(bool(scan.truth.clots))
    both = [max(n, s) for n, s in zip(network, second, strict=True)]
    pos = [p for p, y in zip(both, is_pe, strict=True) if y]
    neg = [p for p, y in zip(both, is_pe, strict=True) if not y]
    single = round(youden_threshold(pos, neg, min_specificity), 4)
    if detector.second_stage is None:
        return single, None
    chosen = network_threshold(network, second, is_pe, single, min_specificity)
    return round(chosen, 4), single


CHOICE_SPLITS = ("tuning", "validation")
"""The splits an operating point may be chosen on; confirmation and test only measure."""


def fit_operating_point(
    detector: PulmonaryEmbolismDetector,
    scans: list[AnalysedScan],
    seeds: range,
    card_path: Path,
    split: str = "validation",
    min_specificity: float | None = None,
) -> float:
    """Fit the candidate calibration and choose the thresholds (``stage_thresholds``) on these
    scans of ``split`` (one of ``CHOICE_SPLITS``); store them in model.json and in
    ``detector``."""
    if split not in CHOICE_SPLITS:
        raise ValueError(f"an operating point is chosen on {' or '.join(CHOICE_SPLITS)} only")
    masses, labels = candidate_masses(scans)
    calibration = postprocess.fit_calibration(masses, labels)
    detector.calibration = calibration
    threshold, second_threshold = stage_thresholds(detector, scans, min_specificity)
    operating: dict[str, object] = {"threshold": threshold}
    if second_threshold is not None:
        operating["second_stage_threshold"] = second_threshold
    detector.second_stage_shift = second_stage_shift_from_card({"operating_point": operating})
    pos: list[float] = []
    neg: list[float] = []
    for scan, a in assessed(scans):
        p = detector.study_probability(a)
        (pos if scan.truth.clots else neg).append(p)
    card = json.loads(card_path.read_text())
    card["calibration"] = {
        "intercept": round(calibration.intercept, 6),
        "slope": round(calibration.slope, 6),
        "formula": "sigmoid(intercept + slope * ln(mass_ml + 0.01)); mass_ml = sum of the "
        "embolus probabilities of a candidate component's voxels (>= 0.5) times 0.008 mL",
        "method": "logistic regression of 'overlaps a true embolus' on every candidate "
        f"component of the {split} split",
        "candidates": {"emboli": int(sum(labels)), "not_emboli": len(labels) - int(sum(labels))},
    }
    stage = second_stage_record(detector)
    if stage is not None:
        card["second_stage"] = stage
    else:
        card.pop("second_stage", None)
    objective = (
        "maximum Youden J (sensitivity + specificity)"
        if min_specificity is None
        else f"maximum sensitivity at a specificity of at least {100 * min_specificity:g} %"
    )
    card["operating_point"] = {
        **operating,
        "criterion": f"{objective} on the {split} split: one "
        "threshold for both stages, which becomes the second stage's; then the network's own, "
        "the middle of the widest range of that maximum with the second stage at its threshold. "
        "The second stage's probabilities are shifted in logit by logit(threshold) - "
        "logit(second_stage_threshold), so that one threshold (the site's, or this) applies "
        "both",
        "split": split,
        "min_specificity": min_specificity,
        "seeds": [seeds.start, seeds.stop - 1],
        "studies": {"with_pe": len(pos), "without_pe": len(neg)},
        "auc": round(auc(pos, neg), 4),
        "sensitivity": round(float(np.mean(np.asarray(pos) >= threshold)), 4),
        "specificity": round(float(np.mean(np.asarray(neg) < threshold)), 4),
        "chosen": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    detector.default_threshold = threshold
    return threshold


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=sorted(SPLITS), default="test")
    parser.add_argument("--scans", type=int, default=80)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument(
        "--write-operating-point",
        action="store_true",
        help="fit the candidate calibration and choose the thresholds (max Youden J, "
        "stage_thresholds) on these scans; write them to model.json",
    )
    parser.add_argument(
        "--min-specificity",
        type=float,
        default=None,
        help="with --write-operating-point: choose the thresholds giving the highest "
        "sensitivity at this specificity or more (e.g. 0.95) instead of maximum Youden J",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--second-stage",
        choices=FILES,
        default=None,
        help="run this second-stage scorer instead of the one model.json records (compare "
        "them; with --write-operating-point it becomes the recorded one)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes (run times are then not comparable)"
    )
    parser.add_argument(
        "--scan-cache", type=Path, default=None, help="keep the generated scans in this folder"
    )
    parser.add_argument(
        "--clots-within-artery",
        action="store_true",
        help="scans whose clots never reach back into a more proximal artery, so that each is "
        "labelled by the most proximal artery it fills (a radiologist's level); the models "
        "are trained on clots that may",
    )
    args = parser.parse_args(argv)
    if args.write_operating_point and args.split not in CHOICE_SPLITS:
        parser.error(
            f"--write-operating-point chooses on the {' or '.join(CHOICE_SPLITS)} split; "
            f"{args.split} only measures"
        )
    if args.min_specificity is not None and not (
        args.write_operating_point and 0.0 < args.min_specificity < 1.0
    ):
        parser.error("--min-specificity is a specificity (0-1) for --write-operating-point")
    if args.write_operating_point and args.clots_within_artery:
        parser.error(
            "--write-operating-point chooses the shipped thresholds on the scans the models "
            "are trained on; not with --clots-within-artery"
        )
    logging.basicConfig(level=logging.WARNING)
    start = time.monotonic()
    if not 0 < args.scans <= SPLIT_SCANS_MAX:
        parser.error(f"--scans must be between 1 and {SPLIT_SCANS_MAX}")
    seeds = range(SPLITS[args.split], SPLITS[args.split] + args.scans)
    detector = PulmonaryEmbolismDetector(args.second_stage)
    detector.load(args.device)
    scans = analyse_scans(
        detector, seeds, args.workers, args.scan_cache, args.device, args.clots_within_artery
    )
    used = detector.default_threshold if args.threshold is None else args.threshold
    if args.write_operating_point:
        card = Path(str(resources.files("algorithms.pe").joinpath("model.json")))
        used = fit_operating_point(detector, scans, seeds, card, args.split, args.min_specificity)
        print(f"{detector.calibration} and operating point {used:.4f} written to {card}")
    outcomes = decide_and_score(detector, scans, used)
    print()
    within = ", clots within their artery" if args.clots_within_artery else ""
    print(f"split {args.split}, seeds {seeds.start}-{seeds.stop - 1}{within}")
    stage = detector.second_stage
    print(
        "second stage: "
        + ("none" if stage is None else stage.file)
        + ("" if stage is None or stage.recorded else " (not the one model.json records)")
        + (
            ""
            if stage is None
            else f", its threshold {shift_probability(used, -detector.second_stage_shift):.4f}"
        )
    )
    print(report(outcomes, used))
    print(f"total evaluation time {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
