"""The spool: received instances as Part-10 files, written atomically and durably."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dicom_sr.uids import is_valid_uid
from router.receive.private_files import (
    PRIVATE_DIR_MODE,
    create_private_file,
    make_private_dir,
)


class SpoolFullError(OSError):
    """Free space is below the configured minimum; the instance was not written."""


class InvalidUidError(ValueError):
    """A UID that was to become part of a spool path is not a DICOM UID."""


@dataclass(frozen=True)
class SpooledFile:
    path: Path
    size: int
    sha256: str


def _path_component(uid: str, what: str) -> str:
    """UIDs become path components: only a DICOM UID (PS3.5 9.1) may, so ``..``, an empty
    component or anything but digits and single dots never reaches the file system."""
    if not is_valid_uid(uid):
        raise InvalidUidError(f"{what} is not a DICOM UID")
    return uid


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SYNC_THREADS = 8
"""Threads that fsync received files in the background (:meth:`Spool.sync_soon`): one fsync
in flight per association that is sending, the disk's queue kept busy by several."""
_sync_pool: ThreadPoolExecutor | None = None
_sync_pool_lock = threading.Lock()


def _sync_executor() -> ThreadPoolExecutor:
    global _sync_pool
    with _sync_pool_lock:
        if _sync_pool is None:
            _sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="spool-fsync")
        return _sync_pool


class Spool:
    """Files live at ``root/STUDY/SERIES/SOP.dcm``; partial writes live in ``root/.incoming``.

    A file is visible under its final name only after its bytes and its directory entry are
    on disk (write, fsync, rename, fsync directory), so a crash never leaves a half file that
    looks complete, and every file the index names survives ``kill -9`` and power loss. Files
    are 0600 and folders 0700: they hold patient data.
    """

    def __init__(
        self, root: Path, min_free_bytes: int = 0, incoming_name: str = ".incoming"
    ) -> None:
        """``incoming_name``: the folder for instances still arriving, one per process that
        receives (each cleans its own after a crash, never another's files in flight)."""
        self.root = root
        self.min_free_bytes = min_free_bytes
        self._incoming = root / incoming_name
        make_private_dir(root)
        make_private_dir(self._incoming)
        self._known_dirs: set[Path] = set()

    @property
    def incoming(self) -> Path:
        """Where instances are written while they arrive (same file system as the spool)."""
        return self._incoming

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        return (
            self.root
            / _path_component(study_uid, "StudyInstanceUID")
            / _path_component(series_uid, "SeriesInstanceUID")
            / f"{_path_component(sop_instance_uid, 'SOPInstanceUID')}.dcm"
        )

    def check_free_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free - needed < self.min_free_bytes:
            raise SpoolFullError(
                f"spool has {free // 2**20} MiB free, below the minimum of "
                f"{self.min_free_bytes // 2**20} MiB"
            )

    def new_incoming(self) -> tuple[Path, int]:
        """A new partial file in the incoming folder: its path and a descriptor to write."""
        path = self._incoming / f"{uuid.uuid4().hex}.part"
        return path, create_private_file(path)

    def sync_soon(self, partial: Path) -> Future[None]:
        """Start the fsync of a complete partial file in the background, so that it overlaps
        whatever comes before :meth:`commit` (the checks of the data set); ``commit`` given
        the future waits for it before the rename, so nothing is renamed, let alone
        acknowledged, before its bytes are on disk."""
        return _sync_executor().submit(_fsync_file, partial)

    def commit(
        self,
        partial: Path,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        synced: Future[None] | None = None,
    ) -> Path:
        """Make the complete partial file durable under its final name; return that name.

        ``synced``: the partial file's fsync already started (:meth:`sync_soon`), waited for
        here; without it the file is fsync'd here. The partial file is removed when this
        fails (the caller quarantines it before, if it wants to keep it)."""
        try:
            final = self.path_for(study_uid, series_uid, sop_instance_uid)
            self.check_free_space(0)
            self._make_dirs(final.parent)
            if synced is None:
                _fsync_file(partial)
            else:
                synced.result()  # its OSError, if it failed, as the fsync here would raise
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _fsync_directory(final.parent)
        return final

    def write(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, data: bytes
    ) -> SpooledFile:
        """Write ``data`` durably under its final name and return where it is."""
        self.path_for(study_uid, series_uid, sop_instance_uid)  # refuse a bad UID first
        self.check_free_space(len(data))
        partial, fd = self.new_incoming()
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        final = self.commit(partial, study_uid, series_uid, sop_instance_uid)
        return SpooledFile(final, len(data), hashlib.sha256(data).hexdigest())

    def _make_dirs(self, directory: Path) -> None:
        """``root/STUDY/SERIES``, each level 0700, made durable once."""
        if directory in self._known_dirs:
            return
        study_dir = directory.parent
        for level in (study_dir, directory):
            try:
                level.mkdir(mode=PRIVATE_DIR_MODE)
            except FileExistsError:
                continue
            level.chmod(PRIVATE_DIR_MODE)  # whatever the umask
            _fsync_directory(level.parent)
        self._known_dirs.add(directory)

    def clean_incoming(self) -> int:
        """Remove partial writes left by a crash (never acknowledged, so nothing is lost)."""
        removed = 0
        for partial in self._incoming.iterdir():
            if partial.is_file():
                partial.unlink(missing_ok=True)
                removed += 1
        return removed

    def iter_files(self) -> list[Path]:
        return sorted(self.root.glob("*/*/*.dcm"))
