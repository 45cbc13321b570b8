"""Peak memory of a 300-slice job: the resident memory a worker needs for one chest CT.

A synthetic 300-slice 512 x 512 chest CT with a 12 mm nodule (int16, the lung nodule model's
own generator) is written as Part-10 files; each measurement then runs in a fresh child
process, which reads its own peak resident set size (``VmHWM`` of ``/proc/self/status``,
reset with ``/proc/self/clear_refs`` before each stage) so nothing of this parent counts:

- ``router``: a whole router (``RouterService``, ``lung_nodule`` loaded at start as the
  router does) receives the series from dcmtk ``storescu`` (a separate process) and runs the
  job: the series read from the spool into a volume, the model, SEG + SR + KOS built and
  written. Two studies one after the other: the first job, and the next one (what the
  worker keeps between jobs shows in the second). The peak is taken over the whole study,
  ingest included, above the idle router's resident memory just before it.
- ``stages``: the job's steps run directly, as ``JobRunner.run`` runs them
  (``load_series``, ``ModelRuntime.run``, ``build_result_objects`` + ``write_dataset``), the
  volume held throughout; each stage's peak above the resident memory before the job. Twice.
- reference, ``pydicom stack``: ``pydicom.dcmread`` of each file and ``np.stack`` of the
  ``pixel_array`` (int16): what any reader of the series needs at least.

Compared with the series' pixel data (slices x rows x columns x 2 bytes) and the models (their
files on disk, and the resident memory that loading them added). Aim (issue 11): the job's
peak <= 2x the pixel data plus the models; the model being resident before the job starts
(loaded once, at the router's start), each job's peak is taken above that point and checked
against 2x the pixel data.

Run: ``.venv/bin/python -m benchmarks.job_memory [--slices 300] [--size 512]``
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MIB = 2**20
ALGORITHM = "lung_nodule"


def status_bytes(field: str) -> int:
    """A ``Vm*`` field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> int:
    """Reset the peak resident set size to the current one (Linux >= 4.0); returns it."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return status_bytes("VmRSS")


def peak() -> int:
    return status_bytes("VmHWM")


def model_files_bytes() -> int:
    from algorithms.lung_nodule import plugin

    folder = Path(plugin.__file__).parent
    return sum(p.stat().st_size for p in folder.glob("*.onnx"))


# --- children -------------------------------------------------------------------------------


def child_reference(series: Path) -> dict[str, Any]:
    import pydicom

    paths = sorted(series.glob("*.dcm"))
    base = reset_peak()
    volume = np.stack([pydicom.dcmread(p).pixel_array for p in paths])  # 16-bit
    top = peak()
    assert volume.dtype.itemsize == 2, volume.dtype  # 16-bit stored values
    return {"base": base, "peak": top, "volume_bytes": volume.nbytes}


def child_stages(series: Path, rounds: int) -> dict[str, Any]:
    from algorithms.contract import StudyInput
    from algorithms.registry import Registry
    from algorithms.runtime import ModelRuntime
    from dicom_sr.context import ResultVersion, SourceImage, StudyContext
    from dicom_sr.io import write_dataset
    from dicom_sr.result_objects import build_result_objects
    from router.run.series_loader import load_series

    paths = sorted(series.glob("*.dcm"))
    imported = reset_peak()
    registry = Registry.discover()
    runtime = ModelRuntime(registry, lambda: {})
    runtime.warm([ALGORITHM])
    models_loaded = reset_peak()
    info = registry.info(ALGORITHM)
    out: dict[str, Any] = {"imported": imported, "models_loaded": models_loaded, "rounds": []}
    with tempfile.TemporaryDirectory() as results:
        for index in range(rounds):
            base = reset_peak()
            started = time.perf_counter()
            loaded = load_series(paths)
            after_load = peak()
            study = StudyInput(str(loaded.first_header.StudyInstanceUID), loaded.series)
            outcome = runtime.run(ALGORITHM, study, 600)
            after_model = peak()
            objects = build_result_objects(
                result=outcome.result,
                info=info,
                source_images=[
                    SourceImage(s.sop_class_uid, s.sop_instance_uid, s.frame_number)
                    for s in loaded.slices
                ],
                study=StudyContext(loaded.first_header),
                version=ResultVersion(1),
                source_headers=loaded.headers,
                geometry=loaded.series.geometry,
            )
            for item in objects.all():
                write_dataset(item.dataset, Path(results) / f"{index}-{item.kind.value}.dcm")
            after_results = peak()
            out["rounds"].append(
                {
                    "base": base,
                    "load": after_load,
                    "model": after_model,
                    "results": after_results,
                    "volume_bytes": loaded.series.array.nbytes,
                    "volume_dtype": str(loaded.series.array.dtype),
                    "findings": len(outcome.result.findings),
                    "seconds": time.perf_counter() - started,
                }
            )
            del loaded, study, outcome, objects
    return out


def child_router(series: list[Path]) -> dict[str, Any]:
    from config.loader import parse_config
    from router.service import RouterService, wait_for
    from testing.orthanc import free_port

    imported = reset_peak()
    out: dict[str, Any] = {"imported": imported, "jobs": []}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = parse_config(
            f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}}\n"
            "http: {host: 127.0.0.1, port: 0}\n"
            "rules:\n"
            "  - name: chest\n"
            "    when: {Modality: CT}\n"
            f"    run: {ALGORITHM}\n"
        )
        service = RouterService(config, data_dir=Path(tmp) / "router")
        service.start()  # loads the model, as the router does at start
        try:
            time.sleep(1.0)  # let the API and the stages settle
            out["started"] = reset_peak()
            db = service.db
            for folder in series:
                base = reset_peak()
                files = sorted(folder.glob("*.dcm"))
                sent = subprocess.run(
                    ["/usr/bin/storescu", "-aet", "BENCH", "-aec", "RADROUTER", "127.0.0.1"]
                    + [str(port)]
                    + [str(f) for f in files],
                    capture_output=True,
                    env={**os.environ, "TCP_NODELAY": "1"},
                )
                if sent.returncode != 0:
                    raise RuntimeError(sent.stderr.decode(errors="replace")[-500:])
                wanted = len(out["jobs"]) + 1

                def done(wanted: int = wanted) -> bool:
                    row = db.query_one(
                        "SELECT COUNT(*) AS n FROM jobs WHERE state IN ('done', 'failed')"
                    )
                    return row is not None and int(row["n"]) == wanted

                if not wait_for(done, 600, 0.05):
                    raise TimeoutError("the job did not finish")
                job = db.query_one("SELECT * FROM jobs ORDER BY id DESC LIMIT 1")
                assert job is not None and job["state"] == "done", job and job["error"]
                out["jobs"].append(
                    {"base": base, "peak": peak(), "verdict": job["verdict"], "images": len(files)}
                )
        finally:
            service.stop()
    return out


# --- parent ---------------------------------------------------------------------------------


def run_child(mode: str, series: list[Path], rounds: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.job_memory", "--child", mode]
    command += ["--rounds", str(rounds)] + [arg for s in series for arg in ("--series", str(s))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def write_series(folder: Path, seed: int, shape: tuple[int, int, int]) -> None:
    from testing.synthetic_dicom import new_patient_study, write_ct_series
    from training.lung_nodule.synth import NoduleSpec, generate_chest_ct, right_lung_centre_mm

    spacing = (1.0, 350.0 / shape[1], 350.0 / shape[2])
    nodule = NoduleSpec(right_lung_centre_mm(shape, spacing), 12.0)
    ct = generate_chest_ct(seed, shape=shape, spacing_mm=spacing, nodules=[nodule])
    write_ct_series(ct.hu, ct.spacing_mm, new_patient_study(seed), folder)


def mib(value: float) -> str:
    return f"{value / MIB:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2, help="jobs per child")
    parser.add_argument(
        "--child", choices=["reference", "stages", "router"], help=argparse.SUPPRESS
    )
    parser.add_argument("--series", type=Path, action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        logging.basicConfig(level=logging.ERROR)
        if args.child == "reference":
            result = child_reference(args.series[0])
        elif args.child == "stages":
            result = child_stages(args.series[0], args.rounds)
        else:
            result = child_router(args.series[: args.rounds])
        print(json.dumps(result))
        return

    shape = (args.slices, args.size, args.size)
    pixel_bytes = shape[0] * shape[1] * shape[2] * 2
    model_bytes = model_files_bytes()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        series = [Path(tmp) / f"s{i}" for i in range(args.rounds)]
        for i, folder in enumerate(series):
            write_series(folder, 7 + i, shape)
        reference = run_child("reference", series, args.rounds)
        stages = run_child("stages", series, args.rounds)
        router = run_child("router", series, args.rounds)
    load_after = " ".join(f"{v:.2f}" for v in os.getloadavg())
    models_resident = stages["models_loaded"] - stages["imported"]
    # The model is resident before the job starts (loaded at the router's start), so it is
    # in each job's starting point: the aim "2x the pixel data plus the models" leaves the
    # job itself 2x the pixel data above that point.
    budget = 2 * pixel_bytes

    print(
        f"job memory: chest CT {shape[0]} slices {shape[1]}x{shape[2]}, {ALGORITHM}, CPU; "
        f"load average before {load_before}, after {load_after}"
    )
    print(
        f"series pixel data {mib(pixel_bytes)} MiB (16-bit); as float32 {mib(2 * pixel_bytes)} "
        f"MiB; model files {model_bytes / MIB:.1f} MiB, resident after loading "
        f"+{mib(models_resident)} MiB (onnxruntime included); aim: job peak <= 2 x pixel data "
        f"+ models, i.e. <= {mib(budget)} MiB above the resident memory with the model loaded"
    )
    print(f"{'MiB':<62}{'peak':>7}{'above':>7}{'x pixel':>9}{'x aim':>7}")

    def row(what: str, top: int, base: int) -> None:
        above = top - base
        print(
            f"{what:<62}{mib(top):>7}{mib(above):>7}{above / pixel_bytes:>9.2f}"
            f"{above / budget:>7.2f}"
        )

    row(
        "reference: pydicom read + np.stack (16-bit stored values)",
        reference["peak"],
        reference["base"],
    )
    for index, r in enumerate(stages["rounds"], 1):
        row(f"stages, job {index}: load_series (volume {r['volume_dtype']})", r["load"], r["base"])
        row(
            f"stages, job {index}:   + {ALGORITHM} run ({r['findings']} findings)",
            r["model"],
            r["base"],
        )
        row(f"stages, job {index}:   + SEG + SR + KOS built and written", r["results"], r["base"])
    for index, job in enumerate(router["jobs"], 1):
        row(
            f"router, study {index}: received, job run ({job['verdict']}), results written",
            job["peak"],
            job["base"],
        )
    print(
        "peak: the process's resident peak (VmHWM); above: peak minus its resident memory "
        "just before the job (imports and the loaded model included there); x pixel: above / "
        "the int16 pixel data; x aim: above / (2 x pixel data)"
    )
    print(
        f"resident before the job: stages {mib(stages['rounds'][0]['base'])} MiB "
        f"(after imports {mib(stages['imported'])}, with the model {mib(stages['models_loaded'])}); "
        f"idle router {mib(router['started'])} MiB"
    )
    worst = max(
        [r["results"] - r["base"] for r in stages["rounds"]]
        + [j["peak"] - j["base"] for j in router["jobs"]]
    )
    verdict = "met" if worst <= budget else "NOT met"
    print(
        f"worst job peak above its start: {mib(worst)} MiB = {worst / pixel_bytes:.2f}x the "
        f"pixel data; aim <= {mib(budget)} MiB: {verdict}"
    )


if __name__ == "__main__":
    main()
