"""Loading the routing YAML: valid files, and errors that name the file, line, column and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from config.loader import (
    ConfigError,
    ConfigIssue,
    check_algorithms,
    default_config_text,
    format_key,
    load_config,
    load_default_config,
    parse_config,
    read_config,
    read_default_config,
    validate_config,
)
from config.schema import DicomDestination, MatchOperator, Priority, RouterConfig
from config.yaml_document import parse_yaml
from router.route.matching import SeriesFacts, route

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"

VALID = """\
version: 1
node:
  ae_title: RADROUTER
  port: 11112
destinations:
  pacs: {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
rules:
  - name: chest
    when:
      Modality: CT
      BodyPartExamined: {in: [CHEST, LUNG]}
      SliceThickness: {max: 3}
    run: lung_nodule
    priority: stat
    send_to: [pacs]
  - name: forward-mr
    when: {Modality: MR}
    send_to: [pacs]
    continue: true
fallback: {}
"""


def issues_of(text: str, source: str = "test.yaml") -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), source)
    return caught.value.issues


def only_issue(text: str) -> ConfigIssue:
    issues = issues_of(text)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


def line_of(text: str, needle: str) -> int:
    """1-based number of the first line of ``text`` containing ``needle``."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


# --------------------------------------------------------------------------------------------
# Valid files


def test_valid_config_loads_with_values() -> None:
    config = parse_config(VALID, "valid.yaml")
    assert isinstance(config, RouterConfig)
    assert config.node.port == 11112
    pacs = config.destinations["pacs"]
    assert isinstance(pacs, DicomDestination) and pacs.port == 4242
    chest, mr = config.rules
    assert chest.run == "lung_nodule"
    assert chest.priority is Priority.STAT
    assert chest.when["Modality"] == "CT"
    body_part = chest.when["BodyPartExamined"]
    assert isinstance(body_part, MatchOperator)
    assert body_part.in_ == ["CHEST", "LUNG"]
    assert mr.continue_ is True
    assert mr.run is None
    assert config.fallback.run is None and config.fallback.send_to == []


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(VALID, encoding="utf-8")
    assert load_config(path).rules[0].name == "chest"


def test_anchors_and_merge_keys_work() -> None:
    config = parse_config(
        """\
        destinations:
          pacs: &pacs {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
          backup:
            <<: *pacs
            port: 4243
        """.replace("        ", "")
    )
    backup = config.destinations["backup"]
    assert isinstance(backup, DicomDestination)
    assert (backup.port, backup.ae_title) == (4243, "ORTHANC")


def test_yaml_12_keeps_yes_and_no_as_text() -> None:
    config = parse_config("rules:\n  - {name: a, when: {Laterality: NO}}\n")
    assert config.rules[0].when["Laterality"] == "NO"


# --------------------------------------------------------------------------------------------
# Errors with positions


def test_unknown_key_at_depth_names_line_key_and_suggestion() -> None:
    text = """\
    rules:
      - name: chest
        when: {Modality: CT}
        runn: lung_nodule
    """
    issue = only_issue(text)
    assert issue.key == "rules[0].runn"
    assert issue.line == line_of(text, "runn:")
    assert issue.column == 5
    assert "unknown key 'runn'" in issue.message
    assert "did you mean 'run'" in issue.message
    assert str(issue).startswith(f"test.yaml:{issue.line}:5: rules[0].runn: unknown key")


def test_wrong_type_points_at_the_value() -> None:
    text = """\
    node:
      ae_title: RADROUTER
      port: "abc"
    """
    issue = only_issue(text)
    assert issue.key == "node.port"
    assert (issue.line, issue.column) == (3, 9)
    assert "integer" in issue.message and "'abc'" in issue.message


def test_yaml_syntax_error_has_line_and_column() -> None:
    issue = only_issue("node:\n  port: [1, 2\nhttp: {}\n")
    assert issue.line == 3
    assert issue.column is not None
    assert issue.message.startswith("YAML syntax error")


def test_tab_indentation_is_explained() -> None:
    issue = only_issue("node:\n\tport: 1\n")
    assert issue.line == 2
    assert "tabs" in issue.message


def test_unknown_destination_points_at_the_send_to_item() -> None:
    text = """\
    destinations:
      pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
    rules:
      - name: chest
        when: {Modality: CT}
        send_to: [pacs, pcas]
    fallback:
      send_to: [archive]
    """
    issues = issues_of(text)
    assert [i.key for i in issues] == ["rules[0].send_to[1]", "fallback.send_to[0]"]
    assert issues[0].line == line_of(text, "pcas")
    assert "unknown destination 'pcas'" in issues[0].message
    assert "did you mean 'pacs'" in issues[0].message
    assert issues[1].line == line_of(text, "archive")


def test_duplicate_rule_name_points_at_the_second_rule() -> None:
    text = """\
    rules:
      - {name: chest, when: {Modality: CT}}
      - {name: chest, when: {Modality: MR}}
    """
    issue = only_issue(text)
    assert issue.key == "rules[1].name"
    assert issue.line == 3
    assert "used twice" in issue.message and "line 2" in issue.message


def test_invalid_regex_is_reported_at_the_pattern() -> None:
    text = """\
    rules:
      - name: chest
        when:
          SeriesDescription: {regex: "(chest"}
    """
    issue = only_issue(text)
    assert issue.key == "rules[0].when.SeriesDescription.regex"
    assert issue.line == 4
    assert "invalid regular expression" in issue.message


def test_regex_mangled_by_double_quotes_is_caught() -> None:
    issue = only_issue('rules:\n  - {name: a, when: {SeriesDescription: {regex: "\\bpe\\b"}}}\n')
    assert issue.key == "rules[0].when.SeriesDescription.regex"
    assert "single quotes" in issue.message


def test_duplicate_yaml_keys_are_an_error() -> None:
    text = """\
    node:
      port: 104
      ae_title: A
      port: 11112
    """
    issue = only_issue(text)
    assert issue.line == 4
    assert issue.key == "port"
    assert "duplicate key 'port'" in issue.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_an_error(text: str) -> None:
    issue = only_issue(text)
    assert issue.line == 1
    assert "empty" in issue.message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("hello\n", "text")])
def test_top_level_must_be_a_mapping(text: str, kind: str) -> None:
    issue = only_issue(text)
    assert "top level must be a mapping" in issue.message
    assert kind in issue.message


def test_several_problems_are_all_reported_in_file_order() -> None:
    text = """\
    node:
      port: 0
      ae_title: WAY_TOO_LONG_AE_TITLE
    rules:
      - name: chest
        when: {Modality: CT}
        priority: high
    """
    issues = issues_of(text)
    assert [(i.key, i.line) for i in issues] == [
        ("node.port", 2),
        ("node.ae_title", 3),
        ("rules[0].priority", 7),
    ]
    assert "stat, urgent, routine" in issues[2].message
    assert "AE title" in issues[1].message


def test_cross_references_are_checked_even_when_the_schema_refuses_the_file() -> None:
    text = """\
    node:
      port: abc
    destinations:
      pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
    rules:
      - {name: chest, when: {Modality: CT}, send_to: [pcas]}
      - {name: chest, when: {Modality: MR}, priorty: stat}
    """
    issues = issues_of(text)
    assert [(i.key, i.line) for i in issues] == [
        ("node.port", 2),
        ("rules[0].send_to[0]", 6),
        ("rules[1].name", 7),
        ("rules[1].priorty", 7),
    ]
    assert "unknown destination 'pcas' (did you mean 'pacs'?)" in issues[1].message
    assert "used twice" in issues[2].message


def test_missing_required_key_points_at_its_mapping() -> None:
    text = """\
    destinations:
      pacs:
        ae_title: ORTHANC
        host: 127.0.0.1
    """
    issue = only_issue(text)
    assert issue.key == "destinations.pacs.port"
    assert issue.line == 2
    assert "missing required key 'port'" in issue.message


def test_list_as_matcher_is_one_issue_with_a_hint() -> None:
    text = """\
    rules:
      - name: chest
        when:
          BodyPartExamined: [CHEST, LUNG]
    """
    issue = only_issue(text)
    assert issue.key == "rules[0].when.BodyPartExamined"
    assert issue.line == 4
    assert "{in: [A, B]}" in issue.message


def test_bad_value_inside_an_operator_is_one_issue() -> None:
    issue = only_issue("rules:\n  - name: a\n    when:\n      SliceThickness: {max: thin}\n")
    assert issue.key == "rules[0].when.SliceThickness.max"
    assert (issue.line, issue.column) == (4, 29)


def test_empty_operator_mapping_is_reported() -> None:
    issue = only_issue("rules:\n  - name: a\n    when:\n      SliceThickness: {}\n")
    assert issue.key == "rules[0].when.SliceThickness"
    assert "at least one of" in issue.message


def test_boolean_matcher_value_is_refused() -> None:
    issue = only_issue("rules:\n  - name: a\n    when: {Modality: true}\n")
    assert issue.key == "rules[0].when.Modality"
    assert issue.line == 3


def test_lowercase_attribute_name_is_reported_at_the_key() -> None:
    issue = only_issue("rules:\n  - name: a\n    when:\n      modality: CT\n")
    assert issue.key == "rules[0].when.modality"
    assert (issue.line, issue.column) == (4, 7)
    assert "'modality' is not an attribute name" in issue.message


def test_model_level_check_points_at_the_key_it_mentions() -> None:
    issue = only_issue("completion:\n  study_idle_s: 30\n  hard_cap_s: 10\n")
    assert issue.key == "completion.hard_cap_s"
    assert issue.line == 3


def test_yaml_tags_are_refused() -> None:
    issue = only_issue("node: !!python/object:os.system {}\n")
    assert issue.key == "node"
    assert "tags" in issue.message


def test_unreadable_file_and_bad_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read file" in str(missing.value)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"node:\n  ae_title: \xff\n")
    with pytest.raises(ConfigError) as undecodable:
        load_config(bad)
    assert undecodable.value.issues[0].line == 2
    assert "UTF-8" in str(undecodable.value)


def test_config_error_lists_one_issue_per_line() -> None:
    error = ConfigError(
        [
            ConfigIssue("a.yaml", 3, 5, "node.port", "bad"),
            ConfigIssue("a.yaml", None, None, "", "unreadable"),
        ]
    )
    assert str(error).splitlines() == ["a.yaml:3:5: node.port: bad", "a.yaml: unreadable"]


def test_format_key() -> None:
    assert format_key(("rules", 1, "when", "SliceThickness", "max")) == (
        "rules[1].when.SliceThickness.max"
    )
    assert format_key(("destinations", "my pacs")) == "destinations['my pacs']"


# --------------------------------------------------------------------------------------------
# Algorithms


def test_check_algorithms_reports_unknown_run_with_its_line() -> None:
    text = textwrap.dedent(
        """\
        rules:
          - name: chest
            when: {Modality: CT}
            run: lung_nodle
          - name: off
            enabled: false
            when: {Modality: MR}
            run: brain_mets
        fallback:
          run: triage
        algorithms:
          lung_nodule: {device: cpu}
          missing_one: {device: cpu}
        """
    )
    document = validate_config(parse_yaml(text, "algos.yaml")).document
    issues = check_algorithms(document, {"lung_nodule"})
    assert [(i.key, i.line) for i in issues] == [
        ("rules[0].run", 4),
        ("rules[1].run", 8),
        ("fallback.run", 10),
        ("algorithms.missing_one", 13),
    ]
    assert issues[0].file == "algos.yaml"
    assert issues[0].column == 10
    assert "did you mean 'lung_nodule'" in issues[0].message
    assert "installed: lung_nodule" in issues[0].message
    assert "disabled" in issues[1].message
    everything = {"lung_nodle", "lung_nodule", "brain_mets", "triage", "missing_one"}
    assert check_algorithms(document, everything) == []


def test_check_algorithms_names_a_parameter_the_algorithm_does_not_take() -> None:
    text = textwrap.dedent(
        """\
        algorithms:
          ct_water_qa:
            parameters: {water_tolerance_hu: 3, uniformity_tolerence_hu: 5}
          lung_nodule: {threshold: 0.5}
        """
    )
    document = validate_config(parse_yaml(text, "params.yaml")).document
    known = {"ct_water_qa": {"water_tolerance_hu", "uniformity_tolerance_hu"}, "lung_nodule": set()}

    (issue,) = check_algorithms(document, known)

    assert issue.key == "algorithms.ct_water_qa.parameters.uniformity_tolerence_hu"
    assert "ct_water_qa takes no parameter 'uniformity_tolerence_hu'" in issue.message
    assert "did you mean 'uniformity_tolerance_hu'" in issue.message
    assert check_algorithms(document, set(known)) == []  # names only: parameters unchecked


def test_check_algorithms_reads_a_file_the_schema_refused() -> None:
    text = "node: {port: abc}\nrules:\n  - {name: a, when: {}, run: x}\n"
    document = parse_yaml(text, "broken.yaml")
    with pytest.raises(ConfigError):
        validate_config(document)
    (issue,) = check_algorithms(document, set())
    assert (issue.line, issue.column, issue.key) == (3, 30, "rules[0].run")
    assert "installed: none" in issue.message


# --------------------------------------------------------------------------------------------
# The shipped default and the examples


def test_default_config_loads_and_is_clean() -> None:
    loaded = read_default_config()
    assert check_algorithms(loaded.document, {"lung_nodule", "ms_lesion", "pe", "fracture"}) == []
    config = loaded.config
    assert [r.run for r in config.rules] == [
        "pe",
        "lung_nodule",
        "lung_nodule",
        "ms_lesion",
        "fracture",
    ]
    assert config.node.ae_title == "RADROUTER"
    assert config.node.port == 11112
    assert config.node.bind == "127.0.0.1"
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert str(config.storage.data_dir) == "var"
    pacs = config.destinations["pacs"]
    assert isinstance(pacs, DicomDestination)
    assert (pacs.ae_title, pacs.host, pacs.port) == ("ORTHANC", "127.0.0.1", 4242)
    pe = config.rules[0]
    assert (pe.name, pe.priority, pe.continue_) == ("contrast-chest-ct-pe", Priority.STAT, True)
    (pe_flag,) = config.worklist.priority_policy["pe"]
    assert pe_flag.raise_to is Priority.STAT
    (fracture_flag,) = config.worklist.priority_policy["fracture"]
    assert fracture_flag.raise_to is Priority.URGENT
    rule = config.rules[1]
    assert rule.name == "chest-ct-lung-nodules"
    assert rule.run == "lung_nodule"
    assert rule.priority is Priority.ROUTINE
    assert rule.send_to == ["pacs"]
    assert config.fallback.run is None and not config.fallback.send_to


def test_default_text_is_commented_for_admins() -> None:
    text = default_config_text()
    assert text.count("\n#") > 40
    assert "check-config" in text


def test_default_spells_out_the_schema_defaults() -> None:
    """The values written in default.yaml are the schema's defaults (no silent drift)."""
    shipped = load_default_config()
    schema = RouterConfig.model_validate(
        {
            "destinations": {
                "pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
            },
            "rules": [r.model_dump(by_alias=True) for r in shipped.rules],
            "worklist": {
                "priority_policy": {
                    name: [flag.model_dump(by_alias=True) for flag in flags]
                    for name, flags in shipped.worklist.priority_policy.items()
                }
            },
        }
    )
    assert shipped == schema


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load_and_are_clean(path: Path) -> None:
    loaded = read_config(path)
    assert loaded.config.rules
    assert check_algorithms(loaded.document, {"lung_nodule"}) == []


def test_there_are_examples() -> None:
    assert len(list(EXAMPLES.glob("*.yaml"))) >= 3


@pytest.mark.parametrize(
    ("header", "algorithms"),
    [
        ({"Modality": "CR", "BodyPartExamined": "EXTREMITY"}, ["fracture"]),
        ({"Modality": "DX", "BodyPartExamined": "Lower Leg"}, ["fracture"]),
        ({"Modality": "CR", "BodyPartExamined": "CHEST"}, []),
        ({"Modality": "DX", "BodyPartExamined": "KNEE"}, []),
        (
            {
                "Modality": "CT",
                "BodyPartExamined": "CHEST",
                "ContrastBolusAgent": "IOHEXOL",
                "SliceThickness": "1.0",
            },
            ["pe", "lung_nodule"],
        ),
        ({"Modality": "CT", "BodyPartExamined": "CHEST", "SliceThickness": "1.0"}, ["lung_nodule"]),
        ({"Modality": "MR", "SeriesDescription": "AX T2 FLAIR"}, ["ms_lesion"]),
    ],
)
def test_the_default_rules_send_each_kind_of_series_to_its_algorithms(
    header: dict[str, str], algorithms: list[str]
) -> None:
    decision = route(load_default_config(), SeriesFacts(header, "PACS", "RADROUTER"))
    assert [action.run for action in decision.actions] == algorithms
