"""Derived and random UIDs: deterministic where derived, always valid DICOM UIDs."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from dicom_sr.uids import (
    derive_uid,
    is_valid_uid,
    new_uid,
    output_instance_uid,
    output_series_uid,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"


def test_derive_uid_is_deterministic() -> None:
    assert derive_uid(STUDY, "lung_nodule", "SR") == derive_uid(STUDY, "lung_nodule", "SR")


def test_derive_uid_is_a_valid_uid_under_the_2_25_root() -> None:
    uid = derive_uid(STUDY, "lung_nodule", "tracking", "Nodule 1")

    assert uid.startswith("2.25.")
    assert len(uid) <= 64
    assert is_valid_uid(uid)
    assert UID(uid).is_valid


def test_derive_uid_differs_when_parts_are_split_differently() -> None:
    assert derive_uid("a.b", "c") != derive_uid("a", "b.c")
    assert derive_uid("ab") != derive_uid("a", "b")


@pytest.mark.parametrize("parts", [(), ("",), (STUDY, "")])
def test_derive_uid_refuses_missing_or_empty_parts(parts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="derive_uid: parts"):
        derive_uid(*parts)


def test_new_uid_is_valid_and_fresh() -> None:
    first, second = new_uid(), new_uid()

    assert is_valid_uid(first) and is_valid_uid(second)
    assert first != second


def test_output_uids_are_stable_per_version_and_distinct_between_versions() -> None:
    series = output_series_uid(STUDY, "lung_nodule", "SR")
    version_1 = output_instance_uid(STUDY, "lung_nodule", "SR", 1)
    version_2 = output_instance_uid(STUDY, "lung_nodule", "SR", 2)

    assert series == output_series_uid(STUDY, "lung_nodule", "SR")
    assert version_1 == output_instance_uid(STUDY, "lung_nodule", "SR", 1)
    assert len({series, version_1, version_2}) == 3
    assert output_series_uid(STUDY, "lung_nodule", "SEG") != series


def test_output_instance_uid_refuses_version_zero() -> None:
    with pytest.raises(ValueError, match="version_number must be >= 1"):
        output_instance_uid(STUDY, "lung_nodule", "SR", 0)


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.1.2.1", True),
        ("1.02.3", False),
        ("1..2", False),
        ("1.2.", False),
        ("2.25." + "9" * 60, False),
        ("0.1", True),
    ],
)
def test_is_valid_uid_applies_the_dicom_uid_rules(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid
