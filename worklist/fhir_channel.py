"""The FHIR R4 channel: POST a transaction Bundle to the base URL, delivered on HTTP 2xx."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import requests

from config.schema import FhirNotifyConfig, NotifyRetryPolicy
from worklist import fhir
from worklist.channel import DeliveryError, DeliveryReceipt, shorten
from worklist.notification import Notification

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
"""HTTP statuses after which the same request may succeed later."""


class FhirChannel:
    """Sends each notification as one transaction Bundle (``worklist.fhir``) to
    ``base_url``. 2xx is delivered; timeouts, connection errors, 408/425/429 and 5xx are
    retryable; other answers (400 invalid, 401/403 unauthorised, 404, redirects) are not."""

    def __init__(self, config: FhirNotifyConfig, name: str = "fhir") -> None:
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
            bundle = fhir.build_transaction(notification, config)
        except fhir.FhirError as exc:
            raise DeliveryError(self.name, str(exc), retryable=False) from exc
        headers = {"Content-Type": fhir.CONTENT_TYPE, "Accept": fhir.CONTENT_TYPE}
        headers.update(self._authorization())
        started = time.monotonic()
        try:
            response = requests.post(
                config.base_url,
                data=json.dumps(bundle).encode("utf-8"),
                headers=headers,
                timeout=config.timeout_s,
                allow_redirects=False,
                verify=str(config.ca_file) if config.ca_file else True,
            )
        except requests.Timeout as exc:
            raise DeliveryError(
                self.name,
                f"no answer from {config.base_url} within {config.timeout_s:g} s",
                retryable=True,
            ) from exc
        except requests.RequestException as exc:
            raise DeliveryError(
                self.name, f"cannot reach {config.base_url}: {shorten(str(exc))}", retryable=True
            ) from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(
                self.name,
                f"{config.base_url} answered HTTP {response.status_code}: {_explain(response)}",
                retryable=response.status_code in RETRYABLE_STATUS,
            )
        locations = self._locations(response)
        message_id = str(bundle["identifier"]["value"])
        logger.info(
            "FHIR transaction %s for notification %s (study %s) answered HTTP %d in %.3f s",
            message_id,
            notification.notification_id,
            notification.study.study_instance_uid,
            response.status_code,
            time.monotonic() - started,
        )
        return DeliveryReceipt(self.name, message_id, f"HTTP {response.status_code}", locations)

    def _authorization(self) -> dict[str, str]:
        variable = self._config.bearer_token_env
        if variable is None:
            return {}
        token = os.environ.get(variable, "").strip()
        if not token:
            raise DeliveryError(
                self.name,
                f"environment variable {variable} (bearer_token_env) is not set or empty",
                retryable=False,
            )
        return {"Authorization": f"Bearer {token}"}

    def _locations(self, response: requests.Response) -> tuple[str, ...]:
        """Where the server put the resources; empty (and a warning) when its answer is not
        the transaction-response Bundle it should be: the POST itself succeeded."""
        try:
            body: Any = response.json()
            return fhir.response_locations(body)
        except (ValueError, fhir.FhirError) as exc:
            logger.warning("FHIR server answered 2xx without a valid transaction-response: %s", exc)
            return ()


def _explain(response: requests.Response) -> str:
    """The diagnostics of an OperationOutcome, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return shorten(response.text) or response.reason or "no body"
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [
            str(
                issue.get("diagnostics")
                or issue.get("details", {}).get("text")
                or issue.get("code")
            )
            for issue in body.get("issue", [])
            if isinstance(issue, dict)
        ]
        if texts:
            return shorten("; ".join(texts))
    return shorten(json.dumps(body))
