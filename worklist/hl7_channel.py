"""The HL7 v2 channel: an ORU^R01 over MLLP, delivered when the receiver answers AA or CA."""

from __future__ import annotations

import logging
import time

from config.schema import Hl7NotifyConfig, NotifyRetryPolicy
from worklist import hl7, mllp
from worklist.channel import DeliveryError, DeliveryReceipt, shorten
from worklist.notification import Notification

logger = logging.getLogger(__name__)


class Hl7Channel:
    """Sends each notification as one ORU^R01 (``worklist.hl7``) to ``host:port`` over MLLP
    and checks the ACK: MSA-1 must be AA or CA and MSA-2 the message's control ID. AE, CE and
    anything unreadable are retryable; AR and CR (rejected as such) are not."""

    def __init__(self, config: Hl7NotifyConfig, name: str = "hl7") -> None:
        self._config = config
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def retry(self) -> NotifyRetryPolicy:
        return self._config.retry

    def deliver(self, notification: Notification) -> DeliveryReceipt:
        config = self._config
        try:
            message = hl7.build_oru_r01(notification, config)
        except hl7.Hl7Error as exc:
            raise DeliveryError(self.name, str(exc), retryable=False) from exc
        control_id = hl7.message_control_id(notification.notification_id)
        started = time.monotonic()
        try:
            answer = mllp.exchange(
                config.host, config.port, message.encode(hl7.ENCODING), config.timeout_s
            )
        except mllp.MllpError as exc:
            raise DeliveryError(self.name, str(exc), retryable=True) from exc
        try:
            ack = hl7.parse_ack(answer.decode(hl7.ENCODING, errors="replace"))
        except hl7.Hl7Error as exc:
            raise DeliveryError(self.name, str(exc), retryable=True) from exc
        if ack.control_id != control_id:
            raise DeliveryError(
                self.name,
                f"the ACK is for message {ack.control_id!r}, not {control_id!r}",
                retryable=True,
            )
        if not ack.accepted:
            said = f": {shorten(ack.text)}" if ack.text else ""
            raise DeliveryError(
                self.name,
                f"{config.host}:{config.port} answered {ack.code}{said}",
                retryable=ack.code not in hl7.REJECTED,
            )
        logger.info(
            "HL7 ORU^R01 %s for notification %s (study %s) acknowledged %s in %.3f s",
            control_id,
            notification.notification_id,
            notification.study.study_instance_uid,
            ack.code,
            time.monotonic() - started,
        )
        return DeliveryReceipt(self.name, control_id, ack.code)
