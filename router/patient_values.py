"""The values that identify a study's patient, and text with them blanked out.

radrouter's own messages name attributes, never their values. Text it does not write itself
can still quote one: a plugin's exception (``ValueError: cannot use birth date 02.01.1960``),
a library's error about a malformed value. Before such text is stored (a job's error, the
events table), shown (``/jobs``, ``/studies/{uid}``, ``radrouter status``) or logged, the
values that identify the patient are replaced by ``[patient data]``. They are read from the
study's own header in the spool, as raw bytes (pydicom's value validation would itself log a
malformed value), and never kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from router.store.database import Database

REDACTED = "[patient data]"

IDENTIFYING_TAGS = (
    0x00080050,  # AccessionNumber
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00100030,  # PatientBirthDate
    0x00101000,  # OtherPatientIDs
    0x00101001,  # OtherPatientNames
    0x00101005,  # PatientBirthName
    0x00101040,  # PatientAddress
    0x00101060,  # PatientMotherBirthName
    0x00101090,  # MedicalRecordLocator
    0x00102154,  # PatientTelephoneNumbers
)
"""PS3.15 E.1-1 attributes that name or number the patient (or the order, for the RIS)."""

MIN_PART_LENGTH = 3
"""A part of a value (one name component, one of several IDs) shorter than this is blanked
only as part of its whole value: blanking every "MR" or "Li" would make text unreadable."""

_SEPARATORS = re.compile(r"[\\^=\s]+")


class PatientValues:
    """The identifying values of one study, and ``redact`` to blank them in any text."""

    def __init__(self, values: Iterable[str]) -> None:
        pieces: set[str] = set()
        for value in values:
            whole = value.strip(" \x00")
            if whole:
                pieces.add(whole)
            pieces.update(part for part in _SEPARATORS.split(whole) if len(part) >= MIN_PART_LENGTH)
        # Longest first, so a whole name goes before one of its components.
        ordered = sorted(pieces, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(piece) for piece in ordered), re.IGNORECASE)
            if ordered
            else None
        )

    def redact(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(REDACTED, text)

    @classmethod
    def of_file(cls, path: Path) -> PatientValues:
        """The values in one spooled instance; none when it cannot be read."""
        try:
            dataset = dcmread(path, stop_before_pixels=True, specific_tags=list(IDENTIFYING_TAGS))
        except (OSError, InvalidDicomError, ValueError, EOFError):
            return cls(())
        values: list[str] = []
        for tag in IDENTIFYING_TAGS:
            if tag not in dataset:
                continue
            raw = dataset.get_item(tag)
            if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
                # Both readings: a header without SpecificCharacterSet may still be UTF-8.
                values.append(raw.value.decode("utf-8", "replace"))
                values.append(raw.value.decode("latin-1"))
            elif raw is not None and raw.value is not None:
                values.append(str(raw.value))
        return cls(values)

    @classmethod
    def of_series(cls, db: Database, series_uid: str) -> PatientValues:
        return cls._of_first(db, "series_uid", series_uid)

    @classmethod
    def of_study(cls, db: Database, study_uid: str) -> PatientValues:
        return cls._of_first(db, "study_uid", study_uid)

    @classmethod
    def _of_first(cls, db: Database, column: str, uid: str) -> PatientValues:
        """From the first instance received whose ``column`` (a fixed name) is ``uid``."""
        row = db.query_one(
            f"SELECT path FROM instances WHERE {column} = ? ORDER BY received_at LIMIT 1",
            (uid,),
        )
        return cls(()) if row is None else cls.of_file(Path(row["path"]))
