"""The channels ``worklist.notify`` configures, by name."""

from __future__ import annotations

from config.schema import NotifyConfig
from worklist.channel import Channel
from worklist.fhir_channel import FhirChannel
from worklist.hl7_channel import Hl7Channel


def channels_from_config(notify: NotifyConfig) -> dict[str, Channel]:
    """One channel per configured section: ``hl7`` and/or ``fhir`` (empty when neither)."""
    channels: dict[str, Channel] = {}
    if notify.hl7 is not None:
        channels["hl7"] = Hl7Channel(notify.hl7, "hl7")
    if notify.fhir is not None:
        channels["fhir"] = FhirChannel(notify.fhir, "fhir")
    return channels
