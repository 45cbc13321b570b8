"""Fetching a vendor's answer by DICOMweb, for a vendor that keeps its answer rather than
storing it back (``answer_poll_s``): every ``answer_poll_s``, QIDO-RS lists the series of the
de-identified study at the vendor's endpoint; every instance of a series radrouter did not
send, and has not fetched yet, is retrieved by WADO-RS and put through the node's own ingest
path, which holds it apart as an answer (``router.receive.ingest``). From there it is the same
answer as one stored back by C-STORE: the answer stage takes it once nothing more came for
``answer_idle_s``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset

from config.schema import DicomWebDestination
from dicom_sr.uids import is_valid_uid
from router.dicomweb import (
    DICOM_JSON,
    MULTIPART_DICOM,
    DicomWebClient,
    DicomWebError,
    multipart_boundary,
    multipart_parts,
    qido_datasets,
    spooled,
)
from router.logs import log_safe
from router.receive.status import IngestError
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 2 * 2**30
FETCH_TIMEOUT_S = 300.0


class AnswerFetcher:
    """Polls one vendor endpoint for the answer to one request."""

    def __init__(self, db: Database, store: Callable[[bytes], Path], scratch_dir: Path) -> None:
        self.db = db
        self._store = store
        self._scratch_dir = scratch_dir

    def poll(self, endpoint: DicomWebDestination, deid_study_uid: str, sent_series: str) -> int:
        """Fetch what is new of the answer; returns how many instances were stored. Raises
        ``DicomWebError`` when the endpoint cannot be asked (the stage tries again later)."""
        stored = 0
        with DicomWebClient(endpoint) as client:
            for series in self._qido(client, ["studies", deid_study_uid, "series"]):
                series_uid = str(series.get("SeriesInstanceUID", ""))
                if not is_valid_uid(series_uid) or series_uid == sent_series:
                    continue
                listed = self._qido(
                    client, ["studies", deid_study_uid, "series", series_uid, "instances"]
                )
                wanted = {str(i.get("SOPInstanceUID", "")) for i in listed} - self._held()
                for sop_instance_uid in sorted(u for u in wanted if is_valid_uid(u)):
                    segments = [
                        "studies",
                        deid_study_uid,
                        "series",
                        series_uid,
                        "instances",
                        sop_instance_uid,
                    ]
                    stored += self._retrieve(client, segments)
        return stored

    def _held(self) -> set[str]:
        return {
            str(r["sop_instance_uid"])
            for r in self.db.query("SELECT sop_instance_uid FROM external_answers")
        }

    @staticmethod
    def _qido(client: DicomWebClient, segments: list[str]) -> list[Dataset]:
        response = client.request(
            "GET", segments, headers={"Accept": DICOM_JSON}, ok=frozenset({200, 204})
        )
        try:
            return qido_datasets(response)
        except ValueError as exc:
            raise DicomWebError(str(exc)) from None

    def _retrieve(self, client: DicomWebClient, segments: list[str]) -> int:
        response = client.request(
            "GET", segments, headers={"Accept": MULTIPART_DICOM}, stream=True, ok=frozenset({200})
        )
        with response:
            boundary = multipart_boundary(response.headers.get("Content-Type", ""))
            if boundary is None:
                raise DicomWebError("WADO-RS: the answer is not multipart")
            deadline = time.monotonic() + FETCH_TIMEOUT_S
            handle = spooled(response, self._scratch_dir, MAX_ANSWER_BYTES, deadline)
        stored = 0
        with handle:
            for content_type, data in multipart_parts(handle, boundary):
                if content_type and not content_type.lower().startswith("application/dicom"):
                    continue
                try:
                    self._store(data)
                    stored += 1
                except IngestError as exc:
                    LOGGER.warning(
                        "an answer instance fetched by WADO-RS was refused: %s",
                        log_safe(exc.reason, 200),
                    )
        return stored
