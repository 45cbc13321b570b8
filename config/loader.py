"""Load the routing YAML into a RouterConfig: the schema, plus the checks that span keys
(rules naming destinations and algorithms) and those that look outside the file (the TLS
certificate files named); every problem names its file, line, column and key."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from config.schema import (
    AE_TITLE_PATTERN,
    ATTRIBUTE_PATTERN,
    SHA256_FINGERPRINT_PATTERN,
    RouterConfig,
    http_is_loopback,
    http_is_secure,
)
from config.yaml_document import (
    ConfigError,
    ConfigIssue,
    KeyPath,
    YamlDocument,
    format_key,
    parse_yaml,
    read_yaml,
    reference_issue,
    validate,
)

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "ConfigError",
    "ConfigIssue",
    "LoadedConfig",
    "check_algorithms",
    "default_config_path",
    "default_config_text",
    "format_key",
    "load_config",
    "load_default_config",
    "parse_config",
    "read_config",
    "read_default_config",
    "validate_config",
]

DEFAULT_CONFIG_NAME = "default.yaml"
"""File name of the shipped default configuration inside the ``config`` package."""

PATTERNS = {
    AE_TITLE_PATTERN: "a valid AE title: 1 to 16 characters, no backslash or control characters",
    ATTRIBUTE_PATTERN: "an attribute name: use a DICOM keyword such as Modality or "
    "SeriesDescription (capitalised, no spaces), or CallingAE/CalledAE",
    SHA256_FINGERPRINT_PATTERN: "a SHA-256 fingerprint: 64 hex digits, colons between pairs "
    "allowed",
}
"""What the schema's patterns mean, for messages."""

MATCHER = (
    "a matcher is a single value (meaning equals) or a mapping of operators "
    "(equals, in, regex, min, max, exists)"
)


@dataclass(frozen=True)
class LoadedConfig:
    """A valid configuration and the YAML it was read from, so that later checks (e.g. unknown
    algorithms) can name the line they are about."""

    config: RouterConfig
    document: YamlDocument


# --------------------------------------------------------------------------------------------
# Public entry points


def validate_config(document: YamlDocument) -> LoadedConfig:
    """Validate a read YAML document; raise :class:`ConfigError` listing every problem: the
    schema's and those spanning keys, found together."""
    config = validate(document, RouterConfig, found=_document_issues(document), patterns=PATTERNS)
    return LoadedConfig(config, document)


def read_config(path: Path) -> LoadedConfig:
    """Read and validate the configuration file at ``path``."""
    return validate_config(read_yaml(Path(path)))


def load_config(path: Path) -> RouterConfig:
    """Read and validate the configuration file at ``path``."""
    return read_config(path).config


def parse_config(text: str, source: str = "<string>") -> RouterConfig:
    """Parse and validate YAML ``text``; raise :class:`ConfigError` listing every problem."""
    return validate_config(parse_yaml(text, source)).config


def default_config_text() -> str:
    """The shipped default configuration, comments included (``radrouter`` prints it)."""
    return resources.files("config").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")


def default_config_path() -> str:
    """Where the shipped default lives, for messages (may be inside a wheel)."""
    return str(resources.files("config").joinpath(DEFAULT_CONFIG_NAME))


def read_default_config() -> LoadedConfig:
    """The shipped default configuration, validated."""
    return validate_config(parse_yaml(default_config_text(), default_config_path()))


def load_default_config() -> RouterConfig:
    """The shipped default configuration, validated."""
    return read_default_config().config


def check_algorithms(document: YamlDocument, known: Collection[str]) -> list[ConfigIssue]:
    """Report each ``run:`` (rules and fallback) and each ``algorithms:`` entry that names an
    algorithm not in ``known`` (the names the plugin registry offers, and the file's own
    ``external_algorithms``, which may not take an installed name). When ``known`` maps
    each name to its parameter names, also each ``algorithms.<name>.parameters`` key the
    algorithm does not take. Reads the plain data, so it works on a file that failed
    validation too."""
    data = _mapping(document.data)
    issues: list[ConfigIssue] = []
    external = [n for n in _mapping(data.get("external_algorithms")) if isinstance(n, str)]
    for declared in external:
        if declared in known:
            issues.append(
                document.issue(
                    ("external_algorithms", declared),
                    f"external algorithm {declared!r} has the name of an installed algorithm",
                    at_key=True,
                )
            )
    if isinstance(known, Mapping):  # an external algorithm takes no parameters
        known = {**known, **{declared: frozenset[str]() for declared in external}}
    else:
        known = {*known, *external}

    def check(path: KeyPath, name: str, problem: str, at_key: bool = False) -> None:
        issue = reference_issue(
            document, path, name, known, problem=problem, listed_as="installed", at_key=at_key
        )
        if issue is not None:
            issues.append(issue)

    for index, rule in enumerate(_list(data.get("rules"))):
        run = _mapping(rule).get("run")
        if isinstance(run, str):
            disabled = " (the rule is disabled)" if _mapping(rule).get("enabled") is False else ""
            check(("rules", index, "run"), run, f"algorithm {run!r} is not installed{disabled}")
    run = _mapping(data.get("fallback")).get("run")
    if isinstance(run, str):
        check(("fallback", "run"), run, f"algorithm {run!r} is not installed")
    for name in _mapping(data.get("algorithms")):
        if isinstance(name, str):
            problem = f"settings for {name!r}, an algorithm that is not installed"
            check(("algorithms", name), name, problem, at_key=True)
    if isinstance(known, Mapping):
        for name, settings in _mapping(data.get("algorithms")).items():
            if not isinstance(name, str) or name not in known:
                continue
            taken = set(known[name])
            for key in _mapping(_mapping(settings).get("parameters")):
                if isinstance(key, str) and key not in taken:
                    problem = f"{name} takes no parameter {key!r}"
                    issue = reference_issue(
                        document,
                        ("algorithms", name, "parameters", key),
                        key,
                        taken,
                        problem=problem,
                        listed_as="its parameters",
                        at_key=True,
                    )
                    if issue is not None:
                        issues.append(issue)
    return issues


def check_exposure(loaded: LoadedConfig) -> list[ConfigIssue]:
    """What listens beyond loopback unprotected, unless the file says ``insecure: true``: the
    HTTP API without both TLS and authentication, a DICOM listener that accepts any caller
    (no ``allowed_callers``, and for the TLS listener no client certificates either)."""
    config, document = loaded.config, loaded.document
    if config.insecure:
        return []
    issues: list[ConfigIssue] = []
    hint = "; or mark the file `insecure: true` for a closed test network"
    if not http_is_loopback(config.http) and not http_is_secure(config):
        issues.append(
            document.issue(
                ("http", "host"),
                f"the HTTP API listens on {config.http.host} without TLS and authentication: "
                f"set http.tls and http.auth (docs/security.md){hint}",
                at_key=False,
            )
        )
    node = config.node
    open_to_all = node.allowed_callers is None
    if node.port is not None and open_to_all and not _is_loopback(node.bind):
        issues.append(
            document.issue(
                ("node", "bind"),
                f"the DICOM node listens on {node.bind} and accepts any caller: list the "
                f"senders in node.allowed_callers{hint}",
                at_key=False,
            )
        )
    tls = node.tls
    if tls is not None and open_to_all and tls.client_ca_file is None:
        bind = tls.bind or node.bind
        if not _is_loopback(bind):
            issues.append(
                document.issue(
                    ("node", "tls"),
                    f"the DICOM TLS listener on {bind} accepts any caller: require client "
                    f"certificates (node.tls.client_ca_file) or list node.allowed_callers{hint}",
                )
            )
    return issues


def _is_loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Checks of the plain data, run whether or not the schema accepts the rest


def _document_issues(document: YamlDocument) -> list[ConfigIssue]:
    return _matcher_issues(document) + _reference_issues(document) + _tls_issues(document)


def _matcher_issues(document: YamlDocument) -> list[ConfigIssue]:
    """Matcher mistakes the schema would accept silently (``true`` compares as 1) or explain
    poorly (a list where ``{in: [...]}`` was meant)."""
    issues: list[ConfigIssue] = []
    flag = "a matcher value must be text or a number; quote it ('true') or use {exists: true}"
    for path, matcher in _matchers(document.data):
        if isinstance(matcher, bool):
            issues.append(document.issue(path, flag, at_key=False))
        elif isinstance(matcher, list):
            hint = "to accept any of several values write {in: [A, B]}"
            issues.append(document.issue(path, f"{MATCHER}; got a list; {hint}", at_key=False))
        elif matcher is None:
            hint = "to require the attribute be absent write {exists: false}"
            issues.append(document.issue(path, f"{MATCHER}; got null; {hint}", at_key=False))
        elif isinstance(matcher, Mapping):
            regex = matcher.get("regex")
            if isinstance(regex, str) and any(ord(char) < 0x20 for char in regex):
                issues.append(
                    document.issue(
                        (*path, "regex"),
                        "the pattern contains a control character: inside double quotes "
                        "YAML reads \\b, \\t... as escapes; write the pattern in single "
                        "quotes ('\\bCT\\b') or double the backslashes",
                        at_key=False,
                    )
                )
            if isinstance(matcher.get("equals"), bool):
                issues.append(document.issue((*path, "equals"), flag, at_key=False))
            for position, value in enumerate(_list(matcher.get("in"))):
                if isinstance(value, bool):
                    issues.append(document.issue((*path, "in", position), flag, at_key=False))
    return issues


def _matchers(data: object) -> Iterator[tuple[KeyPath, object]]:
    """Every matcher: ``rules[].when`` and ``algorithms.*.priors.series_selector``."""
    root = _mapping(data)
    for index, rule in enumerate(_list(root.get("rules"))):
        for attribute, matcher in _mapping(_mapping(rule).get("when")).items():
            yield ("rules", index, "when", str(attribute)), matcher
    for name, settings in _mapping(root.get("algorithms")).items():
        selector = _mapping(_mapping(_mapping(settings).get("priors")).get("series_selector"))
        for attribute, matcher in selector.items():
            path = ("algorithms", str(name), "priors", "series_selector", str(attribute))
            yield path, matcher


def _reference_issues(document: YamlDocument) -> list[ConfigIssue]:
    """Rule names used twice, and ``send_to`` naming a destination not defined, each at the
    item it is about (RouterConfig's own check can only name the whole file)."""
    root = _mapping(document.data)
    issues: list[ConfigIssue] = []
    owners: list[tuple[KeyPath, Mapping[object, object]]] = []
    first: dict[str, int] = {}
    for index, rule in enumerate(_list(root.get("rules"))):
        owners.append((("rules", index), _mapping(rule)))
        name = _mapping(rule).get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            first_line, _ = document.position(("rules", first[name], "name"))
            message = f"rule name {name!r} is used twice (first on line {first_line})"
            issues.append(document.issue(("rules", index, "name"), message, at_key=False))
        else:
            first[name] = index
    owners.append((("fallback",), _mapping(root.get("fallback"))))
    destinations = root.get("destinations", {})
    if not isinstance(destinations, Mapping):  # the schema reports that
        return issues
    known = [str(name) for name in destinations]
    for path, owner in owners:
        for position, destination in enumerate(_list(owner.get("send_to"))):
            if not isinstance(destination, str):
                continue
            issue = reference_issue(
                document,
                (*path, "send_to", position),
                destination,
                known,
                problem=f"unknown destination {destination!r}",
                listed_as="defined under destinations",
            )
            if issue is not None:
                issues.append(issue)
    return issues


TLS_FILE_KEYS = ("cert_file", "key_file", "key_password_file", "ca_file", "client_ca_file")
"""The keys of a ``tls`` section (``node.tls``, ``destinations.*.tls``,
``algorithms.*.priors.sources[].tls``) that name files."""


def _tls_sections(data: object) -> Iterator[tuple[KeyPath, Mapping[object, object]]]:
    root = _mapping(data)
    node_tls = _mapping(root.get("node")).get("tls")
    if isinstance(node_tls, Mapping):
        yield ("node", "tls"), node_tls
    for name, destination in _mapping(root.get("destinations")).items():
        tls = _mapping(destination).get("tls")
        if isinstance(tls, Mapping):
            yield ("destinations", str(name), "tls"), tls
    for name, settings in _mapping(root.get("algorithms")).items():
        sources = _mapping(_mapping(settings).get("priors")).get("sources")
        for index, source in enumerate(_list(sources)):
            tls = _mapping(source).get("tls")
            if isinstance(tls, Mapping):
                yield ("algorithms", str(name), "priors", "sources", index, "tls"), tls


def _tls_issues(document: YamlDocument) -> list[ConfigIssue]:
    """Certificate, key, CA and passphrase files that the router could not read when it
    starts (or, for a destination, when it sends), and passphrase variables not set. Relative
    paths are taken from the working directory, as the router takes them."""
    issues: list[ConfigIssue] = []
    for path, section in _tls_sections(document.data):
        for key in TLS_FILE_KEYS:
            value = section.get(key)
            if not isinstance(value, str) or not value:
                continue  # absent, or the schema reports it
            problem = _unreadable_file(Path(value))
            if problem is not None:
                issues.append(document.issue((*path, key), problem, at_key=False))
        variable = section.get("key_password_env")
        if isinstance(variable, str) and variable and not os.environ.get(variable):
            issues.append(
                document.issue(
                    (*path, "key_password_env"),
                    f"environment variable {variable} (the key's passphrase) is not set",
                    at_key=False,
                )
            )
    return issues


def _unreadable_file(path: Path) -> str | None:
    if not path.exists():
        return f"no such file: {str(path)!r}"
    if not path.is_file():
        return f"{str(path)!r} is not a file"
    if not os.access(path, os.R_OK):
        return f"{str(path)!r} cannot be read (permissions)"
    return None


def _mapping(value: object) -> Mapping[object, object]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []
