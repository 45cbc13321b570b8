"""Finds a patient's earlier exam for follow-up algorithms: among the studies radrouter already
holds, else by C-FIND and C-MOVE from configured PACS sources; loads it as a ``PriorStudy``
with the findings of radrouter's own earlier result on it.

Patient identifiers never reach the logs or the database in clear: studies are indexed by a
hash of PatientID (table ``prior_index``), and log lines name study UIDs only.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from algorithms.contract import PriorFinding, PriorStudy
from config.schema import Matcher, PriorsConfig, PriorSource, Rule
from dicom_sr.read import read_measurement_report
from router.route.matching import ASSOCIATION_ATTRIBUTES, SeriesFacts, evaluate_rule
from router.run.series_loader import LoadedSeries, VolumeError, load_series
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS prior_index (
    study_uid TEXT PRIMARY KEY,
    patient_key TEXT NOT NULL,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS prior_index_patient ON prior_index (patient_key);
"""
_HEADER_TAGS = ["PatientID", "StudyDate", "StudyTime", "StudyInstanceUID"]
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


@dataclass(frozen=True)
class CurrentStudy:
    """The study a follow-up algorithm runs on: whose, when, which."""

    patient_id: str
    study_date: str
    """DICOM DA, YYYYMMDD ("" when unknown: then no prior can be called earlier)."""
    study_instance_uid: str
    study_time: str = ""

    @classmethod
    def from_header(cls, ds: Dataset) -> CurrentStudy:
        return cls(
            patient_id=str(ds.get("PatientID", "") or ""),
            study_date=str(ds.get("StudyDate", "") or ""),
            study_instance_uid=str(ds.get("StudyInstanceUID", "") or ""),
            study_time=str(ds.get("StudyTime", "") or ""),
        )


@dataclass(frozen=True)
class PriorCandidate:
    """An earlier study of the patient, before its series are looked at."""

    study_instance_uid: str
    study_date: str
    study_time: str = ""


@dataclass(frozen=True)
class FoundPrior:
    """The prior series chosen, held in radrouter's spool."""

    study_instance_uid: str
    series_instance_uid: str
    study_date: str
    paths: tuple[Path, ...]
    source: str
    """"local" or the AE title of the source it was retrieved from."""


def patient_key(patient_id: str) -> str:
    """What the index stores instead of the PatientID."""
    return hashlib.sha256(f"radrouter-patient:{patient_id.strip()}".encode()).hexdigest()


def _parse_date(value: str) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _time_key(value: str) -> str:
    digits = "".join(ch for ch in value.split(".")[0] if ch.isdigit())
    return digits.ljust(6, "0")[:6] if digits else ""


def select_priors(
    current: CurrentStudy, candidates: Iterable[PriorCandidate], max_age_days: int
) -> list[PriorCandidate]:
    """The candidates that are earlier than the current study, within ``max_age_days`` of it,
    and not the study itself, most recent first.

    Same-day studies count as earlier only when both have a StudyTime and the candidate's is
    earlier; studies without a parseable StudyDate are never chosen (nothing says they are
    earlier). With no current StudyDate, nothing is.
    """
    today = _parse_date(current.study_date)
    if today is None:
        return []
    oldest = today - datetime.timedelta(days=max_age_days)
    now_time = _time_key(current.study_time)
    chosen: list[tuple[datetime.date, str, PriorCandidate]] = []
    seen: set[str] = set()
    for cand in candidates:
        if cand.study_instance_uid == current.study_instance_uid or cand.study_instance_uid in seen:
            continue
        day = _parse_date(cand.study_date)
        if day is None or day < oldest or day > today:
            continue
        then_time = _time_key(cand.study_time)
        if day == today and not (now_time and then_time and then_time < now_time):
            continue
        seen.add(cand.study_instance_uid)
        chosen.append((day, then_time, cand))
    chosen.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [cand for _, _, cand in chosen]


def selector_rule(selector: Mapping[str, Matcher]) -> Rule:
    """The series selector as a rule, without the association keys (a prior arrived on
    another association)."""
    when = {k: v for k, v in selector.items() if k not in ASSOCIATION_ATTRIBUTES}
    return Rule(name="prior-series", when=when)


def series_matches(rule: Rule, header: Dataset) -> bool:
    return evaluate_rule(rule, SeriesFacts.from_dataset(header, "", "")).matched


def _matches_known(rule: Rule, identifier: Dataset) -> bool:
    """A C-FIND series response against the selector, checking only the attributes the PACS
    returned (the full selector is checked on the retrieved header)."""
    present = {k: v for k, v in rule.when.items() if str(identifier.get(k, "") or "").strip()}
    return evaluate_rule(
        Rule(name=rule.name, when=present), SeriesFacts.from_dataset(identifier, "", "")
    ).matched


# --------------------------------------------------------------------------------------------
# (a) Studies already received


class PriorIndex:
    """Patient (hashed) and date of every received study, read lazily from one spooled header
    per study into the ``prior_index`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.db.connection().executescript(INDEX_SCHEMA)

    def refresh(self) -> int:
        """Index studies not indexed yet; returns how many were added."""
        rows = self.db.query(
            "SELECT s.study_uid, (SELECT path FROM instances i WHERE i.study_uid = s.study_uid "
            "LIMIT 1) AS path FROM studies s "
            "WHERE s.study_uid NOT IN (SELECT study_uid FROM prior_index)"
        )
        added = 0
        for row in rows:
            if row["path"] is None:
                continue
            try:
                ds = pydicom.dcmread(
                    row["path"], stop_before_pixels=True, specific_tags=_HEADER_TAGS
                )
            except (OSError, InvalidDicomError) as exc:
                LOGGER.warning(
                    "prior index: study %s header unreadable (%s)",
                    row["study_uid"],
                    type(exc).__name__,
                )
                continue
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO prior_index (study_uid, patient_key, study_date, "
                    "study_time) VALUES (?, ?, ?, ?)",
                    (
                        row["study_uid"],
                        patient_key(str(ds.get("PatientID", "") or "")),
                        str(ds.get("StudyDate", "") or ""),
                        str(ds.get("StudyTime", "") or ""),
                    ),
                )
            added += 1
        return added

    def studies_of(self, patient_id: str) -> list[PriorCandidate]:
        if not patient_id.strip():
            return []
        rows = self.db.query(
            "SELECT study_uid, study_date, study_time FROM prior_index WHERE patient_key = ?",
            (patient_key(patient_id),),
        )
        return [PriorCandidate(r["study_uid"], r["study_date"], r["study_time"]) for r in rows]


def _series_paths(db: Database, series_uid: str) -> tuple[Path, ...]:
    rows = db.query(
        "SELECT path FROM instances WHERE series_uid = ? ORDER BY sop_instance_uid", (series_uid,)
    )
    return tuple(Path(r["path"]) for r in rows)


def _local_series(db: Database, rule: Rule, study_uid: str) -> str | None:
    """The first series (by first arrival) of a held study that matches the selector."""
    rows = db.query(
        "SELECT series_uid FROM series WHERE study_uid = ? ORDER BY first_received_at", (study_uid,)
    )
    for row in rows:
        paths = _series_paths(db, row["series_uid"])
        if not paths:
            continue
        try:
            header = pydicom.dcmread(paths[0], stop_before_pixels=True)
        except (OSError, InvalidDicomError):
            continue
        if series_matches(rule, header):
            return str(row["series_uid"])
    return None


def find_local_prior(
    db: Database, current: CurrentStudy, selector: Mapping[str, Matcher], max_age_days: int
) -> FoundPrior | None:
    """The most recent earlier study radrouter holds for the patient with a matching series."""
    index = PriorIndex(db)
    index.refresh()
    rule = selector_rule(selector)
    for cand in select_priors(current, index.studies_of(current.patient_id), max_age_days):
        series_uid = _local_series(db, rule, cand.study_instance_uid)
        if series_uid is not None:
            LOGGER.info(
                "prior for study %s: held study %s, series %s",
                current.study_instance_uid,
                cand.study_instance_uid,
                series_uid,
            )
            return FoundPrior(
                cand.study_instance_uid,
                series_uid,
                cand.study_date,
                _series_paths(db, series_uid),
                "local",
            )
    return None


# --------------------------------------------------------------------------------------------
# (b) Query/retrieve from a PACS


@contextmanager
def _association(source: PriorSource, calling_ae: str) -> Iterator[Any]:
    ae = AE(ae_title=source.calling_ae_title or calling_ae)
    ae.acse_timeout = source.timeout_s
    ae.dimse_timeout = source.timeout_s
    ae.network_timeout = source.timeout_s
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(source.host, source.port, ae_title=source.ae_title)
    if not assoc.is_established:
        raise PriorRetrievalError(
            f"no association with {source.ae_title}@{source.host}:{source.port}"
        )
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
    today = _parse_date(current.study_date)
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
    matching = [ds for ds in _find(assoc, query) if _matches_known(rule, ds)]

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
        paths = _series_paths(db, series_uid)
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
) -> FoundPrior | None:
    """Ask ``source`` for the patient's earlier studies and pull the most recent matching
    series into radrouter (C-MOVE to ``move_destination_ae``, default the node itself, which
    stores it through its normal C-STORE path)."""
    rule = selector_rule(selector)
    destination = source.move_destination_ae or node_ae
    with _association(source, node_ae) as assoc:
        candidates = select_priors(
            current, query_studies(assoc, current, max_age_days), max_age_days
        )
        for cand in candidates:
            for series in query_series(assoc, cand.study_instance_uid, rule):
                series_uid = str(series.get("SeriesInstanceUID", ""))
                if not series_uid:
                    continue
                held = _series_paths(db, series_uid)
                if not held:
                    mark_retrieved(db, cand.study_instance_uid, current.study_instance_uid)
                    completed = move_series(assoc, cand.study_instance_uid, series_uid, destination)
                    held = _wait_for_series(db, series_uid, completed, retrieve_timeout_s)
                header = pydicom.dcmread(held[0], stop_before_pixels=True)
                if not series_matches(rule, header):
                    continue
                LOGGER.info(
                    "prior for study %s: study %s series %s retrieved from %s (%d instances)",
                    current.study_instance_uid,
                    cand.study_instance_uid,
                    series_uid,
                    source.ae_title,
                    len(held),
                )
                return FoundPrior(
                    cand.study_instance_uid, series_uid, cand.study_date, held, source.ae_title
                )
    return None


def find_prior(
    db: Database,
    config: PriorsConfig,
    node_ae: str,
    current: CurrentStudy,
    rule_selector: Mapping[str, Matcher],
) -> FoundPrior | None:
    """The most recent earlier matching series of the patient: held locally, else from each
    source in order. A source that fails is logged and skipped."""
    selector = config.series_selector if config.series_selector is not None else rule_selector
    found = find_local_prior(db, current, selector, config.max_age_days)
    if found is not None:
        return found
    for source in config.sources:
        try:
            found = retrieve_prior(
                db,
                source,
                node_ae,
                current,
                selector,
                config.max_age_days,
                config.retrieve_timeout_s,
            )
        except PriorRetrievalError as exc:
            LOGGER.warning(
                "prior for study %s: source %s failed: %s",
                current.study_instance_uid,
                source.ae_title,
                exc,
            )
            continue
        if found is not None:
            return found
    LOGGER.info("prior for study %s: none found", current.study_instance_uid)
    return None


# --------------------------------------------------------------------------------------------
# Loading


def prior_findings(
    db: Database, study_uid: str, algorithm: str, loaded: LoadedSeries
) -> tuple[PriorFinding, ...]:
    """The findings of radrouter's latest result of ``algorithm`` on the prior study, with their
    centres in the prior's LPS coordinates (centroid of the SR region on its slice)."""
    row = db.query_one(
        "SELECT path FROM results WHERE study_uid = ? AND algorithm = ? "
        "ORDER BY version_number DESC LIMIT 1",
        (study_uid, algorithm),
    )
    if row is None:
        return ()
    try:
        report = read_measurement_report(pydicom.dcmread(row["path"]))
    except (OSError, InvalidDicomError, ValueError) as exc:
        LOGGER.warning("prior result of study %s unreadable: %s", study_uid, exc)
        return ()
    slice_of = {
        s.sop_instance_uid: k for k, s in enumerate(loaded.slices) if s.frame_number in (None, 1)
    }
    for k, s in enumerate(loaded.slices):
        if s.frame_number is not None:
            slice_of.setdefault(f"{s.sop_instance_uid}#{s.frame_number}", k)
    affine = loaded.series.geometry.affine
    findings: list[PriorFinding] = []
    for f in report.findings:
        key = f.referenced_sop_instance_uid
        if f.referenced_frame_number is not None:
            key = f"{key}#{f.referenced_frame_number}"
        index = slice_of.get(key, slice_of.get(f.referenced_sop_instance_uid))
        if index is None or not f.points:
            continue
        points = np.array(f.points[:-1] if len(f.points) > 1 else f.points, dtype=np.float64)
        col, row_ = points.mean(axis=0)
        lps = affine @ np.array([index, row_, col, 1.0])
        findings.append(
            PriorFinding(
                tracking_id=f.tracking_id,
                tracking_uid=f.tracking_uid,
                finding_type=f.finding_type,
                centre_lps=(float(lps[0]), float(lps[1]), float(lps[2])),
                volume_mm3=f.volume_mm3,
            )
        )
    return tuple(findings)


def load_prior_study(
    db: Database, found: FoundPrior, algorithm: str, header_keywords: Sequence[str] | None = None
) -> PriorStudy:
    """The found prior as the plugin contract's ``PriorStudy``; raises VolumeError when the
    series cannot be a volume."""
    loaded = (
        load_series(list(found.paths))
        if header_keywords is None
        else load_series(list(found.paths), header_keywords=header_keywords)
    )
    return PriorStudy(
        study_instance_uid=found.study_instance_uid,
        series=loaded.series,
        study_date=found.study_date,
        findings=prior_findings(db, found.study_instance_uid, algorithm, loaded),
    )


__all__ = [
    "CurrentStudy",
    "FoundPrior",
    "PriorCandidate",
    "PriorIndex",
    "PriorRetrievalError",
    "QueryStatus",
    "VolumeError",
    "find_local_prior",
    "find_prior",
    "load_prior_study",
    "patient_key",
    "prior_findings",
    "retrieve_prior",
    "select_priors",
    "selector_rule",
]
