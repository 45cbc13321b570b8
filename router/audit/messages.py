"""DICOM audit messages (PS3.15 A.5.1, the RFC 3881-derived ``AuditMessage``) as types.

Objects are valid by construction against the standard's schema (the tests validate every
kind radrouter writes with the schema itself); ``to_xml`` writes one line of UTF-8 and
``AuditMessage.from_xml`` reads it back, so the read path mirrors the write path. Coded values
are those of PS3.16 (CID 400-404, scheme ``DCM``), RFC 3881, or radrouter's own (scheme
``99RADROUTER``, a private coding scheme designator as PS3.16 8.2 allows).
"""

from __future__ import annotations

import base64
import datetime
import enum
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

LOCAL_SCHEME = "99RADROUTER"
"""radrouter's own codes: what a generic DCM code does not say (which page a person read)."""


@dataclass(frozen=True)
class CodedValue:
    """A code: its value, its scheme (``codeSystemName``) and meaning (``originalText``)."""

    code: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for name in ("code", "scheme", "meaning"):
            if not getattr(self, name).strip():
                raise ValueError(f"CodedValue: {name} must not be empty")


class EventId(enum.Enum):
    """CID 400 Audit Event ID."""

    APPLICATION_ACTIVITY = CodedValue("110100", "DCM", "Application Activity")
    AUDIT_LOG_USED = CodedValue("110101", "DCM", "Audit Log Used")
    BEGIN_TRANSFERRING = CodedValue("110102", "DCM", "Begin Transferring DICOM Instances")
    INSTANCES_ACCESSED = CodedValue("110103", "DCM", "DICOM Instances Accessed")
    INSTANCES_TRANSFERRED = CodedValue("110104", "DCM", "DICOM Instances Transferred")
    STUDY_DELETED = CodedValue("110105", "DCM", "DICOM Study Deleted")
    EXPORT = CodedValue("110106", "DCM", "Export")
    PROCEDURE_RECORD = CodedValue("110111", "DCM", "Procedure Record")
    QUERY = CodedValue("110112", "DCM", "Query")
    SECURITY_ALERT = CodedValue("110113", "DCM", "Security Alert")
    USER_AUTHENTICATION = CodedValue("110114", "DCM", "User Authentication")


class EventType(enum.Enum):
    """CID 401 Audit Event Type Code, and radrouter's own event types."""

    APPLICATION_START = CodedValue("110120", "DCM", "Application Start")
    APPLICATION_STOP = CodedValue("110121", "DCM", "Application Stop")
    LOGIN = CodedValue("110122", "DCM", "Login")
    LOGOUT = CodedValue("110123", "DCM", "Logout")
    NODE_AUTHENTICATION = CodedValue("110126", "DCM", "Node Authentication")
    SOFTWARE_CONFIGURATION = CodedValue("110131", "DCM", "Software Configuration")
    USE_OF_RESTRICTED_FUNCTION = CodedValue("110132", "DCM", "Use of Restricted Function")
    AUDIT_RECORDING_STOPPED = CodedValue("110133", "DCM", "Audit Recording Stopped")
    AUDIT_RECORDING_STARTED = CodedValue("110134", "DCM", "Audit Recording Started")
    STUDY_VIEW = CodedValue("study-view", LOCAL_SCHEME, "Study view read through the API")
    WORKLIST_ENTRY = CodedValue("worklist-entry", LOCAL_SCHEME, "Worklist entry shown")
    KEY_IMAGE = CodedValue("key-image", LOCAL_SCHEME, "Key image shown")
    FEEDBACK = CodedValue("feedback", LOCAL_SCHEME, "Feedback on an AI result")
    FEEDBACK_EXPORT = CodedValue("feedback-export", LOCAL_SCHEME, "Feedback CSV exported")
    RETRY = CodedValue("retry", LOCAL_SCHEME, "Dead item requeued")


class Role(enum.Enum):
    """CID 402 Audit Active Participant Role ID."""

    APPLICATION = CodedValue("110150", "DCM", "Application")
    APPLICATION_LAUNCHER = CodedValue("110151", "DCM", "Application Launcher")
    DESTINATION = CodedValue("110152", "DCM", "Destination Role ID")
    SOURCE = CodedValue("110153", "DCM", "Source Role ID")


class ObjectIdType(enum.Enum):
    """CID 404 Audit Participant Object ID Type Code (with RFC 3881's), and radrouter's."""

    PATIENT_NUMBER = CodedValue("2", "RFC-3881", "Patient Number")
    URI = CodedValue("12", "RFC-3881", "URI")
    STUDY_INSTANCE_UID = CodedValue("110180", "DCM", "Study Instance UID")
    SOP_CLASS_UID = CodedValue("110181", "DCM", "SOP Class UID")
    NODE_ID = CodedValue("110182", "DCM", "Node ID")
    JOB = CodedValue("job", LOCAL_SCHEME, "radrouter job")
    DISPATCH = CodedValue("dispatch", LOCAL_SCHEME, "radrouter dispatch")
    DELIVERY = CodedValue("delivery", LOCAL_SCHEME, "radrouter worklist delivery")
    RESULT = CodedValue("result", LOCAL_SCHEME, "radrouter AI result")


class Action(enum.StrEnum):
    """EventActionCode."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(enum.IntEnum):
    """EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class ObjectType(enum.IntEnum):
    """ParticipantObjectTypeCode."""

    PERSON = 1
    SYSTEM_OBJECT = 2
    ORGANIZATION = 3
    OTHER = 4


class ObjectRole(enum.IntEnum):
    """ParticipantObjectTypeCodeRole (the ones radrouter uses)."""

    PATIENT = 1
    REPORT = 3
    RESOURCE = 4
    SECURITY_RESOURCE = 13
    JOB = 20
    QUERY = 24


class SourceType(enum.StrEnum):
    """AuditSourceTypeCode."""

    END_USER_INTERFACE = "1"
    WEB_SERVER = "3"
    APPLICATION_SERVER = "4"


# --- the parts of a message ----------------------------------------------------------------


@dataclass(frozen=True)
class ActiveParticipant:
    """A user, process or node taking part; ``is_requestor`` for the one that asked."""

    user_id: str
    is_requestor: bool
    roles: tuple[CodedValue, ...] = ()
    alternative_user_id: str | None = None
    user_name: str | None = None
    network_access_point: str | None = None

    def __post_init__(self) -> None:
        if not self.user_id:
            raise ValueError("ActiveParticipant: user_id must not be empty")


@dataclass(frozen=True)
class SopClassCount:
    """One SOP class of a study and how many of its instances the event concerned."""

    uid: str
    count: int

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"SopClassCount: count must be >= 0, got {self.count}")


@dataclass(frozen=True)
class ParticipantObject:
    """A thing the event concerned: a study, a patient, a query, a job, the configuration.

    The schema requires exactly one of ``name`` and ``query``."""

    object_id: str
    id_type: CodedValue
    type_code: ObjectType
    role: ObjectRole
    name: str | None = None
    query: bytes | None = None
    details: tuple[tuple[str, bytes], ...] = ()
    accession_numbers: tuple[str, ...] = ()
    sop_classes: tuple[SopClassCount, ...] = ()

    def __post_init__(self) -> None:
        if not self.object_id.strip():
            raise ValueError("ParticipantObject: object_id must not be empty")
        if (self.name is None) == (self.query is None):
            raise ValueError("ParticipantObject: give exactly one of name and query (PS3.15 A.5.1)")
        if self.name is not None and not self.name.strip():
            raise ValueError("ParticipantObject: name must not be blank")

    def detail(self, kind: str) -> bytes | None:
        return next((value for key, value in self.details if key == kind), None)


@dataclass(frozen=True)
class AuditSource:
    """AuditSourceIdentification: who reports (this router)."""

    source_id: str
    site_id: str | None = None
    types: tuple[SourceType, ...] = (SourceType.APPLICATION_SERVER,)

    def __post_init__(self) -> None:
        if not self.source_id.strip():
            raise ValueError("AuditSource: source_id must not be empty")


@dataclass(frozen=True)
class AuditMessage:
    """One DICOM audit message."""

    event_id: EventId
    action: Action
    at: datetime.datetime
    outcome: Outcome
    participants: tuple[ActiveParticipant, ...]
    source: AuditSource
    objects: tuple[ParticipantObject, ...] = ()
    event_types: tuple[CodedValue, ...] = ()
    outcome_description: str | None = None

    def __post_init__(self) -> None:
        if not self.participants:
            raise ValueError("AuditMessage: at least one active participant is required")
        if self.at.tzinfo is None:
            raise ValueError("AuditMessage: at must be timezone-aware")

    # --- reading it -------------------------------------------------------------------------

    def requestors(self) -> tuple[ActiveParticipant, ...]:
        return tuple(p for p in self.participants if p.is_requestor)

    def objects_of(self, id_type: ObjectIdType) -> tuple[ParticipantObject, ...]:
        return tuple(o for o in self.objects if o.id_type == id_type.value)

    def study_uids(self) -> tuple[str, ...]:
        return tuple(o.object_id for o in self.objects_of(ObjectIdType.STUDY_INSTANCE_UID))

    def patient_ids(self) -> tuple[str, ...]:
        return tuple(o.object_id for o in self.objects_of(ObjectIdType.PATIENT_NUMBER))

    # --- XML --------------------------------------------------------------------------------

    def to_xml(self) -> bytes:
        """The message as one line of UTF-8 XML (no XML declaration, no line breaks)."""
        root = ET.Element("AuditMessage")
        event = ET.SubElement(
            root,
            "EventIdentification",
            _attributes(
                EventActionCode=self.action.value,
                EventDateTime=_datetime_text(self.at),
                EventOutcomeIndicator=str(int(self.outcome)),
            ),
        )
        _coded(event, "EventID", self.event_id.value)
        for event_type in self.event_types:
            _coded(event, "EventTypeCode", event_type)
        if self.outcome_description is not None:
            ET.SubElement(event, "EventOutcomeDescription").text = _clean(self.outcome_description)
        for participant in self.participants:
            _participant(root, participant)
        source = ET.SubElement(
            root,
            "AuditSourceIdentification",
            _attributes(
                AuditEnterpriseSiteID=self.source.site_id, AuditSourceID=self.source.source_id
            ),
        )
        for source_type in self.source.types:
            ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": source_type.value})
        for item in self.objects:
            _object(root, item)
        text = ET.tostring(root, encoding="unicode", short_empty_elements=True)
        # Line breaks inside text become character references: one message, one line.
        return text.replace("\r", "&#13;").replace("\n", "&#10;").encode("utf-8")

    @classmethod
    def from_xml(cls, data: bytes | str) -> AuditMessage:
        """Read a message ``to_xml`` wrote. Raises ValueError naming what is wrong."""
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            raise ValueError(f"not an audit message: {exc}") from exc
        if root.tag != "AuditMessage":
            raise ValueError(f"not an audit message: root element {root.tag!r}")
        event = _child(root, "EventIdentification")
        description = event.find("EventOutcomeDescription")
        source = _child(root, "AuditSourceIdentification")
        return cls(
            event_id=EventId(_read_coded(_child(event, "EventID"))),
            action=Action(event.get("EventActionCode", "E")),
            at=datetime.datetime.fromisoformat(_required(event, "EventDateTime")),
            outcome=Outcome(int(_required(event, "EventOutcomeIndicator"))),
            participants=tuple(_read_participant(p) for p in root.findall("ActiveParticipant")),
            source=AuditSource(
                source_id=_required(source, "AuditSourceID"),
                site_id=source.get("AuditEnterpriseSiteID"),
                types=tuple(
                    SourceType(_required(t, "csd-code"))
                    for t in source.findall("AuditSourceTypeCode")
                ),
            ),
            objects=tuple(_read_object(o) for o in root.findall("ParticipantObjectIdentification")),
            event_types=tuple(_read_coded(t) for t in event.findall("EventTypeCode")),
            outcome_description=None if description is None else (description.text or ""),
        )


# --- writing -----------------------------------------------------------------------------

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    """Characters XML 1.0 cannot carry (NUL, other controls) become U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def _attributes(**values: str | None) -> dict[str, str]:
    return {key: _clean(value) for key, value in values.items() if value is not None}


def _datetime_text(at: datetime.datetime) -> str:
    return at.astimezone(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _coded(parent: ET.Element, tag: str, value: CodedValue) -> None:
    ET.SubElement(
        parent,
        tag,
        _attributes(
            **{"csd-code": value.code},
            codeSystemName=value.scheme,
            originalText=value.meaning,
        ),
    )


def _access_point_type(address: str) -> str:
    """``2`` for an IP address, ``1`` for a machine name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"


def _participant(root: ET.Element, participant: ActiveParticipant) -> None:
    point = participant.network_access_point
    element = ET.SubElement(
        root,
        "ActiveParticipant",
        _attributes(
            UserID=participant.user_id,
            AlternativeUserID=participant.alternative_user_id,
            UserName=participant.user_name,
            UserIsRequestor="true" if participant.is_requestor else "false",
            NetworkAccessPointID=point,
            NetworkAccessPointTypeCode=None if point is None else _access_point_type(point),
        ),
    )
    for role in participant.roles:
        _coded(element, "RoleIDCode", role)


def _object(root: ET.Element, item: ParticipantObject) -> None:
    element = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        _attributes(
            ParticipantObjectID=item.object_id,
            ParticipantObjectTypeCode=str(int(item.type_code)),
            ParticipantObjectTypeCodeRole=str(int(item.role)),
        ),
    )
    _coded(element, "ParticipantObjectIDTypeCode", item.id_type)
    if item.name is not None:
        ET.SubElement(element, "ParticipantObjectName").text = _clean(item.name)
    else:
        ET.SubElement(element, "ParticipantObjectQuery").text = _base64(item.query or b"")
    for kind, value in item.details:
        ET.SubElement(
            element, "ParticipantObjectDetail", _attributes(type=kind, value=_base64(value))
        )
    if item.accession_numbers or item.sop_classes:
        description = ET.SubElement(element, "ParticipantObjectDescription")
        for number in item.accession_numbers:
            ET.SubElement(description, "Accession", _attributes(Number=number))
        for sop_class in item.sop_classes:
            ET.SubElement(
                description,
                "SOPClass",
                _attributes(UID=sop_class.uid, NumberOfInstances=str(sop_class.count)),
            )


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


# --- reading -----------------------------------------------------------------------------


def _child(parent: ET.Element, tag: str) -> ET.Element:
    found = parent.find(tag)
    if found is None:
        raise ValueError(f"not an audit message: {parent.tag} has no {tag}")
    return found


def _required(element: ET.Element, name: str) -> str:
    value = element.get(name)
    if value is None:
        raise ValueError(f"not an audit message: {element.tag} has no {name}")
    return value


def _read_coded(element: ET.Element) -> CodedValue:
    return CodedValue(
        _required(element, "csd-code"),
        _required(element, "codeSystemName"),
        _required(element, "originalText"),
    )


def _read_participant(element: ET.Element) -> ActiveParticipant:
    return ActiveParticipant(
        user_id=_required(element, "UserID"),
        is_requestor=_required(element, "UserIsRequestor") == "true",
        roles=tuple(_read_coded(r) for r in element.findall("RoleIDCode")),
        alternative_user_id=element.get("AlternativeUserID"),
        user_name=element.get("UserName"),
        network_access_point=element.get("NetworkAccessPointID"),
    )


def _read_object(element: ET.Element) -> ParticipantObject:
    name = element.find("ParticipantObjectName")
    query = element.find("ParticipantObjectQuery")
    description = element.find("ParticipantObjectDescription")
    accessions: tuple[str, ...] = ()
    sop_classes: tuple[SopClassCount, ...] = ()
    if description is not None:
        accessions = tuple(_required(a, "Number") for a in description.findall("Accession"))
        sop_classes = tuple(
            SopClassCount(_required(s, "UID"), int(_required(s, "NumberOfInstances")))
            for s in description.findall("SOPClass")
        )
    return ParticipantObject(
        object_id=_required(element, "ParticipantObjectID"),
        id_type=_read_coded(_child(element, "ParticipantObjectIDTypeCode")),
        type_code=ObjectType(int(_required(element, "ParticipantObjectTypeCode"))),
        role=ObjectRole(int(_required(element, "ParticipantObjectTypeCodeRole"))),
        name=None if name is None else (name.text or ""),
        query=None if query is None else base64.b64decode(query.text or ""),
        details=tuple(
            (_required(d, "type"), base64.b64decode(_required(d, "value")))
            for d in element.findall("ParticipantObjectDetail")
        ),
        accession_numbers=accessions,
        sop_classes=sop_classes,
    )
