"""A running router swaps in a changed config only when it is valid, and logs the change."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from config.loader import load_config
from router.service import ConfigHolder

VALID = "rules:\n  - name: first\n    when: {Modality: CT}\n    run: lung_nodule\n"


def write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def holder(tmp_path: Path) -> tuple[ConfigHolder, Path]:
    path = tmp_path / "router.yaml"
    path.write_text(VALID)
    return ConfigHolder(load_config(path), path, ["lung_nodule"]), path


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
