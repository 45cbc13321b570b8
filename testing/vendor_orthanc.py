"""A second Orthanc playing an external AI vendor: it takes what radrouter sends (C-STORE or,
with its DICOMweb plug-in, STOW-RS), and once a study is stable, its Python plug-in
(Debian ``orthanc-python``) runs ``testing.vendor_analysis`` on the images and stores the SR it
makes back to radrouter's node by C-STORE, as a vendor's service answers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testing.orthanc import PYTHON_PLUGIN, Orthanc, running_orthanc

VENDOR_SCRIPT = """
import json
import os
import subprocess
import tempfile
import threading

import orthanc

PYTHON = os.environ["RADROUTER_VENDOR_PYTHON"]
CWD = os.environ["RADROUTER_VENDOR_CWD"]
THRESHOLD = os.environ.get("RADROUTER_VENDOR_THRESHOLD_HU", "0")
ANSWER = os.environ.get("RADROUTER_VENDOR_ANSWER", "yes") == "yes"
STORE_BACK = os.environ.get("RADROUTER_VENDOR_STORE_BACK", "yes") == "yes"


def analyse(study_id):
    try:
        series = json.loads(orthanc.RestApiGet("/studies/%s/series" % study_id))
        if any(s["MainDicomTags"].get("Modality") == "SR" for s in series):
            return  # answered already (storing the SR made the study change again)
        instances = json.loads(orthanc.RestApiGet("/studies/%s/instances" % study_id))
        with tempfile.TemporaryDirectory() as folder:
            for number, instance in enumerate(instances):
                data = orthanc.RestApiGet("/instances/%s/file" % instance["ID"])
                with open(os.path.join(folder, "%05d.dcm" % number), "wb") as handle:
                    handle.write(data)
            out = os.path.join(folder, "answer.sr")
            subprocess.run(
                [PYTHON, "-m", "testing.vendor_analysis", folder, out, THRESHOLD],
                check=True,
                cwd=CWD,
            )
            with open(out, "rb") as handle:
                report = handle.read()
        stored = json.loads(orthanc.RestApiPost("/instances", report))
        if STORE_BACK:  # else radrouter fetches it by DICOMweb
            body = json.dumps({"Resources": [stored["ID"]], "Synchronous": True})
            orthanc.RestApiPost("/modalities/radrouter/store", body)
        orthanc.LogWarning("vendor: answered study %s" % study_id)
    except Exception as error:
        orthanc.LogError("vendor: analysis of study %s failed: %s" % (study_id, error))


def on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.STABLE_STUDY and ANSWER:
        threading.Thread(target=analyse, args=(resource_id,)).start()


orthanc.RegisterOnChangeCallback(on_change)
"""


@contextmanager
def running_vendor(
    workdir: Path,
    radrouter_port: int,
    *,
    threshold_hu: float = -600.0,
    answer: bool = True,
    dicomweb: bool = False,
    store_back: bool = True,
) -> Iterator[Orthanc]:
    """The vendor Orthanc, answering to radrouter's node on ``radrouter_port`` (AE RADROUTER);
    ``answer`` False: it takes what it is sent and never answers; ``store_back`` False: it
    keeps its answer, for radrouter to fetch by DICOMweb."""
    if not PYTHON_PLUGIN.exists():
        raise RuntimeError(f"{PYTHON_PLUGIN} is missing (Debian orthanc-python)")
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "vendor.py"
    script.write_text(VENDOR_SCRIPT)
    with running_orthanc(
        workdir,
        "VENDOR",
        dicomweb=dicomweb,
        python_script=script,
        extra_config={
            "DicomModalities": {"radrouter": ["RADROUTER", "127.0.0.1", radrouter_port]},
            "StableAge": 1,
        },
        env={
            "RADROUTER_VENDOR_PYTHON": sys.executable,
            "RADROUTER_VENDOR_CWD": str(Path(__file__).resolve().parent.parent),
            "RADROUTER_VENDOR_THRESHOLD_HU": str(threshold_hu),
            "RADROUTER_VENDOR_ANSWER": "yes" if answer else "no",
            "RADROUTER_VENDOR_STORE_BACK": "yes" if store_back else "no",
        },
    ) as vendor:
        yield vendor
