"""The local audit log: append-only files of one XML message per line, rotated by size.

Files are ``audit-000001.log``, ``audit-000002.log``, ...: the highest number is the one being
written; radrouter never changes or deletes the others (how long they are kept is the site's
policy). Each file is created with mode 0600 in a 0700 folder and only ever opened with
``O_APPEND``; every write is one ``write`` per batch, then ``fsync``, under an exclusive lock
(``.lock``), so the router and ``radrouter audit`` can both append.

Tampering is made detectable by a hash chain over the files: the first line of each file is
an audit message (Security Alert, "Audit Recording Started") carrying the name and SHA-256 of
the file before it, and that message also goes to the syslog collector. Changing, removing or
truncating a closed file breaks the link the next file holds (``verify``); the file being
written is covered once it is closed, and until then by the copy at the collector. It is not
a signature: someone who can rewrite every file after the change can rebuild the chain, which
is why a collector off this machine matters.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from router.audit.compose import SHA256_DETAIL
from router.audit.messages import AuditMessage, EventType, ObjectIdType

FILE_PATTERN = re.compile(r"^audit-(\d{6,})\.log$")
LOCK_NAME = ".lock"
FILE_MODE = 0o600
FOLDER_MODE = 0o700

FirstLine = Callable[[str | None, str | None], bytes]
"""The first line of a new file, from the name and SHA-256 of the file before (None, None
for the very first file)."""


def file_name(sequence: int) -> str:
    return f"audit-{sequence:06d}.log"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class LogLine:
    """One complete line of the log, where it is (``offset`` of its first byte)."""

    path: Path
    offset: int
    data: bytes


class AuditLog:
    """The folder of audit files. ``first_line`` makes the chain message of a new file."""

    def __init__(self, folder: Path, max_bytes: int, first_line: FirstLine) -> None:
        if max_bytes < 1:
            raise ValueError(f"AuditLog: max_bytes must be >= 1, got {max_bytes}")
        self.folder = folder
        self.max_bytes = max_bytes
        self._first_line = first_line

    # --- writing ----------------------------------------------------------------------------

    def append(self, lines: Sequence[bytes], *, rotate: bool = True) -> None:
        """Append whole lines (each one message, without a line break), durably.

        ``rotate=False`` (a command run by another user, root say) never begins a file, which
        would then belong to that user: the router begins it at its next write."""
        for line in lines:
            if b"\n" in line or b"\r" in line:
                raise ValueError("AuditLog.append: a line must not contain a line break")
        if not lines:
            return
        data = b"".join(line + b"\n" for line in lines)
        self.folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        with self._locked():
            path = self._current_or_first()
            size = path.stat().st_size
            if rotate and size > 0 and size + len(data) > self.max_bytes:
                path = self._rotate(path)
            _append(path, data)

    def _current_or_first(self) -> Path:
        files = self.files()
        if files:
            return files[-1]
        path = self.folder / file_name(1)
        _create(path, self._first_line(None, None) + b"\n")
        return path

    def _rotate(self, closed: Path) -> Path:
        sequence = _sequence(closed) + 1
        path = self.folder / file_name(sequence)
        _create(path, self._first_line(closed.name, sha256_of(closed)) + b"\n")
        return path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.folder / LOCK_NAME, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # --- reading ----------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The log files, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if FILE_PATTERN.match(p.name)]
        return sorted(found, key=_sequence)

    def lines(self, start: Path | None = None, offset: int = 0) -> Iterator[LogLine]:
        """Complete lines from ``start`` at ``offset`` (default: the beginning) to the end; a
        last line still being written (no line break yet) is left for later."""
        for path in self.files():
            if start is not None and _sequence(path) < _sequence(start):
                continue
            skip = offset if start is not None and path.name == start.name else 0
            yield from read_lines(path, skip)

    def messages(
        self, worth_reading: Callable[[bytes], bool] | None = None
    ) -> Iterator[AuditMessage]:
        """Every message of the log, oldest first; lines that are not one are skipped, and so
        are lines ``worth_reading`` says no to (a cheap test before parsing)."""
        for line in self.lines():
            if worth_reading is not None and not worth_reading(line.data):
                continue
            with contextlib.suppress(ValueError):
                yield AuditMessage.from_xml(line.data)

    def verify(self) -> list[str]:
        """What breaks the chain of files: empty when every closed file is what the next
        file's first message says it was."""
        problems: list[str] = []
        files = self.files()
        for before, after in itertools.pairwise(files):
            if _sequence(after) != _sequence(before) + 1:
                problems.append(f"{file_name(_sequence(before) + 1)} is missing")
                continue
            link = _chain_link(after)
            if link is None:
                problems.append(f"{after.name} does not begin with the link to {before.name}")
            elif link != (before.name, sha256_of(before)):
                problems.append(
                    f"{before.name} changed since {after.name} was started "
                    f"(SHA-256 recorded {link[1]}, now {sha256_of(before)})"
                    if link[0] == before.name
                    else f"{after.name} links to {link[0]}, not {before.name}"
                )
        return problems


def read_lines(path: Path, offset: int = 0) -> Iterator[LogLine]:
    """The complete lines of one file from ``offset``."""
    try:
        with path.open("rb") as stream:
            stream.seek(offset)
            position = offset
            for raw in stream:
                if not raw.endswith(b"\n"):
                    return
                yield LogLine(path, position, raw.rstrip(b"\n"))
                position += len(raw)
    except FileNotFoundError:
        return


def _chain_link(path: Path) -> tuple[str, str] | None:
    first = next(read_lines(path), None)
    if first is None:
        return None
    try:
        message = AuditMessage.from_xml(first.data)
    except ValueError:
        return None
    if EventType.AUDIT_RECORDING_STARTED.value not in message.event_types:
        return None
    for item in message.objects_of(ObjectIdType.URI):
        digest = item.detail(SHA256_DETAIL)
        if digest is not None:
            return item.object_id, digest.decode("ascii", "replace")
    return None


def _sequence(path: Path) -> int:
    match = FILE_PATTERN.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not an audit log file")
    return int(match.group(1))


def _create(path: Path, first: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        _write_all(fd, first)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_folder(path.parent)


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
