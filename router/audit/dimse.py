"""radrouter's own C-FIND and C-MOVE requests, observed for the audit trail.

``AuditedAssociation`` wraps a pynetdicom association that radrouter requested and passes
every response through unchanged; when a C-FIND or C-MOVE is over (or fails) it records a
Query or a retrieve (Begin Transferring) with the identifier that was sent and how it ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from router.audit.events import AuditRecorder, QuerySent, RemoteNode, RetrieveRequested

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_SUCCESS = 0x0000
_PENDING = (0xFF00, 0xFF01)
_SUB_OPERATIONS_FAILED = 0xB000


def encode_identifier(identifier: Dataset) -> bytes:
    """The identifier as sent in a query (explicit VR little endian), for the message."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, identifier)
    return bytes(buffer.getvalue())


def _sop_class_uid(model: Any) -> str:
    return str(getattr(model, "uid", model))


def _text(identifier: Dataset, keyword: str) -> str | None:
    value = str(identifier.get(keyword, "") or "").strip()
    return value or None


class AuditedAssociation:
    """An established association whose ``send_c_find`` and ``send_c_move`` are recorded.

    ``patient_id`` is whose data the requests are about when an identifier does not say
    (a series query names only the study)."""

    def __init__(
        self,
        assoc: Any,
        audit: AuditRecorder,
        peer: RemoteNode,
        local_ae: str,
        patient_id: str | None,
    ) -> None:
        self._assoc = assoc
        self._audit = audit
        self._peer = peer
        self._local_ae = local_ae
        self._patient_id = patient_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._assoc, name)

    def send_c_find(self, identifier: Dataset, model: Any) -> Iterator[tuple[Any, Any]]:
        error: str | None = "no final response"
        try:
            for status, found in self._assoc.send_c_find(identifier, model):
                code = int(getattr(status, "Status", -1))
                if code not in _PENDING:
                    error = None if code == _SUCCESS else f"C-FIND ended with 0x{code & 0xFFFF:04X}"
                yield status, found
        except Exception as exc:
            error = f"C-FIND failed: {exc}"
            raise
        finally:
            self._audit.record(
                QuerySent(
                    self._peer,
                    self._local_ae,
                    _sop_class_uid(model),
                    encode_identifier(identifier),
                    EXPLICIT_VR_LITTLE_ENDIAN,
                    _text(identifier, "PatientID") or self._patient_id,
                    _text(identifier, "StudyInstanceUID"),
                    error,
                )
            )

    def send_c_move(
        self, identifier: Dataset, destination_ae: str, model: Any
    ) -> Iterator[tuple[Any, Any]]:
        error: str | None = "no final response"
        completed = 0
        try:
            for status, found in self._assoc.send_c_move(identifier, destination_ae, model):
                code = int(getattr(status, "Status", -1))
                completed = int(
                    getattr(status, "NumberOfCompletedSuboperations", completed) or completed
                )
                if code not in _PENDING:
                    error = (
                        None
                        if code in (_SUCCESS, _SUB_OPERATIONS_FAILED) and completed
                        else f"C-MOVE ended with 0x{code & 0xFFFF:04X}"
                    )
                yield status, found
        except Exception as exc:
            error = f"C-MOVE failed: {exc}"
            raise
        finally:
            self._audit.record(
                RetrieveRequested(
                    self._peer,
                    self._local_ae,
                    destination_ae,
                    _text(identifier, "StudyInstanceUID") or "",
                    _text(identifier, "PatientID") or self._patient_id,
                    completed,
                    error,
                )
            )
