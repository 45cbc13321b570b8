"""A pipeline stage run by one thread that polls for work and can be woken early."""

from __future__ import annotations

import abc
import logging
import threading

LOGGER = logging.getLogger(__name__)


class PollingStage(abc.ABC):
    """Calls ``run_once`` until it reports no work, then sleeps ``idle_s`` or until woken.

    Wake-ups only shorten the wait: correctness never depends on them, since the work itself
    is found in the database. A failing step is logged and the loop goes on (a boundary).
    """

    name = "stage"
    idle_s = 0.2

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def run_once(self) -> bool:
        """Do one unit of work; False when there was none."""

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # boundary
                LOGGER.exception("%s step failed", self.name)
                worked = False
            if not worked:
                self._wake.wait(self.idle_s)
                self._wake.clear()
