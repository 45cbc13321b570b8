"""The answer stage: an external algorithm's answer re-identified into a result, or, past
its time limit, "not assessed: no answer from VENDOR within N min". Never silence.

Answers arrive at the node like any instance and are held apart at ingest (they are in a
study radrouter de-identified: ``external_answers``). An answer is taken as complete once
nothing more arrived for ``answer_idle_s``; each object is re-identified (``router.deidentify``),
checked (a result class, in the job's study, not one of the images sent), and written beside
radrouter's own result objects; the vendor's report states the result (``vendor_report``), which
then takes the path of every local result: verdict, flag and reason, worklist, dispatch to the
PACS, where the vendor's objects travel with radrouter's SR.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from algorithms.contract import AlgorithmResult, Verdict
from config.schema import DicomWebDestination, ExternalAlgorithm, RouterConfig
from dicom_sr.uids import is_valid_uid
from router.assemble.study_state import settle_study
from router.deidentify import ReidentificationError, keys_for_site, reidentify
from router.deidentify.mapping import FILE_NAME, MappingStore
from router.deliver.result_writer import ResultWriter, VendorObject, source_instances
from router.dicomweb import DicomWebError
from router.external.answer_fetch import AnswerFetcher
from router.external.declared import EXTERNAL_DEVICE, AlgorithmInfos
from router.external.outbound import mapping_store
from router.external.vendor_report import SR_CLASSES, vendor_result
from router.logs import log_safe
from router.polling_stage import PollingStage
from router.receive.private_files import make_private_dir
from router.run.job_queue import Job, JobQueue
from router.store.database import Connection, Database, Row

LOGGER = logging.getLogger(__name__)

ANSWER_CLASSES = SR_CLASSES | {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
}
"""What a vendor may answer with: reports, segmentations, key images, presentation states,
pictures. An answer of another class (an image series) is refused."""
PURGE_INTERVAL_S = 3600.0
LATE_ANSWER_GRACE_S = 60.0
"""An answer object no request awaits is kept this long (a request may be recorded a moment
after a fast vendor answers), then dropped as late."""


class _NoLongerWaitingError(Exception):
    """The job stopped waiting (superseded by a re-run) while its answer was being taken."""


class AnswerStage(PollingStage):
    name = "external-answers"
    idle_s = 1.0

    def __init__(
        self,
        db: Database,
        data_dir: Path,
        config: Callable[[], RouterConfig],
        infos: AlgorithmInfos,
        on_results: Callable[[], None] | None = None,
        fetcher: AnswerFetcher | None = None,
    ) -> None:
        super().__init__()
        self.db = db
        self.data_dir = data_dir
        self.results_dir = data_dir / "results"
        self.writer = ResultWriter(db, self.results_dir)
        self._config = config
        self._infos = infos
        self._on_results = on_results
        self._last_purge = 0.0
        self._fetcher = fetcher
        self._last_poll: dict[int, float] = {}

    def run_once(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self._last_purge >= PURGE_INTERVAL_S:
            self._last_purge = now
            self.purge_mappings(now)
        dropped = self._drop_unawaited(now)
        config = self._config()
        self._poll_vendors(config, now)
        for request in self.db.query(
            "SELECT r.*, MAX(a.received_at) AS last_answer FROM external_requests r "
            "JOIN external_answers a ON a.request_id = r.id WHERE r.state = 'awaiting' "
            "GROUP BY r.id ORDER BY r.id"
        ):
            declared = config.external_algorithms.get(request["algorithm"])
            idle_s = 5.0 if declared is None else declared.answer_idle_s
            if now - float(request["last_answer"]) >= idle_s and self._take_answer(
                request, declared, now
            ):
                return True
        for expired in self.db.query(
            "SELECT * FROM external_requests r WHERE state = 'awaiting' AND deadline_at <= ? "
            "AND NOT EXISTS (SELECT 1 FROM external_answers a WHERE a.request_id = r.id) "
            "ORDER BY deadline_at LIMIT 50",
            (now,),
        ):
            if self._expire(expired, config.external_algorithms.get(expired["algorithm"]), now):
                return True
        return dropped

    def _poll_vendors(self, config: RouterConfig, now: float) -> None:
        """Fetch new answer objects by DICOMweb for the requests whose algorithm asks for it
        (``answer_poll_s``), each at most that often; a vendor that cannot be asked is asked
        again at the next turn, until the request's time runs out."""
        if self._fetcher is None:
            return
        awaiting = self.db.query("SELECT * FROM external_requests WHERE state = 'awaiting'")
        self._last_poll = {r["id"]: self._last_poll.get(r["id"], 0.0) for r in awaiting}
        for request in awaiting:
            declared = config.external_algorithms.get(request["algorithm"])
            if declared is None or declared.answer_poll_s is None:
                continue
            if now - self._last_poll[request["id"]] < declared.answer_poll_s:
                continue
            self._last_poll[request["id"]] = now
            endpoint = config.destinations.get(declared.send_to)
            if not isinstance(endpoint, DicomWebDestination):
                continue
            try:
                fetched = self._fetcher.poll(
                    endpoint, request["deid_study_uid"], request["deid_series_uid"]
                )
            except (DicomWebError, OSError) as exc:
                LOGGER.warning(
                    "job %d (%s): asking %s for the answer failed: %s",
                    request["job_id"],
                    request["algorithm"],
                    endpoint.url,
                    log_safe(exc, 300),
                )
                continue
            if fetched:
                LOGGER.info(
                    "job %d (%s): %d answer object(s) fetched from %s",
                    request["job_id"],
                    request["algorithm"],
                    fetched,
                    endpoint.url,
                )

    # --- an answer ------------------------------------------------------------------------

    def _take_answer(self, request: Row, declared: ExternalAlgorithm | None, now: float) -> bool:
        """Take the answer of ``request``; False when its job is still sending (a vendor that
        answered before the send ended): taken on a later turn."""
        job_row = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (request["job_id"],))
        if job_row is not None and job_row["state"] == "running":
            return False
        answers = self.db.query(
            "SELECT * FROM external_answers WHERE request_id = ? ORDER BY received_at, "
            "sop_instance_uid",
            (request["id"],),
        )
        if job_row is None or job_row["state"] != "waiting":
            self._close(request, "superseded", "the job no longer waits (a newer run)", answers)
            return True
        if declared is None:
            self._fail_job(request, answers, "the external algorithm is no longer configured")
            return True
        job = Job.from_row(job_row)
        name = request["algorithm"]
        store = mapping_store(self.data_dir, name, declared)
        sources = source_instances(self.db, job.series_uid)
        sent_uids = {str(r["sop_instance_uid"]) for r in sources}
        taken: list[Dataset] = []
        problems: list[str] = []
        for answer in answers:
            problem = self._reidentified(answer, store, name, job, sent_uids, taken)
            if problem is not None:
                problems.append(problem)
                LOGGER.warning(
                    "job %d (%s, study %s): answer object refused: %s",
                    job.id,
                    name,
                    log_safe(job.study_uid),
                    log_safe(problem, 300),
                )
        vendor_objects: list[VendorObject] = []
        kept: list[Dataset] = []
        for dataset in taken:
            try:
                vendor_objects.append(self._keep(dataset, job.study_uid))
                kept.append(dataset)
            except OSError:
                raise  # the disk, not the object: the stage takes the answer again later
            except Exception as exc:  # a vendor's object that cannot be written as it is
                problems.append(f"it cannot be written: {type(exc).__name__}")
        taken = kept
        if taken:
            result = vendor_result(
                taken, [str(r["sop_instance_uid"]) for r in sources], declared.vendor
            )
        else:
            result = AlgorithmResult(
                Verdict.NOT_ASSESSED,
                reason=f"the answer from {declared.vendor} could not be used: {problems[0]}",
            )
        round_trip = now - float(request["sent_at"])
        outcome = f"{len(taken)} object(s) taken, {len(problems)} refused, {round_trip:.1f} s"
        if self._write(job, request, result, vendor_objects, "answered", outcome):
            self._delete_files(answers)
            self.db.record_event("external_answer", job.study_uid, job.id, outcome)
            LOGGER.info(
                "job %d (%s, study %s): answer from %s taken (%s): %s",
                job.id,
                name,
                log_safe(job.study_uid),
                log_safe(declared.vendor),
                outcome,
                result.verdict.value,
            )
        return True

    def _reidentified(
        self,
        answer: Row,
        store: MappingStore,
        name: str,
        job: Job,
        sent_uids: set[str],
        taken: list[Dataset],
    ) -> str | None:
        """Re-identify and check one answer object (appended to ``taken``); or why not."""
        if answer["sop_class_uid"] not in ANSWER_CLASSES:
            return f"SOP class {answer['sop_class_uid']} is not a result (report, SEG, KOS, ...)"
        try:
            returned = dcmread(answer["path"])
            done = reidentify(returned, store, scope=name)
        except ReidentificationError as exc:
            return str(exc)
        except Exception as exc:  # a vendor's file: anything may be wrong with it
            return f"unreadable: {type(exc).__name__}"
        dataset = done.dataset
        if str(dataset.get("StudyInstanceUID", "")) != job.study_uid:
            return "it is not in the study sent"
        sop_instance_uid = str(dataset.get("SOPInstanceUID", ""))
        if not is_valid_uid(sop_instance_uid) or sop_instance_uid in sent_uids:
            return "its SOP Instance UID is not the vendor's own"
        taken.append(dataset)
        return None

    def _keep(self, dataset: Dataset, study_uid: str) -> VendorObject:
        """The re-identified object written beside the result's own (0600, atomically)."""
        folder = self.results_dir / study_uid
        make_private_dir(self.results_dir)
        make_private_dir(folder)
        sop_instance_uid = str(dataset.SOPInstanceUID)
        path = folder / f"vendor-{sop_instance_uid}.dcm"
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        temporary = path.with_name(f".{path.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(buffer.getvalue())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        series_number = dataset.get("SeriesNumber")
        return VendorObject(
            path=path,
            sop_class_uid=str(dataset.SOPClassUID),
            series_instance_uid=str(dataset.get("SeriesInstanceUID", "")),
            sop_instance_uid=sop_instance_uid,
            series_number=int(series_number) if series_number not in (None, "") else 0,
        )

    # --- no answer ------------------------------------------------------------------------

    def _expire(self, request: Row, declared: ExternalAlgorithm | None, now: float) -> bool:
        """The result "no answer"; False when the job is still sending (its time is over
        once it waits)."""
        job_row = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (request["job_id"],))
        if job_row is not None and job_row["state"] == "running":
            return False
        if job_row is None or job_row["state"] != "waiting":
            self._close(request, "superseded", "the job no longer waits (a newer run)", [])
            return True
        if declared is None:
            self._fail_job(request, [], "the external algorithm is no longer configured")
            return True
        minutes = (float(request["deadline_at"]) - float(request["sent_at"])) / 60
        reason = f"no answer from {declared.vendor} within {minutes:g} min"
        job = Job.from_row(job_row)
        result = AlgorithmResult(Verdict.NOT_ASSESSED, reason=reason)
        if self._write(job, request, result, [], "expired", reason):
            self.db.record_event("external_no_answer", job.study_uid, job.id, reason)
            LOGGER.warning(
                "job %d (%s, study %s): %s", job.id, job.algorithm, log_safe(job.study_uid), reason
            )
        return True

    # --- shared -----------------------------------------------------------------------------

    def _write(
        self,
        job: Job,
        request: Row,
        result: AlgorithmResult,
        vendor_objects: list[VendorObject],
        state: str,
        outcome: str,
    ) -> bool:
        """The result through the one writer, the job done and the request closed, in one
        transaction; False when the job stopped waiting meanwhile."""
        config = self._config()
        settings = config.algorithms.get(job.algorithm)

        def within(conn: Connection) -> None:
            if not JobQueue.finish_waiting(conn, job.id, result.verdict.value, EXTERNAL_DEVICE):
                raise _NoLongerWaitingError
            conn.execute(
                "UPDATE external_requests SET state = ?, finished_at = ?, outcome = ? WHERE id = ?",
                (state, time.time(), outcome, request["id"]),
            )
            conn.execute("DELETE FROM external_answers WHERE request_id = ?", (request["id"],))

        try:
            self.writer.write(
                job,
                self._infos.info(job.algorithm),
                result,
                None,
                shadow=settings is not None and settings.shadow,
                within=within,
                vendor_objects=vendor_objects,
            )
        except _NoLongerWaitingError:
            self._close(request, "superseded", "the job no longer waits (a newer run)", [])
            return False
        if self._on_results is not None:
            self._on_results()
        settle_study(self.db, job.study_uid)
        return True

    def _fail_job(self, request: Row, answers: list[Row], error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? "
                "WHERE id = ? AND state = 'waiting'",
                (time.time(), error, request["job_id"]),
            )
        self._close(request, "refused", error, answers)
        self.db.record_event("job_failed", request["study_uid"], request["job_id"], error)
        settle_study(self.db, request["study_uid"])

    def _close(self, request: Row, state: str, outcome: str, answers: list[Row]) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE external_requests SET state = ?, finished_at = ?, outcome = ? "
                "WHERE id = ? AND state = 'awaiting'",
                (state, time.time(), outcome, request["id"]),
            )
            conn.execute("DELETE FROM external_answers WHERE request_id = ?", (request["id"],))
        self._delete_files(answers)

    def _drop_unawaited(self, now: float) -> bool:
        """Answer objects no request awaits (late, or for a closed request), after a grace."""
        rows = self.db.query(
            "SELECT a.* FROM external_answers a LEFT JOIN external_requests r "
            "ON r.id = a.request_id WHERE (r.id IS NULL OR r.state != 'awaiting') "
            "AND a.received_at < ?",
            (now - LATE_ANSWER_GRACE_S,),
        )
        if not rows:
            return False
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM external_answers WHERE sop_instance_uid = ?",
                [(r["sop_instance_uid"],) for r in rows],
            )
        self._delete_files(rows)
        LOGGER.warning(
            "%d answer object(s) dropped: no request awaits them (after the time limit, or "
            "for a run that was replaced)",
            len(rows),
        )
        self.db.record_event("external_answer_dropped", detail=f"{len(rows)} object(s)")
        return True

    def _delete_files(self, answers: list[Row]) -> None:
        for answer in answers:
            path = Path(answer["path"])
            path.unlink(missing_ok=True)
            for folder in (path.parent, path.parent.parent):  # series, study folders if empty
                try:
                    folder.rmdir()
                except OSError:
                    break

    def purge_mappings(self, now: float | None = None) -> int:
        """Each vendor's mapping rows older than its ``mapping_keep_days``; the rows of a
        vendor no longer declared after the longest time any is kept (30 days at least)."""
        config = self._config()
        purged = 0
        longest = 30.0
        for name, declared in config.external_algorithms.items():
            store = mapping_store(self.data_dir, name, declared)
            purged += store.purge(now, scope=name).studies
            longest = max(longest, declared.mapping_keep_days)
        if (self.data_dir / FILE_NAME).exists():
            keys = keys_for_site(self.data_dir, "any")  # the storage key is every scope's
            everything = MappingStore.in_data_dir(self.data_dir, keys.storage_key(), longest)
            purged += everything.purge(now).studies
        return purged
