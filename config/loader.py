"""Load the routing YAML into a RouterConfig; every problem names its file, line, column and key."""

from __future__ import annotations

import datetime
import difflib
import re
import types
import typing
import weakref
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from config.schema import AE_TITLE_PATTERN, ATTRIBUTE_PATTERN, RouterConfig

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "ConfigError",
    "ConfigIssue",
    "SourceMap",
    "check_algorithms",
    "config_source",
    "default_config_path",
    "default_config_text",
    "format_key",
    "load_config",
    "load_default_config",
    "parse_config",
]

DEFAULT_CONFIG_NAME = "default.yaml"
"""File name of the shipped default configuration inside the ``config`` package."""

KeyPath = tuple[str | int, ...]
Position = tuple[int, int]  # 0-based line and column, as ruamel.yaml records them

_STANDARD_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")
)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file. ``line`` and ``column`` are 1-based."""

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
    """The configuration could not be loaded; ``issues`` lists every problem found."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


# --------------------------------------------------------------------------------------------
# Public entry points


def parse_config(text: str, source: str = "<string>") -> RouterConfig:
    """Parse and validate YAML ``text``; raise :class:`ConfigError` listing every problem."""
    document = _load_yaml(text, source)
    locator = SourceMap(source, document)
    issues: list[ConfigIssue] = []
    plain = _to_plain(document, locator, (), issues, {})
    if issues:  # tags or odd keys: the structure itself is in doubt
        raise ConfigError(_dedupe(issues))
    issues.extend(_matcher_value_issues(document, locator))
    try:
        config = RouterConfig.model_validate(plain)
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, document, locator))
        raise ConfigError(_dedupe(issues)) from None
    if issues:
        raise ConfigError(_dedupe(issues))
    _remember_source(config, locator)
    return config


def load_config(path: Path) -> RouterConfig:
    """Read and validate the configuration file at ``path``."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        issue = ConfigIssue(source, None, None, "", f"cannot read file: {reason}")
        raise ConfigError([issue]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [ConfigIssue(source, line, None, "", f"not valid UTF-8 text (byte {exc.start})")]
        ) from None
    return parse_config(text, source)


def default_config_text() -> str:
    """The shipped default configuration, comments included (``radrouter`` prints it)."""
    return resources.files("config").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")


def default_config_path() -> str:
    """Where the shipped default lives, for messages (may be inside a wheel)."""
    return str(resources.files("config").joinpath(DEFAULT_CONFIG_NAME))


def load_default_config() -> RouterConfig:
    """The shipped default configuration, validated."""
    return parse_config(default_config_text(), default_config_path())


def check_algorithms(config: RouterConfig, known: Collection[str]) -> list[ConfigIssue]:
    """Report each ``run:`` (rules and fallback) and each ``algorithms:`` entry that names an
    algorithm not in ``known`` (the names the plugin registry offers)."""
    locator = config_source(config)
    known_sorted = sorted(known)
    installed = ", ".join(known_sorted) or "none"
    issues: list[ConfigIssue] = []

    def unknown(name: str, path: KeyPath, what: str, at_key: bool) -> None:
        message = f"{what} {name!r} is not installed{_did_you_mean(name, known_sorted)}"
        if what.startswith("settings"):
            message = f"settings for {name!r}, an algorithm that is not installed"
            message += _did_you_mean(name, known_sorted)
        issues.append(locator.issue(path, f"{message}; installed: {installed}", at_key=at_key))

    for index, rule in enumerate(config.rules):
        if rule.run is not None and rule.run not in known:
            suffix = "" if rule.enabled else " (the rule is disabled)"
            unknown(rule.run, ("rules", index, "run"), "algorithm" + suffix, at_key=False)
    if config.fallback.run is not None and config.fallback.run not in known:
        unknown(config.fallback.run, ("fallback", "run"), "algorithm", at_key=False)
    for name in config.algorithms:
        if name not in known:
            unknown(name, ("algorithms", name), "settings", at_key=True)
    return issues


def config_source(config: RouterConfig) -> SourceMap:
    """Where ``config`` came from, for placing later findings (e.g. unknown algorithms) on the
    right line. A config not made by :func:`parse_config` gets a locator without lines."""
    entry = _SOURCES.get(id(config))
    if entry is not None and entry[0]() is config:
        return entry[1]
    return SourceMap("<config>", None)


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
# YAML reading and positions


def _load_yaml(text: str, source: str) -> CommentedMap:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        raise ConfigError([_syntax_issue(exc, source)]) from None
    except YAMLError as exc:  # unmarked YAML errors are rare; keep the message
        raise ConfigError([ConfigIssue(source, None, None, "", f"YAML error: {exc}")]) from None
    if document is None:
        raise ConfigError(
            [
                ConfigIssue(
                    source,
                    1,
                    1,
                    "",
                    "the file is empty (or only comments); "
                    "start from the shipped default configuration",
                )
            ]
        )
    if not isinstance(document, CommentedMap):
        line, column = _node_position(document)
        kind = _kind(document)
        raise ConfigError(
            [
                ConfigIssue(
                    source,
                    line,
                    column,
                    "",
                    f"the top level must be a mapping of sections (node:, rules:, ...), not {kind}",
                )
            ]
        )
    return document


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


def _node_position(node: object) -> tuple[int | None, int | None]:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return 1, 1
    return lc.line + 1, lc.col + 1


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
        return f"the text {str(value)!r}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()} (quote it to make it text)"
    return type(value).__name__


class SourceMap:
    """Where each key of a loaded file is: maps key paths such as ``("rules", 0, "run")`` to
    line and column. ``document`` is None for a config that was not read from YAML; its
    issues then carry no line."""

    def __init__(self, source: str, document: CommentedMap | None) -> None:
        self.source = source
        self.document = document

    def walk(self, path: KeyPath) -> tuple[KeyPath, object, Position | None, Position | None]:
        """Follow ``path`` as far as the YAML has it: the part found, the node reached, the
        position of its key (or list item) and of its value."""
        node: object = self.document
        found: list[str | int] = []
        key_pos: Position | None = None
        value_pos: Position | None = None
        if self.document is not None:
            key_pos = value_pos = (self.document.lc.line, self.document.lc.col)
        for part in path:
            if isinstance(node, CommentedMap) and part in node:
                key_pos, value_pos = _map_positions(node, part)
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line, col = node.lc.item(part)
                key_pos = value_pos = (line, col)
                node = node[part]
            else:
                break
            found.append(part)
        return tuple(found), node, key_pos, value_pos

    def position(self, path: KeyPath, at_key: bool = True) -> tuple[int | None, int | None]:
        """1-based line and column of ``path`` (its key, or its value), or of its nearest
        ancestor present in the file."""
        if self.document is None:
            return None, None
        _, node, key_pos, value_pos = self.walk(path)
        chosen = key_pos if at_key or isinstance(node, Mapping | list) else value_pos
        if chosen is None:
            return None, None
        return chosen[0] + 1, chosen[1] + 1

    def issue(self, path: KeyPath, message: str, at_key: bool = True) -> ConfigIssue:
        line, column = self.position(path, at_key=at_key)
        return ConfigIssue(self.source, line, column, format_key(path), message)


def _map_positions(node: CommentedMap, key: object) -> tuple[Position, Position]:
    try:
        key_line, key_col = node.lc.key(key)
        value_line, value_col = node.lc.value(key)
    except (KeyError, TypeError):  # merged in with `<<:`: use the mapping itself
        return (node.lc.line, node.lc.col), (node.lc.line, node.lc.col)
    return (key_line, key_col), (value_line, value_col)


_SOURCES: dict[int, tuple[weakref.ref[RouterConfig], SourceMap]] = {}


def _remember_source(config: RouterConfig, locator: SourceMap) -> None:
    key = id(config)

    def forget(_: object, key: int = key) -> None:
        _SOURCES.pop(key, None)

    _SOURCES[key] = (weakref.ref(config, forget), locator)


def _to_plain(
    node: object,
    locator: SourceMap,
    path: KeyPath,
    issues: list[ConfigIssue],
    memo: dict[int, object],
) -> object:
    """ruamel.yaml's round-trip objects -> plain dict/list/str/int/float/bool for pydantic.
    Shared (aliased) nodes are converted once, so anchors cannot blow up."""
    if id(node) in memo:
        return memo[id(node)]
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag is not None and str(tag) not in _STANDARD_TAGS:
        shown = str(tag).replace("tag:yaml.org,2002:", "!!")
        issues.append(locator.issue(path, f"YAML tags ({shown}) are not supported"))
        return None
    if isinstance(node, TaggedScalar):
        return str(node.value)
    if isinstance(node, Mapping):
        result: dict[object, object] = {}
        memo[id(node)] = result
        for key, value in node.items():
            plain_key = _to_plain(key, locator, path, issues, memo)
            if not isinstance(plain_key, str | int | float | bool) or plain_key is None:
                issues.append(locator.issue(path, "keys must be plain text"))
                continue
            child = (*path, plain_key if isinstance(plain_key, str) else str(plain_key))
            result[plain_key] = _to_plain(value, locator, child, issues, memo)
        return result
    if isinstance(node, list):
        items: list[object] = []
        memo[id(node)] = items
        items.extend(
            _to_plain(value, locator, (*path, index), issues, memo)
            for index, value in enumerate(node)
        )
        return items
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _matcher_value_issues(document: CommentedMap, locator: SourceMap) -> list[ConfigIssue]:
    """A bare ``true``/``false`` as a matcher value would silently compare as 1/0: refuse it."""
    issues: list[ConfigIssue] = []
    rules = document.get("rules")
    if not isinstance(rules, list):
        return issues
    hint = "a matcher value must be text or a number; quote it ('true') or use {exists: true}"
    for index, rule in enumerate(rules):
        when = rule.get("when") if isinstance(rule, Mapping) else None
        if not isinstance(when, Mapping):
            continue
        for attribute, matcher in when.items():
            base: KeyPath = ("rules", index, "when", str(attribute))
            if isinstance(matcher, bool):
                issues.append(locator.issue(base, hint, at_key=False))
            elif isinstance(matcher, Mapping):
                regex = matcher.get("regex")
                if isinstance(regex, str) and any(ord(char) < 0x20 for char in regex):
                    issues.append(
                        locator.issue(
                            (*base, "regex"),
                            "the pattern contains a control character: inside double quotes "
                            "YAML reads \\b, \\t... as escapes; write the pattern in single "
                            "quotes ('\\bCT\\b') or double the backslashes",
                            at_key=False,
                        )
                    )
                if isinstance(matcher.get("equals"), bool):
                    issues.append(locator.issue((*base, "equals"), hint, at_key=False))
                values = matcher.get("in")
                if isinstance(values, list):
                    for position, value in enumerate(values):
                        if isinstance(value, bool):
                            issues.append(
                                locator.issue((*base, "in", position), hint, at_key=False)
                            )
    return issues


# --------------------------------------------------------------------------------------------
# Pydantic errors -> issues


@dataclass
class _Pending:
    """One pydantic error while its location is being resolved against the YAML."""

    loc: KeyPath
    error: ErrorDetails


def _issues_from_validation(
    exc: ValidationError, document: CommentedMap, locator: SourceMap
) -> list[ConfigIssue]:
    pending = [_Pending(tuple(error["loc"]), error) for error in exc.errors()]
    issues: list[ConfigIssue] = []
    if any(not item.loc and item.error["type"] == "value_error" for item in pending):
        # RouterConfig's own checks run only once everything else is valid; find the exact
        # rule or send_to item they are about.
        located = _cross_reference_issues(document, locator)
        if located:
            issues.extend(located)
            pending = [item for item in pending if item.loc]
    issues.extend(_resolve(pending, locator))
    return _dedupe(issues)


def _resolve(pending: list[_Pending], locator: SourceMap) -> list[ConfigIssue]:
    """Turn errors into issues, collapsing the one-error-per-union-member noise pydantic
    produces (``str``, ``float``, ``MatchOperator``) into one message per value."""
    issues: list[ConfigIssue] = []
    groups: dict[KeyPath, list[tuple[_Pending, str, KeyPath]]] = {}
    for item in pending:
        prefix, tag, rest = _split_at_tag(item.loc, locator)
        if tag is None:
            issues.append(_issue_for(item, locator))
        else:
            groups.setdefault(prefix, []).append((item, tag, rest))
    for prefix, members in groups.items():
        _, node, _, _ = locator.walk(prefix)
        model_members = [m for m in members if _tag_noun(m[1]) == "a mapping"]
        if isinstance(node, Mapping) and model_members:
            deeper = [_Pending((*prefix, *rest), item.error) for item, _, rest in model_members]
            issues.extend(_resolve(deeper, locator))
            continue
        nouns: list[str] = []
        for _, tag, _ in members:
            noun = _tag_noun(tag)
            if noun not in nouns:
                nouns.append(noun)
        if _is_matcher_path(prefix):
            message = (
                "a matcher is a single value (meaning equals) or a mapping of operators "
                f"(equals, in, regex, min, max, exists); got {_kind(node)}"
            )
            if isinstance(node, list):
                message += "; to accept any of several values write {in: [A, B]}"
            elif node is None:
                message += "; to require the attribute be absent write {exists: false}"
        else:
            message = f"expected {_join_or(nouns)}; got {_kind(node)}"
        issues.append(locator.issue(prefix, message, at_key=False))
    return issues


def _split_at_tag(loc: KeyPath, locator: SourceMap) -> tuple[KeyPath, str | None, KeyPath]:
    """Split a pydantic ``loc`` at the first element that is a union-member tag (present in
    the loc but not in the YAML), e.g. ``('rules', 0, 'when', 'X', 'str')``."""
    for index, part in enumerate(loc):
        if isinstance(part, str) and part != "[key]" and _looks_like_tag(part):
            prefix = loc[:index]
            found, node, _, _ = locator.walk(prefix)
            if found == prefix and not (isinstance(node, Mapping) and part in node):
                return prefix, part, loc[index + 1 :]
    return loc, None, ()


_PRIMITIVE_TAGS = {"str", "float", "int", "bool", "none"}


def _looks_like_tag(part: str) -> bool:
    return (
        part in _PRIMITIVE_TAGS
        or "[" in part
        or part.startswith(("function-", "constrained-", "lax-or-strict", "json-or-python"))
        or (part[:1].isupper() and part in _MODEL_NAMES)
    )


def _tag_noun(tag: str) -> str:
    if tag == "str":
        return "text"
    if tag == "float":
        return "a number"
    if tag == "int":
        return "a whole number"
    if tag == "bool":
        return "true or false"
    if tag.startswith("list["):
        return "a list"
    return "a mapping"


def _join_or(nouns: list[str]) -> str:
    if len(nouns) <= 1:
        return nouns[0] if nouns else "a different value"
    return ", ".join(nouns[:-1]) + " or " + nouns[-1]


def _is_matcher_path(path: KeyPath) -> bool:
    return len(path) == 4 and path[0] == "rules" and path[2] == "when"


def _issue_for(item: _Pending, locator: SourceMap) -> ConfigIssue:
    error = item.error
    kind = error["type"]
    loc = item.loc
    on_key = bool(loc) and loc[-1] == "[key]"
    if on_key:
        loc = loc[:-1]
    found, node, _, _ = locator.walk(loc)
    message = _message(error, loc, loc[-1] if on_key and loc else node)

    if kind == "missing" and found != loc:
        # Point at the mapping that lacks the key; the key path names the missing key.
        issue = locator.issue(found, message, at_key=True)
        return ConfigIssue(issue.file, issue.line, issue.column, format_key(loc), issue.message)
    if kind == "value_error" and isinstance(node, Mapping) and found == loc:
        # A model-level check: point at the first key its message mentions, if any.
        if any(value is None for value in node.values()):
            message += " (a key set to null counts as not given)"
        mentioned: list[tuple[int, str]] = []
        for key in node:
            if isinstance(key, str) and node[key] is not None:
                match = re.search(rf"\b{re.escape(key)}\b", message)
                if match:
                    mentioned.append((match.start(), key))
        if mentioned:
            return locator.issue((*loc, min(mentioned)[1]), message, at_key=True)
    at_key = on_key or kind == "extra_forbidden"
    return locator.issue(loc if found == loc else found, message, at_key=at_key)


def _message(error: ErrorDetails, loc: KeyPath, node: object) -> str:
    kind = error["type"]
    text = error["msg"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"missing required key {loc[-1]!r}" if loc else "missing required key"
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key {name!r}{_did_you_mean(name, allowed)}"
        if allowed:
            message += f"; allowed here: {', '.join(allowed)}"
        return message
    if kind == "value_error":
        return re.sub(r"^Value error, ", "", text)
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        if pattern == AE_TITLE_PATTERN:
            return (
                f"{_kind(node)} is not a valid AE title: 1 to 16 characters, "
                "no backslash or control characters"
            )
        if pattern == ATTRIBUTE_PATTERN:
            return (
                f"{str(node)!r} is not an attribute name: use a DICOM keyword such as "
                "Modality or SeriesDescription (capitalised, no spaces), or CallingAE/CalledAE"
            )
    if kind == "enum":
        expected = str(ctx.get("expected", "")).replace("'", "")
        return f"must be one of: {expected.replace(' or ', ', ')}; got {_kind(node)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping of keys; got {_kind(node)}"
    if kind == "path_type":
        return f"expected a path written as text; got {_kind(node)}"
    if kind == "list_type":
        return f"expected a list such as [A, B]; got {_kind(node)}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', '?')}; got {_kind(node)}"
    if node is not None and not isinstance(node, Mapping | list):
        return f"{text}; got {_kind(node)}"
    if isinstance(node, Mapping | list) and kind.endswith("_type"):
        return f"{text}; got {_kind(node)}"
    return text


def _cross_reference_issues(document: object, locator: SourceMap) -> list[ConfigIssue]:
    """Precise positions for RouterConfig's own checks (duplicate rule names, send_to naming
    an unknown destination), which pydantic can only report for the whole file."""
    issues: list[ConfigIssue] = []
    if not isinstance(document, Mapping):
        return issues
    destinations = document.get("destinations")
    known = sorted(str(k) for k in destinations) if isinstance(destinations, Mapping) else []
    rules = document.get("rules")
    owners: list[tuple[KeyPath, object]] = []
    if isinstance(rules, list):
        seen: dict[str, int] = {}
        for index, rule in enumerate(rules):
            if not isinstance(rule, Mapping):
                continue
            owners.append((("rules", index), rule))
            name = rule.get("name")
            if isinstance(name, str):
                if name in seen:
                    first_line, _ = locator.position(("rules", seen[name], "name"))
                    issues.append(
                        locator.issue(
                            ("rules", index, "name"),
                            f"rule name {name!r} is used twice (first on line {first_line})",
                            at_key=False,
                        )
                    )
                else:
                    seen[name] = index
    fallback = document.get("fallback")
    if isinstance(fallback, Mapping):
        owners.append((("fallback",), fallback))
    for path, owner in owners:
        if not isinstance(owner, Mapping):
            continue
        send_to = owner.get("send_to")
        if not isinstance(send_to, list):
            continue
        for position, destination in enumerate(send_to):
            if str(destination) not in known:
                issues.append(
                    locator.issue(
                        (*path, "send_to", position),
                        f"unknown destination {str(destination)!r}"
                        f"{_did_you_mean(str(destination), known)}; "
                        f"defined under destinations: {', '.join(known) or 'none'}",
                        at_key=False,
                    )
                )
    return issues


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[ConfigIssue] = set()
    unique: list[ConfigIssue] = []
    for issue in issues:
        if issue not in seen:
            seen.add(issue)
            unique.append(issue)
    return sorted(unique, key=lambda i: (i.line or 0, i.column or 0))


# --------------------------------------------------------------------------------------------
# The schema's shape, for "allowed keys here" hints


def _collect_model_names(model: type[BaseModel], names: set[str]) -> None:
    if model.__name__ in names:
        return
    names.add(model.__name__)
    for field in model.model_fields.values():
        for inner in _models_in(field.annotation):
            _collect_model_names(inner, names)


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _model_at(path: KeyPath) -> type[BaseModel] | None:
    """The schema model that the mapping at ``path`` is validated against, if unambiguous."""
    annotation: Any = RouterConfig
    for part in path:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = None
            for name, info in annotation.model_fields.items():
                if part in (name, info.alias):
                    field = info
                    break
            if field is None:
                return None
            annotation = field.annotation
            continue
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is list and args:
            annotation = args[0]
        elif origin is dict and len(args) == 2:
            annotation = args[1]
        else:
            return None
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None``; a union holding exactly one model gives the model."""
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
        return annotation


def _allowed_keys(path: KeyPath) -> list[str]:
    model = _model_at(path)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


_MODEL_NAMES: set[str] = set()
_collect_model_names(RouterConfig, _MODEL_NAMES)
