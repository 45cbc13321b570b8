"""Find manifests in the configured model folders and turn each valid one into an algorithm."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from algorithms.manifest.algorithm import ManifestAlgorithm, algorithm_class
from algorithms.manifest.loader import ManifestError, load_manifest, manifest_name_hint
from config.loader import ConfigIssue

LOGGER = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ManifestProblem:
    """A manifest (or model folder) that could not be used, and why."""

    name: str
    """The algorithm name the manifest gives, else its file name."""
    path: Path
    message: str
    issues: tuple[ConfigIssue, ...]
    """The same problem as positioned issues, for ``check-config``."""


@dataclass(frozen=True)
class ManifestDiscovery:
    algorithms: Mapping[str, type[ManifestAlgorithm]] = field(default_factory=dict)
    sources: Mapping[str, Path] = field(default_factory=dict)
    """Algorithm name -> its manifest file."""
    problems: tuple[ManifestProblem, ...] = ()

    def issues(self) -> list[ConfigIssue]:
        return [issue for problem in self.problems for issue in problem.issues]


def manifest_files(directory: Path) -> list[Path]:
    """``*.yaml``/``*.yml`` directly in ``directory`` and in its direct sub-folders (one
    folder per model is the tidy layout), sorted."""
    found: list[Path] = []
    for entry in sorted(directory.iterdir()):
        if entry.is_file() and entry.suffix.lower() in MANIFEST_SUFFIXES:
            found.append(entry)
        elif entry.is_dir() and not entry.name.startswith("."):
            found.extend(
                sorted(
                    child
                    for child in entry.iterdir()
                    if child.is_file() and child.suffix.lower() in MANIFEST_SUFFIXES
                )
            )
    return found


def discover_manifests(
    directories: Iterable[Path], taken: Collection[str] = ()
) -> ManifestDiscovery:
    """Load every manifest in ``directories``. A broken one, or one whose name is in
    ``taken`` (installed plugins) or used by an earlier manifest, is a problem, never fatal."""
    algorithms: dict[str, type[ManifestAlgorithm]] = {}
    sources: dict[str, Path] = {}
    problems: list[ManifestProblem] = []

    def refuse(name: str, path: Path, issues: list[ConfigIssue]) -> None:
        message = "; ".join(str(issue) for issue in issues)
        LOGGER.error("model manifest %s refused: %s", path, message)
        problems.append(ManifestProblem(name, path, message, tuple(issues)))

    for directory in directories:
        directory = Path(directory)
        try:
            paths = manifest_files(directory)
        except OSError as exc:
            reason = "model folder not found" if not directory.exists() else str(exc)
            issue = ConfigIssue(str(directory), None, None, "", reason)
            refuse(f"model_dirs: {directory}", directory, [issue])
            continue
        for path in paths:
            try:
                loaded = load_manifest(path)
            except ManifestError as exc:
                refuse(manifest_name_hint(path) or path.name, path, list(exc.issues))
                continue
            name = loaded.manifest.name
            clash = "an installed plugin" if name in taken else None
            if name in sources:
                clash = f"the manifest {sources[name]}"
            if clash is not None:
                issue = ConfigIssue(
                    str(path), None, None, "name", f"{name!r} is already the name of {clash}"
                )
                refuse(name, path, [issue])
                continue
            algorithms[name] = algorithm_class(loaded)
            sources[name] = path
            LOGGER.info("model manifest %s: algorithm %s", path, name)
    return ManifestDiscovery(algorithms, sources, tuple(problems))
