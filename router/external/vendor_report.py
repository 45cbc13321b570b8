"""What a vendor's answer states, as an ``AlgorithmResult``.

radrouter reads a vendor's TID 1500 Measurement Report (Comprehensive 3D, Comprehensive or
Enhanced SR) the way it reads its own: the study-level statement (the target Present, Absent
or Undetermined, CID 240, in the row 12 Qualitative Evaluations container, with its comment and
certainty) and each TID 1410 Planar ROI group as a finding on the image it references. An
answer without such a statement is "not assessed", with the reason: radrouter never guesses a
verdict, and the vendor's objects are sent on as the vendor made them either way.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from algorithms.contract import AlgorithmResult, Finding, ImageRegion, Verdict
from dicom_sr.read import FindingSummary, ReportSummary, read_measurement_report
from router.logs import log_safe

SR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    }
)


def vendor_result(
    answer: Sequence[Dataset], source_sop_instance_uids: Sequence[str], vendor: str
) -> AlgorithmResult:
    """The result a re-identified answer states. ``source_sop_instance_uids``: the source
    series' instances in the order the result writer references them (slice indices)."""
    reports = [ds for ds in answer if str(ds.get("SOPClassUID", "")) in SR_CLASSES]
    if not reports:
        kinds = sorted({str(ds.get("Modality", "") or "?") for ds in answer})
        return AlgorithmResult(
            Verdict.NOT_ASSESSED,
            reason=f"the answer from {vendor} ({', '.join(kinds)}) holds no structured report "
            "stating a result; its objects are sent as the vendor made them",
        )
    problems = []
    for report in reports:
        try:
            summary = read_measurement_report(report, require_algorithm=False)
        except Exception as exc:  # a vendor's object: anything may be wrong with it
            problems.append(log_safe(exc, 200))
            continue
        return _result(summary, source_sop_instance_uids, vendor)
    return AlgorithmResult(
        Verdict.NOT_ASSESSED,
        reason=f"the report from {vendor} is not a TID 1500 report stating a result that "
        f"radrouter can read: {problems[0]}",
    )


def _result(
    summary: ReportSummary, source_sop_instance_uids: Sequence[str], vendor: str
) -> AlgorithmResult:
    comment = summary.reason.strip()
    if summary.verdict is Verdict.NOT_ASSESSED:
        return AlgorithmResult(
            Verdict.NOT_ASSESSED,
            reason=f"{vendor} did not assess the study" + (f": {comment}" if comment else ""),
        )
    if summary.verdict is Verdict.ABSENT:
        return AlgorithmResult(
            Verdict.ABSENT,
            reason=comment,
            probability=summary.probability,
            measurements=summary.measurements,
        )
    slices = {uid: index for index, uid in enumerate(source_sop_instance_uids)}
    findings = []
    for found in summary.findings:
        finding = _finding(found, slices, summary.probability)
        if finding is not None:
            findings.append(finding)
    if not findings and summary.probability is None:
        return AlgorithmResult(
            Verdict.NOT_ASSESSED,
            reason=f"{vendor} states the target present but gives neither a certainty nor a "
            "finding on an image of the series sent; see the vendor's report",
        )
    return AlgorithmResult(
        Verdict.PRESENT,
        findings=tuple(findings),
        reason=comment,
        probability=summary.probability,
        measurements=summary.measurements,
    )


def _finding(
    found: FindingSummary, slices: dict[str, int], study_probability: float | None
) -> Finding | None:
    """A planar group on an image of the series sent, as a finding of the result; None when
    it names another image, has no outline of three points, or no certainty at all."""
    index = slices.get(found.referenced_sop_instance_uid)
    probability = found.probability if found.probability is not None else study_probability
    points = [(float(c), float(r)) for c, r in found.points]
    if index is None or probability is None or len(set(points)) < 3:
        return None
    if points[0] != points[-1]:
        points.append(points[0])
    columns = [c for c, _ in points[:-1]]
    rows = [r for _, r in points[:-1]]
    return Finding(
        finding_type=found.finding_type,
        probability=probability,
        centre_voxel=(float(index), sum(rows) / len(rows), sum(columns) / len(columns)),
        region=ImageRegion(index, tuple(points)),
        measurements=found.measurements,
        finding_site=found.finding_site,
        tracking_id=found.tracking_id,
        qualifiers=found.qualifiers,
    )
