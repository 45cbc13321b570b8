"""The worklist section of the routing YAML: errors name the key and the rule."""

from __future__ import annotations

import pytest

from config.loader import ConfigError, parse_config
from config.schema import NotifyRetryPolicy


def problems(yaml_text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml_text, "w.yaml")
    return str(caught.value)


def test_routine_can_never_be_a_flag_target() -> None:
    text = problems("worklist: {priority_policy: {pe: [{raise_to: routine}]}}")

    assert "worklist.priority_policy.pe[0].raise_to: raise_to: routine never raises" in text


def test_measurement_bound_needs_a_range_in_order() -> None:
    empty = problems(
        "worklist: {priority_policy: {pe: [{raise_to: stat, when: {measurements: {x: {unit: mm}}}}]}}"
    )
    reversed_range = problems(
        "worklist: {priority_policy: {pe: [{raise_to: stat, when: {measurements: {x: {min: 3, max: 1}}}}]}}"
    )

    assert "when.measurements.x: give min, max or both" in empty
    assert "min 3.0 is greater than max 1.0" in reversed_range


def test_misspelt_channel_key_is_named_with_a_suggestion() -> None:
    text = problems("worklist: {notify: {hl7: {host: x, port: 1, receving_application: RIS}}}")

    assert "worklist.notify.hl7.receving_application: unknown key" in text
    assert "did you mean 'receiving_application'" in text


def test_hl7_names_refuse_delimiters_and_long_names() -> None:
    delimiter = problems(
        "worklist: {notify: {hl7: {host: x, port: 1, receiving_application: 'R^S'}}}"
    )
    long_name = problems(
        "worklist: {notify: {hl7: {host: x, port: 1, receiving_application: RIS, sending_facility: "
        + "F" * 21
        + "}}}"
    )

    assert "receiving_application: an HL7 name is 1-20 printable characters" in delimiter
    assert "sending_facility: an HL7 name" in long_name


def test_bearer_token_is_refused_over_plain_http_to_another_host() -> None:
    remote = problems(
        "worklist: {notify: {fhir: {base_url: 'http://ris.example/fhir', bearer_token_env: T}}}"
    )
    loopback = parse_config(
        "worklist: {notify: {fhir: {base_url: 'http://127.0.0.1:8080/fhir', bearer_token_env: T}}}"
    )

    assert "bearer_token_env needs an https:// base_url" in remote
    assert loopback.worklist.notify.fhir is not None


def test_unknown_algorithm_name_pattern_and_bad_url_are_refused() -> None:
    assert "priority_policy" in problems("worklist: {priority_policy: {'not a name': []}}")
    assert "base_url" in problems("worklist: {notify: {fhir: {base_url: 'ftp://x/fhir'}}}")


def test_notify_retry_keeps_its_own_defaults_when_partly_given() -> None:
    config = parse_config(
        "worklist: {notify: {hl7: {host: x, port: 1, receiving_application: RIS, retry: {max_attempts: 9}}}}"
    )

    assert config.worklist.notify.hl7 is not None
    retry = config.worklist.notify.hl7.retry
    assert retry.max_attempts == 9
    assert retry.backoff_max_s == NotifyRetryPolicy().backoff_max_s == 300.0
