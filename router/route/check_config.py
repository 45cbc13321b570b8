"""``radrouter check-config``: validate a routing YAML and dry-run it against sample DICOM files."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.errors import InvalidDicomError

from algorithms.manifest.discovery import discover_manifests
from config.loader import ConfigError, ConfigIssue, check_algorithms, validate_config
from config.schema import RouterConfig
from config.yaml_document import YamlDocument, merge_issues, read_yaml, reference_issue
from router.route.matching import ASSOCIATION_ATTRIBUTES, RoutingDecision, SeriesFacts, route

__all__ = [
    "EXIT_BAD_FOLDER",
    "EXIT_INVALID",
    "EXIT_OK",
    "CheckOutcome",
    "DryRunResult",
    "SeriesDryRun",
    "SkippedFile",
    "check_attribute_names",
    "check_config_file",
    "dry_run",
    "format_report",
    "run_check",
]

EXIT_OK = 0
"""The configuration is valid (and the dry run, if asked for, ran)."""
EXIT_INVALID = 1
"""The configuration has problems; nothing else was done."""
EXIT_BAD_FOLDER = 2
"""The configuration is valid but the ``--against`` folder could not be read."""

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
NUMERIC_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})


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
class CheckOutcome:
    """What ``radrouter check-config`` prints and its exit status."""

    exit_code: int
    text: str
    config: RouterConfig | None
    issues: tuple[ConfigIssue, ...]
    dry_run: DryRunResult | None


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
    try:
        document = read_yaml(Path(path))
    except ConfigError as exc:  # unreadable, or not YAML at all
        return None, list(exc.issues)
    config: RouterConfig | None = None
    try:
        config = validate_config(document).config
        schema_issues: list[ConfigIssue] = []
    except ConfigError as exc:
        schema_issues = list(exc.issues)
    model_dirs = config.model_dirs if config is not None else _model_dirs(document)
    manifests = discover_manifests(model_dirs, taken=set(known_algorithms))
    known = set(known_algorithms) | set(manifests.algorithms)
    issues = merge_issues(
        schema_issues, check_algorithms(document, known), check_attribute_names(document)
    )
    return config, issues + manifests.issues()


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
    for path in _files_under(folder):
        relative = path.relative_to(folder)
        try:
            ds: pydicom.Dataset = pydicom.dcmread(path, stop_before_pixels=True, force=False)
        except InvalidDicomError:
            skipped.append(SkippedFile(relative, "not a DICOM file (no DICM preamble)"))
            continue
        except Exception as exc:  # truncated or corrupt: report, keep going
            skipped.append(SkippedFile(relative, f"unreadable DICOM ({type(exc).__name__})"))
            continue
        if _text(ds, "MediaStorageSOPClassUID", meta=True) == DICOMDIR_SOP_CLASS:
            skipped.append(SkippedFile(relative, "DICOMDIR (an index, not an image)"))
            continue
        series_uid = _text(ds, "SeriesInstanceUID")
        if not series_uid:
            skipped.append(SkippedFile(relative, "no SeriesInstanceUID"))
            continue
        key = (_int(ds, "InstanceNumber"), _text(ds, "SOPInstanceUID"))
        entry = series.get(series_uid)
        if entry is None:
            series[series_uid] = _SeriesAccumulator(key, ds, {key[1] or str(relative)})
            continue
        entry.instances.add(key[1] or str(relative))
        if key < entry.first_key:
            entry.first_key, entry.first = key, ds

    results: list[tuple[tuple[str, int, str], SeriesDryRun]] = []
    for series_uid, entry in series.items():
        ds = entry.first
        decision = route(config, SeriesFacts.from_dataset(ds, calling_ae, called))
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
) -> str:
    """The text ``radrouter check-config`` prints: ``OK`` (with a summary when ``config`` is
    given), or each issue as ``FILE:LINE:COL: KEY: MESSAGE``; then, for a dry run, one block
    per series."""
    lines: list[str] = []
    if issues:
        lines.extend(str(issue) for issue in issues)
        count = len(issues)
        lines.append(f"{path}: {count} problem{'s' if count != 1 else ''} found; not valid")
        return "\n".join(lines) + "\n"
    lines.append(f"{path}: OK ({_summary(config)})" if config is not None else f"{path}: OK")
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
) -> CheckOutcome:
    """The whole ``check-config`` command: check, optionally dry-run, format. The CLI prints
    ``outcome.text`` and exits with ``outcome.exit_code`` (see ``EXIT_*``)."""
    config, issues = check_config_file(path, known_algorithms)
    if config is None or issues:
        text = format_report(path, issues, config=config)
        return CheckOutcome(EXIT_INVALID, text, config, tuple(issues), None)
    if against is None:
        return CheckOutcome(EXIT_OK, format_report(path, [], config=config), config, (), None)
    try:
        result = dry_run(config, against, calling_ae=calling_ae, called_ae=called_ae)
    except OSError as exc:
        text = format_report(path, [], config=config) + f"cannot dry-run: {exc}\n"
        return CheckOutcome(EXIT_BAD_FOLDER, text, config, (), None)
    text = format_report(path, [], result, config=config)
    return CheckOutcome(EXIT_OK, text, config, (), result)
