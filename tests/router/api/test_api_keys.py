"""``radrouter api-key``: a key is printed once and only its salted hash is stored; the
store accepts it, refuses a changed or revoked one, and accepts none from a broken file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from config.schema import ApiRole
from router.api.api_keys import ApiKeyStore, create_key
from router.cli import main


def config_naming(tmp_path: Path, keys_file: Path) -> Path:
    config = tmp_path / "router.yaml"
    config.write_text(f"http: {{auth: {{api_keys_file: {keys_file}}}}}\n")
    return config


def test_create_prints_the_key_once_and_stores_only_a_salted_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "secrets" / "api-keys.json"
    config = config_naming(tmp_path, keys_file)

    status = main(
        ["api-key", "create", "--role", "admin", "--name", "ris-bridge", "--config", str(config)]
    )

    printed = capsys.readouterr()
    assert status == 0
    key = printed.out.strip()
    assert key.startswith("rrk_") and len(key) == 4 + 12 + 1 + 43
    assert "shown only now" in printed.err and str(keys_file) in printed.err
    stored = keys_file.read_text()
    secret = key[len("rrk_") + 12 + 1 :]  # base64url: the secret itself may hold "_"
    assert key not in stored and secret not in stored
    [entry] = json.loads(stored)["keys"]
    assert (entry["name"], entry["role"]) == ("ris-bridge", "admin")
    assert len(entry["salt"]) == 32 and len(entry["sha256"]) == 64
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    found = ApiKeyStore(keys_file).check(key)
    assert found is not None and found.role is ApiRole.ADMIN


def test_list_shows_names_and_roles_and_revoke_removes_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "api-keys.json"
    key, entry = create_key(keys_file, name="monitor", role=ApiRole.VIEWER)
    create_key(keys_file, name="ris-bridge", role=ApiRole.ADMIN)
    store = ApiKeyStore(keys_file)
    assert store.check(key) is not None

    assert main(["api-key", "list", "--file", str(keys_file)]) == 0
    listed = capsys.readouterr().out
    assert f"{entry.id}  monitor" in listed and "ris-bridge" in listed and "viewer" in listed
    assert main(["api-key", "revoke", "monitor", "--file", str(keys_file)]) == 0
    assert main(["api-key", "revoke", "monitor", "--file", str(keys_file)]) == 1

    assert store.check(key) is None
    assert "monitor" not in keys_file.read_text()


def test_a_name_is_used_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys_file = tmp_path / "api-keys.json"
    create_key(keys_file, name="ris-bridge", role=ApiRole.ADMIN)

    status = main(
        ["api-key", "create", "--role", "viewer", "--name", "ris-bridge", "--file", str(keys_file)]
    )

    assert status == 1 and "already has a key named 'ris-bridge'" in capsys.readouterr().err


def test_a_config_without_a_keys_file_is_named_as_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("http: {host: 127.0.0.1}\n")

    status = main(["api-key", "create", "--role", "admin", "--name", "x", "--config", str(config)])

    assert status == 2 and "no http.auth.api_keys_file" in capsys.readouterr().err


def test_the_store_refuses_changed_keys_and_accepts_none_from_a_broken_file(
    tmp_path: Path,
) -> None:
    keys_file = tmp_path / "api-keys.json"
    key, _ = create_key(keys_file, name="ris-bridge", role=ApiRole.ADMIN)
    store = ApiKeyStore(keys_file)
    last = key[-1]
    for wrong in (key[:-1] + ("A" if last != "A" else "B"), key + "x", key.upper(), "", "rrk_"):
        assert store.check(wrong) is None, wrong

    keys_file.write_text("{not json")

    assert store.check(key) is None


def test_two_keys_have_different_salts(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys.json"
    create_key(keys_file, name="a", role=ApiRole.VIEWER)
    create_key(keys_file, name="b", role=ApiRole.VIEWER)
    first, second = json.loads(keys_file.read_text())["keys"]
    assert first["salt"] != second["salt"] and first["sha256"] != second["sha256"]
