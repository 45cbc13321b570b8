"""Result object identity: deterministic UIDs and series numbers per study, algorithm, version."""

from __future__ import annotations

import itertools
import zlib

import pytest

from dicom_sr.identity import ObjectKind, result_object_identity
from dicom_sr.uids import is_valid_uid

STUDY = "1.2.826.0.1.3680043.8.498.1"
SLOT = zlib.crc32(b"lung_nodule") % 30


def identity(
    kind: ObjectKind = ObjectKind.SR,
    version_number: int = 1,
    algorithm_name: str = "lung_nodule",
    algorithm_version: str = "0.1.0",
    study: str = STUDY,
) -> tuple[str, str, int]:
    found = result_object_identity(
        study_instance_uid=study,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        version_number=version_number,
        kind=kind,
    )
    return found.series_instance_uid, found.sop_instance_uid, found.series_number


def test_identity_depends_only_on_its_inputs() -> None:
    assert identity() == identity()
    assert all(is_valid_uid(uid) for uid in identity()[:2])


@pytest.mark.parametrize(
    "changed",
    [
        {"kind": ObjectKind.SEG},
        {"version_number": 2},
        {"algorithm_name": "pe"},
        {"algorithm_version": "0.2.0"},
        {"study": "1.2.826.0.1.3680043.8.498.2"},
    ],
    ids=["kind", "version", "algorithm", "algorithm-version", "study"],
)
def test_each_input_gives_its_own_series_and_instance(changed: dict[str, object]) -> None:
    base_series, base_instance, _ = identity()
    series, instance, _ = identity(**changed)  # type: ignore[arg-type]

    assert series != base_series
    assert instance != base_instance


def test_series_numbers_of_an_algorithm_are_distinct_per_kind_and_version() -> None:
    numbers = {
        (kind, version): identity(kind, version)[2]
        for kind, version in itertools.product(ObjectKind, range(1, 10))
    }

    assert len(set(numbers.values())) == len(numbers)
    documents = (ObjectKind.SR, ObjectKind.SEG, ObjectKind.KOS)
    assert all(9000 <= n <= 9899 for (k, _), n in numbers.items() if k in documents)
    assert all(10000 <= n <= 10599 for (k, _), n in numbers.items() if k not in documents)
    assert numbers[(ObjectKind.SR, 2)] == numbers[(ObjectKind.SR, 1)] + 1


def test_sr_seg_and_kos_keep_the_series_numbers_they_had_before_gsps_and_sc() -> None:
    """9000 + 30 * slot + 10 * kind + version, as written before presentation objects."""
    assert [identity(kind)[2] for kind in (ObjectKind.SR, ObjectKind.SEG, ObjectKind.KOS)] == [
        9000 + 30 * slot + 10 * offset + 1 for slot, offset in [(SLOT, 0), (SLOT, 1), (SLOT, 2)]
    ]


def test_versions_after_the_ninth_share_the_last_series_number() -> None:
    assert identity(version_number=12)[2] == identity(version_number=9)[2]
    assert identity(version_number=12)[0] != identity(version_number=9)[0]


def test_version_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="version_number must be >= 1"):
        identity(version_number=0)
