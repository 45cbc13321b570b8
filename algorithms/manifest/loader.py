"""Read a manifest YAML into a Manifest; every problem names its file, line, column and key."""

from __future__ import annotations

import difflib
import hashlib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from algorithms.backends import ModelFormat
from algorithms.manifest.schema import Manifest
from config.loader import ConfigError, ConfigIssue, SourceMap

KeyPath = tuple[str | int, ...]

SCALARS = (str, int, float, bool)
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
    :class:`ManifestError`."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ManifestError(
            [ConfigIssue(source, None, None, "", f"cannot read file: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ManifestError(
            [ConfigIssue(source, None, None, "", f"not valid UTF-8 text (byte {exc.start})")]
        ) from None
    manifest, locator = parse_manifest(text, source)
    model_path = (path.parent / manifest.model.file).resolve()
    loaded = LoadedManifest(manifest, path, model_path)
    issues = _model_file_issues(loaded, locator)
    if issues:
        raise ManifestError(issues)
    return loaded


def parse_manifest(text: str, source: str = "<manifest>") -> tuple[Manifest, SourceMap]:
    """Validate manifest YAML ``text``; the SourceMap places later problems on their line."""
    document = _load_yaml(text, source)
    locator = SourceMap(source, document)
    issues: list[ConfigIssue] = []
    plain = _to_plain(document, locator, (), issues)
    if issues:
        raise ManifestError(issues)
    try:
        manifest = Manifest.model_validate(plain)
    except ValidationError as exc:
        raise ManifestError(_issues_from_validation(exc, locator)) from None
    return manifest, locator


def manifest_name_hint(path: Path) -> str | None:
    """The ``name:`` a manifest file gives, even when the rest of it is invalid."""
    try:
        document = YAML(typ="safe").load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, YAMLError):
        return None
    name = document.get("name") if isinstance(document, Mapping) else None
    return name if isinstance(name, str) and name.isidentifier() else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _model_file_issues(loaded: LoadedManifest, locator: SourceMap) -> list[ConfigIssue]:
    spec = loaded.manifest.model
    if not loaded.model_path.is_file():
        return [
            locator.issue(
                ("model", "file"),
                f"model file {spec.file!r} not found (looked for {loaded.model_path})",
                at_key=False,
            )
        ]
    issues: list[ConfigIssue] = []
    if spec.format is None:
        try:
            ModelFormat.from_path(loaded.model_path)
        except ValueError as exc:
            issues.append(locator.issue(("model", "file"), f"{exc}; or give model.format"))
    if spec.sha256 is not None:
        actual = file_sha256(loaded.model_path)
        if actual != spec.sha256:
            issues.append(
                locator.issue(
                    ("model", "sha256"),
                    f"{spec.file} has sha256 {actual}, not the {spec.sha256} the manifest "
                    "gives: the file was changed or damaged, or the manifest is for another file",
                    at_key=False,
                )
            )
    return issues


# --------------------------------------------------------------------------------------------
# YAML


def _load_yaml(text: str, source: str) -> CommentedMap:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        problem = (exc.problem or str(exc)).strip()
        raise ManifestError(
            [ConfigIssue(source, line, column, "", f"YAML syntax error: {problem}")]
        ) from None
    except YAMLError as exc:
        raise ManifestError([ConfigIssue(source, None, None, "", f"YAML error: {exc}")]) from None
    if not isinstance(document, CommentedMap):
        raise ManifestError(
            [ConfigIssue(source, 1, 1, "", "a manifest is a mapping of keys (name:, model:, ...)")]
        )
    return document


def _to_plain(node: object, locator: SourceMap, path: KeyPath, issues: list[ConfigIssue]) -> Any:
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag is not None and not str(tag).startswith("tag:yaml.org,2002:"):
        issues.append(locator.issue(path, f"YAML tags ({tag}) are not supported"))
        return None
    if isinstance(node, Mapping):
        result: dict[object, object] = {}
        for key, value in node.items():
            if not isinstance(key, SCALARS):
                issues.append(locator.issue(path, "keys must be plain text or numbers"))
                continue
            result[key] = _to_plain(value, locator, (*path, _path_part(key)), issues)
        return result
    if isinstance(node, list):
        return [_to_plain(v, locator, (*path, i), issues) for i, v in enumerate(node)]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _path_part(key: object) -> str | int:
    return key if isinstance(key, str | int) and not isinstance(key, bool) else str(key)


# --------------------------------------------------------------------------------------------
# Pydantic errors -> issues at their YAML position


def _issues_from_validation(exc: ValidationError, locator: SourceMap) -> list[ConfigIssue]:
    grouped: dict[KeyPath, list[ErrorDetails]] = {}
    for error in exc.errors():
        grouped.setdefault(_yaml_path(tuple(error["loc"]), locator), []).append(error)
    issues: list[ConfigIssue] = []
    for path, errors in grouped.items():
        found, node, _, _ = locator.walk(path)
        kinds = {e["type"] for e in errors}
        if len(errors) > 1 and all(k.endswith(("_type", "_parsing")) for k in kinds):
            nouns = sorted({_noun(e["type"]) for e in errors})
            message = f"expected {' or '.join(nouns)}; got {_kind(node)}"
            issues.append(locator.issue(path, message, at_key=False))
            continue
        for error in errors:
            issues.append(_issue(error, path, found, node, locator))
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (i.line or 0, i.column or 0))


def _yaml_path(loc: KeyPath, locator: SourceMap) -> KeyPath:
    """Drop the parts of a pydantic ``loc`` that are not in the YAML (union member tags such as
    ``mask`` or ``int``), keeping a last part that names a missing or unknown key."""
    path: list[str | int] = []
    node: object = locator.document
    for index, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(node, Mapping):
            key = _mapping_key(node, part)
            if key is not None:
                path.append(key)
                node = node[key]
                continue
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
            continue
        if index == len(loc) - 1 and isinstance(node, Mapping) and not _is_tag(part):
            path.append(part)
    return tuple(path)


def _mapping_key(node: Mapping[Any, Any], part: str | int) -> str | int | None:
    if part in node:
        return part
    if isinstance(part, str) and part.lstrip("-").isdigit() and int(part) in node:
        return int(part)
    return None


def _is_tag(part: str | int) -> bool:
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "none") or "[" in part or part[:1].isupper()
    )


def _issue(
    error: ErrorDetails, path: KeyPath, found: KeyPath, node: object, locator: SourceMap
) -> ConfigIssue:
    kind = error["type"]
    if kind == "missing":
        issue = locator.issue(found, f"missing required key {path[-1]!r}", at_key=True)
        return ConfigIssue(issue.file, issue.line, issue.column, _format(path), issue.message)
    if kind == "extra_forbidden":
        name = str(path[-1]) if path else "?"
        allowed = _allowed_keys(path[:-1], locator)
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        message = f"unknown key {name!r}"
        if close:
            message += f" (did you mean {close[0]!r}?)"
        if allowed:
            message += f"; allowed here: {', '.join(allowed)}"
        return locator.issue(path, message, at_key=True)
    text = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
    ctx = error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        text = f"{_kind(node)} does not have the form {ctx.get('pattern', '?')}"
    elif kind in ("literal_error", "enum"):
        text = f"must be {str(ctx.get('expected', '?')).replace(chr(39), '')}; got {_kind(node)}"
    elif kind == "union_tag_invalid":
        tag = ctx.get("discriminator", "kind").strip("'")
        text = f"{tag} must be {str(ctx.get('expected_tags', '?')).replace(chr(39), '')}"
        return locator.issue((*path, tag.strip("'")), f"{text}; got {_kind(node)}", at_key=False)
    elif kind == "union_tag_not_found":
        tag = str(ctx.get("discriminator", "kind")).strip("'")
        issue = locator.issue(path, f"missing required key {tag!r}", at_key=True)
        return ConfigIssue(
            issue.file, issue.line, issue.column, _format((*path, tag)), issue.message
        )
    elif not isinstance(node, Mapping) and kind != "value_error":
        text = f"{text}; got {_kind(node)}"
    at_key = isinstance(node, Mapping) and kind == "value_error"
    return locator.issue(path, text, at_key=at_key)


def _format(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _noun(kind: str) -> str:
    for prefix, noun in (
        ("string", "text"),
        ("int", "a whole number"),
        ("float", "a number"),
        ("bool", "true or false"),
        ("list", "a list"),
        ("dict", "a mapping"),
        ("model", "a mapping"),
    ):
        if kind.startswith(prefix):
            return noun
    return "a different value"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# Allowed keys at a path, following discriminated unions by the YAML's own `kind`/`method`


def _allowed_keys(path: KeyPath, locator: SourceMap) -> list[str]:
    annotation: Any = Manifest
    node: object = locator.document
    for part in path:
        annotation = _unwrap(annotation, node)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        else:
            origin, args = typing.get_origin(annotation), typing.get_args(annotation)
            if origin is list and args:
                annotation = args[0]
            elif origin is dict and len(args) == 2:
                annotation = args[1]
            else:
                return []
        node = _child(node, part)
    annotation = _unwrap(annotation, node)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _child(node: object, part: str | int) -> object:
    if isinstance(node, Mapping):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _unwrap(annotation: Any, node: object) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin is Union or isinstance(annotation, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if len(members) == 1:
                annotation = members[0]
                continue
            if len(models) == 1:
                return models[0]
            if models and isinstance(node, Mapping):
                for model in models:
                    for tag in ("kind", "method"):
                        field = model.model_fields.get(tag)
                        if field is not None and node.get(tag) in typing.get_args(field.annotation):
                            return model
            return annotation
        return annotation
