"""Retention: a finished study's images and result files are deleted after the configured
period (an unresolved one's later), its index rows stay, and only files inside the data folder
that the index names are ever deleted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from algorithms.registry import Registry
from router.audit.messages import Action, EventId
from router.retention import DAY_S
from testing.plugins import AlwaysNegative
from testing.router_process import StartRouter, storescu, study_uid_of, wait_state, write_series
from testing.storescp import ReceivingPacs

pytestmark = pytest.mark.slow

REGISTRY = Registry({"always_negative": AlwaysNegative})


def config(pacs: ReceivingPacs, extra: str = "") -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"destinations:\n  pacs: {pacs.destination_yaml()}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10}\n"
        f"storage: {{keep_finished_days: 30, keep_unresolved_days: 90{extra}}}\n"
        "rules:\n"
        "  - name: chest-ct\n"
        "    when: {Modality: CT}\n"
        "    run: always_negative\n"
        "    send_to: [pacs]\n"
    )


def test_a_finished_study_is_purged_after_its_period_and_only_then(
    start_router: StartRouter, storescp: ReceivingPacs, tmp_path: Path
) -> None:
    router = start_router(config(storescp), registry=REGISTRY)
    paths = write_series(tmp_path / "study")
    storescu(router, paths)
    study = study_uid_of(paths)
    wait_state(router, study, {"done"})
    db = router.service.db
    files = [Path(r["path"]) for r in db.query("SELECT path FROM instances")] + [
        Path(r["path"]) for r in db.query("SELECT path FROM result_objects")
    ]
    assert len(files) > len(paths) and all(f.exists() for f in files)
    stage = router.service.retention
    finished = float(db.query("SELECT finished_at FROM studies")[0]["finished_at"])

    stage.run_once(now=finished + 29 * DAY_S)
    assert all(f.exists() for f in files), "not yet"

    stage.run_once(now=finished + 31 * DAY_S)
    assert not any(f.exists() for f in files)
    row = db.query_one("SELECT state, purged_at FROM studies WHERE study_uid = ?", (study,))
    assert row is not None and row["state"] == "done" and row["purged_at"] is not None
    assert len(db.query("SELECT 1 FROM instances WHERE study_uid = ?", (study,))) == len(paths)
    assert db.query("SELECT 1 FROM events WHERE kind = 'study_purged' AND study_uid = ?", (study,))
    data = router.service.data_dir
    assert (data / "spool").is_dir() and (data / "results").is_dir()
    assert not (data / "spool" / study).exists(), "its emptied folders go too"

    trail = router.service.audit_trail
    assert trail is not None and trail.flush()
    (deleted,) = [m for m in trail.log.messages() if m.event_id is EventId.STUDY_DELETED]
    assert deleted.action is Action.DELETE
    assert deleted.study_uids() == (study,)
    assert deleted.patient_ids() == ("PAT0001",), "read before the files went"
    assert "storage.keep_finished_days" in (deleted.outcome_description or "")


def test_an_unresolved_study_is_kept_longer_and_a_live_one_never(
    start_router: StartRouter, storescp: ReceivingPacs, tmp_path: Path
) -> None:
    router = start_router(config(storescp), registry=REGISTRY)
    db = router.service.db
    paths = write_series(tmp_path / "study")
    storescu(router, paths)
    study = study_uid_of(paths)
    wait_state(router, study, {"done"})
    finished = float(db.query("SELECT finished_at FROM studies")[0]["finished_at"])
    db.connection().execute("UPDATE studies SET state = 'attention'")
    stage = router.service.retention
    stage.run_once(now=finished + 31 * DAY_S)
    assert db.query("SELECT purged_at FROM studies")[0]["purged_at"] is None
    stage.run_once(now=finished + 91 * DAY_S)
    assert db.query("SELECT purged_at FROM studies")[0]["purged_at"] is not None

    db.connection().execute("UPDATE studies SET state = 'processing', purged_at = NULL")
    assert stage.due_studies(time.time() + 1000 * DAY_S) == []


def test_a_file_outside_the_data_folder_is_never_deleted(
    start_router: StartRouter, storescp: ReceivingPacs, tmp_path: Path
) -> None:
    router = start_router(config(storescp), registry=REGISTRY)
    paths = write_series(tmp_path / "study")
    storescu(router, paths)
    study = study_uid_of(paths)
    wait_state(router, study, {"done"})
    db = router.service.db
    outside = tmp_path / "not-ours.dcm"
    outside.write_bytes(b"precious")
    db.connection().execute(
        "UPDATE instances SET path = ? WHERE sop_instance_uid = (SELECT MIN(sop_instance_uid) FROM instances)",
        (str(outside),),
    )
    router.service.retention.purge(study)
    assert outside.read_bytes() == b"precious"
