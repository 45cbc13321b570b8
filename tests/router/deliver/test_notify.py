"""The notify stage end to end: result -> priority flag -> HL7 (real MLLP) and FHIR (real HTTP)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from algorithms.registry import Registry
from router.service import wait_for
from testing.listeners import RecordedRequest, running_hl7_listener, running_http_listener
from testing.plugins import AlwaysNegative, CrashingAlgorithm, DarkestRegionOutliner
from testing.router_process import (
    RouterUnderTest,
    StartRouter,
    storescu,
    study_uid_of,
    wait_state,
    write_series,
)

REGISTRY = Registry(
    {
        "darkest_region": DarkestRegionOutliner,
        "always_negative": AlwaysNegative,
        "crashing": CrashingAlgorithm,
    }
)


def created(_request: RecordedRequest) -> tuple[int, dict[str, object]]:
    return 200, {"resourceType": "Bundle", "type": "transaction-response", "entry": []}


def yaml(run: str, hl7_port: int, fhir_url: str | None = None, extra: str = "") -> str:
    fhir = f"    fhir: {{base_url: '{fhir_url}', timeout_s: 5}}\n" if fhir_url else ""
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, hard_cap_s: 60}\n"
        "jobs: {retry: {max_attempts: 1}}\n"
        "rules:\n"
        "  - name: chest-ct\n"
        "    when: {Modality: CT, BodyPartExamined: CHEST}\n"
        f"    run: {run}\n"
        "worklist:\n"
        "  priority_policy:\n"
        "    darkest_region:\n"
        "      - when: {finding: Nodule, min_probability: 0.5}\n"
        "        raise_to: stat\n"
        "        label: dark region\n"
        "  notify:\n"
        f"    hl7: {{host: 127.0.0.1, port: {hl7_port}, receiving_application: RIS, timeout_s: 3,"
        " retry: {max_attempts: 2, backoff_initial_s: 0.2}}\n"
        f"{fhir}"
        f"{extra}"
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api(router: RouterUnderTest, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{router.http_port}{path}", timeout=10)


def test_a_positive_result_raises_a_stat_flag_on_every_channel(
    start_router: StartRouter, tmp_path: Path
) -> None:
    with running_hl7_listener() as ris, running_http_listener(created) as fhir:
        router = start_router(
            yaml("darkest_region", ris.port, fhir.base_url),
            registry=REGISTRY,
        )
        paths = write_series(tmp_path / "ct")
        storescu(router, paths)
        study_uid = study_uid_of(paths)
        view = wait_state(router, study_uid, {"done"})

    (flag,) = view["flags"]
    assert flag["priority"] == "stat" and flag["raised"] == 1 and flag["verdict"] == "present"
    assert "dark region" in flag["reason"]
    assert {d["channel"]: d["state"] for d in view["deliveries"]} == {"hl7": "done", "fhir": "done"}
    assert view["timings"]["last_image_to_flag_s"] is not None
    assert (
        view["timings"]["last_image_to_flag_delivered_s"] >= view["timings"]["last_image_to_flag_s"]
    )
    (message,) = ris.raw
    assert "ORU^R01" in message and study_uid in message and "dark region" in message
    (request,) = fhir.requests
    kinds = {e["resource"]["resourceType"] for e in request.json()["entry"]}
    assert kinds >= {"Observation", "Task"}
    worklist = api(router, "/api/worklist").json()
    assert worklist["studies"][0]["study_uid"] == study_uid
    metrics = api(router, "/metrics").text
    assert (
        'radrouter_last_image_to_flag_seconds_count{algorithm="darkest_region",channel="hl7"} 1.0'
        in metrics
    )
    assert 'channel="worklist"' in metrics


def test_a_ris_that_is_down_dead_letters_the_delivery_then_retry_delivers_it(
    start_router: StartRouter, tmp_path: Path
) -> None:
    port = closed_port()
    router = start_router(yaml("always_negative", port), registry=REGISTRY)
    paths = write_series(tmp_path / "ct")
    storescu(router, paths)
    study_uid = study_uid_of(paths)
    view = wait_state(router, study_uid, {"attention"})
    (delivery,) = view["deliveries"]
    assert delivery["state"] == "dead" and delivery["attempts"] == 2
    assert delivery["last_error"]
    (flag,) = view["flags"]
    assert flag["verdict"] == "absent" and flag["raised"] == 0, "a negative is stated, not raised"
    assert api(router, "/deliveries?state=dead").json()[0]["id"] == delivery["id"]

    with running_hl7_listener(port=port) as ris:
        # The RIS is back on its port; the dead letter is retried by command.
        retried = httpx.post(
            f"http://127.0.0.1:{router.http_port}/deliveries/{delivery['id']}/retry", timeout=10
        )
        assert retried.status_code == 200
        view = wait_state(router, study_uid, {"done"})
        assert view["deliveries"][0]["state"] == "done"
        assert len(ris.raw) == 1 and "absent" in ris.raw[0].lower()


def test_a_failed_algorithm_is_stated_on_the_worklist_and_to_the_ris(
    start_router: StartRouter, tmp_path: Path
) -> None:
    with running_hl7_listener() as ris:
        router = start_router(yaml("crashing", ris.port), registry=REGISTRY)
        paths = write_series(tmp_path / "ct")
        storescu(router, paths)
        view = wait_state(router, study_uid_of(paths), {"attention"})
        assert wait_for(lambda: len(ris.raw) == 1, 10)
    (flag,) = view["flags"]
    assert flag["verdict"] == "failed" and flag["result_id"] is None and flag["raised"] == 0
    assert "failed" in flag["reason"]
    assert "failed" in ris.raw[0].lower()


def test_shadow_mode_records_the_result_but_sends_nothing_and_raises_no_flag(
    start_router: StartRouter, tmp_path: Path
) -> None:
    with running_hl7_listener() as ris:
        router = start_router(
            yaml(
                "darkest_region", ris.port, extra="algorithms: {darkest_region: {shadow: true}}\n"
            ),
            registry=REGISTRY,
        )
        paths = write_series(tmp_path / "ct")
        storescu(router, paths)
        view = wait_state(router, study_uid_of(paths), {"done"})
    (result,) = view["results"]
    assert result["verdict"] == "present" and result["summary"]["shadow"] is True
    assert view["flags"] == [] and view["deliveries"] == [] and view["dispatches"] == []
    assert ris.raw == []
