"""What ``radrouter status`` and ``retry`` read and requeue, from the database file or through a
running router's HTTP API: both sources hand over the same rows, so the listing is the same."""

from __future__ import annotations

import datetime
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests

from router.store.database import Database
from router.store.nodes import live_nodes
from router.usage import UsageRow, read_usage, usage_from_dicts

__all__ = [
    "SECTIONS",
    "ApiSource",
    "DatabaseSource",
    "QueueItem",
    "RouterStatus",
    "Section",
    "Source",
    "SourceError",
    "StudyLine",
    "format_status",
    "read_status",
    "router_answers",
]

COUNTED_TABLES = ("studies", "jobs", "dispatches", "deliveries")
"""The tables whose rows ``status`` counts by state (the router's ``radrouter_<table>`` gauges)."""
API_PAGE = 1000
"""The most rows one API listing returns (``router.api.app``)."""
RECENT_STUDIES = 10
ERROR_CHARS = 300
"""A last error is shown on one line, cut after this many characters."""


class SourceError(Exception):
    """The source could not be read (a router that stopped answering, a refused request)."""


@dataclass(frozen=True)
class Section:
    """How one work queue's items are listed. The states are those of the queue's
    ``QueueTable`` (a test checks they agree); importing the stages for them would cost
    ``status`` seconds."""

    table: str
    noun: str
    dead: str
    pending: tuple[str, ...]
    target_column: str
    target_format: str
    error_column: str
    dead_title: str
    pending_title: str


READY_STATES = frozenset({"queued", "pending"})
"""The states in which an item waits for its turn (``QueueTable.ready`` of every queue)."""

SECTIONS = (
    Section(
        "jobs",
        "job",
        "failed",
        ("waiting", "queued", "running"),
        "algorithm",
        "{}",
        "error",
        "failed jobs (retry with: radrouter retry --job ID)",
        "pending jobs",
    ),
    Section(
        "dispatches",
        "dispatch",
        "dead",
        ("pending", "sending"),
        "destination",
        "-> {}",
        "last_error",
        "dead-lettered dispatches (retry with: radrouter retry --dispatch ID | --all-dead)",
        "pending dispatches",
    ),
    Section(
        "deliveries",
        "delivery",
        "dead",
        ("pending", "sending"),
        "channel",
        "via {}",
        "last_error",
        "dead-lettered worklist deliveries (retry with: radrouter retry --delivery ID | "
        "--all-dead)",
        "pending worklist deliveries",
    ),
)


@dataclass(frozen=True)
class QueueItem:
    """One pending or dead work item, as ``status`` lists it."""

    id: int
    study_uid: str
    target: str
    """The algorithm, destination or channel."""
    state: str
    attempts: int
    max_attempts: int | None
    """Jobs carry their budget; dispatches and deliveries take theirs from the config."""
    last_error: str
    not_before: float = 0.0
    """When a waiting item's next attempt is due (0: as soon as it is its turn)."""

    @classmethod
    def from_row(cls, section: Section, row: Mapping[str, Any]) -> QueueItem:
        budget = row.get("max_attempts")
        return cls(
            id=int(row["id"]),
            study_uid=str(row["study_uid"]),
            target=str(row[section.target_column]),
            state=str(row["state"]),
            attempts=int(row["attempts"]),
            max_attempts=None if budget is None else int(budget),
            last_error=str(row[section.error_column] or ""),
            not_before=float(row.get("not_before") or 0.0),
        )


@dataclass(frozen=True)
class StudyLine:
    study_uid: str
    state: str
    completion_reason: str


@dataclass(frozen=True)
class RouterStatus:
    """What ``radrouter status`` shows: rows by state, then per queue its dead and pending
    items (the newest ``limit`` of each), then the most recent studies."""

    counts: Mapping[str, Mapping[str, int]]
    dead: Mapping[str, tuple[QueueItem, ...]]
    pending: Mapping[str, tuple[QueueItem, ...]]
    recent: tuple[StudyLine, ...]
    nodes: tuple[dict[str, Any], ...] = ()


class Source(Protocol):
    """Where ``status`` and ``retry`` get the router's state."""

    @property
    def description(self) -> str:
        """One line: ``database /var/radrouter/radrouter.sqlite3``."""
        ...

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows of each of ``COUNTED_TABLES`` by state."""
        ...

    def rows(self, table: str, states: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` rows of ``table`` in one of ``states``, newest first."""
        ...

    def recent_studies(self, limit: int) -> list[dict[str, Any]]:
        """The studies last received, most recent first."""
        ...

    def requeue(self, table: str, item_id: int | None) -> int:
        """Requeue one dead item of ``table`` (``item_id``) or all of them (None); returns how
        many were requeued (0 when ``item_id`` is not dead)."""
        ...

    def usage(self, month: str | None) -> list[UsageRow]:
        """Finished runs per month, algorithm, source, kind and outcome (``router.usage``)."""
        ...

    def nodes(self) -> list[dict[str, Any]]:
        """The live nodes of the deployment (``router.store.nodes``), as ``/readyz`` lists them."""
        ...


def read_status(source: Source, limit: int) -> RouterStatus:
    counts = source.counts()
    dead: dict[str, tuple[QueueItem, ...]] = {}
    pending: dict[str, tuple[QueueItem, ...]] = {}
    for section in SECTIONS:
        for into, states in ((dead, (section.dead,)), (pending, section.pending)):
            rows = source.rows(section.table, states, limit)
            into[section.table] = tuple(QueueItem.from_row(section, row) for row in rows)
    recent = tuple(
        StudyLine(str(r["study_uid"]), str(r["state"]), str(r["completion_reason"] or "-"))
        for r in source.recent_studies(RECENT_STUDIES)
    )
    return RouterStatus(counts, dead, pending, recent, tuple(source.nodes()))


def format_status(status: RouterStatus) -> str:
    lines: list[str] = []
    if status.nodes:
        lines.append("nodes:")
        lines.extend(_node_line(node) for node in status.nodes)
        lines.append("")
    for table in COUNTED_TABLES:
        by_state = status.counts.get(table, {})
        summary = ", ".join(f"{state} {n}" for state, n in sorted(by_state.items()) if n)
        lines.append(f"{table:<11} {summary or 'none'}")
    for section in SECTIONS:
        counts = status.counts.get(section.table, {})
        for title, items, states in (
            (section.dead_title, status.dead[section.table], (section.dead,)),
            (section.pending_title, status.pending[section.table], section.pending),
        ):
            if not items:
                continue
            lines.append("")
            lines.append(f"{title}:")
            lines.extend(_item_line(section, item) for item in sorted(items, key=_by_id))
            more = sum(counts.get(state, 0) for state in states) - len(items)
            if more > 0:
                lines.append(f"  ... and {more} more (radrouter status --limit N shows more)")
    if status.recent:
        lines.append("")
        lines.append("recent studies:")
        lines.extend(f"  {s.study_uid}  {s.state}  ({s.completion_reason})" for s in status.recent)
    return "\n".join(lines) + "\n"


def _node_line(node: Mapping[str, Any]) -> str:
    """``  worker    gpu-01  pid 4242  lung_nodule (cuda), pe (cuda)`` (every node listed
    was heard from in the last ``router.store.nodes.LIVE_S``; /readyz says when)."""
    devices = node.get("devices") or {}
    algorithms = ", ".join(
        f"{name} ({devices[name]})" if name in devices else str(name)
        for name in node.get("algorithms") or ()
    )
    idle = [
        f"{n} ({d}, not claimed)"
        for n, d in devices.items()
        if n not in (node.get("algorithms") or ())
    ]
    loaded = ", ".join(x for x in (algorithms, ", ".join(idle)) if x) or "-"
    return (
        f"  {node.get('role', '?'):<10} {node.get('host', '?'):<20} pid {node.get('pid', '?'):<7} "
        f"{loaded}"
    )


def _by_id(item: QueueItem) -> int:
    return item.id


def _item_line(section: Section, item: QueueItem) -> str:
    target = section.target_format.format(item.target)
    state = "" if item.state == section.dead else f"{item.state}, "
    if item.max_attempts is not None:
        attempts = f"{item.attempts} of {item.max_attempts} attempts"
    else:
        attempts = f"{item.attempts} attempt{'s' if item.attempts != 1 else ''}"
    error = " ".join(item.last_error.split()) or "(none)"
    if len(error) > ERROR_CHARS:
        error = error[: ERROR_CHARS - 3] + "..."
    line = f"  #{item.id} study {item.study_uid} {target}: {state}{attempts}, last error: {error}"
    if item.state in READY_STATES and item.not_before > 0:
        due = datetime.datetime.fromtimestamp(item.not_before).strftime("%Y-%m-%d %H:%M:%S")
        line += f", next attempt at {due}"
    return line


# --------------------------------------------------------------------------------------------
# The database file


@dataclass(frozen=True)
class DatabaseSource:
    """The router's SQLite file, read (and requeued) directly; safe while a router runs (WAL),
    whose stages then find requeued items at their next poll."""

    db: Database
    sites: Mapping[str, str] = field(default_factory=dict)
    """``usage.sites`` of the config, when the command read one."""

    @property
    def description(self) -> str:
        return f"database {self.db.describe()}"

    def usage(self, month: str | None) -> list[UsageRow]:
        try:
            return read_usage(self.db, self.sites, month)
        except ValueError as exc:
            raise SourceError(str(exc)) from None

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            table: {
                str(r["state"]): int(r["n"])
                for r in self.db.query(f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state")
            }
            for table in COUNTED_TABLES
        }

    def rows(self, table: str, states: Sequence[str], limit: int) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(states))
        sql = f"SELECT * FROM {table} WHERE state IN ({marks}) ORDER BY id DESC LIMIT ?"
        return [dict(row) for row in self.db.query(sql, (*states, limit))]

    def recent_studies(self, limit: int) -> list[dict[str, Any]]:
        sql = "SELECT * FROM studies ORDER BY last_received_at DESC LIMIT ?"
        return [dict(row) for row in self.db.query(sql, (limit,))]

    def nodes(self) -> list[dict[str, Any]]:
        now = time.time()
        return [node.to_json(now) for node in live_nodes(self.db, now)]

    def requeue(self, table: str, item_id: int | None) -> int:
        from router.assemble.study_state import reopen_study
        from router.deliver.dispatch import DISPATCHES
        from router.deliver.notify import DELIVERIES
        from router.run.job_queue import JOBS
        from router.store.queue import requeue_dead

        queue = {JOBS.name: JOBS, DISPATCHES.name: DISPATCHES, DELIVERIES.name: DELIVERIES}
        return len(requeue_dead(self.db, queue[table], item_id, reopen_study))


# --------------------------------------------------------------------------------------------
# A running router's HTTP API


API_KEY_ENV = "RADROUTER_API_KEY"
API_KEY_FILE_ENV = "RADROUTER_API_KEY_FILE"


def api_key_from_environment(environ: Mapping[str, str] = os.environ) -> str:
    """The API key ``status`` and ``retry`` present to a router with authentication on
    (``radrouter api-key create``): ``$RADROUTER_API_KEY``, else the first line of the file
    ``$RADROUTER_API_KEY_FILE``; "" for none. Never from the command line (it would show in
    the process list)."""
    key = environ.get(API_KEY_ENV, "").strip()
    if key:
        return key
    path = environ.get(API_KEY_FILE_ENV, "").strip()
    if not path:
        return ""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return lines[0].strip() if lines else ""


def router_answers(url: str, timeout_s: float = 3.0, *, trust_env: bool = True) -> bool:
    """Whether a radrouter answers ``GET /healthz`` at ``url``."""
    with requests.Session() as session:
        session.trust_env = trust_env
        try:
            response = session.get(f"{url.rstrip('/')}/healthz", timeout=timeout_s)
            return response.status_code == 200 and response.json().get("status") == "ok"
        except (requests.RequestException, ValueError, AttributeError):
            return False


class ApiSource:
    """A running router, through the endpoints of ``router.api.app``: ``/metrics`` for the
    counts (its ``radrouter_<table>`` gauges), ``/jobs``, ``/dispatches``, ``/deliveries``
    and ``/studies`` for the rows, ``POST /<table>/<id>/retry`` to requeue."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        *,
        trust_env: bool = True,
        progress: Callable[[int, int], object] | None = None,
    ) -> None:
        """``trust_env``: use the environment's proxies (off for an address taken from the
        config, which is the router's own). ``progress(done, total)`` is called after each
        item a bulk requeue retries (one request per item)."""
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.progress = progress
        self._session = requests.Session()
        self._session.trust_env = trust_env
        key = api_key_from_environment()
        if key:
            self._session.headers["X-API-Key"] = key

    @property
    def description(self) -> str:
        return f"router API at {self.url}"

    def counts(self) -> dict[str, dict[str, int]]:
        from prometheus_client.parser import text_string_to_metric_families

        text = self._call("GET", "/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        counts: dict[str, dict[str, int]] = {}
        for table in COUNTED_TABLES:
            family = families.get(f"radrouter_{table}")
            if family is None:
                raise SourceError(f"{self.url}/metrics has no radrouter_{table} gauge")
            counts[table] = {
                str(sample.labels["state"]): int(sample.value)
                for sample in family.samples
                if "state" in sample.labels and not math.isnan(sample.value)
            }
        return counts

    def rows(self, table: str, states: Sequence[str], limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for state in states:
            rows.extend(self._list(f"/{table}", {"state": state, "limit": limit}))
        return sorted(rows, key=lambda row: -int(row["id"]))[:limit]

    def recent_studies(self, limit: int) -> list[dict[str, Any]]:
        return self._list("/studies", {"limit": limit})

    def usage(self, month: str | None) -> list[UsageRow]:
        params = {} if month is None else {"month": month}
        body = self._call("GET", "/api/usage", params=params, accept=(200, 400)).json()
        if not isinstance(body, list):
            raise SourceError(f"{self.url}/api/usage: {body.get('detail', 'not a list')}")
        return usage_from_dicts(body)

    def requeue(self, table: str, item_id: int | None) -> int:
        if item_id is not None:
            return int(self._retry(table, item_id))
        # The API has no bulk retry: take the dead letters a page at a time.
        state = next(section.dead for section in SECTIONS if section.table == table)
        count = done = 0
        while True:
            dead = [int(row["id"]) for row in self._list(f"/{table}", {"state": state})]
            total, requeued = done + len(dead), 0
            for dead_id in dead:
                requeued += self._retry(table, dead_id)
                done += 1
                if self.progress is not None:
                    self.progress(done, total)
            count += requeued
            if len(dead) < API_PAGE or not requeued:
                return count

    def nodes(self) -> list[dict[str, Any]]:
        body = self._call("GET", "/readyz", accept=(200, 503)).json()
        detail = body.get("detail", body) if isinstance(body, dict) else {}
        nodes = detail.get("nodes", []) if isinstance(detail, dict) else []
        return [node for node in nodes if isinstance(node, dict)]

    def _retry(self, table: str, item_id: int) -> bool:
        response = self._call("POST", f"/{table}/{item_id}/retry", accept=(200, 404, 409))
        return response.status_code == 200

    def _list(self, path: str, params: Mapping[str, str | int]) -> list[dict[str, Any]]:
        page = {"limit": API_PAGE, **params}
        body = self._call("GET", path, params=page).json()
        if not isinstance(body, list):
            raise SourceError(f"{self.url}{path} did not answer with a list")
        return [dict(row) for row in body]

    def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None = None,
        accept: tuple[int, ...] = (200,),
    ) -> requests.Response:
        try:
            response = self._session.request(
                method, f"{self.url}{path}", params=dict(params or {}), timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise SourceError(f"the router at {self.url} did not answer: {exc}") from exc
        if response.status_code not in accept:
            detail = _detail(response)
            raise SourceError(f"{method} {self.url}{path} answered {response.status_code}{detail}")
        return response


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:  # not JSON
        return ""
    return f": {body.get('detail')}" if isinstance(body, dict) and "detail" in body else ""
