"""The shared YAML loading: one error dialect for the routing config and model manifests, and
environment variables in values."""

from __future__ import annotations

import re
import textwrap

import pytest

from algorithms.manifest.loader import ManifestError, parse_manifest
from config.loader import ConfigError, ConfigIssue, parse_config
from config.yaml_document import merge_issues, parse_yaml
from tests.algorithms.manifest_support import SEGMENTER_MANIFEST

MANIFEST = SEGMENTER_MANIFEST.format(name="seg", model="seg.onnx", sha256="null")
CONFIG = "node:\n  ae_title: RADROUTER\n  port: 11112\nrules:\n  - name: chest\n    when: {Modality: CT}\n    priority: stat\n"
UNKNOWN_KEY = re.compile(
    r"(?P<file>[^:]+):(?P<line>\d+):(?P<column>\d+): (?P<key>\S+): unknown key '(?P<name>\w+)' "
    r"\(did you mean '(?P<meant>\w+)'\?\); allowed here: (?P<allowed>.+)"
)


def config_issues(text: str) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "router.yaml")
    return caught.value.issues


def manifest_issues(text: str) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, "manifest.yaml")
    return caught.value.issues


def line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if fragment in line)


# --------------------------------------------------------------------------------------------
# One dialect


def test_the_valid_texts_load() -> None:
    assert parse_config(CONFIG).node.port == 11112
    assert parse_manifest(MANIFEST).name == "seg"


def test_a_misspelt_key_reads_the_same_in_a_config_and_in_a_manifest() -> None:
    config = CONFIG.replace("    priority:", "    priorty:")
    manifest = MANIFEST.replace("  min_slices:", "  min_slicse:")
    (in_config,) = config_issues(config)
    (in_manifest,) = manifest_issues(manifest)
    config_match = UNKNOWN_KEY.fullmatch(str(in_config))
    manifest_match = UNKNOWN_KEY.fullmatch(str(in_manifest))
    assert config_match is not None, str(in_config)
    assert manifest_match is not None, str(in_manifest)
    assert config_match.group("file", "line", "column", "key", "meant") == (
        "router.yaml",
        str(line_of(config, "priorty")),
        "5",
        "rules[0].priorty",
        "priority",
    )
    assert manifest_match.group("file", "line", "column", "key", "meant") == (
        "manifest.yaml",
        str(line_of(manifest, "min_slicse")),
        "3",
        "accepts.min_slicse",
        "min_slices",
    )


def test_a_wrong_type_reads_the_same_in_a_config_and_in_a_manifest() -> None:
    (in_config,) = config_issues(CONFIG.replace("port: 11112", "port: four"))
    (in_manifest,) = manifest_issues(MANIFEST.replace("min_slices: 4", "min_slices: four"))
    assert str(in_config) == (
        "router.yaml:3:9: node.port: Input should be a valid integer, unable to parse string "
        "as an integer; got the text 'four'"
    )
    assert str(in_manifest) == (
        f"manifest.yaml:{line_of(MANIFEST, 'min_slices')}:15: accepts.min_slices: Input should "
        "be a valid integer, unable to parse string as an integer; got the text 'four'"
    )


def test_a_misspelt_name_gets_a_suggestion_in_a_config_and_in_a_manifest() -> None:
    (in_config,) = config_issues(CONFIG.replace("priority: stat", "priority: stta"))
    (in_manifest,) = manifest_issues(MANIFEST.replace("mode: volume", "mode: volme"))
    assert in_config.message == (
        "must be one of: stat, urgent, routine; got the text 'stta' (did you mean 'stat'?)"
    )
    assert in_manifest.message == (
        "must be one of: volume, slices, image; got the text 'volme' (did you mean 'volume'?)"
    )
    (kind,) = manifest_issues(MANIFEST.replace("kind: mask", "kind: maks"))
    assert kind.key == "outputs[0].kind"
    assert kind.message == (
        "must be one of: classification, boxes, mask; got the text 'maks' (did you mean 'mask'?)"
    )


def test_a_misspelt_discriminator_is_named_as_well_as_missing() -> None:
    text = MANIFEST.replace("  - kind: mask", "  - kidn: mask")
    issues = manifest_issues(text)
    assert [(i.key, i.line) for i in issues] == [
        ("outputs[0].kind", line_of(text, "kidn")),
        ("outputs[0].kidn", line_of(text, "kidn")),
    ]
    assert "did you mean 'kind'" in issues[1].message


def test_an_earlier_finding_hides_the_schema_message_about_the_same_key() -> None:
    found = ConfigIssue("f.yaml", 3, 5, "rules[0].when.Modality", "a matcher value must be text")
    schema = [
        ConfigIssue("f.yaml", 3, 5, "rules[0].when.Modality", "expected text or a number"),
        ConfigIssue("f.yaml", 3, 5, "rules[0].when.Modality.equals", "inside it"),
        ConfigIssue("f.yaml", 2, 1, "rules[0].name", "another key"),
        ConfigIssue("f.yaml", 1, 1, "rules[0].when.ModalityX", "a key that only starts alike"),
    ]
    assert merge_issues([found], schema) == [schema[3], schema[2], found]


# --------------------------------------------------------------------------------------------
# Environment variables


def test_a_set_variable_is_substituted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADROUTER_TEST_HOST", "10.1.2.3")
    config = parse_config('http: {host: "${RADROUTER_TEST_HOST}", port: 8080}\n')
    assert config.http.host == "10.1.2.3"


def test_the_default_is_used_when_the_variable_is_unset_or_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = 'http:\n  host: "${RADROUTER_TEST_HOST:-127.0.0.1}"\n'
    monkeypatch.delenv("RADROUTER_TEST_HOST", raising=False)
    assert parse_config(text).http.host == "127.0.0.1"
    monkeypatch.setenv("RADROUTER_TEST_HOST", "")
    assert parse_config(text).http.host == "127.0.0.1"
    monkeypatch.setenv("RADROUTER_TEST_HOST", "0.0.0.0")
    assert parse_config(text).http.host == "0.0.0.0"


def test_a_number_from_a_variable_is_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "node:\n  port: ${RADROUTER_TEST_PORT:-11112}\n"
    monkeypatch.delenv("RADROUTER_TEST_PORT", raising=False)
    port = parse_config(text).node.port
    assert port == 11112 and type(port) is int
    monkeypatch.setenv("RADROUTER_TEST_PORT", "4100")
    assert parse_config(text).node.port == 4100
    monkeypatch.setenv("RADROUTER_TEST_PORT", "many")
    (issue,) = config_issues(text)
    assert issue.key == "node.port" and "got the text 'many'" in issue.message


def test_an_unset_variable_without_default_is_an_error_at_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RADROUTER_TEST_UNSET", raising=False)
    text = "node:\n  ae_title: RADROUTER\n  port: ${RADROUTER_TEST_UNSET}\n"
    (issue,) = config_issues(text)
    assert (issue.file, issue.line, issue.column, issue.key) == ("router.yaml", 3, 9, "node.port")
    assert "environment variable RADROUTER_TEST_UNSET is not set" in issue.message


def test_dollar_dollar_brace_is_a_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADROUTER_TEST_HOST", "substituted")
    config = parse_config('http: {host: "$${RADROUTER_TEST_HOST}-${RADROUTER_TEST_HOST}"}\n')
    assert config.http.host == "${RADROUTER_TEST_HOST}-substituted"


@pytest.mark.parametrize("reference", ["${1ABC}", "${NAME", "${A:-${B}}", "${}"])
def test_a_malformed_reference_is_an_error(reference: str) -> None:
    document = parse_yaml(f"http:\n  host: '{reference}'\n", "router.yaml", environ={})
    (issue,) = document.issues
    assert (issue.line, issue.column, issue.key) == (2, 9, "http.host")
    assert "is not a variable reference" in issue.message


def test_only_values_are_substituted() -> None:
    document = parse_yaml("${KEY}: ${VALUE}\nlist: [a, '${VALUE}']\n", environ={"VALUE": "v"})
    assert document.data == {"${KEY}": "v", "list": ["a", "v"]}
    assert document.issues == ()


def test_manifests_get_variables_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADROUTER_TEST_SLICES", "12")
    text = MANIFEST.replace("min_slices: 4", "min_slices: ${RADROUTER_TEST_SLICES}")
    assert parse_manifest(text).accepts.min_slices == 12
    monkeypatch.delenv("RADROUTER_TEST_SLICES")
    (issue,) = manifest_issues(text)
    assert (issue.key, issue.line) == ("accepts.min_slices", line_of(text, "min_slices"))
    assert "RADROUTER_TEST_SLICES is not set" in issue.message


def test_the_container_config_loads_with_and_without_its_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = textwrap.dedent(
        """\
        node:
          ae_title: "${RADROUTER_TEST_AE:-RADROUTER}"
          port: ${RADROUTER_TEST_PORT:-11112}
        storage:
          data_dir: "${RADROUTER_TEST_DATA:-/var/lib/radrouter}"
        """
    )
    for name in ("RADROUTER_TEST_AE", "RADROUTER_TEST_PORT", "RADROUTER_TEST_DATA"):
        monkeypatch.delenv(name, raising=False)
    config = parse_config(text)
    assert (config.node.ae_title, config.node.port) == ("RADROUTER", 11112)
    assert str(config.storage.data_dir) == "/var/lib/radrouter"
    monkeypatch.setenv("RADROUTER_TEST_AE", "WAY_TOO_LONG_AE_TITLE")
    (issue,) = config_issues(text)
    assert issue.key == "node.ae_title" and "not a valid AE title" in issue.message
