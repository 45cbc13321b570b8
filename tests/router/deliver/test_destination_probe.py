"""The destination probe on its own: which destinations it asks, and what it does when one
answers (the outage tests drive it end to end against a real storescp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import parse_config
from config.schema import RouterConfig
from router.deliver.destination_probe import DestinationProbe
from router.deliver.dicom_send import Peer
from router.deliver.dispatch import DISPATCHES
from router.store.database import SqliteDatabase
from router.store.queue import Claimer, SqlWorkQueue
from testing.queue_rows import add_dispatch


def config(resend_dead: bool) -> RouterConfig:
    return parse_config(
        "destinations:\n  pacs: {ae_title: PACS, host: 127.0.0.1, port: 11112}\n"
        f"dispatch: {{probe_interval_s: 0.01, resend_dead_when_back: {str(resend_dead).lower()}}}\n"
        "rules: []\n"
    )


def database(tmp_path: Path, state: str, last_error: str) -> SqliteDatabase:
    """A study with one dispatch to ``pacs`` in ``state``, not due before far in the future."""
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    add_dispatch(db, state=state, attempts=2, last_error=last_error, not_before=1e12)
    return db


class Asked:
    """A probe function that records whom it asked and answers ``answers``."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.peers: list[str] = []

    def __call__(self, peer: Peer) -> bool:
        self.peers.append(peer.ae_title)
        return self.answers


def probe_of(db: SqliteDatabase, resend_dead: bool, asked: Asked) -> DestinationProbe:
    settings = config(resend_dead)
    queue = SqlWorkQueue(db, DISPATCHES, Claimer.ephemeral(), lambda _row: settings.dispatch.retry)
    return DestinationProbe(db, lambda: settings, queue, probe=asked)


def events(db: SqliteDatabase) -> list[str]:
    return [
        str(r["kind"])
        for r in db.query("SELECT kind FROM events WHERE kind = ?", ("destination_back",))
    ]


def test_a_waiting_dispatch_is_sent_at_once_when_its_destination_answers(tmp_path: Path) -> None:
    db = database(tmp_path, "pending", "unreachable: connection refused")
    asked = Asked(answers=True)
    probe = probe_of(db, False, asked)
    probe.run_once()
    assert asked.peers == ["PACS"]
    row = db.query_one("SELECT state, not_before FROM dispatches")
    assert row is not None and (row["state"], row["not_before"]) == ("pending", 0)
    assert events(db) == ["destination_back"]


def test_a_destination_still_down_is_asked_again_and_nothing_changes(tmp_path: Path) -> None:
    db = database(tmp_path, "pending", "unreachable: connection refused")
    asked = Asked(answers=False)
    probe_of(db, False, asked).run_once()
    assert asked.peers == ["PACS"]
    row = db.query_one("SELECT not_before FROM dispatches")
    assert row is not None and row["not_before"] == 1e12
    assert events(db) == []


@pytest.mark.parametrize("resend_dead", [True, False])
def test_a_dead_letter_is_resent_when_back_only_if_configured_and_otherwise_not_asked_about(
    tmp_path: Path, resend_dead: bool
) -> None:
    db = database(tmp_path, "dead", "unreachable: connection refused")
    asked = Asked(answers=True)
    probe = probe_of(db, resend_dead, asked)
    assert probe.unreachable_destinations() == (["pacs"] if resend_dead else [])
    probe.run_once()
    row = db.query_one("SELECT state, attempts FROM dispatches")
    assert row is not None
    if resend_dead:
        assert asked.peers == ["PACS"]
        assert (row["state"], row["attempts"]) == ("pending", 0)
        assert events(db) == ["destination_back"]
    else:  # it waits for `radrouter retry`; no echo, log line or event every interval
        assert asked.peers == []
        assert (row["state"], row["attempts"]) == ("dead", 2)
        assert events(db) == []


def test_a_refused_dispatch_is_not_a_reason_to_ask(tmp_path: Path) -> None:
    db = database(tmp_path, "dead", "C-STORE refused: 0xA900")
    asked = Asked(answers=True)
    probe_of(db, True, asked).run_once()
    assert asked.peers == []
