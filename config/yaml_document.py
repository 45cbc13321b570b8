"""A YAML file with positions, validated against a pydantic model; each problem as
``file:line:col: key.path: message``. The routing config and model manifests both load here."""

from __future__ import annotations

import datetime
import difflib
import enum
import os
import re
import types
import typing
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "KeyPath",
    "YamlDocument",
    "describe",
    "did_you_mean",
    "format_key",
    "merge_issues",
    "parse_yaml",
    "read_yaml",
    "reference_issue",
    "validate",
]

KeyPath = tuple[str | int, ...]
"""Keys and list indexes from the top of the file: ``("rules", 1, "when", "Modality")``."""

Model = TypeVar("Model", bound=BaseModel)

_STANDARD_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")
)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\})?")
_REFERENCE_BODY = re.compile(rf"(?P<name>{_NAME})(?::-(?P<default>.*))?", re.DOTALL)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a YAML file. ``line`` and ``column`` are 1-based."""

    file: str
    line: int | None
    column: int | None
    key: str
    """Dotted path of the offending key, e.g. ``rules[1].when.SliceThickness.max``."""
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The file could not be loaded; ``issues`` lists every problem found."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def format_key(path: Sequence[str | int]) -> str:
    """``("rules", 1, "when", "Modality")`` -> ``rules[1].when.Modality``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


# --------------------------------------------------------------------------------------------
# The document


@dataclass(frozen=True)
class YamlDocument:
    """A YAML file as plain data (``data``: dicts, lists, text, numbers; environment variables
    substituted) and as the parsed nodes that know each key's line and column (``root``).
    ``issues`` are the problems found while reading it (tags, odd keys, unset variables)."""

    source: str
    root: Any
    data: Any
    issues: tuple[ConfigIssue, ...] = ()

    def value_at(self, path: KeyPath, default: object = None) -> object:
        """The plain value at ``path``, or ``default`` when the file does not have it."""
        node = self.data
        for part in path:
            key = _lookup(node, part)
            if key is _ABSENT:
                return default
            node = node[key]
        return node

    def position(self, path: KeyPath, at_key: bool = True) -> tuple[int | None, int | None]:
        """1-based line and column of ``path`` (its key, or its value), or of its nearest
        ancestor the file has. A mapping or list is placed at its key either way."""
        node = self.root
        line, column = _node_position(node)
        key_pos = value_pos = (line - 1, column - 1)
        for part in path:
            key = _lookup(node, part)
            if key is _ABSENT:
                break
            if isinstance(node, CommentedMap):
                key_pos, value_pos = _map_positions(node, key)
            elif isinstance(node, CommentedSeq):
                key_pos = value_pos = node.lc.item(key)
            node = node[key]
        chosen = key_pos if at_key or isinstance(node, Mapping | list) else value_pos
        return chosen[0] + 1, chosen[1] + 1

    def issue(self, path: KeyPath, message: str, at_key: bool = True) -> ConfigIssue:
        """An issue about ``path``, placed on its line (or its nearest ancestor's)."""
        line, column = self.position(path, at_key=at_key)
        return ConfigIssue(self.source, line, column, format_key(path), message)


class _Absent:
    pass


_ABSENT = _Absent()


def _lookup(container: object, part: str | int) -> Any:
    """The key (or index) of ``container`` that ``part`` names, or ``_ABSENT``."""
    if isinstance(container, Mapping):
        if part in container:
            return part
        return next((key for key in container if str(key) == str(part)), _ABSENT)
    if isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container):
        return part
    return _ABSENT


def _node_position(node: object) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return 1, 1
    return lc.line + 1, lc.col + 1


def _map_positions(node: CommentedMap, key: object) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        key_line, key_col = node.lc.key(key)
        value_line, value_col = node.lc.value(key)
    except (KeyError, TypeError):  # merged in with `<<:`: use the mapping itself
        return (node.lc.line, node.lc.col), (node.lc.line, node.lc.col)
    return (key_line, key_col), (value_line, value_col)


# --------------------------------------------------------------------------------------------
# Reading


def read_yaml(path: Path, environ: Mapping[str, str] | None = None) -> YamlDocument:
    """Read the YAML file at ``path``; see :func:`parse_yaml`."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        issue = ConfigIssue(source, None, None, "", f"cannot read file: {reason}")
        raise ConfigError([issue]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        message = f"not valid UTF-8 text (byte {exc.start})"
        raise ConfigError([ConfigIssue(source, line, None, "", message)]) from None
    return parse_yaml(text, source, environ)


def parse_yaml(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> YamlDocument:
    """Parse YAML ``text`` (``source`` names it in messages), replacing ``${NAME}`` and
    ``${NAME:-default}`` in text values from ``environ`` (the process environment by default).
    Raises :class:`ConfigError` only when there is no document to speak of (a syntax error);
    every other problem is in the document's ``issues``."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        raise ConfigError([_syntax_issue(exc, source)]) from None
    except YAMLError as exc:  # unmarked YAML errors are rare; keep the message
        raise ConfigError([ConfigIssue(source, None, None, "", f"YAML error: {exc}")]) from None
    reader = _PlainReader(
        YamlDocument(source, root, None), os.environ if environ is None else environ
    )
    data = reader.plain(root, ())
    return YamlDocument(source, root, data, tuple(reader.issues))


def _syntax_issue(exc: MarkedYAMLError, source: str) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    problem = (exc.problem or "").strip()
    if exc.__class__.__name__ == "DuplicateKeyError":
        match = re.match(r'found duplicate key "(.*)" with value', problem)
        name = match.group(1) if match else "?"
        first = exc.context_mark.line + 1 if exc.context_mark is not None else None
        where = f" in the mapping that starts on line {first}" if first else ""
        return ConfigIssue(source, line, column, name, f"duplicate key {name!r}{where}")
    context = (exc.context or "").strip()
    message = f"YAML syntax error: {problem}" if problem else "YAML syntax error"
    if context:
        message += f" ({context})"
    if "\\t" in problem or "'\\t'" in message:
        message += "; indent with spaces, not tabs"
    if "escape character" in problem:
        message += "; write regular expressions in 'single quotes', where \\ is plain text"
    return ConfigIssue(source, line, column, "", message)


@dataclass
class _PlainReader:
    """ruamel.yaml's round-trip nodes -> plain dict/list/str/int/float/bool, with variables
    substituted. Shared (aliased) nodes are converted once, so anchors cannot blow up."""

    document: YamlDocument
    environ: Mapping[str, str]
    issues: list[ConfigIssue] = field(default_factory=list)
    memo: dict[int, object] = field(default_factory=dict)

    def plain(self, node: object, path: KeyPath) -> object:
        if id(node) in self.memo:
            return self.memo[id(node)]
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag is not None and str(tag) not in _STANDARD_TAGS:
            shown = str(tag).replace("tag:yaml.org,2002:", "!!")
            self.issues.append(self.document.issue(path, f"YAML tags ({shown}) are not supported"))
            return None
        if isinstance(node, TaggedScalar):
            return self.substitute(str(node.value), path)
        if isinstance(node, Mapping):
            result: dict[object, object] = {}
            self.memo[id(node)] = result
            for key, value in node.items():
                if isinstance(key, bool) or not isinstance(key, str | int | float):
                    self.issues.append(self.document.issue(path, "keys must be plain text"))
                    continue
                plain_key = str(key) if isinstance(key, str) else key
                child = plain_key if isinstance(plain_key, str | int) else str(plain_key)
                result[plain_key] = self.plain(value, (*path, child))
            return result
        if isinstance(node, list):
            items: list[object] = []
            self.memo[id(node)] = items
            items.extend(self.plain(value, (*path, index)) for index, value in enumerate(node))
            return items
        if isinstance(node, bool):
            return bool(node)
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, str):
            return self.substitute(str(node), path)
        return node

    def substitute(self, text: str, path: KeyPath) -> str:
        """``${NAME}``, ``${NAME:-default}`` (also when NAME is empty) and ``$${`` (a literal
        ``${``); a reference that cannot be resolved is an issue and stays as written."""
        problems: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            body = match.group("body")
            reference = _REFERENCE_BODY.fullmatch(body)
            if match.group("close") is None or reference is None or "${" in body:
                problems.append(
                    f"{match.group(0)!r} is not a variable reference: write ${{NAME}} or "
                    "${NAME:-default}, or $${ for a literal ${"
                )
                return match.group(0)
            name, default = reference.group("name"), reference.group("default")
            value = self.environ.get(name)
            if default is not None and not value:
                return default
            if value is None:
                problems.append(
                    f"environment variable {name} is not set (set it, or give a default: "
                    f"${{{name}:-value}})"
                )
                return match.group(0)
            return value

        result = _REFERENCE.sub(replace, text)
        self.issues.extend(self.document.issue(path, problem, at_key=False) for problem in problems)
        return result


# --------------------------------------------------------------------------------------------
# Validation


def validate(
    document: YamlDocument,
    model: type[Model],
    *,
    found: Iterable[ConfigIssue] = (),
    patterns: Mapping[str, str] | None = None,
) -> Model:
    """Validate ``document`` against ``model``; raise :class:`ConfigError` listing every
    problem: those found while reading, those in ``found`` (the caller's own checks of the
    plain data, which win over a schema message about the same key), and the schema's.
    ``patterns`` explains regular expressions of the schema: ``{AE_TITLE_PATTERN: "a valid AE
    title: ..."}`` turns a mismatch into "the text 'X' is not a valid AE title: ...\""""
    earlier = [*document.issues, *found]
    schema: list[ConfigIssue] = []
    data = document.data
    if data is None:
        schema.append(
            ConfigIssue(document.source, 1, 1, "", "the file is empty (or only comments)")
        )
    elif not isinstance(data, Mapping):
        keys = "".join(f"{key}:, " for key in _allowed_keys(model)[:3])
        message = f"the top level must be a mapping of keys ({keys}...), not {describe(data)}"
        schema.append(document.issue((), message))
    else:
        try:
            result = model.model_validate(data)
        except ValidationError as exc:
            checker = _SchemaChecker(document, patterns or {})
            for issue, summarises in checker.issues(model, (), exc.errors()):
                # A model's own check restating a finding inside it adds nothing.
                if summarises is None or not any(_inside(e.key, summarises) for e in earlier):
                    schema.append(issue)
        else:
            if not earlier:
                return result
    raise ConfigError(merge_issues(earlier, schema))


def merge_issues(*groups: Iterable[ConfigIssue]) -> list[ConfigIssue]:
    """The issues of several checks in file order, each once. An issue at (or inside) a key
    that an earlier group already reported is left out: the earlier finding explains it."""
    kept: list[ConfigIssue] = []
    for group in groups:
        reported = [issue.key for issue in kept if issue.key]
        kept.extend(
            issue for issue in group if not any(_inside(issue.key, key) for key in reported)
        )
    unique = list(dict.fromkeys(kept))
    return sorted(unique, key=lambda issue: (issue.line or 0, issue.column or 0))


def _inside(key: str, outer: str) -> bool:
    return not outer or key == outer or key.startswith((f"{outer}.", f"{outer}["))


_Placed = tuple[ConfigIssue, str | None]
"""An issue, and the key of the mapping it sums up when it is a model's own check."""


@dataclass(frozen=True)
class _Stop:
    """Where an error's location leaves the plain data: ``path`` in the data, the type
    expected there, and what to do: report the error (``leaf``), name an unknown key
    (``extra``, ``model`` being the mapping's model), or check the value again ourselves
    (``union``: which member applies depends on the value; ``entries``: a dict's keys and
    values), since there pydantic's location holds parts that are not in the file."""

    path: KeyPath
    annotation: Any
    action: typing.Literal["leaf", "extra", "union", "entries"]
    model: type[BaseModel] | None = None


@dataclass(frozen=True)
class _SchemaChecker:
    """Pydantic errors -> issues at their YAML position, following each error's location
    through the schema's own annotations (fields, list items, dict values)."""

    document: YamlDocument
    patterns: Mapping[str, str]

    def issues(
        self, annotation: Any, path: KeyPath, errors: Iterable[ErrorDetails]
    ) -> list[_Placed]:
        """Issues for ``errors`` of validating the value at ``path`` against ``annotation``,
        each with the key of the mapping it summarises (a model's own check) or None."""
        found: list[_Placed] = []
        rechecks: dict[KeyPath, _Stop] = {}
        for error in errors:
            stop = _follow(annotation, tuple(error["loc"]))
            where = (*path, *stop.path)
            if stop.action in ("union", "entries"):
                rechecks.setdefault(where, stop)
            else:
                found.append(self._issue(where, stop, error))
        for where, stop in rechecks.items():
            value = self.document.value_at(where)
            if stop.action == "union":
                found.extend(self._union(where, stop.annotation, value))
            elif isinstance(value, Mapping):
                found.extend(self._entries(where, stop.annotation, value))
        return found

    def check(self, annotation: Any, path: KeyPath) -> list[_Placed]:
        """Validate the value at ``path`` against ``annotation`` on its own."""
        try:
            TypeAdapter(annotation).validate_python(self.document.value_at(path))
        except ValidationError as exc:
            return self.issues(annotation, path, exc.errors())
        return []

    def _union(self, path: KeyPath, annotation: Any, value: object) -> list[_Placed]:
        """A value that fits no member of a union: check it against the member the value
        itself selects (its discriminator, else its shape), or say what would fit."""
        members, discriminator = _union_members(annotation)
        if discriminator is not None and isinstance(value, Mapping):
            by_tag = {tag: m for m in members for tag in _discriminator_values(m, discriminator)}
            tag = value.get(discriminator, _default_tag(members, discriminator))
            if tag is None:
                message = f"missing required key {discriminator!r}"
                found: list[_Placed] = [
                    (self.document.issue((*path, discriminator), message), None)
                ]
                for key in value:  # `kidn: mask` is the likeliest reason
                    hint = did_you_mean(str(key), [discriminator])
                    if hint and not any(_field(m, key) for m in members if _is_model(m)):
                        unknown = f"unknown key {str(key)!r}{hint}"
                        found.append((self.document.issue((*path, key), unknown), None))
                return found
            if not isinstance(tag, Hashable) or tag not in by_tag:
                names = [str(name) for name in by_tag]
                issue = reference_issue(
                    self.document,
                    (*path, discriminator),
                    str(tag),
                    names,
                    problem=f"must be one of: {', '.join(names)}; got {describe(tag)}",
                )
                return [(issue, None)] if issue is not None else []
            return self.check(by_tag[tag], path)
        fitting = [member for member in members if _fits(member, value)]
        if len(fitting) == 1:
            member_issues = self.check(fitting[0], path)
            if member_issues:
                return member_issues
        nouns = list(dict.fromkeys(_noun(member) for member in members))
        message = f"expected {_join_or(nouns)}; got {describe(value)}"
        return [(self.document.issue(path, message, at_key=False), None)]

    def _entries(self, path: KeyPath, annotation: Any, value: Mapping[Any, Any]) -> list[_Placed]:
        """A dict's keys (placed at the key) and values, each checked on its own."""
        key_type, value_type = typing.get_args(annotation)
        found: list[_Placed] = []
        for key in value:
            child = (*path, key if isinstance(key, str | int) else str(key))
            try:
                TypeAdapter(key_type).validate_python(key)
            except ValidationError as exc:
                for error in exc.errors():
                    message = self._message(_unwrap(key_type)[0], key, error)
                    found.append((self.document.issue(child, message, at_key=True), None))
            found.extend(self.check(value_type, child))
        return found

    def _issue(self, path: KeyPath, stop: _Stop, error: ErrorDetails) -> _Placed:
        kind = error["type"]
        value = self.document.value_at(path)
        if stop.action == "extra":
            name = str(path[-1]) if path else "?"
            allowed = _allowed_keys(stop.model) if stop.model is not None else []
            message = f"unknown key {name!r}{did_you_mean(name, allowed)}"
            if allowed:
                message += f"; allowed here: {', '.join(allowed)}"
            return self.document.issue(path, message), None
        if kind == "missing" and isinstance(path[-1], int):
            return self.document.issue(path, f"too few values (no item [{path[-1]}])"), None
        if kind == "missing":
            return self.document.issue(path, f"missing required key {path[-1]!r}"), None
        message = self._message(stop.annotation, value, error)
        if kind in ("value_error", "assertion_error") and isinstance(value, Mapping):
            # A model's own check: place it at the first key its message names, if any.
            if any(item is None for item in value.values()):
                message += " (a key set to null counts as not given)"
            named = [
                (match.start(), key)
                for key in value
                if isinstance(key, str) and value[key] is not None
                for match in [re.search(rf"\b{re.escape(key)}\b", message)]
                if match
            ]
            at = (*path, min(named)[1]) if named else path
            return self.document.issue(at, message), format_key(path)
        return self.document.issue(path, message, at_key=False), None

    def _message(self, annotation: Any, value: object, error: ErrorDetails) -> str:
        kind = error["type"]
        ctx = error.get("ctx") or {}
        if kind in ("value_error", "assertion_error") and "error" in ctx:
            return str(ctx["error"])
        if kind == "string_pattern_mismatch":
            pattern = str(ctx.get("pattern", "?"))
            explained = self.patterns.get(pattern)
            if explained is not None:
                return f"{describe(value)} is not {explained}"
            return f"{describe(value)} does not have the form {pattern}"
        choices = _choices(annotation)
        if kind in ("enum", "literal_error") and choices:
            names = [str(choice) for choice in choices]
            expected = f"one of: {', '.join(names)}" if len(names) > 1 else names[0]
            hint = did_you_mean(value, names) if isinstance(value, str) else ""
            return f"must be {expected}; got {describe(value)}{hint}"
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            return f"expected a mapping of keys; got {describe(value)}"
        if kind in ("list_type", "tuple_type"):
            return f"expected a list such as [A, B]; got {describe(value)}"
        if kind == "path_type":
            return f"expected a path written as text; got {describe(value)}"
        if kind.endswith("_type") or not isinstance(value, Mapping | list):
            return f"{error['msg']}; got {describe(value)}"
        return error["msg"]


def _follow(annotation: Any, loc: KeyPath) -> _Stop:
    """Follow a pydantic error location through ``annotation`` as far as it is a path in the
    data: field names (or aliases) of models, list indexes. It stops at a union or a dict
    (whose values are checked again), at an unknown key, or where the location ends."""
    path: list[str | int] = []
    for part in loc:
        declared, (annotation, _) = annotation, _unwrap(annotation)
        if _is_union(annotation):  # keep the declaration: it may name a discriminator
            return _Stop(tuple(path), declared, "union")
        if _is_model(annotation):
            info = _field(annotation, part)
            if info is None:
                return _Stop((*path, part), None, "extra", annotation)
            annotation = typing.Annotated[info.annotation, info]
        elif typing.get_origin(annotation) is dict:
            return _Stop(tuple(path), annotation, "entries")
        elif typing.get_origin(annotation) in (list, tuple) and isinstance(part, int):
            annotation = _item_type(annotation, part)
        else:  # the location goes on inside a plain value: the error is about the value
            return _Stop(tuple(path), annotation, "leaf")
        path.append(part)
    if _is_union(_unwrap(annotation)[0]):
        return _Stop(tuple(path), annotation, "union")
    return _Stop(tuple(path), _unwrap(annotation)[0], "leaf")


# --------------------------------------------------------------------------------------------
# The schema's own annotations (public API only: model_fields, typing.get_args)


def _unwrap(annotation: Any) -> tuple[Any, str | None]:
    """Strip ``Annotated`` and ``X | None``; also return a discriminator declared on the way
    (``Field(discriminator="kind")``)."""
    discriminator: str | None = None
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *metadata = typing.get_args(annotation)
            for item in metadata:
                if isinstance(item, FieldInfo) and isinstance(item.discriminator, str):
                    discriminator = item.discriminator
            continue
        if _is_union(annotation):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation, discriminator


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Union or isinstance(annotation, types.UnionType)


def _is_model(annotation: Any) -> typing.TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _union_members(annotation: Any) -> tuple[list[Any], str | None]:
    annotation, discriminator = _unwrap(annotation)
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    return members, discriminator


def _field(model: type[BaseModel], key: str | int) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _item_type(annotation: Any, index: int) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and args and args[-1] is not Ellipsis:
        return args[index] if index < len(args) else Any
    return args[0] if args else Any


def _discriminator_values(member: Any, discriminator: str) -> list[object]:
    member, _ = _unwrap(member)
    if not _is_model(member):
        return []
    info = _field(member, discriminator)
    return _choices(info.annotation) if info is not None else []


def _default_tag(members: list[Any], discriminator: str) -> object:
    """The discriminator's value when a mapping leaves it out: the default of the one member
    whose discriminator field has one (``destinations.<name>.type``: ``dicom``), else None."""
    defaults = [
        info.default
        for member in members
        if _is_model(_unwrap(member)[0])
        for info in [_field(_unwrap(member)[0], discriminator)]
        if info is not None and not info.is_required()
    ]
    return defaults[0] if len(defaults) == 1 else None


def _choices(annotation: Any) -> list[object]:
    """The values a ``Literal`` or an enum allows; empty for any other type."""
    annotation, _ = _unwrap(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    return []


def _fits(member: Any, value: object) -> bool:
    """Whether ``value`` has the shape of ``member`` (a mapping for a model, a list for a list,
    a number for a number...), so that the member's own errors are the ones to report."""
    member, _ = _unwrap(member)
    origin = typing.get_origin(member)
    if isinstance(value, Mapping):
        return _is_model(member) or origin is dict
    if isinstance(value, list):
        return origin in (list, tuple)
    if isinstance(value, bool):
        return member is bool
    if isinstance(value, int):
        return member is int
    if isinstance(value, float):
        return member is float
    if isinstance(value, str):
        return member is str
    return False


def _noun(member: Any) -> str:
    member, _ = _unwrap(member)
    origin = typing.get_origin(member)
    choices = _choices(member)
    if choices:
        return " or ".join(repr(choice) for choice in choices)
    nouns = {str: "text", bool: "true or false", int: "a whole number", float: "a number"}
    if member in nouns:
        return nouns[member]
    if origin in (list, tuple):
        return "a list"
    if origin is dict or _is_model(member):
        return "a mapping"
    if isinstance(member, type) and issubclass(member, os.PathLike):
        return "a path"
    return getattr(member, "__name__", str(member))


def _join_or(nouns: list[str]) -> str:
    if len(nouns) <= 1:
        return nouns[0] if nouns else "a different value"
    return ", ".join(nouns[:-1]) + " or " + nouns[-1]


# --------------------------------------------------------------------------------------------
# Names and values in messages


def describe(value: object) -> str:
    """A value as a message shows it: ``the text 'abc'``, ``the number 5``, ``a list``."""
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
        return f"the text {str(value)!r}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()} (quote it to make it text)"
    return type(value).__name__


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'run'?)`` for the candidate closest to ``name`` (the same name in
    another case first), or ``""``."""
    options = [candidate for candidate in candidates if candidate != name]
    folded = {candidate.casefold(): candidate for candidate in options}
    if name.casefold() in folded:
        return f" (did you mean {folded[name.casefold()]!r}?)"
    close = difflib.get_close_matches(name, options, n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def reference_issue(
    document: YamlDocument,
    path: KeyPath,
    name: str,
    known: Collection[str],
    *,
    problem: str,
    listed_as: str | None = None,
    at_key: bool = False,
    cutoff: float = 0.6,
) -> ConfigIssue | None:
    """The issue for a ``name`` at ``path`` that must be one of ``known`` (a destination, an
    algorithm, a keyword...), or None when it is: ``problem``, the closest known name, and
    (with ``listed_as``) every known name: ``...; installed: a, b``."""
    if name in known:
        return None
    message = problem + did_you_mean(name, known, cutoff)
    if listed_as is not None:
        message += f"; {listed_as}: {', '.join(sorted(known)) or 'none'}"
    return document.issue(path, message, at_key=at_key)
