"""The dispatch stage: C-STORE (or STOW-RS, ``type: dicomweb``) results or forwarded series to
destinations, with retries.

After the retry budget a dispatch is dead-lettered: kept, visible in status and the API, and
retried by command. Nothing is dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from config.schema import DicomWebDestination, RouterConfig
from router.assemble.study_state import reopen_study, settle_study
from router.audit.events import NO_AUDIT, AuditRecorder, RemoteNode, SendStarted
from router.deliver.dicom_send import FileToSend, Peer, SendError, send_files
from router.deliver.dicomweb_send import stow_files
from router.deliver.result_writer import result_object_paths
from router.logs import log_safe
from router.polling_stage import PollingStage
from router.store.database import Database, Row
from router.store.queue import Claim, Claimer, FailOutcome, LeaseKeeper, QueueTable, SqlWorkQueue

LOGGER = logging.getLogger(__name__)

SendFunction = Callable[[Peer, list[FileToSend]], int]
WebSendFunction = Callable[[DicomWebDestination, list[FileToSend]], int]

DISPATCHES = QueueTable("dispatches", ready="pending", claimed="sending", done="done", dead="dead")
UNREACHABLE = "unreachable: "
"""How the error of a send that found no one at the destination starts: the destination probe
(``destination_probe.py``) looks for it."""


class Dispatcher(PollingStage):
    name = "dispatcher"

    def __init__(
        self,
        db: Database,
        config: Callable[[], RouterConfig],
        send: SendFunction = send_files,
        on_delivered: Callable[[Row], None] | None = None,
        *,
        claimer: Claimer | None = None,
        leases: LeaseKeeper | None = None,
        audit: AuditRecorder = NO_AUDIT,
        send_web: WebSendFunction = stow_files,
    ) -> None:
        super().__init__()
        self.db = db
        self._audit = audit
        self._config = config
        self._send = send
        self._send_web = send_web
        self._on_delivered = on_delivered
        self._leases = leases or LeaseKeeper()
        self.items = SqlWorkQueue(
            db,
            DISPATCHES,
            claimer or Claimer.ephemeral(),
            lambda _row: self._config().dispatch.retry,
            on_dead=self._dead,
        )

    def reclaim_previous_boot(self) -> int:
        return self.items.reclaim_previous_boot()

    def retry_dead(self, dispatch_id: int | None = None) -> int:
        """Requeue one dead-lettered dispatch, or all of them, with a fresh retry budget."""
        count = len(self.items.requeue_dead(dispatch_id, reopen_study))
        self.wake()
        return count

    def run_once(self, now: float | None = None) -> bool:
        """Send one ready dispatch. Returns False when none was ready."""
        claim = self.items.claim(now)
        if claim is None:
            return False
        row = claim.row
        config = self._config()
        started: SendStarted | None = None
        with self._leases.held(self.items, claim):
            try:
                destination = config.destinations.get(row["destination"])
                if destination is None:
                    raise SendError(f"destination {row['destination']!r} is no longer configured")
                files = self._files(row, destination.results)
                if files:  # none: the result has none of the objects this destination takes
                    if isinstance(destination, DicomWebDestination):
                        host, port = destination.host_port()
                        remote = RemoteNode(destination.url, host, port)
                        local_ae = config.node.ae_title
                    else:
                        peer = Peer.for_destination(destination, config.node.ae_title)
                        remote = RemoteNode(peer.ae_title, peer.host, peer.port)
                        local_ae = peer.calling_ae_title
                    started = SendStarted(
                        remote, local_ae, row["study_uid"], Counter(f.sop_class_uid for f in files)
                    )
                    self._audit.record(started)
                    if isinstance(destination, DicomWebDestination):
                        self._send_web(destination, files)  # STOW-RS
                    else:
                        self._send(peer, files)  # C-STORE
                    self._audit.record(started.finished(None))
            except (SendError, OSError, ValueError, RuntimeError) as exc:
                if started is not None:
                    self._audit.record(started.finished(str(exc)))
                unreachable = isinstance(exc, ConnectionError) or (
                    isinstance(exc, SendError) and exc.unreachable
                )
                self._failed(claim, f"{UNREACHABLE}{exc}" if unreachable else str(exc))
                return True
        with self.db.transaction() as conn:
            if not self.items.complete(conn, claim):
                LOGGER.warning(
                    "dispatch %d (study %s): claim lost while sending; left to its new owner",
                    claim.id,
                    row["study_uid"],
                )
                return True
        LOGGER.info(
            "dispatch %d: study %s sent to %s", row["id"], row["study_uid"], row["destination"]
        )
        self.db.record_event(
            "dispatch_done",
            row["study_uid"],
            detail=f"dispatch {row['id']} to {row['destination']}",
        )
        if self._on_delivered is not None:
            try:
                self._on_delivered(row)
            except Exception:
                LOGGER.exception(
                    "dispatch %d (study %s): delivery observer failed", row["id"], row["study_uid"]
                )
        settle_study(self.db, row["study_uid"])
        return True

    def _files(self, row: Row, kinds: Sequence[str]) -> list[FileToSend]:
        """What a dispatch sends: the result's objects of ``kinds`` (the destination's
        ``results``; SEG before the SR that references it, then KOS, GSPS, summary image, then
        an external algorithm's own objects), or
        a forwarded series."""
        if row["result_id"] is not None:
            result_id = int(row["result_id"])
            if not result_object_paths(self.db, result_id):
                raise SendError(f"result {row['result_id']} has no stored objects")
            # An external algorithm's own objects go wherever its result goes.
            return [
                FileToSend.from_path(path)
                for path in result_object_paths(self.db, result_id, kinds=(*kinds, "vendor"))
            ]
        instances = self.db.query(
            "SELECT path, sop_class_uid, transfer_syntax_uid FROM instances WHERE series_uid = ? "
            "ORDER BY instance_number, sop_instance_uid",
            (row["series_uid"],),
        )
        return [
            FileToSend(Path(i["path"]), i["sop_class_uid"], i["transfer_syntax_uid"])
            for i in instances
        ]

    def _failed(self, claim: Claim, error: str) -> None:
        row = claim.row
        policy = self._config().dispatch.retry
        if self.items.fail(claim, error) is FailOutcome.RETRY:
            LOGGER.warning(
                "dispatch %d (study %s) to %s failed (attempt %d of %d), retry in %.0f s: %s",
                row["id"],
                row["study_uid"],
                row["destination"],
                claim.attempts,
                policy.max_attempts,
                policy.delay_s(claim.attempts),
                log_safe(error, 300),
            )

    def _dead(self, row: Row, error: str) -> None:
        """After the retry budget (or an interruption on the last attempt): kept, visible."""
        self.db.record_event(
            "dispatch_dead_letter", row["study_uid"], detail=f"dispatch {row['id']}: {error}"
        )
        LOGGER.error(
            "dispatch %d (study %s) to %s dead-lettered after %d attempts: %s",
            row["id"],
            row["study_uid"],
            row["destination"],
            row["attempts"],
            log_safe(error, 300),
        )
        settle_study(self.db, row["study_uid"])
