"""De-identify one instance by the plan, and say what was replaced so it can be reversed.

``Deidentifier.deidentify`` copies the dataset, lets deid (``engine``) apply Table E.1-1 as
planned for the options, then does what the table's single-tag rows cannot:

- private attributes: all removed, or with Retain Safe Private only the site's safe list;
- the repeating groups of the table (curves 50xx, overlay data and comments 60xx): removed;
- any other UID that is not a registered DICOM UID (PS3.6 Annex A) and not a class UID is
  replaced like a U attribute, so no instance UID the table does not list can leave;
- Patient Identity Removed, De-identification Method (and its CID 7050 codes) and
  Longitudinal Temporal Information Modified are set.

Patient ID and Patient's Name (Z/D and Z in the table) get the patient's pseudonym, so a
vendor can still tell one patient's studies apart, and nothing else about the patient.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from router.deidentify import annex_e_table
from router.deidentify.elements import holds_instance_uids, is_registered_uid, walk_elements
from router.deidentify.keys import DeidKeys
from router.deidentify.options import DeidOptions
from router.deidentify.plan import Action, plan

PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "OtherPatientNames",
    "EthnicGroup",
)
"""What re-identification restores on the patient (the originals, from the mapping)."""
STUDY_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDescription",
)
"""What re-identification restores on the study."""

_DUMMY_BY_VR = {
    "AE": "ANONYMIZED",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UR": "",
    "UT": "ANONYMIZED",
}
_BINARY_VRS = ("OB", "OD", "OF", "OL", "OV", "OW", "UN")
_NUMERIC_VRS = ("FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "AT")


@dataclass
class DeidentifiedInstance:
    """One instance as sent, and what is needed to undo it (kept in ``mapping``)."""

    dataset: Dataset
    pseudonym: str
    date_offset_days: int
    study_uid: str
    """The de-identified Study Instance UID."""
    uids: dict[str, str] = field(default_factory=dict)
    """New UID -> original UID, for every UID replaced in this instance."""
    patient_identity: dict[str, str] = field(default_factory=dict)
    study_identity: dict[str, str] = field(default_factory=dict)


class Deidentifier:
    """De-identifies instances for one scope (vendor) with one set of options."""

    def __init__(self, options: DeidOptions, keys: DeidKeys) -> None:
        self.options = options
        self.keys = keys
        self.planned = plan(options)
        self._recipe = _engine().recipe(self.planned)

    def deidentify(self, source: Dataset) -> DeidentifiedInstance:
        """A de-identified copy of ``source`` (which is left as it was)."""
        dataset = copy.deepcopy(source)
        patient_id = str(source.get("PatientID", "") or "")
        issuer = str(source.get("IssuerOfPatientID", "") or "")
        basis = patient_id or f"study:{source.get('StudyInstanceUID', '')}"
        pseudonym = self.keys.patient_pseudonym(basis, issuer)
        low, high = self.options.date_shift_days
        offset = self.keys.date_offset_days(pseudonym, low, high)
        values = _Values(self, pseudonym, offset, _identity_tokens(source))

        _engine().apply(
            dataset,
            self._recipe,
            {
                Action.UID: values.uid,
                Action.DUMMY: values.dummy,
                Action.SHIFT_DATE: values.shift_date,
                Action.CLEAN_DESCRIPTOR: values.clean_descriptor,
            },
            remove_private=not self.options.retain_safe_private,
        )
        if self.options.retain_safe_private:
            _remove_unsafe_private(dataset, self.options.safe_private)
        _remove_repeating_groups(dataset)
        values.replace_unlisted_uids(dataset)
        self._declare(dataset)
        return DeidentifiedInstance(
            dataset=dataset,
            pseudonym=pseudonym,
            date_offset_days=offset,
            study_uid=str(dataset.get("StudyInstanceUID", "")),
            uids=values.replaced,
            patient_identity=_text_values(source, PATIENT_KEYWORDS),
            study_identity=_text_values(source, STUDY_KEYWORDS),
        )

    def _declare(self, dataset: Dataset) -> None:
        dataset.PatientIdentityRemoved = "YES"
        options = self.options
        named = [
            name
            for selected, name in (
                (options.retain_longitudinal_modified_dates, "modified dates"),
                (options.retain_device_identity, "device identity"),
                (options.retain_patient_characteristics, "patient characteristics"),
                (options.clean_descriptors, "clean descriptors"),
                (options.retain_safe_private, "safe private"),
            )
            if selected
        ]
        dataset.DeidentificationMethod = [
            f"DICOM PS3.15 E.1-1 ({annex_e_table.EDITION}) Basic Profile",
            f"radrouter with pydicom/deid {_engine().DEID_VERSION}",
            *(f"Option: {name}" for name in named),
        ]
        items = []
        for code in options.method_codes():
            item = Dataset()
            item.CodeValue = code.value
            item.CodingSchemeDesignator = code.scheme_designator
            item.CodeMeaning = code.meaning
            items.append(item)
        dataset.DeidentificationMethodCodeSequence = Sequence(items)
        dataset.LongitudinalTemporalInformationModified = (
            "MODIFIED" if options.retain_longitudinal_modified_dates else "REMOVED"
        )


def _engine() -> Any:
    """``engine``, imported when first needed: deid imports matplotlib, which a router that
    sends nothing to a vendor should never load (nor let write its font cache)."""
    from router.deidentify import engine

    return engine


class _Values:
    """The replacement values of one instance, recording every UID replaced."""

    def __init__(
        self, owner: Deidentifier, pseudonym: str, offset_days: int, tokens: list[str]
    ) -> None:
        self._keys = owner.keys
        self._root = owner.options.uid_root
        self._pseudonym = pseudonym
        self._offset = datetime.timedelta(days=offset_days)
        self._tokens = tokens
        self.replaced: dict[str, str] = {}

    def _new_uid(self, original: str) -> str:
        original = original.strip().rstrip("\x00")
        if not original:
            return ""
        new = self._keys.uid(original, self._root)
        self.replaced[new] = original
        return new

    def uid(self, element: DataElement) -> Any:
        return _each(element.value, self._new_uid)

    def dummy(self, element: DataElement) -> Any:
        if element.keyword in ("PatientID", "PatientName"):
            return self._pseudonym
        if element.VR == "UI":
            return self.uid(element)
        if element.VR in _BINARY_VRS:
            return b""
        if element.VR in _NUMERIC_VRS:
            return 0
        return _DUMMY_BY_VR.get(element.VR, "")

    def shift_date(self, element: DataElement) -> Any:
        if element.VR == "DA":
            return _each(element.value, self._shift_da)
        return _each(element.value, self._shift_dt)

    def _shift_da(self, text: str) -> str:
        try:
            day = datetime.datetime.strptime(text.strip(), "%Y%m%d").date()
        except ValueError:
            return ""  # partial or malformed: nothing better than nothing
        return (day + self._offset).strftime("%Y%m%d")

    def _shift_dt(self, text: str) -> str:
        text = text.strip()
        shifted = self._shift_da(text[:8])
        return shifted + text[8:] if shifted else ""

    def clean_descriptor(self, element: DataElement) -> Any:
        def clean(text: str) -> str:
            upper = text.upper()
            return "" if any(token in upper for token in self._tokens) else text

        return _each(element.value, clean)

    def replace_unlisted_uids(self, dataset: Dataset) -> None:
        """Replace what the table does not list: any UID that is neither registered nor a
        class UID, and not one we made."""
        made = set(self.replaced)
        for element in walk_elements(dataset):
            if not holds_instance_uids(element):
                continue

            def replace(value: str) -> str:
                value = value.strip().rstrip("\x00")
                if not value or value in made or is_registered_uid(value):
                    return value
                return self._new_uid(value)

            element.value = _each(element.value, replace)


def _each(value: Any, function: Any) -> Any:
    """``function`` applied to a text value or to each of a multi-valued one; never None."""
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return [function(str(v)) for v in value]
    return function(str(value))


def _identity_tokens(dataset: Dataset) -> list[str]:
    """Upper-case fragments of the patient's identity a descriptor must not contain."""
    tokens: set[str] = set()
    name = str(dataset.get("PatientName", "") or "")
    for part in name.replace("^", " ").replace("=", " ").split():
        if len(part) >= 3:
            tokens.add(part.upper())
    for keyword in ("PatientID", "AccessionNumber", "PatientBirthDate", "OtherPatientIDs"):
        value = dataset.get(keyword)
        for item in value if isinstance(value, (list, MultiValue)) else [value]:
            text = str(item or "").strip()
            if len(text) >= 3:
                tokens.add(text.upper())
    for item in dataset.get("OtherPatientIDsSequence", []) or []:
        text = str(item.get("PatientID", "") or "").strip()
        if len(text) >= 3:
            tokens.add(text.upper())
    return sorted(tokens)


def _text_values(dataset: Dataset, keywords: Iterable[str]) -> dict[str, str]:
    found = {}
    for keyword in keywords:
        if keyword in dataset:
            value = dataset[keyword].value
            found[keyword] = "" if value is None else str(value)
    return found


def _remove_unsafe_private(dataset: Dataset, safe: frozenset[tuple[str, int]]) -> None:
    def visit(item: Dataset) -> None:
        creators = {
            (element.tag.group, element.tag.element): str(element.value)
            for element in item
            if element.tag.is_private_creator
        }
        for element in list(item):
            if element.VR == "SQ" and not element.tag.is_private:
                for child in element.value:
                    visit(child)
            if not element.tag.is_private or element.tag.is_private_creator:
                continue
            block = (element.tag.group, element.tag.element >> 8)
            creator = creators.get(block)
            if creator is None or (creator, element.tag.element & 0xFF) not in safe:
                del item[element.tag]
        used = {(e.tag.group, e.tag.element >> 8) for e in item if e.tag.is_private}
        for (group, slot), _ in creators.items():
            if (group, slot) not in used:
                del item[(group << 16) | slot]

    visit(dataset)


def _remove_repeating_groups(dataset: Dataset) -> None:
    for element in list(dataset):
        group, number = element.tag.group, element.tag.element
        curve = (group & 0xFF00) == 0x5000
        overlay = (group & 0xFF00) == 0x6000 and number in (0x3000, 0x4000)
        if group % 2 == 0 and (curve or overlay):
            del dataset[element.tag]
