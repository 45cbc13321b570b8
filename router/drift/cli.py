"""``radrouter drift`` (each algorithm's drift state, features and reasons) and ``radrouter
drift baseline ALGORITHM`` (record its baseline), through a running router's API or the
database file, as ``radrouter status`` and ``usage`` read."""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from config.schema import DriftConfig

if TYPE_CHECKING:
    from router.admin import Source

DAY_S = 86400.0


def parse_when(text: str) -> float:
    """A date (YYYY-MM-DD, local midnight) or date and time (ISO 8601, local unless it says)
    as Unix time."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("give a date YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    return moment.timestamp()


def run_drift(
    args: argparse.Namespace,
    open_source: Callable[[argparse.Namespace], Source | None],
    drift_config: Callable[[], DriftConfig],
) -> int:
    from router.admin import ApiSource, DatabaseSource, SourceError

    if args.action == "baseline" and not args.algorithm:
        print("drift baseline: name the algorithm (radrouter drift baseline NAME)", file=sys.stderr)
        return 1
    source = open_source(args)
    if source is None:
        return 2
    try:
        if args.action == "baseline":
            answer = _record(source, args, drift_config())
            print(
                f"baseline of {answer['algorithm']} recorded: {answer['results']} results, "
                f"{_day(answer['period_start'])} to {_day(answer['period_end'])}"
            )
            return 0
        if isinstance(source, ApiSource):
            params = {} if args.algorithm is None else {"algorithm": args.algorithm}
            report = source._call("GET", "/api/drift", params=params).json()
        elif isinstance(source, DatabaseSource):
            report = _database_report(source.db, drift_config(), args.algorithm)
        else:  # pragma: no cover - the two sources there are
            raise SourceError("unknown source")
    except SourceError as exc:
        print(f"drift: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"drift: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report), end="")
    return 0


def _database_report(db: Any, config: DriftConfig, algorithm: str | None) -> dict[str, Any]:
    from router.drift.api import report_json
    from router.drift.monitor import DriftMonitor

    return report_json(DriftMonitor(db, lambda: config), algorithm)


def _record(source: Source, args: argparse.Namespace, config: DriftConfig) -> dict[str, Any]:
    from router.admin import ApiSource, DatabaseSource, SourceError
    from router.drift.api import ALGORITHM_NAME, baseline_period

    if not ALGORITHM_NAME.match(args.algorithm):
        raise ValueError("the algorithm name must be 1 to 64 letters, digits, '_', '.' or '-'")
    if args.days is not None and (args.since is not None or args.until is not None):
        raise ValueError("give --since/--until or --days, not both")
    start, end = baseline_period(args.since, args.until, args.days, time.time())
    if isinstance(source, ApiSource):
        path = f"/api/drift/{args.algorithm}/baseline"
        response = source._call(
            "POST",
            path,
            params={"since": f"{start:.3f}", "until": f"{end:.3f}"},
            accept=(200, 400, 409),
        )
        body: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise ValueError(str(body.get("detail", "refused")))
        return body
    if not isinstance(source, DatabaseSource):  # pragma: no cover
        raise SourceError("unknown source")
    from router.drift.baseline import BaselineError, record_baseline

    try:
        baseline = record_baseline(
            source.db,
            args.algorithm,
            start,
            end,
            recorded_by=f"cli:{getpass.getuser()}",
            min_results=config.for_algorithm(args.algorithm).min_results,
        )
    except BaselineError as exc:
        raise ValueError(str(exc)) from None
    return {
        "algorithm": baseline.algorithm,
        "results": baseline.sample.results,
        "period_start": baseline.period_start,
        "period_end": baseline.period_end,
    }


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_report(report: dict[str, Any]) -> str:
    """The report as text: one block per algorithm, one line per feature."""
    blocks = []
    for drift in report.get("algorithms", []):
        lines = [f"{drift['algorithm']}: {drift['state'].upper()} - {drift['reason']}"]
        baseline = drift.get("baseline")
        if baseline is None:
            lines.append("  baseline: none")
        else:
            lines.append(
                f"  baseline: {_day(baseline['period_start'])} to {_day(baseline['period_end'])}, "
                f"{baseline['results']} results (recorded {_day(baseline['recorded_at'])}"
                + (f" by {baseline['recorded_by']}" if baseline["recorded_by"] else "")
                + ")"
            )
        days = (drift["window_end"] - drift["window_start"]) / DAY_S
        lines.append(
            f"  window: last {days:g} days, {drift['window_results']} results, "
            f"{drift['window_assessed']} assessed; positive {_percent(drift['positive_rate'])}, "
            f"not assessed {_percent(drift['not_assessed_rate'])}, agreement "
            f"{_percent(drift['agreement_rate'])} ({drift['feedback']} with feedback)"
        )
        if drift["features"]:
            lines.append(
                f"  {'feature':<22}{'state':<19}{'PSI':>8}{'p':>10}{'baseline':>10}{'window':>8}"
            )
        for feature in drift["features"]:
            lines.append(
                f"  {feature['feature']:<22}{feature['state']:<19}{_figure(feature['psi']):>8}"
                f"{_figure(feature['p_value']):>10}{feature['baseline_n']:>10}"
                f"{feature['current_n']:>8}"
            )
        blocks.append("\n".join(lines) + "\n")
    if not blocks:
        return "no algorithm has results or a baseline yet\n"
    return "\n".join(blocks)
