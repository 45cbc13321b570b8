"""Shipped weights are checked against their model card before a session is made."""

from __future__ import annotations

import hashlib

import pytest

from algorithms import packaged_model

PACKAGE = "algorithms.ms_lesion"


def test_weights_matching_the_card_are_read() -> None:
    card = packaged_model.read_card(PACKAGE)
    model = packaged_model.read_checked(PACKAGE, "model.onnx", card["sha256"])
    assert hashlib.sha256(model).hexdigest() == card["sha256"]


def test_weights_that_differ_from_the_card_are_refused() -> None:
    with pytest.raises(RuntimeError, match="does not match its model card"):
        packaged_model.read_checked(PACKAGE, "model.onnx", "0" * 64)


def test_a_card_without_a_digest_refuses_the_weights() -> None:
    with pytest.raises(RuntimeError, match="does not match"):
        packaged_model.read_checked(PACKAGE, "model.onnx", None)


def test_an_unknown_device_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown device"):
        packaged_model.onnx_session(b"", "tpu")


def test_the_session_runs_on_cpu() -> None:
    card = packaged_model.read_card(PACKAGE)
    session = packaged_model.onnx_session(
        packaged_model.read_checked(PACKAGE, "model.onnx", card["sha256"]), "cpu"
    )
    assert session.get_providers() == ["CPUExecutionProvider"]
