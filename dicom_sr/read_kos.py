"""Read path of ``dicom_sr.kos``: a Key Object Selection back to its title, text and images."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import pydicom
from pydicom.uid import KeyObjectSelectionDocumentStorage

from algorithms.contract import Code
from dicom_sr import codes


@dataclass(frozen=True)
class KeyImage:
    """One selected image (and its frames, for a multi-frame instance)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_numbers: tuple[int, ...] = ()


@dataclass(frozen=True)
class KeyObjectSelectionSummary:
    """What a radrouter KOS states."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    instance_number: int
    series_description: str
    title: Code
    description: str
    """The Key Object Description text."""
    observer_device_uid: str | None
    """UID of the device observer (the algorithm), when there is one."""
    key_images: tuple[KeyImage, ...]
    predecessor_sop_instance_uids: tuple[str, ...]


def read_key_object_selection(ds: pydicom.Dataset) -> KeyObjectSelectionSummary:
    """Read a KOS written by ``build_key_object_selection`` (e.g. from the PACS)."""
    if ds.get("SOPClassUID") != KeyObjectSelectionDocumentStorage:
        raise ValueError(
            "read_key_object_selection: ds.SOPClassUID must be Key Object Selection Document "
            f"Storage ({KeyObjectSelectionDocumentStorage}), got {ds.get('SOPClassUID')!r}"
        )
    document = hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
    content = document.content
    descriptions = hd.sr.utils.find_content_items(
        content[0], name=codes.KEY_OBJECT_DESCRIPTION, value_type=hd.sr.ValueTypeValues.TEXT
    )
    devices = content.get_observer_contexts(observer_type=codes.DEVICE_OBSERVER)
    device_uid = None
    if devices:
        attributes = devices[0].observer_identifying_attributes
        if isinstance(attributes, hd.sr.DeviceObserverIdentifyingAttributes):
            device_uid = str(attributes.uid)
    return KeyObjectSelectionSummary(
        study_instance_uid=str(document.StudyInstanceUID),
        series_instance_uid=str(document.SeriesInstanceUID),
        sop_instance_uid=str(document.SOPInstanceUID),
        instance_number=int(document.InstanceNumber),
        series_description=str(document.get("SeriesDescription", "")),
        title=codes.to_contract_code(
            hd.sr.CodedConcept.from_dataset(document.ConceptNameCodeSequence[0])
        ),
        description=" ".join(str(item.TextValue) for item in descriptions),
        observer_device_uid=device_uid,
        key_images=tuple(
            KeyImage(
                sop_class_uid=str(item.referenced_sop_class_uid),
                sop_instance_uid=str(item.referenced_sop_instance_uid),
                frame_numbers=tuple(int(n) for n in item.referenced_frame_numbers or ()),
            )
            for item in content.get_references(value_type=hd.sr.ValueTypeValues.IMAGE)
            if isinstance(item, hd.sr.ImageContentItem)
        ),
        predecessor_sop_instance_uids=tuple(
            str(instance.ReferencedSOPInstanceUID)
            for study in ds.get("PredecessorDocumentsSequence", [])
            for series in study.ReferencedSeriesSequence
            for instance in series.ReferencedSOPSequence
        ),
    )
