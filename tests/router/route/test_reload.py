"""A running router swaps in a changed config only when it is complete and valid, never drops
its rules or allow-list by accident, shows a refusal, and keeps the last good file for the
next start."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from config.loader import load_config
from router.live_config import ConfigHolder, LastGood

VALID = (
    "reload: {settle_s: 0}\n"
    "rules:\n  - name: first\n    when: {Modality: CT}\n    run: lung_nodule\n"
)


def write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def holder(tmp_path: Path, text: str = VALID) -> tuple[ConfigHolder, Path]:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    last_good = LastGood(tmp_path / "data")
    return ConfigHolder(load_config(path), path, ["lung_nodule"], last_good=last_good), path


def test_valid_change_is_applied_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, path = holder(tmp_path)
    write(path, VALID.replace("first", "second"), 1)
    with caplog.at_level(logging.INFO):
        assert config.reload_if_changed() is True
    assert [r.name for r in config.current().rules] == ["second"]
    assert "config reloaded" in caplog.text and "second" in caplog.text
    assert config.reload_if_changed() is False, "unchanged file is not reloaded again"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [\n", "YAML syntax error"),  # broken YAML
        (
            "rules:\n  - name: x\n    when: {Modality: CT}\n    run: no_such_model\n",
            "no_such_model",
        ),
        ("rules:\n  - name: x\n    when: {Modalty: CT}\n    run: lung_nodule\n", "Modalty"),
        ("node: {port: -1}\n", "port"),
    ],
)
def test_invalid_change_is_rejected_and_the_running_config_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, expected: str
) -> None:
    config, path = holder(tmp_path)
    before = config.current()
    write(path, text, 1)
    with caplog.at_level(logging.ERROR):
        assert config.reload_if_changed() is False
    assert config.current() is before
    assert "config change rejected" in caplog.text and expected in caplog.text


def test_a_file_still_being_written_is_taken_only_once_it_has_settled(tmp_path: Path) -> None:
    config, path = holder(tmp_path, VALID.replace("settle_s: 0", "settle_s: 5"))
    write(path, VALID.replace("first", "second").replace("settle_s: 0", "settle_s: 5"), 1)
    assert config.reload_if_changed(now=100.0) is False, "just changed: wait"
    write(path, VALID.replace("first", "third").replace("settle_s: 0", "settle_s: 5"), 2)
    assert config.reload_if_changed(now=104.0) is False, "changed again: the wait starts over"
    assert config.reload_if_changed(now=108.0) is False
    assert config.reload_if_changed(now=109.5) is True
    assert [r.name for r in config.current().rules] == ["third"]


def test_a_file_cut_down_to_no_rules_is_refused_and_shown(tmp_path: Path) -> None:
    config, path = holder(tmp_path)
    write(path, "reload: {settle_s: 0}\nrules: []\n", 1)
    assert config.reload_if_changed() is False
    assert [r.name for r in config.current().rules] == ["first"]
    assert config.rejection is not None and "no rules" in config.rejection.problems
    write(path, "reload: {settle_s: 0, may_drop_all_rules: true}\nrules: []\n", 2)
    assert config.reload_if_changed() is True and config.current().rules == []
    assert config.rejection is None


def test_a_change_that_drops_the_allow_list_is_refused_unless_meant(tmp_path: Path) -> None:
    guarded = "node: {allowed_callers: [{ae_title: PACS}]}\n" + VALID
    config, path = holder(tmp_path, guarded)
    write(path, VALID, 1)
    assert config.reload_if_changed() is False
    assert config.current().node.allowed_callers is not None
    assert config.rejection is not None and "allowed_callers" in config.rejection.problems
    write(path, VALID.replace("settle_s: 0", "settle_s: 0, may_drop_allowed_callers: true"), 2)
    assert config.reload_if_changed() is True and config.current().node.allowed_callers is None


def test_a_change_that_opens_the_network_unprotected_is_refused(tmp_path: Path) -> None:
    config, path = holder(tmp_path)
    write(path, "http: {host: 0.0.0.0}\n" + VALID, 1)
    assert config.reload_if_changed() is False
    assert config.rejection is not None and "without TLS and authentication" in (
        config.rejection.problems
    )


def test_every_accepted_file_is_kept_as_the_last_good_one(tmp_path: Path) -> None:
    config, path = holder(tmp_path)
    last_good = LastGood(tmp_path / "data")
    assert last_good.path.read_text() == VALID, "the file the router started with"
    assert oct(last_good.path.stat().st_mode & 0o777) == "0o600"
    write(path, VALID.replace("first", "second"), 1)
    assert config.reload_if_changed() is True
    write(path, "rules: [\n", 2)
    assert config.reload_if_changed() is False
    loaded = last_good.load()
    assert loaded is not None and [r.name for r in loaded.config.rules] == ["second"]
