"""The roles a radrouter process can take (``radrouter serve --role``): ``all`` is the whole
router in one process; the others are its parts, to run as separate processes on one host or
several, sharing one PostgreSQL database and one spool (docs/scaling.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

Role = Literal["all", "receiver", "worker", "dispatcher", "api"]
ROLES: tuple[Role, ...] = get_args(Role)


@dataclass(frozen=True)
class RoleParts:
    node: bool
    """The DICOM node: takes instances into the spool and the database."""
    workers: bool
    """The workers (jobs of the algorithms this process loaded) and the prior stage."""
    coordinator: bool
    """Study completion and planning, external answers, dispatch, worklist notifications,
    destination probes, retention; the audit log's forwarding to syslog."""
    http: bool
    """The HTTP API, admin and worklist pages."""


PARTS: dict[Role, RoleParts] = {
    "all": RoleParts(node=True, workers=True, coordinator=True, http=True),
    "receiver": RoleParts(node=True, workers=False, coordinator=False, http=False),
    "worker": RoleParts(node=False, workers=True, coordinator=False, http=False),
    "dispatcher": RoleParts(node=False, workers=False, coordinator=True, http=False),
    "api": RoleParts(node=False, workers=False, coordinator=False, http=True),
}


def process_name(role: Role, index: int, host: str) -> str:
    """How this process names itself in the shared data folder and the database: "" for the
    whole router, else ``HOST-ROLE<index>`` (unique across hosts sharing one spool)."""
    if role == "all":
        return ""
    safe_host = re.sub(r"[^A-Za-z0-9.\-]", "", host)[:64] or "host"
    return f"{safe_host}-{role}{index}"
