"""Priors from a PACS over DICOMweb: a real Orthanc with its DICOMweb plug-in (basic
authentication) searched with QIDO-RS, the chosen series retrieved with WADO-RS and stored
through the node's own ingest path; and the follow-up algorithm getting that prior through a
running router (the C-FIND/C-MOVE variants are in test_priors.py and test_followup.py)."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from config.schema import DicomWebPriorSource, PriorSource
from router.audit.events import AuditEvent, QuerySent, RetrieveRequested
from router.run.priors.finder import find_prior
from router.run.priors.loading import load_prior_study
from router.run.priors.selection import CurrentStudy
from router.service import wait_for
from testing.mr_dicom import write_mr_series
from testing.orthanc import DICOMWEB_PLUGIN, Orthanc, running_orthanc
from testing.router_process import StartRouter
from testing.synthetic_dicom import new_patient_study
from tests.router.run.test_followup import SEED, exams, send, sr_of, studies
from tests.router.run.test_followup import pacs as pacs  # the fixture
from tests.router.run.test_priors import ROUTER_YAML, _config, _series_uid, _study, _write

pytestmark = [
    pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="orthanc-dicomweb is not installed"),
]

USER, PASSWORD_ENV, PASSWORD = "radrouter", "RADROUTER_TEST_PRIORS_PASSWORD", "Prior-Secret-7"


@pytest.fixture(scope="module")
def web_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    folder = tmp_path_factory.mktemp("web-pacs")
    with running_orthanc(folder, "WEBPACS", dicomweb=True, users={USER: PASSWORD}) as client:
        yield client


def _source(pacs: Orthanc) -> dict[str, object]:
    return {
        "type": "dicomweb",
        "url": pacs.dicomweb_url,
        "auth": {"type": "basic", "user": USER, "password_env": PASSWORD_ENV},
        "timeout_s": 10,
    }


class Recorded:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def test_prior_source_types_default_to_dicom() -> None:
    config = _config(
        sources=[
            {"ae_title": "PACS", "host": "h", "port": 104},
            {"type": "dicomweb", "url": "https://pacs.example/dicom-web"},
        ]
    )
    assert isinstance(config.sources[0], PriorSource)
    assert isinstance(config.sources[1], DicomWebPriorSource)


def test_prior_is_retrieved_from_the_pacs_with_qido_rs_and_wado_rs(
    web_pacs: Orthanc, start_router: StartRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    # (Orthanc's DICOMweb plug-in 1.7 matches no PatientID holding a space, & or =, though
    # its own /tools/find does: the encoding of such values is checked in the audit below
    # against a recording server instead.)
    patient = f"SYN-{uuid.uuid4().hex[:8]}"
    prior = _study(patient, "20230115")
    later = _study(patient, "20250101")
    current = _study(patient, "20240610")
    other = _study(f"SYN-{uuid.uuid4().hex[:8]}", "20240101")  # another patient, more recent
    prior_files = _write(prior, tmp_path / "prior", t1=True)
    for study, folder in ((later, "later"), (current, "current"), (other, "other")):
        for paths in _write(study, tmp_path / folder).values():
            for path in paths:
                web_pacs.upload(path)
    for paths in prior_files.values():
        for path in paths:
            web_pacs.upload(path)
    router = start_router(ROUTER_YAML)
    config = _config(sources=[_source(web_pacs)])
    db = router.service.db
    now = CurrentStudy(patient, current.study_date, current.study_instance_uid, current.study_time)
    audit = Recorded()

    started = time.monotonic()
    found = find_prior(
        db,
        router.service.priors.keys,
        config,
        "RADROUTER",
        now,
        {"Modality": "CT"},
        audit,
        router.service.priors.instances,
    )
    elapsed = time.monotonic() - started

    assert found is not None, "no prior retrieved"
    assert found.source == web_pacs.dicomweb_url
    assert found.study_instance_uid == prior.study_instance_uid
    assert found.series_instance_uid == _series_uid(prior_files["flair"])
    assert len(found.paths) == 12 and all(p.exists() for p in found.paths)
    # Only the FLAIR series was retrieved, into radrouter's own spool, byte for byte.
    held = db.query(
        "SELECT DISTINCT series_uid FROM instances WHERE study_uid = ?", (prior.study_instance_uid,)
    )
    assert [r["series_uid"] for r in held] == [found.series_instance_uid]
    originals = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p.read_bytes()
        for p in prior_files["flair"]
    }
    for path in found.paths:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert (
            pydicom.dcmread(path).PixelData
            == pydicom.dcmread(pydicom.filebase.DicomBytesIO(originals[uid])).PixelData
        )
    loaded = load_prior_study(db, found, "ms_lesion")
    assert loaded.series.array.shape == (12, 32, 32) and loaded.study_date == "20230115"
    assert elapsed < 60
    # Audited: the study and series searches, and the retrieval of the one series.
    queries = [e for e in audit.events if isinstance(e, QuerySent)]
    assert queries and all(e.peer.ae_title == web_pacs.dicomweb_url for e in queries)
    assert queries[0].query.startswith(b"/studies?PatientID=SYN-")
    retrieved = [e for e in audit.events if isinstance(e, RetrieveRequested)]
    assert [(e.study_uid, e.completed, e.error) for e in retrieved] == [
        (prior.study_instance_uid, 12, None)
    ]
    # Pulled as a prior: never routed as new work; and held now, so found locally next time.
    assert db.query_one(
        "SELECT 1 FROM retrieved_priors WHERE study_uid = ?", (prior.study_instance_uid,)
    )
    assert wait_for(
        lambda: (
            (
                row := db.query_one(
                    "SELECT state FROM studies WHERE study_uid = ?", (prior.study_instance_uid,)
                )
            )
            is not None
            and row["state"] == "prior"
        ),
        40,
        0.3,
    )
    again = find_prior(db, router.service.priors.keys, config, "RADROUTER", now, {"Modality": "CT"})
    assert again is not None and again.source == "local"


def test_a_dicomweb_source_that_is_down_or_refuses_is_skipped(
    web_pacs: Orthanc, start_router: StartRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = start_router(ROUTER_YAML)
    now = CurrentStudy("SYN-NONE", "20240610", pydicom.uid.generate_uid(prefix=None))
    keys, instances = router.service.priors.keys, router.service.priors.instances
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    refused = _config(sources=[_source(web_pacs)])
    assert (
        find_prior(router.service.db, keys, refused, "RADROUTER", now, {}, instances=instances)
        is None
    )
    down = _config(
        sources=[{"type": "dicomweb", "url": "http://127.0.0.1:9/dicom-web", "timeout_s": 2}]
    )
    monkeypatch.setattr("router.run.priors.dicomweb_retrieve.RETRY_BACKOFF_S", 0.01)
    assert (
        find_prior(router.service.db, keys, down, "RADROUTER", now, {}, instances=instances) is None
    )


@pytest.mark.slow
def test_a_prior_held_only_by_the_pacs_is_pulled_by_qido_wado_for_the_follow_up(
    start_router: StartRouter,
    tmp_path: Path,
    pacs: tuple[int, Path],
    web_pacs: Orthanc,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    port, received = pacs
    prior_exam, current_exam = exams()
    prior_study, current_study = studies()
    prior_study = dataclasses.replace(
        prior_study, study_instance_uid=new_patient_study(SEED + 17).study_instance_uid
    )
    current_study = dataclasses.replace(
        current_study, study_instance_uid=new_patient_study(SEED + 18).study_instance_uid
    )
    for p in write_mr_series(prior_exam.image, prior_exam.affine, prior_study, tmp_path / "p"):
        web_pacs.upload(p)
    source = _source(web_pacs)
    router = start_router(
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"destinations:\n  pacs: {{ae_title: STORESCP, host: 127.0.0.1, port: {port}, timeout_s: 10}}\n"
        "completion: {settle_after_release_s: 0.3, series_idle_s: 5, study_idle_s: 20, hard_cap_s: 300}\n"
        "algorithms:\n"
        "  ms_lesion:\n"
        "    priors:\n"
        "      max_age_days: 36500\n"
        f"      sources: [{{type: dicomweb, url: '{source['url']}', auth: {{type: basic, "
        f"user: {USER}, password_env: {PASSWORD_ENV}}}}}]\n"
        "rules:\n"
        "  - name: brain-flair-ms\n"
        "    when: {Modality: MR, SeriesDescription: {regex: '(?i)flair'}}\n"
        "    run: ms_lesion\n"
        "    send_to: [pacs]\n"
    )
    current_paths = write_mr_series(
        current_exam.image, current_exam.affine, current_study, tmp_path / "c"
    )
    send(router, current_paths)
    assert wait_for(lambda: sr_of(received, current_study.study_instance_uid) is not None, 300, 0.5)
    found = sr_of(received, current_study.study_instance_uid)
    assert found is not None
    _, report = found
    assert {r.study_instance_uid for r in report.prior_evidence} == {prior_study.study_instance_uid}
    assert "New" in {q.value.meaning for f in report.findings for q in f.qualifiers}
    db = router.service.db
    request = db.query_one("SELECT state, outcome FROM prior_requests")
    assert request is not None and request["state"] == "done"
    assert f"retrieved from {web_pacs.dicomweb_url}" in request["outcome"]
    assert wait_for(
        lambda: (
            (
                row := db.query_one(
                    "SELECT state FROM studies WHERE study_uid = ?",
                    (prior_study.study_instance_uid,),
                )
            )
            is not None
            and row["state"] == "prior"
        ),
        60,
        0.5,
    )
    assert (
        db.query("SELECT id FROM jobs WHERE study_uid = ?", (prior_study.study_instance_uid,)) == []
    )
    assert sr_of(received, prior_study.study_instance_uid) is None


def test_the_patient_id_is_percent_encoded_in_the_query_and_never_logged(
    start_router: StartRouter, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.router.deliver.test_dicomweb_destination import recording_server

    caplog.set_level(logging.DEBUG)
    router = start_router(ROUTER_YAML)
    keys, instances = router.service.priors.keys, router.service.priors.instances
    with recording_server() as server:
        config = _config(sources=[{"type": "dicomweb", "url": server.url}])
        for patient in ("SYN-a b&x=1+2", "SYN-*"):
            now = CurrentStudy(patient, "20240610", pydicom.uid.generate_uid(prefix=None))
            assert (
                find_prior(router.service.db, keys, config, "RAD", now, {}, instances=instances)
                is None
            )
    # The wildcard one was not asked at all (it would match other patients).
    assert [r["path"].split("&", 1)[0] for r in server.requests] == [
        "/dicom-web/studies?PatientID=SYN-a%20b%26x%3D1%2B2"
    ]
    assert "SYN-a b" not in caplog.text and "SYN-*" not in caplog.text
