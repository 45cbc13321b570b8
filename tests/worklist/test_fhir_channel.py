"""The FHIR channel against a real HTTP server on loopback that validates what it receives."""

from __future__ import annotations

import time
from typing import Any

import pytest

from config.schema import FhirNotifyConfig
from testing.listeners import HttpAnswer, RecordedRequest, running_http_listener
from testing.orthanc import free_port
from tests.worklist import support
from worklist import fhir
from worklist.channel import DeliveryError
from worklist.fhir_channel import FhirChannel


def fhir_server(request: RecordedRequest) -> tuple[int, dict[str, Any] | None]:
    """A FHIR server's transaction endpoint: validate the Bundle as R4, answer 200 with a
    transaction-response, or 400 with an OperationOutcome."""
    try:
        bundle = fhir.check_bundle(request.json())
    except (ValueError, fhir.FhirError) as exc:
        return 400, outcome(str(exc))
    if bundle.type != "transaction":
        return 400, outcome("only transactions here")
    entries = [
        {
            "response": {
                "status": "201 Created",
                "location": f"{entry.resource.resource_type}/{index + 1}/_history/1",
            }
        }
        for index, entry in enumerate(bundle.entry)
    ]
    return 200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }


def channel(base_url: str, **settings: Any) -> FhirChannel:
    return FhirChannel(FhirNotifyConfig.model_validate({"base_url": base_url, **settings}))


def test_transaction_is_posted_validated_and_its_locations_returned() -> None:
    notification = support.notification(support.positive(support.pe_finding(0.93)))

    with running_http_listener(fhir_server) as server:
        receipt = channel(server.base_url).deliver(notification)

    [request] = server.requests
    assert request.path == "/fhir"
    assert request.headers["content-type"] == "application/fhir+json"
    assert request.headers["accept"] == "application/fhir+json"
    assert "authorization" not in request.headers
    kinds = [e["resource"]["resourceType"] for e in request.json()["entry"]]
    assert kinds == ["Observation", "Observation", "Task"]
    assert request.json()["entry"][2]["resource"]["priority"] == "stat"
    assert receipt.acknowledgement == "HTTP 200"
    assert receipt.locations == (
        "Observation/1/_history/1",
        "Observation/2/_history/1",
        "Task/3/_history/1",
    )
    assert receipt.message_id == request.json()["identifier"]["value"]


def test_bearer_token_is_read_from_the_named_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RADROUTER_TEST_FHIR_TOKEN", "s3cret")

    with running_http_listener(fhir_server) as server:
        channel(server.base_url, bearer_token_env="RADROUTER_TEST_FHIR_TOKEN").deliver(
            support.notification(support.NEGATIVE)
        )

    assert server.requests[0].headers["authorization"] == "Bearer s3cret"


def test_unset_token_variable_fails_without_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RADROUTER_TEST_FHIR_TOKEN", raising=False)

    with running_http_listener(fhir_server) as server, pytest.raises(DeliveryError) as caught:
        channel(server.base_url, bearer_token_env="RADROUTER_TEST_FHIR_TOKEN").deliver(
            support.notification(support.NEGATIVE)
        )

    assert not caught.value.retryable
    assert "RADROUTER_TEST_FHIR_TOKEN" in caught.value.reason
    assert server.requests == []


def test_server_error_is_retryable_and_quotes_the_operation_outcome() -> None:
    def broken(request: RecordedRequest) -> tuple[int, dict[str, Any] | None]:
        return 500, outcome("database is read-only")

    with running_http_listener(broken) as server, pytest.raises(DeliveryError) as caught:
        channel(server.base_url).deliver(support.notification(support.NEGATIVE))

    assert caught.value.retryable
    assert caught.value.reason.endswith("answered HTTP 500: database is read-only")


def test_rejected_bundle_is_not_retryable() -> None:
    def refuses(request: RecordedRequest) -> tuple[int, dict[str, Any] | None]:
        return 422, outcome("Task.focus must resolve")

    with running_http_listener(refuses) as server, pytest.raises(DeliveryError) as caught:
        channel(server.base_url).deliver(support.notification(support.NEGATIVE))

    assert not caught.value.retryable
    assert "HTTP 422: Task.focus must resolve" in caught.value.reason


def test_a_server_slower_than_the_timeout_is_a_retryable_timeout() -> None:
    def slow(request: RecordedRequest) -> tuple[int, dict[str, Any] | None]:
        time.sleep(5.0)
        return fhir_server(request)

    answer: HttpAnswer = slow
    with running_http_listener(answer) as server:
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            channel(server.base_url, timeout_s=0.5).deliver(support.notification(support.NEGATIVE))
        waited = time.monotonic() - started

    assert caught.value.retryable
    assert "within 0.5 s" in caught.value.reason
    assert waited < 3.5, "the 0.5 s timeout, not the server's 5 s"


def test_nobody_listening_is_a_retryable_connection_failure() -> None:
    with pytest.raises(DeliveryError, match="cannot reach") as caught:
        channel(f"http://127.0.0.1:{free_port()}/fhir").deliver(
            support.notification(support.NEGATIVE)
        )

    assert caught.value.retryable


def test_a_2xx_without_a_transaction_response_still_counts_as_delivered() -> None:
    with running_http_listener(lambda request: (200, None)) as server:
        receipt = channel(server.base_url).deliver(support.notification(support.NEGATIVE))

    assert receipt.acknowledgement == "HTTP 200"
    assert receipt.locations == ()
