"""Each destination gets the result objects it asks for (``destinations.<name>.results``): a
modern viewer SR, SEG and KOS; a legacy one the presentation state and the summary image."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from algorithms.registry import Registry
from config.loader import parse_config
from config.yaml_document import ConfigError
from router.service import wait_for
from testing.dicom_tools import run_dciodvfy
from testing.orthanc import Orthanc, running_orthanc
from testing.plugins import AlwaysNegative, DarkestRegionOutliner
from testing.router_process import StartRouter, storescu, study_uid_of, wait_state, write_series
from testing.storescp import ReceivingPacs, running_storescp

pytestmark = pytest.mark.slow

REGISTRY = Registry({"darkest_region": DarkestRegionOutliner, "always_negative": AlwaysNegative})
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _config(modern: ReceivingPacs, legacy: ReceivingPacs, algorithm: str) -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "destinations:\n"
        f"  modern: {modern.destination_yaml()}\n"
        f"  legacy: {{ae_title: {legacy.ae_title}, host: 127.0.0.1, port: {legacy.port}, "
        "results: [gsps, sc]}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10}\n"
        "rules:\n"
        "  - name: chest\n"
        "    when: {Modality: CT}\n"
        f"    run: {algorithm}\n"
        "    send_to: [modern, legacy]\n"
    )


def _sop_classes(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    found: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.filename = str(path)
        found.setdefault(str(ds.SOPClassUID), []).append(ds)
    return found


def test_a_legacy_destination_gets_the_presentation_state_and_summary_the_modern_one_sr_seg_kos(
    start_router: StartRouter, storescp: ReceivingPacs, tmp_path: Path
) -> None:
    with running_storescp(tmp_path / "legacy") as legacy:
        router = start_router(_config(storescp, legacy, "darkest_region"), registry=REGISTRY)
        paths = write_series(tmp_path / "study")
        storescu(router, paths)
        study = study_uid_of(paths)
        view = wait_state(router, study, {"done"})
        assert {d["destination"]: d["state"] for d in view["dispatches"]} == {
            "modern": "done",
            "legacy": "done",
        }
        modern = _sop_classes(storescp.folder)
        old = _sop_classes(legacy.folder)

    assert set(old) == {GSPS, SECONDARY_CAPTURE}, "only what the legacy viewer asked for"
    assert GSPS not in modern and SECONDARY_CAPTURE not in modern
    assert {str(ds.Modality) for dss in modern.values() for ds in dss} == {"SR", "SEG", "KO"}
    (state,) = old[GSPS]
    (summary,) = old[SECONDARY_CAPTURE]
    for ds in (state, summary):
        assert ds.StudyInstanceUID == study
        assert str(ds.SeriesDescription).startswith("AI")
        assert run_dciodvfy(Path(ds.filename)).errors == []
    assert int(state.SeriesNumber) >= 10000 and int(summary.SeriesNumber) >= 10000
    sources = {str(s.SOPInstanceUID) for s in map(pydicom.dcmread, paths)}
    annotated = {
        str(item.ReferencedSOPInstanceUID)
        for series in state.ReferencedSeriesSequence
        for item in series.ReferencedImageSequence
    }
    assert annotated and annotated <= sources
    assert summary.ImageType == ["DERIVED", "SECONDARY"] and summary.BurnedInAnnotation == "YES"
    assert summary.SourceImageSequence[0].ReferencedSOPInstanceUID in sources, (
        "the summary shows the key image, not a text page"
    )


def test_a_negative_result_gives_the_legacy_destination_a_summary_page_and_no_gsps(
    start_router: StartRouter, storescp: ReceivingPacs, tmp_path: Path
) -> None:
    with running_storescp(tmp_path / "legacy") as legacy:
        router = start_router(_config(storescp, legacy, "always_negative"), registry=REGISTRY)
        paths = write_series(tmp_path / "study")
        storescu(router, paths)
        wait_state(router, study_uid_of(paths), {"done"})
        old = _sop_classes(legacy.folder)
    assert set(old) == {SECONDARY_CAPTURE}
    (page,) = old[SECONDARY_CAPTURE]
    assert "SourceImageSequence" not in page
    assert "No finding" in str(page.ImageComments)


def test_orthanc_files_the_presentation_state_and_summary_in_the_source_study(
    start_router: StartRouter, tmp_path: Path
) -> None:
    # An Orthanc of its own: the session's is shared by tests that push studies to routers.
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        _files_in_orthanc(start_router, orthanc, tmp_path)


def _files_in_orthanc(start_router: StartRouter, orthanc: Orthanc, tmp_path: Path) -> None:
    router = start_router(
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "destinations:\n"
        f"  pacs: {{ae_title: {orthanc.ae_title}, host: 127.0.0.1, port: {orthanc.dicom_port}, "
        "results: [sr, gsps, sc]}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10}\n"
        "rules:\n"
        "  - {name: chest, when: {Modality: CT}, run: darkest_region, send_to: [pacs]}\n",
        registry=REGISTRY,
    )
    paths = write_series(tmp_path / "study")
    for path in paths:  # the PACS holds the study the results belong to
        orthanc.upload(path)
    study = study_uid_of(paths)
    storescu(router, paths)
    wait_state(router, study, {"done"})
    study_id = orthanc.study_id_for_uid(study)
    assert study_id is not None

    def filed() -> bool:
        return all(orthanc.modality_instances(study_id, m) for m in ("SR", "PR", "OT"))

    assert wait_for(filed, 30, 0.2), "SR, GSPS and summary filed in the source study"
    assert orthanc.modality_instances(study_id, "SEG") == [], "not asked for"
    assert len(orthanc.modality_instances(study_id, "CT")) == len(paths)


@pytest.mark.parametrize(
    ("results", "message"),
    [("[]", "at least one"), ("[sr, sr]", "more than once"), ("[sr, pdf]", "results")],
)
def test_a_destination_must_name_known_result_objects_once(results: str, message: str) -> None:
    text = (
        "destinations:\n"
        f"  pacs: {{ae_title: PACS, host: 127.0.0.1, port: 104, results: {results}}}\n"
    )
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "test.yaml")
    assert parse_config(
        "destinations:\n  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}\n", "ok.yaml"
    ).destinations["pacs"].results == ("sr", "seg", "kos")
