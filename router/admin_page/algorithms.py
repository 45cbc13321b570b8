"""The admin page's algorithms: each installed or configured one with its version, purpose,
device, operating points (per scanner model), shadow mode, parameters, last run and its
failure rate over a recent window."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from algorithms.registry import Registry
from config.schema import RouterConfig
from router.external.declared import external_info
from router.store.database import Database

DEFAULT_WINDOW_DAYS = 7.0


def algorithm_rows(
    db: Database,
    config: RouterConfig,
    registry: Registry,
    readiness: Mapping[str, Any],
    window_days: float = DEFAULT_WINDOW_DAYS,
) -> list[dict[str, Any]]:
    since = time.time() - max(0.0, window_days) * 86400.0
    runs = {
        row["algorithm"]: row
        for row in db.query(
            "SELECT algorithm, MAX(finished_at) AS last_run, "
            "  COUNT(CASE WHEN state = 'done' AND finished_at >= ? THEN 1 END) AS done, "
            "  COUNT(CASE WHEN state = 'failed' AND finished_at >= ? THEN 1 END) AS failed, "
            "  COUNT(CASE WHEN state = 'done' AND verdict = 'present' AND finished_at >= ? "
            "    THEN 1 END) AS present, "
            "  COUNT(CASE WHEN state = 'done' AND verdict = 'not_assessed' AND finished_at >= ? "
            "    THEN 1 END) AS not_assessed "
            "FROM jobs WHERE state IN ('done', 'failed') GROUP BY algorithm",
            (since, since, since, since),
        )
    }
    status = readiness.get("model_status", {})
    load_errors = readiness.get("model_load_errors", {})
    routed = config.algorithm_names()
    rows = []
    external = config.external_algorithms
    for name in sorted(set(registry.names()) | routed | set(external)):
        settings = config.algorithms.get(name)
        row = runs.get(name)
        done = int(row["done"] or 0) if row is not None else 0
        failed = int(row["failed"] or 0) if row is not None else 0
        entry: dict[str, Any] = {
            "name": name,
            "installed": name in registry or name in external,
            "routed": name in routed,
            "device": (
                f"external: {external[name].vendor} ({external[name].send_to})"
                if name in external
                else status.get(name, {}).get("device") or "not loaded"
            ),
            "load_error": load_errors.get(name, ""),
            "threshold": None if settings is None else settings.threshold,
            "thresholds_by_model": {} if settings is None else dict(settings.thresholds_by_model),
            "shadow": False if settings is None else settings.shadow,
            "parameters": {} if settings is None else dict(settings.parameters),
            "last_run": None if row is None else row["last_run"],
            "window_days": window_days,
            "runs": done + failed,
            "failed": failed,
            "failure_rate": failed / (done + failed) if done + failed else None,
            "present": 0 if row is None else int(row["present"] or 0),
            "not_assessed": 0 if row is None else int(row["not_assessed"] or 0),
        }
        if name in registry or name in external:
            info = external_info(name, external[name]) if name in external else registry.info(name)
            entry |= {
                "display_name": info.display_name,
                "version": info.version,
                "manufacturer": info.manufacturer,
                "purpose": info.purpose.value,
                "clinical_use": info.clinical_use,
                "modalities": sorted(info.modalities),
            }
        rows.append(entry)
    return rows
