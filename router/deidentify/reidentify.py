"""Re-identify what a vendor returns (SR, SEG, KOS, secondary capture).

The answer is recognised by its Study Instance UID, which must be one radrouter made (else it
is refused: it is not an answer to anything sent, or its mapping has been purged). Then every
UID in it, at any depth (Referenced Series / SOP / Image Sequences, Current Requested
Procedure Evidence, Source Image, Derivation Image, ...) and in the file meta, that the
mapping knows is put back; the UIDs it does not know are the vendor's own (its new SOP
instances and series) and stay. The patient's and the study's identifying attributes are
restored from the mapping, and the attributes that declared the object de-identified go.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from router.deidentify.elements import holds_instance_uids, is_registered_uid, walk_elements
from router.deidentify.mapping import MappingStore

DECLARATIONS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)


class ReidentificationError(ValueError):
    """The object cannot be re-identified (the reason says why; it names no patient)."""


@dataclass
class Reidentified:
    dataset: Dataset
    scope: str
    restored_uids: int
    """UID values put back (each occurrence counts)."""
    kept_uids: list[str] = field(default_factory=list)
    """UIDs the mapping does not know: the vendor's own, kept as they are."""


def reidentify(returned: Dataset, store: MappingStore, *, scope: str | None = None) -> Reidentified:
    """A re-identified copy of ``returned``; with ``scope``, only that vendor's studies."""
    deid_study_uid = str(returned.get("StudyInstanceUID", "") or "").strip()
    if not deid_study_uid:
        raise ReidentificationError("the object has no Study Instance UID")
    study = store.study(deid_study_uid)
    if study is None:
        raise ReidentificationError(
            "the object's study is not one radrouter de-identified, or its mapping was purged"
        )
    if scope is not None and study.scope != scope:
        raise ReidentificationError("the object's study was de-identified for another vendor")

    dataset = copy.deepcopy(returned)
    candidates = []
    for element in walk_elements(dataset):
        if holds_instance_uids(element):
            candidates.extend(_values(element.value))
    originals = store.original_uids(v for v in candidates if not is_registered_uid(v))
    restored = 0
    kept: set[str] = set()
    put_back = set(originals.values())  # a sequence item shared by two parents is seen twice
    for element in walk_elements(dataset):
        if not holds_instance_uids(element):
            continue
        values = _values(element.value)
        new_values = []
        for value in values:
            if value in originals:
                new_values.append(originals[value])
                restored += 1
            else:
                if value and not is_registered_uid(value) and value not in put_back:
                    kept.add(value)
                new_values.append(value)
        if new_values != values:
            element.value = new_values if len(new_values) > 1 else new_values[0]

    for keyword, value in {**study.patient_identity, **study.study_identity}.items():
        setattr(dataset, keyword, value)
    for keyword in DECLARATIONS:
        if keyword in dataset:
            del dataset[keyword]
    return Reidentified(dataset, study.scope, restored, sorted(kept))


def _values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v).strip().rstrip("\x00") for v in value]
    return [str(value).strip().rstrip("\x00")]
