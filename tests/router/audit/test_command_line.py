"""``radrouter audit`` reads the trail with time ranges; a retry on the database file can be
recorded by the command itself."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest

from config.loader import parse_config
from router.audit.events import Actor, QueueKind, ReadKind, StudyRead
from router.audit.log import AuditLog
from router.audit.messages import EventId
from router.audit.trail import AuditTrail
from router.audit.wiring import audit_folder, command_line_log, record_command_line_retry
from router.cli import main
from router.store.database import SqliteDatabase
from tests.router.audit.schema import schema_errors
from tests.router.audit.test_messages import STUDY, composer

CONFIG = parse_config("node: {ae_title: RADROUTER}\n")


def test_since_and_until_select_a_time_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = composer()
    log = AuditLog(tmp_path, 10**6, lambda p, d: built.log_started(time.time(), p, d).to_xml())
    trail = AuditTrail(log, built, repeat_window_s=0)
    trail.start()
    day = datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.UTC).timestamp()
    for offset_days, user in ((-1, "yesterday"), (0, "today"), (1, "tomorrow")):
        at = day + offset_days * 86400
        trail.record(StudyRead(Actor(user), STUDY, ReadKind.STUDY_VIEW, at))
    trail.stop()
    arguments = ["audit", "--dir", str(tmp_path), "--study", STUDY]
    assert main([*arguments, "--since", "2026-05-01T00:00Z", "--until", "2026-05-01T23:59Z"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert "by today" in line
    assert main([*arguments, "--since", "2026-05-01T00:00+00:00"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    with pytest.raises(SystemExit) as refused:
        main([*arguments, "--since", "tomorrow"])
    assert refused.value.code == 2
    assert "give a date" in capsys.readouterr().err


def test_a_retry_on_the_database_file_is_recorded_by_the_command(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    log, _composer = command_line_log(CONFIG, audit_folder(CONFIG.audit, tmp_path))
    log.append([b"<AuditMessage/>"])  # the router's log exists
    record_command_line_retry(CONFIG, tmp_path, db, QueueKind.DISPATCH, None, 2)
    (message,) = [m for m in log.messages() if m.event_id is EventId.PROCEDURE_RECORD]
    assert message.outcome_description == "2 requeued"
    assert message.requestors()[0].network_access_point
    assert schema_errors(message.to_xml()) == []
