"""Priors from a PACS: C-FIND for the patient's earlier studies and their series, C-MOVE of
the chosen series to radrouter's own node, which stores it through its normal C-STORE path.
The C-FIND/C-MOVE association is DICOM TLS when the source's ``tls`` says so."""

from __future__ import annotations

import datetime
import enum
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from config.schema import Matcher, PriorSource, Rule
from dicom_sr.uids import is_valid_uid
from router.audit.dimse import AuditedAssociation
from router.audit.events import NO_AUDIT, AuditRecorder, RemoteNode
from router.dicom_tls import TlsSetupError, outgoing_tls
from router.logs import log_safe
from router.run.priors.local_index import series_paths
from router.run.priors.selection import (
    CurrentStudy,
    FoundPrior,
    PriorCandidate,
    matches_returned_keys,
    parse_date,
    select_priors,
    selector_rule,
    series_matches,
)
from router.socket_ready import poll_pynetdicom_sockets
from router.store.database import Database

LOGGER = logging.getLogger(__name__)
poll_pynetdicom_sockets()  # before any association: see router.socket_ready

ARRIVAL_POLL_S = 0.1
SERIES_RETURN_KEYS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber")


class QueryStatus(enum.IntEnum):
    """DIMSE statuses of C-FIND and C-MOVE responses (PS3.4 C.4)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01
    SUB_OPERATIONS_FAILED = 0xB000
    CANCELLED = 0xFE00


class PriorRetrievalError(Exception):
    """A source could not be queried or did not deliver the prior series."""


@contextmanager
def _association(source: PriorSource, calling_ae: str) -> Iterator[Any]:
    ae = AE(ae_title=source.calling_ae_title or calling_ae)
    ae.acse_timeout = source.timeout_s
    ae.dimse_timeout = source.timeout_s
    ae.network_timeout = source.timeout_s
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    where = f"{source.ae_title}@{source.host}:{source.port}"
    if source.tls is None:
        assoc = ae.associate(source.host, source.port, ae_title=source.ae_title)
        failure = None
    else:
        try:
            tls = outgoing_tls(source.tls, source.host)
        except TlsSetupError as exc:
            raise PriorRetrievalError(f"TLS to {where}: {exc}") from None
        assoc = ae.associate(
            source.host, source.port, ae_title=source.ae_title, tls_args=tls.tls_args
        )
        failure = tls.failure()
    if not assoc.is_established:
        if failure is not None:
            raise PriorRetrievalError(f"TLS with {where} failed: {failure}")
        raise PriorRetrievalError(f"no association with {where}")
    try:
        yield assoc
    finally:
        assoc.release()


def _find(assoc: Any, query: Dataset) -> list[Dataset]:
    found: list[Dataset] = []
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = int(getattr(status, "Status", -1))
        if code in (QueryStatus.PENDING, QueryStatus.PENDING_WARNING) and identifier is not None:
            found.append(identifier)
        elif code != QueryStatus.SUCCESS:
            raise PriorRetrievalError(f"C-FIND failed with status 0x{code & 0xFFFF:04X}")
    return found


def query_studies(assoc: Any, current: CurrentStudy, max_age_days: int) -> list[PriorCandidate]:
    """C-FIND at study level: the patient's studies from ``max_age_days`` before to the day of
    the current study."""
    today = parse_date(current.study_date)
    if today is None or not current.patient_id.strip():
        return []
    start = today - datetime.timedelta(days=max_age_days)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = current.patient_id
    query.StudyDate = f"{start:%Y%m%d}-{today:%Y%m%d}"
    query.StudyTime = ""
    query.StudyInstanceUID = ""
    return [
        PriorCandidate(
            str(ds.get("StudyInstanceUID", "")),
            str(ds.get("StudyDate", "") or ""),
            str(ds.get("StudyTime", "") or ""),
        )
        for ds in _find(assoc, query)
        # A UID from a PACS becomes a query value next: only a DICOM UID may (no wildcard).
        if is_valid_uid(str(ds.get("StudyInstanceUID", "")))
    ]


def query_series(assoc: Any, study_uid: str, rule: Rule) -> list[Dataset]:
    """C-FIND at series level, returning the selector's attributes too; those that match what
    the PACS returned, by SeriesNumber."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    for keyword in (*SERIES_RETURN_KEYS, *rule.when):
        if keyword not in query:
            setattr(query, keyword, "")
    matching = [ds for ds in _find(assoc, query) if matches_returned_keys(rule, ds)]

    def number(ds: Dataset) -> int:
        try:
            return int(ds.get("SeriesNumber", 0) or 0)
        except (TypeError, ValueError):
            return 0

    return sorted(matching, key=number)


def move_series(assoc: Any, study_uid: str, series_uid: str, destination_ae: str) -> int:
    """C-MOVE one series to ``destination_ae``; returns the completed sub-operations."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    completed = 0
    final: int | None = None
    for status, _identifier in assoc.send_c_move(
        query, destination_ae, StudyRootQueryRetrieveInformationModelMove
    ):
        code = int(getattr(status, "Status", -1))
        completed = int(getattr(status, "NumberOfCompletedSuboperations", completed) or completed)
        if code not in (QueryStatus.PENDING, QueryStatus.PENDING_WARNING):
            final = code
    if final not in (QueryStatus.SUCCESS, QueryStatus.SUB_OPERATIONS_FAILED) or completed == 0:
        shown = "none" if final is None else f"0x{final & 0xFFFF:04X}"
        raise PriorRetrievalError(f"C-MOVE ended with status {shown}, {completed} instance(s) sent")
    return completed


def _wait_for_series(
    db: Database, series_uid: str, expected: int, timeout_s: float
) -> tuple[Path, ...]:
    deadline = time.monotonic() + timeout_s
    while True:
        paths = series_paths(db, series_uid)
        if len(paths) >= expected:
            return paths
        if time.monotonic() > deadline:
            raise PriorRetrievalError(
                f"series {series_uid}: {len(paths)} of {expected} instances arrived in {timeout_s:.0f} s"
            )
        time.sleep(ARRIVAL_POLL_S)


def mark_retrieved(db: Database, study_uid: str, for_study_uid: str) -> None:
    """Record that ``study_uid`` is being pulled as a prior, so the planner does not route
    it as new work when it arrives."""
    db.connection().execute(
        "INSERT OR IGNORE INTO retrieved_priors (study_uid, requested_at, for_study_uid) "
        "VALUES (?, ?, ?)",
        (study_uid, time.time(), for_study_uid),
    )


def retrieve_prior(
    db: Database,
    source: PriorSource,
    node_ae: str,
    current: CurrentStudy,
    selector: Mapping[str, Matcher],
    max_age_days: int,
    retrieve_timeout_s: float,
    audit: AuditRecorder = NO_AUDIT,
) -> FoundPrior | None:
    """Ask ``source`` for the patient's earlier studies and pull the most recent matching
    series into radrouter (C-MOVE to ``move_destination_ae``, default the node itself, which
    stores it through its normal C-STORE path). Each C-FIND and C-MOVE goes to ``audit``."""
    rule = selector_rule(selector)
    destination = source.move_destination_ae or node_ae
    with _association(source, node_ae) as plain:
        assoc = AuditedAssociation(
            plain,
            audit,
            RemoteNode(source.ae_title, source.host, source.port),
            source.calling_ae_title or node_ae,
            current.patient_id,
        )
        candidates = select_priors(
            current, query_studies(assoc, current, max_age_days), max_age_days
        )
        for cand in candidates:
            for series in query_series(assoc, cand.study_instance_uid, rule):
                series_uid = str(series.get("SeriesInstanceUID", ""))
                if not is_valid_uid(series_uid):  # a query value next, and a wildcard is not
                    continue
                held = series_paths(db, series_uid)
                if not held:
                    mark_retrieved(db, cand.study_instance_uid, current.study_instance_uid)
                    completed = move_series(assoc, cand.study_instance_uid, series_uid, destination)
                    held = _wait_for_series(db, series_uid, completed, retrieve_timeout_s)
                found = held_prior(rule, current, cand, series_uid, held, source.ae_title)
                if found is not None:
                    return found
    return None


def held_prior(
    rule: Rule,
    current: CurrentStudy,
    candidate: PriorCandidate,
    series_uid: str,
    held: tuple[Path, ...],
    source: str,
) -> FoundPrior | None:
    """A retrieved series as the prior, when its header matches the selector (a query's
    returned keys may not have shown everything the selector asks)."""
    header = pydicom.dcmread(held[0], stop_before_pixels=True)
    if not series_matches(rule, header):
        return None
    LOGGER.debug(
        "prior for study %s: study %s series %s retrieved from %s (%d instances)",
        log_safe(current.study_instance_uid),
        log_safe(candidate.study_instance_uid),
        log_safe(series_uid),
        source,
        len(held),
    )
    return FoundPrior(candidate.study_instance_uid, series_uid, candidate.study_date, held, source)
