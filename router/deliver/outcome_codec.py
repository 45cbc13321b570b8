"""An algorithm's result as JSON for the database (findings without masks), and back.

The notify stage rebuilds the worklist notification from this after a restart, so every field
a channel reports (codes, probabilities, regions, measurements, qualifiers) is kept. Masks
stay in the SEG; nothing here is patient data.
"""

from __future__ import annotations

from typing import Any

from algorithms.contract import (
    AlgorithmResult,
    Code,
    Finding,
    ImageRegion,
    Measurement,
    Qualifier,
    Verdict,
)


def _code(code: Code) -> list[str]:
    return [code.value, code.scheme_designator, code.meaning]


def _uncode(value: list[str]) -> Code:
    return Code(value[0], value[1], value[2])


def result_to_json(result: AlgorithmResult) -> dict[str, Any]:
    return {
        "verdict": result.verdict.value,
        "reason": result.reason,
        "probability": result.probability,
        "measurements": [_measurement(m) for m in result.measurements],
        "findings": [_finding(f) for f in result.findings],
    }


def result_from_json(data: dict[str, Any]) -> AlgorithmResult:
    return AlgorithmResult(
        verdict=Verdict(data["verdict"]),
        reason=str(data.get("reason", "")),
        probability=data.get("probability"),
        measurements=tuple(_unmeasurement(m) for m in data.get("measurements", [])),
        findings=tuple(_unfinding(f) for f in data.get("findings", [])),
    )


def _measurement(m: Measurement) -> dict[str, Any]:
    return {"name": _code(m.name), "value": m.value, "unit": _code(m.unit)}


def _unmeasurement(data: dict[str, Any]) -> Measurement:
    return Measurement(_uncode(data["name"]), float(data["value"]), _uncode(data["unit"]))


def _finding(f: Finding) -> dict[str, Any]:
    return {
        "finding_type": _code(f.finding_type),
        "probability": f.probability,
        "centre_voxel": list(f.centre_voxel),
        "region": {
            "slice_index": f.region.slice_index,
            "points": [list(p) for p in f.region.points],
        },
        "measurements": [_measurement(m) for m in f.measurements],
        "finding_site": None if f.finding_site is None else _code(f.finding_site),
        "tracking_id": f.tracking_id,
        "qualifiers": [[_code(q.name), _code(q.value)] for q in f.qualifiers],
    }


def _unfinding(data: dict[str, Any]) -> Finding:
    centre = data["centre_voxel"]
    region = data["region"]
    return Finding(
        finding_type=_uncode(data["finding_type"]),
        probability=float(data["probability"]),
        centre_voxel=(float(centre[0]), float(centre[1]), float(centre[2])),
        region=ImageRegion(
            int(region["slice_index"]),
            tuple((float(p[0]), float(p[1])) for p in region["points"]),
        ),
        measurements=tuple(_unmeasurement(m) for m in data.get("measurements", [])),
        finding_site=None if data.get("finding_site") is None else _uncode(data["finding_site"]),
        tracking_id=str(data.get("tracking_id", "")),
        qualifiers=tuple(
            Qualifier(_uncode(name), _uncode(value)) for name, value in data.get("qualifiers", [])
        ),
    )
