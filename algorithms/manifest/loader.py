"""Read a manifest YAML into a Manifest and check the model file it names; every problem names
its file, line, column and key."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from algorithms.backends import ModelFormat
from algorithms.manifest.schema import SHA256_PATTERN, Manifest
from config.yaml_document import (
    ConfigError,
    ConfigIssue,
    YamlDocument,
    parse_yaml,
    read_yaml,
    validate,
)

HASH_CHUNK_BYTES = 1 << 20


class ManifestError(ConfigError):
    """A manifest that cannot be used; ``issues`` lists every problem with its position."""


@dataclass(frozen=True)
class LoadedManifest:
    """A valid manifest, where it was read from, and the model file it points to."""

    manifest: Manifest
    path: Path
    model_path: Path

    @property
    def model_format(self) -> ModelFormat:
        return self.manifest.model.format or ModelFormat.from_path(self.model_path)


def load_manifest(path: Path) -> LoadedManifest:
    """Read and validate the manifest at ``path``, check that its model file exists, has a
    known format and (when ``sha256`` is given) the right checksum. Raises
    :class:`ManifestError` listing every problem."""
    path = Path(path)
    try:
        document = read_yaml(path)
        manifest = validate(document, Manifest, found=_model_file_issues(document, path.parent))
    except ConfigError as exc:
        raise ManifestError(exc.issues) from None
    return LoadedManifest(manifest, path, (path.parent / manifest.model.file).resolve())


def parse_manifest(text: str, source: str = "<manifest>") -> Manifest:
    """Validate manifest YAML ``text`` (without looking for its model file)."""
    try:
        return validate(parse_yaml(text, source), Manifest)
    except ConfigError as exc:
        raise ManifestError(exc.issues) from None


def manifest_name_hint(path: Path) -> str | None:
    """The ``name:`` a manifest file gives, even when the rest of it is invalid."""
    try:
        name = read_yaml(path).value_at(("name",))
    except ConfigError:
        return None
    return name if isinstance(name, str) and name.isidentifier() else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _model_file_issues(document: YamlDocument, folder: Path) -> list[ConfigIssue]:
    """The model file named under ``model:`` (relative to ``folder``): it exists, its format
    is known, its checksum is the one given. Reads the plain data, so a file missing is
    reported together with any mistake elsewhere in the manifest."""
    spec = document.value_at(("model",))
    file = spec.get("file") if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping) or not isinstance(file, str) or not file:
        return []  # the schema reports it
    model_path = (folder / file).resolve()
    if not model_path.is_file():
        message = f"model file {file!r} not found (looked for {model_path})"
        return [document.issue(("model", "file"), message, at_key=False)]
    issues: list[ConfigIssue] = []
    if spec.get("format") is None:
        try:
            ModelFormat.from_path(model_path)
        except ValueError as exc:
            issues.append(document.issue(("model", "file"), f"{exc}; or give model.format"))
    expected = spec.get("sha256")
    if isinstance(expected, str) and re.fullmatch(SHA256_PATTERN, expected):
        actual = file_sha256(model_path)
        if actual != expected.lower():
            issues.append(
                document.issue(
                    ("model", "sha256"),
                    f"{file} has sha256 {actual}, not the {expected.lower()} the manifest "
                    "gives: the file was changed or damaged, or the manifest is for another file",
                    at_key=False,
                )
            )
    return issues
