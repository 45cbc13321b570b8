"""Prior retrieval is its own stage: a follow-up waiting for a slow PACS never holds a worker,
so a STAT study that arrives meanwhile starts at once; and when the PACS answers (here: with
nothing), the follow-up runs on the current exam alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from algorithms.registry import Registry
from testing.orthanc import free_port
from testing.plugins import AlwaysNegative, DarkestRegionOutliner
from testing.router_process import (
    StartRouter,
    api_get,
    storescu,
    study_uid_of,
    wait_state,
    write_series,
)

pytestmark = pytest.mark.slow

REGISTRY = Registry({"always_negative": AlwaysNegative, "darkest_region": DarkestRegionOutliner})


@contextmanager
def slow_query_scp() -> Iterator[tuple[int, threading.Event, threading.Event]]:
    """A PACS whose C-FIND hangs until released (then answers: no studies)."""
    queried, released = threading.Event(), threading.Event()

    def on_find(event: Any) -> Iterator[tuple[int, None]]:
        queried.set()
        released.wait(60)
        yield 0x0000, None

    ae = AE(ae_title="SLOWPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    assert server is not None
    try:
        yield port, queried, released
    finally:
        released.set()
        server.shutdown()


def config(pacs_port: int) -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, hard_cap_s: 60}\n"
        "jobs: {workers: 1}\n"
        "algorithms:\n"
        "  darkest_region:\n"
        "    priors:\n"
        "      max_age_days: 36500\n"
        f"      sources: [{{ae_title: SLOWPACS, host: 127.0.0.1, port: {pacs_port}, timeout_s: 60}}]\n"
        "rules:\n"
        "  - name: follow-up\n"
        "    when: {CallingAE: FOLLOWUP, Modality: CT}\n"
        "    run: darkest_region\n"
        "  - name: emergency\n"
        "    when: {CallingAE: ER, Modality: CT}\n"
        "    run: always_negative\n"
        "    priority: stat\n"
    )


def test_a_stat_job_starts_within_a_second_while_a_follow_up_waits_for_its_prior(
    start_router: StartRouter, tmp_path: Path
) -> None:
    with slow_query_scp() as (pacs_port, queried, released):
        router = start_router(config(pacs_port), registry=REGISTRY)
        follow_up = write_series(tmp_path / "follow-up")
        storescu(router, follow_up, calling="FOLLOWUP")
        assert queried.wait(30), "the prior stage never queried the PACS"
        waiting = api_get(router, f"/studies/{study_uid_of(follow_up)}")
        assert [j["state"] for j in waiting["jobs"]] == ["waiting"]

        emergency = write_series(tmp_path / "emergency")
        storescu(router, emergency, calling="ER")
        done = wait_state(router, study_uid_of(emergency), {"done"}, timeout_s=30)
        (job,) = done["jobs"]
        assert job["priority"] == "stat" and job["state"] == "done"
        delay = job["started_at"] - job["created_at"]
        print(f"STAT job started {delay:.3f} s after it was queued (follow-up still waiting)")
        assert delay < 1.0, job
        still = api_get(router, f"/studies/{study_uid_of(follow_up)}")
        assert [j["state"] for j in still["jobs"]] == ["waiting"], "the PACS has not answered"

        released.set()
        finished = wait_state(router, study_uid_of(follow_up), {"done"}, timeout_s=30)
        (follow_up_job,) = finished["jobs"]
        assert follow_up_job["state"] == "done" and follow_up_job["prior_series_uid"] == ""
        (request,) = finished["prior_requests"]
        assert (request["state"], request["outcome"]) == ("done", "none found")
