"""check-config: file checks with line numbers, and the dry run over a folder of DICOM files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from config.loader import ConfigError, load_default_config, parse_config, read_default_config
from config.yaml_document import parse_yaml
from router.route.check_config import (
    EXIT_BAD_FOLDER,
    EXIT_INVALID,
    EXIT_OK,
    check_attribute_names,
    check_config_file,
    dry_run,
    format_report,
    run_check,
    usable_rules,
)

PATIENT_NAME = "Sample^Patient"
PATIENT_ID = "PID-0042"

CONFIG = """\
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
rules:
  - name: chest-ct
    when:
      Modality: CT
      BodyPartExamined: {in: [CHEST, LUNG]}
      SliceThickness: {max: 3}
    run: lung_nodule
    send_to: [pacs]
  - name: from-scanner
    when: {CallingAE: CT_SCANNER}
    send_to: [pacs]
"""


def write_instance(
    path: Path,
    study_uid: str,
    series_uid: str,
    instance_number: int,
    modality: str = "CT",
    **attributes: object,
) -> None:
    ds = Dataset()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance_number
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def samples(tmp_path: Path) -> dict[str, str]:
    """A folder with a thin chest CT (3 files), a thick chest CT, an MR, and junk."""
    folder = tmp_path / "samples"
    study = generate_uid()
    uids: dict[str, str] = {
        "study": study,
        "thin": generate_uid(),
        "thick": generate_uid(),
        "mr": generate_uid(),
    }
    for number in (3, 1, 2):
        write_instance(
            folder / "a" / f"thin{number}.dcm",
            study,
            uids["thin"],
            number,
            BodyPartExamined="CHEST",
            SliceThickness="1.25",
            SeriesDescription="Lung 1.25",
            SeriesNumber=2,
        )
    write_instance(
        folder / "b" / "thick.dcm",
        study,
        uids["thick"],
        1,
        BodyPartExamined="CHEST",
        SliceThickness="5",
        SeriesNumber=3,
    )
    write_instance(folder / "mr.dcm", generate_uid(), uids["mr"], 1, modality="MR")
    (folder / "README.txt").write_text("not DICOM\n", encoding="utf-8")
    uids["folder"] = str(folder)
    return uids


def test_dry_run_routes_each_series(samples: dict[str, str]) -> None:
    config = parse_config(CONFIG)
    result = dry_run(config, Path(samples["folder"]))
    by_series = {series.series_uid: series for series in result.series}
    assert set(by_series) == {samples["thin"], samples["thick"], samples["mr"]}

    thin = by_series[samples["thin"]]
    assert thin.instances == 3
    assert thin.study_uid == samples["study"]
    assert (thin.modality, thin.body_part_examined) == ("CT", "CHEST")
    assert [a.rule_name for a in thin.decision.actions] == ["chest-ct"]

    thick = by_series[samples["thick"]]
    assert thick.decision.used_fallback and thick.decision.actions == ()
    assert not by_series[samples["mr"]].decision.outcomes[0].matched

    assert [str(s.path) for s in result.skipped] == ["README.txt"]
    assert "not a DICOM file" in result.skipped[0].reason
    assert result.called_ae == "RADROUTER" and result.calling_ae == "DRYRUN"
    # Ordered by study, then series number.
    ordered = [s.series_uid for s in result.series if s.study_uid == samples["study"]]
    assert ordered == [samples["thin"], samples["thick"]]


def test_dry_run_uses_the_calling_ae(samples: dict[str, str]) -> None:
    config = parse_config(CONFIG)
    result = dry_run(config, Path(samples["folder"]), calling_ae="CT_SCANNER")
    by_series = {series.series_uid: series for series in result}
    assert by_series[samples["thick"]].decision.actions[0].rule_name == "from-scanner"
    assert by_series[samples["mr"]].decision.actions[0].rule_name == "from-scanner"


def test_report_shows_rule_and_explanation_without_phi(samples: dict[str, str]) -> None:
    config = parse_config(CONFIG)
    result = dry_run(config, Path(samples["folder"]))
    text = format_report("router.yaml", [], result, config=config)
    assert text.startswith("router.yaml: OK (2 rules; destinations: pacs; algorithms: lung_nodule)")
    assert samples["thin"] in text and samples["study"] in text
    assert "-> rule 'chest-ct' fired -> run lung_nodule (routine), send to pacs" in text
    assert "-> no rule matched -> fallback: unrouted" in text
    assert "[FAIL] SliceThickness: found 5, expected max 3" in text
    assert "3 instances" in text
    assert "README.txt: not a DICOM file" in text
    assert PATIENT_NAME not in text and "Sample" not in text
    assert PATIENT_ID not in text


def test_check_config_file_reports_issues_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            rules:
              - name: a
                when:
                  Modalty: CT
                  Modality: {min: 2}
                run: lung_nodle
            """
        ),
        encoding="utf-8",
    )
    config, issues = check_config_file(path, {"lung_nodule"})
    assert config is not None
    assert [(i.key, i.line) for i in issues] == [
        ("rules[0].when.Modalty", 4),
        ("rules[0].when.Modality", 5),
        ("rules[0].run", 6),
    ]
    assert "did you mean 'Modality'" in issues[0].message
    assert "min/max" in issues[1].message
    assert all(i.file == str(path) for i in issues)
    text = format_report(path, issues)
    assert f"{path}:4:7: rules[0].when.Modalty: " in text
    assert text.rstrip().endswith("3 problems found; not valid")


FOUR_MISTAKES = """\
node:
  port: abc
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
rules:
  - name: chest
    when: {Modality: CT}
    run: lung_nodle
    priorty: stat
    send_to: [pcas]
"""


def test_check_config_file_reports_four_kinds_of_mistake_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(FOUR_MISTAKES, encoding="utf-8")
    config, issues = check_config_file(path, {"lung_nodule"})
    assert config is None
    assert [(i.line, i.column, i.key) for i in issues] == [
        (2, 9, "node.port"),  # wrong type
        (8, 10, "rules[0].run"),  # unknown algorithm
        (9, 5, "rules[0].priorty"),  # misspelt key
        (10, 15, "rules[0].send_to[0]"),  # unknown destination
    ]
    assert "got the text 'abc'" in issues[0].message
    assert "did you mean 'lung_nodule'" in issues[1].message
    assert "did you mean 'priority'" in issues[2].message
    assert "did you mean 'pacs'" in issues[3].message
    assert format_report(path, issues).rstrip().endswith("4 problems found; not valid")


def test_keyword_checks_do_not_repeat_a_schema_message(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("rules:\n  - name: a\n    when: {modality: CT}\n", encoding="utf-8")
    config, issues = check_config_file(path, {"lung_nodule"})
    assert config is None
    (issue,) = issues
    assert issue.key == "rules[0].when.modality"
    assert "is not an attribute name" in issue.message


def test_check_config_file_with_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("node:\n  port: abc\n", encoding="utf-8")
    config, issues = check_config_file(path, {"lung_nodule"})
    assert config is None
    assert [(i.key, i.line) for i in issues] == [("node.port", 2)]


def test_attribute_names_allow_association_and_numeric_keywords() -> None:
    document = parse_yaml(
        "rules:\n  - name: a\n    when: {CallingAE: X, CalledAE: Y, SliceThickness: {max: 3}}\n"
    )
    assert check_attribute_names(document) == []
    assert check_attribute_names(read_default_config().document) == []


def test_run_check_exit_codes(tmp_path: Path, samples: dict[str, str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(CONFIG, encoding="utf-8")
    outcome = run_check(good, {"lung_nodule"})
    assert outcome.exit_code == EXIT_OK
    assert outcome.text.startswith(f"{good}: OK")
    assert outcome.dry_run is None

    outcome = run_check(good, {"lung_nodule"}, against=Path(samples["folder"]))
    assert outcome.exit_code == EXIT_OK
    assert outcome.dry_run is not None and len(outcome.dry_run) == 3
    assert "Dry run against" in outcome.text

    outcome = run_check(good, {"other"})
    assert outcome.exit_code == EXIT_INVALID
    assert outcome.dry_run is None
    assert "rules[0].run" in outcome.text

    outcome = run_check(good, {"other"}, against=Path(samples["folder"]))
    assert outcome.exit_code == EXIT_INVALID, "a dry run does not make the file valid"
    assert outcome.dry_run is not None and outcome.usable is not None
    assert [rule.name for rule in outcome.usable.skipped] == ["chest-ct"]

    outcome = run_check(good, {"lung_nodule"}, against=tmp_path / "missing")
    assert outcome.exit_code == EXIT_BAD_FOLDER
    assert "cannot dry-run" in outcome.text


def test_dry_run_of_an_empty_folder(tmp_path: Path) -> None:
    result = dry_run(load_default_config(), tmp_path)
    assert result.series == () and result.skipped == ()
    text = format_report("x.yaml", [], result)
    assert text.startswith("x.yaml: OK\n")
    assert "no DICOM series found" in text


MANY_KINDS = """\
node:
  ae_title: "${RADROUTER_TEST_UNSET_AE}"
  port: abc
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
  broken: {ae_title: X, host: !!python/name:os.system x, port: 99999}
completion: {hard_cap_s: 1, study_idle_s: 30}
rules:
  - name: thin-chest
    when: {Modality: CT, SliceThickness: {max: 3}}
    run: lung_nodule
    send_to: [pacs]
  - name: unknown-algorithm
    when: {Modality: CT}
    run: lung_nodle
  - name: unknown-destination
    when: {Modality: CT}
    send_to: [pcas]
  - name: broken-destination
    when: {Modality: CT}
    send_to: [broken]
  - name: bad-regex
    when: {SeriesDescription: {regex: "(unclosed"}}
  - name: not-a-keyword
    when: {Modalty: CT}
  - name: thin-chest
    when: {Modality: CT}
  - name: boolean
    when: {Modality: true}
  - name: any-mr
    when: {Modality: MR}
    priority: urgent
fallback: {run: nope}
extra_key: 1
"""


def test_every_kind_of_mistake_is_listed_once_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RADROUTER_TEST_UNSET_AE", raising=False)
    path = tmp_path / "router.yaml"
    path.write_text(MANY_KINDS, encoding="utf-8")
    outcome = run_check(path, {"lung_nodule"})
    assert outcome.exit_code == EXIT_INVALID
    assert [issue.key for issue in outcome.issues] == [
        "node.ae_title",  # unset environment variable
        "node.port",  # wrong type
        "destinations.broken.host",  # YAML tag
        "destinations.broken.port",  # out of range
        "completion.hard_cap_s",  # a check spanning keys
        "rules[1].run",  # unknown algorithm
        "rules[2].send_to[0]",  # unknown destination
        "rules[4].when.SeriesDescription.regex",  # invalid regular expression
        "rules[5].when.Modalty",  # not a DICOM keyword
        "rules[6].name",  # used twice
        "rules[7].when.Modality",  # a boolean matcher
        "fallback.run",  # unknown algorithm
        "extra_key",  # unknown key
    ]
    lines = outcome.text.splitlines()
    listed = [
        line for line in lines if line.startswith(f"{path}:") and "problems found" not in line
    ]
    assert listed == [str(issue) for issue in outcome.issues]
    assert lines[-1] == f"{path}: {len(listed)} problems found; not valid"


def test_a_broken_file_dry_runs_its_rules_without_problems(
    tmp_path: Path, samples: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RADROUTER_TEST_UNSET_AE", raising=False)
    path = tmp_path / "router.yaml"
    path.write_text(MANY_KINDS, encoding="utf-8")
    outcome = run_check(path, {"lung_nodule"}, against=Path(samples["folder"]))
    assert outcome.exit_code == EXIT_INVALID
    assert outcome.usable is not None and outcome.dry_run is not None
    assert outcome.usable.total == 9
    assert [rule.name for rule in outcome.usable.config.rules] == ["thin-chest", "any-mr"]
    skipped = {rule.key: rule for rule in outcome.usable.skipped}
    assert list(skipped) == [f"rules[{n}]" for n in range(1, 8)]
    assert skipped["rules[1]"].reasons == (
        "line 15, run: algorithm 'lung_nodle' is not installed (did you mean 'lung_nodule'?)",
    )
    assert skipped["rules[2]"].reasons == (
        "line 18, send_to[0]: unknown destination 'pcas' (did you mean 'pacs'?)",
    )
    assert skipped["rules[3]"].reasons == (
        "send_to[0]: destination 'broken' has problems (line 6)",
    )
    assert (
        skipped["rules[4]"]
        .reasons[0]
        .startswith("line 23, when.SeriesDescription.regex: invalid regular expression")
    )
    assert "'Modalty' is not a DICOM keyword" in skipped["rules[5]"].reasons[0]
    assert "is used twice" in skipped["rules[6]"].reasons[0]
    assert skipped["rules[7]"].reasons == (
        "line 29, when.Modality: a matcher value must be text or a number",
    )
    assert (skipped["rules[6]"].name, skipped["rules[6]"].line) == ("thin-chest", 26)
    (fallback, node) = outcome.usable.notes
    assert "fallback has problems" in fallback and "'nope' is not installed" in fallback
    assert "node.ae_title has problems" in node and outcome.dry_run.called_ae == "RADROUTER"

    by_series = {series.series_uid: series.decision for series in outcome.dry_run}
    assert [a.rule_name for a in by_series[samples["thin"]].actions] == ["thin-chest"]
    assert [a.rule_name for a in by_series[samples["mr"]].actions] == ["any-mr"]
    assert by_series[samples["thick"]].unrouted  # the file's fallback is not used
    text = outcome.text
    assert "Dry run of the rules without problems only: 2 of 9 rules used, 7 skipped" in text
    assert "  skipped rules[6] 'thin-chest' (line 26):\n    line 26, name: rule name" in text
    assert text.index("problems found") < text.index("Dry run of") < text.index("Dry run against")


def test_a_file_that_cannot_be_read_is_not_dry_run(tmp_path: Path, samples: dict[str, str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n", encoding="utf-8")
    outcome = run_check(broken, {"lung_nodule"}, against=Path(samples["folder"]))
    assert outcome.exit_code == EXIT_INVALID and outcome.dry_run is None
    assert "cannot dry-run: the file could not be read" in outcome.text
    listed = tmp_path / "list.yaml"
    listed.write_text("- rules\n", encoding="utf-8")
    outcome = run_check(listed, {"lung_nodule"}, against=Path(samples["folder"]))
    assert outcome.dry_run is None
    assert "cannot dry-run: its top level is not a mapping" in outcome.text


def test_usable_rules_when_the_rules_are_not_a_list() -> None:
    text = "rules: {name: a}\n"
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "router.yaml")
    usable = usable_rules(parse_yaml(text, "router.yaml"), refused.value.issues)
    assert usable is not None
    assert usable.config.rules == [] and usable.total == 0
    assert usable.notes == ("rules: not a list, so there is no rule to dry-run",)


def test_dry_run_reports_its_progress(samples: dict[str, str]) -> None:
    reports: list[tuple[int, int]] = []
    dry_run(parse_config(CONFIG), Path(samples["folder"]), progress=lambda *r: reports.append(r))
    assert reports == [(n, 6) for n in range(1, 7)]  # 5 DICOM files and a README
