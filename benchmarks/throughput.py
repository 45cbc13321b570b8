"""Throughput: studies per hour with 1, 2 and 4 workers (``jobs.workers``), CPU.

A batch of ``--studies`` small synthetic chest CTs (default 12, each 64 slices of 4 mm at
256 x 256, 1.37 mm pixels, with a 12 mm nodule; the lung nodule model's own generator) is sent
at once over ``--associations`` simultaneous associations (default 4; one dcmtk ``storescu``
association per study, the next study of each lane as soon as its previous one is sent; the
router admits 8 associations per calling host by default), to a router started afresh for
each batch in a child process of its own (a fresh data folder and queue; its model loaded
before the batch is sent; its resident peak reported). The router runs ``lung_nodule`` on each (``max_concurrent`` set to
the worker count, so the model itself does not serialise the workers) and sends the SR, SEG
and KOS to a dcmtk ``storescp``. Timed from the first image sent to the last result stored at
the destination (the last dispatch's C-STORE response).

References measured in the same run:
- the model alone: ``lung_nodule``'s ``run`` on the same volumes, through ``ModelRuntime``,
  one after another in this process (the ceiling for one worker if reading the series,
  writing and sending the results cost nothing), and two at a time (what running the model
  in two workers at once gains on this machine by itself);
- the transfer alone: the same batch, sent the same way, to dcmtk ``storescp``.

``--algorithm always_negative`` runs a test plugin that answers at once instead (no model:
the pipeline's own ceiling; its results are an SR only, no SEG or KOS).

Each worker count is measured ``--repeat`` times (default 3, the worker counts interleaved);
the median is printed with every run.

Run: ``.venv/bin/python -m benchmarks.throughput [--studies 12] [--workers 1 2 4] [--repeat 3]
[--associations 4] [--slices 64] [--size 256] [--algorithm lung_nodule]
[--no-model-reference] [--database sqlite postgresql]``

``--database sqlite postgresql`` runs every worker count on each engine (PostgreSQL: a
throwaway cluster on loopback, one fresh database per batch).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from algorithms.lung_nodule.plugin import LungNoduleDetector
from algorithms.registry import Registry
from algorithms.runtime import ModelRuntime
from benchmarks.databases import add_database_option, database_yaml
from benchmarks.ingest import ENV, storescp
from config.loader import parse_config
from router.service import RouterService, wait_for
from testing.orthanc import free_port
from testing.plugins import AlwaysNegative
from testing.synthetic_dicom import new_patient_study, write_ct_series
from training.lung_nodule.evaluate import make_study
from training.lung_nodule.synth import (
    NoduleSpec,
    SyntheticChestCT,
    generate_chest_ct,
    right_lung_centre_mm,
)

T = TypeVar("T")

REGISTRY = Registry({"lung_nodule": LungNoduleDetector, "always_negative": AlwaysNegative})


def config_text(
    port: int, destination_port: int, workers: int, algorithm: str, database: str
) -> str:
    return (
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"storage: {{database: {database}}}\n"
        f"destinations: {{pacs: {{ae_title: STORESCP, host: 127.0.0.1, port: {destination_port}}}}}\n"
        f"jobs: {{workers: {workers}}}\n"
        f"algorithms: {{{algorithm}: {{max_concurrent: {workers}}}}}\n"
        "rules:\n"
        "  - name: chest\n"
        "    when: {Modality: CT}\n"
        f"    run: {algorithm}\n"
        "    send_to: [pacs]\n"
    )


def send_batch(port: int, aet: str, studies: list[list[Path]], lanes: int) -> float:
    """Send the batch at once over ``lanes`` simultaneous associations, as a PACS does: each
    study over its own association, the next study of a lane as soon as the previous one is
    sent; seconds until every image is acknowledged."""

    def send(files: list[Path]) -> None:
        sent = subprocess.run(
            ["/usr/bin/storescu", "-aet", "BENCH", "-aec", aet, "127.0.0.1", str(port)]
            + [str(f) for f in files],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        if sent.returncode != 0:
            raise RuntimeError(
                f"storescu to {aet} failed: {sent.stderr.decode(errors='replace')[-500:]}"
            )

    started = time.perf_counter()
    with ThreadPoolExecutor(lanes) as pool:
        list(pool.map(send, studies))
    return time.perf_counter() - started


def in_child(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a fresh process: a stopped router, or a model runtime, keeps
    its memory in the process that ran it (the loaded model and the arenas of each run at
    once), so each measurement starts from a clean one."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run_batch(
    work: Path,
    studies: list[list[Path]],
    workers: int,
    algorithm: str,
    lanes: int,
    database: str = "{engine: sqlite}",
) -> dict[str, float]:
    """One router with ``workers`` workers; the batch sent at once; the seconds from the first
    image sent to the last result stored, the mean model time per study, and this process's
    peak resident memory (the router's: it runs in a process of its own)."""
    logging.basicConfig(level=logging.ERROR)
    with storescp(work) as destination_port:
        port = free_port()
        config = parse_config(config_text(port, destination_port, workers, algorithm, database))
        service = RouterService(config, registry=REGISTRY, data_dir=work / "router")
        service.start()  # loads (warms) the model before anything is sent
        try:
            db = service.db
            started = time.time()
            send_batch(port, "RADROUTER", studies, lanes)

            def finished() -> bool:
                row = db.query_one(
                    "SELECT COUNT(*) AS n FROM studies WHERE state IN ('done', 'attention')"
                )
                waiting = db.query_one(
                    "SELECT COUNT(*) AS n FROM dispatches WHERE state NOT IN ('done', 'dead')"
                )
                assert row is not None and waiting is not None
                return int(row["n"]) == len(studies) and int(waiting["n"]) == 0

            if not wait_for(finished, 1800, 0.05):
                raise TimeoutError("the batch did not finish")
            dead = db.query_one("SELECT COUNT(*) AS n FROM dispatches WHERE state != 'done'")
            assert dead is not None and int(dead["n"]) == 0, "a dispatch failed"
            last = db.query_one("SELECT MAX(finished_at) AS at FROM dispatches")
            jobs = db.query(
                "SELECT model_seconds, verdict FROM jobs WHERE state = 'done' ORDER BY id"
            )
            assert last is not None and len(jobs) == len(studies), "a job did not finish"
            model = [float(j["model_seconds"] or 0.0) for j in jobs]
            return {
                "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "seconds": float(last["at"]) - started,
                "model_mean": sum(model) / len(model),
                "model_total": sum(model),
            }
        finally:
            service.stop()


def model_alone(cts: list[SyntheticChestCT], algorithm: str, at_once: int) -> float:
    """Seconds for the algorithm's ``run`` on every volume of the batch, ``at_once`` runs at a
    time (after one untimed run), through ``ModelRuntime`` as the router runs it."""
    runtime = ModelRuntime(REGISTRY, lambda: {}, max_concurrent=lambda: {algorithm: at_once})
    runtime.warm([algorithm])
    inputs = [make_study(ct) for ct in cts]
    runtime.run(algorithm, inputs[0], 600)
    started = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        list(pool.map(lambda study: runtime.run(algorithm, study, 600), inputs))
    return time.perf_counter() - started


def chest_ct(seed: int, shape: tuple[int, int, int]) -> SyntheticChestCT:
    spacing = (4.0, 350.0 / shape[1], 350.0 / shape[2])
    nodule = NoduleSpec(right_lung_centre_mm(shape, spacing), 12.0)
    return generate_chest_ct(seed, shape=shape, spacing_mm=spacing, nodules=[nodule])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3, help="batches per worker count")
    parser.add_argument(
        "--associations", type=int, default=4, help="simultaneous associations sending the batch"
    )
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument(
        "--algorithm", choices=["lung_nodule", "always_negative"], default="lung_nodule"
    )
    add_database_option(
        parser, "the router's database engine(s); each worker count is measured on each"
    )
    parser.add_argument(
        "--no-model-reference",
        dest="model_reference",
        action="store_false",
        help="skip the model-alone reference (it runs the batch's volumes once or twice more)",
    )
    args = parser.parse_args()
    if args.algorithm != "lung_nodule":
        args.model_reference = False
    logging.basicConfig(level=logging.WARNING)
    shape = (args.slices, args.size, args.size)
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp, database_yaml(args.database) as database_for:
        root = Path(tmp)
        studies: list[list[Path]] = []
        cts = [chest_ct(seed, shape) for seed in range(args.studies)]
        for seed, ct in enumerate(cts):
            studies.append(
                write_ct_series(
                    ct.hu,
                    ct.spacing_mm,
                    new_patient_study(5000 + seed),
                    root / "in" / f"s{seed}",
                )
            )
        runs: dict[tuple[str, int], list[dict[str, float]]] = {
            (engine, w): [] for engine in args.database for w in args.workers
        }
        transfers: list[float] = []
        for round_ in range(args.repeat):  # worker counts interleaved, so drift hits each alike
            for engine in args.database:
                for workers in args.workers:
                    work = root / f"{engine}-w{workers}-{round_}"
                    work.mkdir()
                    runs[engine, workers].append(
                        in_child(
                            run_batch,
                            work,
                            studies,
                            workers,
                            args.algorithm,
                            args.associations,
                            database_for(engine),
                        )
                    )
            ref_work = root / f"reference-{round_}"
            ref_work.mkdir()
            with storescp(ref_work) as port:
                transfers.append(send_batch(port, "STORESCP", studies, args.associations))
        at_once_counts = sorted({1, min(2, max(args.workers))}) if args.model_reference else []
        alone = {k: in_child(model_alone, cts, args.algorithm, k) for k in at_once_counts}
    load_after = " ".join(f"{v:.2f}" for v in os.getloadavg())
    n = args.studies
    print(
        f"throughput: {n} chest CTs of {args.slices} slices {args.size}x{args.size} "
        f"({args.algorithm}), sent at once over {args.associations} associations (a study "
        "each, in turn), results to dcmtk storescp; "
        f"{os.cpu_count()} CPUs; median of {args.repeat}; "
        f"load average before {load_before}, after {load_after}"
    )
    print(
        f"{'database':<11}{'workers':<8}{'seconds':>9}{'studies/h':>11}{'x 1 worker':>12}"
        f"{'model s/study':>15}{'model share':>13}{'peak MiB':>10}   all runs (s)"
    )
    medians = {key: statistics.median(r["seconds"] for r in rows) for key, rows in runs.items()}
    for (engine, workers), rows in runs.items():
        base = medians.get((engine, 1))
        seconds = medians[engine, workers]
        speedup = f"{base / seconds:.2f}x" if base is not None else "-"
        model = statistics.median(r["model_mean"] for r in rows)
        share = statistics.median(r["model_total"] / (r["seconds"] * workers) for r in rows)
        every = " ".join(f"{r['seconds']:.1f}" for r in rows)
        peak = max(r["peak_mib"] for r in rows)
        print(
            f"{engine:<11}{workers:<8}{seconds:>9.1f}{3600 * n / seconds:>11.0f}{speedup:>12}"
            f"{model:>15.2f}{share:>13.0%}{peak:>10.0f}   {every}"
        )
    transfer = statistics.median(transfers)
    print(
        f"reference: the same batch sent to dcmtk storescp (transfer alone): {transfer:.1f} s "
        f"= {3600 * n / transfer:.0f} studies/h"
    )
    for at_once, seconds in alone.items():
        how = "one study after another" if at_once == 1 else f"{at_once} studies at once"
        print(
            f"reference: {args.algorithm} alone on the same volumes, {how}: {seconds:.1f} s "
            f"= {3600 * n / seconds:.0f} studies/h ({seconds / n:.2f} s/study)"
        )
    print(
        "model s/study: mean time inside the algorithm's run per job in the router; model "
        "share: the model time summed over jobs / (batch seconds x workers); peak MiB: the "
        "router process's resident peak (ru_maxrss), the highest of the runs"
    )


if __name__ == "__main__":
    main()
