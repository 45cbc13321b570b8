"""An external algorithm end to end against real servers: a second Orthanc plays the vendor
(its Python plug-in analyses what arrives and stores an SR back to radrouter), a first Orthanc
is the PACS. Nothing that names the patient or the study reaches the vendor; the vendor's SR
arrives re-identified in the source study in the PACS with radrouter's own SR, and the flag is
raised; a vendor that never answers gives "not assessed: no answer from VENDOR within N min"."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from algorithms.contract import Verdict
from algorithms.registry import Registry
from dicom_sr.read import read_measurement_report
from router.service import wait_for
from testing.dicom_tools import make_ct_slices, run_dciodvfy
from testing.orthanc import DICOMWEB_PLUGIN, PYTHON_PLUGIN, Orthanc, free_port, running_orthanc
from testing.router_process import RouterUnderTest, StartRouter, api_get, storescu
from testing.vendor_analysis import ALGORITHM, VENDOR, VERSION
from testing.vendor_orthanc import running_vendor

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (PYTHON_PLUGIN.exists() and DICOMWEB_PLUGIN.exists()),
        reason="Debian orthanc-python and orthanc-dicomweb are needed",
    ),
]

REGISTRY = Registry({})
SR = "1.2.840.10008.5.1.4.1.1.88.34"
IDENTITY = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "MRN-7731-0042",
    "PatientBirthDate": "19580317",
    "AccessionNumber": "ACC-99123",
    "InstitutionName": "St Elsewhere General Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyID": "STU-4471",
}
USER, PASSWORD_ENV, PASSWORD = "radrouter", "RADROUTER_TEST_VENDOR_PASSWORD", "vendor-Secret-7"


def router_yaml(
    router_port: int, pacs: Orthanc, vendor_endpoint: str, within_min: float, extra: str = ""
) -> str:
    return (
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {router_port}}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "destinations:\n"
        f"  pacs: {{ae_title: ORTHANC, host: 127.0.0.1, port: {pacs.dicom_port}}}\n"
        f"  acme: {vendor_endpoint}\n"
        "dispatch: {retry: {max_attempts: 3, backoff_initial_s: 0.2}, probe_interval_s: 0}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 2, study_idle_s: 10}\n"
        "external_algorithms:\n"
        "  acme_density:\n"
        f"    vendor: {VENDOR}\n"
        f"    version: '{VERSION}'\n"
        "    modalities: [CT]\n"
        "    target: {value: '4147007', scheme: SCT, meaning: Mass}\n"
        "    send_to: acme\n"
        "    answer_idle_s: 1\n"
        f"    answer_within_min: {within_min}\n"
        f"{extra}"
        "rules:\n"
        "  - name: chest\n"
        "    when: {Modality: CT}\n"
        "    run: acme_density\n"
        "    send_to: [pacs]\n"
        "worklist:\n"
        "  priority_policy:\n"
        "    acme_density:\n"
        "      - {when: {finding: Mass, min_probability: 0.5}, raise_to: stat, label: dense mass}\n"
    )


def identified_series(folder: Path, n: int = 6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in make_ct_slices(n):
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def originals(paths: list[Path]) -> set[str]:
    """Every value that would identify the patient, the study or the images."""
    values = set(IDENTITY.values()) | {"Doe", "Jane", "MRN-7731"}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        values |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
        values.add(str(ds.FrameOfReferenceUID))
    return values


def everything_held(server: Orthanc) -> list[bytes]:
    return [server.instance_file(i) for i in server.get("/instances")]


def external_request(router: RouterUnderTest, study_uid: str) -> dict[str, Any] | None:
    row = router.service.db.query_one(
        "SELECT * FROM external_requests WHERE study_uid = ?", (study_uid,)
    )
    return None if row is None else dict(row)


def pacs_objects(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    study_id = pacs.study_id_for_uid(study_uid)
    if study_id is None:
        return []
    return [
        pydicom.dcmread(pydicom.filebase.DicomBytesIO(pacs.instance_file(i["ID"])))
        for i in pacs.instances_of_study(study_id)
    ]


def test_the_vendor_answer_comes_back_re_identified_into_the_pacs_with_the_flag(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router_port = free_port()
    with (
        running_orthanc(tmp_path / "pacs") as pacs,
        running_vendor(tmp_path / "vendor", router_port) as vendor,
    ):
        endpoint = f"{{ae_title: VENDOR, host: 127.0.0.1, port: {vendor.dicom_port}}}"
        router = start_router(router_yaml(router_port, pacs, endpoint, 5), registry=REGISTRY)
        paths = identified_series(tmp_path / "ct")
        study_uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
        started = time.monotonic()
        storescu(router, paths)

        def delivered() -> bool:
            held = pacs_objects(pacs, study_uid)
            return sum(str(ds.SOPClassUID) == SR for ds in held) == 2

        assert wait_for(delivered, 120, 0.5), (
            external_request(router, study_uid),
            (tmp_path / "vendor" / "orthanc.log").read_text()[-3000:],
        )
        elapsed = time.monotonic() - started
        request = external_request(router, study_uid)
        assert request is not None and request["state"] == "answered", request
        print(
            f"\nround trip: last image sent -> both SRs in the PACS {elapsed:.1f} s; "
            f"request: {request['outcome']}"
        )

        # What the vendor holds: the images and its own SR, none naming patient or study.
        held = everything_held(vendor)
        assert len(held) == len(paths) + 1
        for value in originals(paths):
            assert not any(value.encode() in data for data in held), value
        sent = pydicom.dcmread(pydicom.filebase.DicomBytesIO(held[0]))
        assert sent.PatientIdentityRemoved == "YES"

        # In the PACS: radrouter's SR and the vendor's, both in the source study, re-identified.
        objects = {
            str(ds.SeriesDescription): ds
            for ds in pacs_objects(pacs, study_uid)
            if str(ds.SOPClassUID) == SR
        }
        vendor_sr = objects[f"{ALGORITHM} {VERSION}"]
        assert str(vendor_sr.SOPClassUID) == SR
        assert (str(vendor_sr.PatientName), vendor_sr.PatientID) == ("Doe^Jane^Q", "MRN-7731-0042")
        assert vendor_sr.AccessionNumber == "ACC-99123"
        assert "PatientIdentityRemoved" not in vendor_sr
        evidence = {
            str(item.ReferencedSOPInstanceUID)
            for study in vendor_sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence
        }
        assert evidence == {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}
        vendor_file = tmp_path / "vendor-sr.dcm"
        vendor_sr.save_as(vendor_file, enforce_file_format=True)
        assert run_dciodvfy(vendor_file).errors == []

        [ours] = [ds for name, ds in objects.items() if name != f"{ALGORITHM} {VERSION}"]
        report = read_measurement_report(ours)
        assert report.verdict is Verdict.PRESENT
        assert (report.algorithm_name, report.algorithm_version) == ("acme_density", VERSION)
        assert VENDOR in {str(e.Manufacturer) for e in ours.ContributingEquipmentSequence}
        [finding] = report.findings
        assert finding.finding_type.meaning == "Mass"
        assert finding.referenced_sop_instance_uid in evidence
        ours_file = tmp_path / "ours.dcm"
        ours.save_as(ours_file, enforce_file_format=True)
        assert run_dciodvfy(ours_file).errors == []

        [listed] = httpx.get(
            f"http://127.0.0.1:{router.http_port}/api/worklist", timeout=10
        ).json()["studies"]
        assert (listed["priority"], listed["raised"]) == ("stat", True), listed
        assert listed["reason"].startswith("AI: suspected dense mass"), listed
        print(f"worklist reason: {listed['reason']}")
        assert not list((router.service.data_dir / "external-outbox").glob("*/*"))
        assert router.service.db.query("SELECT * FROM external_answers") == []


def test_a_vendor_that_never_answers_gives_not_assessed_within_its_time_limit(
    start_router: StartRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    router_port = free_port()
    with (
        running_orthanc(tmp_path / "pacs") as pacs,
        running_vendor(tmp_path / "vendor", router_port, answer=False, dicomweb=True) as vendor,
    ):
        endpoint = f"{{type: dicomweb, url: '{vendor.dicomweb_url}', timeout_s: 20}}"
        router = start_router(router_yaml(router_port, pacs, endpoint, 0.1), registry=REGISTRY)
        paths = identified_series(tmp_path / "ct")
        study_uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
        storescu(router, paths)
        assert wait_for(lambda: len(pacs_objects(pacs, study_uid)) >= 1, 120, 0.5), (
            external_request(router, study_uid)
        )
        request = external_request(router, study_uid)
        assert request is not None and request["state"] == "expired"
        [ours] = pacs_objects(pacs, study_uid)  # not assessed: the SR alone
        report = read_measurement_report(ours)
        assert report.verdict is Verdict.NOT_ASSESSED
        assert report.reason == f"no answer from {VENDOR} within 0.1 min"
        held = everything_held(vendor)  # sent by STOW-RS, de-identified
        assert len(held) == len(paths)
        for value in originals(paths):
            assert not any(value.encode() in data for data in held), value
        view = api_get(router, f"/studies/{study_uid}")
        assert view["state"] == "done", view


def test_an_answer_the_vendor_keeps_is_fetched_by_dicomweb(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router_port = free_port()
    with (
        running_orthanc(tmp_path / "pacs") as pacs,
        running_vendor(tmp_path / "vendor", router_port, dicomweb=True, store_back=False) as vendor,
    ):
        endpoint = f"{{type: dicomweb, url: '{vendor.dicomweb_url}', timeout_s: 20}}"
        yaml = router_yaml(router_port, pacs, endpoint, 5, extra="    answer_poll_s: 1\n")
        router = start_router(yaml, registry=REGISTRY)
        paths = identified_series(tmp_path / "ct")
        study_uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
        storescu(router, paths)

        def delivered() -> bool:
            held = pacs_objects(pacs, study_uid)
            return sum(str(ds.SOPClassUID) == SR for ds in held) == 2

        assert wait_for(delivered, 120, 0.5), external_request(router, study_uid)
        request = external_request(router, study_uid)
        assert request is not None and request["state"] == "answered", request
        print(f"\nfetched by DICOMweb: {request['outcome']}")
        objects = [ds for ds in pacs_objects(pacs, study_uid) if str(ds.SOPClassUID) == SR]
        [vendor_sr] = [ds for ds in objects if str(ds.Manufacturer) == VENDOR]
        assert vendor_sr.PatientID == "MRN-7731-0042"
        [ours] = [ds for ds in objects if str(ds.Manufacturer) != VENDOR]
        assert read_measurement_report(ours).verdict is Verdict.PRESENT
        for value in originals(paths):
            assert not any(value.encode() in data for data in everything_held(vendor)), value
