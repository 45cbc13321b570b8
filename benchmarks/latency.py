"""Hot-path latency: Orthanc pushes a chest CT; time from last image to the SR stored in Orthanc.

Measured per run, from radrouter's own timestamps (its database) and Orthanc's push:
- completion: association released -> study judged complete (target <= 1 s),
- release -> job started,
- last image received -> SR stored in Orthanc (C-STORE response), with and without the
  time inside the model (target for everything but the model: <= 2 s for 300 slices),
- last image received -> worklist flag raised (the priority decided and recorded, shown on
  the worklist page) and -> HL7 ORU^R01 acknowledged by a real MLLP listener (hl7apy) on
  loopback, with and without the model time.
Orthanc's own push time for the same study is printed beside them as the reference.

Each figure is given as p50 and p95 over ``--runs`` runs (default 12; p95 interpolated
linearly between the two nearest runs, numpy's default), with min and max, and the aims of
issue 11 are checked beside them: release -> complete <= 1 s, last image -> SR stored without
the model <= 2 s at p95. "Without model" subtracts the time the job spent inside the
algorithm's ``run`` (``jobs.model_seconds``), so the shipped lung nodule model runs and
produces the usual SEG + SR + KOS while its own time is taken out.

``--database sqlite postgresql`` measures the router on each engine in turn (PostgreSQL: a
throwaway cluster on loopback, ``testing.postgres``).

Run: ``.venv/bin/python -m benchmarks.latency [--slices 300] [--size 512] [--runs 12]
[--database sqlite postgresql]``
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.databases import add_database_option, database_yaml
from config.loader import parse_config
from router.service import RouterService, wait_for
from testing.listeners import running_hl7_listener
from testing.orthanc import Orthanc, free_port, running_orthanc
from testing.synthetic_dicom import new_patient_study, write_ct_series
from training.lung_nodule.synth import NoduleSpec, generate_chest_ct, right_lung_centre_mm


def config_text(port: int, orthanc: Orthanc, hl7_port: int, database: str) -> str:
    return (
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"storage: {{database: {database}}}\n"
        f"destinations: {{pacs: {{ae_title: ORTHANC, host: 127.0.0.1, port: {orthanc.dicom_port}}}}}\n"
        "rules:\n"
        "  - name: chest\n"
        "    when: {Modality: CT}\n"
        "    run: lung_nodule\n"
        "    send_to: [pacs]\n"
        "worklist:\n"
        "  priority_policy:\n"
        "    lung_nodule:\n"
        "      - when: {finding: Nodule, measurements: {Long axis: {min: 8, unit: mm}}}\n"
        "        raise_to: urgent\n"
        "  notify:\n"
        f"    hl7: {{host: 127.0.0.1, port: {hl7_port}, receiving_application: RIS}}\n"
    )


def one_run(
    orthanc: Orthanc, service: RouterService, folder: Path, seed: int, shape: tuple[int, int, int]
) -> dict[str, float]:
    spacing = (1.0, 350.0 / shape[1], 350.0 / shape[2])
    nodule = NoduleSpec(right_lung_centre_mm(shape, spacing), 12.0)
    ct = generate_chest_ct(seed, shape=shape, spacing_mm=spacing, nodules=[nodule])
    study = new_patient_study(seed)
    paths = write_ct_series(ct.hu, ct.spacing_mm, study, folder / f"s{seed}")
    study_id = {orthanc.upload(p) for p in paths}.pop()
    started = time.perf_counter()
    orthanc.push_to_modality("radrouter", [study_id])
    push_s = time.perf_counter() - started
    db = service.db

    def done() -> bool:
        row = db.query_one(
            "SELECT state FROM studies WHERE study_uid = ?", (study.study_instance_uid,)
        )
        return row is not None and row["state"] in {"done", "attention"}

    if not wait_for(done, 600, 0.05):
        raise TimeoutError("study did not finish")
    uid = (study.study_instance_uid,)
    s = db.query_one("SELECT * FROM studies WHERE study_uid = ?", uid)
    released = db.query_one(
        "SELECT MAX(a.closed_at) AS at FROM associations a JOIN association_studies x "
        "ON x.association_id = a.id WHERE x.study_uid = ? AND a.state = 'released'",
        uid,
    )
    job = db.query_one("SELECT * FROM jobs WHERE study_uid = ?", uid)
    dispatch = db.query_one("SELECT * FROM dispatches WHERE study_uid = ?", uid)
    assert s is not None and released is not None and job is not None and dispatch is not None
    assert dispatch["state"] == "done", dispatch["last_error"]

    def delivered() -> bool:
        row = db.query_one(
            "SELECT state FROM deliveries WHERE study_uid = ? AND channel = 'hl7'", uid
        )
        return row is not None and row["state"] in {"done", "dead"}

    if not wait_for(delivered, 120, 0.05):
        raise TimeoutError("the HL7 delivery did not finish")
    result = db.query_one("SELECT MAX(created_at) AS at FROM results WHERE study_uid = ?", uid)
    assert result is not None and result["at"] is not None
    flag = db.query_one("SELECT * FROM flags WHERE study_uid = ?", uid)
    hl7 = db.query_one("SELECT * FROM deliveries WHERE study_uid = ? AND channel = 'hl7'", uid)
    assert flag is not None and hl7 is not None
    assert flag["raised"] == 1, f"no flag raised: {flag['reason']}"
    assert hl7["state"] == "done", hl7["last_error"]
    total = dispatch["finished_at"] - s["last_received_at"]
    to_flag = flag["flagged_at"] - s["last_received_at"]
    to_ack = hl7["finished_at"] - s["last_received_at"]
    model = job["model_seconds"]
    return {
        "orthanc push (reference)": push_s,
        "release -> complete": s["completed_at"] - released["at"],
        "release -> job start": job["started_at"] - released["at"],
        "  job start -> results written, without model": result["at"]
        - job["started_at"]
        - job["model_seconds"],
        "  results written -> SR stored (dispatch)": dispatch["finished_at"] - result["at"],
        "last image -> SR stored": total,
        "model time": job["model_seconds"],
        "last image -> SR stored, without model": total - model,
        "last image -> flag raised": to_flag,
        "last image -> flag raised, without model": to_flag - model,
        "last image -> HL7 ACK received": to_ack,
        "last image -> HL7 ACK received, without model": to_ack - model,
    }


AIMS = {
    "release -> complete": 1.0,
    "last image -> SR stored, without model": 2.0,
}
"""Issue 11's aims (seconds, at p95) for the rows that have one."""


def summarise(results: list[dict[str, float]]) -> list[str]:
    """The table: p50, p95, min and max of each figure over the runs, with its aim."""
    lines = [f"{'seconds':<48}{'p50':>7}{'p95':>7}{'min':>7}{'max':>7}   aim (p95)"]
    for key in results[0]:
        values = np.array([r[key] for r in results])
        p50, p95 = np.percentile(values, [50, 95])
        aim = ""
        if key in AIMS:
            aim = f"   <= {AIMS[key]:g} s: {'met' if p95 <= AIMS[key] else 'NOT met'}"
        lines.append(
            f"{key:<48}{p50:>7.2f}{p95:>7.2f}{values.min():>7.2f}{values.max():>7.2f}{aim}"
        )
    return lines


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=12)
    add_database_option(parser, "the router's database engine(s), measured one after the other")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shape = (args.slices, args.size, args.size)
    results: dict[str, list[dict[str, float]]] = {engine: [] for engine in args.database}
    load_before = load_average()
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_orthanc(Path(tmp) / "orthanc") as orthanc,
        running_hl7_listener() as ris,
        database_yaml(args.database) as database_for,
    ):
        for number, engine in enumerate(args.database):
            port = free_port()
            config = parse_config(config_text(port, orthanc, ris.port, database_for(engine)))
            service = RouterService(config, data_dir=Path(tmp) / f"router-{engine}")
            service.start()
            try:
                orthanc.add_modality("radrouter", "RADROUTER", port)
                for run in range(args.runs):
                    # New studies for each engine: Orthanc keeps the earlier ones, with the
                    # results stored into them, and would push those too.
                    seed = 1000 + 100 * number + run
                    results[engine].append(one_run(orthanc, service, Path(tmp), seed, shape))
            finally:
                service.stop()
    print(
        f"latency: chest CT {args.slices} slices {args.size}x{args.size}, pushed by Orthanc, "
        f"{args.runs} run(s), settle_after_release_s={config.completion.settle_after_release_s}, "
        f"load average before {load_before}, after {load_average()}"
    )
    for engine, engine_results in results.items():
        print(f"\ndatabase: {engine}")
        print("\n".join(summarise(engine_results)))


if __name__ == "__main__":
    main()
