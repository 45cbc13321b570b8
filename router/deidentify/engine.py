"""The one place that talks to pydicom/deid: a recipe from the plan, applied to one dataset.

deid (https://github.com/pydicom/deid, MIT) walks every element, nested sequences and the
file meta included, and applies REMOVE / BLANK / REPLACE actions to those a recipe names by
tag, with REPLACE values computed by functions we register. What this module works around:

- ``DicomParser`` needs a ``FileDataset`` (it hashes the dataset by ``id``);
- deid caches the expanded fields of every dataset it has seen (``functools.cache``), which
  would keep every instance (pixels included) alive for the life of the process: the cache
  is cleared after each dataset;
- deid's logger prints to the terminal and keeps every message in memory: it is silenced
  and its history cleared (its messages can carry attribute values).
- deid's KEEP action hides a whole sequence from every other action; it is never used: an
  attribute to keep is simply not named in the recipe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from deid.config import DeidRecipe  # type: ignore[import-untyped]
from deid.dicom.fields import _get_fields_inner  # type: ignore[import-untyped]
from deid.dicom.parser import DicomParser  # type: ignore[import-untyped]
from deid.logger import bot  # type: ignore[import-untyped]
from deid.version import __version__ as _deid_version  # type: ignore[import-untyped]
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset

from router.deidentify.plan import Action, Planned

DEID_VERSION: str = str(_deid_version)

ValueFunction = Callable[[DataElement], Any]
"""Given the element (with its original value), the value to put in its place (never None)."""

bot.level = -100  # below every message level: deid prints nothing
_LOCK = threading.Lock()
"""deid's field cache and logger are module-wide: one dataset at a time."""

_FUNCTIONS = {
    Action.DUMMY: "dummy",
    Action.UID: "uid",
    Action.SHIFT_DATE: "shift_date",
    Action.CLEAN_DESCRIPTOR: "clean_descriptor",
}


def recipe(planned: tuple[Planned, ...]) -> DeidRecipe:
    """A deid recipe (``%header`` actions by tag) for the planned actions."""
    header: list[dict[str, str]] = []
    for item in planned:
        field = f"{item.row.tag:08X}"
        if item.action is Action.REMOVE:
            header.append({"action": "REMOVE", "field": field})
        elif item.action is Action.EMPTY:
            header.append({"action": "BLANK", "field": field})
        elif item.action is Action.SHIFT_DATE and item.row.vr not in ("DA", "DT"):
            continue
        elif item.action in _FUNCTIONS and item.row.vr != "SQ":
            value = f"func:{_FUNCTIONS[item.action]}"
            header.append({"action": "REPLACE", "field": field, "value": value})
    return DeidRecipe(deid={"format": "dicom", "header": header})


def apply(
    dataset: Dataset,
    deid_recipe: DeidRecipe,
    functions: dict[Action, ValueFunction],
    *,
    remove_private: bool,
) -> Dataset:
    """Apply the recipe to ``dataset`` in place (and to its ``file_meta``); returns it."""
    file_meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
    wrapped = FileDataset("", dataset, file_meta=file_meta, preamble=b"\0" * 128)
    with _LOCK:
        try:
            parser = DicomParser(wrapped, recipe=deid_recipe)
            for action, name in _FUNCTIONS.items():
                if action in functions:
                    parser.define(name, _adapt(functions[action]))
            parser.parse(remove_private=remove_private)
        finally:
            _get_fields_inner.cache_clear()
            bot.history.clear()
    for item in _all_datasets(wrapped):
        # deid marks every dataset it walked with its path; leave none of that behind.
        for attribute in ("prefix", "uid"):
            item.__dict__.pop(attribute, None)
    dataset.file_meta = wrapped.file_meta
    return dataset


def _adapt(function: ValueFunction) -> Callable[..., Any]:
    def deid_function(item: Any, value: Any, field: Any, dicom: Any) -> Any:
        return function(field.element)

    return deid_function


def _all_datasets(dataset: Dataset) -> list[Dataset]:
    found = [dataset]
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        found.append(meta)
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                found.extend(_all_datasets(item))
    return found
