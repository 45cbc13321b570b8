"""The DICOM TLS keys: node.tls, destinations.*.tls, algorithms.*.priors.sources[].tls; files
that cannot be read and inconsistent keys are config errors at their file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import ConfigError, default_config_text, parse_config, read_config
from config.schema import DICOM_TLS_PORT, ClientCertificate


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_config(text, "router.yaml")
    return [str(issue) for issue in error.value.issues]


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """Stands in for a certificate file: the loader checks that it can be read."""
    path = tmp_path / "node.crt"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_tls_files_that_do_not_exist_are_errors_at_their_line(pem: Path) -> None:
    text = (
        "node:\n"
        "  tls:\n"
        f"    cert_file: {pem}\n"
        "    key_file: /nowhere/node.key\n"
        "    client_ca_file: /nowhere/ca.pem\n"
        "destinations:\n"
        "  pacs:\n"
        "    ae_title: PACS\n"
        "    host: pacs.hospital.example\n"
        "    port: 2762\n"
        "    tls: {ca_file: /nowhere/pacs-ca.pem}\n"
        "algorithms:\n"
        "  ms_lesion:\n"
        "    priors:\n"
        "      sources:\n"
        "        - {ae_title: PACS, host: pacs, port: 2762, tls: {ca_file: missing-ca.pem}}\n"
    )
    assert issues(text) == [
        "router.yaml:4:15: node.tls.key_file: no such file: '/nowhere/node.key'",
        "router.yaml:5:21: node.tls.client_ca_file: no such file: '/nowhere/ca.pem'",
        "router.yaml:11:20: destinations.pacs.tls.ca_file: no such file: '/nowhere/pacs-ca.pem'",
        "router.yaml:16:67: algorithms.ms_lesion.priors.sources[0].tls.ca_file: "
        "no such file: 'missing-ca.pem'",
    ]


def test_a_folder_is_not_a_certificate_file(tmp_path: Path) -> None:
    (message,) = issues(f"node:\n  tls: {{cert_file: {tmp_path}}}\n")
    assert message.startswith("router.yaml:2:20: node.tls.cert_file: ")
    assert "is not a file" in message


def test_relative_tls_paths_are_taken_from_the_working_directory(
    pem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pem.parent)
    config = parse_config("node:\n  tls: {cert_file: node.crt}\n")
    assert config.node.tls is not None
    assert config.node.tls.port == DICOM_TLS_PORT
    assert config.node.port == 11112, "the plain listener stays unless turned off"


def test_passphrase_variable_must_be_set(pem: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RADROUTER_TLS_KEY_PASSPHRASE", raising=False)
    text = (
        f"node:\n  tls:\n    cert_file: {pem}\n    key_password_env: RADROUTER_TLS_KEY_PASSPHRASE\n"
    )
    assert issues(text) == [
        "router.yaml:4:23: node.tls.key_password_env: environment variable "
        "RADROUTER_TLS_KEY_PASSPHRASE (the key's passphrase) is not set"
    ]
    monkeypatch.setenv("RADROUTER_TLS_KEY_PASSPHRASE", "secret")
    assert parse_config(text).node.tls is not None


def test_passphrase_comes_from_one_place(pem: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSPHRASE", "secret")
    text = (
        f"node:\n  tls:\n    cert_file: {pem}\n    key_password_env: PASSPHRASE\n"
        f"    key_password_file: {pem}\n"
    )
    (message,) = issues(text)
    assert message.startswith("router.yaml:5:24: node.tls.key_password_file: ")
    assert "not both" in message


def test_certificate_mapping_needs_the_cas_that_sign_client_certificates(pem: Path) -> None:
    text = (
        f"node:\n  tls:\n    cert_file: {pem}\n"
        "    client_certificates:\n      - {subject_cn: ct1.hospital.example, ae_titles: [CT1]}\n"
    )
    (message,) = issues(text)
    assert message.startswith("router.yaml:4:5: node.tls.client_certificates: ")
    assert "needs client_ca_file" in message


def test_certificate_mapping_entries_name_one_identity_and_some_ae_titles(pem: Path) -> None:
    text = (
        f"node:\n  tls:\n    cert_file: {pem}\n    client_ca_file: {pem}\n"
        "    client_certificates:\n"
        "      - {subject_cn: ct1, san: ct1.hospital.example, ae_titles: [CT1]}\n"
        "      - {sha256: 'ab:cd', ae_titles: [CT1]}\n"
        "      - {subject_cn: ct2, ae_titles: []}\n"
    )
    found = issues(text)
    assert [m.split(": ")[0] for m in found] == [
        "router.yaml:6:10",
        "router.yaml:7:18",
        "router.yaml:8:27",
    ]
    assert "exactly one of subject_cn, san, sha256" in found[0]
    assert "a SHA-256 fingerprint: 64 hex digits" in found[1]
    assert "node.tls.client_certificates[2].ae_titles" in found[2]


def test_fingerprints_are_compared_as_plain_lower_case_hex() -> None:
    entry = ClientCertificate(sha256=":".join(["AB"] * 32), ae_titles=["CT1"])
    assert entry.sha256 == "ab" * 32


def test_node_needs_a_listener_and_tls_its_own_port(pem: Path) -> None:
    (message,) = issues("node: {port: null}\n")
    assert "give port, tls, or both" in message
    (message,) = issues(f"node: {{port: 2762, tls: {{cert_file: {pem}}}}}\n")
    assert "give TLS its own port" in message
    config = parse_config(f"node: {{port: null, tls: {{cert_file: {pem}}}}}\n")
    assert config.node.port is None


def test_client_tls_key_without_its_certificate_is_an_error(pem: Path) -> None:
    text = (
        "destinations:\n  pacs:\n    ae_title: PACS\n    host: pacs\n    port: 2762\n"
        f"    tls:\n      key_file: {pem}\n"
    )
    (message,) = issues(text)
    assert message.startswith("router.yaml:7:17: destinations.pacs.tls.key_file: ")
    assert "needs cert_file" in message


def test_destination_and_prior_source_tls_load(pem: Path, tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "destinations:\n"
        f"  pacs: {{ae_title: PACS, host: 10.0.0.5, port: 2762, tls: {{ca_file: {pem}, "
        "server_name: pacs.hospital.example}}\n"
        "algorithms:\n"
        "  ms_lesion:\n"
        "    priors:\n"
        f"      sources: [{{ae_title: PACS, host: 10.0.0.5, port: 2762, tls: {{ca_file: {pem}}}}}]\n"
    )
    config = read_config(path).config
    tls = config.destinations["pacs"].tls
    assert tls is not None and tls.server_name == "pacs.hospital.example"
    priors = config.algorithms["ms_lesion"].priors
    assert priors is not None and priors.sources[0].tls is not None


def test_commented_node_tls_example_in_the_shipped_default_has_the_right_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Uncommented, the example fails only for the files and the variable it names."""
    monkeypatch.delenv("RADROUTER_TLS_KEY_PASSPHRASE", raising=False)
    text = default_config_text()
    start = text.index("\n  # tls:\n") + 1
    lines = []
    for line in text[start:].splitlines():
        if not line.startswith("  #"):
            break
        lines.append("  " + line[len("  # ") :])
    found = issues("node:\n" + "\n".join(lines) + "\n")
    assert len(found) == 4
    assert all("no such file" in m or "is not set" in m for m in found), found
