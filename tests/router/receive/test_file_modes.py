"""Files holding patient data (spool, quarantine, results, the database) are the service
user's alone, whatever the umask: 0600 files in 0700 folders."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from algorithms.registry import Registry
from config.loader import parse_config
from dicom_sr.io import write_dataset
from router.receive.status import StoreStatus
from router.service import RouterService
from router.store.database import SqliteDatabase
from testing.dicom_node import running_node, send_payload, store_association
from testing.dicom_tools import make_ct_slices
from testing.fuzz import encode


@pytest.fixture(autouse=True)
def lenient_umask() -> Iterator[None]:
    """A umask that would make everything world-readable: modes must not depend on it."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_spool_files_and_folders_are_owner_only(tmp_path: Path) -> None:
    ds = make_ct_slices(1, rows=16, cols=16)[0]
    with running_node(tmp_path / "data") as node:
        assoc = store_association(node.port)
        status = send_payload(
            assoc, encode(ds, ExplicitVRLittleEndian), sop_instance_uid=str(ds.SOPInstanceUID)
        )
        assoc.release()
        assert status == StoreStatus.SUCCESS
        row = node.db.query_one("SELECT path FROM instances")
        assert row is not None
        path = Path(row["path"])
        assert mode(path) == 0o600
        for folder in (path.parent, path.parent.parent, node.spool.root, node.spool.incoming):
            assert mode(folder) == 0o700, folder


def test_quarantined_files_are_owner_only(tmp_path: Path) -> None:
    ds = make_ct_slices(1, rows=16, cols=16)[0]
    ds.PixelData = ds.PixelData[:10]
    with running_node(tmp_path / "data") as node:
        assoc = store_association(node.port)
        send_payload(
            assoc, encode(ds, ExplicitVRLittleEndian), sop_instance_uid=str(ds.SOPInstanceUID)
        )
        assoc.release()
        files = list(node.quarantine.iterdir())
        assert len(files) == 2
        assert all(mode(path) == 0o600 for path in files)
        assert mode(node.quarantine) == 0o700


def test_result_objects_are_written_owner_only(tmp_path: Path) -> None:
    ds = make_ct_slices(1, rows=16, cols=16)[0]
    path = write_dataset(ds, tmp_path / "result.dcm")
    assert mode(path) == 0o600


def test_the_data_folder_and_the_database_are_owner_only(tmp_path: Path) -> None:
    config = parse_config("node: {port: 11112}\n", "test.yaml")
    service = RouterService(config, data_dir=tmp_path / "data", registry=Registry({}))
    assert mode(tmp_path / "data") == 0o700
    assert isinstance(service.db, SqliteDatabase)
    assert mode(service.db.path) == 0o600
    assert mode(service.spool.root) == 0o700
