"""The long fuzzing run of radrouter's DICOM node (the CI test sends 10,000 mutants).

Starts a node on loopback with its data folder in a temporary folder, sends ``--count``
mutated instances from ``--workers`` client processes (testing/fuzz.py: bit flips,
truncations, wrong VRs and lengths, deep sequences, huge declared lengths, mismatched transfer
syntaxes, hostile UIDs, contradicting file meta, short pixel data, some left valid) with broken
PDU streams and a C-ECHO after each batch, then checks every acknowledged instance byte for
byte in the spool and that nothing was written outside the data folder. Prints instances per
second and the outcomes by status and by mutation; exits 1 when a check fails.

Run: ``.venv/bin/python -m benchmarks.fuzz_node [--count 100000] [--workers 2]``
(figures in docs/security.md, "Hostile DICOM input").
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

from config.schema import QuarantineConfig
from router.receive.status import StoreStatus
from testing.dicom_node import running_node
from testing.fuzz import FuzzReport, check_acknowledged, files_under, run_fuzz


def _names(outcomes: dict[str, int]) -> dict[str, int]:
    named: dict[str, int] = {}
    for code, count in sorted(outcomes.items()):
        try:
            named[f"{code} {StoreStatus(int(code, 16)).name}"] = count
        except ValueError:
            named[code] = count
    return named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--broken-per-batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the node logs every refusal: noise here
    warnings.simplefilter("ignore")

    def progress(report: FuzzReport) -> None:
        print(f"  {report.sent} sent, {report.echo_failures} echo failures", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "neighbour").mkdir()
        (root / "neighbour" / "sentinel").write_text("alone")
        before = files_under(root)
        with running_node(
            root / "data",
            network_timeout_s=5,
            acse_timeout_s=5,
            quarantine=QuarantineConfig(max_mb=64),
        ) as node:
            report = run_fuzz(
                node.port,
                args.count,
                seed=args.seed,
                workers=args.workers,
                batch=args.batch,
                broken_per_batch=args.broken_per_batch,
                on_batch=progress,
            )
            time.sleep(0.5)
            problems = check_acknowledged(node.db, node.spool.root, report.acknowledged)
            leftovers = list(node.spool.incoming.iterdir())
        outside = [p for p in files_under(root) - before if (root / "data") not in p.parents]

    print(
        f"{report.sent} mutated instances and {report.broken_pdus} broken PDU streams in "
        f"{report.seconds:.0f} s: {report.sent / report.seconds:.0f} instances/s "
        f"({args.workers} client processes)"
    )
    print(f"outcomes: {_names(dict(report.outcomes))}")
    for kind, outcomes in sorted(report.by_kind.items()):
        print(f"  {kind}: {_names(dict(outcomes))}")
    print(f"broken PDU streams: {dict(sorted(report.broken_by_kind.items()))}")
    print(
        f"acknowledged {len(report.acknowledged)}, of which not intact: {len(problems)}; "
        f"C-ECHO failures: {report.echo_failures}; partial files left: {len(leftovers)}; "
        f"written outside the data folder: {len(outside)}"
    )
    failed = problems or report.echo_failures or leftovers or outside
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
