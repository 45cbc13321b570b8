"""Patient pseudonyms are keyed (HMAC under a site secret), never a plain hash of an MRN."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from router.store.pseudonyms import (
    SECRET_ENV,
    SECRET_FILE_ENV,
    SECRET_FILE_NAME,
    PatientKeys,
    SiteSecretError,
)

MRN = "MRN-0012345"


def test_the_key_is_not_a_hash_anyone_can_recompute(tmp_path: Path) -> None:
    key = PatientKeys.for_site(tmp_path, environ={}).key(MRN)
    assert len(key) == 64 and "12345" not in key
    for guess in (MRN, f"radrouter-patient:{MRN}", f"patient:{MRN}"):
        assert key != hashlib.sha256(guess.encode()).hexdigest()


def test_one_site_gives_one_patient_one_key_and_another_site_another(tmp_path: Path) -> None:
    site_a = PatientKeys.for_site(tmp_path / "a", environ={})
    site_b = PatientKeys.for_site(tmp_path / "b", environ={})
    assert (
        site_a.key(MRN)
        == site_a.key(f" {MRN} ")
        == PatientKeys.for_site(tmp_path / "a", environ={}).key(MRN)
    ), "stable across restarts of one site"
    assert site_a.key(MRN) != site_b.key(MRN)
    assert site_a.key(MRN) != site_a.key("MRN-0012346")


def test_the_generated_secret_is_readable_by_the_service_user_only(tmp_path: Path) -> None:
    PatientKeys.for_site(tmp_path, environ={})
    mode = stat.S_IMODE((tmp_path / SECRET_FILE_NAME).stat().st_mode)
    assert mode == 0o600
    assert not list(tmp_path.glob(f".{SECRET_FILE_NAME}.*")), "no temporary file left"


def test_the_secret_comes_from_the_environment_or_a_file_before_the_data_folder(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-secret"
    shared.write_text("x" * 40 + "\n")
    from_file = PatientKeys.for_site(tmp_path / "one", environ={SECRET_FILE_ENV: str(shared)})
    from_env = PatientKeys.for_site(tmp_path / "two", environ={SECRET_ENV: "x" * 40})
    assert from_file.key(MRN) == from_env.key(MRN)
    assert not (tmp_path / "one" / SECRET_FILE_NAME).exists()


def test_a_short_or_missing_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SiteSecretError, match="at least 32"):
        PatientKeys.for_site(tmp_path, environ={SECRET_ENV: "short"})
    with pytest.raises(SiteSecretError, match="cannot be read"):
        PatientKeys.for_site(tmp_path, environ={SECRET_FILE_ENV: str(tmp_path / "missing")})
