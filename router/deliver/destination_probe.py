"""The destination probe: asks every destination that could not be reached for a C-ECHO (a
DICOMweb one: a QIDO-RS search that matches nothing), and when it answers again, sends what
waits for it at once instead of after its back-off.

A PACS down for maintenance is the common case, not the exception: its dispatches fail with
an ``unreachable:`` error and back off (up to 5 minutes between tries, for about a day). This
stage notices the end of the outage within ``dispatch.probe_interval_s`` and makes the pending
dispatches of that destination ready, oldest first; with ``dispatch.resend_dead_when_back`` it
also re-sends the ones that were dead-lettered because the destination was unreachable (not
those it refused). Nobody has to notice the outage or run ``radrouter retry``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from config.schema import DicomWebDestination, RouterConfig
from router.assemble.study_state import reopen_study
from router.deliver.dicom_send import Peer, echo
from router.deliver.dicomweb_send import dicomweb_answers
from router.deliver.dispatch import UNREACHABLE
from router.polling_stage import PollingStage
from router.store.database import Database
from router.store.queue import WorkQueue

LOGGER = logging.getLogger(__name__)

EchoFunction = Callable[[Peer], bool]
WebProbeFunction = Callable[[DicomWebDestination], bool]
PROBE_TIMEOUT_S = 10.0


class DestinationProbe(PollingStage):
    name = "destination-probe"

    def __init__(
        self,
        db: Database,
        config: Callable[[], RouterConfig],
        dispatches: WorkQueue,
        on_back: Callable[[], None] | None = None,
        probe: EchoFunction = echo,
        probe_web: WebProbeFunction = dicomweb_answers,
    ) -> None:
        super().__init__()
        self.db = db
        self._config = config
        self._dispatches = dispatches
        self._on_back = on_back
        self._probe = probe
        self._probe_web = probe_web
        self._last_pass = 0.0

    @property
    def idle_s(self) -> float:  # type: ignore[override]
        interval = self._config().dispatch.probe_interval_s
        return interval if interval > 0 else 60.0

    def run_once(self) -> bool:
        """One pass over the unreachable destinations; always False (then wait an interval)."""
        config = self._config()
        interval = config.dispatch.probe_interval_s
        if interval <= 0 or time.monotonic() - self._last_pass < interval * 0.9:
            return False
        self._last_pass = time.monotonic()
        for name in self.unreachable_destinations():
            destination = config.destinations.get(name)
            if destination is None:
                continue
            if isinstance(destination, DicomWebDestination):
                web = destination.model_copy(
                    update={"timeout_s": min(destination.timeout_s, PROBE_TIMEOUT_S)}
                )
                if self._probe_web(web):
                    self._back(name, destination.url, config.dispatch.resend_dead_when_back)
                continue
            peer = Peer.for_destination(destination, config.node.ae_title, PROBE_TIMEOUT_S)
            if self._probe(peer):
                self._back(name, str(peer), config.dispatch.resend_dead_when_back)
        return False

    def unreachable_destinations(self) -> list[str]:
        """Destinations with a dispatch waiting because no one answered there, or dead-lettered
        for that reason when ``dispatch.resend_dead_when_back`` would resend it. (Without that
        setting a dead letter waits for ``radrouter retry``: asking its destination for an echo
        every interval would only log, again and again, that it answers.)"""
        states = (
            ("pending", "dead") if self._config().dispatch.resend_dead_when_back else ("pending",)
        )
        rows = self.db.query(
            "SELECT DISTINCT destination FROM dispatches "
            f"WHERE state IN ({', '.join('?' * len(states))}) "
            "AND substr(last_error, 1, ?) = ? ORDER BY destination",
            (*states, len(UNREACHABLE), UNREACHABLE),
        )
        return [str(r["destination"]) for r in rows]

    def _back(self, name: str, peer: str, resend_dead: bool) -> None:
        pending = [
            int(r["id"])
            for r in self.db.query(
                "SELECT id FROM dispatches WHERE destination = ? AND state = 'pending' ORDER BY id",
                (name,),
            )
        ]
        hurried = self._dispatches.hurry(pending)
        revived = 0
        if resend_dead:
            for row in self.db.query(
                "SELECT id FROM dispatches WHERE destination = ? AND state = 'dead' "
                "AND substr(last_error, 1, ?) = ? ORDER BY id",
                (name, len(UNREACHABLE), UNREACHABLE),
            ):
                revived += len(self._dispatches.requeue_dead(int(row["id"]), reopen_study))
        if not hurried and not revived:
            return  # what waited for it was sent meanwhile: nothing to say
        LOGGER.info(
            "destination %s (%s) answers again: %d waiting and %d dead-lettered "
            "dispatch(es) sent now",
            name,
            peer,
            hurried,
            revived,
        )
        self.db.record_event(
            "destination_back", detail=f"{name}: {hurried} waiting, {revived} dead-lettered"
        )
        if self._on_back is not None:
            self._on_back()
