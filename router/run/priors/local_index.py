"""Priors among the studies radrouter already holds: an index of every received study by
patient (a keyed pseudonym of PatientID, ``router.store.pseudonyms``, never the ID) and date, and the search in it.

Patient identifiers never reach the logs or the database in clear: log lines name study UIDs
only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from config.schema import Matcher, Rule
from router.logs import log_safe
from router.run.priors.selection import (
    CurrentStudy,
    FoundPrior,
    PriorCandidate,
    select_priors,
    selector_rule,
    series_matches,
)
from router.store.database import Database
from router.store.pseudonyms import PatientKeys

LOGGER = logging.getLogger(__name__)

_HEADER_TAGS = ["PatientID", "StudyDate", "StudyTime", "StudyInstanceUID"]


class PriorIndex:
    """Patient (hashed) and date of every received study, read lazily from one spooled header
    per study into the ``prior_index`` table."""

    def __init__(self, db: Database, keys: PatientKeys) -> None:
        self.db = db
        self.keys = keys

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
                    log_safe(row["study_uid"]),
                    type(exc).__name__,
                )
                continue
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO prior_index (study_uid, patient_key, study_date, study_time) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (study_uid) DO UPDATE SET "
                    "patient_key = excluded.patient_key, study_date = excluded.study_date, "
                    "study_time = excluded.study_time",
                    (
                        row["study_uid"],
                        self.keys.key(str(ds.get("PatientID", "") or "")),
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
            (self.keys.key(patient_id),),
        )
        return [PriorCandidate(r["study_uid"], r["study_date"], r["study_time"]) for r in rows]


def series_paths(db: Database, series_uid: str) -> tuple[Path, ...]:
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
        paths = series_paths(db, row["series_uid"])
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
    db: Database,
    keys: PatientKeys,
    current: CurrentStudy,
    selector: Mapping[str, Matcher],
    max_age_days: int,
) -> FoundPrior | None:
    """The most recent earlier study radrouter holds for the patient with a matching series."""
    index = PriorIndex(db, keys)
    index.refresh()
    rule = selector_rule(selector)
    for cand in select_priors(current, index.studies_of(current.patient_id), max_age_days):
        series_uid = _local_series(db, rule, cand.study_instance_uid)
        if series_uid is not None:
            LOGGER.debug(
                "prior for study %s: held study %s, series %s",
                log_safe(current.study_instance_uid),
                log_safe(cand.study_instance_uid),
                log_safe(series_uid),
            )
            return FoundPrior(
                cand.study_instance_uid,
                series_uid,
                cand.study_date,
                series_paths(db, series_uid),
                "local",
            )
    return None


def held_prior(db: Database, study_uid: str, series_uid: str) -> FoundPrior | None:
    """A prior chosen earlier (by the prior stage), as held in the spool now; None when its
    instances are gone."""
    paths = series_paths(db, series_uid)
    if not paths:
        return None
    row = db.query_one("SELECT study_date FROM prior_index WHERE study_uid = ?", (study_uid,))
    return FoundPrior(study_uid, series_uid, str(row["study_date"]) if row else "", paths, "local")
