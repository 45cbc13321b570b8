"""Part-10 encoding of the objects dicom_sr writes: SR and KOS in little endian only."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

PRIVATE_FILE_MODE = 0o600
"""Mode of every file written here (patient data)."""
LITTLE_ENDIAN_TRANSFER_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


def to_bytes(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a Part-10 file (preamble, file meta, data set), little endian."""
    _check_little_endian(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dataset(ds: pydicom.Dataset, path: Path) -> Path:
    """Write ``ds`` as a Part-10 file at ``path``, atomically (temporary file, fsync, rename),
    readable by its owner only (0600).

    A reader never sees a half-written file, and an existing file at ``path`` is replaced only
    once the new one is complete on disk.
    """
    data = to_bytes(ds)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        # The objects copy the patient's header: readable by the service user only.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _check_little_endian(ds: pydicom.Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = None if meta is None else meta.get("TransferSyntaxUID")
    if transfer_syntax not in LITTLE_ENDIAN_TRANSFER_SYNTAXES:
        raise ValueError(
            f"ds.file_meta.TransferSyntaxUID must be Explicit or Implicit VR Little Endian, "
            f"got {transfer_syntax!r}"
        )
