"""The audit trail of a router, made from its configuration (and the pieces the command line
uses to append to the same log)."""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from config.schema import AuditConfig, RouterConfig
from router.audit.compose import Composer, LocalNode
from router.audit.events import Actor, QueueKind, RetryRequested
from router.audit.log import AuditLog
from router.audit.messages import AuditSource
from router.audit.subjects import SpoolSubjects, no_subjects
from router.audit.syslog import SyslogForwarder, SyslogTarget
from router.audit.trail import AuditTrail
from router.store.database import Database

CURSOR_NAME = "syslog.cursor"


def audit_folder(audit: AuditConfig, data_dir: Path) -> Path:
    """``audit.dir``, else ``audit`` in the data folder."""
    return (audit.dir if audit.dir is not None else data_dir / "audit").resolve()


def host_name() -> str:
    return socket.getfqdn() or socket.gethostname() or "localhost"


def process_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def command_line_actor() -> Actor:
    """The person running a ``radrouter`` command on this machine."""
    return Actor(process_user(), (), host_name())


def local_node(config: RouterConfig) -> LocalNode:
    audit = config.audit
    return LocalNode(
        ae_title=config.node.ae_title,
        host=host_name(),
        source=AuditSource(
            source_id=audit.source_id or config.node.ae_title,
            site_id=audit.enterprise_site_id,
        ),
        process_user=process_user(),
        pid=os.getpid(),
    )


def study_of_item(db: Database) -> Callable[[QueueKind, int], str | None]:
    def lookup(queue: QueueKind, item_id: int) -> str | None:
        row = db.query_one(f"SELECT study_uid FROM {queue.value} WHERE id = ?", (item_id,))
        return None if row is None else str(row["study_uid"])

    return lookup


def open_log(folder: Path, composer: Composer, max_file_mb: float) -> AuditLog:
    def first_line(previous: str | None, sha256: str | None) -> bytes:
        return composer.log_started(time.time(), previous, sha256).to_xml()

    return AuditLog(folder, max(1, int(max_file_mb * 2**20)), first_line)


def build_trail(config: RouterConfig, data_dir: Path, db: Database) -> AuditTrail | None:
    """The router's trail, or None when ``audit.enabled`` is false."""
    audit = config.audit
    if not audit.enabled:
        return None
    composer = Composer(local_node(config), SpoolSubjects(db), study_of_item(db))
    folder = audit_folder(audit, data_dir)
    log = open_log(folder, composer, audit.max_file_mb)
    forwarder = None
    if audit.syslog is not None:
        syslog = audit.syslog
        forwarder = SyslogForwarder(
            log,
            SyslogTarget(
                host=syslog.host,
                port=syslog.port,
                transport=syslog.transport,
                ca_file=syslog.ca_file,
                cert_file=syslog.cert_file,
                key_file=syslog.key_file,
                server_name=syslog.server_name,
                timeout_s=syslog.timeout_s,
            ),
            folder / CURSOR_NAME,
            hostname=composer.node.host,
            retry_max_s=syslog.retry_max_s,
        )
    return AuditTrail(log, composer, forwarder=forwarder, repeat_window_s=audit.repeat_window_s)


def command_line_log(config: RouterConfig, folder: Path) -> tuple[AuditLog, Composer]:
    """The log in ``folder`` and a composer, for a command that appends to it itself."""
    composer = Composer(local_node(config), no_subjects, lambda _queue, _id: None)
    return open_log(folder, composer, config.audit.max_file_mb), composer


def record_command_line_retry(
    config: RouterConfig,
    data_dir: Path,
    db: Database,
    queue: QueueKind,
    item_id: int | None,
    requeued: int,
) -> None:
    """For ``radrouter retry`` on the database file (no router answering, so no API to
    record it): the Procedure Record of the retry, appended by the command itself as the user
    running it. Raises OSError when the log cannot be written."""
    if not config.audit.enabled:
        return
    composer = Composer(local_node(config), SpoolSubjects(db), study_of_item(db))
    log = open_log(audit_folder(config.audit, data_dir), composer, config.audit.max_file_mb)
    event = RetryRequested(command_line_actor(), queue, item_id, requeued)
    log.append([message.to_xml() for message in composer.compose(event)], rotate=False)
