"""An algorithm's result as JSON for the database (findings without masks), and back.

The notify stage rebuilds the worklist notification from this after a restart, so every field
a channel reports (codes, probabilities, regions, measurements, qualifiers) is kept, and with
each finding the Series Number and Instance Number of its slice (``key_image``): a plugin
knows only slice indices, the radiologist's viewer only these numbers. Masks stay in the SEG;
nothing here is patient data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom import Dataset

from algorithms.contract import (
    AlgorithmResult,
    Code,
    Finding,
    ImageRegion,
    Measurement,
    Qualifier,
    Verdict,
)
from algorithms.finding_words import LATERALITY_WORDS, KeyImage
from router.run.series_loader import LoadedSeries


def _code(code: Code) -> list[str]:
    return [code.value, code.scheme_designator, code.meaning]


def _uncode(value: list[str]) -> Code:
    return Code(value[0], value[1], value[2])


def result_to_json(
    result: AlgorithmResult, key_images: Sequence[KeyImage | None] = ()
) -> dict[str, Any]:
    """``key_images``: one per finding (``key_images_of``), or none."""
    if key_images and len(key_images) != len(result.findings):
        raise ValueError(
            f"result_to_json: {len(key_images)} key_images for {len(result.findings)} finding(s)"
        )
    images = list(key_images) or [None] * len(result.findings)
    return {
        "verdict": result.verdict.value,
        "reason": result.reason,
        "probability": result.probability,
        "measurements": [_measurement(m) for m in result.measurements],
        "findings": [_finding(f, image) for f, image in zip(result.findings, images, strict=True)],
    }


def key_images_from_json(data: dict[str, Any]) -> tuple[KeyImage | None, ...]:
    """Each finding's key image, in finding order (``None`` where the result did not record
    one, as in results written before radrouter stored them)."""
    return tuple(_key_image(f.get("key_image")) for f in data.get("findings", []))


def key_images_of(result: AlgorithmResult, loaded: LoadedSeries) -> tuple[KeyImage | None, ...]:
    """Where each finding's region slice is in the received series: the Series Number and
    Instance Number of its source image (and the frame, in a multi-frame image)."""
    headers = {str(h.get("SOPInstanceUID", "")): h for h in loaded.headers}
    images: list[KeyImage | None] = []
    for finding in result.findings:
        index = finding.region.slice_index
        source = loaded.slices[index] if 0 <= index < len(loaded.slices) else None
        header = headers.get(source.sop_instance_uid) if source is not None else None
        if source is None or header is None:
            images.append(None)
            continue
        frames = _integer(header.get("NumberOfFrames")) or 1
        images.append(
            KeyImage(
                series_number=_integer(header.get("SeriesNumber")),
                instance_number=_positive(_integer(header.get("InstanceNumber"))),
                frame_number=source.frame_number if frames > 1 else None,
                laterality=_laterality(header),
            )
        )
    return tuple(images)


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


def _finding(f: Finding, image: KeyImage | None) -> dict[str, Any]:
    data = {
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
    if image is not None:
        data["key_image"] = {
            "series_number": image.series_number,
            "instance_number": image.instance_number,
            "frame_number": image.frame_number,
            "laterality": image.laterality,
        }
    return data


def _key_image(data: dict[str, Any] | None) -> KeyImage | None:
    if data is None:
        return None
    return KeyImage(
        series_number=data.get("series_number"),
        instance_number=data.get("instance_number"),
        frame_number=data.get("frame_number"),
        laterality=str(data.get("laterality", "")),
    )


def _integer(value: object) -> int | None:
    """An IS value (or the first of several) as an int; None when absent or not a number."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if value else None
    try:
        return None if value is None or str(value).strip() == "" else int(str(value).strip())
    except ValueError:
        return None


def _positive(value: int | None) -> int | None:
    return value if value is not None and value >= 1 else None


def _laterality(header: Dataset) -> str:
    """R or L from Image Laterality, else Laterality; "" for B, U or none."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(header.get(keyword, "") or "").strip().upper()
        if value in LATERALITY_WORDS:
            return value
    return ""


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
