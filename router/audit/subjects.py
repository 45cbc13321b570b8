"""Whose data a study is: the patient ID and the accession number, from the spool.

The database holds no patient data, so the trail reads them from a header of the study in
the spool, once per study (kept in a small cache, in memory only). A study whose files are
gone (purged, never received) has no known subject: its messages name the study alone.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import pydicom
from pydicom.errors import InvalidDicomError

from router.logs import log_safe
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

_KEYWORDS = ["PatientID", "AccessionNumber"]


@dataclass(frozen=True)
class StudySubject:
    """The patient a study belongs to (``patient_id`` may be empty) and its accession."""

    patient_id: str
    accession_number: str


SubjectLookup = Callable[[str], StudySubject | None]
"""A study UID to its subject, None when unknown."""


def no_subjects(_study_uid: str) -> StudySubject | None:
    return None


class SpoolSubjects:
    """``SubjectLookup`` over the spool: one header read per study, then cached."""

    def __init__(self, db: Database, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError(f"SpoolSubjects: max_entries must be >= 1, got {max_entries}")
        self._db = db
        self._max_entries = max_entries
        self._cache: OrderedDict[str, StudySubject | None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, study_uid: str) -> StudySubject | None:
        with self._lock:
            if study_uid in self._cache:
                self._cache.move_to_end(study_uid)
                return self._cache[study_uid]
        row = self._db.query_one(
            "SELECT path FROM instances WHERE study_uid = ? ORDER BY received_at LIMIT 1",
            (study_uid,),
        )
        if row is None:
            return None
        try:
            header = pydicom.dcmread(row["path"], stop_before_pixels=True, specific_tags=_KEYWORDS)
        except (OSError, InvalidDicomError) as exc:  # purged, or unreadable: known as unknown
            LOGGER.warning(
                "study %s: patient for the audit trail unreadable from the spool (%s)",
                log_safe(study_uid),
                type(exc).__name__,
            )
            self._remember(study_uid, None)
            return None
        subject = StudySubject(
            patient_id=str(header.get("PatientID", "") or "").strip(),
            accession_number=str(header.get("AccessionNumber", "") or "").strip(),
        )
        self._remember(study_uid, subject)
        return subject

    def _remember(self, study_uid: str, subject: StudySubject | None) -> None:
        with self._lock:
            self._cache[study_uid] = subject
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
