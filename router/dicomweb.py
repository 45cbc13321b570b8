"""A DICOMweb (PS3.18) client for radrouter's own requests: STOW-RS to a destination, QIDO-RS
and WADO-RS to a prior source, and the destination probe.

One ``requests`` session per use, with the endpoint's authentication (a bearer token or a
basic password read from the environment for every request, never logged) and, for https,
the same TLS as radrouter's DICOM TLS associations (TLS 1.2 or later, the BCP 195 suites,
``ca_file`` alone trusted when given, an optional client certificate). Errors say whether
nobody answered (an outage: retried, and the destination probe watches for its end) or the
server answered and refused.

Log lines and errors name the URL (the schema refuses credentials in it) and HTTP statuses,
never query values (a PatientID), tokens or response bodies.
"""

from __future__ import annotations

import base64
import email.message
import json
import mmap
import re
import ssl
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

import requests
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter

from config.schema import DicomWebBasicAuth, DicomWebEndpoint
from router.dicom_tls import TlsSetupError, describe_ssl_error, outgoing_tls
from router.secrets import SecretError, read_secret

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
OUTAGE_STATUS = frozenset({502, 503, 504})
"""A gateway or load balancer saying the server behind it is down: an outage, not a refusal."""
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses after which the same request may succeed later."""
CHUNK = 1 << 20


class DicomWebError(Exception):
    """A DICOMweb request failed: nobody answered (``unreachable``), or the server refused."""

    def __init__(
        self, message: str, *, unreachable: bool = False, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.status = status

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (an outage, a timeout, a 5xx, a 429)."""
        return self.unreachable or self.status in RETRYABLE_STATUS


class _TlsAdapter(HTTPAdapter):
    """https with radrouter's own SSL context (BCP 195, ``ca_file`` alone, client
    certificate, ``server_name``) instead of requests' certifi bundle."""

    def __init__(self, context: ssl.SSLContext, server_name: str) -> None:
        self._context = context
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        kwargs["server_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """The context verifies (CERT_REQUIRED, host name): requests must not add certifi's
        CAs to it, which it would do by naming them as ``ca_certs``."""


class DicomWebClient:
    """Requests to one DICOMweb root; a context manager (closes its connections)."""

    def __init__(
        self, endpoint: DicomWebEndpoint, environ: Mapping[str, str] | None = None
    ) -> None:
        self.endpoint = endpoint
        self._environ = environ
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy or .netrc from the environment
        if endpoint.tls is not None:
            host, _port = endpoint.host_port()
            try:
                tls = outgoing_tls(endpoint.tls, host, environ)
            except TlsSetupError as exc:
                raise DicomWebError(f"TLS to {endpoint.url}: {exc}") from None
            self.session.mount("https://", _TlsAdapter(tls.context, tls.server_name))

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def url(self, *segments: str) -> str:
        """``{root}/segment/...``, each segment percent-encoded (a UID from a server is one
        path segment, never a path)."""
        return "/".join([self.endpoint.url, *(quote(s, safe="") for s in segments)])

    def _authorization(self) -> dict[str, str]:
        auth = self.endpoint.auth
        if auth is None:
            return {}
        try:
            if isinstance(auth, DicomWebBasicAuth):
                password = read_secret(auth.password_env, None, "auth.password_env", self._environ)
                pair = f"{auth.user}:{password or ''}".encode()
                return {"Authorization": f"Basic {base64.b64encode(pair).decode('ascii')}"}
            token = read_secret(auth.token_env, None, "auth.token_env", self._environ)
        except SecretError as exc:
            raise DicomWebError(f"{self.endpoint.url}: {exc}") from None
        return {"Authorization": f"Bearer {(token or '').strip()}"}

    def request(
        self,
        method: str,
        segments: Sequence[str],
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        stream: bool = False,
        ok: frozenset[int] = frozenset({200}),
    ) -> requests.Response:
        """One request; a status outside ``ok`` raises DicomWebError (its body is not read
        into the message: it may quote patient data)."""
        url = self.url(*segments)
        sent = {**(headers or {}), **self._authorization()}
        where = f"{method} {url}"  # without the query: it may hold a PatientID
        if params:  # RFC 3986 percent-encoding (a space is %20, not the form encoding's +)
            url = f"{url}?{urlencode(params, quote_via=quote)}"
        try:
            response = self.session.request(
                method,
                url,
                headers=sent,
                data=data,
                stream=stream,
                timeout=self.endpoint.timeout_s,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            raise DicomWebError(
                f"TLS with {self.endpoint.url} failed: {_ssl_reason(exc)}"
            ) from None
        except requests.Timeout:
            raise DicomWebError(
                f"{where}: no answer within {self.endpoint.timeout_s:g} s", unreachable=True
            ) from None
        except requests.ConnectionError as exc:
            raise DicomWebError(f"{where}: {_connection_reason(exc)}", unreachable=True) from None
        except requests.RequestException as exc:
            raise DicomWebError(f"{where}: {type(exc).__name__}") from None
        if response.status_code not in ok:
            status = response.status_code
            response.close()
            raise DicomWebError(
                f"{where} answered HTTP {status} {response.reason or ''}".rstrip(),
                unreachable=status in OUTAGE_STATUS,
                status=status,
            )
        return response

    def request_with_retries(
        self,
        method: str,
        segments: Sequence[str],
        *,
        attempts: int = 3,
        backoff_s: float = 1.0,
        **kwargs: Any,
    ) -> requests.Response:
        """``request``, tried again after a retryable failure (an outage, a timeout, 5xx,
        429) with a doubling pause: for the prior stage, whose requests are reads."""
        for attempt in range(1, attempts + 1):
            try:
                return self.request(method, segments, **kwargs)
            except DicomWebError as exc:
                if attempt == attempts or not exc.retryable:
                    raise
            time.sleep(backoff_s * 2 ** (attempt - 1))
        raise AssertionError("not reached")


def _ssl_reason(exc: Exception) -> str:
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError):
            return describe_ssl_error(cause)
    return "handshake failed"


def _connection_reason(exc: Exception) -> str:
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return str(cause.strerror).lower()
    return "cannot connect"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        stack.extend(a for a in item.args if isinstance(a, BaseException))
        for linked in (item.__cause__, item.__context__, getattr(item, "reason", None)):
            if isinstance(linked, BaseException):
                stack.append(linked)


# --------------------------------------------------------------------------------------------
# multipart/related (RFC 2387) with application/dicom parts


@dataclass(frozen=True)
class MultipartBody:
    """A multipart/related body of Part-10 files, streamed from disk with a known length (so
    it goes with Content-Length, not chunked: not every server takes chunked uploads)."""

    paths: tuple[Path, ...]
    boundary: str

    @property
    def content_type(self) -> str:
        return f'{MULTIPART_DICOM}; boundary="{self.boundary}"'

    def _head(self, index: int) -> bytes:
        lead = b"" if index == 0 else b"\r\n"
        return lead + f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()

    def _tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    def __len__(self) -> int:
        return sum(len(self._head(i)) + p.stat().st_size for i, p in enumerate(self.paths)) + len(
            self._tail()
        )

    def __iter__(self) -> Iterator[bytes]:
        for index, path in enumerate(self.paths):
            yield self._head(index)
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
        yield self._tail()


def qido_datasets(response: requests.Response) -> list[Dataset]:
    """A QIDO-RS answer (DICOM JSON array; 204 or an empty body when nothing matched), each
    item as a data set; an item that cannot be read is left out. Raises ValueError naming
    what is wrong when the answer is not a DICOM JSON array."""
    if response.status_code == 204 or not response.content.strip():
        return []
    try:
        items: Any = json.loads(response.content)
    except ValueError:
        raise ValueError("QIDO-RS answer is not DICOM JSON") from None
    if not isinstance(items, list):
        raise ValueError("QIDO-RS answer is not a JSON array")
    found = []
    for item in items:
        if isinstance(item, dict):
            try:
                found.append(Dataset.from_json(item))
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # an item we cannot read names nothing
    return found


def multipart_boundary(content_type: str) -> str | None:
    """The boundary of a ``multipart/related`` Content-Type, or None when it is not one."""
    message = email.message.Message()
    message["Content-Type"] = content_type
    if message.get_content_type() != "multipart/related":
        return None
    boundary = message.get_param("boundary")
    return boundary if isinstance(boundary, str) and boundary else None


def spooled(
    response: requests.Response, folder: Path, limit_bytes: int, deadline: float
) -> IO[bytes]:
    """The response body in an anonymous file in ``folder`` (under the data directory, never
    /tmp: it is patient data), at most ``limit_bytes``, read completely before ``deadline``
    (``time.monotonic()``)."""
    where = response.url.split("?", 1)[0]
    handle = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - the caller closes it
    try:
        size = 0
        for chunk in response.iter_content(CHUNK):
            size += len(chunk)
            if size > limit_bytes:
                raise DicomWebError(f"{where}: the answer is larger than {limit_bytes >> 20} MiB")
            if time.monotonic() > deadline:
                raise DicomWebError(f"{where}: the answer did not arrive in time", unreachable=True)
            handle.write(chunk)
        handle.flush()
        handle.seek(0)
    except requests.RequestException as exc:
        handle.close()
        raise DicomWebError(f"{where}: the answer was cut short ({type(exc).__name__})") from None
    except BaseException:
        handle.close()
        raise
    return handle


def multipart_parts(handle: IO[bytes], boundary: str) -> Iterator[tuple[str, bytes]]:
    """The (Content-Type, body) of each part of a multipart body in ``handle``, one at a time
    (the file is mapped, not read into memory)."""
    if handle.seek(0, 2) == 0:
        return
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as body:
        delimiter = f"--{boundary}".encode()
        position = body.find(delimiter)
        if position < 0:
            raise DicomWebError("the multipart answer holds no part")
        while True:
            position += len(delimiter)
            if body[position : position + 2] == b"--":
                return  # the close delimiter
            headers_end = body.find(b"\r\n\r\n", position)
            if headers_end < 0:
                raise DicomWebError("a multipart part has no end of headers")
            headers = body[position:headers_end].decode("latin-1")
            start = headers_end + 4
            end = body.find(b"\r\n" + delimiter, start)
            if end < 0:
                raise DicomWebError("the multipart answer is cut short")
            found = re.search(r"(?im)^content-type:\s*([^\r\n]+)", headers)
            yield (found.group(1).strip() if found else ""), bytes(body[start:end])
            position = end + 2
