"""Algorithms in development (not entry points, not shipped): their tests run only when asked,
with ``RADROUTER_INCUBATING=1 .venv/bin/python -m pytest tests/incubating``. They are kept
here, type-checked and linted with the rest, so that the work is not lost between sessions;
see docs/algorithms.md for why each one is not shipped yet."""

from __future__ import annotations

import os

import pytest

ENABLED = os.environ.get("RADROUTER_INCUBATING") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="incubating algorithm; set RADROUTER_INCUBATING=1 to run")
    for item in items:
        if "tests/incubating/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(skip)
