"""The local audit log: append-only files, private, rotated by size with a hash chain that
shows a closed file was changed, removed or replaced."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from router.audit.log import AuditLog, read_lines, sha256_of
from router.audit.messages import AuditMessage
from router.cli import main
from tests.router.audit.schema import schema_errors
from tests.router.audit.test_messages import composer

LINE = b"<AuditMessage>" + b"x" * 200 + b"</AuditMessage>"


def _log(folder: Path, max_bytes: int = 1_000_000) -> AuditLog:
    built = composer()
    return AuditLog(
        folder, max_bytes, lambda prev, digest: built.log_started(1.0, prev, digest).to_xml()
    )


def test_files_are_private_and_begin_with_a_valid_audit_message(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit")
    log.append([LINE])
    (path,) = log.files()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "audit").stat().st_mode) == 0o700
    first, second = (line.data for line in read_lines(path))
    assert schema_errors(first) == []
    assert second == LINE


def test_appending_never_rewrites_what_is_there(tmp_path: Path) -> None:
    log = _log(tmp_path)
    log.append([LINE])
    (path,) = log.files()
    before = path.read_bytes()
    log.append([LINE + b"2", LINE + b"3"])
    assert path.read_bytes().startswith(before)
    assert [line.data for line in log.lines()][1:] == [LINE, LINE + b"2", LINE + b"3"]


def test_rotation_keeps_the_old_file_and_chains_its_hash(tmp_path: Path) -> None:
    log = _log(tmp_path, max_bytes=2_000)
    for _ in range(30):
        log.append([LINE])
    files = log.files()
    assert len(files) >= 3
    assert all(path.stat().st_size <= 2_000 for path in files[:-1])
    assert sum(1 for line in log.lines() if line.data == LINE) == 30
    first_of_second = next(read_lines(files[1])).data
    link = AuditMessage.from_xml(first_of_second).objects[0]
    assert link.object_id == files[0].name
    assert link.details[0][1].decode() == sha256_of(files[0])
    assert log.verify() == []


def test_a_changed_closed_file_breaks_the_chain(tmp_path: Path) -> None:
    log = _log(tmp_path, max_bytes=2_000)
    for _ in range(30):
        log.append([LINE])
    victim = log.files()[1]
    victim.write_bytes(victim.read_bytes().replace(b"xxxx", b"yyyy", 1))
    problems = log.verify()
    assert len(problems) == 1 and f"{victim.name} changed" in problems[0]


def test_a_removed_file_breaks_the_chain(tmp_path: Path) -> None:
    log = _log(tmp_path, max_bytes=2_000)
    for _ in range(30):
        log.append([LINE])
    removed = log.files()[1]
    removed.unlink()
    assert log.verify() == [f"{removed.name} is missing"]


def test_a_line_still_being_written_is_not_read(tmp_path: Path) -> None:
    log = _log(tmp_path)
    log.append([LINE])
    (path,) = log.files()
    with path.open("ab") as stream:
        stream.write(b"<AuditMessage>half")
    assert [line.data for line in log.lines()][-1] == LINE


def test_a_line_with_a_line_break_is_refused(tmp_path: Path) -> None:
    log = _log(tmp_path)
    try:
        log.append([b"a\nb"])
    except ValueError as exc:
        assert "line break" in str(exc)
    else:
        raise AssertionError("a line break was accepted")


def test_radrouter_audit_verify_says_when_the_chain_is_broken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _log(tmp_path / "audit", max_bytes=2_000)
    for _ in range(30):
        log.append([LINE])
    assert main(["audit", "--dir", str(tmp_path / "audit"), "--verify"]) == 0
    victim = log.files()[0]
    victim.write_bytes(victim.read_bytes() + LINE + b"\n")
    assert main(["audit", "--dir", str(tmp_path / "audit"), "--verify"]) == 1
    assert f"chain broken: {victim.name} changed" in capsys.readouterr().out
    assert main(["audit", "--dir", str(tmp_path / "nothing"), "--verify"]) == 2
