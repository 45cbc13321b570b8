"""Events to DICOM audit messages: which event ID, participants and objects each one gets
(PS3.15 A.5.3, with the general conventions of A.5.2).

The conventions radrouter follows throughout:

* a DICOM node is a participant whose UserID is its AE title, AlternativeUserID
  ``AETITLES=<title>``, and network access point its host;
* a person is a participant whose UserID is their user name (``anonymous`` until HTTP
  authentication names one), with their roles as RoleIDCodes of radrouter's own scheme;
* a study is an object with its Study Instance UID as ID (type 2 system object, role 3
  report, ID type 110180), its accession number and the SOP classes concerned;
* its patient is an object with the patient ID as ID (type 1 person, role 1 patient, ID type
  RFC 3881 "2"). The schema requires a name or a query, and radrouter repeats the ID as the
  name rather than spread the patient's name: the ID says whose data it was.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.audit.events import (
    Actor,
    ApplicationStarted,
    ApplicationStopped,
    AssociationRefused,
    AuditEvent,
    ConfigChanged,
    FeedbackExported,
    FeedbackGiven,
    QuerySent,
    QueueKind,
    ReadKind,
    RemoteNode,
    RestrictedFunctionRefused,
    RetrieveRequested,
    RetryRequested,
    SendFinished,
    SendStarted,
    StudyPurged,
    StudyRead,
    UserAuthenticated,
)
from router.audit.messages import (
    LOCAL_SCHEME,
    Action,
    ActiveParticipant,
    AuditMessage,
    AuditSource,
    CodedValue,
    EventId,
    EventType,
    ObjectIdType,
    ObjectRole,
    ObjectType,
    Outcome,
    ParticipantObject,
    Role,
    SopClassCount,
)
from router.audit.subjects import SubjectLookup

ALERT_DESCRIPTION = "Alert Description"
"""ParticipantObjectDetail type of a security alert's subject (PS3.15 A.5.3.11)."""
SHA256_DETAIL = "SHA-256"

_READ_TYPES = {
    ReadKind.STUDY_VIEW: EventType.STUDY_VIEW,
    ReadKind.WORKLIST_ENTRY: EventType.WORKLIST_ENTRY,
    ReadKind.KEY_IMAGE: EventType.KEY_IMAGE,
}
_QUEUE_ID_TYPES = {
    QueueKind.JOB: ObjectIdType.JOB,
    QueueKind.DISPATCH: ObjectIdType.DISPATCH,
    QueueKind.DELIVERY: ObjectIdType.DELIVERY,
}


@dataclass(frozen=True)
class LocalNode:
    """This router as the messages name it."""

    ae_title: str
    host: str
    source: AuditSource
    process_user: str
    pid: int


@dataclass(frozen=True)
class ReceivedStudy:
    """What one association stored of one study (``study_uid`` None: instances refused
    before their study could be read)."""

    calling_ae: str
    called_ae: str
    host: str
    study_uid: str | None
    sop_classes: Mapping[str, int]
    refused: int
    association_state: str
    at: float


def _when(at: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(at, datetime.UTC)


class Composer:
    """Builds the messages of each event. ``subjects`` names a study's patient;
    ``study_of_item`` the study of a queue item (for retries)."""

    def __init__(
        self,
        node: LocalNode,
        subjects: SubjectLookup,
        study_of_item: Callable[[QueueKind, int], str | None],
    ) -> None:
        self.node = node
        self._subjects = subjects
        self._study_of_item = study_of_item

    # --- participants and objects ---------------------------------------------------------

    def me(self, *, requestor: bool = False, roles: tuple[Role, ...] = ()) -> ActiveParticipant:
        return ActiveParticipant(
            user_id=self.node.ae_title,
            is_requestor=requestor,
            roles=tuple(role.value for role in roles),
            alternative_user_id=f"AETITLES={self.node.ae_title}",
            network_access_point=self.node.host,
        )

    @staticmethod
    def remote(
        ae_title: str, host: str, *, requestor: bool = False, roles: tuple[Role, ...] = ()
    ) -> ActiveParticipant:
        web = "://" in ae_title  # a DICOMweb server: its URL is its user ID, it has no AE title
        return ActiveParticipant(
            user_id=ae_title or "(no AE title)",
            is_requestor=requestor,
            roles=tuple(role.value for role in roles),
            alternative_user_id=None if web else f"AETITLES={ae_title}",
            network_access_point=host or None,
        )

    def peer(self, node: RemoteNode, *, roles: tuple[Role, ...] = ()) -> ActiveParticipant:
        return self.remote(node.ae_title, node.host, roles=roles)

    @staticmethod
    def person(actor: Actor) -> ActiveParticipant:
        return ActiveParticipant(
            user_id=actor.user,
            is_requestor=True,
            roles=tuple(
                CodedValue(role, LOCAL_SCHEME, f"radrouter role {role}") for role in actor.roles
            ),
            network_access_point=actor.host or None,
        )

    def study(
        self, study_uid: str, sop_classes: Mapping[str, int] | None = None
    ) -> tuple[ParticipantObject, ...]:
        """The study and, when its patient is known, the patient."""
        subject = self._subjects(study_uid)
        study = ParticipantObject(
            object_id=study_uid,
            id_type=ObjectIdType.STUDY_INSTANCE_UID.value,
            type_code=ObjectType.SYSTEM_OBJECT,
            role=ObjectRole.REPORT,
            name=study_uid,
            accession_numbers=(subject.accession_number,)
            if subject is not None and subject.accession_number
            else (),
            sop_classes=tuple(
                SopClassCount(uid, count) for uid, count in sorted((sop_classes or {}).items())
            ),
        )
        return (study, *self.patient(subject.patient_id if subject is not None else None))

    @staticmethod
    def patient(patient_id: str | None) -> tuple[ParticipantObject, ...]:
        if not patient_id:
            return ()
        return (
            ParticipantObject(
                object_id=patient_id,
                id_type=ObjectIdType.PATIENT_NUMBER.value,
                type_code=ObjectType.PERSON,
                role=ObjectRole.PATIENT,
                name=patient_id,
            ),
        )

    def message(
        self,
        event_id: EventId,
        action: Action,
        at: float,
        participants: tuple[ActiveParticipant, ...],
        objects: tuple[ParticipantObject, ...] = (),
        *,
        types: tuple[EventType, ...] = (),
        outcome: Outcome = Outcome.SUCCESS,
        description: str | None = None,
    ) -> AuditMessage:
        return AuditMessage(
            event_id=event_id,
            action=action,
            at=_when(at),
            outcome=outcome,
            participants=participants,
            source=self.node.source,
            objects=objects,
            event_types=tuple(t.value for t in types),
            outcome_description=description,
        )

    # --- events ---------------------------------------------------------------------------

    def compose(self, event: AuditEvent) -> list[AuditMessage]:
        """The messages of one event (association events go through ``received``)."""
        match event:
            case ApplicationStarted() | ApplicationStopped():
                return [self._application(event)]
            case AssociationRefused():
                return [self._refused(event)]
            case SendStarted():
                return [self._send_started(event)]
            case SendFinished():
                return [self._send_finished(event)]
            case QuerySent():
                return [self._query(event)]
            case RetrieveRequested():
                return [self._retrieve(event)]
            case StudyRead():
                return [self._read(event)]
            case FeedbackExported():
                return [self._exported(event, uid) for uid in event.study_uids]
            case FeedbackGiven():
                return [self._feedback(event)]
            case RetryRequested():
                return [self._retry(event)]
            case ConfigChanged():
                return [self._config(event)]
            case StudyPurged():
                return [self._purged(event)]
            case UserAuthenticated():
                return self._authentication(event)
            case RestrictedFunctionRefused():
                return [self._restricted(event)]
        raise TypeError(f"Composer.compose: no message for {type(event).__name__}")

    def _application(self, event: ApplicationStarted | ApplicationStopped) -> AuditMessage:
        started = isinstance(event, ApplicationStarted)
        launcher = ActiveParticipant(
            user_id=self.node.process_user,
            is_requestor=True,
            roles=(Role.APPLICATION_LAUNCHER.value,),
            network_access_point=self.node.host,
        )
        return self.message(
            EventId.APPLICATION_ACTIVITY,
            Action.EXECUTE,
            event.at,
            (self._application_participant(), launcher),
            types=(EventType.APPLICATION_START if started else EventType.APPLICATION_STOP,),
        )

    def _application_participant(self) -> ActiveParticipant:
        return ActiveParticipant(
            user_id=self.node.ae_title,
            is_requestor=False,
            roles=(Role.APPLICATION.value,),
            alternative_user_id=f"AETITLES={self.node.ae_title};PID={self.node.pid}",
            network_access_point=self.node.host,
        )

    def _refused(self, event: AssociationRefused) -> AuditMessage:
        subject = ParticipantObject(
            object_id=f"{event.calling_ae or '(no AE title)'}@{event.host}",
            id_type=ObjectIdType.NODE_ID.value,
            type_code=ObjectType.SYSTEM_OBJECT,
            role=ObjectRole.SECURITY_RESOURCE,
            name=event.calling_ae or "(no AE title)",
            details=((ALERT_DESCRIPTION, event.reason.encode("utf-8")),),
        )
        return self.message(
            EventId.SECURITY_ALERT,
            Action.EXECUTE,
            event.at,
            (self.remote(event.calling_ae, event.host, requestor=True), self.me()),
            (subject,),
            types=(EventType.NODE_AUTHENTICATION,),
            outcome=Outcome.MINOR_FAILURE,
            description=event.reason,
        )

    def received(self, summary: ReceivedStudy) -> AuditMessage:
        """DICOM Instances Transferred (C): what one association stored of one study."""
        stored = sum(summary.sop_classes.values())
        problems = []
        if summary.refused:
            problems.append(f"{summary.refused} of {stored + summary.refused} instance(s) refused")
        if summary.association_state != "released":
            problems.append(f"association {summary.association_state}")
        objects = (
            () if summary.study_uid is None else self.study(summary.study_uid, summary.sop_classes)
        )
        return self.message(
            EventId.INSTANCES_TRANSFERRED,
            Action.CREATE,
            summary.at,
            (
                self.remote(summary.calling_ae, summary.host, requestor=True, roles=(Role.SOURCE,)),
                ActiveParticipant(
                    user_id=summary.called_ae or self.node.ae_title,
                    is_requestor=False,
                    roles=(Role.DESTINATION.value,),
                    alternative_user_id=f"AETITLES={summary.called_ae or self.node.ae_title}",
                    network_access_point=self.node.host,
                ),
            ),
            objects,
            outcome=Outcome.MINOR_FAILURE if summary.refused else Outcome.SUCCESS,
            description="; ".join(problems) or None,
        )

    def _send_started(self, event: SendStarted) -> AuditMessage:
        return self.message(
            EventId.BEGIN_TRANSFERRING,
            Action.EXECUTE,
            event.at,
            (
                self._local_as(event.local_ae, requestor=True, roles=(Role.SOURCE,)),
                self.peer(event.peer, roles=(Role.DESTINATION,)),
            ),
            self.study(event.study_uid, event.sop_classes),
        )

    def _send_finished(self, event: SendFinished) -> AuditMessage:
        return self.message(
            EventId.INSTANCES_TRANSFERRED,
            Action.READ,
            event.at,
            (
                self._local_as(event.local_ae, requestor=True, roles=(Role.SOURCE,)),
                self.peer(event.peer, roles=(Role.DESTINATION,)),
            ),
            self.study(event.study_uid, event.sop_classes),
            outcome=Outcome.SUCCESS if event.error is None else Outcome.MINOR_FAILURE,
            description=event.error,
        )

    def _local_as(
        self, ae_title: str, *, requestor: bool, roles: tuple[Role, ...] = ()
    ) -> ActiveParticipant:
        """radrouter under the AE title it presented (a destination may be given another)."""
        return ActiveParticipant(
            user_id=ae_title,
            is_requestor=requestor,
            roles=tuple(role.value for role in roles),
            alternative_user_id=f"AETITLES={ae_title}",
            network_access_point=self.node.host,
        )

    def _query(self, event: QuerySent) -> AuditMessage:
        query = ParticipantObject(
            object_id=event.sop_class_uid,
            id_type=ObjectIdType.SOP_CLASS_UID.value,
            type_code=ObjectType.SYSTEM_OBJECT,
            role=ObjectRole.QUERY,
            query=event.query,
            details=(("TransferSyntax", event.transfer_syntax_uid.encode("ascii")),),
        )
        objects: tuple[ParticipantObject, ...] = (query, *self.patient(event.patient_id))
        if event.study_uid:
            objects = (query, *self.study(event.study_uid))
        return self.message(
            EventId.QUERY,
            Action.EXECUTE,
            event.at,
            (
                self._local_as(event.local_ae, requestor=True, roles=(Role.SOURCE,)),
                self.peer(event.peer, roles=(Role.DESTINATION,)),
            ),
            objects,
            outcome=Outcome.SUCCESS if event.error is None else Outcome.MINOR_FAILURE,
            description=event.error,
        )

    def _retrieve(self, event: RetrieveRequested) -> AuditMessage:
        study = self.study(event.study_uid)
        if len(study) == 1:  # not here yet: the patient is the one the query asked for
            study = (*study, *self.patient(event.patient_id))
        return self.message(
            EventId.BEGIN_TRANSFERRING,
            Action.EXECUTE,
            event.at,
            (
                self._local_as(event.local_ae, requestor=True),
                self.peer(event.peer, roles=(Role.SOURCE,)),
                self.remote(event.destination_ae, "", roles=(Role.DESTINATION,)),
            ),
            study,
            outcome=Outcome.SUCCESS if event.error is None else Outcome.MINOR_FAILURE,
            description=event.error
            if event.error is not None
            else f"C-MOVE: {event.completed} instance(s) sent to {event.destination_ae}",
        )

    def _read(self, event: StudyRead) -> AuditMessage:
        return self.message(
            EventId.INSTANCES_ACCESSED,
            Action.READ,
            event.at,
            (self.person(event.actor), self._application_participant()),
            self.study(event.study_uid),
            types=(_READ_TYPES[event.kind],),
        )

    def _exported(self, event: FeedbackExported, study_uid: str) -> AuditMessage:
        return self.message(
            EventId.EXPORT,
            Action.READ,
            event.at,
            (self.person(event.actor), self._application_participant()),
            self.study(study_uid),
            types=(EventType.FEEDBACK_EXPORT,),
            description="feedback CSV (GET /api/feedback.csv)",
        )

    def _feedback(self, event: FeedbackGiven) -> AuditMessage:
        result = ParticipantObject(
            object_id=str(event.result_id),
            id_type=ObjectIdType.RESULT.value,
            type_code=ObjectType.SYSTEM_OBJECT,
            role=ObjectRole.REPORT,
            name=f"result {event.result_id}",
            details=(("agree", b"true" if event.agree else b"false"),),
        )
        return self.message(
            EventId.PROCEDURE_RECORD,
            Action.CREATE,
            event.at,
            (self.person(event.actor), self._application_participant()),
            (*self.study(event.study_uid), result),
            types=(EventType.FEEDBACK,),
            description=f"{'agrees' if event.agree else 'disagrees'} with result {event.result_id}",
        )

    def _retry(self, event: RetryRequested) -> AuditMessage:
        singular = event.queue.value.removesuffix("es").removesuffix("s")
        if event.item_id is None:
            item_id, name = "*", f"every dead-lettered {singular}"
        else:
            item_id, name = str(event.item_id), f"{singular} {event.item_id}"
        item = ParticipantObject(
            object_id=item_id,
            id_type=_QUEUE_ID_TYPES[event.queue].value,
            type_code=ObjectType.SYSTEM_OBJECT,
            role=ObjectRole.JOB,
            name=name,
        )
        study_uid = None
        if event.item_id is not None:
            study_uid = self._study_of_item(event.queue, event.item_id)
        objects = (item,) if study_uid is None else (item, *self.study(study_uid))
        requeued = event.requeued > 0
        return self.message(
            EventId.PROCEDURE_RECORD,
            Action.UPDATE,
            event.at,
            (self.person(event.actor), self._application_participant()),
            objects,
            types=(EventType.RETRY,),
            outcome=Outcome.SUCCESS if requeued else Outcome.MINOR_FAILURE,
            description=f"{event.requeued} requeued" if requeued else "nothing to requeue",
        )

    def remember_subject(self, study_uid: str) -> None:
        """Look up the study's patient now, while its files exist (before a purge), so the
        message composed later still names the patient."""
        self._subjects(study_uid)

    def _purged(self, event: StudyPurged) -> AuditMessage:
        """DICOM Study Deleted (PS3.15 A.5.3): radrouter itself is the requestor."""
        return self.message(
            EventId.STUDY_DELETED,
            Action.DELETE,
            event.at,
            (self.me(requestor=True),),
            self.study(event.study_uid),
            description=f"retention ({event.rule}): {event.files} file(s) deleted",
        )

    def _config(self, event: ConfigChanged) -> AuditMessage:
        subject = ParticipantObject(
            object_id=str(event.path),
            id_type=ObjectIdType.URI.value,
            type_code=ObjectType.SYSTEM_OBJECT,
            role=ObjectRole.SECURITY_RESOURCE,
            name=event.path.name or str(event.path),
            details=((ALERT_DESCRIPTION, event.diff.encode("utf-8")),),
        )
        how = "applied through the admin page to" if event.source != "file" else "reloaded from"
        description = (
            f"configuration {how} {event.path}"
            if event.accepted
            else f"configuration change refused, the running one kept: {event.problems}"
        )
        editor = ActiveParticipant(
            user_id=event.editor, is_requestor=True, network_access_point=self.node.host
        )
        return self.message(
            EventId.SECURITY_ALERT,
            Action.EXECUTE,
            event.at,
            (editor, self._application_participant()),
            (subject,),
            types=(EventType.SOFTWARE_CONFIGURATION,),
            outcome=Outcome.SUCCESS if event.accepted else Outcome.MINOR_FAILURE,
            description=description,
        )

    def _authentication(self, event: UserAuthenticated) -> list[AuditMessage]:
        participants = (self.person(event.actor), self._application_participant())
        outcome = Outcome.SUCCESS if event.success else Outcome.MINOR_FAILURE
        messages = [
            self.message(
                EventId.USER_AUTHENTICATION,
                Action.EXECUTE,
                event.at,
                participants,
                types=(EventType.LOGIN if event.login else EventType.LOGOUT,),
                outcome=outcome,
                description=event.reason or None,
            )
        ]
        if not event.success:
            messages.append(
                self.message(
                    EventId.SECURITY_ALERT,
                    Action.EXECUTE,
                    event.at,
                    participants,
                    types=(EventType.USE_OF_RESTRICTED_FUNCTION,),
                    outcome=outcome,
                    description=f"login refused: {event.reason}"
                    if event.reason
                    else "login refused",
                )
            )
        return messages

    def _restricted(self, event: RestrictedFunctionRefused) -> AuditMessage:
        return self.message(
            EventId.SECURITY_ALERT,
            Action.EXECUTE,
            event.at,
            (self.person(event.actor), self._application_participant()),
            types=(EventType.USE_OF_RESTRICTED_FUNCTION,),
            outcome=Outcome.MINOR_FAILURE,
            description=event.reason,
        )

    # --- the trail's own messages ---------------------------------------------------------

    def log_started(self, at: float, previous: str | None, sha256: str | None) -> AuditMessage:
        """The first message of each log file: recording goes on here, and the file before
        (when there is one) had this SHA-256."""
        objects: tuple[ParticipantObject, ...] = ()
        description = "audit log started"
        if previous is not None and sha256 is not None:
            objects = (
                ParticipantObject(
                    object_id=previous,
                    id_type=ObjectIdType.URI.value,
                    type_code=ObjectType.SYSTEM_OBJECT,
                    role=ObjectRole.SECURITY_RESOURCE,
                    name=previous,
                    details=((SHA256_DETAIL, sha256.encode("ascii")),),
                ),
            )
            description = f"audit log continues {previous} (SHA-256 {sha256})"
        return self.message(
            EventId.SECURITY_ALERT,
            Action.EXECUTE,
            at,
            (self._application_participant(),),
            objects,
            types=(EventType.AUDIT_RECORDING_STARTED,),
            description=description,
        )

    def lost(self, at: float, count: int, why: str) -> AuditMessage:
        return self.message(
            EventId.SECURITY_ALERT,
            Action.EXECUTE,
            at,
            (self._application_participant(),),
            types=(EventType.AUDIT_RECORDING_STOPPED,),
            outcome=Outcome.SERIOUS_FAILURE,
            description=f"{count} audit message(s) lost: {why}",
        )

    def log_used(self, at: float, actor: Actor, folder: str, query: str) -> AuditMessage:
        """Audit Log Used (A.5.3.2): someone read the audit log."""
        log = ParticipantObject(
            object_id=folder,
            id_type=ObjectIdType.URI.value,
            type_code=ObjectType.SYSTEM_OBJECT,
            role=ObjectRole.SECURITY_RESOURCE,
            name="audit log",
            details=(("query", query.encode("utf-8")),),
        )
        return self.message(
            EventId.AUDIT_LOG_USED,
            Action.READ,
            at,
            (self.person(actor),),
            (log,),
        )
