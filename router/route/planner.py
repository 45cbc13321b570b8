"""The routing stage: for a complete study, apply the rules per series and queue the work."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydicom import dcmread

from algorithms.contract import Purpose
from config.schema import RouterConfig
from router.assemble.completion import CompletionReason
from router.logs import log_safe
from router.route.matching import SeriesFacts, route
from router.run.job_queue import JobQueue
from router.run.priors.stage import request_prior
from router.store.database import Database

LOGGER = logging.getLogger(__name__)


class Planner:
    def __init__(
        self,
        db: Database,
        jobs: JobQueue,
        config: Callable[[], RouterConfig],
        on_planned: Callable[[], None] | None = None,
        purposes: Mapping[str, Purpose] | None = None,
    ) -> None:
        self.db = db
        self.jobs = jobs
        self._config = config
        self._on_planned = on_planned
        self._purposes = dict(purposes or {})
        """Each algorithm's purpose: QA series get only quality-control algorithms."""

    def plan(self, study_uid: str, revision: int, reason: CompletionReason) -> str:
        """Route every series that is new since the last plan; return the study's new state."""
        config = self._config()
        if self.db.query_one("SELECT 1 FROM retrieved_priors WHERE study_uid = ?", (study_uid,)):
            # Pulled from a PACS as a prior of a follow-up: evidence, not new work.
            self.db.connection().execute(
                "UPDATE studies SET state = 'prior', finished_at = ? WHERE study_uid = ?",
                (time.time(), study_uid),
            )
            self.db.record_event("study_retrieved_as_prior", study_uid)
            LOGGER.info("study %s was retrieved as a prior: not routed", log_safe(study_uid))
            return "prior"
        series_rows = self.db.query(
            "SELECT series_uid, routed_at, last_received_at FROM series WHERE study_uid = ?",
            (study_uid,),
        )
        work = 0
        unchanged = 0
        job_ids: list[int] = []
        with self.db.transaction() as conn:
            for series in series_rows:
                if series["routed_at"] and series["last_received_at"] < series["routed_at"]:
                    unchanged += 1
                    continue  # nothing new since it was last routed: no re-run
                first = conn.execute(
                    "SELECT path, calling_ae, called_ae FROM instances WHERE series_uid = ? "
                    "ORDER BY instance_number, sop_instance_uid LIMIT 1",
                    (series["series_uid"],),
                ).fetchone()
                header = dcmread(Path(first["path"]), stop_before_pixels=True)
                decision = route(
                    config,
                    SeriesFacts.from_dataset(header, first["calling_ae"], first["called_ae"]),
                    self._purposes,
                )
                rule_names = ",".join(a.rule_name for a in decision.actions)
                qa_sign = None if decision.qa is None else decision.qa.rule_name
                conn.execute(
                    "UPDATE series SET routed_revision = ?, routed_at = ?, rule_names = ?, "
                    "route_explanation = ?, qa_sign = ? WHERE series_uid = ?",
                    (
                        revision,
                        time.time(),
                        rule_names,
                        decision.explain(),
                        qa_sign,
                        series["series_uid"],
                    ),
                )
                for withheld in decision.withheld:
                    # Both are in the series' route explanation; only a clinical algorithm
                    # kept off a QA series is an event worth a warning.
                    if not withheld.protects_patients:
                        continue
                    LOGGER.warning(
                        "series %s: %s not run: %s",
                        log_safe(series["series_uid"]),
                        withheld.action.run,
                        withheld.reason,
                    )
                    self.db.record_event(
                        "run_withheld",
                        study_uid,
                        detail=f"{withheld.action.run}: {withheld.reason}",
                    )
                for action in decision.actions:
                    if action.run:
                        settings = config.algorithms.get(action.run)
                        needs_prior = settings is not None and settings.priors is not None
                        job_id = self.jobs.enqueue(
                            conn,
                            study_uid=study_uid,
                            series_uid=series["series_uid"],
                            study_revision=revision,
                            algorithm=action.run,
                            rule_name=action.rule_name,
                            priority=action.priority,
                            send_to=tuple(action.send_to),
                            max_attempts=config.jobs.retry.max_attempts,
                            waiting=needs_prior,
                        )
                        if needs_prior:
                            # A follow-up: the prior stage finds its prior, then releases it.
                            request_prior(conn, job_id, study_uid)
                        job_ids.append(job_id)
                        work += 1
                    else:
                        for destination in action.send_to:
                            conn.execute(
                                "INSERT INTO dispatches (study_uid, series_uid, destination, state, "
                                "created_at) VALUES (?, ?, ?, 'pending', ?)",
                                (study_uid, series["series_uid"], destination, time.time()),
                            )
                            work += 1
            state = "processing" if work else ("done" if unchanged else "unrouted")
            conn.execute(
                "UPDATE studies SET state = ?, finished_at = ? WHERE study_uid = ? AND revision = ?",
                (state, None if work else time.time(), study_uid, revision),
            )
        self.db.record_event(
            "study_routed", study_uid, detail=f"{work} work item(s); completion: {reason.value}"
        )
        LOGGER.info(
            "study %s revision %d routed: job(s) %s, %d forward(s); now %s",
            log_safe(study_uid),
            revision,
            ", ".join(map(str, job_ids)) or "none",
            work - len(job_ids),
            state,
        )
        if work and self._on_planned is not None:
            self._on_planned()
        return state
