from __future__ import annotations

from pathlib import Path

import pytest

from router.deidentify import DeidKeys, MappingStore

SECRET = b"a test site secret of at least thirty-two bytes"


@pytest.fixture
def keys() -> DeidKeys:
    return DeidKeys(SECRET, "vendor-a")


@pytest.fixture
def store(tmp_path: Path, keys: DeidKeys) -> MappingStore:
    return MappingStore.in_data_dir(tmp_path / "data", keys.storage_key(), keep_days=30)
