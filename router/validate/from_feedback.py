"""A local validation without a truth file: the algorithm's shadow-mode results, with the
radiologists' feedback on each as the truth.

A reader who agrees with a result confirms its verdict; one who disagrees says the opposite
is true. So the truth of a result is positive when it said *present* and the reader agreed,
or said *absent* and the reader disagreed. The latest feedback on a result counts. A result
without feedback has no truth and is left out (counted); a not-assessed result stays not
assessed whatever the reader said.
"""

from __future__ import annotations

import json
from typing import Any

from algorithms.contract import AlgorithmInfo, Verdict
from router.store.database import Database
from router.validate.cases import Truth
from router.validate.run import CaseOutcome, ValidationRun, case_score

_QUERY = """
SELECT r.id, r.study_uid, r.verdict, r.summary, f.agree
FROM results r
JOIN feedback f ON f.id = (
    SELECT id FROM feedback WHERE result_id = r.id ORDER BY at DESC, id DESC LIMIT 1
)
WHERE r.algorithm = ? AND r.created_at >= ?
  AND {shadow}
ORDER BY r.created_at
"""


def validation_from_feedback(
    db: Database, info: AlgorithmInfo, *, since: float = 0.0, threshold: float | None = None
) -> ValidationRun:
    """The shadow-mode results of ``info.name`` made at or after ``since`` that a reader gave
    feedback on, as validation cases."""
    cases = []
    query = _QUERY.format(shadow=db.sql_json_true("r.summary", "shadow"))
    for row in db.query(query, (info.name, since)):
        summary: dict[str, Any] = json.loads(row["summary"] or "{}")
        verdict = Verdict(str(row["verdict"]))
        agree = bool(row["agree"])
        scanner = str((summary.get("scanner") or {}).get("model", ""))
        if verdict is Verdict.NOT_ASSESSED:
            truth = Truth(False)  # unused: the case is not assessed
            cases.append(
                CaseOutcome(
                    str(row["study_uid"]),
                    scanner,
                    truth,
                    verdict,
                    None,
                    str(summary.get("reason", "")),
                )
            )
            continue
        truth = Truth((verdict is Verdict.PRESENT) == agree)
        cases.append(
            CaseOutcome(
                str(row["study_uid"]),
                scanner,
                truth,
                verdict,
                case_score(
                    verdict,
                    summary.get("probability"),
                    [float(f.get("probability", 0.0)) for f in summary.get("findings") or []],
                ),
            )
        )
    without = db.query_one(
        "SELECT COUNT(*) AS n FROM results r WHERE r.algorithm = ? AND r.created_at >= ? "
        f"AND {db.sql_json_true('r.summary', 'shadow')} "
        "AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.result_id = r.id)",
        (info.name, since),
    )
    return ValidationRun(
        info=info,
        source=f"shadow-mode results with readers' feedback in {db.describe()}",
        cases=tuple(cases),
        truth_without_study=(),
        studies_without_truth=int(without["n"]) if without is not None else 0,
        threshold=threshold,
    )
