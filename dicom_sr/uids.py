"""DICOM UIDs under the 2.25 root: derived (deterministic) for idempotent outputs, or random."""

from __future__ import annotations

import json
import re
import uuid

from pydicom.uid import generate_uid

# Namespace of every derived UID (a fixed random UUID, minted once for radrouter). Changing it
# changes every derived UID, so re-sent results would no longer replace their earlier copies.
_RADROUTER_NAMESPACE = uuid.UUID("5d6b2a4e-8f1c-4c33-9e0a-6f2f1b7d9c41")

_UID_MAX_LENGTH = 64
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def derive_uid(*parts: str) -> str:
    """A UID that depends only on ``parts``: ``2.25.<name-based UUID>`` (ISO/IEC 9834-8).

    The parts are hashed (UUID version 5, SHA-1, in radrouter's namespace) as a JSON list, so
    ``("a.b", "c")`` and ``("a", "b.c")`` differ. Re-writing the same result version with the
    same parts gives the same UIDs, so a resend replaces rather than duplicates.
    """
    if not parts:
        raise ValueError("derive_uid: parts must name at least one value")
    for index, part in enumerate(parts):
        if not isinstance(part, str) or not part:
            raise ValueError(f"derive_uid: parts[{index}] must be a non-empty str, got {part!r}")
    name = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return f"2.25.{uuid.uuid5(_RADROUTER_NAMESPACE, name).int}"


def output_series_uid(study_instance_uid: str, algorithm_name: str, kind: str) -> str:
    """Series Instance UID of an algorithm's ``kind`` of output ("SR", "SEG", ...) in a study.

    Every result version of the algorithm in the study goes into this one series.
    """
    return derive_uid(study_instance_uid, algorithm_name, kind, "series")


def output_instance_uid(
    study_instance_uid: str, algorithm_name: str, kind: str, version_number: int
) -> str:
    """SOP Instance UID of result version ``version_number`` of an algorithm's ``kind`` output."""
    if version_number < 1:
        raise ValueError(f"output_instance_uid: version_number must be >= 1, got {version_number}")
    return derive_uid(study_instance_uid, algorithm_name, kind, "instance", str(version_number))


def new_uid() -> str:
    """A fresh random UID, ``2.25.<random UUID>``."""
    return str(generate_uid(prefix=None))


def is_valid_uid(uid: str) -> bool:
    """Whether ``uid`` is a DICOM UID (PS3.5 9.1): dotted numbers, no leading zeros, <= 64."""
    return len(uid) <= _UID_MAX_LENGTH and _UID_PATTERN.fullmatch(uid) is not None
