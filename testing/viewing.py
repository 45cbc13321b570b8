"""A demo study's way into a viewer: written as ``radrouter demo-study`` writes it, uploaded
to an Orthanc that plays the PACS, pushed by Orthanc to a router (as an auto-routing rule
would), and the router's results sent back into the same study in that Orthanc."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom

from config.loader import parse_config
from router.demo import write_demo_study
from router.service import RouterService, wait_for
from testing.orthanc import Orthanc, free_port
from testing.router_process import router_yaml

RESULT_MODALITIES = frozenset({"SR", "SEG", "KO"})
"""What a result with findings puts into the study (a result without findings: SR only)."""


@dataclass(frozen=True)
class DemoInPacs:
    orthanc: Orthanc
    study_id: str
    """Orthanc's ID of the study."""
    study_uid: str
    seconds_to_results: float
    """From Orthanc's push to the results stored back in Orthanc."""


@contextmanager
def router_sending_to(orthanc: Orthanc, data_dir: Path) -> Iterator[RouterService]:
    """An in-process router whose rules run ``lung_nodule`` (``router_yaml``) and send the
    results to ``orthanc``; stopped at the end."""
    config = parse_config(router_yaml(orthanc).replace("{port}", str(free_port())), "view.yaml")
    router = RouterService(config, data_dir=data_dir)
    router.start()
    try:
        yield router
    finally:
        router.stop()


def demo_study_in_pacs(
    workdir: Path,
    orthanc: Orthanc,
    router: RouterService,
    *,
    nodule_mm: float = 12.0,
    seed: int = 1,
    timeout_s: float = 240.0,
) -> DemoInPacs:
    """The demo chest CT (``radrouter demo-study``'s defaults; ``nodule_mm`` 0: none) through
    Orthanc and ``router`` (which must send its results to ``orthanc``); returns once the
    results are in Orthanc's copy of the study."""
    demo = write_demo_study(
        workdir, seed=seed, slices=120, size=384, slice_spacing_mm=2.0, nodule_mm=nodule_mm
    )
    study_id = ""
    for path in demo.paths:
        study_id = orthanc.upload(path)
    if "radrouter" not in orthanc.get("/modalities"):
        orthanc.add_modality("radrouter", router.node.node.ae_title, router.node.port)
    started = time.monotonic()
    orthanc.push_to_modality("radrouter", [study_id])
    wanted = RESULT_MODALITIES if nodule_mm > 0 else frozenset({"SR"})

    def results_back() -> bool:
        try:
            series = orthanc.get(f"/studies/{study_id}")["Series"]
            found = {orthanc.get(f"/series/{s}")["MainDicomTags"].get("Modality") for s in series}
        except httpx.HTTPError:  # Orthanc now and then drops a kept-alive connection
            return False
        return found >= wanted

    if not wait_for(results_back, timeout_s, 0.5):
        view = httpx.get(
            f"http://127.0.0.1:{router.http_port}/studies/{demo.study_instance_uid}", timeout=30
        ).text
        raise RuntimeError(f"no {sorted(wanted)} in Orthanc: {view[:2000]}")
    return DemoInPacs(orthanc, study_id, demo.study_instance_uid, time.monotonic() - started)


def key_image_instance_number(demo: DemoInPacs) -> int:
    """Instance Number of the KOS's first key image, as Orthanc has it."""
    orthanc = demo.orthanc
    kos = read_instance(orthanc, orthanc.modality_instances(demo.study_id, "KO")[0])
    evidence = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    sop_uid = evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    found = orthanc.http.post("/tools/lookup", content=str(sop_uid).encode()).json()
    instance = orthanc.get(f"/instances/{found[0]['ID']}")
    return int(instance["MainDicomTags"]["InstanceNumber"])


def read_instance(orthanc: Orthanc, instance_id: str) -> Any:
    return pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance_id)))
