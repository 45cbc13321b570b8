"""Delivery survives the outages a PACS really has: a day of capped retries by default, and a
destination that answers C-ECHO again gets what waits for it (and, when configured, what was
dead-lettered while it was down) at once, oldest first, without anyone acting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from algorithms.registry import Registry
from config.schema import DispatchRetryPolicy, NotifyRetryPolicy, RetryPolicy
from router.service import wait_for
from testing.orthanc import free_port
from testing.plugins import AlwaysNegative
from testing.router_process import (
    RouterUnderTest,
    StartRouter,
    api_get,
    storescu,
    study_uid_of,
    write_series,
)
from testing.storescp import running_storescp

REGISTRY = Registry({"always_negative": AlwaysNegative})


def covered_s(policy: RetryPolicy) -> float:
    return sum(policy.delay_s(n) for n in range(1, policy.max_attempts))


@pytest.mark.parametrize("policy", [DispatchRetryPolicy(), NotifyRetryPolicy()])
def test_the_default_budget_covers_a_day_with_a_capped_back_off(policy: RetryPolicy) -> None:
    assert covered_s(policy) >= 24 * 3600
    assert max(policy.delay_s(n) for n in range(1, policy.max_attempts)) <= 300


def config(pacs_port: int, retry: str, resend_dead: bool) -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"destinations:\n  pacs: {{ae_title: STORESCP, host: 127.0.0.1, port: {pacs_port}, "
        "timeout_s: 5}\n"
        f"dispatch: {{retry: {retry}, probe_interval_s: 0.5, "
        f"resend_dead_when_back: {str(resend_dead).lower()}}}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10}\n"
        "rules:\n"
        "  - name: chest-ct\n"
        "    when: {Modality: CT}\n"
        "    run: always_negative\n"
        "    send_to: [pacs]\n"
    )


def the_dispatch(router: RouterUnderTest, study_uid: str) -> dict[str, Any]:
    """The study's one dispatch ({} until the result is written)."""
    view = api_get(router, f"/studies/{study_uid}")
    dispatches = view.get("dispatches", []) if isinstance(view, dict) else []
    assert len(dispatches) <= 1
    return dict(dispatches[0]) if dispatches else {}


def wait_for_dispatch(
    router: RouterUnderTest, study_uid: str, state: str, timeout_s: float
) -> None:
    """Wait until the study's dispatch is in ``state``; a failure shows the dispatch as it is
    (state, attempts, last error) and the router's events, to tell a slow send from a lost one."""
    if wait_for(lambda: the_dispatch(router, study_uid).get("state") == state, timeout_s):
        return
    events = router.service.db.query("SELECT at, kind, detail FROM events ORDER BY id")
    happened = "\n".join(f"{e['at']:.2f} {e['kind']}: {e['detail']}" for e in events)
    raise AssertionError(
        f"dispatch not {state} after {timeout_s} s: {the_dispatch(router, study_uid)}\n{happened}"
    )


def test_a_pacs_down_for_a_while_gets_its_result_as_soon_as_it_answers_again(
    start_router: StartRouter, tmp_path: Path
) -> None:
    pacs_port = free_port()
    # The back-off (60 s, then more) is far longer than the test: only the probe can send it.
    retry = "{max_attempts: 300, backoff_initial_s: 60, backoff_max_s: 300}"
    router = start_router(config(pacs_port, retry, True), registry=REGISTRY)
    paths = write_series(tmp_path / "study")
    storescu(router, paths)
    study = study_uid_of(paths)
    assert wait_for(lambda: the_dispatch(router, study).get("last_error", "") != "", 60)
    waiting = the_dispatch(router, study)
    assert waiting["state"] == "pending" and waiting["last_error"].startswith("unreachable: ")
    assert waiting["next_attempt_at"] > waiting["created_at"] + 30
    with running_storescp(tmp_path / "pacs", port=pacs_port) as pacs:
        wait_for_dispatch(router, study, "done", 15)
        assert len(pacs.received("SR").get(study, [])) == 1
    assert wait_for(lambda: api_get(router, f"/studies/{study}")["state"] == "done", 10)


@pytest.mark.parametrize("resend_dead", [True, False])
def test_a_pacs_down_past_the_budget_gets_its_dead_letters_when_back_if_configured(
    start_router: StartRouter, tmp_path: Path, resend_dead: bool
) -> None:
    pacs_port = free_port()
    retry = "{max_attempts: 2, backoff_initial_s: 0.1, backoff_max_s: 0.1}"
    router = start_router(config(pacs_port, retry, resend_dead), registry=REGISTRY)
    paths = write_series(tmp_path / "study")
    storescu(router, paths)
    study = study_uid_of(paths)
    wait_for_dispatch(router, study, "dead", 60)
    assert wait_for(lambda: api_get(router, f"/studies/{study}")["state"] == "attention", 10)
    with running_storescp(tmp_path / "pacs", port=pacs_port) as pacs:
        if resend_dead:
            wait_for_dispatch(router, study, "done", 15)
            assert len(pacs.received("SR").get(study, [])) == 1
            assert wait_for(lambda: api_get(router, f"/studies/{study}")["state"] == "done", 10)
        else:
            assert not wait_for(lambda: the_dispatch(router, study).get("state") != "dead", 3)
            assert router.service.dispatcher.retry_dead() == 1  # what `radrouter retry` does
            wait_for_dispatch(router, study, "done", 15)


@contextmanager
def refusing_pacs() -> Iterator[int]:
    """A PACS that answers C-ECHO and refuses every C-STORE (0xA900: data set does not match
    the SOP class)."""
    ae = AE(ae_title="STORESCP")
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda _e: 0xA900)]
    )
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()


def test_a_pacs_that_refuses_is_not_resent_when_it_answers_echo(
    start_router: StartRouter,
) -> None:
    """A refusal is not an outage: the probe leaves those dead letters alone."""
    with refusing_pacs() as pacs_port:
        router = start_router(config(pacs_port, "{max_attempts: 1}", True), registry=REGISTRY)
        paths = write_series(router.service.data_dir.parent / "study")
        storescu(router, paths)
        study = study_uid_of(paths)
        wait_for_dispatch(router, study, "dead", 60)
        dead = the_dispatch(router, study)
        assert "refused" in dead["last_error"] and not dead["last_error"].startswith("unreachable")
        assert router.service.probe.unreachable_destinations() == []
