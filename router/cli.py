"""The ``radrouter`` command: serve, check-config, send, status, retry, demo-study."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import signal
import sys
import textwrap
import threading
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from config.loader import (
    ConfigError,
    LoadedConfig,
    default_config_path,
    read_config,
    read_default_config,
)
from config.schema import HttpConfig, RouterConfig
from router.roles import ROLES

if TYPE_CHECKING:
    from algorithms.registry import Registry
    from router.admin import Source
    from router.live_config import Rejection
    from router.store.database import Database
    from router.validate.run import ValidationRun

LOGGER = logging.getLogger("radrouter")


def _read(path: Path | None) -> LoadedConfig:
    return read_default_config() if path is None else read_config(path)


def _load(path: Path | None) -> RouterConfig:
    return _read(path).config


CONFIG_ENV = "RADROUTER_CONFIG"
"""Environment variable naming the routing YAML ``radrouter serve`` (and ``status``,
``retry``) use when ``--config`` is not given (the container image sets it)."""


def _config_path(args: argparse.Namespace) -> Path | None:
    """``--config``, else ``$RADROUTER_CONFIG``, else None (the shipped default)."""
    if args.config is not None:
        return Path(args.config)
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    return Path(from_env) if from_env else None


def cmd_serve(args: argparse.Namespace) -> int:
    from router.live_config import config_problems
    from router.secrets import SecretError
    from router.service import RouterService
    from router.store.database import ENGINE_ERRORS

    config_path = _config_path(args)
    try:
        loaded = _read(config_path)
        refused = ""
    except ConfigError as exc:
        loaded, refused = None, str(exc)
    registry = _registry_for(loaded)
    problems: list[str] = []
    if loaded is not None and args.role != "receiver":  # a receiver runs no algorithm
        problems = [str(p) for p in config_problems(loaded, registry.parameter_names())]
    fallback = None
    if loaded is None or problems:
        refused = refused or "\n".join(problems)
        loaded, fallback = _last_good(args, config_path, loaded, refused)
        if loaded is None:
            print(f"config rejected:\n{refused}", file=sys.stderr)
            for plugin in registry.problems:
                print(
                    f"  algorithm {plugin.name!r} could not be used: {plugin.error}",
                    file=sys.stderr,
                )
            return 2
        registry = _registry_for(loaded)
    config = loaded.config
    LOGGER.info("config: %s", config_path or f"shipped default ({default_config_path()})")
    try:
        service = RouterService(
            config,
            config_path,
            data_dir=args.data_dir,
            registry=registry,
            running_last_good=fallback,
            role=args.role,
            receiver_index=args.receiver_index,
        )
    except (SecretError, *ENGINE_ERRORS) as exc:  # type: ignore[misc]
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"database: {first_line}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    service.start()
    if args.role == "receiver":
        stopped.wait()
        service.stop()
        return 0
    LOGGER.info(
        "radrouter ready: DICOM %s on %s, HTTP on port %s, data in %s",
        config.node.ae_title,
        " and ".join(
            f"{'TLS ' if kind == 'dicom_tls' else ''}port {port}"
            for kind, port in service.node.listening_ports().items()
        ),
        service.http_port,
        service.data_dir,
    )
    stopped.wait()
    LOGGER.info("stopping")
    service.stop()
    return 0


def _registry_for(loaded: LoadedConfig | None) -> Registry:
    from algorithms.registry import Registry

    model_dirs = loaded.config.model_dirs if loaded is not None else []
    return Registry.discover(manifest_dirs=model_dirs)


def _last_good(
    args: argparse.Namespace,
    config_path: Path | None,
    refused_config: LoadedConfig | None,
    problems: str,
) -> tuple[LoadedConfig | None, Rejection | None]:
    """The last configuration this router accepted, when the file on disk is refused: a bad
    edit must never stop the next start. Logged loudly, and shown by ``/readyz``."""
    import time

    from router.live_config import LastGood, Rejection

    if config_path is None:
        return None, None
    data_dir = args.data_dir or (
        refused_config.config.storage.data_dir if refused_config is not None else Path("var")
    )
    copies = LastGood(Path(data_dir).resolve(), config_path)
    try:
        last_good = copies.load()
    except ConfigError as exc:
        LOGGER.error("the last good config is unusable too: %s", exc)
        return None, None
    if last_good is None:
        return None, None
    LOGGER.error(
        "config %s REFUSED; running the last good configuration (%s) until it is fixed:\n%s",
        config_path,
        last_good.document.source,
        problems,
    )
    return last_good, Rejection(time.time(), str(config_path), problems)


def cmd_check_config(args: argparse.Namespace) -> int:
    from algorithms.registry import Registry
    from router.route.check_config import run_check

    registry = Registry.discover()
    known = registry.parameter_names()
    with _Progress("dry run", "file", args.quiet) as progress:
        outcome = run_check(
            args.file,
            known,
            against=args.against,
            calling_ae=args.calling_ae,
            called_ae=args.called_ae,
            progress=progress,
            purposes=registry.purposes(),
        )
    print(outcome.text, end="" if outcome.text.endswith("\n") else "\n")
    return outcome.exit_code


class _Progress:
    """A tqdm bar on stderr, made at the first report ``(done, total)``; none with --quiet or
    when stderr is not a terminal (a log file would collect every redraw)."""

    def __init__(self, desc: str, unit: str, quiet: bool) -> None:
        self.desc = desc
        self.unit = unit
        self.disabled = quiet or not sys.stderr.isatty()
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.disabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr)
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()


def cmd_send(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from router.deliver.dicom_send import FileToSend, Peer, SendError, send_files

    paths: list[Path] = []
    for item in args.paths:
        paths.extend(sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item])
    files: list[FileToSend] = []
    skipped = 0
    for path in paths:
        try:
            files.append(FileToSend.from_path(path))
        except Exception:
            skipped += 1
    if skipped:
        print(f"skipped {skipped} file(s) that are not DICOM Part-10", file=sys.stderr)
    if not files:
        print("nothing to send", file=sys.stderr)
        return 1
    peer = Peer(args.aet, args.host, args.port, args.calling_aet, args.timeout)
    with tqdm(total=len(files), unit="img", disable=args.quiet) as bar:
        try:
            sent = send_files(peer, files, progress=bar.update)
        except SendError as exc:
            print(f"send failed: {exc}", file=sys.stderr)
            return 1
    print(f"sent {sent} instance(s) to {args.aet}@{args.host}:{args.port}")
    return 0


def _open_source(args: argparse.Namespace, progress: _Progress | None = None) -> Source | None:
    """Where ``status`` and ``retry`` read: ``--api URL``; with ``--data-dir``, that folder's
    database; otherwise the router answering at the config's ``http`` address (unless
    ``--no-api``), else the database in the config's ``storage.data_dir``. Prints the source
    used on one line; None (with where it looked printed) when there is nothing there, since a
    command run from the wrong folder must not make an empty database."""
    from router.admin import ApiSource, DatabaseSource, router_answers
    from router.store.database import SqliteDatabase
    from router.store.open import SQLITE_FILE

    if args.api is not None:
        if args.data_dir is not None:
            print("give --api or --data-dir, not both (two different sources)", file=sys.stderr)
            return None
        if not router_answers(args.api):
            print(f"no radrouter answers at {args.api} (GET /healthz)", file=sys.stderr)
            return None
        source = ApiSource(args.api, progress=progress)
        print(f"source: {source.description}", file=sys.stderr)
        return source
    not_answering = ""
    sites: dict[str, str] = {}
    if args.data_dir is not None:
        data_dir, origin = Path(args.data_dir), "from --data-dir"
    else:
        config_path = _config_path(args)
        try:
            config = _load(config_path)
        except ConfigError as exc:
            print(f"config rejected:\n{exc}", file=sys.stderr)
            return None
        data_dir, origin = config.storage.data_dir, f"storage.data_dir of {_named(args)}"
        sites = dict(config.usage.sites)
        url = None if args.no_api else _http_url(config.http)
        if url is not None and router_answers(url, trust_env=False):
            source = ApiSource(url, trust_env=False, progress=progress)
            print(f"source: {source.description} (the config's http address)", file=sys.stderr)
            return source
        if url is not None:
            not_answering = f"no router answers at {url}"
        if config.storage.database.engine == "postgresql":
            return _postgres_source(config, sites, not_answering)
    path = data_dir.resolve() / SQLITE_FILE
    if not path.is_file():
        looked = f"no radrouter database at {path} ({origin})"
        if not_answering:
            looked += f" and {not_answering}"
        print(f"{looked}: give the router's --data-dir, its --config or --api URL", file=sys.stderr)
        return None
    database = DatabaseSource(SqliteDatabase(path), sites)
    because = f"; {not_answering}" if not_answering else ""
    print(f"source: {database.description} ({origin}{because})", file=sys.stderr)
    return database


def _postgres_source(
    config: RouterConfig, sites: dict[str, str], not_answering: str
) -> Source | None:
    """The deployment's PostgreSQL database (``storage.database``), when no router answers."""
    from router.admin import DatabaseSource

    db = _configured_database(config)
    if db is None:
        return None
    source = DatabaseSource(db, sites)
    because = f"; {not_answering}" if not_answering else ""
    print(f"source: {source.description} (storage.database{because})", file=sys.stderr)
    return source


def _configured_database(config: RouterConfig, command: str = "") -> Database | None:
    """The database ``storage.database`` names, or None with the reason on one line (no
    secret printed) when its password or its server is not there."""
    from router.secrets import SecretError
    from router.store.database import ENGINE_ERRORS
    from router.store.open import open_configured

    try:
        return open_configured(config.storage.database, config.storage.data_dir.resolve())
    except (SecretError, *ENGINE_ERRORS) as exc:  # type: ignore[misc]
        print(f"{command}database: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return None


def _named(args: argparse.Namespace) -> str:
    """The config ``_config_path`` chose, as messages name it."""
    if args.config is not None:
        return str(args.config)
    path = _config_path(args)
    if path is not None:
        return f"{path} (${CONFIG_ENV})"
    return f"the shipped default config ({default_config_path()})"


def _http_url(http: HttpConfig) -> str | None:
    """Where a router serving with this ``http`` section answers; None for port 0 (any)."""
    if http.port == 0:
        return None
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(http.host, http.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{http.port}"


def cmd_status(args: argparse.Namespace) -> int:
    from router.admin import SourceError, format_status, read_status

    source = _open_source(args)
    if source is None:
        return 2
    try:
        status = read_status(source, args.limit)
    except SourceError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 2
    print(format_status(status), end="")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from algorithms.registry import Registry
    from router.validate.cases import TruthFileError, read_truth
    from router.validate.run import validate

    try:
        config = _load(args.config) if args.config is not None else None
    except ConfigError as exc:
        print(f"config rejected:\n{exc}", file=sys.stderr)
        return 2
    if args.from_shadow:
        if args.cases is not None or args.truth is not None:
            print("validate: --from-shadow takes no folder and no --truth", file=sys.stderr)
            return 2
        return _validate_from_shadow(args, config)
    if args.cases is None or args.truth is None:
        print("validate: give a folder of cases and --truth CSV, or --from-shadow", file=sys.stderr)
        return 2
    try:
        truth = read_truth(args.truth)
    except TruthFileError as exc:
        print(f"validate: {exc}", file=sys.stderr)
        return 2
    if not args.cases.is_dir():
        print(f"validate: {args.cases} is not a folder", file=sys.stderr)
        return 2
    registry = Registry.discover(manifest_dirs=config.model_dirs if config else ())
    if args.algorithm not in registry:
        print(
            f"validate: no algorithm {args.algorithm!r}; installed: {', '.join(registry.names())}",
            file=sys.stderr,
        )
        return 2
    with _Progress("cases", "study", args.quiet) as progress:
        run = validate(
            args.algorithm,
            registry,
            args.cases,
            truth,
            config=config,
            device=args.device,
            progress=progress,
            hit_mm=args.hit_mm,
        )
    return _report_validation(run, args.out)


def _validate_from_shadow(args: argparse.Namespace, config: RouterConfig | None) -> int:
    from algorithms.registry import Registry
    from router.validate.from_feedback import validation_from_feedback

    registry = Registry.discover(manifest_dirs=config.model_dirs if config else ())
    if args.algorithm not in registry:
        print(f"validate: no algorithm {args.algorithm!r}", file=sys.stderr)
        return 2
    if args.data_dir is not None:
        db = existing_sqlite(Path(args.data_dir))
    else:
        try:
            configured = config if config is not None else _load(_config_path(args))
        except ConfigError as exc:
            print(f"config rejected:\n{exc}", file=sys.stderr)
            return 2
        db = configured_database_of_router(configured)
    if db is None:
        return 2
    settings = config.algorithms.get(args.algorithm) if config is not None else None
    try:
        run = validation_from_feedback(
            db,
            registry.info(args.algorithm),
            threshold=settings.threshold if settings is not None else None,
        )
    finally:
        db.close_all()
    return _report_validation(run, args.out)


def configured_database_of_router(config: RouterConfig) -> Database | None:
    """The database a router with this config writes: its ``storage.database`` (PostgreSQL,
    or SQLite in its ``storage.data_dir``). None, with the reason printed, when it is not
    there (see ``existing_sqlite``)."""
    if config.storage.database.engine == "postgresql":
        return _configured_database(config, "validate: ")
    return existing_sqlite(config.storage.data_dir)


def existing_sqlite(data_dir: Path) -> Database | None:
    """The SQLite database in a router's data folder. None, with the reason printed, when
    there is none: a command run from the wrong folder must not make an empty database."""
    from router.store.database import SqliteDatabase
    from router.store.open import SQLITE_FILE

    path = data_dir.resolve() / SQLITE_FILE
    if not path.is_file():
        print(f"validate: no radrouter database at {path}", file=sys.stderr)
        return None
    return SqliteDatabase(path)


def _report_validation(run: ValidationRun, out: Path) -> int:
    from router.validate.report import summarise, write_report

    json_path, html_path = write_report(run, out)
    figures = summarise(run)
    auc = "n/a" if figures["auc"] is None else f"{figures['auc']:.3f}"
    place = figures["localisation"]
    found = (
        ""
        if place is None
        else f", {place['localised']} of {place['positives_with_location']} positives found at "
        f"the right place, {place['false_positives_per_case']:.2f} false-positive findings per case"
    )
    print(
        f"{run.info.name} {run.info.version}: {figures['assessed']} of {figures['cases']} cases "
        f"assessed, AUC {auc}{found}; report: {html_path} and {json_path}"
    )
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from router.admin import SourceError
    from router.usage import format_usage, usage_csv

    source = _open_source(args)
    if source is None:
        return 2
    try:
        rows = source.usage(args.month)
    except SourceError as exc:
        print(f"usage: {exc}", file=sys.stderr)
        return 2
    print(usage_csv(rows) if args.csv else format_usage(rows), end="")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from config.schema import DriftConfig
    from router.drift.cli import run_drift

    def drift_config() -> DriftConfig:
        try:
            return _load(_config_path(args)).drift
        except ConfigError:  # the source already said the config is rejected
            return DriftConfig()

    return run_drift(args, _open_source, drift_config)


def cmd_retry(args: argparse.Namespace) -> int:
    from router.admin import SourceError

    wanted: list[tuple[str, int | None, str]] = []
    if args.job is not None:
        wanted.append(("jobs", args.job, f"job {args.job} is not failed"))
    if args.dispatch is not None or args.all_dead:
        item = None if args.all_dead else args.dispatch
        wanted.append(("dispatches", item, f"dispatch {item} is not dead-lettered"))
    if args.delivery is not None or args.all_dead:
        item = None if args.all_dead else args.delivery
        wanted.append(("deliveries", item, f"delivery {item} is not dead-lettered"))
    if not wanted:
        print(
            "say what to retry: --job ID, --dispatch ID, --delivery ID or --all-dead",
            file=sys.stderr,
        )
        return 2
    with _Progress("retry", "item", args.quiet) as progress:
        source = _open_source(args, progress)
        if source is None:
            return 2
        count = 0
        for table, item, not_there in wanted:
            try:
                requeued = source.requeue(table, item)
            except SourceError as exc:
                print(f"retry: {exc}", file=sys.stderr)
                return 2
            if item is not None and not requeued:
                print(f"nothing requeued: {not_there} (see radrouter status)", file=sys.stderr)
            count += requeued
            _audit_database_retry(args, source, table, item, requeued)
    if args.all_dead and not count:
        print("nothing requeued: no dead letters", file=sys.stderr)
    print(f"requeued {count}")
    return 0 if count else 1


def _audit_database_retry(
    args: argparse.Namespace, source: object, table: str, item: int | None, requeued: int
) -> None:
    """A retry made on the database file (no router answering) is recorded by the command
    itself; through the API the router records it."""
    from router.admin import DatabaseSource
    from router.audit.events import QueueKind
    from router.audit.wiring import record_command_line_retry
    from router.store.database import SqliteDatabase

    if not isinstance(source, DatabaseSource):
        return
    config = _load(_config_path(args))
    data_dir = (
        source.db.path.parent
        if isinstance(source.db, SqliteDatabase)
        else config.storage.data_dir.resolve()
    )
    try:
        record_command_line_retry(config, data_dir, source.db, QueueKind(table), item, requeued)
    except OSError as exc:
        print(f"retry: the audit trail could not be written: {exc.strerror}", file=sys.stderr)


def cmd_demo_study(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from router.demo import write_demo_study

    bar = tqdm(total=args.slices, unit="img", desc="demo study", delay=0.5, disable=args.quiet)
    try:
        with bar:
            demo = write_demo_study(
                args.out,
                seed=args.seed,
                slices=args.slices,
                size=args.size,
                slice_spacing_mm=args.slice_spacing,
                nodule_mm=args.nodule_mm,
                progress=bar.update,
            )
    except ValueError as exc:
        print(f"demo-study: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(demo.paths)} slices of a synthetic chest CT to {args.out}")
    if demo.nodule_voxel is not None:
        k, i, j = demo.nodule_voxel
        print(
            f"  a {args.nodule_mm:g} mm nodule in the right lung, centre at image "
            f"{round(k) + 1} (row {i:.0f}, column {j:.0f})"
        )
    print(f"send it with: radrouter send {args.out}")
    return 0


def cmd_print_default_config(_: argparse.Namespace) -> int:
    from config.loader import default_config_text

    print(default_config_text(), end="")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Read the local audit log (who touched a study, what a user did), or check its chain
    of files; the reading itself is recorded in the log (Audit Log Used)."""
    import time

    from router.audit.report import AuditQuestion, describe, select
    from router.audit.wiring import audit_folder, command_line_actor, command_line_log

    try:
        config = _load(_config_path(args))
        question = AuditQuestion(args.study, args.user, args.patient, args.since, args.until)
    except (ConfigError, ValueError) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    data_dir = args.data_dir if args.data_dir is not None else config.storage.data_dir
    folder = args.dir if args.dir is not None else audit_folder(config.audit, data_dir)
    log, composer = command_line_log(config, folder)
    if not log.files():
        print(f"no audit log in {folder}: give --dir, --data-dir or --config", file=sys.stderr)
        return 2
    status = 0
    if args.verify:
        problems = log.verify()
        for problem in problems:
            print(f"chain broken: {problem}")
        print(f"{len(log.files())} file(s) checked, {len(problems)} problem(s)", file=sys.stderr)
        status = 1 if problems else 0
    if not args.verify or question != AuditQuestion():
        matched = select(log.messages(question.might_match), question)
        for message in matched:
            print(describe(message))
        print(f"{len(matched)} message(s) for {question.describe()}", file=sys.stderr)
    used = composer.log_used(time.time(), command_line_actor(), str(folder), question.describe())
    try:
        log.append([used.to_xml()], rotate=False)
    except OSError as exc:
        print(f"audit: this reading could not be recorded in the log: {exc}", file=sys.stderr)
    return status


def _audit_time(end_of_day: bool) -> Any:
    """An argparse type: ISO 8601 date or date and time; without a zone, this machine's."""
    import datetime

    def parse(text: str) -> datetime.datetime:
        try:
            value = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a date (2026-05-01) or date and time (2026-05-01T14:30)"
            ) from None
        if end_of_day and len(text) == 10:  # a date alone: all of that day
            value += datetime.timedelta(days=1, microseconds=-1)
        return value if value.tzinfo is not None else value.astimezone()

    return parse


def cmd_api_key(args: argparse.Namespace) -> int:
    """Make, list or revoke the API keys of ``http.auth.api_keys_file`` (or ``--file``)."""
    from config.schema import ApiRole
    from router.api.api_keys import ApiKeyFileError, create_key, read_keys, revoke_key

    path: Path | None = args.file
    if path is None:
        try:
            config = _load(_config_path(args))
        except ConfigError as exc:
            print(f"config rejected:\n{exc}", file=sys.stderr)
            return 2
        auth = config.http.auth
        path = auth.api_keys_file if auth is not None else None
        if path is None:
            print(
                "the config has no http.auth.api_keys_file: set it, or give --file",
                file=sys.stderr,
            )
            return 2
    try:
        if args.action == "create":
            key, entry = create_key(path, name=args.name, role=ApiRole(args.role))
            print(key)
            print(
                f"API key {entry.name!r} ({entry.role.value}, id {entry.id}): its hash is in "
                f"{path}. The key is shown only now; send it as 'Authorization: Bearer <key>' "
                "or 'X-API-Key: <key>'.",
                file=sys.stderr,
            )
        elif args.action == "list":
            for entry in read_keys(path):
                print(f"{entry.id}  {entry.name:<24} {entry.role.value:<12} {entry.created_at}")
        else:
            gone = revoke_key(path, args.key)
            if gone is None:
                print(f"{path} has no key named or numbered {args.key!r}", file=sys.stderr)
                return 1
            print(f"revoked API key {gone.name!r} (id {gone.id})", file=sys.stderr)
    except (ApiKeyFileError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def installed_version() -> str:
    """radrouter's version: the installed distribution's, else (running from a source tree
    that was never installed) the one in pyproject.toml, else ``unknown``."""
    try:
        return importlib.metadata.version("radrouter")
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return "unknown"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written; every option's help ends with its default: the value, ``on``
    or ``off`` for a flag, or what the help text itself says (options whose default is
    None describe it, ``(default: the config's ...)``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "(default:" in text
            or not action.option_strings
            or action.default in (None, argparse.SUPPRESS)
        ):
            return text
        if action.nargs == 0:  # a flag
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: %(default)s)"


STATUS_SOURCES = f"""
Where it reads:
  --api URL       a running router's HTTP API;
  --data-dir DIR  the database file in DIR;
  otherwise       the router answering at the http address of the config (--config,
                  else ${CONFIG_ENV}, else the shipped default), else the database in
                  that config's storage.data_dir (--no-api: the database in any case).
It says on stderr, in one line, which source it used, and refuses (exit 2, saying where it
looked) when there is no router and no database there.
"""


def _hit_mm(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("give a distance in mm above 0")
    return value


def _drift_when(text: str) -> float:
    from router.drift.cli import parse_when

    return parse_when(text)


def _api_limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:  # the most one API listing returns
        raise argparse.ArgumentTypeError("give a number from 1 to 1000")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radrouter",
        description="radrouter, a DICOM AI inference router for hospital PACS.\n\n"
        "Each command has its own options: radrouter COMMAND --help.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {installed_version()}",
        help="print radrouter's version and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=textwrap.fill(summary[0].upper() + summary[1:] + ".", 88) + details,
            formatter_class=HelpFormatter,
        )

    def with_config(p: argparse.ArgumentParser, data_dir: str) -> None:
        p.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help=f"routing YAML (default: ${CONFIG_ENV} if set, else the shipped config)",
        )
        p.add_argument(
            "--data-dir",
            type=Path,
            metavar="DIR",
            help=f"{data_dir} (default: the config's storage.data_dir)",
        )

    def with_source(p: argparse.ArgumentParser) -> None:
        with_config(p, "the router's spool and database folder, read directly")
        choice = p.add_mutually_exclusive_group()
        choice.add_argument(
            "--api",
            metavar="URL",
            help="a running router's HTTP API, e.g. http://127.0.0.1:8080 (default: the "
            "config's http address when a router answers there, else the database file)",
        )
        choice.add_argument(
            "--no-api",
            action="store_true",
            help="read the database file even when a router answers",
        )

    serve = command("serve", "run the DICOM node, pipeline and HTTP API")
    with_config(serve, "spool and database folder")
    serve.add_argument(
        "--role",
        choices=list(ROLES),
        default="all",
        help="all: the whole router (default); the parts, as processes of their own sharing "
        "the database (storage.database: postgresql across hosts) and the spool: receiver "
        "(the DICOM node; the router starts node.receivers-1 of these itself), worker (jobs "
        "of the algorithms it loads), dispatcher (completion, planning, sending, "
        "notifications, retention), api (HTTP API and pages); docs/scaling.md",
    )
    serve.add_argument(
        "--index",
        "--receiver-index",
        dest="receiver_index",
        type=int,
        default=1,
        help="tells apart processes of one role on one host (default 1)",
    )
    serve.set_defaults(func=cmd_serve)

    check = command(
        "check-config",
        "validate a routing YAML (and dry-run it)",
        "\n\nEvery problem of the file is listed in one run. With --against, the rules are"
        "\ndry-run on a folder of DICOM files; when the file has problems, the rules that"
        "\nhave none are dry-run and the others are named, with why they were skipped.",
    )
    check.add_argument("file", type=Path, help="the routing YAML to check")
    check.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="folder of DICOM files (searched recursively) to dry-run the rules on "
        "(default: no dry run)",
    )
    check.add_argument("--calling-ae", default="DRYRUN", help="calling AE for the dry run")
    check.add_argument(
        "--called-ae", help="called AE for the dry run (default: the config's node.ae_title)"
    )
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_check_config)

    validate = command(
        "validate",
        "run an algorithm over a folder of local cases with a truth file and write a report "
        "(AUC with its confidence interval, sensitivity and specificity, per scanner)",
        "\n\nThe truth file is CSV with a header: study_uid,label (1/0, present/absent, ...),"
        "\noptionally location: where a positive's target is, x y z in mm (patient"
        "\ncoordinates, LPS), several points separated by ';'; the report then says how many"
        "\npositives were found at the right place and the false-positive findings per case."
        "\nWith --config, each study's series is the one its rules give the algorithm, and"
        "\nits threshold and parameters apply; without, a series of the algorithm's modality.",
    )
    validate.add_argument("algorithm", help="an installed algorithm's name")
    validate.add_argument(
        "cases", type=Path, nargs="?", help="folder of the cases' DICOM files (with --truth)"
    )
    validate.add_argument(
        "--truth",
        type=Path,
        metavar="CSV",
        help="truth file: study_uid,label[,location] per line (default: none; needed with a "
        "folder)",
    )
    validate.add_argument(
        "--from-shadow",
        action="store_true",
        help="instead of a folder and a truth file: the algorithm's shadow-mode results in "
        "the router's database, the readers' feedback on each as the truth",
    )
    validate.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="with --from-shadow: the router's data folder (default: the config's "
        "storage.data_dir)",
    )
    validate.add_argument(
        "--out", type=Path, default=Path("validation"), metavar="DIR", help="report folder"
    )
    validate.add_argument(
        "--config", type=Path, metavar="FILE", help="routing YAML (default: none)"
    )
    validate.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs"
    )
    validate.add_argument(
        "--hit-mm",
        type=_hit_mm,
        default=10.0,  # router.validate.localisation.DEFAULT_HIT_MM
        metavar="MM",
        help="a finding whose outline or mask holds a truth location, or whose centre lies "
        "within MM of it, is at it",
    )
    validate.add_argument("--quiet", action="store_true", help="no progress bar")
    validate.set_defaults(func=cmd_validate)

    send = command("send", "C-STORE files or folders to a DICOM node")
    send.add_argument(
        "paths", type=Path, nargs="+", help="DICOM files, or folders searched recursively"
    )
    send.add_argument("--host", default="127.0.0.1", help="address of the DICOM node")
    send.add_argument("--port", type=int, default=11112, help="port of the DICOM node")
    send.add_argument("--aet", default="RADROUTER", help="called AE title")
    send.add_argument("--calling-aet", default="RADROUTER_SCU", help="calling AE title")
    send.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the node to answer"
    )
    send.add_argument("--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=cmd_send)

    status = command(
        "status",
        "studies, jobs, dispatches and deliveries by state; failed, dead-lettered and "
        "pending items with their attempts and last error",
        "\n" + STATUS_SOURCES,
    )
    with_source(status)
    status.add_argument(
        "--limit",
        type=_api_limit,
        default=20,
        metavar="N",
        help="items listed per section, the newest",
    )
    status.set_defaults(func=cmd_status)

    usage = command(
        "usage",
        "what each algorithm processed: studies, series and runs per month, algorithm, source "
        "(calling AE and usage.sites name), clinical or QA, and outcome",
        "\n" + STATUS_SOURCES,
    )
    with_source(usage)
    usage.add_argument("--month", metavar="YYYY-MM", help="one month (default: every month)")
    usage.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    usage.set_defaults(func=cmd_usage)

    drift = command(
        "drift",
        "each algorithm's drift against its baseline (inputs: scanner model, kernel, kVp, slice "
        "thickness, pixel spacing, not-assessed rate; outputs: positive rate, probabilities, "
        "readers' agreement), or record the baseline (drift baseline ALGORITHM)",
        "\n\nradrouter drift [status [ALGORITHM]]: the state of each algorithm and feature."
        "\nradrouter drift baseline ALGORITHM [--days N | --since DATE [--until DATE]]: record"
        "\nthe results of the period (default: the last 30 days) as ALGORITHM's baseline, at"
        "\ngo-live (docs/operations.md).\n" + STATUS_SOURCES,
    )
    with_source(drift)
    drift.add_argument(
        "action", nargs="?", choices=["status", "baseline"], default="status", help="what to do"
    )
    drift.add_argument("algorithm", nargs="?", help="the algorithm (default for status: all)")
    drift.add_argument("--json", action="store_true", help="status: print the API's JSON")
    period = drift.add_mutually_exclusive_group()
    period.add_argument(
        "--days",
        type=float,
        metavar="N",
        help="baseline: the last N days (default: 30 when no --since)",
    )
    period.add_argument(
        "--since",
        type=_drift_when,
        metavar="DATE",
        help="baseline: from this date, YYYY-MM-DD or YYYY-MM-DDTHH:MM, local time "
        "(default: --days back from --until)",
    )
    drift.add_argument(
        "--until", type=_drift_when, metavar="DATE", help="baseline: up to this date (default: now)"
    )
    drift.set_defaults(func=cmd_drift)

    retry = command(
        "retry",
        "requeue a failed job or dead-lettered dispatch or delivery (fresh retry budget)",
        "\n" + STATUS_SOURCES,
    )
    with_source(retry)
    retry.add_argument("--job", type=int, metavar="ID", help="a failed job (default: none)")
    retry.add_argument(
        "--dispatch",
        type=int,
        metavar="ID",
        help="a dead-lettered C-STORE dispatch (default: none)",
    )
    retry.add_argument(
        "--delivery",
        type=int,
        metavar="ID",
        help="a dead-lettered HL7/FHIR delivery (default: none)",
    )
    retry.add_argument(
        "--all-dead", action="store_true", help="every dead-lettered dispatch and delivery"
    )
    retry.add_argument("--quiet", action="store_true", help="no progress bar")
    retry.set_defaults(func=cmd_retry)

    demo = command("demo-study", "write a synthetic chest CT (with a nodule)")
    demo.add_argument("out", type=Path, help="folder for the DICOM files")
    demo.add_argument(
        "--seed",
        type=int,
        default=1,
        help="patient, anatomy and UIDs (another seed: another study)",
    )
    demo.add_argument("--slices", type=int, default=120, help="number of slices")
    demo.add_argument("--size", type=int, default=384, help="rows and columns (0.8 mm pixels)")
    demo.add_argument("--slice-spacing", type=float, default=2.0, help="mm between slices")
    demo.add_argument("--nodule-mm", type=float, default=12.0, help="diameter; 0: no nodule")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo_study)

    default = command("print-default-config", "print the shipped routing YAML")
    default.set_defaults(func=cmd_print_default_config)

    audit = command(
        "audit",
        "read the audit trail: who touched a study, what a user did",
        "\n\nOne line per DICOM audit message of the local log matching every criterion given"
        "\n(time in UTC, action, event, who asked, study, outcome). --verify checks that no"
        "\nclosed log file changed since the next one was begun (the SHA-256 chain).",
    )
    with_config(audit, "the router's data folder, whose audit/ folder is read")
    audit.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="the audit log folder (default: the config's audit.dir, else audit/ in the data "
        "folder)",
    )
    audit.add_argument(
        "--study", metavar="UID", help="messages naming this study: who saw it (default: any)"
    )
    audit.add_argument(
        "--user", metavar="NAME", help="messages this user (or AE title) asked for (default: any)"
    )
    audit.add_argument(
        "--patient", metavar="ID", help="messages naming this patient ID (default: any)"
    )
    audit.add_argument(
        "--since",
        type=_audit_time(end_of_day=False),
        metavar="WHEN",
        help="from this date or time, e.g. 2026-05-01 or 2026-05-01T14:30 (default: the start)",
    )
    audit.add_argument(
        "--until",
        type=_audit_time(end_of_day=True),
        metavar="WHEN",
        help="up to this date (all of it) or time (default: now)",
    )
    audit.add_argument(
        "--verify", action="store_true", help="check the chain of log files; exit 1 if broken"
    )
    audit.set_defaults(func=cmd_audit)

    api_key = command(
        "api-key",
        "make, list or revoke API keys for machines that call the HTTP API",
        "\n\nThe keys file (http.auth.api_keys_file) holds only salted hashes: a new key is"
        "\nprinted once, on standard output. The router reads the file again when it changes.",
    )
    api_key_actions = api_key.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, summary in (
        ("create", "make a key, print it once and store its hash"),
        ("list", "list the keys: id, name, role, when made"),
        ("revoke", "remove a key (by name or id)"),
    ):
        sub_command = api_key_actions.add_parser(
            action,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            formatter_class=HelpFormatter,
        )
        where = sub_command.add_mutually_exclusive_group()
        where.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help=f"routing YAML naming the keys file (default: ${CONFIG_ENV} if set, else the "
            "shipped config)",
        )
        where.add_argument(
            "--file", type=Path, metavar="FILE", help="the keys file itself (default: the config's)"
        )
        if action == "create":
            sub_command.add_argument(
                "--name", required=True, help="who uses the key, e.g. ris-bridge (unique)"
            )
            sub_command.add_argument(
                "--role",
                required=True,
                choices=["viewer", "radiologist", "admin"],
                help="what the key may do",
            )
        if action == "revoke":
            sub_command.add_argument("key", metavar="NAME_OR_ID", help="the key to remove")
        sub_command.set_defaults(func=cmd_api_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from router.logs import configure_logging

    configure_logging(verbose=args.verbose)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
