"""Requeue dead-lettered dispatches and worklist deliveries (API, CLI and stages share this)."""

from __future__ import annotations

from typing import Literal

from router.store.database import Database

DeadLetterTable = Literal["dispatches", "deliveries"]


def requeue_dead(db: Database, table: DeadLetterTable, row_id: int | None = None) -> int:
    """Give one dead-lettered row (or all, when ``row_id`` is None) a fresh retry budget and
    reopen its study. Returns how many rows were requeued."""
    sql = (
        f"UPDATE {table} SET state = 'pending', attempts = 0, not_before = 0, "
        "finished_at = NULL WHERE state = 'dead'"
    )
    params: tuple[object, ...] = ()
    if row_id is not None:
        sql += " AND id = ?"
        params = (row_id,)
    with db.transaction() as conn:
        rows = conn.execute(sql + " RETURNING study_uid", params).fetchall()
        for row in rows:
            conn.execute(
                "UPDATE studies SET state = 'processing', finished_at = NULL "
                "WHERE study_uid = ? AND state IN ('attention', 'done')",
                (row["study_uid"],),
            )
    return len(rows)
