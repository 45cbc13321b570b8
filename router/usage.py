"""Usage metering: what each algorithm processed, per month, source and outcome.

For the vendor's per-study bill and the hospital's own count: every finished run of an
algorithm on a series (a job done or failed for good; a run superseded by a later revision of
the study is not counted) by the month it finished (the router's local time), the algorithm,
the source (the calling AE title of the series' first image, and the site name the YAML gives
it in ``usage.sites``), whether the series was a QA or phantom series (``qa.signs``), and the
outcome: present, absent, not assessed, failed, or shadow (run in shadow mode, whatever it
found). ``studies`` counts distinct studies, ``series`` distinct series, ``runs`` the runs
(a study re-run after late images counts once in studies, twice in runs).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

from router.store.database import Database

OUTCOMES = ("present", "absent", "not_assessed", "failed", "shadow")
MONTH_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")

_QUERY = """
SELECT month, algorithm, source_ae, kind, outcome,
       COUNT(DISTINCT study_uid) AS studies,
       COUNT(DISTINCT series_uid) AS series,
       COUNT(*) AS runs
FROM (
    SELECT {month} AS month,
           j.algorithm AS algorithm,
           COALESCE((SELECT i.calling_ae FROM instances i WHERE i.series_uid = j.series_uid
                     ORDER BY i.received_at LIMIT 1), '') AS source_ae,
           CASE WHEN s.qa_sign IS NULL THEN 'clinical' ELSE 'qa' END AS kind,
           CASE WHEN j.state = 'failed' THEN 'failed'
                WHEN {shadow} THEN 'shadow'
                ELSE j.verdict END AS outcome,
           j.study_uid AS study_uid,
           j.series_uid AS series_uid
    FROM jobs j
    LEFT JOIN results r ON r.job_id = j.id
    LEFT JOIN series s ON s.series_uid = j.series_uid
    WHERE j.state IN ('done', 'failed') AND j.finished_at IS NOT NULL
) AS finished
WHERE CAST(? AS TEXT) IS NULL OR month = ?
GROUP BY month, algorithm, source_ae, kind, outcome
ORDER BY month, algorithm, source_ae, kind, outcome
"""


@dataclass(frozen=True)
class UsageRow:
    month: str
    """YYYY-MM, the router's local time."""
    algorithm: str
    source_ae: str
    site: str
    """``usage.sites`` name of the source AE title; "" when it has none."""
    kind: str
    """``clinical``, or ``qa`` for a QA or phantom series."""
    outcome: str
    """One of :data:`OUTCOMES`."""
    studies: int
    series: int
    runs: int


def read_usage(db: Database, sites: Mapping[str, str], month: str | None = None) -> list[UsageRow]:
    """The usage rows, all months or one (``YYYY-MM``; ValueError otherwise)."""
    if month is not None and not MONTH_PATTERN.match(month):
        raise ValueError(f"month must be YYYY-MM, got {month!r}")
    return [
        UsageRow(
            month=str(row["month"]),
            algorithm=str(row["algorithm"]),
            source_ae=str(row["source_ae"]),
            site=sites.get(str(row["source_ae"]), ""),
            kind=str(row["kind"]),
            outcome=str(row["outcome"]),
            studies=int(row["studies"]),
            series=int(row["series"]),
            runs=int(row["runs"]),
        )
        for row in db.query(
            _QUERY.format(
                month=db.sql_local_month("j.finished_at"),
                shadow=db.sql_json_true("r.summary", "shadow"),
            ),
            (month, month),
        )
    ]


def usage_from_dicts(items: Sequence[Mapping[str, object]]) -> list[UsageRow]:
    """Rows as the HTTP API gives them (``/api/usage``)."""
    return [UsageRow(**{f.name: item[f.name] for f in fields(UsageRow)}) for item in items]  # type: ignore[arg-type]


def usage_csv(rows: Sequence[UsageRow]) -> str:
    """The rows as CSV, a header line first; a value a spreadsheet would take for a formula
    (an AE title or site name starting with = + - @) is quoted as text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([f.name for f in fields(UsageRow)])
    for row in rows:
        writer.writerow([_cell(value) for value in asdict(row).values()])
    return buffer.getvalue()


def format_usage(rows: Sequence[UsageRow]) -> str:
    """A text table for the command line."""
    if not rows:
        return "no finished runs\n"
    lines = [
        f"{'month':<8} {'algorithm':<16} {'source':<17} {'site':<16} {'kind':<8} "
        f"{'outcome':<13} {'studies':>7} {'series':>7} {'runs':>6}"
    ]
    for row in rows:
        lines.append(
            f"{row.month:<8} {row.algorithm:<16} {row.source_ae or '-':<17} {row.site or '-':<16} "
            f"{row.kind:<8} {row.outcome:<13} {row.studies:>7} {row.series:>7} {row.runs:>6}"
        )
    return "\n".join(lines) + "\n"


def _cell(value: object) -> object:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value
