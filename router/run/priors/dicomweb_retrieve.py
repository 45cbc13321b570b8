"""Priors from a PACS over DICOMweb (``priors.sources[]`` with ``type: dicomweb``): QIDO-RS
for the patient's earlier studies and their series, WADO-RS for the chosen series.

The C-MOVE path has the PACS send the series to radrouter's node; here radrouter gets the
bytes itself, and hands each instance to the node's own ingest path (``InstanceStore``): the
same checks, the same fsync'd spool file and index row, the same quarantine for what fails,
so a prior is held the same way whichever way it came, and the planner (``retrieved_priors``,
marked before the first instance arrives) does not route it as new work.

The PatientID goes only into the query string of the study search, percent-encoded by
``requests``; it is never logged. A PatientID holding a QIDO wildcard (``*``, ``?``) or a
value separator (``\\``) is not asked for (it would match other patients), and the studies
the PACS returns must carry the same PatientID. Each request is tried again after an outage
or a 5xx/429 (``RETRY_ATTEMPTS``); a source that still fails raises PriorRetrievalError, is
logged and skipped, as a C-FIND/C-MOVE source is.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import requests
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from config.schema import DicomWebPriorSource, Matcher, Rule
from dicom_sr.uids import is_valid_uid
from router.audit.events import NO_AUDIT, AuditRecorder, QuerySent, RemoteNode, RetrieveRequested
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
from router.run.priors.local_index import series_paths
from router.run.priors.query_retrieve import (
    SERIES_RETURN_KEYS,
    PriorRetrievalError,
    held_prior,
    mark_retrieved,
)
from router.run.priors.selection import (
    CurrentStudy,
    FoundPrior,
    PriorCandidate,
    matches_returned_keys,
    parse_date,
    select_priors,
    selector_rule,
)
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

RETRY_ATTEMPTS = 3
RETRY_BACKOFF_S = 1.0
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
"""The information model a QIDO-RS search stands for in the audit trail (as a C-FIND)."""
QUERY_WILDCARDS = ("*", "?", "\\")
ANY_TRANSFER_SYNTAX = f"{MULTIPART_DICOM}; transfer-syntax=*"
"""WADO-RS: the instances as stored (any of the 16 syntaxes the node takes), not transcoded."""
DEFAULT_MAX_SERIES_BYTES = 16 * 2**30


@dataclass(frozen=True)
class InstanceStore:
    """Where instances fetched by WADO-RS go: ``store`` takes one Part-10 file through the
    node's ingest path and returns its spool path (IngestError when it is refused);
    ``scratch_dir`` (under the data directory: patient data) holds an answer while it is
    read, in an anonymous file."""

    store: Callable[[bytes], Path]
    scratch_dir: Path
    max_series_bytes: int = DEFAULT_MAX_SERIES_BYTES


def _tag(keyword: str) -> str | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None else f"{tag:08X}"


def _datasets(response: requests.Response) -> list[Dataset]:
    """A QIDO-RS answer's data sets (an item we cannot read is not a candidate)."""
    try:
        return qido_datasets(response)
    except ValueError as exc:
        raise PriorRetrievalError(str(exc)) from None


class _Search:
    """The requests to one source for one current study, audited."""

    def __init__(
        self,
        client: DicomWebClient,
        source: DicomWebPriorSource,
        node_ae: str,
        current: CurrentStudy,
        audit: AuditRecorder,
    ) -> None:
        self.client = client
        self.source = source
        self.node_ae = node_ae
        self.current = current
        self.audit = audit
        host, port = source.host_port()
        self.peer = RemoteNode(source.url, host, port)

    def qido(self, segments: list[str], params: list[tuple[str, str]]) -> list[Dataset]:
        error: str | None = None
        try:
            response = self.client.request_with_retries(
                "GET",
                segments,
                attempts=RETRY_ATTEMPTS,
                backoff_s=RETRY_BACKOFF_S,
                params=params,
                headers={"Accept": DICOM_JSON},
                ok=frozenset({200, 204}),
            )
            return _datasets(response)
        except (DicomWebError, PriorRetrievalError) as exc:
            error = f"QIDO-RS failed: {exc}"
            raise
        finally:
            study_uid = segments[1] if len(segments) > 1 else None
            self.audit.record(
                QuerySent(
                    self.peer,
                    self.node_ae,
                    STUDY_ROOT_FIND,
                    f"/{'/'.join(segments)}?{urlencode(params, quote_via=quote)}".encode(),
                    "",
                    self.current.patient_id,
                    study_uid,
                    error,
                )
            )

    def studies(self, max_age_days: int, modality: str | None) -> list[PriorCandidate]:
        """The patient's studies from ``max_age_days`` before to the day of the current one."""
        today = parse_date(self.current.study_date)
        patient_id = self.current.patient_id
        if today is None or not patient_id.strip():
            return []
        if any(c in patient_id for c in QUERY_WILDCARDS):
            LOGGER.warning(
                "prior for study %s: the PatientID holds a QIDO wildcard or separator, so %s "
                "is not asked (it would match other patients)",
                log_safe(self.current.study_instance_uid),
                self.source.url,
            )
            return []
        start = today - datetime.timedelta(days=max_age_days)
        params = [
            ("PatientID", patient_id),
            ("StudyDate", f"{start:%Y%m%d}-{today:%Y%m%d}"),
            ("includefield", "00080030"),  # StudyTime
            ("includefield", "00100020"),  # PatientID
        ]
        if modality is not None:
            params.append(("ModalitiesInStudy", modality))
        return [
            PriorCandidate(
                str(ds.get("StudyInstanceUID", "")),
                str(ds.get("StudyDate", "") or ""),
                str(ds.get("StudyTime", "") or ""),
            )
            for ds in self.qido(["studies"], params)
            # A UID from a PACS becomes a path segment next: only a DICOM UID may.
            if is_valid_uid(str(ds.get("StudyInstanceUID", "")))
            and str(ds.get("PatientID", "") or "") == patient_id
        ]

    def series(self, study_uid: str, rule: Rule) -> list[Dataset]:
        """The study's series, with the selector's attributes; those that match what the
        PACS returned, by SeriesNumber."""
        fields = dict.fromkeys(
            tag for keyword in (*SERIES_RETURN_KEYS, *rule.when) if (tag := _tag(keyword))
        )
        params = [("includefield", tag) for tag in fields]
        found = self.qido(["studies", study_uid, "series"], params)
        matching = [ds for ds in found if matches_returned_keys(rule, ds)]

        def number(ds: Dataset) -> int:
            try:
                return int(ds.get("SeriesNumber", 0) or 0)
            except (TypeError, ValueError):
                return 0

        return sorted(matching, key=number)

    def retrieve(
        self, study_uid: str, series_uid: str, instances: InstanceStore, timeout_s: float
    ) -> int:
        """WADO-RS of one series, each instance through the node's ingest path; returns how
        many were stored."""
        stored = refused = 0
        error: str | None = "no instance stored"
        try:
            handle, boundary = self._fetch(study_uid, series_uid, instances, timeout_s)
            with handle:
                for content_type, data in multipart_parts(handle, boundary):
                    if content_type and not content_type.lower().startswith("application/dicom"):
                        refused += 1  # a bulk-data or error part: not an instance
                        continue
                    try:
                        instances.store(data)
                        stored += 1
                    except IngestError as exc:
                        refused += 1
                        LOGGER.warning(
                            "prior series %s from %s: an instance was refused: %s",
                            log_safe(series_uid),
                            self.source.url,
                            log_safe(exc.reason, 200),
                        )
            if stored:
                error = None if not refused else f"{refused} instance(s) refused"
        except DicomWebError as exc:
            error = f"WADO-RS failed: {exc}"
            raise
        finally:
            self.audit.record(
                RetrieveRequested(
                    self.peer,
                    self.node_ae,
                    self.node_ae,
                    study_uid,
                    self.current.patient_id,
                    stored,
                    error,
                )
            )
        if not stored:
            raise PriorRetrievalError(
                f"WADO-RS of series {series_uid} stored no instance ({refused} refused)"
            )
        return stored

    def _fetch(
        self, study_uid: str, series_uid: str, instances: InstanceStore, timeout_s: float
    ) -> tuple[Any, str]:
        segments = ["studies", study_uid, "series", series_uid]
        deadline = time.monotonic() + timeout_s
        try:
            response = self._wado(segments, ANY_TRANSFER_SYNTAX)
        except DicomWebError as exc:
            if exc.status not in (400, 406):
                raise
            # A server that cannot send the stored syntax: its default (explicit VR LE).
            response = self._wado(segments, MULTIPART_DICOM)
        with response:
            boundary = multipart_boundary(response.headers.get("Content-Type", ""))
            if boundary is None:
                raise DicomWebError(f"WADO-RS from {self.source.url}: the answer is not multipart")
            return spooled(
                response, instances.scratch_dir, instances.max_series_bytes, deadline
            ), boundary

    def _wado(self, segments: list[str], accept: str) -> requests.Response:
        return self.client.request_with_retries(
            "GET",
            segments,
            attempts=RETRY_ATTEMPTS,
            backoff_s=RETRY_BACKOFF_S,
            headers={"Accept": accept},
            stream=True,
            ok=frozenset({200, 206}),
        )


def _exact_modality(selector: Mapping[str, Matcher]) -> str | None:
    """The selector's Modality when it is one plain value (it narrows the study search)."""
    value = selector.get("Modality")
    if isinstance(value, str) and value and not any(c in value for c in QUERY_WILDCARDS):
        return value
    return None


def retrieve_prior_dicomweb(
    db: Database,
    source: DicomWebPriorSource,
    node_ae: str,
    current: CurrentStudy,
    selector: Mapping[str, Matcher],
    max_age_days: int,
    retrieve_timeout_s: float,
    instances: InstanceStore | None,
    audit: AuditRecorder = NO_AUDIT,
) -> FoundPrior | None:
    """Ask ``source`` (QIDO-RS) for the patient's earlier studies and pull the most recent
    matching series into radrouter (WADO-RS, through ``instances``). Each search and
    retrieval goes to ``audit``."""
    if instances is None:
        raise PriorRetrievalError("no ingest path for instances retrieved by WADO-RS")
    rule = selector_rule(selector)
    try:
        with DicomWebClient(source) as client:
            search = _Search(client, source, node_ae, current, audit)
            candidates = select_priors(
                current, search.studies(max_age_days, _exact_modality(rule.when)), max_age_days
            )
            for cand in candidates:
                for series in search.series(cand.study_instance_uid, rule):
                    series_uid = str(series.get("SeriesInstanceUID", ""))
                    if not is_valid_uid(series_uid):  # a path segment next
                        continue
                    held = series_paths(db, series_uid)
                    if not held:
                        mark_retrieved(db, cand.study_instance_uid, current.study_instance_uid)
                        search.retrieve(
                            cand.study_instance_uid, series_uid, instances, retrieve_timeout_s
                        )
                        held = series_paths(db, series_uid)
                        if not held:
                            raise PriorRetrievalError(
                                f"series {series_uid} is not held after WADO-RS"
                            )
                    found = held_prior(rule, current, cand, series_uid, held, source.url)
                    if found is not None:
                        return found
    except DicomWebError as exc:
        raise PriorRetrievalError(str(exc)) from None
    return None
