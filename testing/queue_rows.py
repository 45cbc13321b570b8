"""Rows of the dispatch queue written straight into a database, for tests of what reads them
(``radrouter status`` and ``retry``, the destination probe) without sending a study first."""

from __future__ import annotations

from router.store.database import Database


def add_dispatch(
    db: Database,
    *,
    state: str,
    attempts: int,
    last_error: str,
    not_before: float = 0.0,
    study_uid: str = "1.2.3",
) -> None:
    """A study needing attention and one dispatch of its result 1 to destination ``pacs``."""
    db.connection().execute(
        "INSERT INTO studies (study_uid, state, first_received_at, last_received_at) "
        "VALUES (?, 'attention', 0, 0)",
        (study_uid,),
    )
    db.connection().execute(
        "INSERT INTO dispatches (study_uid, result_id, destination, state, attempts, created_at, "
        "not_before, last_error) VALUES (?, 1, 'pacs', ?, ?, 0, ?, ?)",
        (study_uid, state, attempts, not_before, last_error),
    )
