"""The cases of a local validation: the studies in a folder, the series of each that the
algorithm would get, and the truth file that labels them."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from algorithms.contract import Purpose
from config.schema import RouterConfig
from router.route.matching import SeriesFacts, route
from router.validate.localisation import LocationSyntaxError, Point, parse_location

LOGGER = logging.getLogger(__name__)

_POSITIVE = frozenset({"1", "true", "yes", "present", "positive", "pos"})
_NEGATIVE = frozenset({"0", "false", "no", "absent", "negative", "neg"})


@dataclass(frozen=True)
class CaseSeries:
    study_uid: str
    series_uid: str
    modality: str
    scanner: str
    """ManufacturerModelName ("" when absent)."""
    paths: tuple[Path, ...]
    header: pydicom.Dataset
    """The header of the series' first instance (lowest Instance Number), no pixel data."""


@dataclass(frozen=True)
class Truth:
    positive: bool
    locations: tuple[Point, ...] = ()
    """Where the target is (positives only): points in patient coordinates, mm, LPS
    (``router.validate.localisation``); empty when the truth file gives none."""


class TruthFileError(ValueError):
    """The truth file cannot be read; the message names the line."""


def find_studies(
    folder: Path, progress: Callable[[int, int], object] | None = None
) -> dict[str, list[CaseSeries]]:
    """Every study under ``folder`` (recursively), its series; files that are not DICOM are
    left out."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    grouped: dict[tuple[str, str], list[tuple[int, Path, pydicom.Dataset]]] = {}
    broken = 0
    for done, path in enumerate(files, start=1):
        if progress is not None:
            progress(done, len(files))
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            study = str(header.get("StudyInstanceUID", ""))
            series = str(header.get("SeriesInstanceUID", ""))
            number = int(header.get("InstanceNumber") or 0)
        except (InvalidDicomError, OSError):
            continue  # not DICOM: a note, a spreadsheet
        except Exception:  # a broken file must not stop the validation of the others
            broken += 1
            continue
        if not study or not series:
            continue
        grouped.setdefault((study, series), []).append((number, path, header))
    if broken:  # counted, not named: a file's name may be a patient's
        LOGGER.warning("validation: %d file(s) are broken DICOM: left out", broken)
    studies: dict[str, list[CaseSeries]] = {}
    for (study, series), items in sorted(grouped.items()):
        items.sort(key=lambda item: (item[0], str(item[1])))
        first = items[0][2]
        studies.setdefault(study, []).append(
            CaseSeries(
                study_uid=study,
                series_uid=series,
                modality=str(first.get("Modality", "")),
                scanner=str(first.get("ManufacturerModelName", "")).strip(),
                paths=tuple(path for _, path, _ in items),
                header=first,
            )
        )
    return studies


def choose_series(
    series: list[CaseSeries],
    algorithm: str,
    modalities: Collection[str],
    config: RouterConfig | None = None,
    purposes: Mapping[str, Purpose] | None = None,
) -> CaseSeries | None:
    """The series of a study the algorithm gets: with ``config``, one its rules give to
    ``algorithm`` (as the router would route it); without, one of the algorithm's modalities.
    The one with the most images; None when there is none."""
    if config is not None:
        candidates = [
            s
            for s in series
            if any(
                action.run == algorithm
                for action in route(
                    config, SeriesFacts.from_dataset(s.header, "", ""), purposes
                ).actions
            )
        ]
    else:
        candidates = [s for s in series if s.modality in modalities]
    return max(candidates, key=lambda s: len(s.paths), default=None)


def read_truth(path: Path) -> dict[str, Truth]:
    """``study_uid,label[,location]`` with a header line; a label is 1/0, true/false, yes/no,
    present/absent or positive/negative; a location (positives only, may be empty) is
    ``x y z`` in mm, LPS, several points separated by ``;`` (``parse_location``)."""
    truth: dict[str, Truth] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            names = {name.strip().lower() for name in reader.fieldnames or []}
            if not {"study_uid", "label"} <= names:
                raise TruthFileError(f"{path}: the header must name study_uid and label")
            for row in reader:
                line = reader.line_num  # blank lines skipped by the reader still count
                if row.get(None):
                    raise TruthFileError(
                        f"{path}:{line}: more fields than the header names (a location with "
                        'commas must be quoted, "x,y,z", or written x y z)'
                    )
                cleaned = {
                    key.strip().lower(): (value or "").strip()
                    for key, value in row.items()
                    if key is not None
                }
                study, label = cleaned.get("study_uid", ""), cleaned.get("label", "").lower()
                if not study:
                    raise TruthFileError(f"{path}:{line}: no study_uid")
                if label not in _POSITIVE | _NEGATIVE:
                    raise TruthFileError(
                        f"{path}:{line}: label {label!r} is not 1/0 or present/absent"
                    )
                if study in truth:
                    raise TruthFileError(f"{path}:{line}: study {study} is listed twice")
                try:
                    locations = parse_location(cleaned.get("location", ""))
                except LocationSyntaxError as exc:
                    raise TruthFileError(f"{path}:{line}: {exc}") from None
                if locations and label in _NEGATIVE:
                    raise TruthFileError(
                        f"{path}:{line}: a location on a negative case (label {label!r})"
                    )
                truth[study] = Truth(label in _POSITIVE, locations)
    except OSError as exc:
        raise TruthFileError(f"{path}: {exc.strerror or exc}") from exc
    return truth
