"""The running router: wires every stage, recovers after a crash, reloads its config live."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import pydicom.config
import uvicorn

from algorithms.contract import Purpose
from algorithms.registry import Registry
from algorithms.runtime import ModelRuntime, cuda_available
from config.schema import RouterConfig, http_is_loopback, http_is_secure
from router.admin_page.api import AdminDependencies
from router.admin_page.history import ConfigChangeLog
from router.api.app import ApiDependencies, Readiness, create_app
from router.api.auth import HttpSecurity, RefusalEvents, RefusalHook, ignore_session
from router.api.tls import server_context
from router.assemble.assembler import Assembler
from router.assemble.completion import CompletionReason
from router.assemble.study_state import reopen_study, settle_study
from router.audit.events import (
    NO_AUDIT,
    ApplicationStarted,
    ApplicationStopped,
    AuditRecorder,
    StudyPurged,
)
from router.audit.http import AuditRefusals, AuditSessions
from router.audit.wiring import build_trail
from router.deliver.destination_probe import DestinationProbe
from router.deliver.dicom_send import send_files
from router.deliver.dispatch import Dispatcher, SendFunction
from router.deliver.notify import ChannelFactory, Notifier, queue_failure
from router.drift.metrics import DriftGauges, qa_out_of_tolerance
from router.drift.monitor import DriftMonitor
from router.external.answer_fetch import AnswerFetcher
from router.external.answers import AnswerStage
from router.external.declared import AlgorithmInfos
from router.external.outbound import VendorSender
from router.live_config import ConfigHolder, LastGood, Rejection
from router.metrics import Metrics
from router.receive.ingest import Ingestor, IngestOutcome, Origin
from router.receive.node import AssociationTracker, DicomNode
from router.receive.private_files import make_private_dir, narrow_to_owner
from router.receive.quarantine import Quarantine
from router.receive.receiver_processes import (
    STARTED_EVENT,
    ReceiverProcesses,
    receiver_argv,
    started_detail,
)
from router.receive.spool import Spool
from router.retention import RetentionStage
from router.roles import PARTS, Role, process_name
from router.route.planner import Planner
from router.run.job_queue import Job, JobQueue
from router.run.priors.dicomweb_retrieve import InstanceStore
from router.run.priors.stage import PriorStage
from router.run.worker import JobOutcome, JobRunner, WorkerPool
from router.store.database import (
    ASSEMBLE_CHANNEL,
    ENGINE_ERRORS,
    JOBS_CHANNEL,
    SqliteDatabase,
)
from router.store.nodes import NodeHeartbeat, host_name, live_nodes
from router.store.open import open_configured
from router.store.postgres import Listener, PostgresDatabase
from router.store.pseudonyms import PatientKeys
from router.store.queue import Claimer, LeaseKeeper
from worklist.channels import channels_from_config

LOGGER = logging.getLogger(__name__)


WORKER_IDLE_LISTENING_S = 2.0
"""How often an idle worker looks for jobs when the database announces them."""


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
        running_last_good: Rejection | None = None,
        role: Role = "all",
        receiver_index: int = 0,
    ) -> None:
        """``role``: ``all`` is the router; the others are its parts (``router.roles``), each
        a process of its own sharing the database and the spool: ``receiver`` only takes
        instances on the DICOM port (one of ``node.receivers``, numbered from 1 by
        ``receiver_index``, or one on another host), ``worker`` runs jobs, ``dispatcher``
        completes studies and sends results, ``api`` serves HTTP."""
        self.role = role
        self.parts = PARTS[role]
        self.receiver_index = receiver_index
        self.process_name = process_name(role, receiver_index, host_name())
        self._parent_pid = os.getppid()
        self._receivers: ReceiverProcesses | None = None
        self.registry = registry or Registry.discover(manifest_dirs=config.model_dirs)
        self.holder = ConfigHolder(
            config,
            config_path,
            self.registry.parameter_names(),
            last_good=LastGood((data_dir or config.storage.data_dir).resolve(), config_path),
            running_last_good=running_last_good,
        )
        self.data_dir = (data_dir or config.storage.data_dir).resolve()
        make_private_dir(self.data_dir)  # spool, quarantine, results, database: patient data
        # pydicom's validation warnings quote the value they find invalid ("Invalid value for
        # VR DA: '02.01.1960'"): patient data in the log. radrouter reads headers tolerantly
        # and checks what it relies on itself, so they only leak (docs/security.md).
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
        self.db = open_configured(config.storage.database, self.data_dir)
        if isinstance(self.db, SqliteDatabase):
            narrow_to_owner(self.db.path)  # SQLite gives its WAL and SHM files the same mode
        if not self.parts.coordinator:  # the coordinator forwards the shared log, once
            config = config.model_copy(
                update={"audit": config.audit.model_copy(update={"syslog": None})}
            )
        self.audit_trail = build_trail(config, self.data_dir, self.db)
        self.audit: AuditRecorder = self.audit_trail or NO_AUDIT
        if self.parts.coordinator:  # a change is recorded once
            self.holder.audit = ConfigChangeLog(self.db, self.audit)
        self.spool = Spool(
            self.data_dir / "spool",
            config.storage.min_free_mb * 2**20,
            f".incoming-{self.process_name}" if self.process_name else ".incoming",
        )
        self.drift = DriftMonitor(
            self.db,
            lambda: self.holder.current().drift,
            exclude=self._quality_control_algorithms,
        )
        self.metrics = Metrics(
            self._state_counts,
            scraped=[
                DriftGauges(
                    self.drift.report,
                    lambda: qa_out_of_tolerance(self.db, self._quality_control_algorithms()),
                )
            ],
        )
        self.claimer = Claimer.for_data_dir(self.data_dir, self.process_name)
        self.heartbeat = NodeHeartbeat(self.db, self.claimer.node_id, role, self._loaded_algorithms)
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
            audit=self.audit,
        )
        self.retention = RetentionStage(
            self.db,
            self.holder.current,
            self.data_dir,
            on_purged=lambda study_uid, files, rule: self.audit.record(
                StudyPurged(study_uid, files, rule)
            ),
            before_purge=(self.audit_trail.composer.remember_subject if self.audit_trail else None),
        )
        self.probe = DestinationProbe(
            self.db, self.holder.current, self.dispatcher.items, on_back=self.dispatcher.wake
        )
        self.algorithm_infos = AlgorithmInfos(self.registry, self.holder.current)
        self.notifier = Notifier(
            self.db,
            self.algorithm_infos,
            self.holder.current,
            channels or (lambda config: channels_from_config(config.worklist.notify)),
            on_flag=self._flagged,
            on_delivered=self._notified,
            claimer=self.claimer,
            leases=self.leases,
        )
        self.vendors = VendorSender(self.data_dir, self.holder.current, audit=self.audit)
        self.workers = WorkerPool(
            self.queue,
            JobRunner(
                self.db,
                self.runtime,
                self.data_dir / "results",
                self.holder.current,
                vendors=self.vendors,
            ),
            self.holder.current,
            self.leases,
            on_job_done=self._job_done,
            on_results=self._results_written,
            algorithms=None if role == "all" else lambda: self._loaded_algorithms()[0],
            # On PostgreSQL queued jobs are announced (LISTEN/NOTIFY): looking now and then
            # only catches what no notification announces (a lease that expired).
            idle_s=WORKER_IDLE_LISTENING_S if isinstance(self.db, PostgresDatabase) else 0.2,
        )
        self.answers = AnswerStage(
            self.db,
            self.data_dir,
            self.holder.current,
            self.algorithm_infos,
            on_results=self._results_written,
            fetcher=AnswerFetcher(self.db, self._store_retrieved, self.spool.incoming),
        )
        self.priors = PriorStage(
            self.db,
            self.holder.current,
            keys=PatientKeys.for_site(self.data_dir),
            audit=self.audit,
            claimer=self.claimer,
            leases=self.leases,
            on_released=self.workers.wake,
            instances=InstanceStore(self._store_retrieved, self.spool.incoming),
        )
        self.planner = Planner(
            self.db, self.queue, self.holder.current, self._planned, self.registry.purposes()
        )
        self.assembler = Assembler(
            self.db, lambda: self.holder.current().completion, self._study_complete
        )
        self.ingestor = Ingestor(
            self.db,
            self.spool,
            Quarantine(self.data_dir / "quarantine", self.db, config.node.quarantine),
            self._stored,
            limits=config.node.limits,
        )
        self.tracker = AssociationTracker(
            self.db,
            self._association_closed,
            f"{self.process_name}-" if self.process_name else "",
        )
        wakes = {}
        if self.parts.workers:
            wakes[JOBS_CHANNEL] = self.workers.wake
        if self.parts.coordinator:
            wakes[ASSEMBLE_CHANNEL] = self.assembler.wake
        self._listener = (
            Listener(self.db.settings, wakes)
            if isinstance(self.db, PostgresDatabase) and wakes
            else None
        )
        self.node = DicomNode(
            config.node,
            self.ingestor,
            self.tracker,
            lambda: self.holder.current().node.allowed_callers,
            self._received,
            audit=self.audit,
            shared_port=config.node.receivers > 1 or role == "receiver",
        )
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self._http_port: int | None = None
        self.on_http_refused: RefusalHook = RefusalEvents(
            lambda kind, detail: self.db.record_event(kind, detail=detail)
        )
        """Told of every refused HTTP request (``router.api.auth.AuthFailure``); set it before
        ``start``. Until the audit trail takes it over, refusals go to the events table."""
        if self.audit_trail is not None:
            self.on_http_refused = AuditRefusals(self.audit_trail)
        self._stop = threading.Event()
        self._reload_thread: threading.Thread | None = None
        self._started = False

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, warm: bool = True) -> None:
        if self.audit_trail is not None:
            self.audit_trail.start()
        if self.role == "receiver":
            self._start_receiver()
            self.heartbeat.start()
            return
        parts = self.parts
        self.recover()
        if warm and parts.workers:
            wanted = sorted(self.holder.current().algorithm_names() & set(self.registry.names()))
            self.runtime.warm(wanted)
        self.leases.start()
        if self._listener is not None:
            self._listener.start()
        if parts.coordinator:
            self.assembler.start()
        if parts.workers:
            self.priors.start()
            self.workers.start()
        if parts.coordinator:
            self.answers.start()
            self.dispatcher.start()
            self.probe.start()
            self.retention.start()
            self.notifier.start()
        if parts.node:
            self.node.start()
        if self.role == "all":
            self._start_receivers()
        if parts.http:
            self._start_http()
        self._reload_thread = threading.Thread(
            target=self._watch_config, name="config", daemon=True
        )
        self._reload_thread.start()
        self._started = True
        self.heartbeat.start()
        started = "router_started" if self.role == "all" else f"{self.role}_started"
        self.db.record_event(
            started, detail=f"{self.process_name or 'router'} algorithms {self.runtime.loaded()}"
        )
        self.audit.record(ApplicationStarted())

    def stop(self) -> None:
        self._stop.set()
        self.node.stop()
        self._stop_receivers()
        self.heartbeat.stop()
        if self.role == "receiver":
            if self.audit_trail is not None:
                self.audit_trail.stop()
            self.db.close_all()
            return
        if self._http is not None:
            self._http.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(timeout=10)
        self.assembler.stop()
        self.priors.stop()
        self.workers.stop()
        self.answers.stop()
        self.dispatcher.stop()
        self.probe.stop()
        self.retention.stop()
        self.notifier.stop()
        if self._listener is not None:
            self._listener.stop()
        given_back = self.leases.release_all()
        self.leases.stop()
        stopped = "router_stopped" if self.role == "all" else f"{self.role}_stopped"
        self.db.record_event(stopped, detail=f"{given_back} unfinished item(s) given back")
        self._started = False
        self.audit.record(ApplicationStopped())
        if self.audit_trail is not None:
            self.audit_trail.stop()
        self.db.close_all()

    def _loaded_algorithms(self) -> tuple[list[str], dict[str, str]]:
        """What this process claims jobs of (the node registry lists it): the configured
        algorithms installed here (loaded at start, or on their first job after a change of
        configuration) and the external ones (any worker sends to the vendor); and the device
        each loaded model runs on."""
        if not self.parts.workers:
            return [], {}
        config = self.holder.current()
        status = self.runtime.status()
        devices = {
            name: "cuda" if "cuda" in st.provider.lower() else "cpu" for name, st in status.items()
        }
        gpu_here: bool | None = None
        claimable = set()
        for name in config.algorithm_names() & set(self.registry.names()):
            settings = config.algorithms.get(name)
            if settings is None or settings.device != "cuda":
                claimable.add(name)
                continue
            # A model configured for a GPU that this host lacks runs on its CPU when the
            # router is one process; a worker of a deployment leaves its jobs to a host
            # that has one.
            if name in devices:
                has_gpu = devices[name] == "cuda"
            else:
                gpu_here = cuda_available() if gpu_here is None else gpu_here
                has_gpu = gpu_here
            if has_gpu:
                claimable.add(name)
        return sorted(claimable | set(config.external_algorithms)), devices

    # --- receivers sharing the DICOM port ---------------------------------------------------

    def _start_receiver(self) -> None:
        """A receiver process: its own partial files from a crash dropped, the node started on
        the shared port, the configuration watched (allowed callers, limits)."""
        removed = self.spool.clean_incoming()
        self.node.start()
        self._reload_thread = threading.Thread(
            target=self._watch_config, name="config", daemon=True
        )
        self._reload_thread.start()
        self._started = True
        self.db.record_event(STARTED_EVENT, detail=started_detail(self.receiver_index))
        LOGGER.info(
            "receiver %d listening on port %s (%d partial file(s) of a crash removed)",
            self.receiver_index,
            self.node.listening_ports().get("dicom"),
            removed,
        )

    def _start_receivers(self) -> None:
        """The other ``node.receivers - 1`` processes on the shared DICOM port, started after
        this one has migrated the database and listens; stopped with it."""
        count = self.holder.current().node.receivers
        if count <= 1:
            return
        if self.holder.path is None:
            raise ValueError("node.receivers > 1 needs the router started from a config file")
        argv_of = partial(receiver_argv, self.holder.path, self.data_dir)
        self._receivers = ReceiverProcesses(self.db, argv_of)
        self._receivers.start(count)

    def _restart_dead_receivers(self) -> None:
        if self._receivers is not None and not self._stop.is_set():
            self._receivers.restart_dead()

    def _stop_receivers(self) -> None:
        if self._receivers is not None:
            self._receivers.stop()
            self._receivers = None

    def _receiver_counts(self) -> dict[str, int]:
        """What ``/readyz`` says of the receivers: the router itself listens once started."""
        configured = self.holder.current().node.receivers
        if self._receivers is None:
            return {"configured": configured, "running": 1 if self._started else 0, "starting": 0}
        return asdict(self._receivers.counts(configured))

    def recover(self) -> None:
        """Resume after a crash: partial writes dropped, spool re-indexed, work requeued —
        each by the role that owns it (the coordinator the spool and the sends, a worker its
        own interrupted jobs)."""
        parts = self.parts
        removed = self.spool.clean_incoming()
        recovered = interrupted = jobs = dispatches = 0
        if self.role == "all":
            # De-identified copies of a send that a crash cut short (the job runs again).
            shutil.rmtree(self.data_dir / "external-outbox", ignore_errors=True)
            # Open associations: every receiver ended with the router (receivers of other
            # hosts are run on their own, with a role of their own, never with ``all``).
            interrupted = (
                self.db.connection()
                .execute(
                    "UPDATE associations SET state = 'interrupted', closed_at = ? "
                    "WHERE state = 'open'",
                    (time.time(),),
                )
                .rowcount
            )
        if parts.coordinator:
            indexed = {row["path"] for row in self.db.query("SELECT path FROM instances")}
            indexed |= {row["path"] for row in self.db.query("SELECT path FROM external_answers")}
            for path in self.spool.iter_files():
                if str(path) in indexed:
                    continue
                recovered += self.ingestor.recover_file(path)
        if parts.workers:
            jobs = self.queue.items.reclaim_previous_boot() + self.priors.reclaim_previous_boot()
        if parts.coordinator:
            dispatches = self.dispatcher.reclaim_previous_boot()
            dispatches += self.notifier.reclaim_previous_boot()
            for row in self.db.query(
                "SELECT study_uid, revision FROM studies WHERE state = 'complete'"
            ):
                self.planner.plan(
                    row["study_uid"], int(row["revision"]), CompletionReason.STUDY_IDLE
                )
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
        security = HttpSecurity.from_config(
            http,
            on_refused=self.on_http_refused,
            on_session=AuditSessions(self.audit) if self.audit_trail else ignore_session,
        )
        app = create_app(
            ApiDependencies(
                db=self.db,
                metrics=self.metrics,
                readiness=self.readiness,
                retry_dispatch=self.dispatcher.retry_dead,
                retry_delivery=self.notifier.retry_dead,
                retry_job=self._retry_job,
                security=security,
                audit=self.audit,
                usage_sites=lambda: self.holder.current().usage.sites,
                drift=self.drift,
                drift_config=lambda: self.holder.current().drift,
                quality_control_algorithms=lambda: [
                    name
                    for name, purpose in self.registry.purposes().items()
                    if purpose is Purpose.QUALITY_CONTROL
                ],
                admin=AdminDependencies(
                    db=self.db,
                    holder=self.holder,
                    registry=self.registry,
                    readiness=self._readiness_body,
                    audit=self.audit,
                ),
            )
        )
        tls = server_context(http.tls) if http.tls is not None else None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((http.host, http.port))
        self._http_port = int(sock.getsockname()[1])
        # log_config=None: uvicorn's lines go through radrouter's handler and format
        # (router/logs.py) instead of a handler of its own.
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_config=None,
                log_level="warning",
                access_log=False,
                ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
            )
        )
        self._http = server
        self._http_thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._http_thread.start()
        deadline = time.time() + 10
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        scheme = "https" if tls is not None else "http"
        LOGGER.info("HTTP API on %s://%s:%d", scheme, http.host, self._http_port)
        if not http_is_secure(http):
            LOGGER.warning(
                "the HTTP API is not secure (TLS %s, authentication %s): fit for this "
                "host's loopback only",
                "on" if tls is not None else "off",
                "on" if http.auth is not None else "off",
            )

    def readiness(self) -> Readiness:
        loaded = self.runtime.loaded()
        config = self.holder.current()
        wanted = config.algorithm_names() - set(config.external_algorithms)  # vendors' run there
        missing = sorted(wanted - set(loaded)) if self.parts.workers else []
        try:
            self.db.query_one("SELECT 1")
            database = "ok"
        except Exception as exc:  # the probe reports any failure
            database = f"error: {type(exc).__name__}: {str(exc).strip()[:200]}"
        ready = self._started and database == "ok" and not missing
        ports = self.node.listening_ports() if self._started else {}
        return Readiness(
            ready,
            {
                "database": database,
                "database_engine": self.db.engine,
                "database_at": self.db.describe(),
                "config": self._config_state(),
                "http_security": self._http_security(),
                "dicom_port": ports.get("dicom"),
                "dicom_tls_port": ports.get("dicom_tls"),
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
                "nodes": [node.to_json(time.time()) for node in live_nodes(self.db)],
                "receivers": self._receiver_counts(),
                "model_load_errors": self.runtime.load_errors(),
                "plugin_problems": {p.name: p.error for p in self.registry.problems},
            },
        )

    def _readiness_body(self) -> dict[str, Any]:
        """What ``/readyz`` answers."""
        readiness = self.readiness()
        return {"ready": readiness.ready, **readiness.detail}

    def _config_state(self) -> dict[str, Any]:
        """What ``/readyz`` says of the configuration: its file, whether the last change of it
        was refused (and why), whether the last good one runs instead, and ``insecure``."""
        holder = self.holder
        rejected = holder.rejection
        return {
            "file": str(holder.path) if holder.path is not None else "shipped default",
            "running_last_good": holder.running_last_good,
            "last_change_rejected": None
            if rejected is None
            else {"at": rejected.at, "file": rejected.path, "problems": rejected.problems},
            "insecure": holder.current().insecure,
        }

    def _http_security(self) -> dict[str, Any]:
        """What ``/readyz`` says of the HTTP API's own protection."""
        http = self.holder.current().http
        return {
            "tls": http.tls is not None,
            "authentication": http.auth is not None,
            "loopback_only": http_is_loopback(http),
            "secure": http_is_secure(http),
        }

    # --- observers and hand-offs ------------------------------------------------------------

    def _watch_config(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.holder.reload_if_changed()
            except Exception:
                LOGGER.exception("config reload check failed")
            try:
                self._restart_dead_receivers()
            except Exception:
                LOGGER.exception("receiver check failed")
            if self.role == "receiver" and os.getppid() != self._parent_pid:
                # The router ended (even by kill -9): a receiver never outlives it, so a
                # restarted router does not find the port held by an orphan.
                LOGGER.warning("receiver %d: the router ended; stopping", self.receiver_index)
                os.kill(os.getpid(), signal.SIGTERM)
                return

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
        clinical = self.registry.purposes().get(job["algorithm"]) is not Purpose.QUALITY_CONTROL
        if clinical and (settings is None or not settings.shadow):
            queue_failure(self.db, job["study_uid"], int(job["id"]))
        self._results_written()
        settle_study(self.db, job["study_uid"])

    def _received(self, _calling_ae: str, status: Any) -> None:
        self.metrics.observe(
            lambda: self.metrics.instances_received.labels(status=status.name.lower()).inc()
        )

    def _store_retrieved(self, data: bytes) -> Path:
        """An instance of a prior fetched by WADO-RS: through the node's ingest path, as if
        the PACS had sent it by C-STORE (no association: the study completes on its timers,
        and the planner leaves it alone as a retrieved prior)."""
        origin = Origin(None, "", self.holder.current().node.ae_title)
        return self.ingestor.ingest(data, origin, None).path

    def _association_closed(self, _association_id: str) -> None:
        if self.role == "all":
            self.assembler.wake()
        else:  # the router's assembler, in another process (or, later, on another host)
            try:
                self.db.notify(ASSEMBLE_CHANNEL)
            except ENGINE_ERRORS:  # a wake-up only: the assembler also looks on its own
                LOGGER.warning("could not notify the assembler of a closed association")

    def _stored(self, outcome: IngestOutcome) -> None:
        if outcome.external_answer:
            self.answers.wake()
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

    def _quality_control_algorithms(self) -> list[str]:
        return [
            name
            for name, purpose in self.registry.purposes().items()
            if purpose is Purpose.QUALITY_CONTROL
        ]

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
