"""The worker stage: run one job (volume -> plugin -> result objects written and queued)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

from algorithms.contract import AlgorithmInfo, AlgorithmResult, PriorStudy, StudyInput, Verdict
from algorithms.runtime import AlgorithmTimeoutError, ModelRuntime
from config.schema import ExternalAlgorithm, RouterConfig
from dicom_sr.context import InstanceReference
from router.assemble.completion import InstanceGeometry, missing_images
from router.assemble.study_state import settle_study
from router.deidentify import SeriesRefusedError
from router.deliver.presentation_objects import wanted_presentation_kinds
from router.deliver.result_writer import PriorEvidence, ResultWriter
from router.external.declared import AlgorithmInfos
from router.external.outbound import SentToVendor, VendorSender
from router.logs import log_safe
from router.patient_values import PatientValues
from router.run.job_queue import ClaimedJob, Job, JobQueue
from router.run.priors.loading import load_prior_study
from router.run.priors.local_index import held_prior
from router.run.series_loader import LoadedSeries, VolumeError, load_series
from router.store.database import Connection, Database, Row
from router.store.queue import FailOutcome, LeaseKeeper

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    verdict: Verdict
    finding_count: int
    result_path: Path
    model_seconds: float | None
    device: str


CompleteJob = Callable[[Connection, Verdict, float | None, str], None]
"""Marks the job done inside the transaction that records its result (raises to roll back)."""
ParkJob = Callable[[Connection], None]
"""Sets the job waiting (for an external algorithm's answer), releasing its claim, inside the
transaction that records why (raises to roll back)."""


@dataclass(frozen=True)
class SentOutside:
    """The job's series went, de-identified, to an external algorithm; the job waits for the
    answer stage (``router.external.answers``) without holding a worker."""

    vendor: str
    instances: int
    seconds: float


class ClaimLostError(RuntimeError):
    """The job's claim was taken over while it ran (its lease expired): its result is dropped,
    so the job is finished exactly once, by whoever holds it now."""


class JobRunner:
    """Everything one job does, in order; raises on failure so the queue can retry."""

    def __init__(
        self,
        db: Database,
        runtime: ModelRuntime,
        results_dir: Path,
        config: Callable[[], RouterConfig],
        vendors: VendorSender | None = None,
    ) -> None:
        self.db = db
        self.runtime = runtime
        self.writer = ResultWriter(db, results_dir)
        self._config = config
        self.infos = AlgorithmInfos(runtime.registry, config)
        self.vendors = vendors

    def run(
        self, job: Job, complete: CompleteJob | None = None, park: ParkJob | None = None
    ) -> JobOutcome | SentOutside:
        """Load, run, write. ``complete`` is called inside the result's transaction; ``park``
        inside the one that records a send to an external algorithm."""
        info = self.infos.info(job.algorithm)
        external = self.infos.external(job.algorithm)
        rows = self.db.query(
            "SELECT path, orientation, slice_position, images_in_acquisition, "
            "acquisition_number, number_of_frames FROM instances WHERE series_uid = ? "
            "ORDER BY sop_instance_uid",
            (job.series_uid,),
        )
        paths = [Path(row["path"]) for row in rows]
        model_seconds: float | None = None
        device = ""
        prior: PriorEvidence | None = None
        loaded: LoadedSeries | None = None
        missing = missing_images([_geometry(row) for row in rows])
        if missing is not None:
            # Only the hard cap completes a study with such a series: a partial volume is
            # never given to an algorithm as if it were whole.
            result = AlgorithmResult(Verdict.NOT_ASSESSED, reason=missing.reason)
        elif external is not None:
            sent = self._send_outside(job, info, external, paths, park)
            if isinstance(sent, SentOutside):
                return sent
            result = sent
        else:
            try:
                loaded = load_series(paths)
            except VolumeError as exc:
                # Wrong or unusable input is stated as "not assessed", never a silent negative.
                result = AlgorithmResult(Verdict.NOT_ASSESSED, reason=f"input not usable: {exc}")
        if loaded is not None:
            modality = loaded.series.header.get("Modality", "")
            if modality not in info.modalities:
                result = AlgorithmResult(
                    Verdict.NOT_ASSESSED,
                    reason=f"modality {modality or '?'} is not one of {sorted(info.modalities)}",
                )
            else:
                timeout = self._timeout(job.algorithm, info)
                settings = self._config().algorithms.get(job.algorithm)
                threshold = (
                    settings.threshold_for(loaded.series.header) if settings is not None else None
                )
                priors, prior = self._priors(job)
                parameters = {
                    **info.parameters,
                    **(settings.parameters if settings is not None else {}),
                }
                study_input = StudyInput(
                    job.study_uid,
                    loaded.series,
                    priors=priors,
                    threshold=threshold,
                    parameters=parameters,
                )
                outcome = self.runtime.run(job.algorithm, study_input, timeout)
                result, model_seconds, device = outcome.result, outcome.seconds, outcome.device
        if result.reason:  # a plugin's own words may quote a header value
            redacted = PatientValues.of_series(self.db, job.series_uid).redact(result.reason)
            result = replace(result, reason=redacted)
        settings = self._config().algorithms.get(job.algorithm)
        finished = (result.verdict, model_seconds, device)
        written = self.writer.write(
            job,
            info,
            result,
            loaded,
            shadow=settings is not None and settings.shadow,
            prior=prior,
            within=None if complete is None else (lambda conn: complete(conn, *finished)),
            presentation_kinds=wanted_presentation_kinds(self._config(), job.send_to),
        )
        return JobOutcome(
            result.verdict, len(result.findings), written.report_path, model_seconds, device
        )

    def _send_outside(
        self,
        job: Job,
        info: AlgorithmInfo,
        external: ExternalAlgorithm,
        paths: list[Path],
        park: ParkJob | None,
    ) -> SentOutside | AlgorithmResult:
        """De-identify the series and send it to the vendor, then set the job waiting; or the
        result that says why it was not sent."""
        row = self.db.query_one(
            "SELECT modality FROM series WHERE series_uid = ?", (job.series_uid,)
        )
        modality = "" if row is None else str(row["modality"] or "")
        if modality not in info.modalities:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED,
                reason=f"modality {modality or '?'} is not one of {sorted(info.modalities)}",
            )
        if self.vendors is None or not paths:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED, reason=f"not sent to {external.vendor}: nothing to send"
            )

        def record_request(leaving: SentToVendor) -> None:
            # Before the send: an answer is recognised by this row, however fast it comes
            # (the answer stage leaves it alone while the job is still running).
            now = time.time()
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO external_requests (job_id, algorithm, study_uid, "
                    "deid_study_uid, deid_series_uid, instances_sent, state, sent_at, "
                    "deadline_at) VALUES (?, ?, ?, ?, ?, ?, 'awaiting', ?, ?) "
                    "ON CONFLICT (job_id) DO UPDATE SET "
                    "deid_study_uid = excluded.deid_study_uid, state = 'awaiting', "
                    "deid_series_uid = excluded.deid_series_uid, sent_at = excluded.sent_at, "
                    "deadline_at = excluded.deadline_at, "
                    "instances_sent = excluded.instances_sent, finished_at = NULL, outcome = ''",
                    (
                        job.id,
                        job.algorithm,
                        job.study_uid,
                        leaving.deid_study_uid,
                        leaving.deid_series_uid,
                        leaving.instances,
                        now,
                        now + external.answer_within_min * 60,
                    ),
                )

        try:
            sent = self.vendors.send(
                job.id, job.study_uid, job.algorithm, external, paths, record_request
            )
        except SeriesRefusedError as exc:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED, reason=f"not sent to {external.vendor}: {exc}"
            )
        except Exception:
            with self.db.transaction() as conn:  # not sent: nothing to wait for (a retry sends)
                conn.execute("DELETE FROM external_requests WHERE job_id = ?", (job.id,))
            raise
        with self.db.transaction() as conn:
            if park is not None:
                park(conn)
        return SentOutside(external.vendor, sent.instances, sent.seconds)

    def _priors(self, job: Job) -> tuple[tuple[PriorStudy, ...], PriorEvidence | None]:
        """The prior exam the prior stage chose for this job (``algorithms.<name>.priors``),
        loaded from the spool. None chosen is not an error: the algorithm then reports on the
        current exam alone."""
        if not job.prior_series_uid:
            return (), None
        found = held_prior(self.db, job.prior_study_uid, job.prior_series_uid)
        if found is None:
            LOGGER.warning(
                "job %d (study %s): prior series %s is no longer held",
                job.id,
                log_safe(job.study_uid),
                log_safe(job.prior_series_uid),
            )
            return (), None
        try:
            study = load_prior_study(self.db, found, job.algorithm)
        except VolumeError as exc:
            LOGGER.warning(
                "job %d (study %s): prior study %s not usable: %s",
                job.id,
                log_safe(job.study_uid),
                log_safe(found.study_instance_uid),
                log_safe(exc, 300),
            )
            return (), None
        instances = [
            InstanceReference(
                found.study_instance_uid,
                found.series_instance_uid,
                r["sop_class_uid"],
                r["sop_instance_uid"],
            )
            for r in self.db.query(
                "SELECT sop_class_uid, sop_instance_uid FROM instances WHERE series_uid = ?",
                (found.series_instance_uid,),
            )
        ]
        return (study,), PriorEvidence.of((study,), instances)

    def _timeout(self, algorithm: str, info: AlgorithmInfo) -> float:
        config = self._config()
        settings = config.algorithms.get(algorithm)
        if settings is not None and settings.timeout_s:
            return settings.timeout_s
        return config.jobs.timeout_s or info.max_runtime_s


def _geometry(row: Row) -> InstanceGeometry:
    return InstanceGeometry(
        orientation=row["orientation"],
        slice_position=row["slice_position"],
        images_in_acquisition=row["images_in_acquisition"],
        acquisition_number=row["acquisition_number"],
        number_of_frames=row["number_of_frames"],
    )


class WorkerPool:
    """N threads that claim jobs in priority order and run them, holding each claim's lease
    alive while the job runs. A job that fails for good is handled by the queue's dead-letter
    handler (the failure is stated on the worklist), whether it failed here or was
    interrupted."""

    def __init__(
        self,
        queue: JobQueue,
        runner: JobRunner,
        config: Callable[[], RouterConfig],
        leases: LeaseKeeper,
        on_job_done: Callable[[Job, JobOutcome], None] | None = None,
        on_results: Callable[[], None] | None = None,
        algorithms: Callable[[], Collection[str]] | None = None,
        idle_s: float = 0.2,
    ) -> None:
        """``algorithms``: claim only jobs of these (what this process loaded, on a host of
        its own); None claims every job, and one whose model is missing fails visibly."""
        self.queue = queue
        self.runner = runner
        self._algorithms = algorithms
        self._idle_s = idle_s
        """How long an idle worker waits before looking again, unless woken (in-process, or
        by the database's notification of queued jobs)."""
        self._config = config
        self._leases = leases
        self._on_job_done = on_job_done
        self._on_results = on_results
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        for index in range(self._config().jobs.workers):
            thread = threading.Thread(target=self._loop, name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # boundary
                LOGGER.exception("worker step failed")
                worked = False
            if not worked:
                self._wake.wait(self._idle_s)
                self._wake.clear()

    def run_once(self) -> bool:
        claimed = self.queue.claim(
            algorithms=None if self._algorithms is None else self._algorithms()
        )
        if claimed is None:
            return False
        job = claimed.job
        self.queue.db.record_event("job_started", job.study_uid, job.id, job.algorithm)
        with self._leases.held(self.queue.items, claimed.claim):
            try:
                outcome = self.runner.run(job, self._completer(claimed), self._parker(claimed))
            except ClaimLostError:
                LOGGER.warning(
                    "job %d (study %s): claim lost while it ran; its result is dropped",
                    job.id,
                    log_safe(job.study_uid),
                )
                return True
            except Exception as exc:  # boundary: a crashing or hanging model fails this job only
                self._failed(claimed, exc)
                return True
        if isinstance(outcome, SentOutside):
            self.queue.db.record_event(
                "job_sent_external", job.study_uid, job.id, f"{outcome.instances} instance(s)"
            )
            LOGGER.info(
                "job %d (%s, study %s): %d instance(s) de-identified and sent to %s in %.1f s; "
                "waiting for the answer",
                job.id,
                job.algorithm,
                log_safe(job.study_uid),
                outcome.instances,
                log_safe(outcome.vendor),
                outcome.seconds,
            )
            return True
        self.queue.db.record_event(
            "job_done",
            job.study_uid,
            job.id,
            f"{outcome.verdict.value}, {outcome.finding_count} finding(s)",
        )
        LOGGER.info(
            "job %d (%s, study %s) done: %s, %d finding(s)%s",
            job.id,
            job.algorithm,
            log_safe(job.study_uid),
            outcome.verdict.value,
            outcome.finding_count,
            "" if outcome.model_seconds is None else f" in {outcome.model_seconds:.1f} s",
        )
        if self._on_job_done is not None:
            try:
                self._on_job_done(job, outcome)
            except Exception:
                LOGGER.exception(
                    "job %d (study %s): job observer failed", job.id, log_safe(job.study_uid)
                )
        if self._on_results is not None:
            self._on_results()
        settle_study(self.queue.db, job.study_uid)
        return True

    def _completer(self, claimed: ClaimedJob) -> CompleteJob:
        def complete(
            conn: Connection, verdict: Verdict, seconds: float | None, device: str
        ) -> None:
            if not self.queue.finish(conn, claimed, verdict.value, seconds, device):
                raise ClaimLostError(f"job {claimed.job.id}")

        return complete

    def _parker(self, claimed: ClaimedJob) -> ParkJob:
        def park(conn: Connection) -> None:
            if not self.queue.park(conn, claimed):
                raise ClaimLostError(f"job {claimed.job.id}")

        return park

    def _failed(self, claimed: ClaimedJob, exc: Exception) -> None:
        job = claimed.job
        reason = (
            str(exc) if isinstance(exc, AlgorithmTimeoutError) else f"{type(exc).__name__}: {exc}"
        )
        # A plugin's or library's message may quote a header value: never store or log one.
        reason = PatientValues.of_series(self.queue.db, job.series_uid).redact(reason)
        outcome = self.queue.fail(claimed, reason)
        if outcome is FailOutcome.LOST:
            return
        will_retry = outcome is FailOutcome.RETRY
        self.queue.db.record_event(
            "job_retry" if will_retry else "job_failed", job.study_uid, job.id, reason
        )
        LOGGER.error(
            "job %d (%s, study %s) failed%s: %s",
            job.id,
            job.algorithm,
            log_safe(job.study_uid),
            ", will retry" if will_retry else "",
            log_safe(reason, 300),
        )
