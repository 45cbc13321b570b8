"""``radrouter check-config``: validate a routing YAML and dry-run it against sample DICOM files."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
from pydantic import TypeAdapter, ValidationError
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.errors import InvalidDicomError

from algorithms.contract import Purpose
from algorithms.manifest.discovery import discover_manifests
from config.loader import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    check_algorithms,
    check_exposure,
    validate_config,
)
from config.schema import Destination, Fallback, NodeConfig, RouterConfig, Rule
from config.yaml_document import (
    KeyPath,
    YamlDocument,
    format_key,
    merge_issues,
    read_yaml,
    reference_issue,
)
from router.route.matching import ASSOCIATION_ATTRIBUTES, RoutingDecision, SeriesFacts, route

__all__ = [
    "EXIT_BAD_FOLDER",
    "EXIT_INVALID",
    "EXIT_OK",
    "CheckOutcome",
    "DryRunProgress",
    "DryRunResult",
    "SeriesDryRun",
    "SkippedFile",
    "SkippedRule",
    "UsableRules",
    "check_attribute_names",
    "check_config_file",
    "dry_run",
    "format_report",
    "run_check",
    "usable_rules",
]

EXIT_OK = 0
"""The configuration is valid (and the dry run, if asked for, ran)."""
EXIT_INVALID = 1
"""The configuration has problems (with ``--against``, its rules without problems were
dry-run all the same)."""
EXIT_BAD_FOLDER = 2
"""The configuration is valid but the ``--against`` folder could not be read."""

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
NUMERIC_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})

DryRunProgress = Callable[[int, int], object]
"""Called as ``progress(files_read, files_total)`` after each file the dry run reads."""


@dataclass(frozen=True)
class SkippedFile:
    """A file the dry run did not use, and why."""

    path: Path
    """Relative to the folder given."""
    reason: str


@dataclass(frozen=True)
class SeriesDryRun:
    """How one series of the sample folder is routed. Carries no patient identifiers."""

    study_uid: str
    series_uid: str
    modality: str
    series_description: str
    body_part_examined: str
    instances: int
    decision: RoutingDecision


@dataclass(frozen=True)
class DryRunResult:
    """Every series found (ordered by study, series number, series UID) and skipped files."""

    folder: Path
    series: tuple[SeriesDryRun, ...]
    skipped: tuple[SkippedFile, ...]
    calling_ae: str
    called_ae: str

    def __iter__(self) -> Iterator[SeriesDryRun]:
        return iter(self.series)

    def __len__(self) -> int:
        return len(self.series)


@dataclass(frozen=True)
class SkippedRule:
    """A rule of a file with problems that the dry run leaves out, and why."""

    key: str
    """Where it is: ``rules[2]``."""
    name: str
    """Its name, or ``""`` when it has none that is text."""
    line: int | None
    reasons: tuple[str, ...]
    """One per problem: ``line 15, run: algorithm 'lung_nodle' is not installed ...``."""


@dataclass(frozen=True)
class UsableRules:
    """What a dry run can still use of a file with problems: the rules without problems (and
    the destinations they send to), the fallback unless it has problems, the node's AE title
    unless it has problems. Skipping a rule changes what the rules after it see (first match
    wins), so the dry run shows the routing as if the skipped rules were not in the file."""

    config: RouterConfig
    total: int
    """Rules in the file."""
    skipped: tuple[SkippedRule, ...]
    notes: tuple[str, ...]
    """Other parts replaced by their defaults, e.g. a fallback with problems."""


@dataclass(frozen=True)
class CheckOutcome:
    """What ``radrouter check-config`` prints and its exit status."""

    exit_code: int
    text: str
    config: RouterConfig | None
    issues: tuple[ConfigIssue, ...]
    dry_run: DryRunResult | None
    usable: UsableRules | None = None
    """For a file with problems dry-run with ``--against``: which rules were used."""


# --------------------------------------------------------------------------------------------
# Checking


def check_config_file(
    path: Path, known_algorithms: Collection[str]
) -> tuple[RouterConfig | None, list[ConfigIssue]]:
    """Load ``path`` and check it against the installed algorithms and the DICOM dictionary.
    ``known_algorithms`` are the installed plugins; the manifest models in the config's
    ``model_dirs`` are loaded and checked here, and a broken manifest is an issue in its own
    file. Returns the config (``None`` when it does not load) and every issue, all found in
    one run: the algorithm and keyword checks read the file even when the schema refused it.
    The config is fit to run only when the list is empty."""
    _, config, issues = _check_file(path, known_algorithms)
    return config, issues


def _check_file(
    path: Path, known_algorithms: Collection[str]
) -> tuple[YamlDocument | None, RouterConfig | None, list[ConfigIssue]]:
    """:func:`check_config_file`, also returning the document (None when it was not read)."""
    try:
        document = read_yaml(Path(path))
    except ConfigError as exc:  # unreadable, or not YAML at all
        return None, None, list(exc.issues)
    config: RouterConfig | None = None
    try:
        config = validate_config(document).config
        schema_issues: list[ConfigIssue] = []
    except ConfigError as exc:
        schema_issues = list(exc.issues)
    model_dirs = config.model_dirs if config is not None else _model_dirs(document)
    manifests = discover_manifests(model_dirs, taken=set(known_algorithms))
    known = set(known_algorithms) | set(manifests.algorithms)
    exposure = check_exposure(LoadedConfig(config, document)) if config is not None else []
    issues = merge_issues(
        schema_issues,
        check_algorithms(document, known),
        check_attribute_names(document),
        exposure,
    )
    return document, config, issues + manifests.issues()


def _model_dirs(document: YamlDocument) -> list[Path]:
    """``model_dirs`` of a file the schema refused: the entries that are text."""
    folders = document.value_at(("model_dirs",))
    if not isinstance(folders, list):
        return []
    return [Path(folder) for folder in folders if isinstance(folder, str)]


def check_attribute_names(document: YamlDocument) -> list[ConfigIssue]:
    """Matcher names that are not DICOM keywords can never be found in a header (a typo such
    as ``Modalty`` would silently never match); ``min``/``max`` on an attribute that is not
    numeric (e.g. PatientAge, ``045Y``) never holds either. Reads the plain data, so it works
    on a file that failed validation too."""
    issues: list[ConfigIssue] = []
    rules = document.value_at(("rules",))
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        when = rule.get("when") if isinstance(rule, Mapping) else None
        for attribute, matcher in when.items() if isinstance(when, Mapping) else ():
            if not isinstance(attribute, str) or attribute in ASSOCIATION_ATTRIBUTES:
                continue
            path = ("rules", index, "when", attribute)
            unknown = reference_issue(
                document,
                path,
                attribute,
                keyword_dict,
                problem=f"{attribute!r} is not a DICOM keyword (they are case-sensitive, "
                "e.g. SeriesDescription), so no header has it",
                at_key=True,
                cutoff=0.8,
            )
            if unknown is not None:
                issues.append(unknown)
                continue
            if isinstance(matcher, Mapping) and (
                matcher.get("min") is not None or matcher.get("max") is not None
            ):
                vr = dictionary_VR(attribute)
                if vr not in NUMERIC_VRS:
                    issues.append(
                        document.issue(
                            path,
                            f"min/max compare numbers, but {attribute} holds {vr} values "
                            "that are not numbers, so this condition can never hold; "
                            "use regex or in instead",
                        )
                    )
    return issues


# --------------------------------------------------------------------------------------------
# The part of a file with problems that can still be dry-run


def usable_rules(document: YamlDocument, issues: Sequence[ConfigIssue]) -> UsableRules | None:
    """The rules of ``document`` that have none of ``issues`` (nor send to a destination that
    has some), as a config to dry-run; None when the file has no mapping at its top."""
    data = document.data
    if not isinstance(data, Mapping):
        return None
    found = _Problems(document, tuple(i for i in issues if i.file == document.source))
    destinations = _Destinations.of(found, data.get("destinations"))
    notes: list[str] = []
    rules = data.get("rules")
    if rules is not None and not isinstance(rules, list):
        notes.append("rules: not a list, so there is no rule to dry-run")
    kept: list[tuple[Rule, SkippedRule]] = []
    skipped: list[SkippedRule] = []
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        path: KeyPath = ("rules", index)
        name = rule.get("name") if isinstance(rule, Mapping) else None
        line, _ = document.position(path)
        about = SkippedRule(format_key(path), name if isinstance(name, str) else "", line, ())
        reasons = found.reasons(path)
        if isinstance(rule, Mapping):
            reasons += destinations.reasons(rule.get("send_to"))
        if not reasons:
            try:
                kept.append((Rule.model_validate(rule), about))
                continue
            except ValidationError as exc:  # the issues should have said so already
                reasons.append(f"not a valid rule ({exc.error_count()} problems)")
        skipped.append(replace(about, reasons=tuple(reasons)))

    fallback = Fallback()
    raw_fallback = data.get("fallback")
    fallback_problems = found.reasons(("fallback",))
    if isinstance(raw_fallback, Mapping):
        fallback_problems += destinations.reasons(raw_fallback.get("send_to"))
    if fallback_problems:
        notes.append(
            f"the fallback has problems ({'; '.join(fallback_problems)}), so the dry run uses "
            "the default fallback: unrouted"
        )
    elif raw_fallback is not None:
        try:
            fallback = Fallback.model_validate(raw_fallback)
        except ValidationError as exc:  # the issues should have said so already
            notes.append(
                f"the fallback is not valid ({exc.error_count()} problems), so the dry "
                "run uses the default fallback: unrouted"
            )

    node = NodeConfig()
    ae_title = document.value_at(("node", "ae_title"))
    if found.under(("node", "ae_title")) or any(i.key == "node" for i in found.issues):
        notes.append(
            f"node.ae_title has problems, so without --called-ae the dry run uses {node.ae_title}"
        )
    elif isinstance(ae_title, str):
        node = NodeConfig(ae_title=ae_title)

    try:
        config = RouterConfig(
            node=node,
            destinations=destinations.valid,
            rules=[r for r, _ in kept],
            fallback=fallback,
        )
    except ValidationError as exc:  # a check spanning rules that no issue named
        notes.append(f"together the rules without problems are not valid either: {exc}")
        config = RouterConfig(node=node)
        left_out = ("left out with the others (see the note below)",)
        skipped.extend(replace(about, reasons=left_out) for _, about in kept)
        skipped.sort(key=lambda rule: rule.line or 0)
    total = len(rules) if isinstance(rules, list) else 0
    return UsableRules(config, total, tuple(skipped), tuple(notes))


@dataclass(frozen=True)
class _Problems:
    """The issues of one file, by the key they are about."""

    document: YamlDocument
    issues: tuple[ConfigIssue, ...]

    def under(self, path: KeyPath) -> list[ConfigIssue]:
        """The issues at ``path`` or inside it."""
        key = format_key(path)
        return [i for i in self.issues if i.key == key or i.key.startswith((f"{key}.", f"{key}["))]

    def reasons(self, path: KeyPath) -> list[str]:
        """The issues inside ``path`` as reasons for leaving it out: each one's line, its key
        relative to ``path`` and the first clause of its message (all of it is listed above)."""
        within = format_key(path)
        return [
            (f"line {i.line}, " if i.line is not None else "")
            + f"{i.key[len(within) :].lstrip('.') or '(itself)'}: {i.message.split('; ', 1)[0]}"
            for i in self.under(path)
        ]


_DESTINATION: TypeAdapter[Destination] = TypeAdapter(Destination)


@dataclass(frozen=True)
class _Destinations:
    """The destinations a file defines, and those of them without problems."""

    found: _Problems
    defined: frozenset[str]
    valid: dict[str, Destination]

    @classmethod
    def of(cls, found: _Problems, section: object) -> _Destinations:
        entries = section if isinstance(section, Mapping) else {}
        defined = frozenset(name for name in entries if isinstance(name, str))
        valid: dict[str, Destination] = {}
        for name in sorted(defined):
            if not found.under(("destinations", name)):
                try:
                    valid[name] = _DESTINATION.validate_python(entries[name])
                except ValidationError:  # the issues should have said so already
                    continue
        return cls(found, defined, valid)

    def reasons(self, send_to: object) -> list[str]:
        """``send_to`` entries naming a destination that is defined but has problems (one
        that is not defined at all is an issue of the rule itself)."""
        reasons = []
        for position, name in enumerate(send_to if isinstance(send_to, list) else []):
            if isinstance(name, str) and name in self.defined and name not in self.valid:
                line, _ = self.found.document.position(("destinations", name))
                reasons.append(
                    f"send_to[{position}]: destination {name!r} has problems (line {line})"
                )
        return reasons


# --------------------------------------------------------------------------------------------
# Dry run


@dataclass
class _SeriesAccumulator:
    first_key: tuple[int, str]
    first: pydicom.Dataset
    instances: set[str]


def dry_run(
    config: RouterConfig,
    folder: Path,
    calling_ae: str = "DRYRUN",
    called_ae: str | None = None,
    progress: DryRunProgress | None = None,
    purposes: Mapping[str, Purpose] | None = None,
) -> DryRunResult:
    """Route every series found under ``folder`` (recursively) as the router would: headers
    only, grouped by SeriesInstanceUID, facts from the instance with the lowest
    InstanceNumber. Files that are not DICOM Part 10 are skipped and listed.
    Raises ``NotADirectoryError`` when ``folder`` is not a readable folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    called = called_ae if called_ae is not None else config.node.ae_title
    series: dict[str, _SeriesAccumulator] = {}
    skipped: list[SkippedFile] = []
    paths = list(_files_under(folder))
    for done, path in enumerate(paths, start=1):
        relative = path.relative_to(folder)
        header = _read_header(path, relative)
        if progress is not None:
            progress(done, len(paths))
        if isinstance(header, SkippedFile):
            skipped.append(header)
            continue
        series_uid = _text(header, "SeriesInstanceUID")
        key = (_int(header, "InstanceNumber"), _text(header, "SOPInstanceUID"))
        entry = series.get(series_uid)
        if entry is None:
            series[series_uid] = _SeriesAccumulator(key, header, {key[1] or str(relative)})
            continue
        entry.instances.add(key[1] or str(relative))
        if key < entry.first_key:
            entry.first_key, entry.first = key, header

    results: list[tuple[tuple[str, int, str], SeriesDryRun]] = []
    for series_uid, entry in series.items():
        ds = entry.first
        decision = route(config, SeriesFacts.from_dataset(ds, calling_ae, called), purposes)
        study_uid = _text(ds, "StudyInstanceUID")
        results.append(
            (
                (study_uid, _int(ds, "SeriesNumber"), series_uid),
                SeriesDryRun(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    modality=_text(ds, "Modality"),
                    series_description=_text(ds, "SeriesDescription"),
                    body_part_examined=_text(ds, "BodyPartExamined"),
                    instances=len(entry.instances),
                    decision=decision,
                ),
            )
        )
    results.sort(key=lambda item: item[0])
    return DryRunResult(
        folder=folder,
        series=tuple(result for _, result in results),
        skipped=tuple(skipped),
        calling_ae=calling_ae,
        called_ae=called,
    )


def _read_header(path: Path, relative: Path) -> pydicom.Dataset | SkippedFile:
    """The header of one file of a series, or why the dry run does not use it."""
    try:
        ds: pydicom.Dataset = pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except InvalidDicomError:
        return SkippedFile(relative, "not a DICOM file (no DICM preamble)")
    except Exception as exc:  # truncated or corrupt: report, keep going
        return SkippedFile(relative, f"unreadable DICOM ({type(exc).__name__})")
    if _text(ds, "MediaStorageSOPClassUID", meta=True) == DICOMDIR_SOP_CLASS:
        return SkippedFile(relative, "DICOMDIR (an index, not an image)")
    if not _text(ds, "SeriesInstanceUID"):
        return SkippedFile(relative, "no SeriesInstanceUID")
    return ds


def _files_under(folder: Path) -> Iterator[Path]:
    for root, directories, files in os.walk(folder):
        directories.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file():
                yield path


def _text(ds: pydicom.Dataset, keyword: str, meta: bool = False) -> str:
    source = getattr(ds, "file_meta", None) if meta else ds
    if source is None:
        return ""
    try:
        value = source.get(keyword)
    except Exception:
        return ""
    return "" if value is None else str(value).strip(" \x00")


def _int(ds: pydicom.Dataset, keyword: str) -> int:
    try:
        return int(str(ds.get(keyword)).strip())
    except (TypeError, ValueError):
        return 2**31  # unnumbered instances sort last


# --------------------------------------------------------------------------------------------
# Reporting


def format_report(
    path: Path | str,
    issues: Sequence[ConfigIssue],
    dry_run_result: DryRunResult | None = None,
    config: RouterConfig | None = None,
    usable: UsableRules | None = None,
) -> str:
    """The text ``radrouter check-config`` prints: ``OK`` (with a summary when ``config`` is
    given), or each issue on a line of its own as ``FILE:LINE:COL: KEY: MESSAGE`` and their
    count; then, for a dry run, the rules it left out (``usable``) and one block per series."""
    lines: list[str] = []
    if issues:
        lines.extend(" ".join(str(issue).splitlines()) for issue in issues)
        count = len(issues)
        lines.append(f"{path}: {count} problem{'s' if count != 1 else ''} found; not valid")
    else:
        lines.append(f"{path}: OK ({_summary(config)})" if config is not None else f"{path}: OK")
    if usable is not None:
        lines.append("")
        lines.extend(_usable_lines(usable))
    if dry_run_result is not None:
        lines.append("")
        lines.extend(_dry_run_lines(dry_run_result))
    return "\n".join(lines) + "\n"


def _summary(config: RouterConfig) -> str:
    enabled = sum(1 for rule in config.rules if rule.enabled)
    rules = f"{len(config.rules)} rule{'s' if len(config.rules) != 1 else ''}"
    if enabled != len(config.rules):
        rules += f" ({len(config.rules) - enabled} disabled)"
    destinations = ", ".join(sorted(config.destinations)) or "none"
    algorithms = ", ".join(sorted(config.algorithm_names())) or "none"
    return f"{rules}; destinations: {destinations}; algorithms: {algorithms}"


def _usable_lines(usable: UsableRules) -> list[str]:
    used = usable.total - len(usable.skipped)
    lines = [
        f"Dry run of the rules without problems only: {used} of {usable.total} "
        f"rule{'s' if usable.total != 1 else ''} used, {len(usable.skipped)} skipped "
        "(routing is shown as if the skipped rules were not in the file)"
    ]
    for rule in usable.skipped:
        name = f" {rule.name!r}" if rule.name else ""
        line = f" (line {rule.line})" if rule.line is not None else ""
        lines.append(f"  skipped {rule.key}{name}{line}:")
        lines.extend(f"    {reason}" for reason in rule.reasons)
    lines.extend(f"  note: {note}" for note in usable.notes)
    return lines


def _dry_run_lines(result: DryRunResult) -> list[str]:
    lines = [
        f"Dry run against {result.folder} (calling AE {result.calling_ae}, "
        f"called AE {result.called_ae}): {len(result.series)} series, "
        f"{len(result.skipped)} file{'s' if len(result.skipped) != 1 else ''} skipped"
    ]
    if not result.series:
        lines.append("  no DICOM series found")
    current_study: str | None = None
    for series in result.series:
        if series.study_uid != current_study:
            current_study = series.study_uid
            lines.append("")
            lines.append(f"study {series.study_uid or '(no StudyInstanceUID)'}")
        lines.append(f"  series {series.series_uid}")
        description = series.series_description or "(none)"
        body_part = series.body_part_examined or "(none)"
        lines.append(
            f"    Modality {series.modality or '(none)'}, SeriesDescription {description!r}, "
            f"BodyPartExamined {body_part}, {series.instances} "
            f"instance{'s' if series.instances != 1 else ''}"
        )
        explanation = series.decision.explain().splitlines()
        lines.append(f"    -> {explanation[0]}")
        lines.extend(f"    {line}" for line in explanation[1:])
    if result.skipped:
        lines.append("")
        lines.append("skipped files:")
        lines.extend(f"  {skipped.path}: {skipped.reason}" for skipped in result.skipped)
    return lines


def run_check(
    path: Path,
    known_algorithms: Collection[str],
    against: Path | None = None,
    calling_ae: str = "DRYRUN",
    called_ae: str | None = None,
    progress: DryRunProgress | None = None,
    purposes: Mapping[str, Purpose] | None = None,
) -> CheckOutcome:
    """The whole ``check-config`` command: check, optionally dry-run, format. The CLI prints
    ``outcome.text`` and exits with ``outcome.exit_code`` (see ``EXIT_*``). A file with
    problems is dry-run too, with the rules that have none (``outcome.usable``)."""
    document, config, issues = _check_file(path, known_algorithms)
    if config is not None and not issues:
        if against is None:
            return CheckOutcome(EXIT_OK, format_report(path, [], config=config), config, (), None)
        try:
            result = dry_run(config, against, calling_ae, called_ae, progress, purposes)
        except OSError as exc:
            text = format_report(path, [], config=config) + f"cannot dry-run: {exc}\n"
            return CheckOutcome(EXIT_BAD_FOLDER, text, config, (), None)
        text = format_report(path, [], result, config=config)
        return CheckOutcome(EXIT_OK, text, config, (), result)

    report = format_report(path, issues, config=config)
    if against is None:
        return CheckOutcome(EXIT_INVALID, report, config, tuple(issues), None)
    usable = usable_rules(document, issues) if document is not None else None
    if usable is None:
        why = "the file could not be read" if document is None else "its top level is not a mapping"
        text = report + f"\ncannot dry-run: {why}\n"
        return CheckOutcome(EXIT_INVALID, text, config, tuple(issues), None)
    try:
        result = dry_run(usable.config, against, calling_ae, called_ae, progress, purposes)
    except OSError as exc:
        text = format_report(path, issues, usable=usable) + f"\ncannot dry-run: {exc}\n"
        return CheckOutcome(EXIT_INVALID, text, config, tuple(issues), None, usable)
    text = format_report(path, issues, result, usable=usable)
    return CheckOutcome(EXIT_INVALID, text, config, tuple(issues), result, usable)
