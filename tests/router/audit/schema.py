"""The DICOM audit message schema (PS3.15 A.5.1.1), for checking what radrouter writes.

The schema is committed as the standard gives it, in RELAX NG Compact
(``tests/data/audit/dicom-audit-message.rnc``, its source named in its header); rnc2rng turns
it into RELAX NG XML syntax, which lxml validates with."""

from __future__ import annotations

import functools
from pathlib import Path

import rnc2rng  # type: ignore[import-untyped]
from lxml import etree

SCHEMA = Path(__file__).resolve().parents[2] / "data" / "audit" / "dicom-audit-message.rnc"


@functools.cache
def audit_schema() -> etree.RelaxNG:
    rng = rnc2rng.dumps(rnc2rng.loads(SCHEMA.read_text(encoding="utf-8")))
    return etree.RelaxNG(etree.fromstring(rng.encode("utf-8")))


def schema_errors(xml: bytes) -> list[str]:
    """Why ``xml`` is not a valid DICOM audit message; empty when it is one."""
    schema = audit_schema()
    if schema.validate(etree.fromstring(xml)):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]
