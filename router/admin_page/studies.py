"""The admin page's recent studies: state, and per series the rules that fired, its QA sign
and its runs. The rule-by-rule explanation of a series comes from ``/studies/{uid}``."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from router.store.database import Database

MAX_STUDIES = 200


def recent_studies(db: Database, limit: int) -> list[dict[str, Any]]:
    limit = max(1, min(limit, MAX_STUDIES))
    studies = [
        dict(row)
        for row in db.query(
            "SELECT study_uid, state, first_received_at, last_received_at, completed_at, "
            "completion_reason, finished_at FROM studies ORDER BY last_received_at DESC LIMIT ?",
            (limit,),
        )
    ]
    uids = tuple(study["study_uid"] for study in studies)
    if not uids:
        return []
    marks = ", ".join("?" * len(uids))
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in db.query(
        "SELECT study_uid, series_uid, modality, series_description, instance_count, "
        f"rule_names, qa_sign FROM series WHERE study_uid IN ({marks}) "
        "ORDER BY first_received_at, series_uid",
        uids,
    ):
        series[row["study_uid"]].append(
            {
                "series_uid": row["series_uid"],
                "modality": row["modality"],
                "series_description": row["series_description"],
                "instances": row["instance_count"],
                "rules": [name for name in row["rule_names"].split(",") if name],
                "qa_sign": row["qa_sign"],
            }
        )
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in db.query(
        "SELECT id, study_uid, series_uid, algorithm, rule_name, state, verdict, attempts "
        f"FROM jobs WHERE study_uid IN ({marks}) AND state != 'superseded' ORDER BY id",
        uids,
    ):
        runs[row["study_uid"]].append(dict(row))
    for study in studies:
        study["series"] = series.get(study["study_uid"], [])
        study["jobs"] = runs.get(study["study_uid"], [])
    return studies
