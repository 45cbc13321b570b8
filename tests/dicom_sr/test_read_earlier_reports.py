"""SRs that radrouter wrote before 2026-12 still read back (a prior exam's SR in the PACS is
one): their study-level statement is a TID 1501 group in Imaging Measurements, where OHIF
could not show the report; since then it is in the row 12 Qualitative Evaluations container.

The files in ``data/`` were written by the builder of that time from the fixtures
``masked_result`` and ``not_assessed_result`` (``info`` as the algorithm).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from algorithms.contract import AlgorithmInfo, AlgorithmResult, Verdict
from dicom_sr.read import read_measurement_report

DATA = Path(__file__).parent / "data"


def test_a_present_report_with_a_tid_1501_study_group_reads_back_whole(
    masked_result: AlgorithmResult, info: AlgorithmInfo
) -> None:
    report = read_measurement_report(pydicom.dcmread(DATA / "sr_2026-11_present.dcm"))

    assert report.verdict is Verdict.PRESENT
    assert (report.algorithm_name, report.algorithm_version) == (info.name, info.version)
    assert report.probability == pytest.approx(0.97)
    assert report.measurements == masked_result.measurements
    assert [f.tracking_id for f in report.findings] == ["Nodule 1", "Nodule 2", "Nodule 3"]
    assert [f.probability for f in report.findings] == pytest.approx(
        [f.probability for f in masked_result.findings]
    )


def test_a_not_assessed_report_with_a_tid_1501_study_group_gives_its_reason(
    not_assessed_result: AlgorithmResult, info: AlgorithmInfo
) -> None:
    report = read_measurement_report(pydicom.dcmread(DATA / "sr_2026-11_not_assessed.dcm"))

    assert report.verdict is Verdict.NOT_ASSESSED
    assert report.reason == not_assessed_result.reason
    assert report.algorithm_name == info.name
    assert report.findings == ()
