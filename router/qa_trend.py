"""The trend of quality-control results per scanner: each run of a quality-control algorithm
(``ct_water_qa``: water CT number, noise, uniformity) in time order, grouped by the scanner
that made the phantom scan (manufacturer, model, station, serial number), with its verdict
(``present``: out of tolerance) and its study-level measurements."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from router.store.database import Database


@dataclass(frozen=True)
class TrendPoint:
    at: float
    """When the result was made (Unix time)."""
    verdict: str
    measurements: dict[str, float]
    version_number: int


@dataclass(frozen=True)
class ScannerTrend:
    algorithm: str
    scanner: dict[str, str]
    points: list[TrendPoint] = field(default_factory=list)


def read_trend(db: Database, algorithms: Collection[str], since: float = 0.0) -> list[ScannerTrend]:
    """Results of ``algorithms`` (the quality-control ones) made at or after ``since``, the
    latest version of each study's result, per algorithm and scanner."""
    if not algorithms:
        return []
    marks = ", ".join("?" * len(algorithms))
    rows = db.query(
        f"SELECT algorithm, verdict, summary, created_at, version_number FROM results r "
        f"WHERE algorithm IN ({marks}) AND created_at >= ? AND version_number = ("
        "SELECT MAX(version_number) FROM results x "
        "WHERE x.study_uid = r.study_uid AND x.algorithm = r.algorithm) "
        "ORDER BY created_at",
        (*sorted(algorithms), since),
    )
    trends: dict[tuple[str, str], ScannerTrend] = {}
    for row in rows:
        summary: dict[str, Any] = json.loads(row["summary"] or "{}")
        scanner = {str(k): str(v) for k, v in (summary.get("scanner") or {}).items()}
        key = (str(row["algorithm"]), json.dumps(scanner, sort_keys=True))
        trend = trends.setdefault(key, ScannerTrend(str(row["algorithm"]), scanner))
        trend.points.append(
            TrendPoint(
                at=float(row["created_at"]),
                verdict=str(row["verdict"]),
                measurements={
                    str(k): float(v) for k, v in (summary.get("measurements") or {}).items()
                },
                version_number=int(row["version_number"]),
            )
        )
    return list(trends.values())
