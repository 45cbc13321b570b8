"""What the router records for the audit trail: one typed event per thing that happened.

Hooks build these cheap values and hand them to an ``AuditRecorder``; everything slow (reading
a study's patient from the spool, composing XML, writing) happens later in the trail's thread.
Each event is stamped with the time it happened, in the caller's thread.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

ANONYMOUS = "anonymous"
"""The user of a request nobody authenticated (until HTTP authentication names one)."""


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class Actor:
    """Who did something: a user name, their roles and the host they came from."""

    user: str
    roles: tuple[str, ...] = ()
    host: str | None = None

    def __post_init__(self) -> None:
        if not self.user.strip():
            raise ValueError("Actor: user must not be empty (use ANONYMOUS)")

    @classmethod
    def anonymous(cls, host: str | None) -> Actor:
        return cls(ANONYMOUS, (), host)


@dataclass(frozen=True)
class RemoteNode:
    """A DICOM node radrouter talked to; for a DICOMweb server, ``ae_title`` is its URL."""

    ae_title: str
    host: str
    port: int | None = None


class ReadKind(enum.StrEnum):
    """What an API read showed of a study."""

    STUDY_VIEW = "study-view"
    WORKLIST_ENTRY = "worklist-entry"
    KEY_IMAGE = "key-image"


class QueueKind(enum.StrEnum):
    """The durable queues whose dead items a person can retry (their table names)."""

    JOB = "jobs"
    DISPATCH = "dispatches"
    DELIVERY = "deliveries"


# --- the application ---------------------------------------------------------------------


@dataclass(frozen=True)
class ApplicationStarted:
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class ApplicationStopped:
    at: float = field(default_factory=_now)


# --- the DICOM node (incoming) -------------------------------------------------------------


@dataclass(frozen=True)
class AssociationRefused:
    """An association radrouter refused: a caller not allowed, or another called AE title."""

    calling_ae: str
    called_ae: str
    host: str
    reason: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class InstanceReceived:
    """One C-STORE request on an association, stored or refused. ``study_uid`` is None when
    the dataset could not be read far enough to know it."""

    association_id: str
    calling_ae: str
    called_ae: str
    host: str
    study_uid: str | None
    sop_class_uid: str
    stored: bool
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class AssociationEnded:
    """The association is over (released, aborted or interrupted): what it stored is
    reported, one message per study."""

    association_id: str
    state: str
    at: float = field(default_factory=_now)


# --- radrouter as a DICOM client (outgoing) --------------------------------------------------


@dataclass(frozen=True)
class SendStarted:
    """A C-STORE of a study's objects to ``peer`` begins (results or a forwarded series)."""

    peer: RemoteNode
    local_ae: str
    study_uid: str
    sop_classes: Mapping[str, int]
    at: float = field(default_factory=_now)

    def finished(self, error: str | None) -> SendFinished:
        return SendFinished(self.peer, self.local_ae, self.study_uid, self.sop_classes, error)


@dataclass(frozen=True)
class SendFinished:
    """The C-STORE of ``SendStarted`` ended; ``error`` None when every object was taken."""

    peer: RemoteNode
    local_ae: str
    study_uid: str
    sop_classes: Mapping[str, int]
    error: str | None
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class QuerySent:
    """A C-FIND radrouter sent (for a prior): ``query`` is the identifier, encoded."""

    peer: RemoteNode
    local_ae: str
    sop_class_uid: str
    query: bytes
    transfer_syntax_uid: str
    patient_id: str | None
    study_uid: str | None
    error: str | None
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class RetrieveRequested:
    """A C-MOVE radrouter asked ``peer`` for, sending one series to ``destination_ae``."""

    peer: RemoteNode
    local_ae: str
    destination_ae: str
    study_uid: str
    patient_id: str | None
    completed: int
    error: str | None
    at: float = field(default_factory=_now)


# --- people, through the API and the command line ---------------------------------------


@dataclass(frozen=True)
class StudyRead:
    """A person saw something of a study (its view, its worklist entry, a key image)."""

    actor: Actor
    study_uid: str
    kind: ReadKind
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class FeedbackExported:
    """A person downloaded the feedback CSV, which names these studies."""

    actor: Actor
    study_uids: tuple[str, ...]
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class FeedbackGiven:
    actor: Actor
    study_uid: str
    result_id: int
    agree: bool
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class RetryRequested:
    """A person requeued a dead item (``item_id`` None: every dead item of the queue);
    ``requeued`` is how many were."""

    actor: Actor
    queue: QueueKind
    item_id: int | None
    requeued: int
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class ConfigChanged:
    """The routing YAML changed on disk: ``diff`` is a unified diff with secrets redacted;
    ``accepted`` False when the new file was refused (``problems`` says why)."""

    path: Path
    editor: str
    diff: str
    accepted: bool
    problems: str = ""
    at: float = field(default_factory=_now)
    source: str = "file"
    """Where the change came from: ``file`` (edited on disk; ``editor`` is the file's owner)
    or ``admin page`` (applied there; ``editor`` is the signed-in user)."""


@dataclass(frozen=True)
class StudyPurged:
    """Retention deleted a study's received images and result files (``files`` of them);
    ``rule`` names the setting that made it due."""

    study_uid: str
    files: int
    rule: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class UserAuthenticated:
    """A login or logout, or a refused login (``success`` False, with the reason)."""

    actor: Actor
    login: bool
    success: bool
    reason: str = ""
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class RestrictedFunctionRefused:
    """A request refused although (or before) its credentials were checked: a role it does
    not have, a foreign Host, a cross-site or CSRF-less request."""

    actor: Actor
    reason: str
    at: float = field(default_factory=_now)


AuditEvent = (
    ApplicationStarted
    | ApplicationStopped
    | AssociationRefused
    | InstanceReceived
    | AssociationEnded
    | SendStarted
    | SendFinished
    | QuerySent
    | RetrieveRequested
    | StudyRead
    | FeedbackExported
    | FeedbackGiven
    | RetryRequested
    | ConfigChanged
    | StudyPurged
    | UserAuthenticated
    | RestrictedFunctionRefused
)


class AuditRecorder(Protocol):
    """Where hooks hand their events. ``record`` returns at once and never raises."""

    def record(self, event: AuditEvent) -> None: ...


class NoAudit:
    """The recorder of a router whose audit trail is off (and the default in tests of one
    stage)."""

    def record(self, event: AuditEvent) -> None:
        return None


NO_AUDIT = NoAudit()
