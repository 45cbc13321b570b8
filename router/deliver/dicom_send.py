"""A C-STORE SCU that sends Part-10 files, proposing only the contexts those files need, over
plain DICOM or DICOM TLS (``destinations.*.tls``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.presentation import build_context

from config.schema import DicomDestination, DicomTlsClient
from router.dicom_tls import OutgoingTls, TlsSetupError, outgoing_tls
from router.socket_ready import poll_pynetdicom_sockets

LOGGER = logging.getLogger(__name__)
poll_pynetdicom_sockets()  # before any association: see router.socket_ready

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_UNCOMPRESSED = {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN}
MAX_PROPOSED_CONTEXTS = 128
_SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB006, 0xB007}
VERIFICATION = "1.2.840.10008.1.1"


class SendError(Exception):
    """The destination could not be reached or refused an instance."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        """No association could be made, or it was lost mid-transfer (the peer is down or
        unreachable), as opposed to a refusal by a peer that answered."""


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    timeout_s: float = 30.0
    tls: DicomTlsClient | None = None
    """DICOM TLS settings; ``None``: plain DICOM."""

    @classmethod
    def for_destination(
        cls, destination: DicomDestination, node_ae: str, max_timeout_s: float | None = None
    ) -> Peer:
        """The peer a destination describes; radrouter calls as ``node_ae`` unless the
        destination names its own calling AE title."""
        timeout = destination.timeout_s
        return cls(
            destination.ae_title,
            destination.host,
            destination.port,
            destination.calling_ae_title or node_ae,
            timeout if max_timeout_s is None else min(timeout, max_timeout_s),
            destination.tls,
        )

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


@dataclass(frozen=True)
class FileToSend:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str

    @classmethod
    def from_path(cls, path: Path) -> FileToSend:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        return cls(path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))


def proposed_contexts(files: Sequence[FileToSend]) -> list[tuple[str, list[str]]]:
    """One context per SOP class, with the transfer syntaxes the files are in.

    Uncompressed files also offer the other uncompressed syntax, so a peer that accepts only
    implicit VR still takes explicit-VR files (pynetdicom re-encodes uncompressed data).
    """
    by_class: dict[str, list[str]] = {}
    for item in files:
        syntaxes = by_class.setdefault(item.sop_class_uid, [])
        wanted = [item.transfer_syntax_uid]
        if item.transfer_syntax_uid in _UNCOMPRESSED:
            wanted += sorted(_UNCOMPRESSED - {item.transfer_syntax_uid})
        for syntax in wanted:
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    contexts = list(by_class.items())
    if len(contexts) > MAX_PROPOSED_CONTEXTS:
        raise SendError(f"{len(contexts)} SOP classes exceed {MAX_PROPOSED_CONTEXTS} contexts")
    return contexts


def send_files(
    peer: Peer,
    files: Sequence[FileToSend],
    progress: Callable[[int], None] | None = None,
) -> int:
    """C-STORE ``files`` over one association; returns how many were stored.

    Raises SendError on association failure or on any refused instance (after trying all).
    """
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = peer.timeout_s
    ae.dimse_timeout = peer.timeout_s
    ae.network_timeout = peer.timeout_s
    for sop_class, syntaxes in proposed_contexts(files):
        ae.requested_contexts.append(build_context(sop_class, syntaxes))
    assoc, tls = _associate(ae, peer)
    if not assoc.is_established:
        failure = tls.failure() if tls is not None else None
        if failure is not None:
            # The peer answered, but TLS failed: a matter of certificates, not an outage.
            raise SendError(f"TLS with {peer} failed: {failure}")
        raise SendError(
            f"association with {peer} {'rejected' if assoc.is_rejected else 'failed'}",
            unreachable=not assoc.is_rejected,
        )
    stored = 0
    refused: list[str] = []
    try:
        for item in files:
            status = assoc.send_c_store(item.path)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in _SUCCESS_OR_WARNING:
                stored += 1
            else:
                refused.append(f"{item.path.name}: status {'none' if code < 0 else hex(code)}")
                if not assoc.is_established:
                    break
            if progress is not None:
                progress(1)
        lost = not assoc.is_established
    finally:
        if assoc.is_established:
            assoc.release()
    if lost and stored < len(files):
        raise SendError(
            f"association with {peer} lost after {stored} of {len(files)}", unreachable=True
        )
    if refused:
        raise SendError(f"{len(refused)} of {len(files)} refused; first: {refused[0]}")
    return stored


def echo(peer: Peer) -> bool:
    """Whether ``peer`` answers a C-ECHO (Verification) within its timeout."""
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout_s
    ae.add_requested_context(VERIFICATION)
    try:
        assoc, _tls = _associate(ae, peer)
    except SendError as exc:
        LOGGER.warning("C-ECHO to %s not tried: %s", peer, exc)
        return False
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(getattr(status, "Status", -1)) == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def _associate(ae: AE, peer: Peer) -> tuple[Any, OutgoingTls | None]:
    """Request the association, over TLS when ``peer.tls`` says so (the peer's certificate
    and host name verified)."""
    if peer.tls is None:
        return ae.associate(peer.host, peer.port, ae_title=peer.ae_title), None
    try:
        tls = outgoing_tls(peer.tls, peer.host)
    except TlsSetupError as exc:
        raise SendError(f"TLS to {peer}: {exc}") from None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls.tls_args)
    return assoc, tls
