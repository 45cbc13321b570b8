"""The admin page's live overview: studies in flight per stage, queue depths, the workers,
the models (device, load errors), the configuration's state."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from config.schema import RouterConfig
from router.admin import DatabaseSource
from router.store.database import Database

STAGES = (
    ("receiving", "studies", ("receiving",), "images arriving; waiting for the study to complete"),
    ("routing", "studies", ("complete",), "complete; rules being applied"),
    ("priors", "jobs", ("waiting",), "runs waiting for a prior exam"),
    ("queued", "jobs", ("queued",), "runs waiting for a worker"),
    ("running", "jobs", ("running",), "runs on a model now"),
    (
        "external",
        "external_requests",
        ("awaiting",),
        "series at an external algorithm's vendor, waiting for the answer",
    ),
    ("sending", "dispatches", ("pending", "sending"), "results waiting to be sent to PACS"),
    ("notifying", "deliveries", ("pending", "sending"), "worklist messages waiting (HL7, FHIR)"),
)
"""(name, table, states, what it means): the pipeline in the order a study passes it."""
DEAD_STATES = {"jobs": "failed", "dispatches": "dead", "deliveries": "dead"}


def overview(db: Database, config: RouterConfig, readiness: Mapping[str, Any]) -> dict[str, Any]:
    counts = DatabaseSource(db).counts()
    awaiting = _awaiting_vendors(db)
    stages = []
    for name, table, states, meaning in STAGES:
        if table == "external_requests":
            count = awaiting
        else:
            count = sum(counts.get(table, {}).get(state, 0) for state in states)
        if name == "priors":  # a waiting job waits for its prior or for a vendor's answer
            count = max(0, count - awaiting)
        oldest = _oldest(db, table, states)
        stages.append(
            {
                "stage": name,
                "count": count,
                "meaning": meaning,
                "oldest_s": None if oldest is None else max(0.0, time.time() - oldest),
            }
        )
    models = readiness.get("model_status", {})
    return {
        "generated_at": time.time(),
        "ready": bool(readiness.get("ready", False)),
        "stages": stages,
        "counts": counts,
        "dead_letters": {
            table: counts.get(table, {}).get(state, 0) for table, state in DEAD_STATES.items()
        },
        "workers": {"configured": config.jobs.workers, "busy": counts["jobs"].get("running", 0)},
        "models": [
            {
                "name": name,
                "device": status.get("device", ""),
                "backend": status.get("backend", ""),
                "max_concurrent": status.get("max_concurrent"),
            }
            for name, status in sorted(models.items())
        ],
        "models_not_loaded": readiness.get("models_not_loaded", []),
        "model_load_errors": readiness.get("model_load_errors", {}),
        "plugin_problems": readiness.get("plugin_problems", {}),
        "config": readiness.get("config", {}),
        "dicom_port": readiness.get("dicom_port"),
        "database": readiness.get("database", ""),
    }


def _awaiting_vendors(db: Database) -> int:
    row = db.query_one(  # sent, and waiting (while the send runs, the job is running)
        "SELECT COUNT(*) AS n FROM external_requests r JOIN jobs j ON j.id = r.job_id "
        "WHERE r.state = 'awaiting' AND j.state = 'waiting'"
    )
    return 0 if row is None else int(row["n"])


def _oldest(db: Database, table: str, states: tuple[str, ...]) -> float | None:
    """When the oldest item in ``states`` arrived (the study's first image, the item's row)."""
    column = {"studies": "first_received_at", "external_requests": "sent_at"}.get(
        table, "created_at"
    )
    marks = ", ".join("?" * len(states))
    row = db.query_one(
        f"SELECT MIN({column}) AS oldest FROM {table} WHERE state IN ({marks})", states
    )
    return None if row is None or row["oldest"] is None else float(row["oldest"])
