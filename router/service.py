"""The running router: wires every stage, recovers after a crash, reloads its config live."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from algorithms.registry import Registry
from algorithms.runtime import ModelRuntime
from config.loader import ConfigError, check_algorithms, read_config
from config.schema import RouterConfig
from router.api.app import ApiDependencies, Readiness, create_app
from router.assemble.assembler import Assembler
from router.assemble.completion import CompletionReason
from router.assemble.study_state import reopen_study, settle_study
from router.deliver.destination_probe import DestinationProbe
from router.deliver.dicom_send import send_files
from router.deliver.dispatch import Dispatcher, SendFunction
from router.deliver.notify import ChannelFactory, Notifier, queue_failure
from router.metrics import Metrics
from router.receive.ingest import Ingestor, IngestOutcome, Origin, read_header
from router.receive.node import AssociationTracker, DicomNode
from router.receive.spool import Spool
from router.retention import RetentionStage
from router.route.check_config import check_attribute_names
from router.route.planner import Planner
from router.run.job_queue import Job, JobQueue
from router.run.priors.stage import PriorStage
from router.run.worker import JobOutcome, JobRunner, WorkerPool
from router.store.database import Database
from router.store.pseudonyms import PatientKeys
from router.store.queue import Claimer, LeaseKeeper
from worklist.channels import channels_from_config

LOGGER = logging.getLogger(__name__)


class ConfigHolder:
    """The live config. Replaced whole, only by a config that passed every check."""

    def __init__(
        self, config: RouterConfig, path: Path | None, known_algorithms: list[str]
    ) -> None:
        self._config = config
        self.path = path
        self._known = known_algorithms
        self._mtime = path.stat().st_mtime_ns if path else 0
        self._lock = threading.Lock()

    def current(self) -> RouterConfig:
        with self._lock:
            return self._config

    def reload_if_changed(self) -> bool:
        """Load the file if it changed; swap it in only if it is valid. True if swapped."""
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            LOGGER.error("config file %s is missing; keeping the running config", self.path)
            return False
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            loaded = read_config(self.path)
        except ConfigError as exc:
            LOGGER.error("config change rejected, keeping the running config:\n%s", exc)
            return False
        candidate = loaded.config
        problems = check_algorithms(loaded.document, self._known) + check_attribute_names(
            loaded.document
        )
        if problems:
            LOGGER.error(
                "config change rejected, keeping the running config:\n%s",
                "\n".join(str(p) for p in problems),
            )
            return False
        with self._lock:
            old, self._config = self._config, candidate
        if (
            old.node != candidate.node
            or old.http != candidate.http
            or old.storage != candidate.storage
            or old.model_dirs != candidate.model_dirs
        ):
            LOGGER.warning(
                "node/http/storage/model_dirs settings changed: they take effect after a restart"
            )
        changed_models = sorted(
            name
            for name in set(old.algorithms) | set(candidate.algorithms)
            if _load_settings(old, name) != _load_settings(candidate, name)
        )
        if changed_models:
            LOGGER.warning(
                "device/max_concurrent of %s changed: they take effect when the model is next "
                "loaded (after a restart)",
                changed_models,
            )
        LOGGER.info(
            "config reloaded from %s: rules %s (were %s)",
            self.path,
            [r.name for r in candidate.rules],
            [r.name for r in old.rules],
        )
        return True


def _load_settings(config: RouterConfig, name: str) -> tuple[str, int] | None:
    settings = config.algorithms.get(name)
    return None if settings is None else (settings.device, settings.max_concurrent)


class RouterService:
    def __init__(
        self,
        config: RouterConfig,
        config_path: Path | None = None,
        *,
        registry: Registry | None = None,
        send: SendFunction = send_files,
        data_dir: Path | None = None,
        channels: ChannelFactory | None = None,
    ) -> None:
        self.registry = registry or Registry.discover(manifest_dirs=config.model_dirs)
        self.holder = ConfigHolder(config, config_path, self.registry.names())
        self.data_dir = (data_dir or config.storage.data_dir).resolve()
        self.db = Database(self.data_dir / "radrouter.sqlite3")
        self.spool = Spool(self.data_dir / "spool", config.storage.min_free_mb * 2**20)
        self.metrics = Metrics(self._state_counts)
        self.claimer = Claimer.for_data_dir(self.data_dir)
        self.leases = LeaseKeeper()
        self.queue = JobQueue(
            self.db,
            claimer=self.claimer,
            retry=lambda: self.holder.current().jobs.retry,
            on_dead=self._job_failed,
        )
        self.runtime = ModelRuntime(
            self.registry,
            lambda: {k: v.device for k, v in self.holder.current().algorithms.items()},
            max_concurrent=lambda: {
                k: v.max_concurrent for k, v in self.holder.current().algorithms.items()
            },
        )
        self.dispatcher = Dispatcher(
            self.db,
            self.holder.current,
            send,
            self._delivered,
            claimer=self.claimer,
            leases=self.leases,
        )
        self.retention = RetentionStage(self.db, self.holder.current, self.data_dir)
        self.probe = DestinationProbe(
            self.db, self.holder.current, self.dispatcher.items, on_back=self.dispatcher.wake
        )
        self.notifier = Notifier(
            self.db,
            self.registry,
            self.holder.current,
            channels or (lambda config: channels_from_config(config.worklist.notify)),
            on_flag=self._flagged,
            on_delivered=self._notified,
            claimer=self.claimer,
            leases=self.leases,
        )
        self.workers = WorkerPool(
            self.queue,
            JobRunner(self.db, self.runtime, self.data_dir / "results", self.holder.current),
            self.holder.current,
            self.leases,
            on_job_done=self._job_done,
            on_results=self._results_written,
        )
        self.priors = PriorStage(
            self.db,
            self.holder.current,
            keys=PatientKeys.for_site(self.data_dir),
            claimer=self.claimer,
            leases=self.leases,
            on_released=self.workers.wake,
        )
        self.planner = Planner(self.db, self.queue, self.holder.current, self._planned)
        self.assembler = Assembler(
            self.db, lambda: self.holder.current().completion, self._study_complete
        )
        self.ingestor = Ingestor(self.db, self.spool, self.data_dir / "quarantine", self._stored)
        self.tracker = AssociationTracker(self.db, lambda _id: self.assembler.wake())
        self.node = DicomNode(
            config.node,
            self.ingestor,
            self.tracker,
            lambda: self.holder.current().node.allowed_callers,
            self._received,
        )
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self._http_port: int | None = None
        self._stop = threading.Event()
        self._reload_thread: threading.Thread | None = None
        self._started = False

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, warm: bool = True) -> None:
        self.recover()
        if warm:
            wanted = sorted(self.holder.current().algorithm_names() & set(self.registry.names()))
            self.runtime.warm(wanted)
        self.leases.start()
        self.assembler.start()
        self.priors.start()
        self.workers.start()
        self.dispatcher.start()
        self.probe.start()
        self.retention.start()
        self.notifier.start()
        self.node.start()
        self._start_http()
        self._reload_thread = threading.Thread(
            target=self._watch_config, name="config", daemon=True
        )
        self._reload_thread.start()
        self._started = True
        self.db.record_event("router_started", detail=f"algorithms {self.runtime.loaded()}")

    def stop(self) -> None:
        self._stop.set()
        self.node.stop()
        if self._http is not None:
            self._http.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(timeout=10)
        self.assembler.stop()
        self.priors.stop()
        self.workers.stop()
        self.dispatcher.stop()
        self.probe.stop()
        self.retention.stop()
        self.notifier.stop()
        given_back = self.leases.release_all()
        self.leases.stop()
        self.db.record_event("router_stopped", detail=f"{given_back} unfinished item(s) given back")
        self._started = False

    def recover(self) -> None:
        """Resume after a crash: partial writes dropped, spool re-indexed, work requeued."""
        removed = self.spool.clean_incoming()
        indexed = {row["path"] for row in self.db.query("SELECT path FROM instances")}
        recovered = 0
        for path in self.spool.iter_files():
            if str(path) in indexed:
                continue
            data = path.read_bytes()
            header, _ = read_header(data)
            self.ingestor.ingest(data, Origin(None, "", ""), header.sop_instance_uid)
            recovered += 1
        interrupted = (
            self.db.connection()
            .execute(
                "UPDATE associations SET state = 'interrupted', closed_at = ? WHERE state = 'open'",
                (time.time(),),
            )
            .rowcount
        )
        jobs = self.queue.items.reclaim_previous_boot() + self.priors.reclaim_previous_boot()
        dispatches = self.dispatcher.reclaim_previous_boot()
        dispatches += self.notifier.reclaim_previous_boot()
        for row in self.db.query(
            "SELECT study_uid, revision FROM studies WHERE state = 'complete'"
        ):
            self.planner.plan(row["study_uid"], int(row["revision"]), CompletionReason.STUDY_IDLE)
        if removed or recovered or interrupted or jobs or dispatches:
            LOGGER.info(
                "recovered: %d partial writes removed, %d spool files re-indexed, "
                "%d associations closed, %d interrupted jobs and %d interrupted sends requeued",
                removed,
                recovered,
                interrupted,
                jobs,
                dispatches,
            )

    # --- http -------------------------------------------------------------------------------

    @property
    def http_port(self) -> int | None:
        return self._http_port

    def _start_http(self) -> None:
        http = self.holder.current().http
        app = create_app(
            ApiDependencies(
                db=self.db,
                metrics=self.metrics,
                readiness=self.readiness,
                retry_dispatch=self.dispatcher.retry_dead,
                retry_delivery=self.notifier.retry_dead,
                retry_job=self._retry_job,
            )
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((http.host, http.port))
        self._http_port = int(sock.getsockname()[1])
        # log_config=None: uvicorn's lines go through radrouter's handler and format
        # (router/logs.py) instead of a handler of its own.
        server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, log_level="warning", access_log=False)
        )
        self._http = server
        self._http_thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._http_thread.start()
        deadline = time.time() + 10
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        LOGGER.info("HTTP API on http://%s:%d", http.host, self._http_port)

    def readiness(self) -> Readiness:
        loaded = self.runtime.loaded()
        wanted = self.holder.current().algorithm_names()
        missing = sorted(wanted - set(loaded))
        try:
            self.db.query_one("SELECT 1")
            database = "ok"
        except Exception as exc:
            database = f"error: {exc}"
        ready = self._started and database == "ok" and not missing
        return Readiness(
            ready,
            {
                "database": database,
                "dicom_port": self.node.port if self._started else None,
                "models": loaded,
                "model_status": {
                    name: {
                        "device": st.device,
                        "provider": st.provider,
                        "backend": st.backend,
                        "max_concurrent": st.max_concurrent,
                    }
                    for name, st in self.runtime.status().items()
                },
                "models_not_loaded": missing,
                "model_load_errors": self.runtime.load_errors(),
                "plugin_problems": {p.name: p.error for p in self.registry.problems},
            },
        )

    # --- observers and hand-offs ------------------------------------------------------------

    def _watch_config(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.holder.reload_if_changed()
            except Exception:
                LOGGER.exception("config reload check failed")

    def _retry_job(self, job_id: int) -> bool:
        requeued = self.queue.retry(job_id, reopen_study)
        if requeued:
            self.workers.wake()
        return requeued

    def _planned(self) -> None:
        self.priors.wake()
        self.workers.wake()

    def _job_failed(self, job: Any, error: str) -> None:
        """A job that failed for good (its last attempt failed or was interrupted): the
        worklist states the failure, never a silent negative (unless in shadow mode)."""
        settings = self.holder.current().algorithms.get(job["algorithm"])
        if settings is None or not settings.shadow:
            queue_failure(self.db, job["study_uid"], int(job["id"]))
        self._results_written()
        settle_study(self.db, job["study_uid"])

    def _received(self, _calling_ae: str, status: Any) -> None:
        self.metrics.observe(
            lambda: self.metrics.instances_received.labels(status=status.name.lower()).inc()
        )

    def _stored(self, outcome: IngestOutcome) -> None:
        if outcome.reopened:
            self.assembler.wake()

    def _study_complete(self, study_uid: str, revision: int, reason: CompletionReason) -> None:
        row = self.db.query_one(
            "SELECT last_received_at, completed_at FROM studies WHERE study_uid = ?", (study_uid,)
        )
        if row is not None and row["completed_at"] is not None:
            delay = float(row["completed_at"] - row["last_received_at"])
            self.metrics.observe(lambda: self.metrics.completion_delay.observe(delay))
        self.metrics.observe(
            lambda: self.metrics.studies_completed.labels(reason=reason.name.lower()).inc()
        )
        self.planner.plan(study_uid, revision, reason)

    def _job_done(self, job: Job, outcome: JobOutcome) -> None:
        if outcome.model_seconds is not None:
            seconds = outcome.model_seconds
            self.metrics.observe(
                lambda: self.metrics.model_seconds.labels(
                    algorithm=job.algorithm, device=outcome.device
                ).observe(seconds)
            )

    def _results_written(self) -> None:
        self.dispatcher.wake()
        self.notifier.wake()

    def _flagged(self, algorithm: str, seconds: float) -> None:
        self.metrics.observe(
            lambda: self.metrics.last_image_to_flag.labels(
                algorithm=algorithm, channel="worklist"
            ).observe(seconds)
        )

    def _notified(self, algorithm: str, channel: str, seconds: float) -> None:
        self.metrics.observe(
            lambda: self.metrics.last_image_to_flag.labels(
                algorithm=algorithm, channel=channel
            ).observe(seconds)
        )

    def _delivered(self, dispatch: Any) -> None:
        if dispatch["result_id"] is None:
            return
        row = self.db.query_one(
            "SELECT s.last_received_at, r.algorithm FROM results r "
            "JOIN studies s ON s.study_uid = r.study_uid WHERE r.id = ?",
            (dispatch["result_id"],),
        )
        if row is not None:
            elapsed = time.time() - float(row["last_received_at"])
            self.metrics.observe(
                lambda: self.metrics.last_image_to_result_stored.labels(
                    algorithm=row["algorithm"]
                ).observe(elapsed)
            )

    def _state_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for table in ("jobs", "studies", "dispatches", "deliveries"):
            counts[table] = {
                r["state"]: int(r["n"])
                for r in self.db.query(f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state")
            }
        return counts


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or the timeout passes."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
