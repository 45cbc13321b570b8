"""The quarantine: what the node refused, kept just long enough to understand why.

Each refusal leaves ``<name>.reason.txt`` (why, naming attributes, never their values) and,
when the bytes were received whole, ``<name>.bin`` (the instance as it came: patient data).
The bytes are kept ``keep_bytes_days`` (to look into a refusal with the sender), the reason
``keep_reasons_days``; the folder never exceeds ``max_mb``, oldest removed first, bytes before
reasons. Every refusal and every removal is an event in the database, so the record of what
was refused outlives the files. Files are readable by the service user only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from config.schema import QuarantineConfig
from router.receive.private_files import PRIVATE_FILE_MODE, make_private_dir
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 3600.0
"""How often retention is applied when nothing is refused (each refusal applies it too)."""
_DAY_S = 86400.0
_BYTES = ".bin"
_REASON = ".reason.txt"


@dataclass(frozen=True)
class _Entry:
    path: Path
    size: int
    """Space taken on disk (blocks), so a flood of small reason files counts as what it costs."""
    mtime: float


class Quarantine:
    """The quarantine folder with its cap and retention (``node.quarantine``).

    The folder is listed once; after that the entries are tracked in memory in the order they
    were made, so a refusal costs no listing however many entries there are.
    """

    def __init__(self, folder: Path, db: Database, config: QuarantineConfig) -> None:
        self.folder = folder
        self.db = db
        self.config = config
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bytes: deque[_Entry] | None = None
        self._reasons: deque[_Entry] = deque()
        self._total = 0

    @property
    def cap_bytes(self) -> int:
        return self.config.max_mb * 2**20

    def keep(self, received: Path | None, reason: str) -> str:
        """Record a refusal; move ``received`` (a file of the spool's incoming folder) here
        when given, else record that nothing was kept. Returns the entry's name."""
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        kept = False
        with self._lock:
            self._load()
            try:
                make_private_dir(self.folder)
                reason_path = self.folder / f"{name}{_REASON}"
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
                with os.fdopen(os.open(reason_path, flags, PRIVATE_FILE_MODE), "w") as handle:
                    handle.write(reason + "\n")
                self._add(reason_path)
                if (
                    received is not None
                    and self.config.keep_bytes_days > 0
                    and received.stat().st_size <= self.cap_bytes
                ):
                    target = self.folder / f"{name}{_BYTES}"
                    os.replace(received, target)
                    os.chmod(target, PRIVATE_FILE_MODE)
                    self._add(target)
                    kept = True
            except OSError:
                LOGGER.exception("could not quarantine a refused instance")
            finally:
                if received is not None and not kept:
                    received.unlink(missing_ok=True)
        suffix = "" if kept else ", bytes not kept"
        self.db.record_event("instance_rejected", detail=f"{reason} (quarantine {name}{suffix})")
        self.sweep()
        return name

    def sweep(self, now: float | None = None) -> int:
        """Apply retention and the size cap; returns how many files were removed."""
        now = time.time() if now is None else now
        removed: list[tuple[_Entry, str]] = []
        with self._lock:
            entries = self._load()
            for queue, days in (
                (entries, self.config.keep_bytes_days),
                (self._reasons, self.config.keep_reasons_days),
            ):
                while queue and now - queue[0].mtime > days * _DAY_S:
                    removed.append((self._pop(queue), f"older than {days:g} days"))
            # Oldest first, the bytes (patient data, and large) before the reasons.
            while self._total > self.cap_bytes and (entries or self._reasons):
                queue = entries if entries else self._reasons
                removed.append((self._pop(queue), f"over the {self.config.max_mb} MB cap"))
        count = 0
        for entry, why in removed:
            count += self._remove(entry, why)
        return count

    def start(self) -> None:
        """Sweep now and then every :data:`SWEEP_INTERVAL_S`, until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="quarantine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # boundary: retention must never take the node down
                LOGGER.exception("quarantine sweep failed")
            self._stop.wait(SWEEP_INTERVAL_S)

    def _load(self) -> deque[_Entry]:
        """The entries of the folder, listed once, oldest first (call with the lock held)."""
        if self._bytes is not None:
            return self._bytes
        found: list[_Entry] = []
        try:
            with os.scandir(self.folder) as listing:
                for item in listing:
                    if item.name.endswith((_BYTES, _REASON)):
                        entry = self._entry(Path(item.path))
                        if entry is not None:
                            found.append(entry)
        except FileNotFoundError:
            pass
        found.sort(key=lambda e: (e.mtime, e.path.name))
        self._bytes = deque(e for e in found if e.path.name.endswith(_BYTES))
        self._reasons = deque(e for e in found if e.path.name.endswith(_REASON))
        self._total = sum(e.size for e in found)
        return self._bytes

    @staticmethod
    def _entry(path: Path) -> _Entry | None:
        try:
            stat = path.stat(follow_symlinks=False)
        except OSError:
            return None
        size = max(stat.st_size, getattr(stat, "st_blocks", 0) * 512)
        return _Entry(path, size, stat.st_mtime)

    def _add(self, path: Path) -> None:
        entry = self._entry(path)
        if entry is None or self._bytes is None:
            return
        (self._bytes if path.name.endswith(_BYTES) else self._reasons).append(entry)
        self._total += entry.size

    def _pop(self, queue: deque[_Entry]) -> _Entry:
        entry = queue.popleft()
        self._total -= entry.size
        return entry

    def _remove(self, entry: _Entry, why: str) -> int:
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return 0
        except OSError:
            LOGGER.exception("could not remove %s from the quarantine", entry.path.name)
            return 0
        what = "bytes" if entry.path.name.endswith(_BYTES) else "reason"
        self.db.record_event("quarantine_removed", detail=f"{entry.path.name} ({what}): {why}")
        return 1
