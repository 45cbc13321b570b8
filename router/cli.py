"""The ``radrouter`` command: serve, check-config, send, status, retry, demo-study."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from config.loader import (
    ConfigError,
    LoadedConfig,
    default_config_path,
    read_config,
    read_default_config,
)
from config.schema import RouterConfig

if TYPE_CHECKING:
    from router.store.database import Database

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
    from router.service import RouterService

    config_path = _config_path(args)
    try:
        loaded = _read(config_path)
    except ConfigError as exc:
        print(f"config rejected:\n{exc}", file=sys.stderr)
        return 2
    config = loaded.config
    LOGGER.info("config: %s", config_path or f"shipped default ({default_config_path()})")
    service = RouterService(config, config_path, data_dir=args.data_dir)
    from config.loader import check_algorithms
    from router.route.check_config import check_attribute_names

    problems = check_algorithms(loaded.document, service.registry.names())
    problems += check_attribute_names(loaded.document)
    if problems:
        print("config rejected:\n" + "\n".join(str(p) for p in problems), file=sys.stderr)
        for plugin in service.registry.problems:
            print(f"  algorithm {plugin.name!r} could not be used: {plugin.error}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    service.start()
    LOGGER.info(
        "radrouter ready: DICOM %s on port %d, HTTP on port %s, data in %s",
        config.node.ae_title,
        service.node.port,
        service.http_port,
        service.data_dir,
    )
    stopped.wait()
    LOGGER.info("stopping")
    service.stop()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from algorithms.registry import Registry
    from router.route.check_config import run_check

    outcome = run_check(
        args.file,
        Registry.discover().names(),
        against=args.against,
        calling_ae=args.calling_ae,
        called_ae=args.called_ae,
    )
    print(outcome.text, end="" if outcome.text.endswith("\n") else "\n")
    return outcome.exit_code


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


def _database(args: argparse.Namespace) -> Database | None:
    """The router's database, found as ``serve`` finds it; None (with the reason printed)
    when there is none there: a command run from the wrong folder must not make an empty one."""
    from router.store.database import Database

    config = _load(_config_path(args))
    data_dir = (args.data_dir or config.storage.data_dir).resolve()
    path = data_dir / "radrouter.sqlite3"
    if not path.is_file():
        print(
            f"no radrouter database at {path}: give the router's --data-dir (or its --config)",
            file=sys.stderr,
        )
        return None
    return Database(path)


def cmd_status(args: argparse.Namespace) -> int:
    db = _database(args)
    if db is None:
        return 2
    for table in ("studies", "jobs", "dispatches", "deliveries"):
        counts = db.query(f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state ORDER BY state")
        summary = ", ".join(f"{r['state']} {r['n']}" for r in counts) or "none"
        print(f"{table:<11} {summary}")
    dead = db.query(
        "SELECT id, study_uid, destination, attempts, last_error FROM dispatches "
        "WHERE state = 'dead' ORDER BY id"
    )
    failed = db.query(
        "SELECT id, study_uid, algorithm, attempts, error FROM jobs WHERE state = 'failed' ORDER BY id"
    )
    if dead:
        print(
            "\ndead-lettered dispatches (retry with: radrouter retry --dispatch ID | --all-dead):"
        )
        for r in dead:
            print(
                f"  #{r['id']} study {r['study_uid']} -> {r['destination']} "
                f"after {r['attempts']} attempts: {r['last_error']}"
            )
    dead_deliveries = db.query(
        "SELECT id, study_uid, channel, attempts, last_error FROM deliveries "
        "WHERE state = 'dead' ORDER BY id"
    )
    if dead_deliveries:
        print(
            "\ndead-lettered worklist deliveries "
            "(retry with: radrouter retry --delivery ID | --all-dead):"
        )
        for r in dead_deliveries:
            print(
                f"  #{r['id']} study {r['study_uid']} via {r['channel']} "
                f"after {r['attempts']} attempts: {r['last_error']}"
            )
    if failed:
        print("\nfailed jobs (retry with: radrouter retry --job ID):")
        for r in failed:
            print(
                f"  #{r['id']} study {r['study_uid']} {r['algorithm']} "
                f"after {r['attempts']} attempts: {r['error']}"
            )
    recent = db.query(
        "SELECT study_uid, state, completion_reason FROM studies ORDER BY last_received_at DESC LIMIT 10"
    )
    if recent:
        print("\nrecent studies:")
        for r in recent:
            print(f"  {r['study_uid']}  {r['state']}  ({r['completion_reason'] or '-'})")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from router.assemble.study_state import reopen_study
    from router.deliver.dispatch import DISPATCHES
    from router.deliver.notify import DELIVERIES
    from router.run.job_queue import JOBS
    from router.store.queue import QueueTable, requeue_dead

    wanted: list[tuple[QueueTable, int | None, str]] = []
    if args.job is not None:
        wanted.append((JOBS, args.job, f"job {args.job} is not failed"))
    if args.dispatch is not None or args.all_dead:
        item = None if args.all_dead else args.dispatch
        wanted.append((DISPATCHES, item, f"dispatch {item} is not dead-lettered"))
    if args.delivery is not None or args.all_dead:
        item = None if args.all_dead else args.delivery
        wanted.append((DELIVERIES, item, f"delivery {item} is not dead-lettered"))
    if not wanted:
        print(
            "say what to retry: --job ID, --dispatch ID, --delivery ID or --all-dead",
            file=sys.stderr,
        )
        return 2
    db = _database(args)
    if db is None:
        return 2
    count = 0
    for table, item, not_there in wanted:
        requeued = len(requeue_dead(db, table, item, reopen_study))
        if item is not None and not requeued:
            print(f"nothing requeued: {not_there} (see radrouter status)", file=sys.stderr)
        count += requeued
    if args.all_dead and not count:
        print("nothing requeued: no dead letters", file=sys.stderr)
    print(f"requeued {count}")
    return 0 if count else 1


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radrouter", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            type=Path,
            help=f"routing YAML (default: ${CONFIG_ENV}, else the shipped config)",
        )
        p.add_argument("--data-dir", type=Path, help="spool and database folder")

    serve = sub.add_parser("serve", help="run the DICOM node, pipeline and HTTP API")
    serve.add_argument(
        "--config",
        type=Path,
        help=f"routing YAML (default: ${CONFIG_ENV} if set, else the shipped config)",
    )
    serve.add_argument("--data-dir", type=Path, help="spool and database folder")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a routing YAML (and dry-run it)")
    check.add_argument("file", type=Path)
    check.add_argument("--against", type=Path, help="folder of DICOM files to dry-run rules on")
    check.add_argument("--calling-ae", default="DRYRUN", help="calling AE for the dry run")
    check.add_argument("--called-ae", help="called AE for the dry run (default: the node's)")
    check.set_defaults(func=cmd_check_config)

    send = sub.add_parser("send", help="C-STORE files or folders to a DICOM node")
    send.add_argument("paths", type=Path, nargs="+")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=11112)
    send.add_argument("--aet", default="RADROUTER", help="called AE title")
    send.add_argument("--calling-aet", default="RADROUTER_SCU")
    send.add_argument("--timeout", type=float, default=30.0)
    send.add_argument("--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=cmd_send)

    status = sub.add_parser("status", help="studies, jobs, dispatches and dead letters")
    with_config(status)
    status.set_defaults(func=cmd_status)

    retry = sub.add_parser("retry", help="requeue a failed job or dead-lettered dispatch")
    with_config(retry)
    retry.add_argument("--job", type=int, help="a failed job (fresh retry budget)")
    retry.add_argument("--dispatch", type=int, help="a dead-lettered C-STORE dispatch")
    retry.add_argument("--delivery", type=int, help="a dead-lettered HL7/FHIR delivery")
    retry.add_argument(
        "--all-dead", action="store_true", help="every dead-lettered dispatch and delivery"
    )
    retry.set_defaults(func=cmd_retry)

    demo = sub.add_parser("demo-study", help="write a synthetic chest CT (with a nodule)")
    demo.add_argument("out", type=Path, help="folder for the DICOM files")
    demo.add_argument(
        "--seed",
        type=int,
        default=1,
        help="patient, anatomy and UIDs (another seed: another study)",
    )
    demo.add_argument("--slices", type=int, default=120)
    demo.add_argument("--size", type=int, default=384, help="rows and columns (0.8 mm pixels)")
    demo.add_argument("--slice-spacing", type=float, default=2.0, help="mm")
    demo.add_argument("--nodule-mm", type=float, default=12.0, help="diameter; 0: no nodule")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo_study)

    default = sub.add_parser("print-default-config", help="print the shipped routing YAML")
    default.set_defaults(func=cmd_print_default_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
