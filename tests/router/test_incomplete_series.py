"""A series known to lack images (ImagesInAcquisition) over real C-STORE: no result on the
part before the hard cap, "not assessed: incomplete series" at it, the whole series once the
rest is resent."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import ClassVar

import pydicom
import pytest

from algorithms.contract import AlgorithmResult, StudyInput
from algorithms.registry import Registry
from dicom_sr.read import read_measurement_report
from router.assemble.completion import CompletionReason
from router.service import wait_for
from testing.dicom_tools import make_ct_slices
from testing.plugins import AlwaysNegative
from testing.router_process import (
    DCMTK_ENV,
    RouterUnderTest,
    StartRouter,
    api_get,
    storescu,
    wait_state,
)

pytestmark = pytest.mark.slow

SLICES = 100
SENT_FIRST = 40


class SliceCountingNegative(AlwaysNegative):
    """AlwaysNegative that remembers how many slices each run was given."""

    slices_seen: ClassVar[list[int]] = []

    def run(self, study: StudyInput) -> AlgorithmResult:
        type(self).slices_seen.append(int(study.series.array.shape[0]))
        return super().run(study)


REGISTRY = Registry({"always_negative": SliceCountingNegative})


def config(hard_cap_s: float) -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 1, study_idle_s: 2, "
        f"hard_cap_s: {hard_cap_s}}}\n"
        "jobs: {retry: {max_attempts: 1, backoff_initial_s: 0.1}}\n"
        "rules:\n"
        "  - name: chest-ct\n"
        "    when: {Modality: CT, BodyPartExamined: CHEST}\n"
        "    run: always_negative\n"
    )


def ct_with_images_in_acquisition(folder: Path) -> tuple[str, list[Path]]:
    folder.mkdir(parents=True)
    paths = []
    for ds in make_ct_slices(SLICES, rows=16, cols=16):
        ds.ImagesInAcquisition = SLICES
        path = folder / f"{ds.InstanceNumber:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return str(ds.StudyInstanceUID), paths


def send_and_abort(router: RouterUnderTest, paths: list[Path]) -> None:
    """One association that carries ``paths`` and is then aborted, as a cut connection."""
    subprocess.run(
        [
            "/usr/bin/storescu",
            "--abort",
            *("-aet", "PACS", "-aec", "RADROUTER", "127.0.0.1", str(router.dicom_port)),
            *map(str, paths),
        ],
        check=True,
        capture_output=True,
        env=DCMTK_ENV,
        timeout=60,
    )


@pytest.mark.parametrize("ending", ["release", "abort"])
def test_partial_series_waits_past_the_idle_timers_for_the_rest(
    start_router: StartRouter, tmp_path: Path, ending: str
) -> None:
    SliceCountingNegative.slices_seen.clear()
    router = start_router(config(hard_cap_s=120), registry=REGISTRY)
    study_uid, paths = ct_with_images_in_acquisition(tmp_path / "ct")
    first, rest = paths[:SENT_FIRST], paths[SENT_FIRST:]
    if ending == "abort":
        send_and_abort(router, first)
    else:
        storescu(router, first)
    time.sleep(3.5)  # past series_idle_s (1) and study_idle_s (2), well before the hard cap
    view = api_get(router, f"/studies/{study_uid}")
    assert view["state"] == "receiving"
    assert view["series"][0]["instances"] == SENT_FIRST
    assert view["jobs"] == [] and view["results"] == []

    def held() -> list[str]:
        return [
            e["detail"]
            for e in router.service.db.query(
                "SELECT detail FROM events WHERE study_uid = ? AND kind = 'study_waiting_for_images'",
                (study_uid,),
            )
        ]

    # Written at the assembler's next look once the study has been idle: poll, not a sleep.
    assert wait_for(lambda: held() == ["incomplete series (40 of 100 images)"], 10), held()

    storescu(router, rest)  # the PACS resends the rest
    view = wait_state(router, study_uid, {"done"}, timeout_s=30)
    assert view["revision"] == 1
    assert view["completion_reason"] == CompletionReason.EVIDENCE.value
    assert [j["verdict"] for j in view["jobs"]] == ["absent"]
    assert [(r["version_number"], r["verdict"]) for r in view["results"]] == [(1, "absent")]
    assert SliceCountingNegative.slices_seen == [SLICES]


def test_partial_series_at_the_hard_cap_is_not_assessed_then_resent_whole(
    start_router: StartRouter, tmp_path: Path
) -> None:
    SliceCountingNegative.slices_seen.clear()
    router = start_router(config(hard_cap_s=4), registry=REGISTRY)
    study_uid, paths = ct_with_images_in_acquisition(tmp_path / "ct")
    storescu(router, paths[:SENT_FIRST])

    view = wait_state(router, study_uid, {"done"}, timeout_s=30)
    reason = "incomplete series (40 of 100 images)"
    assert view["completion_reason"] == CompletionReason.HARD_CAP.value
    assert [j["verdict"] for j in view["jobs"]] == ["not_assessed"]
    (result,) = view["results"]
    assert result["verdict"] == "not_assessed" and result["summary"]["reason"] == reason
    report = read_measurement_report(pydicom.dcmread(result["path"]))
    assert report.verdict.value == "not_assessed" and report.reason == reason
    (flag,) = view["flags"]
    assert flag["verdict"] == "not_assessed" and reason in flag["reason"]
    assert SliceCountingNegative.slices_seen == []  # the algorithm never saw the part

    storescu(router, paths[SENT_FIRST:])  # the rest, after the hard cap: a new version

    def two_results() -> bool:
        return len(api_get(router, f"/studies/{study_uid}")["results"]) == 2

    assert wait_for(two_results, 30)
    view = wait_state(router, study_uid, {"done"}, timeout_s=30)
    assert view["revision"] == 2
    assert [(r["version_number"], r["verdict"]) for r in view["results"]] == [
        (1, "not_assessed"),
        (2, "absent"),
    ]
    assert SliceCountingNegative.slices_seen == [SLICES]
