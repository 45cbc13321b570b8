"""The validation report: the figures as JSON, and an HTML page with the ROC and calibration
plots (inline SVG, no script, nothing fetched) for the hospital's AI governance group."""

from __future__ import annotations

import datetime
import html
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from algorithms.contract import Verdict
from router.validate import localisation, metrics
from router.validate.run import CaseOutcome, ValidationRun

_SIZE = 320
_MARGIN = 48


def summarise(run: ValidationRun) -> dict[str, Any]:
    """Every figure of the report, as plain data."""
    assessed = [c for c in run.cases if c.assessed]
    summary: dict[str, Any] = {
        "algorithm": {"name": run.info.name, "version": run.info.version},
        "made_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "source": run.source,
        "cases": len(run.cases),
        "assessed": len(assessed),
        "positives": sum(1 for c in assessed if c.truth.positive),
        "negatives": sum(1 for c in assessed if not c.truth.positive),
        "configured_threshold": run.threshold,
        "truth_without_study": list(run.truth_without_study),
        "studies_without_truth": run.studies_without_truth,
        "not_assessed": dict(Counter(c.reason for c in run.cases if not c.assessed).most_common()),
        **_figures(assessed),
        "by_scanner": {
            scanner or "(unknown)": _figures([c for c in assessed if c.scanner == scanner])
            for scanner in sorted({c.scanner for c in assessed})
        },
        "localisation": localisation.figures(run.cases, run.hit_mm),
    }
    return summary


def write_report(run: ValidationRun, folder: Path) -> tuple[Path, Path]:
    """``report.json`` and ``report.html`` in ``folder`` (made if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(run)
    json_path, html_path = folder / "report.json", folder / "report.html"
    json_path.write_text(json.dumps(_finite(summary), indent=2) + "\n", encoding="utf-8")
    html_path.write_text(_html(run, summary), encoding="utf-8")
    return json_path, html_path


def _figures(cases: Sequence[CaseOutcome]) -> dict[str, Any]:
    scores = [float(c.score) for c in cases if c.score is not None]
    labels = [c.truth.positive for c in cases if c.score is not None]
    interval = metrics.auc_interval(scores, labels)
    youden = metrics.youden_threshold(scores, labels)
    operating = metrics.rates_of([c.verdict is Verdict.PRESENT for c in cases], labels)
    return {
        "n": len(cases),
        "auc": metrics.auc(scores, labels),
        "auc_95ci": list(interval) if interval is not None else None,
        "at_operating_point": _rates(operating),
        "at_suggested_threshold": _rates(youden) if youden is not None else None,
    }


def _rates(rates: metrics.Rates) -> dict[str, Any]:
    return {
        "threshold": None if math.isnan(rates.threshold) else rates.threshold,
        "sensitivity": rates.sensitivity,
        "sensitivity_95ci": _interval(rates.true_positives, rates.false_negatives),
        "specificity": rates.specificity,
        "specificity_95ci": _interval(rates.true_negatives, rates.false_positives),
        "tp": rates.true_positives,
        "fn": rates.false_negatives,
        "tn": rates.true_negatives,
        "fp": rates.false_positives,
    }


def _finite(value: Any) -> Any:
    """NaN (an empty class) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _interval(hits: int, misses: int) -> list[float] | None:
    interval = metrics.proportion_interval(hits, hits + misses)
    return list(interval) if interval is not None else None


def _pct(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def _pct_ci(rates: dict[str, Any], name: str) -> str:
    """``sensitivity`` or ``specificity`` of ``_rates`` with its 95 % Wilson interval."""
    interval = rates[f"{name}_95ci"]
    if interval is None:
        return _pct(rates[name])
    return f"{_pct(rates[name])} (95 % CI {100 * interval[0]:.1f} to {100 * interval[1]:.1f} %)"


def _html(run: ValidationRun, summary: dict[str, Any]) -> str:
    assessed = [c for c in run.cases if c.assessed]
    scores = [float(c.score) for c in assessed if c.score is not None]
    labels = [c.truth.positive for c in assessed if c.score is not None]
    e = html.escape
    info = summary["algorithm"]
    auc, interval = summary["auc"], summary["auc_95ci"]
    auc_text = "—" if auc is None else f"{auc:.3f}"
    if interval is not None:
        auc_text += f" (95 % CI {interval[0]:.3f} to {interval[1]:.3f}, bootstrap)"
    rows = [
        ("Cases labelled in the truth file and found", str(summary["cases"])),
        (
            "Assessed",
            f"{summary['assessed']} ({summary['positives']} positive, {summary['negatives']} negative)",
        ),
        ("AUC", auc_text),
    ]
    operating = summary["at_operating_point"]
    threshold = run.threshold if run.threshold is not None else "the algorithm's default"
    rows.append(
        (
            f"At the operating point ({threshold})",
            f"sensitivity {_pct_ci(operating, 'sensitivity')}, "
            f"specificity {_pct_ci(operating, 'specificity')}"
            f" (TP {operating['tp']}, FN {operating['fn']}, TN {operating['tn']}, FP {operating['fp']})",
        )
    )
    suggested = summary["at_suggested_threshold"]
    if suggested is not None:
        rows.append(
            (
                f"At the suggested threshold {suggested['threshold']:.3f} (largest Youden's J)",
                f"sensitivity {_pct(suggested['sensitivity'])}, specificity {_pct(suggested['specificity'])}",
            )
        )
    scanner_rows = "".join(
        f"<tr><td>{e(name)}</td><td>{figures['n']}</td>"
        f"<td>{'—' if figures['auc'] is None else format(figures['auc'], '.3f')}</td>"
        f"<td>{_pct(figures['at_operating_point']['sensitivity'])}</td>"
        f"<td>{_pct(figures['at_operating_point']['specificity'])}</td></tr>"
        for name, figures in summary["by_scanner"].items()
    )
    not_assessed = (
        "".join(
            f"<tr><td>{e(reason)}</td><td>{count}</td></tr>"
            for reason, count in summary["not_assessed"].items()
        )
        or "<tr><td>none</td><td>0</td></tr>"
    )
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    missing = ""
    if summary["truth_without_study"]:
        missing = (
            f"<p>{len(summary['truth_without_study'])} studies of the truth file were not found "
            "in the folder (listed in report.json).</p>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Local validation: {e(info["name"])} {e(info["version"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; }}
figure {{ display: inline-block; margin: 0 2em 1em 0; }}
</style></head><body>
<h1>Local validation: {e(info["name"])} {e(info["version"])}</h1>
<p>Made {e(summary["made_at"])} by <code>radrouter validate</code> on {e(summary["source"])}.
AI results, not verified; figures on this hospital's cases, against its truth file.</p>
<table>{table}</table>
{missing}
<figure>{_roc_svg(scores, labels)}<figcaption>ROC</figcaption></figure>
<figure>{_calibration_svg(scores, labels)}<figcaption>Calibration (bins of 0.1)</figcaption></figure>
<h2>Per scanner model</h2>
<table><tr><th>Scanner</th><th>Cases</th><th>AUC</th><th>Sensitivity</th><th>Specificity</th></tr>{scanner_rows}</table>
<h2>Not assessed or not run</h2>
<table><tr><th>Reason</th><th>Cases</th></tr>{not_assessed}</table>
{_localisation_html(summary["localisation"])}</body></html>
"""


def _localisation_html(figures: dict[str, Any] | None) -> str:
    """The localisation figures and their cases; nothing when the truth file has no location."""
    if figures is None:
        return ""
    e = html.escape

    def point(values: Sequence[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    rows = [
        (
            "Positive cases found at the right place (localisation sensitivity)",
            f"{figures['localised']} of {figures['positives_with_location']} "
            f"({_pct(figures['sensitivity'])})",
        ),
        (
            "Positive cases with findings, none at the truth location",
            str(figures["positives_found_elsewhere"]),
        ),
        (
            "Truth locations found",
            f"{figures['lesions_found']} of {figures['lesions']} ({_pct(figures['lesion_sensitivity'])})",
        ),
        (
            "False-positive findings per case",
            f"{figures['false_positives_per_case']:.2f} ({figures['false_positive_findings']} "
            f"findings on {figures['cases_judged']} cases: the negatives and the positives "
            "with a location)",
        ),
    ]
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    cases = []
    for case in figures["cases"]:
        locations = "<br>".join(
            f"{point(p)} {'found' if found else 'missed'}"
            for p, found in zip(case["locations"], case["found"], strict=True)
        )
        wrong = "<br>".join(
            f"{point(f['centre_lps'])} (probability {f['probability']:.2f}"
            + (
                ""
                if f["nearest_mm"] is None
                else f", {f['nearest_mm']:.1f} mm from the nearest truth location"
            )
            + ")"
            for f in case["findings"]
            if not f["at_truth"]
        )
        cases.append(
            f"<tr><td>{e(case['study_uid'])}</td><td>{e(case['scanner'] or '(unknown)')}</td>"
            f"<td>{e(case['truth'])}</td><td>{locations or '—'}</td>"
            f"<td>{e(case['verdict'] or '—')}</td><td>{wrong or '—'}</td></tr>"
        )
    return f"""<h2>Localisation (at the operating point)</h2>
<p>A finding is at a truth location when its outline or mask holds it, or its centre lies within
{figures["hit_mm"]:g} mm of it. Locations in patient coordinates, mm (LPS).</p>
<table>{table}</table>
<table><tr><th>Study UID</th><th>Scanner</th><th>Truth</th><th>Truth locations</th>
<th>Verdict</th><th>False-positive findings</th></tr>{"".join(cases)}</table>
"""


def _plot(
    points: Sequence[tuple[float, float]], x_label: str, y_label: str, markers: bool = False
) -> str:
    def xy(x: float, y: float) -> str:
        return f"{_MARGIN + x * _SIZE:.1f},{_MARGIN + (1 - y) * _SIZE:.1f}"

    bottom, right = _MARGIN + _SIZE, _MARGIN + _SIZE
    ticks = "".join(
        f'<text x="{_MARGIN + t * _SIZE:.1f}" y="{bottom + 14}" font-size="11" '
        f'text-anchor="middle">{t:g}</text>'
        f'<text x="{_MARGIN - 4}" y="{_MARGIN + (1 - t) * _SIZE + 4:.1f}" font-size="11" '
        f'text-anchor="end">{t:g}</text>'
        for t in (0, 0.5, 1)
    )
    frame = (
        f'<rect x="{_MARGIN}" y="{_MARGIN}" width="{_SIZE}" height="{_SIZE}" fill="none" stroke="#888"/>'
        f'<line x1="{_MARGIN}" y1="{bottom}" x2="{right}" y2="{_MARGIN}" '
        'stroke="#ccc" stroke-dasharray="4"/>'
        f"{ticks}"
        f'<text x="{_MARGIN + _SIZE / 2}" y="{bottom + 30}" font-size="12" '
        f'text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="12" y="{_MARGIN + _SIZE / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {_MARGIN + _SIZE / 2})">{html.escape(y_label)}</text>'
    )
    line = ""
    if points:
        line = (
            '<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="'
            + " ".join(xy(x, y) for x, y in points)
            + '"/>'
        )
    dots = ""
    if markers:
        dots = "".join(
            f'<circle cx="{xy(x, y).split(",")[0]}" cy="{xy(x, y).split(",")[1]}" r="3" fill="#1f5fbf"/>'
            for x, y in points
        )
    full = _SIZE + 2 * _MARGIN
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{full}" height="{full}">{frame}{line}{dots}</svg>'


def _roc_svg(scores: Sequence[float], labels: Sequence[bool]) -> str:
    axes = ("1 - specificity", "sensitivity")
    if all(labels) or not any(labels):
        return _plot([], *axes)
    return _plot(metrics.roc_points(scores, labels), *axes)


def _calibration_svg(scores: Sequence[float], labels: Sequence[bool]) -> str:
    bins = metrics.calibration(scores, labels)
    return _plot(
        [(b.mean_score, b.observed_rate) for b in bins],
        "mean score in the bin",
        "observed positive rate",
        markers=True,
    )
