"""Held-out evaluation of the MS lesion plugin on synthetic FLAIR exams and follow-up pairs (CLI)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from algorithms import codes
from algorithms.contract import (
    AlgorithmResult,
    Finding,
    PriorFinding,
    PriorStudy,
    SeriesInput,
    StudyInput,
    Verdict,
    VolumeGeometry,
)
from algorithms.ms_lesion.plugin import MSLesionSegmenter
from training.ms_lesion import synth

EXAM_SEED_BASE = 710_000
"""Held-out single exams use seeds EXAM_SEED_BASE + i (training: 300000 + i, i < 1000;
post-processing thresholds were tuned on seeds 700000-700007)."""
PAIR_SEED_BASE = 810_000
SMALL_MM3 = 14.0
"""Volume of a 3 mm sphere: lesions below it are reported separately."""
FLAIR_HEADER = {
    "Modality": "MR",
    "SeriesDescription": "AX T2 FLAIR",
    "ScanningSequence": "SE\\IR",
    "InversionTime": "2500",
}


def series_of(
    exam: synth.SyntheticFlair, uid: str, header: Mapping[str, str] | None = None
) -> SeriesInput:
    """Wrap a synthetic exam as the router would: float32 values, LPS affine, MR header."""
    geometry = VolumeGeometry(exam.affine.copy(), exam.image.shape, f"{uid}.1")
    return SeriesInput(
        series_instance_uid=f"{uid}.2",
        array=exam.image.astype(np.float32),
        geometry=geometry,
        header=dict(FLAIR_HEADER if header is None else header),
    )


def make_study(
    exam: synth.SyntheticFlair,
    uid: str = "2.25.1",
    priors: tuple[PriorStudy, ...] = (),
    header: Mapping[str, str] | None = None,
) -> StudyInput:
    return StudyInput(study_instance_uid=uid, series=series_of(exam, uid, header), priors=priors)


def prior_findings_of(
    result: AlgorithmResult, affine: npt.NDArray[np.float64]
) -> tuple[PriorFinding, ...]:
    """What the router hands a follow-up run from radrouter's result on the prior exam."""
    out = []
    for f in result.findings:
        lps = affine @ np.array([*f.centre_voxel, 1.0])
        volume = next((m.value for m in f.measurements if m.name == codes.VOLUME), None)
        out.append(
            PriorFinding(
                tracking_id=f.tracking_id,
                tracking_uid=f"2.25.{int(hashlib.sha256(f.tracking_id.encode()).hexdigest()[:24], 16)}",
                finding_type=f.finding_type,
                centre_lps=(float(lps[0]), float(lps[1]), float(lps[2])),
                volume_mm3=volume,
            )
        )
    return tuple(out)


def _change_of(finding: Finding) -> str:
    for q in finding.qualifiers:
        if q.name == codes.CHANGED_STATUS:
            return q.value.meaning
    return ""


@dataclass
class ExamOutcome:
    mode: str
    truth_voxels: int
    predicted_voxels: int
    overlap_voxels: int
    truths: list[tuple[synth.LesionTruth, bool, str]] = field(default_factory=list)
    """(lesion, detected, predicted site) per truth lesion."""
    predictions: list[bool] = field(default_factory=list)
    """Per finding: overlaps a true lesion."""
    verdict: Verdict = Verdict.ABSENT
    seconds: float = 0.0


def score_exam(exam: synth.SyntheticFlair, result: AlgorithmResult, seconds: float) -> ExamOutcome:
    truth = exam.lesion_labels
    predicted = np.zeros(truth.shape, dtype=bool)
    outcome = ExamOutcome(exam.protocol.mode, int((truth > 0).sum()), 0, 0)
    site_of_finding: list[str] = []
    for f in result.findings:
        assert f.mask is not None
        predicted |= f.mask
        outcome.predictions.append(bool((truth[f.mask] > 0).any()))
        site_of_finding.append(f.finding_site.meaning if f.finding_site else "")
    outcome.predicted_voxels = int(predicted.sum())
    outcome.overlap_voxels = int((predicted & (truth > 0)).sum())
    for les in exam.lesions:
        hit = [
            n
            for n, f in enumerate(result.findings)
            if f.mask is not None and (f.mask & (truth == les.number)).any()
        ]
        outcome.truths.append((les, bool(hit), site_of_finding[hit[0]] if hit else ""))
    outcome.verdict = result.verdict
    outcome.seconds = seconds
    return outcome


def _rate(hits: int, total: int) -> str:
    return f"{100.0 * hits / total:5.1f} % ({hits}/{total})" if total else "   n/a"


def _f1(detected: int, n_truth: int, true_pred: int, n_pred: int) -> str:
    recall = detected / n_truth if n_truth else 0.0
    precision = true_pred / n_pred if n_pred else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f"F1 {f1:.3f} (recall {recall:.3f} = {detected}/{n_truth}, precision {precision:.3f} = {true_pred}/{n_pred})"


def report_exams(outcomes: list[ExamOutcome]) -> str:
    lines = [
        f"single exams: {len(outcomes)} ({sum(o.mode == '2d' for o in outcomes)} 2-D thick-slice, {sum(o.mode == '3d' for o in outcomes)} 3-D)"
    ]
    for label, group in (
        ("all", outcomes),
        ("2-D", [o for o in outcomes if o.mode == "2d"]),
        ("3-D", [o for o in outcomes if o.mode == "3d"]),
    ):
        if not group:
            continue
        t = sum(o.truth_voxels for o in group)
        p = sum(o.predicted_voxels for o in group)
        ov = sum(o.overlap_voxels for o in group)
        dice = 2 * ov / (t + p) if t + p else 1.0
        per_exam = [
            2 * o.overlap_voxels / (o.truth_voxels + o.predicted_voxels)
            for o in group
            if o.truth_voxels
        ]
        lines.append(
            f"  Dice {label:<4} pooled {dice:.3f}, mean per exam with lesions {np.mean(per_exam) if per_exam else float('nan'):.3f}"
        )
        for size_label, keep in (
            ("all sizes", lambda le: True),
            (">= 3 mm", lambda le: le.volume_mm3 >= SMALL_MM3),
        ):
            truths = [(le, d) for o in group for le, d, _ in o.truths if keep(le)]
            preds = [p for o in group for p in o.predictions]
            lines.append(
                f"  lesion-wise {label:<4} {size_label:<9} {_f1(sum(d for _, d in truths), len(truths), sum(preds), len(preds))}"
            )
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for o in outcomes:
        for le, d, _ in o.truths:
            if le.volume_mm3 >= SMALL_MM3:
                by_kind[le.kind].append(d)
    for kind in synth.LESION_KINDS:
        lines.append(
            f"  sensitivity {kind:<16} (>= 3 mm) {_rate(sum(by_kind[kind]), len(by_kind[kind]))}"
        )
    expected_site = {
        "periventricular": codes.CEREBRAL_WHITE_MATTER.meaning,
        "juxtacortical": codes.CEREBRAL_WHITE_MATTER.meaning,
        "deep": codes.CEREBRAL_WHITE_MATTER.meaning,
        "infratentorial": "infratentorial",
    }
    agree = total = 0
    for o in outcomes:
        for le, d, site in o.truths:
            if not d:
                continue
            total += 1
            infra = site in (codes.BRAIN_STEM.meaning, codes.CEREBELLUM.meaning)
            agree += (expected_site[le.kind] == "infratentorial") == infra
    lines.append(f"  supra/infratentorial site agreement of detected lesions {_rate(agree, total)}")
    empty = [o for o in outcomes if not o.truths]
    lines.append(
        f"  lesion-free exams stated ABSENT {_rate(sum(o.verdict is Verdict.ABSENT for o in empty), len(empty))}"
    )
    secs = [o.seconds for o in outcomes]
    lines.append(
        f"  plugin run time per exam: mean {np.mean(secs):.1f} s, max {np.max(secs):.1f} s"
    )
    return "\n".join(lines)


@dataclass
class PairOutcome:
    new_truth: int = 0
    new_found: int = 0
    false_new: int = 0
    enlarged_truth: int = 0
    enlarged_found: int = 0
    false_enlarging: int = 0
    kept_ids: int = 0
    keepable_ids: int = 0
    compared: bool = False
    seconds: float = 0.0


def score_pair(
    pair: synth.FollowupPair, prior_result: AlgorithmResult, result: AlgorithmResult, seconds: float
) -> PairOutcome:
    out = PairOutcome(compared="compared with prior" in result.reason, seconds=seconds)
    status = {c.number: c.status for c in pair.changes}
    visible = {le.number: le for le in pair.current.lesions}
    cur_labels = pair.current.lesion_labels
    prior_labels = pair.prior.lesion_labels

    def numbers_under(f: Finding, labels: npt.NDArray[np.int16]) -> set[int]:
        assert f.mask is not None
        return {int(n) for n in np.unique(labels[f.mask]) if n > 0}

    found_as: dict[int, set[str]] = defaultdict(set)
    for f in result.findings:
        under = numbers_under(f, cur_labels)
        change = _change_of(f)
        for n in under:
            found_as[n].add(change)
        if change == codes.NEW.meaning and not any(status.get(n) == "new" for n in under):
            out.false_new += 1
        if change == codes.INCREASED.meaning and not any(
            status.get(n) == "enlarged" for n in under
        ):
            out.false_enlarging += 1
    for n, le in visible.items():
        if le.volume_mm3 < SMALL_MM3:
            continue
        if status[n] == "new":
            out.new_truth += 1
            out.new_found += codes.NEW.meaning in found_as[n]
        elif status[n] == "enlarged":
            out.enlarged_truth += 1
            out.enlarged_found += codes.INCREASED.meaning in found_as[n]
    prior_id: dict[int, str] = {}
    for f in prior_result.findings:
        for n in numbers_under(f, prior_labels):
            prior_id.setdefault(n, f.tracking_id)
    for f in result.findings:
        for n in numbers_under(f, cur_labels):
            if n in prior_id and status.get(n) in ("stable", "enlarged", "shrunk"):
                out.keepable_ids += 1
                out.kept_ids += f.tracking_id == prior_id[n]
    return out


def report_pairs(outcomes: list[PairOutcome]) -> str:
    n = len(outcomes)
    lines = [
        f"follow-up pairs: {n} ({sum(o.compared for o in outcomes)} compared with their prior)"
    ]
    nt, nf = sum(o.new_truth for o in outcomes), sum(o.new_found for o in outcomes)
    et, ef = sum(o.enlarged_truth for o in outcomes), sum(o.enlarged_found for o in outcomes)
    lines.append(f"  new-lesion detection rate (new lesions >= 3 mm marked New) {_rate(nf, nt)}")
    lines.append(
        f"  false new lesions per pair {sum(o.false_new for o in outcomes) / max(n, 1):.2f} ({sum(o.false_new for o in outcomes)} in total)"
    )
    lines.append(f"  enlarging-lesion detection rate (>= 3 mm, marked Increased) {_rate(ef, et)}")
    lines.append(
        f"  false enlarging lesions per pair {sum(o.false_enlarging for o in outcomes) / max(n, 1):.2f}"
    )
    lines.append(
        f"  tracking identifier carried over (lesions seen in both exams) {_rate(sum(o.kept_ids for o in outcomes), sum(o.keepable_ids for o in outcomes))}"
    )
    lines.append(
        f"  run time per follow-up (prior + current, registration): mean {np.mean([o.seconds for o in outcomes]):.1f} s"
    )
    return "\n".join(lines)


def eval_exam(seed: int) -> synth.SyntheticFlair:
    return synth.generate_flair(seed)


def evaluate_exams(plugin: MSLesionSegmenter, seeds: Iterable[int]) -> list[ExamOutcome]:
    outcomes = []
    for n, seed in enumerate(seeds):
        exam = eval_exam(seed)
        start = time.monotonic()
        result = plugin.run(make_study(exam, f"2.25.{seed}"))
        outcome = score_exam(exam, result, time.monotonic() - start)
        outcomes.append(outcome)
        missed = sum(1 for _, d, _ in outcome.truths if not d)
        print(
            f"exam {n + 1:3d} seed {seed} {exam.protocol.mode} {exam.image.shape} "
            f"spacing {tuple(round(s, 2) for s in exam.spacing_mm)}: {len(exam.lesions)} lesions, "
            f"{missed} missed, {sum(not p for p in outcome.predictions)} FP, {outcome.seconds:.1f} s",
            flush=True,
        )
    return outcomes


def run_followup(
    plugin: MSLesionSegmenter, pair: synth.FollowupPair, seed: int
) -> tuple[AlgorithmResult, AlgorithmResult]:
    """Run the prior exam, then the current one with the prior and its findings (as the router)."""
    prior_result = plugin.run(make_study(pair.prior, f"2.25.{seed}1"))
    prior = PriorStudy(
        study_instance_uid=f"2.25.{seed}1",
        series=series_of(pair.prior, f"2.25.{seed}1"),
        study_date="20240115",
        findings=prior_findings_of(prior_result, pair.prior.affine),
    )
    result = plugin.run(make_study(pair.current, f"2.25.{seed}2", priors=(prior,)))
    return prior_result, result


def evaluate_pairs(plugin: MSLesionSegmenter, seeds: Iterable[int]) -> list[PairOutcome]:
    outcomes = []
    for n, seed in enumerate(seeds):
        pair = synth.generate_followup_pair(seed)
        start = time.monotonic()
        prior_result, result = run_followup(plugin, pair, seed)
        outcome = score_pair(pair, prior_result, result, time.monotonic() - start)
        outcomes.append(outcome)
        print(
            f"pair {n + 1:3d} seed {seed} {pair.prior.protocol.mode}->{pair.current.protocol.mode}: "
            f"new {outcome.new_found}/{outcome.new_truth}, false new {outcome.false_new}, "
            f"enlarged {outcome.enlarged_found}/{outcome.enlarged_truth}, "
            f"ids kept {outcome.kept_ids}/{outcome.keepable_ids}, {outcome.seconds:.1f} s",
            flush=True,
        )
    return outcomes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exams", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    plugin = MSLesionSegmenter()
    plugin.load(args.device)
    start = time.monotonic()
    exams = evaluate_exams(plugin, range(EXAM_SEED_BASE, EXAM_SEED_BASE + args.exams))
    pairs = evaluate_pairs(plugin, range(PAIR_SEED_BASE, PAIR_SEED_BASE + args.pairs))
    print()
    print(report_exams(exams))
    print(report_pairs(pairs))
    print(f"total evaluation time {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
