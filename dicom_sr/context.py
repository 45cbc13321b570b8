"""What every result object is built from: source study, source images, references, version."""

from __future__ import annotations

from dataclasses import dataclass

import pydicom
from pydicom.uid import (
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    SegmentationStorage,
)

from dicom_sr.uids import is_valid_uid


@dataclass(frozen=True)
class SourceImage:
    """One slice of the volume the algorithm saw, index-aligned with the volume's slice axis."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None
    """1-based frame of a multi-frame instance; None for single-frame instances."""

    def __post_init__(self) -> None:
        for name in ("sop_class_uid", "sop_instance_uid"):
            if not is_valid_uid(getattr(self, name)):
                raise ValueError(f"SourceImage.{name} {getattr(self, name)!r} is not a DICOM UID")
        if self.frame_number is not None and self.frame_number < 1:
            raise ValueError(f"SourceImage.frame_number must be >= 1, got {self.frame_number}")


@dataclass(frozen=True, eq=False)
class StudyContext:
    """Header of the patient's original study, copied into every result object.

    ``dataset`` is any instance of the source series (pixel data is never copied); the Patient
    and General Study modules, and its acquisition equipment, come from it.
    """

    dataset: pydicom.Dataset

    def __post_init__(self) -> None:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            value = self.dataset.get(keyword)
            if not value or not is_valid_uid(str(value)):
                raise ValueError(
                    f"StudyContext.dataset.{keyword} must be a DICOM UID, got {value!r}"
                )

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)


@dataclass(frozen=True)
class InstanceReference:
    """One stored instance by its four UIDs (PS3.3 C.17.2.1 Hierarchical SOP Instance Reference).

    Used for the prior exam's instances (Pertinent Other Evidence) and for the result objects
    of an earlier version (predecessors).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        for name in (
            "study_instance_uid",
            "series_instance_uid",
            "sop_class_uid",
            "sop_instance_uid",
        ):
            if not is_valid_uid(getattr(self, name)):
                raise ValueError(
                    f"InstanceReference.{name} {getattr(self, name)!r} is not a DICOM UID"
                )

    def as_dataset(self) -> pydicom.Dataset:
        """The four UIDs as a data set, the form highdicom takes evidence and predecessors in."""
        ds = pydicom.Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        return ds


@dataclass(frozen=True)
class ResultVersion:
    """Which result of this algorithm in this study the objects are: 1, then 2 after a re-run.

    A version after the first names the SR it supersedes (Predecessor Documents Sequence) and,
    where the earlier version wrote them, its SEG and KOS (see docs/results.md for how each
    object kind refers to its predecessor).
    """

    number: int
    predecessor_sop_instance_uid: str | None = None
    """SOP Instance UID of the earlier version's SR."""
    predecessor_series_instance_uid: str | None = None
    """Series Instance UID of the earlier version's SR."""
    predecessor_segmentation: InstanceReference | None = None
    """The earlier version's SEG, when it wrote one."""
    predecessor_key_object_selection: InstanceReference | None = None
    """The earlier version's KOS, when it wrote one."""

    def __post_init__(self) -> None:
        if self.number < 1:
            raise ValueError(f"ResultVersion.number must be >= 1, got {self.number}")
        predecessor = (self.predecessor_sop_instance_uid, self.predecessor_series_instance_uid)
        others = (self.predecessor_segmentation, self.predecessor_key_object_selection)
        if self.number == 1 and (predecessor != (None, None) or others != (None, None)):
            raise ValueError("ResultVersion: version 1 has no predecessor; leave them all None")
        if self.number > 1:
            for name, uid in zip(
                ("predecessor_sop_instance_uid", "predecessor_series_instance_uid"),
                predecessor,
                strict=True,
            ):
                if uid is None or not is_valid_uid(uid):
                    raise ValueError(
                        f"ResultVersion.{name} must be the DICOM UID of the earlier SR for "
                        f"version {self.number}, got {uid!r}"
                    )
        for name, reference, sop_class_uid in (
            ("predecessor_segmentation", self.predecessor_segmentation, SegmentationStorage),
            (
                "predecessor_key_object_selection",
                self.predecessor_key_object_selection,
                KeyObjectSelectionDocumentStorage,
            ),
        ):
            if reference is not None and reference.sop_class_uid != sop_class_uid:
                raise ValueError(
                    f"ResultVersion.{name}.sop_class_uid must be {sop_class_uid}, "
                    f"got {reference.sop_class_uid}"
                )

    def predecessor_report(self, study_instance_uid: str) -> InstanceReference | None:
        """The earlier version's SR as a reference, or None for version 1."""
        if self.predecessor_sop_instance_uid is None or not self.predecessor_series_instance_uid:
            return None
        return InstanceReference(
            study_instance_uid=study_instance_uid,
            series_instance_uid=self.predecessor_series_instance_uid,
            sop_class_uid=Comprehensive3DSRStorage,
            sop_instance_uid=self.predecessor_sop_instance_uid,
        )
