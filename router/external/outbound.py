"""One job's series, de-identified and sent to the vendor that runs the external algorithm.

The way back (the mapping) is recorded before anything leaves; the de-identified copies are
written to a private outbox for the send and deleted after it, sent or not.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from config.schema import DicomWebDestination, ExternalAlgorithm, RouterConfig
from router.audit.events import NO_AUDIT, AuditRecorder, RemoteNode, SendStarted
from router.deidentify import (
    DeidentifiedInstance,
    Deidentifier,
    MappingStore,
    SeriesRefusedError,
    burned_in_refusal,
    keys_for_site,
)
from router.deliver.dicom_send import FileToSend, Peer, SendError, send_files
from router.deliver.dicomweb_send import stow_files
from router.external.declared import deid_options
from router.receive.private_files import make_private_dir

SendFunction = Callable[[Peer, list[FileToSend]], int]
WebSendFunction = Callable[[DicomWebDestination, list[FileToSend]], int]


@dataclass(frozen=True)
class SentToVendor:
    deid_study_uid: str
    deid_series_uid: str
    instances: int
    seconds: float
    """De-identification and sending together."""


def mapping_store(data_dir: Path, name: str, declared: ExternalAlgorithm) -> MappingStore:
    keys = keys_for_site(data_dir, name)
    return MappingStore.in_data_dir(data_dir, keys.storage_key(), declared.mapping_keep_days)


class VendorSender:
    """De-identifies a series for one external algorithm and sends it to its endpoint."""

    def __init__(
        self,
        data_dir: Path,
        config: Callable[[], RouterConfig],
        *,
        send: SendFunction = send_files,
        send_web: WebSendFunction = stow_files,
        audit: AuditRecorder = NO_AUDIT,
    ) -> None:
        self.data_dir = data_dir
        self._config = config
        self._send = send
        self._send_web = send_web
        self._audit = audit
        self._deidentifiers: dict[str, tuple[str, Deidentifier]] = {}
        """By name: the declaration it was made for (as JSON) and the de-identifier."""

    def send(
        self,
        job_id: int,
        study_uid: str,
        name: str,
        declared: ExternalAlgorithm,
        paths: Sequence[Path],
        before_sending: Callable[[SentToVendor], None] | None = None,
    ) -> SentToVendor:
        """Raises ``SeriesRefusedError`` (the series must not leave: the result says why) or
        ``SendError``/``OSError`` (the vendor did not take it: the job is retried).
        ``before_sending`` is told what is about to leave once the way back is recorded, so
        the request that an answer is recognised by exists before a fast vendor answers."""
        started = time.monotonic()
        headers = [dcmread(p, stop_before_pixels=True) for p in paths]
        refusal = burned_in_refusal(headers, allow=declared.deidentify.allow_burned_in_annotation)
        if refusal is not None:
            raise SeriesRefusedError(refusal)
        config = self._config()
        destination = config.destinations.get(declared.send_to)
        if destination is None:
            raise SendError(f"destination {declared.send_to!r} is no longer configured")
        deidentifier = self._deidentifier(name, declared)
        store = mapping_store(self.data_dir, name, declared)
        outbox = self.data_dir / "external-outbox" / str(job_id)
        make_private_dir(outbox.parent)
        shutil.rmtree(outbox, ignore_errors=True)
        make_private_dir(outbox)
        try:
            done: list[DeidentifiedInstance] = []
            files: list[FileToSend] = []
            for index, path in enumerate(paths):
                instance = deidentifier.deidentify(dcmread(path))
                target = outbox / f"{index:05d}.dcm"
                instance.dataset.save_as(target, enforce_file_format=True)
                files.append(FileToSend.from_path(target))
                done.append(_without_pixels(instance))
            store.record(name, done)  # the way back exists before anything leaves
            first = done[0]
            leaving = SentToVendor(
                deid_study_uid=first.study_uid,
                deid_series_uid=str(first.dataset.get("SeriesInstanceUID", "")),
                instances=len(done),
                seconds=0.0,
            )
            if before_sending is not None:
                before_sending(leaving)
            self._deliver(config, destination, study_uid, files)
        finally:
            shutil.rmtree(outbox, ignore_errors=True)
        return replace(leaving, seconds=time.monotonic() - started)

    def _deliver(
        self,
        config: RouterConfig,
        destination: object,
        study_uid: str,
        files: list[FileToSend],
    ) -> None:
        if isinstance(destination, DicomWebDestination):
            host, port = destination.host_port()
            remote = RemoteNode(destination.url, host, port)
            local_ae = config.node.ae_title
        else:
            peer = Peer.for_destination(destination, config.node.ae_title)  # type: ignore[arg-type]
            remote = RemoteNode(peer.ae_title, peer.host, peer.port)
            local_ae = peer.calling_ae_title
        started = SendStarted(remote, local_ae, study_uid, Counter(f.sop_class_uid for f in files))
        self._audit.record(started)
        try:
            if isinstance(destination, DicomWebDestination):
                self._send_web(destination, files)
            else:
                self._send(peer, files)
        except Exception as exc:
            self._audit.record(started.finished(str(exc)))
            raise
        self._audit.record(started.finished(None))

    def _deidentifier(self, name: str, declared: ExternalAlgorithm) -> Deidentifier:
        declaration = declared.model_dump_json()
        made = self._deidentifiers.get(name)
        if made is None or made[0] != declaration:  # a changed declaration renews it
            deidentifier = Deidentifier(deid_options(declared), keys_for_site(self.data_dir, name))
            made = self._deidentifiers[name] = (declaration, deidentifier)
        return made[1]


def _without_pixels(instance: DeidentifiedInstance) -> DeidentifiedInstance:
    """What the mapping needs of a sent instance: its UIDs and identities, not its pixels."""
    kept = Dataset()
    kept.SeriesInstanceUID = instance.dataset.get("SeriesInstanceUID", "")
    instance.dataset = kept
    return instance
