"""How the worklist names a study to a radiologist: accession number and study description.

Read from one spool header per study and cached. Patient name, ID and birth date are never
read: the radiologist opens the study in the PACS viewer by its accession number, so the page
needs no patient data (and the index keeps storing none).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import pydicom

from router.logs import log_safe
from router.store.database import Database

LOGGER = logging.getLogger(__name__)

_LABEL_KEYWORDS = ["SpecificCharacterSet", "AccessionNumber", "StudyDescription"]
_MAX_LABEL_CHARS = 128
"""An accession number is 16 characters (SH), a description 64 (LO); a longer value is cut."""


@dataclass(frozen=True)
class StudyLabel:
    accession_number: str
    study_description: str


UNKNOWN_LABEL = StudyLabel(accession_number="", study_description="")


class StudyLabels:
    """Labels per study UID, read once from the spool (a study's labels do not change)."""

    def __init__(self, db: Database, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError(f"StudyLabels: max_entries must be >= 1, got {max_entries}")
        self._db = db
        self._max_entries = max_entries
        self._cache: OrderedDict[str, StudyLabel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study_uid: str) -> StudyLabel:
        with self._lock:
            label = self._cache.get(study_uid)
            if label is not None:
                self._cache.move_to_end(study_uid)
                return label
        row = self._db.query_one(
            "SELECT path FROM instances WHERE study_uid = ? ORDER BY received_at LIMIT 1",
            (study_uid,),
        )
        if row is None:
            return UNKNOWN_LABEL
        header: pydicom.Dataset
        try:
            header = pydicom.dcmread(
                row["path"], stop_before_pixels=True, specific_tags=_LABEL_KEYWORDS
            )
        except OSError as exc:  # the file may come back (a transient error): not cached
            LOGGER.warning(
                "study %s: label unreadable from the spool: %s",
                log_safe(study_uid),
                type(exc).__name__,
            )
            return UNKNOWN_LABEL
        except Exception as exc:  # a malformed file: pydicom raises many types
            LOGGER.warning(
                "study %s: label unreadable from the spool: %s",
                log_safe(study_uid),
                type(exc).__name__,
            )
            header = pydicom.Dataset()
        label = StudyLabel(
            accession_number=_label_text(header, "AccessionNumber", study_uid),
            study_description=_label_text(header, "StudyDescription", study_uid),
        )
        with self._lock:
            self._cache[study_uid] = label
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return label


def _label_text(header: pydicom.Dataset, keyword: str, study_uid: str) -> str:
    """One label value, read tolerantly: a value that cannot be decoded (an unknown VR, a
    broken encoding) is shown as empty, and the log names the attribute, never the value."""
    try:
        value = header.get(keyword)
    except Exception as exc:  # pydicom raises many types on malformed values
        LOGGER.warning(
            "study %s: %s cannot be decoded (%s); the worklist shows it empty",
            log_safe(study_uid),
            keyword,
            type(exc).__name__,
        )
        return ""
    if value is None:
        return ""
    return " ".join(str(value).split())[:_MAX_LABEL_CHARS]
