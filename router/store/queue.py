"""One durable work queue for every hand-off that is work: jobs, prior requests, dispatches and
worklist deliveries.

An item is enqueued inside the caller's transaction (so it exists exactly when the state that
asked for it does), claimed by a named claimer with a lease, kept alive by heartbeats while it
is worked on (``LeaseKeeper``), and then completed, failed (retried with back-off until its
budget is spent, then dead-lettered: kept and visible, requeued by hand) or given back.

Completion and failure are fenced by the claim: they apply only while the claimer still holds
the item, so work whose lease was taken over cannot be finished twice.

One rule for interrupted work: an attempt that was under way when its claimer vanished
(process killed, host lost) counts as an attempt — the item itself may be what killed it, and
a budget that interruptions do not spend would let one such item crash the router forever —
and the item goes back to its queue at once, or to the dead letters when that was its last
attempt. A node finds its own interrupted items when it starts again (they carry its node id
and an older boot id); any node finds anyone's once their lease has expired. A claimer that
stops on purpose gives its items back, and then the attempt does not count.

``SqlWorkQueue`` implements ``WorkQueue`` on either engine (SQLite, PostgreSQL).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router.store.database import Connection, Database, Row

LOGGER = logging.getLogger(__name__)

DEFAULT_LEASE_S = 60.0
"""How long a claim holds without a heartbeat; heartbeats come every third of it."""
INTERRUPTED = "interrupted: the process working on it stopped before it finished"


@dataclass(frozen=True)
class QueueTable:
    """How one table holds its items. Names are identifiers written in this code (never input);
    every table has ``id, study_uid, state, attempts, not_before, created_at, finished_at,
    claimed_by, lease_until`` and an error column."""

    name: str
    ready: str
    claimed: str
    done: str
    dead: str
    error_column: str = "last_error"
    order_by: str = "not_before, id"
    started_column: str | None = None
    """Set to the claim time at each claim (jobs: ``started_at``)."""


class RetryBudget(Protocol):
    """How many attempts an item gets and how long to wait after the n-th failed one
    (``config.schema.RetryPolicy`` is one)."""

    @property
    def max_attempts(self) -> int: ...

    def delay_s(self, attempts: int) -> float: ...


@dataclass(frozen=True)
class Claimer:
    """Who claims: a node (stable across restarts, one per data folder) in one of its boots."""

    node_id: str
    boot_id: str

    @classmethod
    def for_data_dir(cls, data_dir: Path, process: str = "") -> Claimer:
        """This node's id, kept in ``data_dir/node-id`` (made on first start), and a new boot.
        ``process`` names one process of several sharing the data folder (``roles``): it
        becomes part of the id, so one process never takes another's claims for its own."""
        path = data_dir / "node-id"
        try:
            node_id = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            node_id = ""
        if not node_id.isalnum():
            node_id = uuid.uuid4().hex[:16]
            data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(node_id + "\n", encoding="ascii")
        return cls(f"{node_id}.{process}" if process else node_id, uuid.uuid4().hex[:12])

    @classmethod
    def ephemeral(cls) -> Claimer:
        return cls(uuid.uuid4().hex[:16], uuid.uuid4().hex[:12])

    def new_token(self) -> str:
        return f"{self.node_id}/{self.boot_id}/{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Claim:
    """An item held by a claimer: its row as claimed and the token that fences it."""

    row: Row
    token: str

    @property
    def id(self) -> int:
        return int(self.row["id"])

    @property
    def attempts(self) -> int:
        return int(self.row["attempts"])


class FailOutcome(enum.Enum):
    RETRY = "retry"
    DEAD = "dead"
    LOST = "lost"
    """The claim was no longer held (taken over after its lease): nothing was changed."""


DeadHandler = Callable[[Row, str], None]
"""Called after an item was dead-lettered (by a failure or an interruption), with its row."""
InTransaction = Callable[[Connection, Row], None]


class WorkQueue(Protocol):
    """The queue contract every store implements."""

    table: QueueTable

    def claim(
        self, now: float | None = None, *, where: Mapping[str, Collection[str]] | None = None
    ) -> Claim | None: ...

    def heartbeat(self, claims: Collection[Claim], now: float | None = None) -> set[int]: ...

    def complete(
        self, conn: Connection, claim: Claim, columns: Mapping[str, object] | None = None
    ) -> bool: ...

    def fail(
        self, claim: Claim, error: str, *, retryable: bool = True, now: float | None = None
    ) -> FailOutcome: ...

    def release(self, claim: Claim) -> bool: ...

    def reclaim_expired(self, now: float | None = None) -> int: ...

    def reclaim_previous_boot(self) -> int: ...

    def requeue_dead(
        self, item_id: int | None = None, also: InTransaction | None = None
    ) -> list[Row]: ...

    def hurry(self, item_ids: Collection[int]) -> int: ...

    def counts(self) -> dict[str, int]: ...


class SqlWorkQueue:
    """``WorkQueue`` on one table of either engine: a claim is one ``UPDATE ... RETURNING``
    statement; on PostgreSQL its row is locked and rows other claimers hold are skipped
    (``FOR UPDATE SKIP LOCKED``), so claimers on several hosts do not wait for each other."""

    def __init__(
        self,
        db: Database,
        table: QueueTable,
        claimer: Claimer,
        budget: Callable[[Row], RetryBudget],
        *,
        lease_s: float = DEFAULT_LEASE_S,
        on_dead: DeadHandler | None = None,
    ) -> None:
        self.db = db
        self.table = table
        self.claimer = claimer
        self.lease_s = lease_s
        self._budget = budget
        self._on_dead = on_dead
        self._last_reclaim = 0.0

    # --- claiming ---------------------------------------------------------------------------

    def claim(
        self, now: float | None = None, *, where: Mapping[str, Collection[str]] | None = None
    ) -> Claim | None:
        """Take the first ready item (in the table's order); ``where`` limits it to items
        whose columns hold one of the given values (e.g. the algorithms a worker has)."""
        now = time.time() if now is None else now
        if now - self._last_reclaim >= self.lease_s / 3:
            self._last_reclaim = now
            self.reclaim_expired(now)
        t = self.table
        token = self.claimer.new_token()
        filters, params = "", [t.ready, now]
        for column, values in (where or {}).items():
            if not values:
                return None
            filters += f" AND {column} IN ({', '.join('?' * len(values))})"
            params.extend(values)
        started = f", {t.started_column} = ?" if t.started_column else ""
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.engine == "postgresql" else ""
        sql = (
            f"UPDATE {t.name} SET state = ?, attempts = attempts + 1, claimed_by = ?, "
            f"lease_until = ?{started} WHERE id = (SELECT id FROM {t.name} WHERE state = ? "
            f"AND not_before <= ?{filters} ORDER BY {t.order_by} LIMIT 1{skip_locked}) "
            "RETURNING *"
        )
        head: list[object] = [t.claimed, token, now + self.lease_s]
        if t.started_column:
            head.append(now)
        with self.db.transaction(serialized=False) as conn:
            row = conn.execute(sql, (*head, *params)).fetchone()
        return None if row is None else Claim(row, token)

    def heartbeat(self, claims: Collection[Claim], now: float | None = None) -> set[int]:
        """Extend the leases of ``claims``; returns the ids of those no longer held."""
        now = time.time() if now is None else now
        lost: set[int] = set()
        with self.db.transaction(serialized=False) as conn:  # fenced by claimed_by
            for claim in claims:
                updated = conn.execute(
                    f"UPDATE {self.table.name} SET lease_until = ? "
                    "WHERE id = ? AND state = ? AND claimed_by = ?",
                    (now + self.lease_s, claim.id, self.table.claimed, claim.token),
                ).rowcount
                if not updated:
                    lost.add(claim.id)
        return lost

    # --- ending a claim ---------------------------------------------------------------------

    def complete(
        self, conn: Connection, claim: Claim, columns: Mapping[str, object] | None = None
    ) -> bool:
        """Mark the item done inside the caller's transaction, setting ``columns`` too.
        False (and nothing changed) when the claim is no longer held: the caller must then
        roll back whatever it recorded with it."""
        t = self.table
        extra = "".join(f", {name} = ?" for name in columns or {})
        updated = conn.execute(
            f"UPDATE {t.name} SET state = ?, finished_at = ?, lease_until = NULL, "
            f"{t.error_column} = ''{extra} WHERE id = ? AND state = ? AND claimed_by = ?",
            (t.done, time.time(), *(columns or {}).values(), claim.id, t.claimed, claim.token),
        ).rowcount
        return bool(updated)

    def fail(
        self, claim: Claim, error: str, *, retryable: bool = True, now: float | None = None
    ) -> FailOutcome:
        """Record a failed attempt: back to the queue after the back-off while the budget
        lasts (and ``retryable``), else dead-lettered."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            outcome, row = self._fail(conn, claim.id, claim.token, error, retryable, now)
        if outcome is FailOutcome.DEAD and row is not None:
            self._dead(row, error)
        return outcome

    def release(self, claim: Claim) -> bool:
        """Give the item back unfinished, on purpose (a stopping worker): the attempt does
        not count."""
        t = self.table
        with self.db.transaction() as conn:
            updated = conn.execute(
                f"UPDATE {t.name} SET state = ?, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, "
                "claimed_by = '', lease_until = NULL WHERE id = ? AND state = ? AND claimed_by = ?",
                (t.ready, claim.id, t.claimed, claim.token),
            ).rowcount
        return bool(updated)

    # --- interrupted work -------------------------------------------------------------------

    def reclaim_expired(self, now: float | None = None) -> int:
        """Items whose lease ran out (their claimer is gone): interrupted attempts."""
        now = time.time() if now is None else now
        rows = self.db.query(
            f"SELECT id, claimed_by, study_uid FROM {self.table.name} "
            "WHERE state = ? AND lease_until < ?",
            (self.table.claimed, now),
        )
        return self._interrupted(rows, now, expired_before=now)

    def reclaim_previous_boot(self) -> int:
        """At start: items this node held in an earlier boot (or claimed before claims had
        owners) were interrupted by that boot's end; no need to wait for their leases."""
        node = f"{self.claimer.node_id}/"
        this_boot = f"{node}{self.claimer.boot_id}/"
        rows = self.db.query(
            f"SELECT id, claimed_by, study_uid FROM {self.table.name} WHERE state = ? "
            "AND (claimed_by = '' "
            "OR (substr(claimed_by, 1, ?) = ? AND substr(claimed_by, 1, ?) != ?))",
            (self.table.claimed, len(node), node, len(this_boot), this_boot),
        )
        return self._interrupted(rows, time.time())

    def _interrupted(self, rows: list[Row], now: float, expired_before: float | None = None) -> int:
        count = 0
        for row in rows:
            with self.db.transaction() as conn:
                outcome, dead = self._fail(
                    conn,
                    int(row["id"]),
                    str(row["claimed_by"]),
                    INTERRUPTED,
                    True,
                    now,
                    expired_before,
                    backoff=False,
                )
            if outcome is FailOutcome.LOST:
                continue
            count += 1
            LOGGER.warning(
                "%s item %d (study %s) was interrupted (claimed by %s): %s",
                self.table.name,
                row["id"],
                row["study_uid"],
                row["claimed_by"] or "an earlier version",
                "dead-lettered, no attempts left" if outcome is FailOutcome.DEAD else "requeued",
            )
            if dead is not None:
                self._dead(dead, INTERRUPTED)
        return count

    def _fail(
        self,
        conn: Connection,
        item_id: int,
        token: str,
        error: str,
        retryable: bool,
        now: float,
        expired_before: float | None = None,
        *,
        backoff: bool = True,
    ) -> tuple[FailOutcome, Row | None]:
        """One failed attempt, fenced by the claim (and, for a reclaim after expiry, by the
        lease still being expired: a heartbeat that came in between wins). An interrupted
        attempt is retried without back-off: nothing says the item is at fault."""
        t = self.table
        lease = "" if expired_before is None else " AND lease_until < ?"
        row = conn.execute(
            f"SELECT * FROM {t.name} WHERE id = ? AND state = ? AND claimed_by = ?{lease}",
            (item_id, t.claimed, token, *(() if expired_before is None else (expired_before,))),
        ).fetchone()
        if row is None:
            return FailOutcome.LOST, None
        budget = self._budget(row)
        attempts = int(row["attempts"])
        if retryable and attempts < budget.max_attempts:
            conn.execute(
                f"UPDATE {t.name} SET state = ?, not_before = ?, {t.error_column} = ?, "
                "lease_until = NULL WHERE id = ?",
                (t.ready, now + (budget.delay_s(attempts) if backoff else 0.0), error, item_id),
            )
            return FailOutcome.RETRY, None
        dead = conn.execute(
            f"UPDATE {t.name} SET state = ?, finished_at = ?, {t.error_column} = ?, "
            "lease_until = NULL WHERE id = ? RETURNING *",
            (t.dead, now, error, item_id),
        ).fetchone()
        return FailOutcome.DEAD, dead

    def _dead(self, row: Row, error: str) -> None:
        if self._on_dead is None:
            return
        try:
            self._on_dead(row, error)
        except Exception:  # boundary: the item is dead-lettered whatever the observer does
            LOGGER.exception(
                "%s item %d (study %s): dead-letter handler failed",
                self.table.name,
                row["id"],
                row["study_uid"],
            )

    # --- dead letters and counts ------------------------------------------------------------

    def requeue_dead(
        self, item_id: int | None = None, also: InTransaction | None = None
    ) -> list[Row]:
        return requeue_dead(self.db, self.table, item_id, also)

    def hurry(self, item_ids: Collection[int]) -> int:
        """Make waiting items ready now (their back-off is moot: e.g. the destination they
        wait for answers again); their order stays the queue's own."""
        if not item_ids:
            return 0
        with self.db.transaction() as conn:
            return conn.execute(
                f"UPDATE {self.table.name} SET not_before = 0 WHERE state = ? "
                f"AND id IN ({', '.join('?' * len(item_ids))})",
                (self.table.ready, *item_ids),
            ).rowcount

    def counts(self) -> dict[str, int]:
        return {
            str(r["state"]): int(r["n"])
            for r in self.db.query(
                f"SELECT state, COUNT(*) AS n FROM {self.table.name} GROUP BY state"
            )
        }


def requeue_dead(
    db: Database, table: QueueTable, item_id: int | None = None, also: InTransaction | None = None
) -> list[Row]:
    """Give one dead-lettered item (or all, when ``item_id`` is None) a fresh budget; ``also``
    runs for each in the same transaction. Returns the rows requeued."""
    sql = (
        f"UPDATE {table.name} SET state = ?, attempts = 0, not_before = 0, finished_at = NULL, "
        "claimed_by = '', lease_until = NULL WHERE state = ?"
    )
    params: tuple[object, ...] = (table.ready, table.dead)
    if item_id is not None:
        sql += " AND id = ?"
        params = (*params, item_id)
    with db.transaction() as conn:
        rows = conn.execute(sql + " RETURNING *", params).fetchall()
        for row in rows:
            if also is not None:
                also(conn, row)
    return list(rows)


class LeaseKeeper:
    """One thread per process that renews the leases of every claim being worked on.

    ``held`` registers a claim for the duration of the work; ``release_all`` gives back what
    is still held when the process stops on purpose.
    """

    def __init__(self, interval_s: float = DEFAULT_LEASE_S / 3) -> None:
        self.interval_s = interval_s
        self._held: dict[tuple[int, int], tuple[WorkQueue, Claim]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def held(self, queue: WorkQueue, claim: Claim) -> Iterator[None]:
        key = (id(queue), claim.id)
        with self._lock:
            self._held[key] = (queue, claim)
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def renew(self) -> None:
        with self._lock:
            held = list(self._held.values())
        by_queue: dict[int, tuple[WorkQueue, list[Claim]]] = {}
        for queue, claim in held:
            by_queue.setdefault(id(queue), (queue, []))[1].append(claim)
        for queue, claims in by_queue.values():
            for lost in queue.heartbeat(claims):
                LOGGER.warning(
                    "%s item %d: claim lost (lease expired before its heartbeat); its result "
                    "will not be recorded",
                    queue.table.name,
                    lost,
                )

    def release_all(self) -> int:
        """Give back every claim still held (a stopping process whose work did not finish)."""
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        return sum(queue.release(claim) for queue, claim in held)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.renew()
            except Exception:  # boundary: a missed heartbeat only shortens a lease
                LOGGER.exception("lease renewal failed")
