"""The HL7 channel against a real MLLP listener (hl7apy's MLLPServer) on loopback."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import pytest

from config.schema import Hl7NotifyConfig
from testing.listeners import Hl7Listener, running_hl7_listener
from testing.orthanc import free_port
from tests.worklist import support
from worklist import codes, hl7, mllp
from worklist.channel import DeliveryError
from worklist.hl7_channel import Hl7Channel


def channel_for(
    listener: Hl7Listener | None, *, port: int = 0, timeout_s: float = 5.0
) -> Hl7Channel:
    config = Hl7NotifyConfig(
        host="127.0.0.1",
        port=listener.port if listener else port,
        receiving_application="RIS",
        timeout_s=timeout_s,
    )
    return Hl7Channel(config)


def test_result_is_delivered_when_the_receiver_answers_aa() -> None:
    notification = support.notification(
        support.positive(support.pe_finding(0.93)), key_images=(support.PE_IMAGE,)
    )

    with running_hl7_listener() as listener:
        receipt = channel_for(listener).deliver(notification)

    assert receipt.channel == "hl7"
    assert receipt.acknowledgement == "AA"
    assert receipt.message_id == hl7.message_control_id("result-1")
    [message] = listener.received
    assert message.control_id == receipt.message_id
    assert message.patient_id == "PAT-000123"
    assert message.filler_order_number == "ACC-2025-0042"
    assert message.priority == "S"
    reason = message.rows(codes.PRIORITY_REASON)[0].value
    assert reason == (
        "AI: suspected PE, lower lobe of right lung, series 4 image 120 [Test PE Detector 1.2.0]"
    )
    assert listener.raw[0].startswith("MSH|^~\\&|RADROUTER||RIS||")


def test_a_resent_notification_keeps_its_control_id() -> None:
    notification = support.notification(support.NEGATIVE)

    with running_hl7_listener() as listener:
        channel = channel_for(listener)
        channel.deliver(notification)
        channel.deliver(notification)

    assert [m.control_id for m in listener.received] == [hl7.message_control_id("result-1")] * 2


def test_commit_accept_of_enhanced_mode_counts_as_delivered() -> None:
    with running_hl7_listener(lambda message: hl7.build_ack(message, "CA")) as listener:
        receipt = channel_for(listener).deliver(support.notification(support.NEGATIVE))

    assert receipt.acknowledgement == "CA"


def test_application_error_is_a_retryable_failure_with_the_receivers_text() -> None:
    def application_error(message: str) -> str:
        return hl7.build_ack(message, "AE", "database unavailable")

    with (
        running_hl7_listener(application_error) as listener,
        pytest.raises(DeliveryError) as caught,
    ):
        channel_for(listener).deliver(support.notification(support.NEGATIVE))

    assert caught.value.retryable
    assert "answered AE: database unavailable" in caught.value.reason
    assert str(caught.value).startswith("hl7: ")


def test_application_reject_is_not_retryable() -> None:
    def reject(message: str) -> str:
        return hl7.build_ack(message, "AR", "unsupported processing id")

    with running_hl7_listener(reject) as listener, pytest.raises(DeliveryError) as caught:
        channel_for(listener).deliver(support.notification(support.NEGATIVE))

    assert not caught.value.retryable
    assert "AR: unsupported processing id" in caught.value.reason


def test_a_receiver_that_never_answers_times_out() -> None:
    with running_hl7_listener(lambda message: None) as listener:
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            channel_for(listener, timeout_s=0.5).deliver(support.notification(support.NEGATIVE))
        waited = time.monotonic() - started

    assert caught.value.retryable
    assert "no answer from 127.0.0.1" in caught.value.reason and "0.5 s" in caught.value.reason
    assert 0.5 <= waited < 3.0
    assert len(listener.received) == 1


def test_ack_for_another_message_is_not_taken_as_delivery() -> None:
    other = hl7.build_oru_r01(
        support.notification(support.NEGATIVE, notification_id="someone-else"),
        Hl7NotifyConfig(host="x", port=1, receiving_application="RIS"),
    )

    with (
        running_hl7_listener(lambda message: hl7.build_ack(other, "AA")) as listener,
        pytest.raises(DeliveryError, match="the ACK is for message"),
    ):
        channel_for(listener).deliver(support.notification(support.NEGATIVE))


def test_nobody_listening_is_a_retryable_connection_failure() -> None:
    with pytest.raises(DeliveryError, match=r"cannot connect to 127\.0\.0\.1") as caught:
        channel_for(None, port=free_port()).deliver(support.notification(support.NEGATIVE))

    assert caught.value.retryable


def test_missing_patient_id_fails_before_anything_is_sent() -> None:
    study = dataclasses.replace(support.STUDY, patient_id="")

    with running_hl7_listener() as listener, pytest.raises(DeliveryError) as caught:
        channel_for(listener).deliver(support.notification(support.NEGATIVE, study=study))

    assert not caught.value.retryable
    assert listener.raw == []


def test_mllp_exchange_frames_the_message_and_unframes_the_answer() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        seen: list[bytes] = []

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                data = b""
                while not data.endswith(mllp.END_BLOCK):
                    data += connection.recv(1024)
                seen.append(data)
                connection.sendall(b"\x0bACK\r\x1c\x0d")

        thread = threading.Thread(target=answer)
        thread.start()
        reply = mllp.exchange("127.0.0.1", port, b"MSH|x", 5.0)
        thread.join(5)

    assert seen == [b"\x0bMSH|x\x1c\x0d"]
    assert reply == b"ACK\r"
