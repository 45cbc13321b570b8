"""Secrets the config names but never holds (a TLS key's passphrase, an OIDC client secret):
read from an environment variable or the first line of a file, the one reader for all."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

LOGGER = logging.getLogger(__name__)


class SecretError(Exception):
    """A secret the config points at is not there."""


def read_secret(
    env: str | None, file: Path | None, what: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """The value of environment variable ``env`` (in ``environ``, default ``os.environ``), or
    the first line of ``file``; None when the config names neither. A named source that is
    missing or empty is an error; the message names the source, never the secret."""
    if env is not None:
        value = (os.environ if environ is None else environ).get(env, "")
        if not value:
            raise SecretError(f"{what}: environment variable {env} is not set")
        return value
    if file is None:
        return None
    try:
        mode = file.stat().st_mode
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SecretError(f"{what}: cannot read {file}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        LOGGER.warning("%s: %s can be read by others than its owner (chmod 600 it)", what, file)
    if not lines or not lines[0]:
        raise SecretError(f"{what}: {file} is empty")
    return lines[0]
