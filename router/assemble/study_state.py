"""Study end states: done when every job and dispatch of the current revision has ended."""

from __future__ import annotations

import time

from router.store.database import Connection, Database, Row

TERMINAL_STUDY_STATES = ("done", "attention", "unrouted", "prior")


def settle_study(db: Database, study_uid: str) -> str | None:
    """Move a processing study to ``done`` (or ``attention`` if a job failed, or a dispatch or
    a worklist delivery was dead-lettered) once nothing is pending. Returns the new state, or None if unchanged."""
    with db.transaction() as conn:
        study = conn.execute(
            "SELECT state, revision FROM studies WHERE study_uid = ?", (study_uid,)
        ).fetchone()
        if study is None or study["state"] != "processing":
            return None
        pending_jobs = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE study_uid = ? "
            "AND state IN ('waiting', 'queued', 'running')",
            (study_uid,),
        ).fetchone()[0]
        pending_dispatches = conn.execute(
            "SELECT COUNT(*) FROM dispatches WHERE study_uid = ? AND state IN ('pending', 'sending')",
            (study_uid,),
        ).fetchone()[0]
        pending_notifications = conn.execute(
            "SELECT (SELECT COUNT(*) FROM notify_queue WHERE study_uid = ? AND state = 'pending')"
            " + (SELECT COUNT(*) FROM deliveries WHERE study_uid = ? "
            "AND state IN ('pending', 'sending'))",
            (study_uid, study_uid),
        ).fetchone()[0]
        if pending_jobs or pending_dispatches or pending_notifications:
            return None
        problems = conn.execute(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE study_uid = ? AND study_revision = ? "
            "AND state = 'failed') + (SELECT COUNT(*) FROM dispatches WHERE study_uid = ? "
            "AND state = 'dead') + (SELECT COUNT(*) FROM deliveries WHERE study_uid = ? "
            "AND state = 'dead')",
            (study_uid, study["revision"], study_uid, study_uid),
        ).fetchone()[0]
        state = "attention" if problems else "done"
        conn.execute(
            "UPDATE studies SET state = ?, finished_at = ? WHERE study_uid = ?",
            (state, time.time(), study_uid),
        )
    db.record_event(f"study_{state}", study_uid)
    return state


def reopen_study(conn: Connection, item: Row) -> None:
    """A requeued dead letter or failed job reopens its finished study (in the requeue's
    transaction): it is work in progress again until the item ends."""
    conn.execute(
        "UPDATE studies SET state = 'processing', finished_at = NULL "
        "WHERE study_uid = ? AND state IN ('attention', 'done')",
        (item["study_uid"],),
    )
