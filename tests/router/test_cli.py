"""The radrouter command line: check-config, send, status, retry, print-default-config, its
help and version."""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
import tomllib
from pathlib import Path

import pytest

from router.admin import READY_STATES, SECTIONS
from router.cli import build_parser, installed_version
from router.store.database import Database, SqliteDatabase
from testing.dicom_tools import make_ct_slices
from testing.orthanc import free_port
from testing.queue_rows import add_dispatch
from testing.router_process import RouterUnderTest, StartRouter

REPO = Path(__file__).resolve().parents[2]

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
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    add_dispatch(db, state="dead", attempts=6, last_error="association failed")
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
    SqliteDatabase(tmp_path / "radrouter.sqlite3")
    bare = radrouter("retry", "--data-dir", str(tmp_path))
    assert bare.returncode == 2 and "say what to retry" in bare.stderr
    missing = radrouter("retry", "--data-dir", str(tmp_path), "--dispatch", "99")
    assert missing.returncode == 1
    assert "dispatch 99 is not dead-lettered" in missing.stderr


def test_status_finds_the_database_through_radrouter_config(tmp_path: Path) -> None:
    data = tmp_path / "data"
    SqliteDatabase(data / "radrouter.sqlite3")
    config = tmp_path / "radrouter.yaml"
    # No router answers at this http address (port 0: none to ask), so the database is read.
    config.write_text(f"http: {{port: 0}}\nstorage: {{data_dir: {data}}}\nrules: []\n")
    result = radrouter("status", env={"RADROUTER_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert "studies" in result.stdout
    assert result.stderr.startswith(f"source: database {data.resolve()}")
    assert f"storage.data_dir of {config} ($RADROUTER_CONFIG)" in result.stderr


# --------------------------------------------------------------------------------------------
# Help and version


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args, "--help"])
    return capsys.readouterr().out


def _entries(help_text: str) -> dict[str, str]:
    """Each argument of a help text's argument sections: its invocation and its help."""
    entries: dict[str, str] = {}
    section = False
    current = ""
    for line in help_text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            section = line in ("options:", "positional arguments:")
            continue
        if not section or not line.strip():
            continue
        if re.match(r"^  \S", line):  # a new argument: "  --port PORT   help..."
            invocation, _, text = line.strip().partition("  ")
            current = invocation
            entries[current] = text.strip()
        elif current:  # the help's continuation (or the whole help, after a long invocation)
            entries[current] = f"{entries[current]} {line.strip()}".strip()
    return entries


def test_every_option_has_help_and_shows_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    main = _help(capsys)
    commands = re.findall(r"^    (\S+)", main, flags=re.MULTILINE)
    assert {"serve", "check-config", "send", "status", "retry", "demo-study"} <= set(commands)
    undocumented: list[str] = []
    for command in ["", *commands]:
        text = main if not command else _help(capsys, command)
        entries = _entries(text)
        assert entries, f"no arguments found in the help of {command or 'radrouter'}"
        for invocation, help_text in entries.items():
            where = f"{command or 'radrouter'} {invocation}"
            if not help_text and not (command == "" and invocation == "COMMAND"):
                undocumented.append(f"{where}: no help")
            exempt = invocation in ("-h, --help", "--version") or not invocation.startswith("-")
            if not exempt and "(default: " not in help_text:
                undocumented.append(f"{where}: no default shown ({help_text!r})")
    assert not undocumented, "\n".join(undocumented)


def test_help_shows_the_value_of_a_default_and_flags_as_off(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    send = _entries(_help(capsys, "send"))
    assert send["--port PORT"].endswith("(default: 11112)")
    assert send["--quiet"].endswith("(default: off)")
    status = _help(capsys, "status")
    assert "--api URL" in status and "Where it reads:" in status  # the description as written


def test_version_prints_the_installed_version() -> None:
    result = radrouter("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"radrouter {importlib.metadata.version('radrouter')}\n"


def test_version_falls_back_to_pyproject_when_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert installed_version() == pyproject["project"]["version"]


# --------------------------------------------------------------------------------------------
# check-config: every problem at once, a dry run of the valid rules, progress

SEVERAL_MISTAKES = """\
node:
  port: abc
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
rules:
  - name: chest-ct
    when: {Modality: CT, BodyPartExamined: CHEST}
    run: lung_nodule
    send_to: [pacs]
  - name: typo-algorithm
    when: {Modality: CT}
    run: lung_nodle
  - name: typo-destination
    when: {Modality: CT}
    send_to: [pcas]
  - name: bad-matcher
    when: {Modalty: CT, SliceThickness: {max: thin}}
  - name: any-ct
    when: {Modality: CT}
    priorty: stat
"""


def _samples(folder: Path, slices: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for ds in make_ct_slices(slices):
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return folder


def test_check_config_lists_every_mistake_with_a_true_count(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(SEVERAL_MISTAKES)
    result = radrouter("check-config", str(path))
    assert result.returncode == 1
    listed = [line for line in result.stdout.splitlines() if line.startswith(f"{path}:")]
    problems = [line for line in listed if re.match(rf"{re.escape(str(path))}:\d+:", line)]
    keys = [line.split(": ")[1] for line in problems]
    assert keys == [
        "node.port",  # wrong type
        "rules[1].run",  # unknown algorithm
        "rules[2].send_to[0]",  # unknown destination
        "rules[3].when.Modalty",  # not a DICOM keyword
        "rules[3].when.SliceThickness.max",  # not a number
        "rules[4].priorty",  # misspelt key
    ]
    assert listed[-1] == f"{path}: {len(problems)} problems found; not valid"


def test_check_config_against_a_folder_dry_runs_the_valid_rules_of_a_broken_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(SEVERAL_MISTAKES)
    samples = _samples(tmp_path / "samples")
    result = radrouter("check-config", str(path), "--against", str(samples))
    assert result.returncode == 1, "the file is still not valid"
    out = result.stdout
    assert "6 problems found; not valid" in out
    assert "1 of 5 rules used, 4 skipped" in out
    for skipped in ("typo-algorithm", "typo-destination", "bad-matcher", "any-ct"):
        assert re.search(rf"^  skipped rules\[\d\] '{skipped}' \(line \d+\):$", out, re.M), skipped
    assert "run: algorithm 'lung_nodle' is not installed" in out
    assert "send_to[0]: unknown destination 'pcas'" in out
    assert "when.Modalty: 'Modalty' is not a DICOM keyword" in out
    assert "Dry run against" in out and "1 series" in out
    assert "-> rule 'chest-ct' fired -> run lung_nodule (routine), send to pacs" in out


def _stderr_on_a_terminal(*args: str) -> str:
    """Run radrouter with stderr on a pseudo-terminal; what it wrote there."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    process = subprocess.Popen(
        [sys.executable, "-m", "router.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=child,
        env=ENV,
    )
    os.close(child)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=120)
    os.close(main)
    return b"".join(chunks).decode(errors="replace")


def test_check_config_dry_run_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: ct\n    when: {Modality: CT}\n")
    samples = _samples(tmp_path / "samples", slices=4)
    (samples / "notes.txt").write_text("not DICOM")
    on_terminal = _stderr_on_a_terminal("check-config", str(path), "--against", str(samples))
    assert "dry run" in on_terminal and "5/5" in on_terminal, on_terminal
    quiet = _stderr_on_a_terminal("check-config", str(path), "--against", str(samples), "--quiet")
    assert "5/5" not in quiet
    piped = radrouter("check-config", str(path), "--against", str(samples))
    assert piped.returncode == 0 and "5/5" not in piped.stderr


# --------------------------------------------------------------------------------------------
# status and retry: the database file or a running router's HTTP API, the same listing

QUIET_ROUTER = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "rules: []\n"
)


def _work(db: Database) -> None:
    """Items of every kind in states the router's stages leave alone: failed and dead ones,
    pending ones not due for an hour, jobs of an algorithm that no worker has."""
    later = time.time() + 3600
    conn = db.connection()
    for n, state in enumerate(("attention", "done", "processing"), start=1):
        conn.execute(
            "INSERT INTO studies (study_uid, state, first_received_at, last_received_at, "
            "completion_reason) VALUES (?, ?, 0, ?, 'released')",
            (f"1.2.{n}", state, float(n)),
        )
    job = (
        "INSERT INTO jobs (study_uid, series_uid, study_revision, algorithm, rule_name, "
        "priority, priority_rank, state, attempts, max_attempts, not_before, created_at, error) "
        "VALUES ('1.2.1', '1.2.1.1', 1, 'retired_model', 'chest', 'routine', 2, ?, ?, 2, ?, 0, ?)"
    )
    conn.execute(job, ("failed", 2, 0, "model crashed: out of memory"))
    conn.execute(job, ("queued", 1, later, "timeout after 60 s"))
    dispatch = (
        "INSERT INTO dispatches (study_uid, result_id, destination, state, attempts, "
        "not_before, created_at, last_error) VALUES ('1.2.1', 1, 'archive', ?, ?, ?, 0, ?)"
    )
    conn.execute(dispatch, ("dead", 6, 0, "association rejected"))
    conn.execute(dispatch, ("dead", 6, 0, "C-STORE status 0xA700"))
    conn.execute(dispatch, ("pending", 3, later, "connection refused"))
    conn.execute(
        "INSERT INTO notify_queue (study_uid, job_id, state, created_at) "
        "VALUES ('1.2.1', 1, 'done', 0)"
    )
    delivery = (
        "INSERT INTO deliveries (notify_id, study_uid, channel, state, attempts, not_before, "
        "created_at, last_error) VALUES (1, '1.2.1', ?, ?, ?, ?, 0, ?)"
    )
    conn.execute(delivery, ("hl7", "dead", 6, 0, "AR: unknown patient"))
    conn.execute(delivery, ("fhir", "pending", 2, later, "HTTP 503"))


@pytest.fixture
def busy_router(start_router: StartRouter, tmp_path: Path) -> RouterUnderTest:
    router = start_router(QUIET_ROUTER, data_dir=tmp_path / "data")
    _work(router.service.db)
    return router


def test_status_lists_the_same_through_the_api_and_the_database(
    busy_router: RouterUnderTest, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    api = f"http://127.0.0.1:{busy_router.http_port}"
    config = tmp_path / "radrouter.yaml"
    config.write_text(
        f"http: {{host: 127.0.0.1, port: {busy_router.http_port}}}\n"
        f"storage: {{data_dir: {data}}}\nrules: []\n"
    )
    from_db = radrouter("status", "--data-dir", str(data))
    from_api = radrouter("status", "--api", api)
    found = radrouter("status", "--config", str(config))  # a router answers at its http
    forced = radrouter("status", "--config", str(config), "--no-api")
    for result in (from_db, from_api, found, forced):
        assert result.returncode == 0, result.stderr
    assert from_db.stderr.startswith(f"source: database {data.resolve()}")
    assert from_api.stderr == f"source: router API at {api}\n"
    assert found.stderr.startswith(f"source: router API at {api}")
    assert forced.stderr.startswith("source: database")
    assert from_api.stdout == from_db.stdout == found.stdout == forced.stdout

    listing = from_db.stdout
    assert "jobs        failed 1, queued 1" in listing
    assert "dispatches  dead 2, pending 1" in listing
    assert (
        "  #1 study 1.2.1 retired_model: 2 of 2 attempts, last error: model crashed: out of memory"
        in listing
    )
    assert "  #2 study 1.2.1 retired_model: queued, 1 of 2 attempts, last error: timeout" in listing
    assert "  #2 study 1.2.1 -> archive: 6 attempts, last error: C-STORE status 0xA700" in listing
    assert "  #3 study 1.2.1 -> archive: pending, 3 attempts, last error: connection" in listing
    assert "  #1 study 1.2.1 via hl7: 6 attempts, last error: AR: unknown patient" in listing
    assert "  #2 study 1.2.1 via fhir: pending, 2 attempts, last error: HTTP 503" in listing
    assert listing.index("1.2.3  processing") < listing.index("1.2.1  attention")

    short = radrouter("status", "--api", api, "--limit", "1")
    assert short.stdout == radrouter("status", "--data-dir", str(data), "--limit", "1").stdout
    assert "  ... and 1 more" in short.stdout


def test_retry_through_the_api_and_the_database_says_the_same(
    busy_router: RouterUnderTest, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    api = f"http://127.0.0.1:{busy_router.http_port}"
    for source in (["--api", api], ["--data-dir", str(data)]):
        missing = radrouter("retry", *source, "--dispatch", "3")  # pending, not dead
        assert missing.returncode == 1
        assert missing.stdout == "requeued 0\n"
        assert "nothing requeued: dispatch 3 is not dead-lettered" in missing.stderr
    # The router's stages take requeued items on at once (and fail them again: this router has
    # neither the algorithm nor the destination), so the count printed is what is checked.
    by_api = radrouter("retry", "--api", api, "--job", "1")
    assert by_api.returncode == 0 and by_api.stdout == "requeued 1\n", by_api.stderr
    by_file = radrouter("retry", "--data-dir", str(data), "--dispatch", "1")
    assert by_file.returncode == 0 and by_file.stdout == "requeued 1\n", by_file.stderr
    all_dead = radrouter("retry", "--api", api, "--all-dead")
    assert all_dead.returncode == 0 and all_dead.stdout == "requeued 2\n", all_dead.stderr


def test_status_says_where_it_looked_when_there_is_no_router_and_no_database(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = tmp_path / "radrouter.yaml"
    config.write_text(
        f"http: {{host: 0.0.0.0, port: {port}}}\nstorage: {{data_dir: {tmp_path / 'none'}}}\n"
    )
    result = radrouter("status", env={"RADROUTER_CONFIG": str(config)})
    assert result.returncode == 2
    assert f"no radrouter database at {tmp_path / 'none' / 'radrouter.sqlite3'}" in result.stderr
    assert f"storage.data_dir of {config} ($RADROUTER_CONFIG)" in result.stderr
    assert f"no router answers at http://127.0.0.1:{port}" in result.stderr
    api = radrouter("retry", "--api", f"http://127.0.0.1:{port}", "--all-dead")
    assert api.returncode == 2 and f"no radrouter answers at http://127.0.0.1:{port}" in api.stderr
    assert not (tmp_path / "none").exists()


def test_status_sections_use_the_states_of_the_work_queues() -> None:
    from router.deliver.dispatch import DISPATCHES
    from router.deliver.notify import DELIVERIES
    from router.run.job_queue import JOBS, WAITING

    tables = {JOBS.name: JOBS, DISPATCHES.name: DISPATCHES, DELIVERIES.name: DELIVERIES}
    assert [section.table for section in SECTIONS] == list(tables)
    for section in SECTIONS:
        table = tables[section.table]
        assert section.dead == table.dead
        assert set(section.pending) == {table.ready, table.claimed} | (
            {WAITING} if table is JOBS else set()
        )
        assert section.error_column == table.error_column
        assert table.ready in READY_STATES


def test_status_shows_when_a_waiting_dispatch_is_tried_next(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    db.connection().execute(
        "INSERT INTO dispatches (study_uid, result_id, destination, state, attempts, not_before, "
        "created_at, last_error) VALUES ('1.2.3', 1, 'pacs', 'pending', 3, 4102444800, 0, "
        "'unreachable: association with PACS@10.0.0.1:104 failed')"
    )
    result = radrouter("status", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (line,) = [row for row in result.stdout.splitlines() if row.strip().startswith("#1 ")]
    assert "3 attempts" in line and "unreachable: association" in line
    assert "next attempt at 2100-01-0" in line or "next attempt at 2099-12-31" in line


def test_a_retry_made_on_the_database_file_is_in_the_audit_trail(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    db.connection().execute(
        "INSERT INTO dispatches (study_uid, result_id, destination, state, attempts, created_at, "
        "last_error) VALUES ('1.2.3', 1, 'pacs', 'dead', 6, 0, 'association failed')"
    )
    assert radrouter("retry", "--data-dir", str(tmp_path), "--dispatch", "1").returncode == 0
    trail = radrouter("audit", "--data-dir", str(tmp_path))
    assert trail.returncode == 0, trail.stderr
    assert "Dead item requeued" in trail.stdout and "study 1.2.3: 1 requeued" in trail.stdout


def _serve_until_ready(config: Path, http_port: int, log: Path) -> dict[str, object]:
    """Start ``radrouter serve``, return its /readyz once it answers, and stop it."""
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "serve", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                answer = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=2)
                if answer.status_code == 200:
                    body: dict[str, object] = answer.json()
                    return body
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("not ready: " + log.read_text()[-3000:])
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_serve_runs_the_last_good_config_when_its_file_is_refused(tmp_path: Path) -> None:
    http_port = free_port()
    config = tmp_path / "router.yaml"
    config.write_text(
        f"node: {{port: {free_port()}}}\n"
        f"http: {{port: {http_port}}}\n"
        f"storage: {{data_dir: {tmp_path / 'data'}}}\n"
        "rules: []\n"
    )
    first = _serve_until_ready(config, http_port, tmp_path / "serve.log")
    assert first["config"] == {
        "file": str(config),
        "running_last_good": False,
        "last_change_rejected": None,
        "insecure": False,
    }
    good = config.read_text()
    config.write_text(good.replace("rules: []", "rules: [\n  - name: cut off"))
    second = _serve_until_ready(config, http_port, tmp_path / "serve.log")
    state = second["config"]
    assert isinstance(state, dict) and state["running_last_good"] is True
    assert "syntax" in str(state["last_change_rejected"]).lower()
    assert "REFUSED; running the last good configuration" in (tmp_path / "serve.log").read_text()
