"""The worklist names a study by what it can read: a header value it cannot decode is shown
empty, never a 500 for every request (and across restarts, since the spool keeps the file)."""

from __future__ import annotations

import struct
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from config.schema import Priority
from router.store.database import Database, SqliteDatabase
from router.worklist_page.api import create_worklist_router
from router.worklist_page.study_labels import StudyLabels
from testing.dicom_tools import make_ct_slices
from tests.router.worklist_page.test_store import add_result, add_study, flag


def spooled_study(db: Database, folder: Path, accession_vr: bytes) -> str:
    """A study whose spool file's AccessionNumber carries ``accession_vr`` (as a file received
    before the node refused unknown VR codes would)."""
    ds = make_ct_slices(1, rows=16, cols=16)[0]
    ds.AccessionNumber = "ACC-4711"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "instance.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    at = raw.index(struct.pack("<HH", 0x0008, 0x0050), 132)
    path.write_bytes(raw[: at + 4] + accession_vr + raw[at + 6 :])
    study_uid = str(ds.StudyInstanceUID)
    add_study(db, study_uid, time.time() - 60)
    db.connection().execute(
        "INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid, "
        "transfer_syntax_uid, path, size, sha256, received_at) VALUES (?, ?, ?, ?, ?, ?, 0, '', ?)",
        (
            str(ds.SOPInstanceUID),
            f"{study_uid}.1",
            study_uid,
            str(ds.SOPClassUID),
            "1.2.840.10008.1.2.1",
            str(path),
            time.time(),
        ),
    )
    return study_uid


def test_an_accession_number_with_an_unknown_vr_is_shown_empty(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "db.sqlite3")
    study_uid = spooled_study(db, tmp_path / "spool", b"ZZ")
    label = StudyLabels(db).get(study_uid)
    assert label.accession_number == ""
    assert label.study_description == "CT CHEST", "what can be read is still shown"


def test_the_worklist_api_answers_with_such_a_study_on_it(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "db.sqlite3")
    study_uid = spooled_study(db, tmp_path / "spool", b"ZZ")
    flag(db, add_result(db, study_uid), Priority.URGENT)
    app = FastAPI()
    app.include_router(create_worklist_router(db))
    client = TestClient(app, raise_server_exceptions=False)
    for _ in range(2):  # every request, not only the first
        response = client.get("/api/worklist")
        assert response.status_code == 200, response.text
        studies = response.json()["studies"]
        assert [s["study_uid"] for s in studies] == [study_uid]
        assert "ACC-4711" not in response.text


def test_a_readable_accession_number_is_shown(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "db.sqlite3")
    study_uid = spooled_study(db, tmp_path / "spool", b"SH")
    assert StudyLabels(db).get(study_uid).accession_number == "ACC-4711"
