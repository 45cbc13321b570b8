"""Which result object is which: kind, deterministic UIDs and series number of each object."""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

from dicom_sr.uids import derive_uid, is_valid_uid

FIRST_RESULT_SERIES_NUMBER = 9000
"""Result series are numbered 9000-9899, after the acquired series of a study."""
_ALGORITHM_SLOTS = 30
_VERSION_SLOTS = 10


FIRST_PRESENTATION_SERIES_NUMBER = 10000
"""Presentation states and summary images are numbered 10000-10599, apart from the SR, SEG and
KOS (whose numbers stay what they were before these kinds existed)."""


class ObjectKind(enum.Enum):
    """The kinds of object a result is written as; the value is the object's Modality."""

    SR = "SR"
    SEG = "SEG"
    KOS = "KO"
    GSPS = "PR"
    SC = "OT"


_KIND_OFFSET = {ObjectKind.SR: 0, ObjectKind.SEG: 1, ObjectKind.KOS: 2}
_PRESENTATION_KIND_OFFSET = {ObjectKind.GSPS: 0, ObjectKind.SC: 1}


@dataclass(frozen=True)
class ObjectIdentity:
    """Series Instance UID, SOP Instance UID and Series Number of one result object."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int


def result_object_identity(
    *,
    study_instance_uid: str,
    algorithm_name: str,
    algorithm_version: str,
    version_number: int,
    kind: ObjectKind,
) -> ObjectIdentity:
    """UIDs and series number of result version ``version_number`` of an algorithm's ``kind``.

    The UIDs depend only on (study, algorithm, algorithm version, result version, kind), so
    writing the same version again gives the same UIDs and a resend replaces its earlier copy.
    Each version gets its own series (its Series Description names the algorithm version, which
    may change between versions). The series number is 9000 + 30 * (algorithm slot) +
    10 * (kind: SR 0, SEG 1, KOS 2) + version (capped at 9), so the SR, SEG and KOS of one run
    sit next to each other and a later version sorts after an earlier one; a presentation
    state or summary image is 10000 + 20 * (algorithm slot) + 10 * (GSPS 0, SC 1) + version.
    """
    if version_number < 1:
        raise ValueError(
            f"result_object_identity: version_number must be >= 1, got {version_number}"
        )
    key = (study_instance_uid, algorithm_name, algorithm_version, kind.value, str(version_number))
    algorithm_slot = zlib.crc32(algorithm_name.encode()) % _ALGORITHM_SLOTS
    version_slot = min(version_number, _VERSION_SLOTS - 1)
    if kind in _KIND_OFFSET:
        series_number = (
            FIRST_RESULT_SERIES_NUMBER
            + algorithm_slot * len(_KIND_OFFSET) * _VERSION_SLOTS
            + _KIND_OFFSET[kind] * _VERSION_SLOTS
            + version_slot
        )
    else:
        series_number = (
            FIRST_PRESENTATION_SERIES_NUMBER
            + algorithm_slot * len(_PRESENTATION_KIND_OFFSET) * _VERSION_SLOTS
            + _PRESENTATION_KIND_OFFSET[kind] * _VERSION_SLOTS
            + version_slot
        )
    return ObjectIdentity(
        series_instance_uid=derive_uid("result-object-series", *key),
        sop_instance_uid=derive_uid("result-object-instance", *key),
        series_number=series_number,
    )


def check_object_identity(
    builder: str, series_instance_uid: str, sop_instance_uid: str, series_number: int
) -> None:
    """The identity a caller gives a result object must be usable: both UIDs DICOM UIDs, the
    series number positive. ``builder`` names the function in the message."""
    for name, uid in (
        ("series_instance_uid", series_instance_uid),
        ("sop_instance_uid", sop_instance_uid),
    ):
        if not is_valid_uid(uid):
            raise ValueError(f"{builder}: {name} {uid!r} is not a DICOM UID")
    if series_number < 1:
        raise ValueError(f"{builder}: series_number must be >= 1, got {series_number}")
