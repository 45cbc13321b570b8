"""No patient data where it does not belong: one study with marker values (name, ID, a
non-conformant birth date, accession number) is taken through every path of the router,
failures included, and every log record, the metrics, every API answer that is not a
patient-level read, every API error body, ``radrouter status``, the events table and the
quarantine's reasons are searched for the markers.

The paths: a flag (SEG, SR, KOS sent, HL7 to a RIS), a plugin that crashes with the patient's
name and birth date in its exception, a plugin that answers "not assessed" quoting the
patient ID, a destination that is down (the dispatch dies), an instance refused for
truncated pixel data (quarantined), and requests that fail (unknown study, unknown job,
malformed UID, wrong method).

Where patient data belongs, it is checked to be there, so the search cannot pass by
searching the wrong thing: the RIS message, the audit trail (ATNA names the patient), and
the worklist's accession number (the radiologist's way into the PACS viewer).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from algorithms.contract import AlgorithmInfo, AlgorithmResult, StudyInput, Verdict
from algorithms.registry import Registry
from router.logs import OWN_LOGGERS
from router.service import wait_for
from testing.dicom_tools import make_ct_slices
from testing.listeners import running_hl7_listener
from testing.orthanc import free_port
from testing.plugins import DarkestRegionOutliner, _info
from testing.router_process import DCMTK_ENV, RouterUnderTest, StartRouter, wait_state
from testing.storescp import ReceivingPacs

pytestmark = pytest.mark.slow

FAMILY, GIVEN = "Quillfeather", "Ottoline"
PATIENT_NAME = f"{FAMILY}^{GIVEN}"
PATIENT_ID = "MRN-MARKER-93117"
BIRTH_DATE = "02.01.1960"  # non-conformant (DA is YYYYMMDD), as some modalities write it
ACCESSION = "ACC-MRK-5521"
IDENTIFYING = (FAMILY, GIVEN, PATIENT_ID, BIRTH_DATE)
MARKERS = (*IDENTIFYING, ACCESSION)


class LeakyCrash:
    """A plugin with a bug whose exception quotes header values, as library errors do."""

    info: ClassVar[AlgorithmInfo] = _info("leaky_crash")

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        raise ValueError(f"cannot parse birth date {BIRTH_DATE!r} of {PATIENT_NAME}")


class LeakyNotAssessed:
    """A plugin whose "not assessed" reason quotes the patient ID."""

    info: ClassVar[AlgorithmInfo] = _info("leaky_not_assessed")

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        return AlgorithmResult(Verdict.NOT_ASSESSED, reason=f"no prior found for {PATIENT_ID}")


REGISTRY = Registry(
    {
        "darkest_region": DarkestRegionOutliner,
        "leaky_crash": LeakyCrash,
        "leaky_not_assessed": LeakyNotAssessed,
    }
)


def _yaml(pacs: ReceivingPacs, hl7_port: int, down_port: int) -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "destinations:\n"
        f"  pacs: {pacs.destination_yaml()}\n"
        f"  down: {{ae_title: DOWN, host: 127.0.0.1, port: {down_port}, timeout_s: 2}}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, "
        "hard_cap_s: 60}\n"
        "jobs: {retry: {max_attempts: 1}}\n"
        "dispatch: {retry: {max_attempts: 1}, probe_interval_s: 0}\n"
        "rules:\n"
        "  - name: flag\n"
        "    when: {Modality: CT}\n"
        "    run: darkest_region\n"
        "    send_to: [pacs, down]\n"
        "    continue: true\n"
        "  - name: crash\n"
        "    when: {Modality: CT}\n"
        "    run: leaky_crash\n"
        "    send_to: [pacs]\n"
        "    continue: true\n"
        "  - name: not-assessed\n"
        "    when: {Modality: CT}\n"
        "    run: leaky_not_assessed\n"
        "    send_to: [pacs]\n"
        "worklist:\n"
        "  notify:\n"
        f"    hl7: {{host: 127.0.0.1, port: {hl7_port}, receiving_application: RIS, timeout_s: 5}}\n"
    )


def _marked_study(folder: Path) -> tuple[list[Path], Path, str]:
    """Eight marked CT slices, and a ninth whose pixel data is cut short."""
    folder.mkdir(parents=True, exist_ok=True)
    slices = make_ct_slices(9)
    paths = []
    for ds in slices:
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = BIRTH_DATE
        ds.AccessionNumber = ACCESSION
        paths.append(folder / f"{ds.SOPInstanceUID}.dcm")
    truncated = slices[-1]
    truncated.PixelData = truncated.PixelData[:1000]
    for ds, path in zip(slices, paths, strict=True):
        ds.save_as(path, enforce_file_format=True)
    return paths[:-1], paths[-1], str(slices[0].StudyInstanceUID)


def _send(router: RouterUnderTest, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "/usr/bin/storescu",
            *("-aet", "PACS", "-aec", "RADROUTER", "127.0.0.1", str(router.dicom_port)),
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
    )


def _found(text: str, markers: tuple[str, ...] = MARKERS) -> list[str]:
    return [marker for marker in markers if marker.lower() in text.lower()]


def test_marker_patient_data_reaches_no_log_metric_error_or_status(
    start_router: StartRouter,
    storescp: ReceivingPacs,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # libraries as the CLI's --verbose shows them
    for name in OWN_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    paths, truncated, study_uid = _marked_study(tmp_path / "study")
    caplog.clear()  # pydicom warned about the birth date as the test wrote it: not the router
    with running_hl7_listener() as ris:
        router = start_router(_yaml(storescp, ris.port, free_port()), registry=REGISTRY)
        assert _send(router, paths).returncode == 0
        assert _send(router, [truncated]).returncode != 0, "the truncated instance is refused"
        view = wait_state(router, study_uid, {"done", "attention"}, timeout_s=90)
        assert wait_for(lambda: len(ris.raw) > 0, 30), "the flag reached the RIS"
        ris_messages = list(ris.raw)
    base = f"http://127.0.0.1:{router.http_port}"
    service = router.service

    # The failures happened (the search below would prove nothing otherwise).
    jobs = httpx.get(f"{base}/jobs", timeout=10).json()
    errors = {job["algorithm"]: job.get("error") or "" for job in jobs}
    assert "ValueError: cannot parse birth date" in errors["leaky_crash"], errors
    assert "[patient data]" in errors["leaky_crash"]
    reasons = [str(r["summary"].get("reason", "")) for r in view["results"]]
    assert any("no prior found for [patient data]" in r for r in reasons), view
    dead = service.db.query("SELECT state, last_error FROM dispatches WHERE destination = 'down'")
    assert dead and all(row["state"] == "dead" and row["last_error"] for row in dead), dead
    quarantined = sorted(service.node.ingestor.quarantine.folder.glob("*.reason.txt"))
    assert quarantined, "the truncated instance was quarantined"

    # Where patient data belongs, it is there.
    assert any(PATIENT_ID in message for message in ris_messages), "the RIS gets the patient"
    trail = service.audit_trail
    assert trail is not None and trail.flush()
    assert any(PATIENT_ID in m.patient_ids() for m in trail.log.messages())
    worklist = httpx.get(f"{base}/api/worklist", timeout=10)
    assert ACCESSION in worklist.text and _found(worklist.text, IDENTIFYING) == []

    # Nowhere else.
    answers = {
        path: httpx.get(f"{base}{path}", timeout=10)
        for path in (
            "/healthz",
            "/readyz",
            "/metrics",
            "/studies",
            f"/studies/{study_uid}",
            "/jobs",
            *(f"/jobs/{job['id']}" for job in jobs),
            "/dispatches",
            "/deliveries",
            "/studies/1.2.3.999",  # unknown study: 404
            "/studies/01.2..3",  # not a UID: 422
            "/jobs/999999",  # unknown job: 404
            "/api/results/999999/thumbnail.png",
        )
    }
    answers["POST /jobs/999999/retry"] = httpx.post(f"{base}/jobs/999999/retry", timeout=10)
    answers["PUT /studies"] = httpx.put(f"{base}/studies", timeout=10)
    assert {answers[p].status_code for p in ("/studies/1.2.3.999", "/jobs/999999")} == {404}
    assert answers["/studies/01.2..3"].status_code in (400, 404, 422)
    leaks = {path: _found(answer.text) for path, answer in answers.items() if _found(answer.text)}
    assert leaks == {}

    status = subprocess.run(
        [Path(sys.executable).parent / "radrouter", "status", "--data-dir", str(service.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "leaky_crash" in status.stdout and _found(status.stdout + status.stderr) == []

    events = service.db.query("SELECT kind, detail FROM events")
    assert any(row["kind"] == "job_failed" for row in events)
    assert [row for row in events if _found(str(row["detail"] or ""))] == []
    for reason_file in quarantined:
        assert _found(reason_file.read_text()) == [], reason_file.read_text()

    records = [
        record.getMessage() + (record.exc_text or "") + (record.stack_info or "")
        for record in caplog.records
    ]
    assert len(records) > 50
    assert any(re.search(r"leaky_crash.*failed", record) for record in records)
    leaked = [record for record in records if _found(record)]
    assert leaked == []
