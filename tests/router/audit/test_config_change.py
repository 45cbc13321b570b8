"""A config change for the audit trail: its diff never shows a secret."""

from __future__ import annotations

from pathlib import Path

from router.audit.config_change import REDACTED, config_diff, file_owner, redact


def test_secret_values_are_redacted_inline_and_in_flow_mappings() -> None:
    text = (
        "http:\n"
        "  auth: {client_secret: s3cr3t, user_claim: preferred_username}\n"
        "  key_password: hunter2   # the key's passphrase\n"
        "  api_token: 'abc'\n"
    )
    redacted = redact(text)
    for secret in ("s3cr3t", "hunter2", "abc"):
        assert secret not in redacted
    assert "user_claim: preferred_username" in redacted
    assert f"key_password: {REDACTED}   # the key's passphrase" in redacted


def test_a_secret_block_is_redacted_and_variable_names_stay() -> None:
    text = "fhir:\n  bearer_token_env: FHIR_TOKEN\n  private_key: |\n    -----BEGIN\n    abc\n  port: 1\n"
    redacted = redact(text)
    assert "FHIR_TOKEN" in redacted
    assert "BEGIN" not in redacted and "abc" not in redacted
    assert "  port: 1" in redacted


def test_the_diff_shows_a_changed_secret_without_its_value(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    diff = config_diff("a: 1\npassword: old\n", "a: 2\npassword: new\n", path)
    assert "-a: 1" in diff and "+a: 2" in diff
    assert "old" not in diff and "new" not in diff
    assert config_diff("a: 1\n", "a: 1\n", path) == ""


def test_the_editor_is_the_files_owner(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("a: 1\n")
    assert file_owner(path) not in ("", "unknown")
    assert file_owner(tmp_path / "missing.yaml") == "unknown"
