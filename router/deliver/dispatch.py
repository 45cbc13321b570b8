"""The dispatch stage: C-STORE results (or forwarded series) to destinations, with retries.

After the retry budget a dispatch is dead-lettered: kept, visible in status and the API, and
retried by command. Nothing is dropped.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from config.schema import RouterConfig
from router.assemble.study_state import settle_study
from router.deliver.dead_letters import requeue_dead
from router.deliver.dicom_send import FileToSend, Peer, SendError, send_files
from router.deliver.result_writer import result_object_paths
from router.polling_stage import PollingStage
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

SendFunction = Callable[[Peer, list[FileToSend]], int]


class Dispatcher(PollingStage):
    name = "dispatcher"

    def __init__(
        self,
        db: Database,
        config: Callable[[], RouterConfig],
        send: SendFunction = send_files,
        on_delivered: Callable[[sqlite3.Row], None] | None = None,
    ) -> None:
        super().__init__()
        self.db = db
        self._config = config
        self._send = send
        self._on_delivered = on_delivered

    def resume_interrupted(self) -> int:
        return (
            self.db.connection()
            .execute(
                "UPDATE dispatches SET state = 'pending', not_before = 0 WHERE state = 'sending'"
            )
            .rowcount
        )

    def retry_dead(self, dispatch_id: int | None = None) -> int:
        """Requeue one dead-lettered dispatch, or all of them, with a fresh retry budget."""
        count = requeue_dead(self.db, "dispatches", dispatch_id)
        self.wake()
        return count

    def run_once(self, now: float | None = None) -> bool:
        """Send one ready dispatch. Returns False when none was ready."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            row = conn.execute(
                "UPDATE dispatches SET state = 'sending', attempts = attempts + 1 WHERE id = "
                "(SELECT id FROM dispatches WHERE state = 'pending' AND not_before <= ? "
                "ORDER BY not_before, id LIMIT 1) RETURNING *",
                (now,),
            ).fetchone()
        if row is None:
            return False
        config = self._config()
        try:
            destination = config.destinations.get(row["destination"])
            if destination is None:
                raise SendError(f"destination {row['destination']!r} is no longer configured")
            peer = Peer(
                ae_title=destination.ae_title,
                host=destination.host,
                port=destination.port,
                calling_ae_title=destination.calling_ae_title or config.node.ae_title,
                timeout_s=destination.timeout_s,
            )
            files = self._files(row)
            self._send(peer, files)
        except (SendError, OSError, ValueError, RuntimeError) as exc:
            self._failed(row, str(exc), config)
            return True
        self.db.connection().execute(
            "UPDATE dispatches SET state = 'done', finished_at = ?, last_error = '' WHERE id = ?",
            (time.time(), row["id"]),
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
                LOGGER.exception("delivery observer failed")
        settle_study(self.db, row["study_uid"])
        return True

    def _files(self, row: sqlite3.Row) -> list[FileToSend]:
        if row["result_id"] is not None:
            # Every object of the result (SEG before the SR that references it, then KOS).
            paths = result_object_paths(self.db, int(row["result_id"]))
            if not paths:
                raise SendError(f"result {row['result_id']} has no stored objects")
            return [FileToSend.from_path(path) for path in paths]
        instances = self.db.query(
            "SELECT path, sop_class_uid, transfer_syntax_uid FROM instances WHERE series_uid = ? "
            "ORDER BY instance_number, sop_instance_uid",
            (row["series_uid"],),
        )
        return [
            FileToSend(Path(i["path"]), i["sop_class_uid"], i["transfer_syntax_uid"])
            for i in instances
        ]

    def _failed(self, row: sqlite3.Row, error: str, config: RouterConfig) -> None:
        policy = config.dispatch.retry
        attempts = int(row["attempts"])
        if attempts < policy.max_attempts:
            delay = policy.delay_s(attempts)
            self.db.connection().execute(
                "UPDATE dispatches SET state = 'pending', not_before = ?, last_error = ? "
                "WHERE id = ?",
                (time.time() + delay, error, row["id"]),
            )
            LOGGER.warning(
                "dispatch %d to %s failed (attempt %d of %d), retry in %.0f s: %s",
                row["id"],
                row["destination"],
                attempts,
                policy.max_attempts,
                delay,
                error,
            )
            return
        self.db.connection().execute(
            "UPDATE dispatches SET state = 'dead', finished_at = ?, last_error = ? WHERE id = ?",
            (time.time(), error, row["id"]),
        )
        self.db.record_event(
            "dispatch_dead_letter", row["study_uid"], detail=f"dispatch {row['id']}: {error}"
        )
        LOGGER.error(
            "dispatch %d to %s dead-lettered after %d attempts: %s",
            row["id"],
            row["destination"],
            attempts,
            error,
        )
        settle_study(self.db, row["study_uid"])
