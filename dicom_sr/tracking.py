"""TID 4108 tracking of findings: one identifier and UID per finding, shared by SR and SEG."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from algorithms.contract import AlgorithmResult
from dicom_sr.uids import derive_uid, is_valid_uid


@dataclass(frozen=True)
class Tracking:
    """Tracking Identifier and Tracking Unique Identifier of one finding."""

    identifier: str
    uid: str


def tracking_uid(study_instance_uid: str, algorithm_name: str, tracking_identifier: str) -> str:
    """TID 4108 Tracking Unique Identifier of a finding: stable across result versions."""
    return derive_uid(study_instance_uid, algorithm_name, "tracking", tracking_identifier)


def tracking_identifiers(result: AlgorithmResult) -> list[str]:
    """Each finding's tracking_id, or "<finding type> <n>" where the plugin gave none."""
    return [
        finding.tracking_id or f"{finding.finding_type.meaning} {index + 1}"
        for index, finding in enumerate(result.findings)
    ]


def finding_tracking(
    result: AlgorithmResult,
    study_instance_uid: str,
    algorithm_name: str,
    carried_over: Mapping[str, str] | None = None,
) -> list[Tracking]:
    """Tracking of every finding of ``result``, in order.

    ``carried_over`` maps tracking identifiers of findings seen in a prior exam to the tracking
    UIDs written then (``PriorFinding.tracking_uid``): those UIDs are reused so a viewer links
    the lesion across exams. Other findings get a UID derived from study, algorithm and
    identifier. Identifiers in ``carried_over`` that no finding has (a lesion gone) are ignored.
    """
    carried_over = carried_over or {}
    for identifier, uid in carried_over.items():
        if not is_valid_uid(uid):
            raise ValueError(f"tracking_uids[{identifier!r}] {uid!r} is not a DICOM UID")
    identifiers = tracking_identifiers(result)
    duplicates = sorted({i for i in identifiers if identifiers.count(i) > 1})
    if duplicates:
        raise ValueError(f"result.findings tracking_id must be unique, repeated: {duplicates}")
    tracking = [
        Tracking(
            identifier=identifier,
            uid=carried_over.get(identifier)
            or tracking_uid(study_instance_uid, algorithm_name, identifier),
        )
        for identifier in identifiers
    ]
    uids = [t.uid for t in tracking]
    shared = sorted({t.identifier for t in tracking if uids.count(t.uid) > 1})
    if shared:
        raise ValueError(f"tracking_uids gives one tracking UID to several findings: {shared}")
    return tracking
