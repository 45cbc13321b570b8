"""API keys for machines (a RIS bridge, a monitoring system): made once, stored only hashed.

A key reads ``rrk_<id>_<secret>``: the id finds its entry without trying every hash, and
the secret is 256 random bits, so a salted SHA-256 of it is as safe to store as a slow
password hash (no one can guess 2**256 secrets) and costs microseconds per request instead
of the tens of milliseconds a password hash would add to every call. The file holds ids,
names, roles, salts and hashes, never a key; it is re-read when it changes, so a key made
or revoked with ``radrouter api-key`` counts at once, without a restart.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.schema import ApiRole

LOGGER = logging.getLogger(__name__)

KEY_PREFIX = "rrk_"
_KEY = re.compile(r"^rrk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FILE_VERSION = 1


class ApiKeyFileError(Exception):
    """The keys file cannot be read or written as it is."""


@dataclass(frozen=True)
class ApiKeyEntry:
    """One key as stored: everything but the key itself."""

    id: str
    name: str
    role: ApiRole
    salt: str
    sha256: str
    created_at: str

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(
                f"API key name {self.name!r}: 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(_digest(self.salt, secret), self.sha256)

    def as_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "salt": self.salt,
            "sha256": self.sha256,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, item: Any) -> ApiKeyEntry:
        if not isinstance(item, dict):
            raise ValueError("an entry is not an object")
        return cls(
            id=str(item["id"]),
            name=str(item["name"]),
            role=ApiRole(item["role"]),
            salt=str(item["salt"]),
            sha256=str(item["sha256"]),
            created_at=str(item.get("created_at", "")),
        )


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode("ascii")).hexdigest()


def read_keys(path: Path) -> list[ApiKeyEntry]:
    """The entries of a keys file; a missing file has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ApiKeyFileError(f"{path}: {exc}") from exc
    try:
        document = json.loads(text)
        if document.get("version") != FILE_VERSION:
            raise ValueError(f"version {document.get('version')!r}, expected {FILE_VERSION}")
        return [ApiKeyEntry.from_json(item) for item in document["keys"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ApiKeyFileError(f"{path} is not a radrouter API keys file: {exc}") from exc


def write_keys(path: Path, entries: list[ApiKeyEntry]) -> None:
    """Replace the file in one step (a reader sees the old or the new one), readable by the
    owner only."""
    document = {"version": FILE_VERSION, "keys": [entry.as_json() for entry in entries]}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".api-keys-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)
            json.dump(document, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def create_key(path: Path, *, name: str, role: ApiRole) -> tuple[str, ApiKeyEntry]:
    """Make a key, store its hash in ``path``; returns the key (shown once) and its entry."""
    entries = read_keys(path)
    if any(entry.name == name for entry in entries):
        raise ApiKeyFileError(f"{path} already has a key named {name!r}; revoke it first")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    entry = ApiKeyEntry(
        id=key_id,
        name=name,
        role=role,
        salt=salt,
        sha256=_digest(salt, secret),
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    write_keys(path, [*entries, entry])
    return f"{KEY_PREFIX}{key_id}_{secret}", entry


def revoke_key(path: Path, name_or_id: str) -> ApiKeyEntry | None:
    """Remove the key with that name or id; returns it, or None when there is none."""
    entries = read_keys(path)
    gone = next((e for e in entries if name_or_id in (e.name, e.id)), None)
    if gone is not None:
        write_keys(path, [e for e in entries if e is not gone])
    return gone


def looks_like_api_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIX)


class ApiKeyStore:
    """The keys of one file, re-read when the file changes. A file that cannot be read
    accepts no key at all (and says why in the log), rather than the ones it held before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_id: dict[str, ApiKeyEntry] = {}

    def check(self, key: str) -> ApiKeyEntry | None:
        """The entry of a valid key, else None."""
        match = _KEY.match(key)
        if match is None:
            return None
        entry = self._entries().get(match.group(1))
        return entry if entry is not None and entry.matches(match.group(2)) else None

    def _entries(self) -> dict[str, ApiKeyEntry]:
        with self._lock:
            try:
                status = self.path.stat()
                stamp: tuple[int, int, int] | None = (
                    status.st_ino,
                    status.st_mtime_ns,
                    status.st_size,
                )
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._by_id = {entry.id: entry for entry in read_keys(self.path)}
                except ApiKeyFileError as exc:
                    LOGGER.error("no API key is accepted: %s", exc)
                    self._by_id = {}
            return self._by_id
