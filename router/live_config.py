"""The live configuration: replaced whole, only by a complete file that passed every check.

A file edited in place can be read half-written, and a half-written YAML file is often still
valid YAML (``rules: []``, or an allow-list cut off): so a change is taken only after the file
has stopped changing for ``reload.settle_s`` and reads the same twice, and a change that drops
every rule or opens the node to any caller is refused unless the file says it means it. Every
refusal is kept for ``/readyz`` (and the audit trail), and every accepted file is saved as the
*last good* configuration, which a restart falls back to, with a loud warning, when the file on
disk is refused: a bad edit never stops the next start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from config.loader import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    check_algorithms,
    check_exposure,
    read_config,
    validate_config,
)
from config.schema import RouterConfig
from config.yaml_document import parse_yaml
from router.audit.config_change import config_diff, file_owner
from router.audit.events import NO_AUDIT, AuditRecorder, ConfigChanged
from router.route.check_config import check_attribute_names

LOGGER = logging.getLogger(__name__)

LAST_GOOD_NAME = "config-last-good.yaml"


def config_problems(loaded: LoadedConfig, known_algorithms: Collection[str]) -> list[ConfigIssue]:
    """Every check a valid file must also pass to run: installed algorithms, matcher names
    that are DICOM keywords, exposure beyond loopback."""
    return (
        check_algorithms(loaded.document, known_algorithms)
        + check_attribute_names(loaded.document)
        + check_exposure(loaded)
    )


SOURCE_FILE = "file"
SOURCE_PAGE = "admin page"
"""Where a change came from (``ConfigChanged.source``): the file edited on disk, or the text
applied through the admin page (which writes the file)."""


@dataclass(frozen=True)
class ApplyOutcome:
    """What ``ConfigHolder.apply`` did: ``applied``, or the problems that kept it out."""

    applied: bool
    problems: list[str]
    conflict: bool = False
    """The file changed since the editor loaded it: nothing was checked or written."""


@dataclass(frozen=True)
class Rejection:
    """A changed file that was refused: it stays on disk, the running config stays."""

    at: float
    path: str
    problems: str


class LastGood:
    """The text of the last accepted configuration (mode 0600), kept in the data folder and
    beside the configuration file (``.<name>.last-good``) where that folder is writable: a
    file too broken to name its own data folder still finds the copy beside it."""

    def __init__(self, data_dir: Path, config_path: Path | None = None) -> None:
        self.path = data_dir / LAST_GOOD_NAME
        self.paths = [self.path]
        if config_path is not None:
            self.paths.append(config_path.with_name(f".{config_path.name}.last-good"))

    def save(self, text: str) -> None:
        """Write every copy that can be written; OSError only if none could."""
        failure: OSError | None = None
        written = 0
        for path in self.paths:
            try:
                _write_private(path, text)
                written += 1
            except OSError as exc:
                failure = exc
        if not written and failure is not None:
            raise failure

    def load(self) -> LoadedConfig | None:
        for path in self.paths:
            if path.is_file():
                return read_config(path)
        return None


def _write_keeping_mode(path: Path, text: str) -> None:
    """Replace ``path`` (the file a link points to, for a linked file) with ``text``
    atomically, keeping its permissions: a reader never sees half a file."""
    target = path.resolve()
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o600
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


class ConfigHolder:
    """The live config. Replaced whole, only by a complete config that passed every check."""

    def __init__(
        self,
        config: RouterConfig,
        path: Path | None,
        known_algorithms: Collection[str],
        *,
        last_good: LastGood | None = None,
        running_last_good: Rejection | None = None,
    ) -> None:
        self._config = config
        self.path = path
        self._known = known_algorithms
        self._last_good = last_good
        self._lock = threading.Lock()
        self._change_lock = threading.RLock()
        """Held while a change is checked and taken (from the file or the admin page)."""
        self._signature = _signature(path)
        self._pending: tuple[tuple[int, int, int] | None, float] | None = None
        self._text = _read_text(path)
        self.rejection: Rejection | None = running_last_good
        """The last refused change, or (at start) why the last good configuration is running
        instead of the file; None once a change is accepted."""
        self.running_last_good = running_last_good is not None
        self.audit: AuditRecorder = NO_AUDIT
        """Told of every change of the file, accepted or refused, with its diff (the service
        sets its audit trail here)."""
        if last_good is not None and path is not None and not self.running_last_good:
            self._save_last_good(self._text)

    def current(self) -> RouterConfig:
        with self._lock:
            return self._config

    def reload_if_changed(self, now: float | None = None) -> bool:
        """Take the file if it changed, has settled, and passes every check. True if swapped."""
        with self._change_lock:
            return self._reload_if_changed(now)

    def _reload_if_changed(self, now: float | None) -> bool:
        if self.path is None:
            return False
        now = time.monotonic() if now is None else now
        signature = _signature(self.path)
        if signature is None:
            if self._signature is not None:
                LOGGER.error("config file %s is missing; keeping the running config", self.path)
                self._signature = None
            return False
        if signature == self._signature:
            self._pending = None
            return False
        if self._pending is None or self._pending[0] != signature:
            self._pending = (signature, now)
        if now - self._pending[1] < self.current().reload.settle_s:
            return False
        text = _read_text(self.path)
        if text != _read_text(self.path) or _signature(self.path) != signature:
            self._pending = None  # still being written: wait for it to settle again
            return False
        self._signature, self._pending = signature, None
        return self._take(text)

    def _take(self, text: str) -> bool:
        assert self.path is not None
        loaded, problems = self.check_text(text)
        if loaded is None or problems:
            return self._refuse(text, "\n".join(problems))
        self._accept(loaded, text, file_owner(self.path))
        return True

    def check_text(self, text: str) -> tuple[LoadedConfig | None, list[str]]:
        """Every check a changed file must pass before it runs, against the running config:
        the loaded candidate (None when it does not load) and the problems (none: it would be
        taken)."""
        name = str(self.path) if self.path is not None else "candidate"
        try:
            loaded = validate_config(parse_yaml(text, name))
        except ConfigError as exc:
            return None, [str(exc)]
        problems = [str(p) for p in config_problems(loaded, self._known)]
        old, candidate = self.current(), loaded.config
        if old.rules and not candidate.rules and not candidate.reload.may_drop_all_rules:
            problems.append(
                f"{name}: rules: the file has no rules while the running configuration has "
                f"{len(old.rules)} (a file cut short?); set reload.may_drop_all_rules: true if "
                "you mean it"
            )
        if (
            old.node.allowed_callers is not None
            and candidate.node.allowed_callers is None
            and not candidate.reload.may_drop_allowed_callers
        ):
            problems.append(
                f"{name}: node.allowed_callers: the file opens the node to any caller while "
                "the running configuration has an allow-list; set "
                "reload.may_drop_allowed_callers: true if you mean it"
            )
        return loaded, problems

    def text(self) -> str:
        """The text of the running configuration's file as last taken ("" without a file)."""
        with self._change_lock:
            return self._text

    def digest(self) -> str:
        """SHA-256 of the running file's text: names the version an editor started from."""
        with self._change_lock:
            return hashlib.sha256(self._text.encode("utf-8")).hexdigest()

    def apply(self, text: str, editor: str, based_on: str | None = None) -> ApplyOutcome:
        """Write ``text`` to the configuration file and run it, if it passes every check
        (the admin page's "apply"): the same checks, audit record and last-good copy as a
        change on disk, with ``editor`` as who made it. ``based_on`` is the :meth:`digest`
        of the text the editor started from: when the file has changed since, nothing is
        written (a conflict)."""
        with self._change_lock:
            if self.path is None:
                return ApplyOutcome(
                    False,
                    [
                        "the router runs the shipped default configuration (no file): start it "
                        "with --config FILE to change its configuration here"
                    ],
                )
            stale = based_on is not None and based_on != self.digest()
            if stale or _read_text(self.path) != self._text:
                return ApplyOutcome(
                    False,
                    [
                        "the configuration file changed since this text was loaded (or holds "
                        "an edit not taken yet): reload it, then make the change again"
                    ],
                    conflict=True,
                )
            loaded, problems = self.check_text(text)
            if loaded is None or problems:
                # Recorded, but not a "refused change" for /readyz: nothing was written, the
                # file on disk is still the one running.
                LOGGER.warning("config change through the admin page refused: not written")
                self._audit_change(
                    text, False, "\n".join(problems), editor=editor, source=SOURCE_PAGE
                )
                return ApplyOutcome(False, problems)
            try:
                _write_keeping_mode(self.path, text)
            except OSError as exc:
                problem = f"{self.path}: cannot write the file ({exc.strerror})"
                LOGGER.error("config change through the admin page not written: %s", problem)
                return ApplyOutcome(False, [problem])
            self._signature, self._pending = _signature(self.path), None
            self._accept(loaded, text, editor, SOURCE_PAGE)
            return ApplyOutcome(True, [])

    def _accept(
        self, loaded: LoadedConfig, text: str, editor: str, source: str = SOURCE_FILE
    ) -> None:
        old, candidate = self.current(), loaded.config
        with self._lock:
            self._config = candidate
        self.rejection = None
        self.running_last_good = False
        self._audit_change(text, True, editor=editor, source=source)
        self._save_last_good(text)
        _warn_restart_needed(old, candidate)
        LOGGER.info(
            "config %s from %s: rules %s (were %s)",
            "applied through the admin page" if source == SOURCE_PAGE else "reloaded",
            self.path,
            [r.name for r in candidate.rules],
            [r.name for r in old.rules],
        )

    def _refuse(self, text: str, problems: str) -> bool:
        assert self.path is not None
        LOGGER.error("config change rejected, keeping the running config:\n%s", problems)
        self.rejection = Rejection(time.time(), str(self.path), problems)
        self._audit_change(text, False, problems)
        return False

    def _save_last_good(self, text: str) -> None:
        if self._last_good is None or not text:
            return
        try:
            self._last_good.save(text)
        except OSError as exc:
            LOGGER.error("could not save the last good config: %s", exc.strerror)

    def _audit_change(
        self,
        text: str,
        accepted: bool,
        problems: str = "",
        *,
        editor: str | None = None,
        source: str = SOURCE_FILE,
    ) -> None:
        """Record the change (its diff from the running file, secrets redacted); an accepted
        one becomes the text later changes are compared with. ``editor``: who made it (the
        file's owner when not known)."""
        assert self.path is not None
        diff = config_diff(self._text, text, self.path)
        if accepted:
            self._text = text
        who = editor if editor is not None else file_owner(self.path)
        self.audit.record(ConfigChanged(self.path, who, diff, accepted, problems, source=source))


def _warn_restart_needed(old: RouterConfig, candidate: RouterConfig) -> None:
    if (
        old.node != candidate.node
        or old.http != candidate.http
        or old.storage != candidate.storage
        or old.model_dirs != candidate.model_dirs
        or old.audit != candidate.audit
    ):
        LOGGER.warning(
            "node/http/storage/model_dirs/audit settings changed: they take effect after a restart"
        )
    changed_models = sorted(
        name
        for name in set(old.algorithms) | set(candidate.algorithms)
        if _load_settings(old, name) != _load_settings(candidate, name)
    )
    if changed_models:
        LOGGER.warning(
            "device/max_concurrent of %s changed: they take effect when the model is next "
            "loaded (after a restart)",
            changed_models,
        )


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    """What tells a changed file: modification time, size and inode (a rename into place)."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _read_text(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _load_settings(config: RouterConfig, name: str) -> tuple[str, int] | None:
    settings = config.algorithms.get(name)
    return None if settings is None else (settings.device, settings.max_concurrent)
