"""The radrouter command line: check-config, send, status, retry, print-default-config."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from router.store.database import Database
from testing.dicom_tools import make_ct_slices
from testing.orthanc import free_port

ENV = {**os.environ, "TCP_NODELAY": "1"}


def radrouter(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=120,
        cwd=cwd,
    )


def test_check_config_accepts_the_shipped_default(tmp_path: Path) -> None:
    default = radrouter("print-default-config")
    assert default.returncode == 0
    path = tmp_path / "default.yaml"
    path.write_text(default.stdout)
    result = radrouter("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_check_config_reports_file_line_and_key_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        "node:\n  port: 11112\nrules:\n  - name: a\n    when: {Modality: CT}\n    runn: lung_nodule\n"
    )
    result = radrouter("check-config", str(path))
    assert result.returncode == 1
    assert f"{path}:6:" in result.stdout and "rules[0].runn" in result.stdout


def test_check_config_rejects_an_unknown_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "unknown.yaml"
    path.write_text("rules:\n  - name: a\n    when: {Modality: CT}\n    run: no_such_model\n")
    result = radrouter("check-config", str(path))
    assert result.returncode == 1
    assert "no_such_model" in result.stdout and ":4:" in result.stdout


def test_check_config_dry_run_names_the_rule_per_series(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    samples.mkdir()
    for ds in make_ct_slices(3):
        ds.save_as(samples / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    (samples / "notes.txt").write_text("not DICOM")
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - name: chest-ct\n    when: {Modality: CT, BodyPartExamined: CHEST}\n"
        "    run: lung_nodule\n"
    )
    result = radrouter("check-config", str(path), "--against", str(samples))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chest-ct" in result.stdout and "notes.txt" in result.stdout


def test_send_stores_a_folder_on_a_real_storescp_with_progress(tmp_path: Path) -> None:
    folder = tmp_path / "ct"
    folder.mkdir()
    for ds in make_ct_slices(5):
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    scp = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), str(port)], env=ENV
    )
    try:
        time.sleep(0.5)
        result = radrouter("send", str(folder), "--port", str(port), "--aet", "STORESCP")
        assert result.returncode == 0, result.stderr
        assert "sent 5 instance(s)" in result.stdout
        assert "5/5" in result.stderr, "tqdm progress bar"
        assert len(list(out.iterdir())) == 5
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def test_send_to_a_node_that_is_down_fails_clearly(tmp_path: Path) -> None:
    ds = make_ct_slices(1)[0]
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = radrouter("send", str(path), "--port", str(free_port()), "--quiet")
    assert result.returncode == 1
    assert "send failed" in result.stderr


def test_status_lists_dead_letters_and_retry_requeues_them(tmp_path: Path) -> None:
    db = Database(tmp_path / "radrouter.sqlite3")
    db.connection().execute(
        "INSERT INTO studies (study_uid, state, first_received_at, last_received_at) "
        "VALUES ('1.2.3', 'attention', 0, 0)"
    )
    db.connection().execute(
        "INSERT INTO dispatches (study_uid, result_id, destination, state, attempts, created_at, "
        "last_error) VALUES ('1.2.3', 1, 'pacs', 'dead', 6, 0, 'association failed')"
    )
    status = radrouter("status", "--data-dir", str(tmp_path))
    assert status.returncode == 0
    assert "dead-lettered" in status.stdout and "association failed" in status.stdout
    retry = radrouter("retry", "--data-dir", str(tmp_path), "--all-dead")
    assert retry.returncode == 0 and "requeued 1" in retry.stdout
    row = db.query_one("SELECT state, attempts FROM dispatches")
    assert row is not None and (row["state"], row["attempts"]) == ("pending", 0)
    assert radrouter("retry", "--data-dir", str(tmp_path), "--all-dead").returncode == 1


def test_status_in_a_folder_without_a_router_says_so_and_creates_nothing(tmp_path: Path) -> None:
    result = radrouter("status", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "no radrouter database at" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_retry_says_why_nothing_was_requeued(tmp_path: Path) -> None:
    Database(tmp_path / "radrouter.sqlite3")
    bare = radrouter("retry", "--data-dir", str(tmp_path))
    assert bare.returncode == 2 and "say what to retry" in bare.stderr
    missing = radrouter("retry", "--data-dir", str(tmp_path), "--dispatch", "99")
    assert missing.returncode == 1
    assert "dispatch 99 is not dead-lettered" in missing.stderr


def test_status_finds_the_database_through_radrouter_config(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Database(data / "radrouter.sqlite3")
    config = tmp_path / "radrouter.yaml"
    config.write_text(f"storage: {{data_dir: {data}}}\nrules: []\n")
    result = radrouter("status", env={"RADROUTER_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert "studies" in result.stdout
