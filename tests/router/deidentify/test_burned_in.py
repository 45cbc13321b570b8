"""Series whose pixels may carry the patient's identity are refused, with the reason."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, UltrasoundImageStorage

from router.deidentify import (
    Deidentifier,
    DeidKeys,
    DeidOptions,
    MappingStore,
    SeriesRefusedError,
    burned_in_refusal,
    deidentify_series,
)
from tests.router.deidentify.identified import ct_series


def _instance(modality: str, sop_class: str, burned_in: str | None) -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    ds.SOPClassUID = sop_class
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    return ds


def test_a_series_that_says_yes_is_refused_with_the_reason(
    keys: DeidKeys, store: MappingStore
) -> None:
    series = ct_series(3)
    series[1].BurnedInAnnotation = "YES"
    with pytest.raises(SeriesRefusedError, match="Burned In Annotation YES"):
        deidentify_series(series, Deidentifier(DeidOptions(), keys), store)
    assert store.study(series[0].StudyInstanceUID) is None  # nothing recorded, nothing sent
    allowed = Deidentifier(DeidOptions(allow_burned_in_annotation=True), keys)
    assert len(deidentify_series(series, allowed, store)) == 3


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [
        ("US", UltrasoundImageStorage),
        ("OT", SecondaryCaptureImageStorage),
        ("CT", SecondaryCaptureImageStorage),
        ("XC", "1.2.840.10008.5.1.4.1.1.77.1.4"),
    ],
)
def test_unknown_where_text_in_pixels_is_likely_is_refused(modality: str, sop_class: str) -> None:
    reason = burned_in_refusal([_instance(modality, sop_class, None)])
    assert reason is not None and "unknown" in reason
    assert burned_in_refusal([_instance(modality, sop_class, "NO")]) is None
    assert burned_in_refusal([_instance(modality, sop_class, None)], allow=True) is None


def test_unknown_on_a_ct_or_mr_is_not_refused() -> None:
    assert burned_in_refusal([_instance("CT", "1.2.840.10008.5.1.4.1.1.2", None)]) is None
    assert burned_in_refusal([_instance("MR", "1.2.840.10008.5.1.4.1.1.4", None)]) is None
