"""A change of the routing YAML for the audit trail: its diff with secrets redacted, and who
most likely made it (the file's owner).

Redaction is by key name: the value of any key that names a secret (``password``,
``passphrase``, ``secret``, ``token``, ``api_key``, ``private_key``, ``credential``), inline or
as an indented block under it, is replaced by ``<redacted>`` in both texts before they are
compared, so a changed secret shows as a changed line without its value. Keys ending in
``_env`` name an environment variable, not a secret, and stay. ``${VAR}`` references are
compared as written (radrouter substitutes them only when it loads the file).
"""

from __future__ import annotations

import difflib
import pwd
import re
from pathlib import Path

REDACTED = "<redacted>"
_SECRET_WORDS = r"(?:password|passphrase|secret|token|api_?key|private_?key|credentials?)"
_SECRET_PAIR = re.compile(
    rf"(?P<key>[A-Za-z0-9_.-]*{_SECRET_WORDS}[A-Za-z0-9_.-]*)(?P<sep>[ \t]*:[ \t]*)"
    r"(?P<value>[^,}\]\n#]*)",
    re.IGNORECASE,
)
_BLOCK = re.compile(r"^\s*[|>][+-]?\d*\s*$")


def _is_secret(key: str) -> bool:
    return not key.lower().endswith("_env")


def redact(text: str) -> str:
    """``text`` with the value of every secret-named key replaced."""
    lines = text.splitlines()
    out: list[str] = []
    block_indent: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None:
            if line.strip() and indent <= block_indent:
                block_indent = None
            else:
                out.append(f"{' ' * indent}{REDACTED}" if line.strip() else line)
                continue
        opens_block = False

        def replace(match: re.Match[str]) -> str:
            nonlocal opens_block
            value = match.group("value")
            if not _is_secret(match.group("key")):
                return match.group(0)
            if not value.strip() or _BLOCK.match(value):
                opens_block = True
                return match.group(0)
            trailing = value[len(value.rstrip()) :]
            return f"{match.group('key')}{match.group('sep')}{REDACTED}{trailing}"

        out.append(_SECRET_PAIR.sub(replace, line))
        if opens_block:
            block_indent = indent
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def config_diff(old: str, new: str, path: Path) -> str:
    """A unified diff of the two texts, secrets redacted; empty when they are the same."""
    return "".join(
        difflib.unified_diff(
            redact(old).splitlines(keepends=True),
            redact(new).splitlines(keepends=True),
            fromfile=f"{path.name} (before)",
            tofile=f"{path.name} (after)",
        )
    )


def file_owner(path: Path) -> str:
    """The user owning ``path``: the best evidence radrouter has of who edited it."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
