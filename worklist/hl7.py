"""HL7 v2.5.1 ORU^R01 result messages and their acknowledgements, built and read with hl7apy.

hl7apy (CRS4) holds the v2.5.1 message structures: messages are built segment by segment in
its model and checked against the ORU^R01 structure with STRICT validation before they leave;
received messages and ACKs are parsed by it. Leaf text is escaped here (``escape_text``):
hl7apy's own escaping leaves ``^`` and ``&`` alone when a string is assigned to a field and
treats a literal ``\\F\\`` in text as an escape sequence.

Layout of the ORU^R01 (see docs/worklist.md for an example): MSH, PID, ORC, OBR (accession
number as placer and filler order number, OBR-5 priority for older receivers), TQ1 (TQ1-9
priority, the v2.5.1 place for it), then OBX rows: the study-level verdict, the study-level
certainty and measurements, one group of rows per finding (OBX-4 sub-ID = finding number),
the priority, the flag, the reason, the algorithm's name and version, the "AI-generated, not
verified" statement, why there is no result (not assessed / failed), and the Study Instance
UID. Every OBX is preliminary (``P``): nobody verified it.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import unicodedata
from dataclasses import dataclass
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException, MaxLengthReached
from hl7apy.parser import parse_message

from algorithms.contract import AlgorithmResult, Code, Verdict
from config.schema import Hl7NotifyConfig, Priority
from worklist import codes
from worklist.facts import AlgorithmFailure
from worklist.notification import Notification
from worklist.priority import DecisionStatus

logger = logging.getLogger(__name__)

HL7_VERSION = "2.5.1"
ORU_R01 = "ORU^R01^ORU_R01"
CHARACTER_SET = "UNICODE UTF-8"
ENCODING = "utf-8"
CONTROL_ID_LENGTH = 20
"""MSH-10 is at most 20 characters in v2.5.1."""
ST_LENGTH = 199
"""ST values (escaped) are at most 199 characters; free text longer than that goes in TX."""
TX_LENGTH = 65536
HD_NAMESPACE_LENGTH = 20
"""HD.1 (namespace ID, an IS) is at most 20 characters."""

TQ1_PRIORITIES = {
    Priority.STAT: Code("S", "HL70485", "Stat"),
    Priority.URGENT: Code("A", "HL70485", "ASAP"),
    Priority.ROUTINE: Code("R", "HL70485", "Routine"),
}
"""Lane -> HL7 table 0485 (Extended Priority Codes), used in TQ1-9 and OBR-5."""
YES = Code("Y", "HL70136", "Yes")
NO = Code("N", "HL70136", "No")
ACCEPTED = frozenset({"AA", "CA"})
"""MSA-1 codes meaning the receiver took the message (original and enhanced mode)."""
REJECTED = frozenset({"AR", "CR"})
"""MSA-1 codes meaning this message will never be accepted: do not resend it."""

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


class Hl7Error(ValueError):
    """A message could not be built or read; the text says which part and why."""


def escape_text(text: str) -> str:
    """``text`` as the value of one HL7 component (default delimiters). Line breaks and other
    control characters become spaces: components are single-line, and 0x0B/0x1C would end
    the MLLP block."""
    one_line = " ".join(text.splitlines())
    flat = "".join(" " if unicodedata.category(c) == "Cc" else c for c in one_line)
    for plain, escaped in _ESCAPES:
        flat = flat.replace(plain, escaped)
    return flat


def unescape_text(value: str) -> str:
    """The inverse of :func:`escape_text` (for text on one line without control characters)."""
    out: list[str] = []
    index = 0
    table = {escaped[1]: plain for plain, escaped in _ESCAPES}
    while index < len(value):
        if value[index] == "\\" and index + 2 < len(value) and value[index + 2] == "\\":
            plain = table.get(value[index + 1])
            if plain is not None:
                out.append(plain)
                index += 3
                continue
        out.append(value[index])
        index += 1
    return "".join(out)


def fit(text: str, limit: int = ST_LENGTH) -> str:
    """``text`` on one line, shortened with "..." so that escaped it is at most ``limit``
    characters."""
    flat = " ".join(text.splitlines())
    if len(escape_text(flat)) <= limit:
        return flat
    return flat[: _fitting_prefix(flat, limit - 3)] + "..."


def text_lines(text: str, limit: int = ST_LENGTH) -> list[str]:
    """``text`` (on one line) cut into pieces that are, escaped, at most ``limit`` characters
    each, after a space where possible: the repetitions of a TX OBX-5, joined when read."""
    rest = " ".join(text.splitlines())
    lines: list[str] = []
    while len(escape_text(rest)) > limit:
        cut = _fitting_prefix(rest, limit)
        space = rest.rfind(" ", 0, cut)
        cut = space + 1 if space > 0 else cut
        lines.append(rest[:cut])
        rest = rest[cut:]
    return [*lines, rest]


def _fitting_prefix(flat: str, limit: int) -> int:
    """Length of the longest prefix of ``flat`` (no line breaks) that escaped is at most
    ``limit`` characters."""
    used = 0
    for index, char in enumerate(flat):
        used += len(escape_text(char))
        if used > limit:
            return index
    return len(flat)


def message_control_id(notification_id: str) -> str:
    """MSH-10 for a notification: 20 characters derived from its id, so a retry carries the
    same control ID and a receiver can recognise a duplicate."""
    digest = hashlib.sha256(notification_id.encode("utf-8")).hexdigest()
    return digest[:CONTROL_ID_LENGTH].upper()


def hl7_datetime(moment: datetime.datetime) -> str:
    """DTM ``YYYYMMDDHHMMSS+ZZZZ``."""
    return moment.strftime("%Y%m%d%H%M%S%z")


def coded(code: Code) -> str:
    """A CWE (identifier^text^coding system) in ER7."""
    return "^".join(
        escape_text(part) for part in (code.value, code.meaning, code.scheme_designator)
    )


def decimal(value: float) -> str:
    """An NM value: plain decimal, no exponent."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


@dataclass(frozen=True)
class ObservationRow:
    """One OBX, as built and as read back."""

    value_type: str
    """``CWE``, ``NM``, ``ST`` or ``TX``."""
    identifier: Code
    value: str
    """The value's ER7 text, unescaped for ST/TX/NM; ``identifier^text^system`` for CWE."""
    sub_id: str = ""
    units: Code | None = None
    status: str = "P"

    def coded_value(self) -> Code | None:
        """The value of a CWE row as a code; ``None`` when empty."""
        if not self.value:
            return None
        parts = [unescape_text(part) for part in self.value.split("^")] + ["", "", ""]
        return Code(parts[0], parts[2], parts[1]) if parts[0] and parts[1] and parts[2] else None


@dataclass(frozen=True)
class OruR01:
    """The parts of an ORU^R01 a receiver acts on, read back from ER7."""

    control_id: str
    sending_application: str
    receiving_application: str
    processing_id: str
    version: str
    patient_id: str
    patient_id_authority: str
    placer_order_number: str
    filler_order_number: str
    universal_service: Code | None
    result_status: str
    priority: str
    """TQ1-9 identifier: ``S``, ``A`` or ``R``."""
    observations: tuple[ObservationRow, ...]

    def rows(self, identifier: Code, sub_id: str | None = None) -> list[ObservationRow]:
        """The OBX rows with this observation identifier (and sub-ID, when given)."""
        return [
            row
            for row in self.observations
            if (row.identifier.value, row.identifier.scheme_designator)
            == (identifier.value, identifier.scheme_designator)
            and (sub_id is None or row.sub_id == sub_id)
        ]


def build_oru_r01(
    notification: Notification, config: Hl7NotifyConfig, now: datetime.datetime | None = None
) -> str:
    """The ORU^R01 for ``notification`` in ER7 (segments separated by CR), validated against
    the v2.5.1 structure. Raises :class:`Hl7Error` when the study has no PatientID (PID-3 is
    required) or the message does not validate."""
    study = notification.study
    if not study.patient_id:
        raise Hl7Error("the study has no PatientID, which PID-3 requires")
    moment = now or datetime.datetime.now(datetime.UTC)
    try:
        message = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
        _fill_msh(message.msh, notification, config, moment)
        result = message.add_group("ORU_R01_PATIENT_RESULT")
        _fill_pid(result.add_group("ORU_R01_PATIENT").pid, notification, config)
        order = result.add_group("ORU_R01_ORDER_OBSERVATION")
        _fill_orders(order, notification)
        for index, row in enumerate(observation_rows(notification), start=1):
            _fill_obx(order.add_group("ORU_R01_OBSERVATION").obx, index, row, notification, config)
        message.validate()
        return str(message.to_er7())
    except HL7apyException as exc:
        raise Hl7Error(f"ORU^R01 does not validate against HL7 {HL7_VERSION}: {_why(exc)}") from exc


def _fill_msh(
    msh: Any, notification: Notification, config: Hl7NotifyConfig, moment: datetime.datetime
) -> None:
    msh.msh_3 = escape_text(config.sending_application)
    if config.sending_facility:
        msh.msh_4 = escape_text(config.sending_facility)
    msh.msh_5 = escape_text(config.receiving_application)
    if config.receiving_facility:
        msh.msh_6 = escape_text(config.receiving_facility)
    msh.msh_7 = hl7_datetime(moment)
    msh.msh_9 = ORU_R01
    msh.msh_10 = message_control_id(notification.notification_id)
    msh.msh_11 = config.processing_id
    msh.msh_12 = HL7_VERSION
    msh.msh_18 = CHARACTER_SET


def _fill_pid(pid: Any, notification: Notification, config: Hl7NotifyConfig) -> None:
    study = notification.study
    authority = config.patient_id_authority or study.issuer_of_patient_id
    if len(authority) > HD_NAMESPACE_LENGTH:
        logger.warning(
            "IssuerOfPatientID of study %s is longer than %d characters, too long for PID-3's "
            "assigning authority: left out (set patient_id_authority)",
            study.study_instance_uid,
            HD_NAMESPACE_LENGTH,
        )
        authority = ""
    pid.pid_1 = "1"
    pid.pid_3 = escape_text(study.patient_id) + (
        f"^^^{escape_text(authority)}" if authority else ""
    )
    pid.pid_5 = person_name(study.patient_name) or '""'
    if study.patient_birth_date:
        pid.pid_7 = study.patient_birth_date
    if study.patient_sex:
        pid.pid_8 = study.patient_sex


def person_name(dicom_name: str) -> str:
    """DICOM PN (``Family^Given^Middle^Prefix^Suffix``, alphabetic group) as an HL7 XPN
    (``Family^Given^Middle^Suffix^Prefix``)."""
    parts = (dicom_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (escape_text(part.strip()) for part in parts)
    return "^".join([family, given, middle, suffix, prefix]).rstrip("^")


def _fill_orders(order: Any, notification: Notification) -> None:
    study = notification.study
    algorithm = notification.algorithm
    accession = escape_text(study.accession_number)
    priority = TQ1_PRIORITIES[notification.decision.priority]
    order.orc.orc_1 = "RE"
    if accession:
        order.orc.orc_2 = accession
        order.orc.orc_3 = accession
    obr = order.obr
    obr.obr_1 = "1"
    if accession:
        obr.obr_2 = accession
        obr.obr_3 = accession
    obr.obr_4 = coded(Code(algorithm.name, codes.LOCAL_SYSTEM, algorithm.display_name))
    obr.obr_5 = priority.value
    if study.study_date:
        obr.obr_7 = study.study_date + study.study_time.split(".")[0]
    obr.obr_22 = hl7_datetime(notification.created_at)
    obr.obr_24 = "RAD"
    obr.obr_25 = "P"
    timing = order.add_group("ORU_R01_TIMING_QTY")
    timing.tq1.tq1_1 = "1"
    timing.tq1.tq1_9 = coded(priority)


def _fill_obx(
    obx: Any, index: int, row: ObservationRow, notification: Notification, config: Hl7NotifyConfig
) -> None:
    algorithm = notification.algorithm
    obx.obx_1 = str(index)
    obx.obx_2 = row.value_type
    obx.obx_3 = coded(row.identifier)
    if row.sub_id:
        obx.obx_4 = row.sub_id
    if row.value_type == "TX":
        first, *more = text_lines(row.value)
        obx.obx_5 = escape_text(first)
        for line in more:
            obx.add_field("OBX_5").value = escape_text(line)
    elif row.value:
        obx.obx_5 = row.value if row.value_type == "CWE" else escape_text(row.value)
    if row.units is not None:
        obx.obx_6 = coded(row.units)
    obx.obx_11 = row.status
    obx.obx_14 = hl7_datetime(notification.created_at)
    obx.obx_18 = "^".join(
        [
            escape_text(algorithm.name),
            escape_text(config.sending_application),
            algorithm.device_uid,
            "ISO",
        ]
    )
    obx.obx_19 = hl7_datetime(notification.created_at)


def observation_rows(notification: Notification) -> list[ObservationRow]:
    """The OBX rows of a notification, in message order."""
    algorithm = notification.algorithm
    decision = notification.decision
    outcome = notification.outcome
    rows = [_verdict_row(notification)]
    if isinstance(outcome, AlgorithmResult):
        rows.extend(_result_rows(outcome))
    rows.append(
        ObservationRow("CWE", codes.WORKLIST_PRIORITY, coded(TQ1_PRIORITIES[decision.priority]))
    )
    rows.append(
        ObservationRow("CWE", codes.PRIORITY_FLAG, coded(YES if decision.flag_raised else NO))
    )
    rows.append(ObservationRow("ST", codes.PRIORITY_REASON, fit(decision.reason)))
    rows.append(ObservationRow("ST", codes.ALGORITHM_NAME, fit(algorithm.display_name)))
    rows.append(ObservationRow("ST", codes.ALGORITHM_VERSION, fit(algorithm.version)))
    rows.append(ObservationRow("TX", codes.AI_STATEMENT, ai_statement(notification)))
    if decision.status in (DecisionStatus.NOT_ASSESSED, DecisionStatus.FAILED):
        statement = fit(outcome_statement(notification), TX_LENGTH)
        rows.append(ObservationRow("TX", codes.OUTCOME_STATEMENT, statement))
    rows.append(
        ObservationRow("ST", codes.STUDY_INSTANCE_UID, notification.study.study_instance_uid)
    )
    return rows


def ai_statement(notification: Notification) -> str:
    """The statement every channel carries with an AI result."""
    text = "AI-generated result, not verified by a physician."
    if not notification.algorithm.clinical_use:
        text += " Not for clinical use."
    return text


def outcome_statement(notification: Notification) -> str:
    """Why there is no result: ``Not assessed: ...`` or ``Algorithm failed: ...``."""
    outcome = notification.outcome
    if isinstance(outcome, AlgorithmFailure):
        return f"Algorithm failed: {outcome.reason}"
    return f"Not assessed: {outcome.reason}" if outcome.verdict is Verdict.NOT_ASSESSED else ""


def _verdict_row(notification: Notification) -> ObservationRow:
    """Study level: the target with Present / Absent / Undetermined; no value and status X
    (results cannot be obtained) when the algorithm failed."""
    target = notification.algorithm.target
    outcome = notification.outcome
    if isinstance(outcome, AlgorithmFailure):
        return ObservationRow("CWE", target, "", status="X")
    return ObservationRow("CWE", target, coded(codes.VERDICT_VALUES[outcome.verdict]))


def _result_rows(result: AlgorithmResult) -> list[ObservationRow]:
    rows: list[ObservationRow] = []
    if result.probability is not None:
        rows.append(_certainty_row(result.probability, ""))
    rows.extend(
        ObservationRow("NM", m.name, decimal(m.value), units=m.unit) for m in result.measurements
    )
    for number, finding in enumerate(result.findings, start=1):
        sub_id = str(number)
        rows.append(ObservationRow("CWE", codes.FINDING, coded(finding.finding_type), sub_id))
        if finding.finding_site is not None:
            rows.append(
                ObservationRow("CWE", codes.FINDING_SITE, coded(finding.finding_site), sub_id)
            )
        rows.extend(
            ObservationRow("CWE", q.name, coded(q.value), sub_id) for q in finding.qualifiers
        )
        rows.append(_certainty_row(finding.probability, sub_id))
        rows.extend(
            ObservationRow("NM", m.name, decimal(m.value), sub_id, m.unit)
            for m in finding.measurements
        )
        if finding.tracking_id:
            rows.append(
                ObservationRow("ST", codes.TRACKING_IDENTIFIER, fit(finding.tracking_id), sub_id)
            )
    return rows


def _certainty_row(probability: float, sub_id: str) -> ObservationRow:
    percent = probability * codes.PERCENT_PER_PROBABILITY
    return ObservationRow("NM", codes.CERTAINTY_OF_FINDING, decimal(percent), sub_id, codes.PERCENT)


# --------------------------------------------------------------------------------------------
# Reading


def parse_oru_r01(er7: str) -> OruR01:
    """Read an ORU^R01 (v2.5.1 structure, STRICT validation) back into its parts."""
    try:
        message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        message.validate()
        result = message.oru_r01_patient_result
        order = result.oru_r01_order_observation
        pid = result.oru_r01_patient.pid
        cx = _components(pid.pid_3)
        rows = tuple(_read_obx(group.obx) for group in order.oru_r01_observation)
        timing = order.oru_r01_timing_qty
        return OruR01(
            control_id=_text(message.msh.msh_10),
            sending_application=_text(message.msh.msh_3),
            receiving_application=_text(message.msh.msh_5),
            processing_id=_text(message.msh.msh_11),
            version=_text(message.msh.msh_12),
            patient_id=cx[0],
            patient_id_authority=cx[3],
            placer_order_number=_text(order.obr.obr_2),
            filler_order_number=_text(order.obr.obr_3),
            universal_service=_code(order.obr.obr_4),
            result_status=_text(order.obr.obr_25),
            priority=_components(timing.tq1.tq1_9)[0] if timing else "",
            observations=rows,
        )
    except HL7apyException as exc:
        raise Hl7Error(f"not a valid HL7 {HL7_VERSION} ORU^R01: {_why(exc)}") from exc


def _why(exc: HL7apyException) -> str:
    """What hl7apy objected to, without the offending value (it may be patient data)."""
    if isinstance(exc, MaxLengthReached):
        return f"a value is longer than its maximum of {exc.limit} characters"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _read_obx(obx: Any) -> ObservationRow:
    value_type = _text(obx.obx_2)
    repetitions = [str(value.to_er7()) for value in obx.obx_5] if obx.obx_5 else [""]
    raw = repetitions[0]
    if value_type == "TX":
        raw = "".join(unescape_text(line) for line in repetitions)
    identifier = _code(obx.obx_3)
    if identifier is None:
        raise Hl7Error(f"OBX-3 {obx.obx_3.to_er7()!r} is not a coded identifier")
    return ObservationRow(
        value_type=value_type,
        identifier=identifier,
        value=raw if value_type in ("CWE", "TX") else unescape_text(raw),
        sub_id=_text(obx.obx_4),
        units=_code(obx.obx_6),
        status=_text(obx.obx_11),
    )


def _components(element: Any) -> list[str]:
    """Unescaped components of a field (first repetition), padded to 10."""
    text = str(element.to_er7()) if element else ""
    return [unescape_text(part.split("&")[0]) for part in text.split("^")] + [""] * 10


def _text(element: Any) -> str:
    return _components(element)[0]


def _code(element: Any) -> Code | None:
    value, meaning, system = _components(element)[:3]
    return Code(value, system, meaning) if value and meaning and system else None


# --------------------------------------------------------------------------------------------
# Acknowledgements


@dataclass(frozen=True)
class Acknowledgement:
    """An ACK's MSA (and ERR) content."""

    code: str
    """MSA-1: AA/AE/AR (original mode) or CA/CE/CR (enhanced mode)."""
    control_id: str
    """MSA-2: the MSH-10 of the message acknowledged."""
    text: str = ""
    """MSA-3 and the ERR segments' texts, joined."""

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED


def parse_ack(er7: str) -> Acknowledgement:
    """Read an ACK of any v2.x version (tolerant: receivers vary); raise :class:`Hl7Error`
    without an MSA segment."""
    try:
        message = parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT)
        msa = message.msa
        texts = [_text(msa.msa_3)]
        for err in message.children.get("ERR"):
            texts.extend([_components(err.err_3)[1], _text(err.err_8)])
    except HL7apyException as exc:
        raise Hl7Error(f"the answer is not an HL7 acknowledgement: {_why(exc)}") from exc
    except (AttributeError, IndexError) as exc:
        raise Hl7Error("the answer has no MSA segment") from exc
    code = _text(msa.msa_1)
    if not code:
        raise Hl7Error("the answer's MSA-1 (acknowledgement code) is empty")
    return Acknowledgement(code, _text(msa.msa_2), "; ".join(dict.fromkeys(t for t in texts if t)))


def build_ack(
    message_er7: str,
    code: str,
    text: str = "",
    *,
    sending_application: str = "RECEIVER",
    now: datetime.datetime | None = None,
) -> str:
    """An ACK (v2.5.1) to ``message_er7``: MSA-1 ``code``, MSA-2 its MSH-10, and for a code
    other than AA/CA an ERR segment carrying ``text``. For receivers (and tests)."""
    received = parse_message(message_er7, validation_level=VALIDATION_LEVEL.TOLERANT)
    moment = now or datetime.datetime.now(datetime.UTC)
    ack = Message("ACK", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    ack.msh.msh_3 = escape_text(sending_application)
    ack.msh.msh_5 = received.msh.msh_3.to_er7()
    ack.msh.msh_7 = hl7_datetime(moment)
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = message_control_id(f"ack:{_text(received.msh.msh_10)}:{moment.isoformat()}")
    ack.msh.msh_11 = received.msh.msh_11.to_er7() or "P"
    ack.msh.msh_12 = HL7_VERSION
    ack.msa.msa_1 = code
    ack.msa.msa_2 = received.msh.msh_10.to_er7()
    if text:
        ack.msa.msa_3 = escape_text(text)
    if code not in ACCEPTED:
        err = ack.add_segment("ERR")
        err.err_3 = "207^Application internal error^HL70357"
        err.err_4 = "E"
        if text:
            err.err_8 = escape_text(text)
    ack.validate()
    return str(ack.to_er7())
