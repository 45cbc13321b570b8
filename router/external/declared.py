"""An external algorithm as the YAML declares it, in the terms the rest of radrouter uses."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from algorithms.contract import AlgorithmInfo, Code
from algorithms.registry import Registry
from config.schema import ExternalAlgorithm, RouterConfig
from router.deidentify import DeidOptions

DEFAULT_TARGET = Code("404684003", "SCT", "Clinical finding")
"""What an external algorithm looks for when its declaration names no ``target``."""
EXTERNAL_DEVICE = "external"
"""The device recorded for a job an external algorithm ran (``jobs.device``)."""
_DEVICE_UID_NAMESPACE = uuid.UUID("6f1c1f0e-4a55-4c8e-9d0b-7a6d2f2b9e11")


def external_info(name: str, declared: ExternalAlgorithm) -> AlgorithmInfo:
    """The identity every result of the vendor's algorithm carries (TID 4019, Contributing
    Equipment): the vendor as manufacturer, its contracted version, a device UID fixed for that
    name, vendor and version."""
    target = declared.target
    identity = f"{name}\x00{declared.vendor}\x00{declared.version}"
    return AlgorithmInfo(
        name=name,
        display_name=declared.display_name or f"{declared.vendor} {name}",
        version=declared.version,
        manufacturer=declared.vendor,
        device_uid=f"2.25.{uuid.uuid5(_DEVICE_UID_NAMESPACE, identity).int}",
        modalities=frozenset(declared.modalities),
        intended_use=declared.intended_use
        or f"{declared.vendor}'s algorithm, run outside the hospital on de-identified images",
        max_runtime_s=declared.answer_within_min * 60,
        target=DEFAULT_TARGET
        if target is None
        else Code(target.value, target.scheme, target.meaning),
        clinical_use=declared.clinical_use,
    )


def deid_options(declared: ExternalAlgorithm) -> DeidOptions:
    settings = declared.deidentify
    return DeidOptions(
        retain_longitudinal_modified_dates=settings.retain_dates,
        retain_device_identity=settings.retain_device_identity,
        retain_patient_characteristics=settings.retain_patient_characteristics,
        clean_descriptors=settings.clean_descriptors,
        retain_safe_private=bool(settings.safe_private),
        safe_private=frozenset((p.creator, p.element) for p in settings.safe_private),
        allow_burned_in_annotation=settings.allow_burned_in_annotation,
        uid_root=settings.uid_root or "2.25.",
    )


class AlgorithmInfos:
    """Who an algorithm is, by name: an installed one (the registry) or one the running
    configuration declares external."""

    def __init__(self, registry: Registry, config: Callable[[], RouterConfig]) -> None:
        self.registry = registry
        self._config = config

    def external(self, name: str) -> ExternalAlgorithm | None:
        return self._config().external_algorithms.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.registry or self.external(name) is not None)

    def info(self, name: str) -> AlgorithmInfo:
        declared = self.external(name)
        if declared is not None:
            return external_info(name, declared)
        return self.registry.info(name)
