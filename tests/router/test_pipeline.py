"""The pipeline's failure modes: crashing and hanging models, PACS down, unrouted, late images."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from algorithms.registry import Registry
from dicom_sr.read import read_measurement_report
from router.service import wait_for
from testing.dicom_tools import make_ct_slices, run_dciodvfy
from testing.orthanc import free_port
from testing.plugins import AlwaysNegative, CrashingAlgorithm, HangingAlgorithm
from testing.router_process import (
    DCMTK_ENV,
    StartRouter,
    api_get,
    storescu,
    study_uid_of,
    wait_state,
    write_series,
)
from testing.storescp import complete_objects

pytestmark = [pytest.mark.slow, pytest.mark.both_engines]

TEST_REGISTRY = Registry(
    {"crashing": CrashingAlgorithm, "hanging": HangingAlgorithm, "always_negative": AlwaysNegative}
)


def config(run: str, destination_port: int | None = None, extra: str = "") -> str:
    destination = send_to = ""
    if destination_port is not None:
        destination = (
            "destinations:\n"
            f"  pacs: {{ae_title: STORESCP, host: 127.0.0.1, port: {destination_port}, timeout_s: 5}}\n"
            "dispatch: {retry: {max_attempts: 2, backoff_initial_s: 0.2}}\n"
        )
        send_to = "    send_to: [pacs]\n"
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"{destination}"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, hard_cap_s: 60}\n"
        "jobs: {retry: {max_attempts: 2, backoff_initial_s: 0.1}}\n"
        "rules:\n"
        "  - name: chest-ct\n"
        "    when: {Modality: CT, BodyPartExamined: CHEST}\n"
        f"    run: {run}\n"
        f"{send_to}{extra}"
    )


def test_crashing_model_fails_the_job_with_its_reason_after_retries(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(config("crashing"), registry=TEST_REGISTRY)
    paths = write_series(tmp_path / "ct")
    storescu(router, paths)
    view = wait_state(router, study_uid_of(paths), {"attention"})
    job = view["jobs"][0]
    assert job["state"] == "failed" and job["attempts"] == 2
    assert "simulated model crash" in job["error"]
    assert api_get(router, "/jobs?state=failed")[0]["id"] == job["id"]
    # The node keeps serving, and the failure is visible in metrics.
    storescu(router, write_series(tmp_path / "ct2"))
    assert (
        'radrouter_jobs{state="failed"}'
        in httpx.get(f"http://127.0.0.1:{router.http_port}/metrics").text
    )


def test_hanging_model_times_out_and_does_not_block_the_next_study(
    start_router: StartRouter, tmp_path: Path
) -> None:
    HangingAlgorithm.release.clear()
    router = start_router(
        config(
            "hanging", extra="  - name: other\n    when: {Modality: CT}\n    run: always_negative\n"
        ),
        registry=TEST_REGISTRY,
    )
    paths = write_series(tmp_path / "ct")
    storescu(router, paths)
    view = wait_state(router, study_uid_of(paths), {"attention"}, timeout_s=60)
    assert "did not finish within 1 s" in view["jobs"][0]["error"]
    HangingAlgorithm.release.set()


def test_pacs_down_dead_letters_the_result_then_retry_delivers_it(
    start_router: StartRouter, tmp_path: Path
) -> None:
    pacs_port = free_port()
    router = start_router(
        config("always_negative", destination_port=pacs_port), registry=TEST_REGISTRY
    )
    paths = write_series(tmp_path / "ct")
    study_uid = study_uid_of(paths)
    storescu(router, paths)
    view = wait_state(router, study_uid, {"attention"})
    dispatch = view["dispatches"][0]
    assert dispatch["state"] == "dead" and dispatch["attempts"] == 2
    assert "association" in dispatch["last_error"]
    assert [d["id"] for d in api_get(router, "/dispatches?state=dead")] == [dispatch["id"]]

    received = tmp_path / "pacs"
    received.mkdir()
    pacs = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(received), str(pacs_port)],
        env=DCMTK_ENV,
    )
    try:
        time.sleep(0.5)
        response = httpx.post(
            f"http://127.0.0.1:{router.http_port}/dispatches/{dispatch['id']}/retry", timeout=10
        )
        assert response.status_code == 200
        view = wait_state(router, study_uid, {"done"})
        assert view["dispatches"][0]["state"] == "done"
        files = list(received.iterdir())
        assert len(files) == 1
        assert run_dciodvfy(files[0]).errors == []
        summary = read_measurement_report(pydicom.dcmread(files[0]))
        assert summary.verdict.value == "absent" and summary.study_instance_uid == study_uid
    finally:
        pacs.send_signal(signal.SIGTERM)
        pacs.wait(timeout=10)


def test_study_no_rule_matches_is_recorded_as_unrouted_with_the_reason(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(config("always_negative"), registry=TEST_REGISTRY)
    folder = tmp_path / "mr"
    folder.mkdir()
    paths = []
    for ds in make_ct_slices(4):
        ds.BodyPartExamined = "KNEE"
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    storescu(router, paths)
    view = wait_state(router, study_uid_of(paths), {"unrouted"})
    assert view["jobs"] == []
    assert "KNEE" in view["series"][0]["route_explanation"]


def test_late_instance_reopens_the_study_and_writes_version_two(
    start_router: StartRouter, tmp_path: Path
) -> None:
    pacs_port = free_port()
    received = tmp_path / "pacs"
    received.mkdir()
    pacs = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(received), str(pacs_port)],
        env=DCMTK_ENV,
    )
    try:
        router = start_router(
            config("always_negative", destination_port=pacs_port), registry=TEST_REGISTRY
        )
        paths = write_series(tmp_path / "ct", n=9)
        study_uid = study_uid_of(paths)
        storescu(router, paths[:8])
        wait_state(router, study_uid, {"done"})
        storescu(router, paths[8:])
        view = wait_state(router, study_uid, {"done"})

        def two_results() -> bool:
            return len(api_get(router, f"/studies/{study_uid}")["results"]) == 2

        assert wait_for(two_results, 30)
        view = api_get(router, f"/studies/{study_uid}")
        assert view["revision"] == 2
        assert [r["version_number"] for r in view["results"]] == [1, 2]
        assert wait_for(lambda: len(list(complete_objects(received))) == 2, 30)
        reports = [read_measurement_report(ds) for _, ds in complete_objects(received)]
        newest = max(reports, key=lambda r: len(r.predecessor_sop_instance_uids))
        oldest = min(reports, key=lambda r: len(r.predecessor_sop_instance_uids))
        assert newest.predecessor_sop_instance_uids == (oldest.sop_instance_uid,)
    finally:
        pacs.send_signal(signal.SIGTERM)
        pacs.wait(timeout=10)


def test_unknown_calling_ae_is_refused_when_an_allow_list_is_set(
    start_router: StartRouter, tmp_path: Path
) -> None:
    yaml_text = config("always_negative").replace(
        "port: {port}}", "port: {port}, allowed_callers: [{ae_title: PACS, host: 127.0.0.1}]}"
    )
    router = start_router(yaml_text, registry=TEST_REGISTRY)
    paths = write_series(tmp_path / "ct", n=2)
    with pytest.raises(subprocess.CalledProcessError):
        storescu(router, paths, calling="STRANGER")
    storescu(router, paths, calling="PACS")
    assert api_get(router, f"/studies/{study_uid_of(paths)}")["state"] in {
        "receiving",
        "processing",
        "done",
    }


def test_series_that_cannot_be_a_volume_gets_a_not_assessed_sr_with_the_reason(
    start_router: StartRouter, tmp_path: Path
) -> None:
    pacs_port = free_port()
    received = tmp_path / "pacs"
    received.mkdir()
    pacs = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(received), str(pacs_port)],
        env=DCMTK_ENV,
    )
    try:
        router = start_router(
            config("always_negative", destination_port=pacs_port), registry=TEST_REGISTRY
        )
        folder = tmp_path / "localizers"
        folder.mkdir()
        paths = []
        for ds in make_ct_slices(4):  # valid images, but scout views only: no volume
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        storescu(router, paths)
        view = wait_state(router, study_uid_of(paths), {"done"})
        assert view["jobs"][0]["verdict"] == "not_assessed"
        assert "localizer" in view["results"][0]["summary"]["reason"]
        assert wait_for(lambda: len(list(complete_objects(received))) == 1, 20)
        sr = next(received.iterdir())
        assert run_dciodvfy(sr).errors == []
        summary = read_measurement_report(pydicom.dcmread(sr))
        assert summary.verdict.value == "not_assessed" and "localizer" in summary.reason
    finally:
        pacs.send_signal(signal.SIGTERM)
        pacs.wait(timeout=10)
