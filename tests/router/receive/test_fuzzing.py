"""Fuzzing the DICOM node: 10,000 mutated instances over real associations, and broken PDUs.

The node must never crash or hang (a C-ECHO after each batch succeeds), never write outside
its data folder, answer "out of resources" only for a real shortage (there is none here), and
every instance it acknowledged must read back from the spool exactly as it was sent. The
longer run (100,000 and more) is ``python -m benchmarks.fuzz_node``; its figures are in docs/security.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from config.schema import QuarantineConfig
from router.receive.status import StoreStatus
from testing.dicom_node import running_node
from testing.fuzz import check_acknowledged, files_under, run_fuzz

pytestmark = pytest.mark.slow

MUTANTS = 10_000
BROKEN_PDUS_PER_BATCH = 50
BATCH = 500


def test_ten_thousand_mutated_instances_and_broken_pdus_leave_the_node_serving_and_intact(
    tmp_path: Path,
) -> None:
    neighbour = tmp_path / "neighbour"
    neighbour.mkdir()
    (neighbour / "sentinel.txt").write_text("must stay alone")
    around_before = files_under(tmp_path)
    started = time.monotonic()
    with running_node(
        tmp_path / "data",
        network_timeout_s=5,
        acse_timeout_s=5,
        quarantine=QuarantineConfig(max_mb=8),
    ) as node:
        report = run_fuzz(
            node.port,
            MUTANTS,
            seed=20261201,
            workers=2,
            batch=BATCH,
            broken_per_batch=BROKEN_PDUS_PER_BATCH,
        )
        time.sleep(0.5)  # the last connections wind down
        incoming = sorted(p.name for p in node.spool.incoming.iterdir())
        problems = check_acknowledged(node.db, node.spool.root, report.acknowledged)
        quarantine_bytes = sum(p.stat().st_size for p in files_under(node.quarantine))
    elapsed = time.monotonic() - started

    assert report.sent == MUTANTS
    assert report.broken_pdus == MUTANTS // BATCH * BROKEN_PDUS_PER_BATCH
    assert report.echo_failures == 0, "the node stopped answering C-ECHO after a batch"
    assert problems == []
    assert report.acknowledged, "no mutant was acknowledged: the fuzzing tested nothing"
    assert f"0x{StoreStatus.OUT_OF_RESOURCES:04X}" not in report.outcomes, report.outcomes
    assert set(report.outcomes) <= {f"0x{status:04X}" for status in StoreStatus} | {"ended"}
    assert incoming == [], "partial files left in the spool's incoming folder"
    assert quarantine_bytes <= 8 * 2**20
    around_after = files_under(tmp_path)
    outside = {p for p in around_after - around_before if (tmp_path / "data") not in p.parents}
    assert outside == set(), f"written outside the data folder: {sorted(outside)[:5]}"
    print(  # the figures, for docs/security.md
        f"\n{report.sent} mutants and {report.broken_pdus} broken PDU streams in "
        f"{report.seconds:.0f} s ({report.sent / report.seconds:.0f} instances/s; "
        f"{elapsed:.0f} s with setup); outcomes {dict(sorted(report.outcomes.items()))}"
    )
