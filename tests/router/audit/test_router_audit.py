"""A real router run leaves the audit trail a privacy officer needs: the store, the sends, a
study view, feedback, a retry, a refused association and a config change, each a valid
DICOM audit message naming who, which study and whose data; ``radrouter audit --study``
lists who saw the study."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from algorithms.registry import Registry
from config.loader import read_config
from router.audit.messages import AuditMessage, EventId, EventType, Outcome
from router.cli import main
from router.service import RouterService, wait_for
from testing.dicom_tools import make_ct_slices
from testing.orthanc import free_port
from testing.plugins import DarkestRegionOutliner
from testing.router_process import DCMTK_ENV, RouterUnderTest, StartRouter, storescu, wait_state
from testing.storescp import ReceivingPacs
from tests.router.audit.schema import schema_errors

REGISTRY = Registry({"darkest_region": DarkestRegionOutliner})
PATIENT_ID = "AUDIT-PID-0815"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _yaml(pacs: ReceivingPacs, down_port: int) -> str:
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
        "audit: {repeat_window_s: 0}\n"
        "rules:\n"
        "  - name: chest-ct\n"
        "    when: {Modality: CT, BodyPartExamined: CHEST}\n"
        "    run: darkest_region\n"
        "    send_to: [pacs, down]\n"
    )


def _series(folder: Path) -> tuple[list[Path], str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    slices = make_ct_slices(8)
    for ds in slices:
        ds.PatientID = PATIENT_ID
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, str(slices[0].StudyInstanceUID)


def _messages(router: RouterUnderTest) -> list[AuditMessage]:
    trail = router.service.audit_trail
    assert trail is not None and trail.flush()
    return list(trail.log.messages())


def _of(messages: list[AuditMessage], event: EventId) -> list[AuditMessage]:
    return [m for m in messages if m.event_id is event]


def _requestor(message: AuditMessage) -> str:
    (requestor,) = message.requestors()
    return f"{requestor.user_id}@{requestor.network_access_point}"


def test_a_router_run_leaves_the_audit_trail(
    start_router: StartRouter,
    storescp: ReceivingPacs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    router = start_router(_yaml(storescp, free_port()), registry=REGISTRY)
    api = f"http://127.0.0.1:{router.http_port}"
    paths, study_uid = _series(tmp_path / "series")
    storescu(router, paths, calling="CT_SCANNER")
    view = wait_state(router, study_uid, {"attention"})  # the send to "down" is dead
    refused = subprocess.run(
        ["/usr/bin/storescu", "-aet", "INTRUDER", "-aec", "NOT_US", "127.0.0.1",
         str(router.dicom_port), str(paths[0])],
        capture_output=True, env=DCMTK_ENV, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    result_id = view["results"][0]["id"]
    feedback = httpx.post(f"{api}/api/results/{result_id}/feedback", json={"agree": False})
    assert feedback.status_code == 201
    (dead,) = [d for d in view["dispatches"] if d["state"] == "dead"]
    assert httpx.post(f"{api}/dispatches/{dead['id']}/retry").status_code == 200

    messages = _messages(router)
    assert all(schema_errors(m.to_xml()) == [] for m in messages)
    started = [m for m in messages if EventType.APPLICATION_START.value in m.event_types]
    assert len(started) == 1

    # The store: one message for the association, from the scanner, naming the patient.
    (stored,) = [m for m in _of(messages, EventId.INSTANCES_TRANSFERRED) if m.action.value == "C"]
    assert _requestor(stored) == "CT_SCANNER@127.0.0.1"
    assert stored.study_uids() == (study_uid,) and stored.patient_ids() == (PATIENT_ID,)
    assert [(s.uid, s.count) for s in stored.objects[0].sop_classes] == [(CT_IMAGE, 8)]

    # The sends: begun and finished, to the PACS (taken) and to the one that is down (not).
    sends = [m for m in _of(messages, EventId.INSTANCES_TRANSFERRED) if m.action.value == "R"]
    by_peer = {m.participants[1].user_id: m for m in sends}
    assert by_peer["STORESCP"].outcome is Outcome.SUCCESS
    assert by_peer["STORESCP"].patient_ids() == (PATIENT_ID,)
    assert by_peer["DOWN"].outcome is Outcome.MINOR_FAILURE
    assert len(_of(messages, EventId.BEGIN_TRANSFERRING)) >= 2

    # The study view (wait_state read it through the API), feedback and the retry.
    views = _of(messages, EventId.INSTANCES_ACCESSED)
    assert views and all(_requestor(m) == "anonymous@127.0.0.1" for m in views)
    assert views[0].study_uids() == (study_uid,) and views[0].patient_ids() == (PATIENT_ID,)
    records = _of(messages, EventId.PROCEDURE_RECORD)
    kinds = {m.event_types[0].code: m for m in records}
    assert kinds["feedback"].study_uids() == (study_uid,)
    assert kinds["feedback"].outcome_description == f"disagrees with result {result_id}"
    assert kinds["retry"].study_uids() == (study_uid,)
    assert kinds["retry"].objects[0].object_id == str(dead["id"])

    # The refused association: a security alert naming the caller and the AE title it used.
    (alert,) = [
        m for m in _of(messages, EventId.SECURITY_ALERT)
        if EventType.NODE_AUTHENTICATION.value in m.event_types
    ]  # fmt: skip
    assert _requestor(alert) == "INTRUDER@127.0.0.1"
    assert alert.outcome is Outcome.MINOR_FAILURE
    assert alert.outcome_description is not None and "'NOT_US'" in alert.outcome_description

    # Who saw this study: the command reads the log (and records that it did).
    capsys.readouterr()
    data_dir = router.service.data_dir
    assert main(["audit", "--data-dir", str(data_dir), "--study", study_uid]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert any("anonymous@127.0.0.1" in line and "Study view" in line for line in listed)
    assert any("CT_SCANNER@127.0.0.1" in line for line in listed)
    assert main(["audit", "--data-dir", str(data_dir), "--user", "INTRUDER"]) == 0
    (intruder,) = capsys.readouterr().out.splitlines()
    assert "Security Alert" in intruder and "FAILED" in intruder
    used = _of(_messages(router), EventId.AUDIT_LOG_USED)
    assert len(used) == 2


def test_a_config_change_is_recorded_with_its_diff_and_without_secrets(
    storescp: ReceivingPacs, tmp_path: Path
) -> None:
    path = tmp_path / "routing.yaml"
    text = _yaml(storescp, free_port()).replace("{port}", str(free_port()))
    path.write_text(text + "# api_token: first-secret\n")
    service = RouterService(
        read_config(path).config, path, data_dir=tmp_path / "data", registry=REGISTRY
    )
    service.start()
    try:
        stamp = path.stat().st_mtime
        path.write_text(text.replace("chest-ct", "chest-ct-v2") + "# api_token: second-secret\n")
        os.utime(path, (stamp + 1, stamp + 1))
        assert wait_for(lambda: service.holder.current().rules[0].name == "chest-ct-v2", 10)
        path.write_text(text + "nonsense_key: 1\n")
        os.utime(path, (stamp + 2, stamp + 2))
        trail = service.audit_trail
        assert trail is not None

        def changes() -> list[AuditMessage]:
            trail.flush()  # after stop: everything is written already
            return [
                m
                for m in trail.log.messages()
                if EventType.SOFTWARE_CONFIGURATION.value in m.event_types
            ]

        assert wait_for(lambda: len(changes()) == 2, 10)
    finally:
        service.stop()
    accepted, refused = changes()
    assert accepted.outcome is Outcome.SUCCESS and refused.outcome is Outcome.MINOR_FAILURE
    assert refused.outcome_description is not None and "nonsense_key" in refused.outcome_description
    diff = accepted.objects[0].details[0][1].decode()
    assert "-  - name: chest-ct\n" in diff and "+  - name: chest-ct-v2\n" in diff
    assert "secret" not in diff.replace("api_token", "")
    assert accepted.objects[0].object_id == str(path)
    assert all(schema_errors(m.to_xml()) == [] for m in (accepted, refused))
