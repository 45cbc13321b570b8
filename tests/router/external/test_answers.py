"""External algorithms against dcmtk: storescp plays the vendor's receiving end, and the test
itself answers as the vendor would (``testing.vendor_analysis`` on what storescp received,
stored back to radrouter's node with storescu). Checks what only a controlled answer can: objects
that are not the vendor's own result are refused, a burned-in series never leaves, a late answer
changes nothing; and the configuration's checks."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from algorithms.contract import Verdict
from algorithms.registry import Registry
from config.loader import check_algorithms, parse_config, validate_config
from config.yaml_document import ConfigError, parse_yaml
from dicom_sr.read import read_measurement_report
from router.admin_page.overview import overview
from router.deliver.dicom_send import FileToSend, Peer, send_files
from router.service import wait_for
from testing.dicom_tools import make_ct_slices
from testing.router_process import DCMTK_ENV, RouterUnderTest, StartRouter
from testing.storescp import ReceivingPacs, running_storescp
from testing.vendor_analysis import VENDOR, answer

REGISTRY = Registry({})


@pytest.fixture
def vendor(tmp_path: Path) -> Iterator[ReceivingPacs]:
    with running_storescp(tmp_path / "vendor") as receiving:
        yield receiving


def router_yaml(pacs: ReceivingPacs, vendor: ReceivingPacs, within_min: float = 5) -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "destinations:\n"
        f"  pacs: {pacs.destination_yaml()}\n"
        f"  acme: {vendor.destination_yaml()}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 2, study_idle_s: 10}\n"
        "external_algorithms:\n"
        "  acme_density:\n"
        f"    vendor: {VENDOR}\n"
        "    version: '3.1.4'\n"
        "    modalities: [CT]\n"
        "    send_to: acme\n"
        "    answer_idle_s: 1\n"
        f"    answer_within_min: {within_min}\n"
        "rules:\n"
        "  - {name: chest, when: {Modality: CT}, run: acme_density, send_to: [pacs]}\n"
    )


def send(router: RouterUnderTest, paths: list[Path], calling: str = "PACS") -> None:
    subprocess.run(
        ["/usr/bin/storescu", "-R", "-aet", calling, "-aec", "RADROUTER", "127.0.0.1",
         str(router.dicom_port), *map(str, paths)],
        check=True, capture_output=True, env=DCMTK_ENV, timeout=60,
    )  # fmt: skip


def series(folder: Path, n: int = 5, **attributes: str) -> tuple[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in make_ct_slices(n):
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return str(pydicom.dcmread(paths[0]).StudyInstanceUID), paths


def request_of(router: RouterUnderTest, study_uid: str) -> dict[str, object]:
    row = router.service.db.query_one(
        "SELECT * FROM external_requests WHERE study_uid = ?", (study_uid,)
    )
    return {} if row is None else dict(row)


def reports_at(pacs: ReceivingPacs, study_uid: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in pacs.received("SR").get(study_uid, [])]


def test_only_the_vendors_own_result_objects_are_taken(
    start_router: StartRouter, storescp: ReceivingPacs, vendor: ReceivingPacs, tmp_path: Path
) -> None:
    router = start_router(router_yaml(storescp, vendor), registry=REGISTRY)
    study_uid, paths = series(tmp_path / "ct", PatientName="Roe^Richard", PatientID="P-55")
    send(router, paths)

    def sent_and_waiting() -> bool:
        job = router.service.db.query_one(
            "SELECT state FROM jobs WHERE study_uid = ?", (study_uid,)
        )
        return job is not None and job["state"] == "waiting"

    assert wait_for(sent_and_waiting, 60, 0.2), request_of(router, study_uid)
    deid_study = str(request_of(router, study_uid)["deid_study_uid"])
    stages = {
        s["stage"]: s["count"]
        for s in overview(router.service.db, router.service.holder.current(), {})["stages"]
    }
    assert (stages["external"], stages["priors"], stages["running"]) == (1, 0, 0)
    sent = vendor.wait_for("CT", {deid_study}, 30)[deid_study]
    assert len(sent) == len(paths)
    images = [pydicom.dcmread(p) for p in sent]
    assert {str(ds.PatientName) for ds in images} != {"Roe^Richard"}
    report = tmp_path / "answer.dcm"
    answer(images, -600).save_as(report, enforce_file_format=True)
    # The vendor's report, and one of the de-identified images sent back: not a result.
    send(router, [report, sent[0]], calling="VENDOR")

    [ours, theirs] = sorted(
        (reports_at(storescp, study_uid) if wait_for(
            lambda: len(reports_at(storescp, study_uid)) == 2, 60, 0.3) else []),
        key=lambda ds: str(ds.Manufacturer) == VENDOR,
    )  # fmt: skip
    assert str(theirs.PatientName) == "Roe^Richard" and theirs.PatientID == "P-55"
    assert read_measurement_report(ours).verdict is Verdict.PRESENT
    request = request_of(router, study_uid)
    assert request["state"] == "answered"
    assert str(request["outcome"]).startswith("1 object(s) taken, 1 refused")
    # Nothing of the answer was indexed as a study of its own.
    assert (
        router.service.db.query_one("SELECT 1 FROM studies WHERE study_uid = ?", (deid_study,))
        is None
    )
    assert router.service.db.query("SELECT * FROM external_answers") == []


def test_a_series_with_burned_in_annotation_never_leaves(
    start_router: StartRouter, storescp: ReceivingPacs, vendor: ReceivingPacs, tmp_path: Path
) -> None:
    router = start_router(router_yaml(storescp, vendor), registry=REGISTRY)
    study_uid, paths = series(tmp_path / "ct", BurnedInAnnotation="YES")
    send(router, paths)
    found = storescp.wait_for("SR", {study_uid}, 60)
    report = read_measurement_report(pydicom.dcmread(found[study_uid][0]))
    assert report.verdict is Verdict.NOT_ASSESSED
    assert report.reason.startswith(f"not sent to {VENDOR}: burned-in annotation")
    assert list(vendor.folder.iterdir()) == []
    assert request_of(router, study_uid) == {}


def test_an_answer_after_the_time_limit_changes_nothing(
    start_router: StartRouter, storescp: ReceivingPacs, vendor: ReceivingPacs, tmp_path: Path
) -> None:
    router = start_router(router_yaml(storescp, vendor, within_min=0.02), registry=REGISTRY)
    study_uid, paths = series(tmp_path / "ct")
    send(router, paths)
    found = storescp.wait_for("SR", {study_uid}, 60)
    report = read_measurement_report(pydicom.dcmread(found[study_uid][0]))
    assert report.reason == f"no answer from {VENDOR} within 0.02 min"
    deid_study = str(request_of(router, study_uid)["deid_study_uid"])
    images = [pydicom.dcmread(p) for p in vendor.wait_for("CT", {deid_study}, 30)[deid_study]]
    late = tmp_path / "late.dcm"
    answer(images, -600).save_as(late, enforce_file_format=True)
    send(router, [late], calling="VENDOR")
    time.sleep(3)
    held = router.service.db.query("SELECT request_id FROM external_answers")
    assert [row["request_id"] for row in held] == [None]  # kept apart, then dropped
    assert len(router.service.db.query("SELECT * FROM results")) == 1
    assert len(reports_at(storescp, study_uid)) == 1


CONFIG = (
    "destinations:\n"
    "  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}\n"
    "  acme: {type: dicomweb, url: 'https://ai.acme.example/dicom-web',\n"
    "         auth: {type: bearer, token_env: ACME_TOKEN}}\n"
    "external_algorithms:\n"
    "  acme_density: {vendor: ACME, version: '3', modalities: [CT], send_to: acme}\n"
    "rules:\n"
    "  - {name: chest, when: {Modality: CT}, run: acme_density, send_to: [pacs]}\n"
)


def test_the_configuration_declares_an_external_algorithm_and_keeps_its_endpoint_apart() -> None:
    loaded = validate_config(parse_yaml(CONFIG, "t.yaml"))
    assert check_algorithms(loaded.document, {"lung_nodule": frozenset()}) == []
    declared = loaded.config.external_algorithms["acme_density"]
    assert (declared.answer_within_min, declared.mapping_keep_days) == (30.0, 30.0)
    with pytest.raises(ConfigError, match="no rule may send results to it"):
        parse_config(CONFIG.replace("send_to: [pacs]", "send_to: [pacs, acme]"), "t.yaml")
    with pytest.raises(ConfigError, match="unknown destination 'nowhere'"):
        parse_config(CONFIG.replace("send_to: acme}", "send_to: nowhere}"), "t.yaml")
    clash = validate_config(parse_yaml(CONFIG, "t.yaml"))
    [issue] = check_algorithms(clash.document, {"acme_density": frozenset()})
    assert "has the name of an installed algorithm" in str(issue)
    with pytest.raises(ConfigError, match="must be printable text"):
        parse_config(CONFIG.replace("vendor: ACME", "vendor: '  '"), "t.yaml")


def test_an_answer_that_comes_before_the_send_has_ended_is_taken(
    start_router: StartRouter, storescp: ReceivingPacs, vendor: ReceivingPacs, tmp_path: Path
) -> None:
    router = start_router(router_yaml(storescp, vendor), registry=REGISTRY)

    def fast_vendor(peer: Peer, files: list[FileToSend]) -> int:
        """The vendor answers while radrouter's send has not returned yet."""
        stored = send_files(peer, files)
        report = tmp_path / "fast.dcm"
        answer([pydicom.dcmread(f.path) for f in files], -600).save_as(
            report, enforce_file_format=True
        )
        send(router, [report], calling="VENDOR")
        time.sleep(2.5)  # the answer stage looks at it meanwhile (answer_idle_s: 1)
        return stored

    router.service.vendors._send = fast_vendor
    study_uid, paths = series(tmp_path / "ct")
    send(router, paths)
    assert wait_for(lambda: len(reports_at(storescp, study_uid)) == 2, 60, 0.3), request_of(
        router, study_uid
    )
    assert request_of(router, study_uid)["state"] == "answered"
    db = router.service.db
    assert db.query("SELECT study_uid FROM studies") == [] or {
        row["study_uid"] for row in db.query("SELECT study_uid FROM studies")
    } == {study_uid}
