"""The quarantine keeps what is needed to understand a refusal, for a limited time and size,
readable by the service user only; every removal is an event."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from config.schema import QuarantineConfig
from router.receive.quarantine import Quarantine
from router.store.database import Database, SqliteDatabase

DAY_S = 86400.0


def received(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.monotonic_ns()}.part"
    path.write_bytes(b"\x00" * size)
    return path


def age(quarantine: Path, days: float) -> None:
    """Make every quarantine file ``days`` old."""
    when = time.time() - days * DAY_S
    for path in quarantine.iterdir():
        os.utime(path, (when, when))


def removals(db: Database) -> list[str]:
    return [
        row["detail"]
        for row in db.query("SELECT detail FROM events WHERE kind = ?", ("quarantine_removed",))
    ]


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return SqliteDatabase(tmp_path / "db.sqlite3")


def test_a_refusal_keeps_the_bytes_and_the_reason_readable_by_the_owner_only(
    tmp_path: Path, db: Database
) -> None:
    quarantine = Quarantine(tmp_path / "quarantine", db, QuarantineConfig())
    name = quarantine.keep(received(tmp_path / "in", 100), "CANNOT_UNDERSTAND (0xC000): why")
    folder = tmp_path / "quarantine"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for suffix in (".bin", ".reason.txt"):
        assert stat.S_IMODE((folder / f"{name}{suffix}").stat().st_mode) == 0o600
    assert (folder / f"{name}.reason.txt").read_text() == "CANNOT_UNDERSTAND (0xC000): why\n"
    event = db.query_one("SELECT detail FROM events WHERE kind = 'instance_rejected'")
    assert event is not None and name in event["detail"]


def test_bytes_go_after_keep_bytes_days_and_reasons_after_keep_reasons_days(
    tmp_path: Path, db: Database
) -> None:
    config = QuarantineConfig(keep_bytes_days=7, keep_reasons_days=90)
    quarantine = Quarantine(tmp_path / "quarantine", db, config)
    name = quarantine.keep(received(tmp_path / "in", 100), "reason")
    folder = tmp_path / "quarantine"
    assert quarantine.sweep(now=time.time() + 6 * DAY_S) == 0
    assert quarantine.sweep(now=time.time() + 8 * DAY_S) == 1
    assert not (folder / f"{name}.bin").exists()
    assert (folder / f"{name}.reason.txt").exists(), "the reason outlives the bytes"
    assert quarantine.sweep(now=time.time() + 91 * DAY_S) == 1
    assert list(folder.iterdir()) == []
    assert [detail.split(" ")[1] for detail in removals(db)] == ["(bytes):", "(reason):"]


def test_the_cap_removes_the_oldest_bytes_first_and_records_each_removal(
    tmp_path: Path, db: Database
) -> None:
    quarantine = Quarantine(tmp_path / "quarantine", db, QuarantineConfig(max_mb=1))
    names = []
    for index in range(3):
        names.append(quarantine.keep(received(tmp_path / "in", 400 * 1024), f"reason {index}"))
        time.sleep(0.01)
    folder = tmp_path / "quarantine"
    kept = {p.name for p in folder.glob("*.bin")}
    assert kept == {f"{names[1]}.bin", f"{names[2]}.bin"}
    assert len(list(folder.glob("*.reason.txt"))) == 3
    assert removals(db) == [f"{names[0]}.bin (bytes): over the 1 MB cap"]


def test_an_instance_larger_than_the_cap_leaves_only_its_reason(
    tmp_path: Path, db: Database
) -> None:
    quarantine = Quarantine(tmp_path / "quarantine", db, QuarantineConfig(max_mb=1))
    part = received(tmp_path / "in", 2 * 2**20)
    quarantine.keep(part, "reason")
    assert not part.exists()
    assert list((tmp_path / "quarantine").glob("*.bin")) == []
    event = db.query_one("SELECT detail FROM events WHERE kind = 'instance_rejected'")
    assert event is not None and "bytes not kept" in event["detail"]


def test_retention_is_applied_at_start_to_what_an_earlier_run_left(
    tmp_path: Path, db: Database
) -> None:
    earlier = Quarantine(tmp_path / "quarantine", db, QuarantineConfig())
    earlier.keep(received(tmp_path / "in", 100), "reason")
    age(tmp_path / "quarantine", 30)
    later = Quarantine(tmp_path / "quarantine", db, QuarantineConfig())
    later.start()
    try:
        deadline = time.monotonic() + 5
        while list((tmp_path / "quarantine").glob("*.bin")) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        later.stop()
    assert list((tmp_path / "quarantine").glob("*.bin")) == []


def test_reasons_must_be_kept_at_least_as_long_as_bytes() -> None:
    with pytest.raises(ValueError, match="keep_reasons_days must be at least keep_bytes_days"):
        QuarantineConfig(keep_bytes_days=30, keep_reasons_days=7)
