"""A UID in an API path is checked against the DICOM UID syntax before it is used, and the
answer names the parameter, never echoes its value."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from router.api.app import ApiDependencies, Readiness, create_app
from router.metrics import Metrics
from router.store.database import SqliteDatabase


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    deps = ApiDependencies(
        db=SqliteDatabase(tmp_path / "radrouter.sqlite3"),
        metrics=Metrics(lambda: {}),
        readiness=lambda: Readiness(True, {"database": "ok"}),
        retry_dispatch=lambda _id: 0,
        retry_job=lambda _id: False,
    )
    with TestClient(create_app(deps)) as test_client:
        yield test_client


@pytest.mark.parametrize("uid", ["1..2", "01.2", "1.2.", "abc", "%2E%2E", "1.2%20", "1" * 65])
def test_a_study_uid_that_is_not_a_dicom_uid_is_refused_by_name(
    client: TestClient, uid: str
) -> None:
    response = client.get(f"/studies/{uid}")
    assert response.status_code == 400
    assert response.json() == {"detail": "study_uid is not a DICOM UID"}


def test_a_valid_unknown_study_uid_is_not_found(client: TestClient) -> None:
    assert client.get("/studies/1.2.3.4").status_code == 404
