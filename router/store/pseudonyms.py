"""Keyed pseudonyms of patient identifiers: what the database stores instead of a PatientID.

A plain hash of a medical record number is not a pseudonym: anyone can hash every MRN of a
hospital and read the table back. Keys here are HMAC-SHA-256 under a site secret that never
enters the database, the YAML or a log. The secret comes from, in order:

1. ``RADROUTER_SITE_SECRET`` (the secret itself, at least 32 characters), or
2. ``RADROUTER_SITE_SECRET_FILE`` (a file holding it; several hosts of one site share it), or
3. ``<data dir>/site-secret``, made with 32 random bytes (mode 0600) on first start.

Changing the secret orphans every stored key: the prior index is then rebuilt (it is derived
data), nothing else depends on it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

SECRET_ENV = "RADROUTER_SITE_SECRET"
SECRET_FILE_ENV = "RADROUTER_SITE_SECRET_FILE"
SECRET_FILE_NAME = "site-secret"
MIN_SECRET_CHARS = 32


class SiteSecretError(RuntimeError):
    """The configured site secret is missing, unreadable or too short."""


class PatientKeys:
    """``key(patient_id)``: the keyed pseudonym of a PatientID (64 hex characters)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_CHARS:
            raise SiteSecretError(f"the site secret must be at least {MIN_SECRET_CHARS} bytes")
        self._secret = secret

    @classmethod
    def for_site(cls, data_dir: Path, environ: Mapping[str, str] = os.environ) -> PatientKeys:
        """The site's keys, from the environment or the data folder (see the module doc)."""
        return cls(site_secret(data_dir, environ))

    def key(self, patient_id: str) -> str:
        message = b"patient:" + patient_id.strip().encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def site_secret(data_dir: Path, environ: Mapping[str, str] = os.environ) -> bytes:
    """The site secret, from the environment or the data folder (see the module doc); also
    the root of the keys of de-identification (``router.deidentify.keys``)."""
    value = environ.get(SECRET_ENV, "")
    if value:
        return value.encode()
    path_text = environ.get(SECRET_FILE_ENV, "")
    if path_text:
        try:
            return Path(path_text).read_bytes().strip()
        except OSError as exc:
            raise SiteSecretError(
                f"{SECRET_FILE_ENV} names a file that cannot be read: {exc.strerror}"
            ) from exc
    return _data_dir_secret(data_dir / SECRET_FILE_NAME)


def _data_dir_secret(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    # Written whole to a private temporary file, then linked into place: a process starting
    # at the same time either links first or reads the complete file of the one that did.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secret + b"\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes().strip()
    finally:
        temporary.unlink(missing_ok=True)
    return secret
