"""STOW-RS (PS3.18 10.5) to a ``type: dicomweb`` destination, and its probe.

A dispatch is one request: ``POST {url}/studies`` with every object of the dispatch as an
``application/dicom`` part of one ``multipart/related`` body, streamed from the files with a
Content-Length. A dispatch is what is retried and dead-lettered as one, and a result's
objects are few and small (SEG before the SR that references it), so one request per
dispatch keeps the answer (which object was refused, and why) about exactly what is retried;
STOW-RS storing an instance again is idempotent on the PACS, as a C-STORE resend is.

The answer: 200 (all stored) or 202 (some refused or warned), with the Store Instances
Response listing ``FailedSOPSequence``; 409 when every instance was refused. Any failed or
unacknowledged instance fails the dispatch with its count and failure reasons, and the
dispatch is retried with ``dispatch.retry`` and dead-lettered after it, as a C-STORE is.
"""

from __future__ import annotations

import json
import logging
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from typing import Any

from pydicom import dcmread

from config.schema import DicomWebDestination
from router.deliver.dicom_send import FileToSend, SendError
from router.dicomweb import DICOM_JSON, DicomWebClient, DicomWebError, MultipartBody

LOGGER = logging.getLogger(__name__)

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
NO_STUDY_UID = "2.25.0"
"""A UID no study has: the probe's search matches nothing, so no patient data comes back."""


def stow_files(destination: DicomWebDestination, files: Sequence[FileToSend]) -> int:
    """STOW-RS ``files`` in one request; returns how many were stored. Raises SendError
    (``unreachable`` when nobody answered) when the request failed or any instance was
    refused."""
    if not files:
        return 0
    sop_uids = [_sop_instance_uid(f) for f in files]
    body = MultipartBody(tuple(f.path for f in files), f"radrouter-{uuid.uuid4().hex}")
    try:
        with DicomWebClient(destination) as client:
            response = client.request(
                "POST",
                ["studies"],
                headers={"Content-Type": body.content_type, "Accept": DICOM_JSON},
                data=body,
                ok=frozenset({200, 202, 409}),
            )
            status = response.status_code
            answer = _store_response(response.headers.get("Content-Type", ""), response.content)
    except DicomWebError as exc:
        raise SendError(f"STOW-RS: {exc}", unreachable=exc.unreachable) from None
    failed = dict(answer.failed)
    if answer.referenced is not None:
        for uid in sop_uids:
            if uid not in answer.referenced and uid not in failed:
                failed[uid] = None  # neither stored nor refused by name: not acknowledged
    if status == 409 and not failed:
        failed = dict.fromkeys(sop_uids)
    if failed:
        reasons = sorted({"none given" if r is None else f"0x{r:04X}" for r in failed.values()})
        raise SendError(
            f"STOW-RS to {destination.url}: {len(failed)} of {len(files)} refused "
            f"(HTTP {status}; failure reasons: {', '.join(reasons)})"
        )
    if answer.warnings:
        LOGGER.info(
            "STOW-RS to %s: %d of %d stored with a warning (reasons %s)",
            destination.url,
            answer.warnings,
            len(files),
            ", ".join(f"0x{r:04X}" for r in sorted(answer.warning_reasons)),
        )
    return len(files)


def dicomweb_answers(destination: DicomWebDestination) -> bool:
    """Whether the server answers a QIDO-RS search (for a study UID no study has, so that
    nothing about a patient comes back): any HTTP answer but a gateway's "down" counts."""
    try:
        with DicomWebClient(destination) as client:
            client.request(
                "GET",
                ["studies"],
                params={"StudyInstanceUID": NO_STUDY_UID},
                headers={"Accept": DICOM_JSON},
                ok=frozenset(range(200, 500)),
            ).close()
    except DicomWebError as exc:
        LOGGER.debug("probe of %s: %s", destination.url, exc)
        return False
    return True


def _sop_instance_uid(item: FileToSend) -> str:
    ds = dcmread(item.path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(ds.get("SOPInstanceUID", "") or ds.file_meta.get("MediaStorageSOPInstanceUID", ""))


class _StoreAnswer:
    def __init__(self) -> None:
        self.failed: dict[str, int | None] = {}
        self.referenced: set[str] | None = None
        self.warnings = 0
        self.warning_reasons: set[int] = set()


def _store_response(content_type: str, content: bytes) -> _StoreAnswer:
    """The Store Instances Response (PS3.18 10.5.3) as DICOM JSON or XML; an empty or
    unreadable body says nothing about single instances."""
    answer = _StoreAnswer()
    kind = content_type.split(";", 1)[0].strip().lower()
    if not content.strip():
        return answer
    if kind.endswith("xml"):
        return _xml_answer(content, answer)
    try:
        data: Any = json.loads(content)
    except ValueError:
        LOGGER.warning("STOW-RS answer is neither DICOM JSON nor XML (%s)", kind or "no type")
        return answer
    if isinstance(data, list):  # a server that wraps the data set in an array
        data = data[0] if data and isinstance(data[0], dict) else {}
    if not isinstance(data, dict):
        return answer
    for item in _items(data, FAILED_SOP_SEQUENCE):
        answer.failed[_first(item, REFERENCED_SOP_INSTANCE_UID) or ""] = _number(
            _first(item, FAILURE_REASON)
        )
    if REFERENCED_SOP_SEQUENCE in data:
        answer.referenced = set()
        for item in _items(data, REFERENCED_SOP_SEQUENCE):
            answer.referenced.add(_first(item, REFERENCED_SOP_INSTANCE_UID) or "")
            warning = _number(_first(item, WARNING_REASON))
            if warning is not None:
                answer.warnings += 1
                answer.warning_reasons.add(warning)
    return answer


def _items(data: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    value = data.get(tag, {})
    items = value.get("Value", []) if isinstance(value, dict) else []
    return [item for item in items if isinstance(item, dict)]


def _first(item: dict[str, Any], tag: str) -> str | None:
    value = item.get(tag, {})
    values = value.get("Value", []) if isinstance(value, dict) else []
    return str(values[0]) if values else None


def _number(value: str | None) -> int | None:
    try:
        return None if value is None else int(float(value))
    except ValueError:
        return None


def _xml_answer(content: bytes, answer: _StoreAnswer) -> _StoreAnswer:
    """The same from the Native DICOM Model (PS3.19 A.1)."""
    try:
        root = ElementTree.fromstring(content)  # expat refuses entity expansion bombs
    except ElementTree.ParseError:
        LOGGER.warning("STOW-RS answer is not well-formed XML")
        return answer

    def attribute(element: ElementTree.Element, tag: str) -> str | None:
        found = element.find(f"./DicomAttribute[@tag='{tag}']/Value")
        return found.text if found is not None else None

    for sequence_tag, failed in ((FAILED_SOP_SEQUENCE, True), (REFERENCED_SOP_SEQUENCE, False)):
        sequence = root.find(f"./DicomAttribute[@tag='{sequence_tag}']")
        if sequence is None:
            continue
        if not failed:
            answer.referenced = set()
        for item in sequence.findall("./Item"):
            uid = attribute(item, REFERENCED_SOP_INSTANCE_UID) or ""
            if failed:
                answer.failed[uid] = _number(attribute(item, FAILURE_REASON))
            elif answer.referenced is not None:
                answer.referenced.add(uid)
    return answer
