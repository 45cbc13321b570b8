"""The log an administrator reads: studies named by UID, no patient data, libraries quiet,
hostile header values made safe, and a non-DICOM client on the DICOM port named once."""

from __future__ import annotations

import io
import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from algorithms.registry import Registry
from router.logs import LOG_FORMAT, OWN_LOGGERS, configure_logging, log_safe
from router.receive.first_bytes import MORE_BYTES_WAIT_S, non_dicom_kind
from testing.dicom_tools import make_ct_slices
from testing.listeners import running_hl7_listener
from testing.plugins import DarkestRegionOutliner
from testing.router_process import RouterUnderTest, StartRouter, storescu, wait_state
from testing.storescp import ReceivingPacs

REGISTRY = Registry({"darkest_region": DarkestRegionOutliner})

PATIENT_NAME = "Secret^Patient"
PATIENT_ID = "SECRET-ID-4711"
BIRTH_DATE = "19450312"
ACCESSION = "ACC-SECRET-0815"
PATIENT_DATA = (PATIENT_NAME, "Secret", PATIENT_ID, BIRTH_DATE, ACCESSION)

# Lines about the process as a whole (start-up, schema, models), not about one study.
_PROCESS_LOGGERS = frozenset(
    {"router.service", "router.store.migrations", "router.store.postgres", "algorithms.runtime"}
)
_PROCESS_LINES = re.compile(r"^DICOM node \S+ listening on ")


def _yaml(pacs: ReceivingPacs, hl7_port: int) -> str:
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"destinations:\n  pacs: {pacs.destination_yaml()}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, "
        "hard_cap_s: 60}\n"
        "jobs: {retry: {max_attempts: 1}}\n"
        "rules:\n"
        "  - name: chest-ct\n"
        "    when: {Modality: CT, BodyPartExamined: CHEST}\n"
        "    run: darkest_region\n"
        "    send_to: [pacs]\n"
        "worklist:\n"
        "  notify:\n"
        f"    hl7: {{host: 127.0.0.1, port: {hl7_port}, receiving_application: RIS, timeout_s: 5}}\n"
    )


def _patient_series(folder: Path, n: int = 8) -> tuple[list[Path], str]:
    """A CT series whose patient data is distinctive enough to be found in any log line."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    slices = make_ct_slices(n)
    for ds in slices:
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = BIRTH_DATE
        ds.AccessionNumber = ACCESSION
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, str(slices[0].StudyInstanceUID)


@dataclass(frozen=True)
class StudyRun:
    router: RouterUnderTest
    study_uid: str
    ris_messages: list[str]


def _run_study(start_router: StartRouter, storescp: ReceivingPacs, folder: Path) -> StudyRun:
    """Receive -> complete -> route -> job -> SEG/SR/KOS -> C-STORE to a PACS -> HL7 to a RIS."""
    with running_hl7_listener() as ris:
        router = start_router(_yaml(storescp, ris.port), registry=REGISTRY)
        paths, study_uid = _patient_series(folder)
        storescu(router, paths)
        view = wait_state(router, study_uid, {"done"})
        assert view["flags"] and view["flags"][0]["verdict"] == "present"
        return StudyRun(router, study_uid, list(ris.raw))


@pytest.fixture
def cli_log() -> Iterator[io.StringIO]:
    """The CLI's log setup writing to a buffer; the global logging state is restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    names = (*OWN_LOGGERS, "highdicom", "pydicom", "pynetdicom", "uvicorn.error")
    saved_levels = {name: logging.getLogger(name).level for name in names}
    stream = io.StringIO()
    handler = configure_logging(verbose=False, stream=stream)
    yield stream
    root.removeHandler(handler)
    handler.close()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


# --- the CLI's setup -----------------------------------------------------------------------


def test_cli_setup_passes_radrouter_info_and_keeps_library_info_out(
    cli_log: io.StringIO,
) -> None:
    logging.getLogger("router.assemble.assembler").info("radrouter speaks")
    logging.getLogger("highdicom.base").info('copy Patient-related attributes from dataset "1"')
    logging.getLogger("pydicom").info("pydicom chatter")
    logging.getLogger("pynetdicom.acse").info("Association Accepted")
    logging.getLogger("PIL.PngImagePlugin").info("STREAM b'IHDR'")
    logging.getLogger("highdicom.seg").warning("highdicom warns")
    lines = cli_log.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO router\.assemble\.assembler: radrouter speaks",
        lines[0],
    )
    assert lines[1].endswith("WARNING highdicom.seg: highdicom warns")


def test_cli_setup_verbose_adds_radrouter_debug_and_library_info(cli_log: io.StringIO) -> None:
    stream = io.StringIO()
    configure_logging(verbose=True, stream=stream)  # replaces the handler cli_log installed
    logging.getLogger("router.run.series_loader").debug("left out 1 localizer image(s)")
    logging.getLogger("pynetdicom.acse").info("Association Accepted")
    logging.getLogger("pynetdicom.dul").debug("PDU dump")
    assert cli_log.getvalue() == "", "a second call replaces the first handler"
    text = stream.getvalue()
    assert "left out 1 localizer" in text and "Association Accepted" in text
    assert "PDU dump" not in text
    assert LOG_FORMAT.startswith("%(asctime)s %(levelname)s %(name)s")


def test_a_real_study_under_the_cli_setup_logs_no_library_info_and_names_the_study(
    start_router: StartRouter, storescp: ReceivingPacs, tmp_path: Path, cli_log: io.StringIO
) -> None:
    run = _run_study(start_router, storescp, tmp_path / "ct")
    lines = cli_log.getvalue().splitlines()
    # The result was written by highdicom (SEG, SR), which copies attributes at INFO.
    assert not [line for line in lines if re.search(r" INFO (highdicom|pydicom)", line)]
    assert any(f"study {run.study_uid} complete" in line for line in lines), lines
    done = rf"INFO router\.run\.worker: job \d+ \(darkest_region, study {run.study_uid}\) done"
    assert any(re.search(done, line) for line in lines), lines


# --- what the lines say --------------------------------------------------------------------


def test_every_record_about_a_study_names_it_by_its_uid(
    start_router: StartRouter,
    storescp: ReceivingPacs,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    run = _run_study(start_router, storescp, tmp_path / "ct")
    about_a_study = [
        r.getMessage()
        for r in caplog.records
        if r.name.split(".")[0] in OWN_LOGGERS
        and r.name not in _PROCESS_LOGGERS
        and not _PROCESS_LINES.match(r.getMessage())
    ]
    assert len(about_a_study) >= 5, about_a_study  # complete, routed, job done, flag, sent, ...
    missing = [message for message in about_a_study if run.study_uid not in message]
    assert not missing, missing


def test_no_patient_data_reaches_any_record_even_at_debug(
    start_router: StartRouter,
    storescp: ReceivingPacs,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in OWN_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    run = _run_study(start_router, storescp, tmp_path / "ct")
    (message,) = run.ris_messages
    assert PATIENT_ID in message, "the RIS gets the patient; the log must not"
    assert len(caplog.records) > 50
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        leaked = [value for value in PATIENT_DATA if value in text]
        assert not leaked, f"{record.name}: {text}"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_hostile_study_uid_is_refused_and_forges_no_log_line(
    start_router: StartRouter, storescp: ReceivingPacs, caplog: pytest.LogCaptureFixture
) -> None:
    router = start_router(_yaml(storescp, 9), registry=REGISTRY)
    ds = make_ct_slices(1)[0]
    ds.StudyInstanceUID = "1.2.3\n2026-01-01 00:00:00,000 INFO router: forged"
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", router.dicom_port, ae_title="RADROUTER")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC101, "not a DICOM UID: refused before anything uses it"
    (refused,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "\n" not in refused
    assert ds.SOPInstanceUID in refused and "TESTSCU" in refused
    assert "StudyInstanceUID is not a DICOM UID" in refused
    forged = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert all("\n" not in message for message in forged), forged


def test_log_safe_escapes_controls_and_bounds_length() -> None:
    assert log_safe("1.2.840.10008") == "1.2.840.10008"
    assert log_safe("a\r\nb\x1b[31m\u202ec") == "a\\r\\nb\\x1b[31m\\u202ec"
    cut = log_safe("9" * 1000, 64)
    assert cut == "9" * 64 + "... (1000 characters)"
    assert log_safe("\n" * 100, 10).startswith("\\n" * 5) and "\n" not in log_safe("\n" * 100, 10)


# --- a non-DICOM client on the DICOM port ------------------------------------------------------

ASSOCIATE_RQ_START = bytes.fromhex("0100000000cd00010000")
TLS_CLIENT_HELLO_START = bytes.fromhex("16030100f4010000f00303")


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (ASSOCIATE_RQ_START, None),
        (b"\x07\x00\x00\x00\x00\x04", None),  # an A-ABORT: DICOM, pynetdicom's to answer
        (b"", None),
        (b"GET / HTTP/1.1\r\n", "looks like HTTP"),
        (b"OPTIONS * HTTP/1.1", "looks like HTTP"),
        (b"PRI * HTTP/2.0\r\n", "looks like HTTP"),
        (TLS_CLIENT_HELLO_START, "looks like TLS"),
        (b"SSH-2.0-OpenSSH_9.6", "looks like SSH"),
        (b"GETX", "unrecognised first bytes 47 45 54 58"),
        (bytes(range(0x80, 0x90)), "unrecognised first bytes 80 81 82 83 84 85 86 87"),
    ],
)
def test_first_bytes_tell_dicom_from_other_protocols(first: bytes, kind: str | None) -> None:
    assert non_dicom_kind(first) == kind


def _echo(port: int) -> bool:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


def _send_and_read_until_closed(port: int, payload: bytes) -> tuple[int, bytes]:
    """Send ``payload`` from a plain socket; return our port and what came back before EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return int(sock.getsockname()[1]), answer


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: radrouter:11112\r\nUser-Agent: curl/8\r\n\r\n",
            "looks like HTTP",
        ),
        (TLS_CLIENT_HELLO_START + bytes(64), "looks like TLS"),
        (
            bytes.fromhex("9f3c00a1e2") + bytes(40),
            "unrecognised first bytes 9f 3c 00 a1 e2 00 00 00",
        ),
    ],
    ids=["http", "tls", "random"],
)
def test_a_non_dicom_client_is_named_once_and_the_node_keeps_serving(
    start_router: StartRouter,
    storescp: ReceivingPacs,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
    kind: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    router = start_router(_yaml(storescp, 9), registry=REGISTRY)
    client_port, answer = _send_and_read_until_closed(router.dicom_port, payload)
    assert answer == b"", "closed without answering (no A-ABORT PDU to a non-DICOM client)"
    assert _echo(router.dicom_port)
    expected = f"non-DICOM client at 127.0.0.1:{client_port} ({kind}) — connection closed"
    about_it = [
        r for r in caplog.records if "PDU" in r.getMessage() or "non-DICOM" in r.getMessage()
    ]
    problems = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("router.receive")
    ]
    assert [(r.levelname, r.getMessage()) for r in problems] == [("WARNING", expected)]
    assert [r.getMessage() for r in about_it if r.levelno >= logging.INFO] == [expected]


def test_a_dicom_client_is_not_delayed_by_the_first_bytes_check(
    start_router: StartRouter, storescp: ReceivingPacs
) -> None:
    router = start_router(_yaml(storescp, 9), registry=REGISTRY)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    associations = 10
    started = time.monotonic()
    for _ in range(associations):
        assoc = ae.associate("127.0.0.1", router.dicom_port, ae_title="RADROUTER")
        assert assoc.is_established
        assoc.release()
    # Waiting for more bytes after a DICOM first byte would cost each association this much.
    assert time.monotonic() - started < associations * MORE_BYTES_WAIT_S


def test_a_silent_connection_does_not_hold_up_stopping_the_node(
    start_router: StartRouter, storescp: ReceivingPacs
) -> None:
    router = start_router(_yaml(storescp, 9), registry=REGISTRY)
    with socket.create_connection(("127.0.0.1", router.dicom_port), timeout=10):
        started = time.monotonic()
        router.service.node.stop()
        assert time.monotonic() - started < 5, "the node waited for the silent client"
