"""The spool: received instances as Part-10 files, written atomically and durably."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

_UID_CHARS = frozenset("0123456789.")


class SpoolFullError(OSError):
    """Free space is below the configured minimum; the instance was not written."""


@dataclass(frozen=True)
class SpooledFile:
    path: Path
    size: int
    sha256: str


def _safe_uid(uid: str) -> str:
    """UIDs become path components; anything but digits and dots is refused."""
    if not uid or len(uid) > 64 or not set(uid) <= _UID_CHARS:
        raise ValueError(f"not a valid UID for a spool path: {uid!r}")
    return uid


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Files live at ``root/STUDY/SERIES/SOP.dcm``; partial writes live in ``root/.incoming``.

    A file is visible under its final name only after its bytes and its directory entry are
    on disk (write, fsync, rename, fsync directory), so a crash never leaves a half file that
    looks complete, and every file the index names survives ``kill -9`` and power loss.
    """

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self._incoming = root / ".incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        return (
            self.root
            / _safe_uid(study_uid)
            / _safe_uid(series_uid)
            / f"{_safe_uid(sop_instance_uid)}.dcm"
        )

    def check_free_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free - needed < self.min_free_bytes:
            raise SpoolFullError(
                f"spool has {free // 2**20} MiB free, below the minimum of "
                f"{self.min_free_bytes // 2**20} MiB"
            )

    def write(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, data: bytes
    ) -> SpooledFile:
        """Write ``data`` durably under its final name and return where it is."""
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        self.check_free_space(len(data))
        directory = final.parent
        if directory not in self._known_dirs:
            created = not directory.exists()
            directory.mkdir(parents=True, exist_ok=True)
            if created:
                _fsync_directory(directory.parent)
                _fsync_directory(directory.parent.parent)
            self._known_dirs.add(directory)
        partial = self._incoming / f"{uuid.uuid4().hex}.part"
        try:
            with open(partial, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _fsync_directory(directory)
        return SpooledFile(final, len(data), hashlib.sha256(data).hexdigest())

    def clean_incoming(self) -> int:
        """Remove partial writes left by a crash (never acknowledged, so nothing is lost)."""
        removed = 0
        for partial in self._incoming.glob("*.part"):
            partial.unlink(missing_ok=True)
            removed += 1
        return removed

    def iter_files(self) -> list[Path]:
        return sorted(self.root.glob("*/*/*.dcm"))
