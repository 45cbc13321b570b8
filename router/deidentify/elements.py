"""Walking every element of a dataset (file meta and nested sequences included), and which
UI elements hold instance UIDs rather than class or syntax UIDs."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

CLASS_LIKE_SUFFIXES = (
    "ClassUID",
    "SyntaxUID",
    "CodingSchemeUID",
    "ContextGroupExtensionCreatorUID",
)


def walk_elements(dataset: Dataset) -> Iterator[DataElement]:
    """The file meta's elements, then the dataset's, depth first into sequence items."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        yield from meta
    yield from _walk(dataset)


def _walk(dataset: Dataset) -> Iterator[DataElement]:
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def is_registered_uid(value: str) -> bool:
    """A UID of the DICOM registry (PS3.6 Annex A: classes, syntaxes, well-known UIDs)."""
    return bool(value) and UID(value).name != value


def holds_instance_uids(element: DataElement) -> bool:
    """A UI element that is not a class, transfer syntax or coding scheme UID."""
    return element.VR == "UI" and not element.keyword.endswith(CLASS_LIKE_SUFFIXES)
