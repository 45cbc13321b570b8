"""The prior stage: looks for the prior exam of each waiting follow-up job, then makes the job
ready with what it found.

A follow-up job is planned ``waiting`` with one prior request beside it. This stage claims the
request (the shared durable queue), searches the studies radrouter holds and then each
configured PACS (C-FIND, C-MOVE, waiting for the series to arrive; or QIDO-RS and WADO-RS,
storing the series through the node's ingest path), and in one transaction
records the outcome and releases the job. Workers never wait on a PACS, so a STAT job is never
stuck behind a retrieval. No prior found, a PACS that is down, or a request that fails for
good all release the job without a prior: the algorithm then reports on the current exam
alone, and the study is never blocked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom

from config.schema import RetryPolicy, RouterConfig
from router.audit.events import NO_AUDIT, AuditRecorder
from router.logs import log_safe
from router.polling_stage import PollingStage
from router.run.job_queue import JobQueue
from router.run.priors.dicomweb_retrieve import InstanceStore
from router.run.priors.finder import find_prior
from router.run.priors.selection import CurrentStudy, FoundPrior
from router.store.database import Connection, Database, Row
from router.store.pseudonyms import PatientKeys
from router.store.queue import Claim, Claimer, LeaseKeeper, QueueTable, SqlWorkQueue

LOGGER = logging.getLogger(__name__)

PRIOR_REQUESTS = QueueTable("prior_requests", "pending", "working", "done", "dead")
REQUEST_RETRY = RetryPolicy(max_attempts=2, backoff_initial_s=5.0, backoff_max_s=60.0)
"""An unexpected error in the search (a PACS that is down is not one: the finder skips it)."""


def request_prior(conn: Connection, job_id: int, study_uid: str) -> None:
    """Ask for the prior of a waiting job, inside the planner's transaction."""
    conn.execute(
        "INSERT INTO prior_requests (job_id, study_uid, state, created_at) "
        "VALUES (?, ?, 'pending', ?)",
        (job_id, study_uid, time.time()),
    )


@dataclass(frozen=True)
class PriorOutcome:
    found: FoundPrior | None
    detail: str


class ClaimLostError(RuntimeError):
    """The request was taken over by another claimer while this one worked on it."""


class PriorStage(PollingStage):
    name = "priors"

    def __init__(
        self,
        db: Database,
        config: Callable[[], RouterConfig],
        *,
        keys: PatientKeys,
        audit: AuditRecorder = NO_AUDIT,
        claimer: Claimer,
        leases: LeaseKeeper,
        on_released: Callable[[], None] | None = None,
        instances: InstanceStore | None = None,
    ) -> None:
        super().__init__()
        self.db = db
        self.keys = keys
        self.instances = instances
        """Where a DICOMweb source's instances go: the node's ingest path."""
        self._audit = audit
        self._config = config
        self._leases = leases
        self._on_released = on_released
        self.items = SqlWorkQueue(
            db, PRIOR_REQUESTS, claimer, lambda _row: REQUEST_RETRY, on_dead=self._gave_up
        )

    def run_once(self) -> bool:
        claim = self.items.claim()
        if claim is None:
            return False
        job_id = int(claim.row["job_id"])
        with self._leases.held(self.items, claim):
            try:
                outcome = self._search(job_id)
            except Exception as exc:  # boundary: one request's failure is retried, then given up
                LOGGER.exception(
                    "prior request %d (job %d, study %s) failed",
                    claim.id,
                    job_id,
                    log_safe(claim.row["study_uid"]),
                )
                self.items.fail(claim, f"{type(exc).__name__}: {exc}")
                return True
        self._finish(claim, job_id, outcome)
        return True

    def _search(self, job_id: int) -> PriorOutcome:
        job = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if job is None or job["state"] != "waiting":
            return PriorOutcome(None, "job no longer waiting")
        config = self._config()
        settings = config.algorithms.get(job["algorithm"])
        if settings is None or settings.priors is None:
            return PriorOutcome(None, "priors are no longer configured for the algorithm")
        first = self.db.query_one(
            "SELECT path FROM instances WHERE series_uid = ? ORDER BY sop_instance_uid LIMIT 1",
            (job["series_uid"],),
        )
        if first is None:
            return PriorOutcome(None, "the current series has no instances")
        header = pydicom.dcmread(Path(first["path"]), stop_before_pixels=True)
        rule = next((r for r in config.rules if r.name == job["rule_name"]), None)
        selector = {
            key: value
            for key, value in (rule.when.items() if rule is not None else ())
            if key not in ("CallingAE", "CalledAE")
        }
        found = find_prior(
            self.db,
            self.keys,
            settings.priors,
            config.node.ae_title,
            CurrentStudy.from_header(header),
            selector,
            self._audit,
            self.instances,
        )
        if found is None:
            return PriorOutcome(None, "none found")
        where = "held locally" if found.source == "local" else f"retrieved from {found.source}"
        return PriorOutcome(
            found, f"{where}: study {found.study_instance_uid}, series {found.series_instance_uid}"
        )

    def _finish(self, claim: Claim, job_id: int, outcome: PriorOutcome) -> None:
        try:
            with self.db.transaction() as conn:
                if not self.items.complete(conn, claim, {"outcome": outcome.detail}):
                    raise ClaimLostError(f"prior request {claim.id}")
                JobQueue.release_waiting(
                    conn,
                    job_id,
                    outcome.found.study_instance_uid if outcome.found else "",
                    outcome.found.series_instance_uid if outcome.found else "",
                )
        except ClaimLostError:
            LOGGER.warning(
                "prior request %d (job %d, study %s) was taken over; its outcome is dropped",
                claim.id,
                job_id,
                log_safe(claim.row["study_uid"]),
            )
            return
        self.db.record_event("prior_searched", str(claim.row["study_uid"]), job_id, outcome.detail)
        LOGGER.info(
            "prior request %d (job %d, study %s): %s",
            claim.id,
            job_id,
            log_safe(claim.row["study_uid"]),
            log_safe(outcome.detail, 300),
        )
        if self._on_released is not None:
            self._on_released()

    def _gave_up(self, row: Row, error: str) -> None:
        """A request that failed for good releases its job without a prior."""
        with self.db.transaction() as conn:
            JobQueue.release_waiting(conn, int(row["job_id"]), "", "")
        LOGGER.warning(
            "prior request %d (job %d, study %s) failed for good, the job runs without a prior: %s",
            row["id"],
            row["job_id"],
            log_safe(row["study_uid"]),
            log_safe(error, 300),
        )
        self.db.record_event(
            "prior_search_failed", str(row["study_uid"]), int(row["job_id"]), error
        )
        if self._on_released is not None:
            self._on_released()

    def reclaim_previous_boot(self) -> int:
        return self.items.reclaim_previous_boot()
