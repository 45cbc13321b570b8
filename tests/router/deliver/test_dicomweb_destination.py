"""A ``type: dicomweb`` destination: results stored by STOW-RS in a real Orthanc with its
DICOMweb plug-in (basic authentication), an Orthanc that is down (retries, dead letter, then
``POST /dispatches/{id}/retry`` once it is up), and, against a recording server, the bearer
token from the environment, partial failures, outages and the probe."""

from __future__ import annotations

import http.server
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from algorithms.registry import Registry
from config.loader import parse_config
from config.schema import DicomWebDestination, RouterConfig
from config.yaml_document import ConfigError
from dicom_sr.read import read_measurement_report
from router.deliver.dicom_send import FileToSend, SendError
from router.deliver.dicomweb_send import dicomweb_answers, stow_files
from router.dicomweb import multipart_boundary
from router.service import wait_for
from testing.dicom_tools import run_dciodvfy
from testing.orthanc import DICOMWEB_PLUGIN, Orthanc, free_port, running_orthanc
from testing.plugins import DarkestRegionOutliner
from testing.router_process import StartRouter, api_get, storescu, study_uid_of, write_series
from testing.tls import CertificateAuthority, IssuedCertificate

REGISTRY = Registry({"darkest_region": DarkestRegionOutliner})
USER, PASSWORD_ENV, PASSWORD = "radrouter", "RADROUTER_TEST_PACS_PASSWORD", "pacs-Secret-42"
TOKEN_ENV = "RADROUTER_TEST_STOW_TOKEN"
SR, SEG = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.66.4"

needs_plugin = pytest.mark.skipif(
    not DICOMWEB_PLUGIN.exists(), reason="Debian orthanc-dicomweb is not installed"
)


def router_yaml(url: str, retry: str = "{max_attempts: 2, backoff_initial_s: 0.1}") -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "destinations:\n"
        f"  pacs: {{type: dicomweb, url: '{url}', timeout_s: 10,\n"
        f"         auth: {{type: basic, user: {USER}, password_env: {PASSWORD_ENV}}}}}\n"
        f"dispatch: {{retry: {retry}, probe_interval_s: 0}}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10}\n"
        "rules:\n"
        "  - name: chest\n"
        "    when: {Modality: CT}\n"
        "    run: darkest_region\n"
        "    send_to: [pacs]\n"
    )


def dispatches(router: Any, study_uid: str) -> list[dict[str, Any]]:
    view = api_get(router, f"/studies/{study_uid}")
    return list(view.get("dispatches", [])) if isinstance(view, dict) else []


def stored_results(pacs: Orthanc, study_uid: str) -> dict[str, pydicom.Dataset]:
    """The SR and SEG of the study as Orthanc holds them, read back through its REST API."""
    study_id = pacs.study_id_for_uid(study_uid)
    if study_id is None:
        return {}
    found: dict[str, pydicom.Dataset] = {}
    for modality in ("SR", "SEG"):
        for instance in pacs.modality_instances(study_id, modality):
            found[modality] = pydicom.dcmread(
                pydicom.filebase.DicomBytesIO(pacs.instance_file(instance))
            )
    return found


# --- the schema ----------------------------------------------------------------------------


def test_a_destination_without_type_is_dicom_and_dicomweb_is_checked() -> None:
    config = parse_config(
        "destinations:\n"
        "  old: {ae_title: PACS, host: 10.0.0.5, port: 104}\n"
        "  web: {type: dicomweb, url: 'https://pacs.example/dicom-web/', results: [sr],\n"
        "        auth: {type: bearer, token_env: PACS_TOKEN}, tls: {server_name: pacs}}\n",
        "t.yaml",
    )
    assert isinstance(config, RouterConfig)
    assert config.destinations["old"].type == "dicom"
    web = config.destinations["web"]
    assert isinstance(web, DicomWebDestination)
    assert web.url == "https://pacs.example/dicom-web" and web.results == ("sr",)
    problems = {
        "url: 'https://user:pw@pacs/dicom-web'": "must not hold credentials",
        "url: 'http://pacs.example/dw', auth: {type: bearer, token_env: T}": "needs an https://",
        "url: 'ftp://pacs/dw'": "is not an http:// or https:// URL",
        "url: 'https://pacs/dw', auth: {type: bearer}": "missing required key 'token_env'",
        "url: 'https://pacs/dw', ae_title: X": "unknown key 'ae_title'",
    }
    for entry, message in problems.items():
        with pytest.raises(ConfigError, match=message):
            parse_config(f"destinations:\n  web: {{type: dicomweb, {entry}}}\n", "t.yaml")
    # A DICOM destination's own problem is still named as before (no 'missing type').
    with pytest.raises(ConfigError, match=r"destinations\.old\.port: Input should be less"):
        parse_config("destinations:\n  old: {ae_title: P, host: h, port: 99999}\n", "t.yaml")


# --- against a real Orthanc ----------------------------------------------------------------


@needs_plugin
@pytest.mark.slow
def test_results_are_stored_in_orthanc_by_stow_rs_with_basic_authentication(
    start_router: StartRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with running_orthanc(tmp_path / "orthanc", dicomweb=True, users={USER: PASSWORD}) as pacs:
        assert httpx.get(f"{pacs.dicomweb_url}/studies").status_code == 401  # signed in only
        router = start_router(router_yaml(pacs.dicomweb_url), registry=REGISTRY)
        paths = write_series(tmp_path / "ct")
        study_uid = study_uid_of(paths)
        storescu(router, paths)
        assert wait_for(
            lambda: [d["state"] for d in dispatches(router, study_uid)] == ["done"], 120, 0.3
        ), dispatches(router, study_uid)
        held = stored_results(pacs, study_uid)
        assert set(held) == {"SR", "SEG"}
        assert str(held["SR"].SOPClassUID) == SR and str(held["SEG"].SOPClassUID) == SEG
        written = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in router.service.data_dir.joinpath("results").rglob("*.dcm")
        }
        assert {str(ds.SOPInstanceUID) for ds in held.values()} <= written
        sr_file = tmp_path / "sr.dcm"
        held["SR"].save_as(sr_file)
        assert run_dciodvfy(sr_file).errors == []
        report = read_measurement_report(held["SR"])
        assert report.study_instance_uid == study_uid and report.findings
        seg = held["SEG"]
        assert str(seg.StudyInstanceUID) == study_uid and len(seg.SegmentSequence) >= 1


@needs_plugin
@pytest.mark.slow
def test_an_orthanc_that_is_down_dead_letters_the_dispatch_and_a_retry_delivers_it(
    start_router: StartRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    port = free_port()
    url = f"http://127.0.0.1:{port}/dicom-web"
    router = start_router(router_yaml(url), registry=REGISTRY)
    paths = write_series(tmp_path / "ct")
    study_uid = study_uid_of(paths)
    storescu(router, paths)
    assert wait_for(
        lambda: [d["state"] for d in dispatches(router, study_uid)] == ["dead"], 120, 0.3
    ), dispatches(router, study_uid)
    dispatch = dispatches(router, study_uid)[0]
    assert dispatch["attempts"] == 2
    assert dispatch["last_error"].startswith("unreachable: STOW-RS")
    assert f"127.0.0.1:{port}" in dispatch["last_error"]
    assert [d["id"] for d in api_get(router, "/dispatches?state=dead")] == [dispatch["id"]]

    with running_orthanc(
        tmp_path / "orthanc", dicomweb=True, users={USER: PASSWORD}, http_port=port
    ) as pacs:
        response = httpx.post(
            f"http://127.0.0.1:{router.http_port}/dispatches/{dispatch['id']}/retry", timeout=10
        )
        assert response.status_code == 200
        assert wait_for(
            lambda: [d["state"] for d in dispatches(router, study_uid)] == ["done"], 60, 0.3
        ), dispatches(router, study_uid)
        assert set(stored_results(pacs, study_uid)) == {"SR", "SEG"}


# --- against a recording server ------------------------------------------------------------


@dataclass
class Recorder:
    """A STOW-RS server that records what it gets and answers as told."""

    url: str
    answer: tuple[int, dict[str, Any] | None] = (200, None)
    requests: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def recording_server(tls: IssuedCertificate | None = None) -> Iterator[Recorder]:
    recorder = Recorder("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            recorder.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": self.rfile.read(length) if length else b"",
                }
            )
            status, body = recorder.answer
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = _record  # noqa: N815 - http.server's names

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert, tls.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    recorder.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/dicom-web"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()


def _files(tmp_path: Path, n: int = 2) -> list[FileToSend]:
    return [FileToSend.from_path(p) for p in write_series(tmp_path / "ct", n)]


def _destination(url: str, **extra: Any) -> DicomWebDestination:
    auth = {"type": "bearer", "token_env": TOKEN_ENV}
    return DicomWebDestination.model_validate(
        {"type": "dicomweb", "url": url, "auth": auth, "timeout_s": 5, **extra}
    )


def _failed(uid: str, reason: int) -> dict[str, Any]:
    return {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081155": {"vr": "UI", "Value": [uid]},
                    "00081197": {"vr": "US", "Value": [reason]},
                }
            ],
        }
    }


def test_stow_sends_the_bearer_token_from_the_environment_and_one_multipart_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    files = _files(tmp_path)
    with recording_server() as server:
        monkeypatch.setenv(TOKEN_ENV, "token-one")
        assert stow_files(_destination(server.url), files) == 2
        monkeypatch.setenv(TOKEN_ENV, "token-two")  # a renewed token: used from the next send
        assert stow_files(_destination(server.url), files[:1]) == 1
    first, second = server.requests
    assert first["method"] == "POST" and first["path"] == "/dicom-web/studies"
    assert first["headers"]["Authorization"] == "Bearer token-one"
    assert second["headers"]["Authorization"] == "Bearer token-two"
    content_type = first["headers"]["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom"')
    boundary = multipart_boundary(content_type)
    assert boundary is not None
    body: bytes = first["body"]
    assert body.count(f"--{boundary}\r\n".encode()) == 2 and body.endswith(
        f"--{boundary}--\r\n".encode()
    )
    for item in files:
        assert item.path.read_bytes() in body  # the files as they are, byte for byte
    assert "token-one" not in caplog.text and "token-two" not in caplog.text


def test_stow_partial_failure_outage_and_missing_token_fail_the_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)
    first_uid = str(pydicom.dcmread(files[0].path, stop_before_pixels=True).SOPInstanceUID)
    monkeypatch.setenv(TOKEN_ENV, "t")
    with recording_server() as server:
        server.answer = (202, _failed(first_uid, 0xA700))
        with pytest.raises(
            SendError, match=r"1 of 2 refused \(HTTP 202; failure reasons: 0xA700"
        ) as refused:
            stow_files(_destination(server.url), files)
        assert not refused.value.unreachable
        server.answer = (409, None)
        with pytest.raises(SendError, match="2 of 2 refused"):
            stow_files(_destination(server.url), files)
        server.answer = (503, None)
        with pytest.raises(SendError, match="HTTP 503") as outage:
            stow_files(_destination(server.url), files)
        assert outage.value.unreachable
        server.answer = (401, None)
        with pytest.raises(SendError, match="HTTP 401") as unauthorised:
            stow_files(_destination(server.url), files)
        assert not unauthorised.value.unreachable
        assert dicomweb_answers(_destination(server.url))  # the probe: it answers
        probe = server.requests[-1]
        assert probe["method"] == "GET" and probe["path"].startswith("/dicom-web/studies?")
        monkeypatch.delenv(TOKEN_ENV)
        with pytest.raises(SendError, match=f"environment variable {TOKEN_ENV} is not set"):
            stow_files(_destination(server.url), files)
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"
    monkeypatch.setenv(TOKEN_ENV, "t")
    with pytest.raises(SendError, match="connection refused") as down:
        stow_files(_destination(closed), files)
    assert down.value.unreachable
    assert not dicomweb_answers(_destination(closed))


def test_stow_over_https_trusts_the_configured_ca_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "t")
    ca = CertificateAuthority.create(tmp_path / "ca")
    files = _files(tmp_path)
    with recording_server(ca.issue("pacs", dns_names=("localhost",))) as server:
        trusted = _destination(server.url, tls={"ca_file": str(ca.cert_file)})
        assert stow_files(trusted, files) == 2
        assert server.requests[0]["headers"]["Authorization"] == "Bearer t"
        with pytest.raises(SendError, match="certificate verify failed") as untrusted:
            stow_files(_destination(server.url, tls={}), files)  # the system's CAs
        assert not untrusted.value.unreachable
        other_name = _destination(
            server.url, tls={"ca_file": str(ca.cert_file), "server_name": "pacs.other"}
        )
        with pytest.raises(SendError, match="certificate verify failed"):
            stow_files(other_name, files)
