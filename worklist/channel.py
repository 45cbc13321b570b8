"""The channel interface: deliver a notification, get a receipt or a DeliveryError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from config.schema import RetryPolicy
from worklist.notification import Notification


@dataclass(frozen=True)
class DeliveryReceipt:
    """Proof that the receiver accepted a notification."""

    channel: str
    message_id: str
    """What the receiver knows the message by: MSH-10 for HL7, the Bundle id for FHIR."""
    acknowledgement: str
    """The receiver's answer: ``AA``/``CA`` for HL7, ``HTTP 200`` for FHIR."""
    locations: tuple[str, ...] = ()
    """Where the receiver stored what was sent (FHIR resource locations)."""


class DeliveryError(Exception):
    """A notification was not delivered. ``reason`` is for a person and holds no patient
    data we put there (a receiver's own error text is passed on, shortened); ``retryable`` is
    false when sending the same message again cannot succeed (rejected as malformed,
    unauthorised, missing patient ID, ...)."""

    def __init__(self, channel: str, reason: str, *, retryable: bool) -> None:
        self.channel = channel
        self.reason = reason
        self.retryable = retryable
        super().__init__(f"{channel}: {reason}")


class Channel(Protocol):
    """Delivers worklist notifications to one receiver. ``deliver`` blocks until the receiver
    acknowledged (or the channel's timeout passed); retrying is the caller's job, with
    ``retry``."""

    @property
    def name(self) -> str: ...

    @property
    def retry(self) -> RetryPolicy: ...

    def deliver(self, notification: Notification) -> DeliveryReceipt:
        """Send ``notification``; raise :class:`DeliveryError` if it was not accepted."""
        ...


def shorten(text: str, limit: int = 200) -> str:
    """A receiver's text on one line, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
