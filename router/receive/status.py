"""What the node answers a C-STORE, and the error that carries it from wherever it was decided."""

from __future__ import annotations

import enum


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses radrouter returns (PS3.4 B.2.3).

    Only a real shortage (the spool's disk) is "out of resources", the status a sender retries.
    Input that will never be accepted gets an "error": its sender must not retry it. Within
    "cannot understand" (Cxxx, free for the SCP to use) the node says why with codes of its
    own, apart from the 0xC0xx and 0xC2xx that pynetdicom itself uses, so the reason also shows
    in the sender's log.
    """

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    """Refused: out of resources. Only for a real shortage (disk full): the sender retries."""
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """The data set's SOP class is not the one of its presentation context or request."""
    CANNOT_UNDERSTAND = 0xC000
    """The data set cannot be parsed (structure, an element the node must read)."""
    INVALID_UID = 0xC101
    """A UID the node uses (study, series, instance, SOP class) is not a DICOM UID."""
    PIXEL_DATA_INCOMPLETE = 0xC102
    """Pixel data shorter than its image description says, or empty."""
    META_CONTRADICTS_DATASET = 0xC103
    """The file meta (the request's UIDs, the transfer syntax) does not describe the data set."""
    INSTANCE_TOO_LARGE = 0xC104
    """The data set is larger than ``node.limits.max_instance_mb``."""
    SEQUENCE_TOO_DEEP = 0xC105
    """Sequences are nested deeper than ``node.limits.max_sequence_depth``."""


class IngestError(Exception):
    """An instance that cannot be accepted. ``status`` is what the peer is told; ``reason``
    names attributes, never their values (it goes to the log, the quarantine and the events);
    ``study_uid`` is the study it belongs to once its header was read (for the log line)."""

    def __init__(self, status: StoreStatus, reason: str, study_uid: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.study_uid = study_uid
