"""The admin page's JSON on a running router: the overview, the rules that fired, the
algorithms, the dead letters, and a configuration checked against recent studies, diffed,
refused, and applied (written, running, recorded with who)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from router.admin_page.config_edit import restore_secrets, secret_problems
from router.audit.config_change import REDACTED, redact
from router.service import wait_for
from testing.router_process import StartRouter
from tests.router.admin_page.support import get, post, send_ct, start_admin_router


@pytest.mark.both_engines
def test_the_overview_studies_algorithms_and_dead_letters(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router, _pacs_port = start_admin_router(start_router)
    negative = send_ct(router, tmp_path / "a", "Chest 1mm")
    crashed = send_ct(router, tmp_path / "b", "CRASH me")
    assert wait_for(lambda: get(router, "/api/admin/overview")["dead_letters"]["dispatches"], 30)

    overview = get(router, "/api/admin/overview")
    assert [stage["stage"] for stage in overview["stages"]] == [
        "receiving", "routing", "priors", "queued", "running", "external", "sending", "notifying",
    ]  # fmt: skip
    assert all(stage["count"] == 0 for stage in overview["stages"]), overview["stages"]
    # The negative study's result could not reach the PACS (down); the crash failed.
    assert overview["dead_letters"] == {"jobs": 1, "dispatches": 1, "deliveries": 0}
    assert overview["workers"] == {"configured": 1, "busy": 0}
    assert {m["name"] for m in overview["models"]} == {"always_negative", "crashing"}
    assert overview["ready"] is True

    studies = {s["study_uid"]: s for s in get(router, "/api/admin/studies?limit=5")}
    assert [s["rules"] for s in studies[negative]["series"]] == [["chest-ct"]]
    assert [s["rules"] for s in studies[crashed]["series"]] == [["crash-test"]]
    assert [(j["algorithm"], j["state"]) for j in studies[crashed]["jobs"]] == [
        ("crashing", "failed")
    ]
    assert [(j["algorithm"], j["verdict"]) for j in studies[negative]["jobs"]] == [
        ("always_negative", "absent")
    ]

    algorithms = {a["name"]: a for a in get(router, "/api/admin/algorithms")}
    assert algorithms["crashing"]["runs"] == 1 and algorithms["crashing"]["failure_rate"] == 1.0
    assert algorithms["always_negative"]["failure_rate"] == 0.0
    assert algorithms["always_negative"]["version"]
    assert algorithms["always_negative"]["last_run"] is not None

    dead = get(router, "/api/admin/dead-letters")
    assert [(d["study_uid"], d["target"]) for d in dead["dispatches"]] == [(negative, "pacs")]
    assert [(d["study_uid"], d["target"]) for d in dead["jobs"]] == [(crashed, "crashing")]
    assert dead["deliveries"] == []


def test_a_candidate_is_checked_against_recent_studies_then_applied(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router, _ = start_admin_router(start_router)
    study = send_ct(router, tmp_path / "a", "Chest 1mm")
    config = get(router, "/api/admin/config")
    assert config["editable"] and config["file"] == str(tmp_path / "radrouter.yaml")
    original = config["text"]
    assert "name: chest-ct\n" in original

    # The chest rule renamed and narrowed to MR: the CT of the last study is then unrouted.
    candidate = original.replace(
        "name: chest-ct\n    when: {Modality: CT}", "name: chest-mr\n    when: {Modality: MR}"
    )
    assert candidate != original
    check = post(router, "/api/admin/config/check", {"text": candidate, "studies": 5}).json()
    assert check["valid"] and check["problems"] == []
    assert "-  - name: chest-ct" in check["diff"] and "+  - name: chest-mr" in check["diff"]
    [series] = check["dry_run"]["series"]
    assert series["study_uid"] == study and series["changed"]
    assert "always_negative" in series["before"] and "unrouted" in series["after"]
    assert "rule 'chest-mr': did not match" in series["explanation"]
    assert "[FAIL] Modality: found CT, expected equals MR" in series["explanation"]

    # A broken candidate: named by line, nothing applied.
    broken = candidate.replace("run: always_negative", "run: always_negatve")
    check = post(router, "/api/admin/config/check", {"text": broken}).json()
    assert not check["valid"]
    assert any("always_negatve" in p and "always_negative" in p for p in check["problems"])
    refused = post(
        router, "/api/admin/config/apply", {"text": broken, "based_on": config["digest"]}
    )
    assert refused.status_code == 422
    assert router.service.holder.current().rules[1].name == "chest-ct"

    stale = post(router, "/api/admin/config/apply", {"text": candidate, "based_on": "0" * 64})
    assert stale.status_code == 409

    applied = post(
        router, "/api/admin/config/apply", {"text": candidate, "based_on": config["digest"]}
    )
    assert applied.status_code == 200, applied.text
    assert [r.name for r in router.service.holder.current().rules] == ["crash-test", "chest-mr"]
    assert (tmp_path / "radrouter.yaml").read_text(encoding="utf-8") == candidate
    assert get(router, "/api/admin/config")["digest"] == applied.json()["digest"]
    # The watcher sees its own write as no change: no second record.
    assert not router.service.holder.reload_if_changed(now=1e12)

    history = get(router, "/api/admin/config/history")
    assert [(h["source"], h["accepted"], h["editor"]) for h in history] == [
        ("admin page", True, "anonymous"),
        ("admin page", False, "anonymous"),
    ]
    assert "+  - name: chest-mr" in history[0]["diff"]
    assert "always_negatve" in history[1]["problems"]
    events = router.service.db.query("SELECT detail FROM events WHERE kind = 'config_changed'")
    assert len(events) == 2 and json.loads(events[0]["detail"])["source"] == "admin page"

    # A refused edit on disk is never overwritten from the page: resolve it in the file first.
    (tmp_path / "radrouter.yaml").write_text("rules: [\n", encoding="utf-8")
    assert wait_for(lambda: router.service.holder.rejection is not None, 10)
    current = get(router, "/api/admin/config")
    answer = post(
        router, "/api/admin/config/apply", {"text": candidate, "based_on": current["digest"]}
    )
    assert answer.status_code == 409
    assert (tmp_path / "radrouter.yaml").read_text(encoding="utf-8") == "rules: [\n"


def test_without_a_file_the_configuration_is_shown_but_not_applied(
    start_router: StartRouter,
) -> None:
    router = start_router(
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\nhttp: {host: 127.0.0.1, port: 0}\n"
    )
    config = get(router, "/api/admin/config")
    assert config["editable"] is False and config["file"] is None
    answer = post(
        router, "/api/admin/config/apply", {"text": "rules: []\n", "based_on": config["digest"]}
    )
    assert answer.status_code == 422
    assert "--config FILE" in answer.json()["detail"]["problems"][0]


def test_secret_values_never_reach_the_page_and_survive_an_edit() -> None:
    running = (
        "worklist:\n  notify:\n    fhir:\n      url: https://ris.example.org/fhir\n"
        "      api_key: s3cr3t-value\n"
        "rules:\n  - name: a\n    when: {Modality: CT}\n    run: x\n"
    )
    shown = redact(running)
    assert "s3cr3t-value" not in shown and REDACTED in shown
    edited = shown.replace("name: a", "name: b")
    restored = restore_secrets(edited, running)
    assert "api_key: s3cr3t-value" in restored and "name: b" in restored
    assert secret_problems(restored) == []
    # A redacted line that was changed keeps its placeholder: refused, never written.
    touched = shown.replace(f"api_key: {REDACTED}", f"api_key:  {REDACTED}")
    assert secret_problems(restore_secrets(touched, running)) != []


def test_every_admin_path_needs_the_admin_role() -> None:
    from config.schema import ApiRole
    from router.api.access import needed_for

    for method, path in (
        ("GET", "/admin"),
        ("GET", "/admin/assets/admin.js"),
        ("GET", "/api/admin/overview"),
        ("POST", "/api/admin/config/apply"),
    ):
        assert needed_for(method, path) is ApiRole.ADMIN, path
    assert httpx  # the module is used by the support functions' callers
