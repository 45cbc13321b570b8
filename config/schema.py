"""The routing YAML as frozen pydantic v2 models; unknown keys are rejected everywhere."""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

AE_TITLE_PATTERN = r"^[ -\[\]-~]{1,16}$"  # 16 chars of the DICOM AE default repertoire, no '\'
"""DICOM AE titles: up to 16 characters of the default character repertoire, no backslash."""
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""Names of environment variables (secrets are read from the environment, never the YAML)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Priority(enum.StrEnum):
    """Priority lanes, most urgent first. The job queue orders by ``rank``."""

    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"

    @property
    def rank(self) -> int:
        return {"stat": 0, "urgent": 1, "routine": 2}[self.value]


AETitle = Annotated[str, Field(pattern=AE_TITLE_PATTERN)]


class AllowedCaller(Strict):
    """A peer allowed to associate: its calling AE title and, optionally, its host address."""

    ae_title: AETitle
    host: str | None = None


# --------------------------------------------------------------------------------------------
# DICOM TLS (PS3.15 Annex B.9, BCP 195): the node's TLS listener, and TLS to destinations and
# prior sources. Secrets (a key's passphrase) come from the environment or a file, never the YAML.

DICOM_TLS_PORT = 2762
"""The IANA port for DICOM over TLS (``dicom-tls``)."""
SHA256_FINGERPRINT_PATTERN = r"^([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$"


def _needs_certificate(value: object, info: ValidationInfo) -> None:
    """Field check (at the key's own line) for keys that only make sense with ``cert_file``."""
    if value is not None and "cert_file" in info.data and info.data["cert_file"] is None:
        raise ValueError(f"{info.field_name} needs cert_file (the certificate the key is for)")


def _one_password_source(value: Path | None, info: ValidationInfo) -> Path | None:
    """``key_password_file`` beside ``key_password_env``: say which one is meant."""
    if value is not None and info.data.get("key_password_env") is not None:
        raise ValueError("give key_password_env or key_password_file, not both")
    return value


class ClientCertificate(Strict):
    """A client certificate the TLS listener recognises, by exactly one of ``subject_cn``,
    ``san`` or ``sha256``, and the calling AE titles it may use."""

    subject_cn: str | None = Field(default=None, min_length=1)
    """The certificate's subject common name."""
    san: str | None = Field(default=None, min_length=1)
    """A DNS name, IP address or URI among its subject alternative names."""
    sha256: str | None = Field(default=None, pattern=SHA256_FINGERPRINT_PATTERN)
    """The SHA-256 fingerprint of the certificate (DER), in hex, colons allowed."""
    ae_titles: list[AETitle] = Field(min_length=1)

    @field_validator("sha256")
    @classmethod
    def _plain_hex(cls, value: str | None) -> str | None:
        return None if value is None else value.replace(":", "").lower()

    @model_validator(mode="after")
    def _one_identity(self) -> ClientCertificate:
        given = [v for v in (self.subject_cn, self.san, self.sha256) if v is not None]
        if len(given) != 1:
            raise ValueError("identify the certificate by exactly one of subject_cn, san, sha256")
        return self


class NodeTlsConfig(Strict):
    """The node's DICOM TLS listener: TLS 1.2 or later with the BCP 195 cipher suites, and
    optionally client certificates (mutual TLS) mapped to the calling AE titles they may use."""

    bind: str | None = None
    """Address of the TLS listener; ``None``: the node's ``bind``."""
    port: int = Field(default=DICOM_TLS_PORT, ge=1, le=65535)
    cert_file: Path
    """The node's certificate (PEM), followed by any intermediate CA certificates."""
    key_file: Path | None = None
    """Its private key (PEM); ``None``: the key is in ``cert_file``."""
    key_password_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    """Environment variable holding the key's passphrase (for an encrypted key)."""
    key_password_file: Path | None = None
    """File holding the key's passphrase (one line), e.g. a container secret."""
    client_ca_file: Path | None = None
    """PEM bundle of the CAs that sign client certificates. Given, every client must present a
    certificate one of them signed (mutual TLS); ``None``: no client certificate is asked for."""
    client_certificates: list[ClientCertificate] | None = None
    """With ``client_ca_file``: which certificate may use which calling AE titles; an
    association from a certificate no entry matches, or with an AE title its entries do not
    list, is rejected. ``None``: any certificate the CAs signed, with any AE title."""

    _password_source = field_validator("key_password_file")(_one_password_source)

    @field_validator("client_certificates")
    @classmethod
    def _needs_cas(
        cls, value: list[ClientCertificate] | None, info: ValidationInfo
    ) -> list[ClientCertificate] | None:
        if value is not None and info.data.get("client_ca_file") is None:
            raise ValueError("client_certificates needs client_ca_file (the CAs that sign them)")
        return value


class DicomTlsClient(Strict):
    """TLS for radrouter's associations to one peer (a destination or a prior source): TLS 1.2
    or later with the BCP 195 cipher suites; the peer's certificate must chain to ``ca_file``
    and carry ``server_name``."""

    ca_file: Path | None = None
    """PEM bundle of the CAs to trust for this peer; ``None``: the system's."""
    cert_file: Path | None = None
    """radrouter's client certificate (PEM, with intermediates), for a peer that asks for one."""
    key_file: Path | None = None
    """Its private key (PEM); ``None``: the key is in ``cert_file``."""
    key_password_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    key_password_file: Path | None = None
    server_name: str | None = Field(default=None, min_length=1)
    """The DNS name or IP address the peer's certificate must carry; default: its ``host``."""

    _password_source = field_validator("key_password_file")(_one_password_source)

    @field_validator("key_file", "key_password_env", "key_password_file", mode="after")
    @classmethod
    def _with_certificate(cls, value: object, info: ValidationInfo) -> object:
        _needs_certificate(value, info)
        return value


class InputLimits(Strict):
    """What one peer may send the node (docs/security.md, "Hostile DICOM input")."""

    max_instance_mb: int = Field(default=2048, ge=1, le=65536)
    """Largest data set of one instance. A larger one is refused ("cannot understand") as it
    arrives, without being kept; what arrived up to the limit is on disk, never in memory."""
    max_sequence_depth: int = Field(default=32, ge=1, le=64)
    """Deepest nesting of sequences (SR content trees reach about 10)."""
    max_associations_per_host: int = Field(default=8, ge=1, le=256)
    """Connections one host may hold at once; more are refused with a transient reason
    (local limit exceeded), so one host cannot take every one of ``max_associations``."""


class QuarantineConfig(Strict):
    """What the node keeps of the instances it refused, and for how long."""

    max_mb: int = Field(default=1024, ge=0)
    """Size cap of the quarantine folder; the oldest entries are removed first."""
    keep_bytes_days: float = Field(default=7.0, ge=0)
    """The refused bytes (patient data) are kept this long, to look into a refusal."""
    keep_reasons_days: float = Field(default=90.0, ge=0)
    """The reason of each refusal (no patient data) is kept this long."""

    @model_validator(mode="after")
    def _reasons_outlive_bytes(self) -> QuarantineConfig:
        if self.keep_reasons_days < self.keep_bytes_days:
            raise ValueError("keep_reasons_days must be at least keep_bytes_days")
        return self


class NodeConfig(Strict):
    """radrouter's own DICOM node: a plain DICOM listener, a DICOM TLS listener, or both."""

    ae_title: AETitle = "RADROUTER"
    bind: str = "127.0.0.1"
    """Loopback by default: open it (``0.0.0.0``) together with ``allowed_callers`` or
    client certificates."""
    port: int | None = Field(default=11112, ge=1, le=65535)
    """The plain DICOM (TCP) port; ``None``: no plain listener (TLS only)."""
    tls: NodeTlsConfig | None = None
    """The DICOM TLS listener, on its own port beside the plain one; ``None``: none."""
    check_called_ae: bool = True
    allowed_callers: list[AllowedCaller] | None = None
    """``None`` accepts any caller; a list accepts only those listed."""
    receivers: int = Field(default=1, ge=1, le=64)
    """Processes listening on the DICOM port together (``SO_REUSEPORT``: the kernel spreads
    the associations across them), so ingest grows with cores. The first is the router
    itself; the others only receive (``radrouter serve --role receiver``), into the same spool
    and database. Needs a fixed ``port`` and the router started from a configuration file."""
    max_associations: int = Field(default=16, ge=1, le=256)
    network_timeout_s: float = Field(default=60.0, gt=0)
    """An association that sends nothing for this long is aborted, and one PDU must arrive
    whole within it."""
    acse_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """A connection must send its association request within this long."""
    limits: InputLimits = InputLimits()
    quarantine: QuarantineConfig = QuarantineConfig()

    @model_validator(mode="after")
    def _listeners(self) -> NodeConfig:
        if self.port is None and self.tls is None:
            raise ValueError("the node needs a listener: give port, tls, or both")
        if (
            self.port is not None
            and self.tls is not None
            and self.tls.port == self.port
            and (self.tls.bind or self.bind) == self.bind
        ):
            raise ValueError(f"port and tls.port are both {self.port}: give TLS its own port")
        return self


class HttpConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    allowed_hosts: list[Annotated[str, Field(pattern=HOST_NAME_PATTERN)]] | None = None
    """Host names (the ``Host`` header, port ignored) requests may be addressed to; others
    are refused (DNS rebinding). ``None``: ``host`` unless it is a wildcard, plus localhost,
    127.0.0.1 and ::1, plus this machine's name when ``host`` is a wildcard."""
    tls: HttpTlsConfig | None = None
    """HTTPS (TLS 1.2 or later); ``None``: plain HTTP, for loopback only."""
    auth: HttpAuthConfig | None = None
    """``None``: no authentication, for loopback only (``/readyz`` says it is insecure)."""


class DatabaseConfig(Strict):
    """Where the router's state and queue live: ``sqlite`` (the default: one file in the data
    folder, one host) or ``postgresql`` (shared by every process and host, docs/scaling.md)."""

    engine: Literal["sqlite", "postgresql"] = "sqlite"
    url: str | None = Field(default=None, max_length=1000)
    """``postgresql://USER@HOST:PORT/DBNAME`` with libpq parameters after ``?`` (e.g.
    ``sslmode=verify-full&sslrootcert=/etc/radrouter/db-ca.pem``); no password in it."""
    password_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    """The environment variable holding the database password (or ``password_file``; neither
    when the server trusts a client certificate or a local socket)."""
    password_file: Path | None = None

    @model_validator(mode="after")
    def _url_fits_engine(self) -> DatabaseConfig:
        if self.engine == "sqlite":
            if self.url or self.password_env or self.password_file:
                raise ValueError("url and passwords are for engine: postgresql")
            return self
        if not self.url:
            raise ValueError("engine postgresql needs url: postgresql://USER@HOST:PORT/DBNAME")
        if not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("url must start with postgresql://")
        authority = self.url.split("://", 1)[1].split("/", 1)[0]
        if ":" in authority.split("@", 1)[0] and "@" in authority:
            raise ValueError("url holds a password: give it by password_env or password_file")
        if "password=" in self.url:
            raise ValueError("url holds a password: give it by password_env or password_file")
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        return self


class StorageConfig(Strict):
    data_dir: Path = Path("var")
    """Spool files (and the SQLite database) live here."""
    database: DatabaseConfig = DatabaseConfig()
    min_free_mb: int = Field(default=256, ge=0)
    """Below this free space the node refuses new instances with an out-of-resources status."""
    keep_finished_days: float | None = Field(default=30.0, gt=0)
    """Received images and result files of a finished study (done, unrouted, or a prior)
    are deleted this long after it finished; its index rows stay. null: kept forever."""
    keep_unresolved_days: float | None = Field(default=90.0, gt=0)
    """The same for a study that needs attention (a failed job, a dead letter), whose files
    a retry would need: kept longer. null: kept until resolved."""


ResultObjectKind = Literal["sr", "seg", "kos", "gsps", "sc"]
"""The objects a result can be sent as: TID 1500 SR, SEG, Key Object Selection, Grayscale
Softcopy Presentation State (outlines and labels over the original images) and a
secondary-capture summary image (the key image with the outline burned in, for viewers that
show neither SEG nor SR)."""
DEFAULT_RESULT_OBJECTS: tuple[ResultObjectKind, ...] = ("sr", "seg", "kos")


class DicomDestination(Strict):
    """A DICOM node that results are C-STOREd to."""

    type: Literal["dicom"] = "dicom"
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: AETitle | None = None
    """AE title radrouter presents; defaults to the node's own."""
    timeout_s: float = Field(default=30.0, gt=0)
    tls: DicomTlsClient | None = None
    """DICOM TLS to this destination; ``None``: plain DICOM."""
    results: tuple[ResultObjectKind, ...] = DEFAULT_RESULT_OBJECTS
    """Which result objects this destination gets (a modern viewer: SR and SEG; a legacy one:
    GSPS and the summary image). Objects a result does not have (a SEG without masks, a KOS or
    GSPS without findings) are not sent."""

    @field_validator("results")
    @classmethod
    def _results_listed_once(
        cls, kinds: tuple[ResultObjectKind, ...]
    ) -> tuple[ResultObjectKind, ...]:
        if not kinds:
            raise ValueError("results must name at least one object (sr, seg, kos, gsps, sc)")
        repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
        if repeated:
            raise ValueError(f"results names {', '.join(repeated)} more than once")
        return kinds


# --------------------------------------------------------------------------------------------
# DICOMweb (PS3.18) towards a PACS: STOW-RS destinations, QIDO-RS + WADO-RS prior sources.


def _dicomweb_url(value: str) -> str:
    """The DICOMweb root (``https://pacs.example/dicom-web``): http(s), a host, a path, and
    no credentials, query or fragment (the URL is logged; secrets go in ``auth``)."""
    scheme, _, rest = value.partition("://")
    authority = rest.split("/", 1)[0]
    if scheme.lower() not in ("http", "https") or not authority or any(c.isspace() for c in value):
        raise ValueError(
            f"{value!r} is not an http:// or https:// URL such as https://pacs/dicom-web"
        )
    if "@" in authority:
        raise ValueError("the URL must not hold credentials; give them in auth")
    if "?" in value or "#" in value:
        raise ValueError("the URL is the DICOMweb root: no query (?) or fragment (#)")
    return value.rstrip("/")


DicomWebUrl = Annotated[str, AfterValidator(_dicomweb_url)]


class DicomWebBearerAuth(Strict):
    """``Authorization: Bearer <token>``, the token read from an environment variable for
    every request (so a renewed token is used from the next request on)."""

    type: Literal["bearer"]
    token_env: str = Field(pattern=ENV_VAR_PATTERN)
    """Name of the environment variable holding the token (never the token itself)."""


class DicomWebBasicAuth(Strict):
    """HTTP basic authentication; the password read from an environment variable."""

    type: Literal["basic"]
    user: str = Field(min_length=1, pattern=r"^[^:\s]+$")
    password_env: str = Field(pattern=ENV_VAR_PATTERN)
    """Name of the environment variable holding the password (never the password itself)."""


DicomWebAuth = Annotated[DicomWebBearerAuth | DicomWebBasicAuth, Field(discriminator="type")]


class DicomWebEndpoint(Strict):
    """A DICOMweb server: its root URL, how radrouter signs in, and TLS for https."""

    url: DicomWebUrl
    """The DICOMweb root: ``{url}/studies`` is where STOW-RS posts and QIDO-RS searches."""
    auth: DicomWebAuth | None = None
    """``{type: bearer, token_env: VAR}`` or ``{type: basic, user: NAME, password_env: VAR}``;
    ``None``: no authentication."""
    tls: DicomTlsClient | None = None
    """For https: the CAs to trust (``ca_file``; the system's without it), a client
    certificate and key for a server that asks for one, and ``server_name``. TLS 1.2 or later
    with the BCP 195 cipher suites, as for DICOM TLS."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Connecting, and each wait for the server's answer."""

    @model_validator(mode="after")
    def _secrets_only_over_tls(self) -> DicomWebEndpoint:
        loopback = self.host_port()[0] in ("127.0.0.1", "localhost", "::1")
        if self.auth is not None and self.url.startswith("http://") and not loopback:
            raise ValueError("auth needs an https:// url (or a loopback host)")
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("tls needs an https:// url")
        return self

    def host_port(self) -> tuple[str, int]:
        """The server's host and port, for the audit trail and log lines."""
        authority = self.url.split("://", 1)[1].split("/", 1)[0]
        default = 443 if self.url.startswith("https://") else 80
        if authority.startswith("["):  # an IPv6 literal
            host, _, port = authority[1:].partition("]")
            return host, int(port.lstrip(":") or default)
        host, _, port = authority.partition(":")
        return host, int(port) if port.isdigit() else default


class DicomWebDestination(DicomWebEndpoint):
    """A DICOMweb server that results are stored to with STOW-RS (``POST {url}/studies``)."""

    type: Literal["dicomweb"]
    results: tuple[ResultObjectKind, ...] = DEFAULT_RESULT_OBJECTS
    """As for a DICOM destination: which result objects it gets."""

    @field_validator("results")
    @classmethod
    def _results_listed_once(
        cls, kinds: tuple[ResultObjectKind, ...]
    ) -> tuple[ResultObjectKind, ...]:
        return DicomDestination._results_listed_once(kinds)


def _dicom_by_default(value: object) -> object:
    """A destination or prior source without ``type`` is a DICOM one (files written before
    DICOMweb came keep working)."""
    if isinstance(value, Mapping) and "type" not in value:
        return {**value, "type": "dicom"}
    return value


Destination = Annotated[
    DicomDestination | DicomWebDestination,
    Field(discriminator="type"),
    BeforeValidator(_dicom_by_default),  # after the discriminator: pydantic runs it first
]
"""``destinations.<name>``: ``type: dicom`` (C-STORE, the default) or ``type: dicomweb``
(STOW-RS)."""


class RetryPolicy(Strict):
    max_attempts: int = Field(default=3, ge=1, le=100_000)
    backoff_initial_s: float = Field(default=2.0, ge=0)
    backoff_max_s: float = Field(default=300.0, ge=0)

    def delay_s(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, capped."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, attempt - 1)))


class CompletionConfig(Strict):
    """When a series/study counts as complete. Evidence first, timers as the last resort."""

    settle_after_release_s: float = Field(default=0.5, ge=0, le=60)
    """After the association that carried a geometrically whole series is released."""
    series_idle_s: float = Field(default=10.0, gt=0)
    study_idle_s: float = Field(default=30.0, gt=0)
    hard_cap_s: float = Field(default=900.0, gt=0)
    """A study is processed at most this long after its first instance, whatever else."""
    check_interval_s: float = Field(default=0.1, gt=0, le=10)

    @model_validator(mode="after")
    def _ordered(self) -> CompletionConfig:
        if self.hard_cap_s < self.study_idle_s:
            raise ValueError("hard_cap_s must be at least study_idle_s")
        return self


class JobRetryPolicy(RetryPolicy):
    """Retries of a failed algorithm run: few and soon (a model that crashes twice is broken)."""

    max_attempts: int = Field(default=2, ge=1, le=100_000)
    backoff_initial_s: float = Field(default=1.0, ge=0)


class DispatchRetryPolicy(RetryPolicy):
    """Retries of a send to a destination: a day of them, every 5 minutes at most once the
    back-off is capped (a PACS maintenance window lasts hours; the destination probe re-sends
    as soon as it answers again, so the cap only bounds the load while it is down)."""

    max_attempts: int = Field(default=300, ge=1, le=100_000)
    backoff_initial_s: float = Field(default=2.0, ge=0)
    backoff_max_s: float = Field(default=300.0, ge=0)


class JobsConfig(Strict):
    workers: int = Field(default=1, ge=1, le=64)
    retry: JobRetryPolicy = JobRetryPolicy()
    timeout_s: float | None = Field(default=None, gt=0)
    """Per-job timeout; defaults to the algorithm's own ``max_runtime_s``."""


class DispatchConfig(Strict):
    retry: DispatchRetryPolicy = DispatchRetryPolicy()
    probe_interval_s: float = Field(default=30.0, ge=0, le=3600)
    """How often a destination that could not be reached is asked for a C-ECHO; when it
    answers, what waits for it is sent at once, oldest first. 0 turns probing off."""
    resend_dead_when_back: bool = True
    """Dead letters that died because the destination was unreachable are re-sent when it
    answers again (those it refused stay dead: ``radrouter retry`` sends them)."""


class MatchOperator(Strict):
    """Explicit operators for one header value. All given operators must hold."""

    equals: str | float | None = None
    in_: list[str | float] | None = Field(default=None, alias="in")
    regex: str | None = None
    min: float | None = None
    max: float | None = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> MatchOperator:
        if all(
            value is None
            for value in (self.equals, self.in_, self.regex, self.min, self.max, self.exists)
        ):
            raise ValueError("give at least one of: equals, in, regex, min, max, exists")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return value


Matcher = str | float | MatchOperator
"""A bare value means ``equals``."""

ATTRIBUTE_PATTERN = r"^(CallingAE|CalledAE|[A-Z][A-Za-z0-9]*)$"
"""Matcher keys: DICOM keywords (``Modality``) or the association's ``CallingAE``/``CalledAE``."""


class Action(Strict):
    """What to do with a series a rule selects."""

    run: str | None = None
    """Algorithm name from the registry; ``None`` forwards without running anything."""
    priority: Priority = Priority.ROUTINE
    send_to: list[str] = Field(default_factory=list)


class Rule(Action):
    name: str = Field(min_length=1, max_length=64)
    when: dict[Annotated[str, Field(pattern=ATTRIBUTE_PATTERN)], Matcher]
    continue_: bool = Field(default=False, alias="continue")
    """Evaluate the following rules too (first match wins otherwise)."""
    enabled: bool = True


class QaSign(Strict):
    """One way a QA, phantom or calibration series shows itself: every condition must hold."""

    name: str = Field(min_length=1, max_length=64)
    when: dict[Annotated[str, Field(pattern=ATTRIBUTE_PATTERN)], Matcher] = Field(min_length=1)


_QA_WORDS = r"(?i)\b(phantom|qa|qc|constancy|calibration|calib)\b"


def _default_qa_signs() -> list[QaSign]:
    return [
        QaSign(
            name="phantom body part", when={"BodyPartExamined": MatchOperator(equals="PHANTOM")}
        ),
        QaSign(name="QA patient name", when={"PatientName": MatchOperator(regex=_QA_WORDS)}),
        QaSign(
            name="QA patient ID", when={"PatientID": MatchOperator(regex=r"(?i)^(qa|qc|phantom)")}
        ),
        QaSign(
            name="QA study description", when={"StudyDescription": MatchOperator(regex=_QA_WORDS)}
        ),
        QaSign(
            name="QA series description", when={"SeriesDescription": MatchOperator(regex=_QA_WORDS)}
        ),
    ]


class QaConfig(Strict):
    """How quality-control, phantom and calibration series are recognised: by any one sign.
    Such a series is never given to a clinical algorithm nor raises a clinical flag, whatever
    the rules say; only quality-control algorithms run on it (``router.route.matching``)."""

    signs: list[QaSign] = Field(default_factory=_default_qa_signs)


class UsageConfig(Strict):
    """Usage metering (``radrouter usage``, ``/api/usage``)."""

    sites: dict[AETitle, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=dict
    )
    """A site name for each calling AE title (a PACS or modality), so the counts per source
    say which hospital or department sent the studies."""


class DriftThresholds(Strict):
    """When an algorithm's recent results count as drifted from its baseline (``router.drift``):
    a distribution by its population stability index (PSI) with a significance test (KS for
    numbers, chi-square for categories), a rate by its change in absolute terms with Fisher's
    exact test. A statistic is judged only with ``min_results`` results on both sides."""

    window_days: float = Field(default=7.0, gt=0, le=366)
    """The rolling window compared with the baseline: the results of the last so many days."""
    min_results: int = Field(default=30, ge=1, le=1_000_000)
    """Results needed in the baseline and in the window before anything is judged."""
    min_feedback: int = Field(default=20, ge=1, le=1_000_000)
    """Results with readers' feedback needed on both sides before agreement is judged."""
    psi_warn: float = Field(default=0.1, gt=0, le=100)
    psi_alert: float = Field(default=0.25, gt=0, le=100)
    ks_p_alert: float = Field(default=0.01, gt=0, lt=1)
    """A distribution or rate alerts only when its test says the change is unlikely by chance
    (p below this); otherwise a change past the alert threshold is a warning."""
    warn_p: float = Field(default=0.2, gt=0, le=1)
    """A change past a warning threshold warns only when its test's p is below this: on a
    small window a change as likely as not by chance (e.g. two more positives in 40 results)
    is not worth a look. 1 turns this off."""
    positive_rate_warn: float = Field(default=0.05, gt=0, le=1)
    """Change of the positive rate (present among assessed), up or down, absolute."""
    positive_rate_alert: float = Field(default=0.10, gt=0, le=1)
    not_assessed_rate_warn: float = Field(default=0.05, gt=0, le=1)
    """Rise of the not-assessed rate (among all results), absolute."""
    not_assessed_rate_alert: float = Field(default=0.10, gt=0, le=1)
    agreement_warn: float = Field(default=0.05, gt=0, le=1)
    """Fall of the readers' agreement rate (among results with feedback), absolute."""
    agreement_alert: float = Field(default=0.10, gt=0, le=1)


_DRIFT_PAIRS = (
    ("psi_warn", "psi_alert"),
    ("positive_rate_warn", "positive_rate_alert"),
    ("not_assessed_rate_warn", "not_assessed_rate_alert"),
    ("agreement_warn", "agreement_alert"),
)


class DriftConfig(DriftThresholds):
    """Drift monitoring of each algorithm's inputs and outputs against its baseline (recorded
    at go-live: ``radrouter drift baseline``); the thresholds here, and per algorithm in
    ``algorithms`` (only the keys given there change)."""

    algorithms: dict[str, DriftThresholds] = Field(default_factory=dict)
    series_days: int = Field(default=30, ge=1, le=366)
    """Days of the daily series (positive rate, not-assessed rate, mean probability)."""
    cache_s: float = Field(default=10.0, ge=0, le=3600)
    """How long a computed report is reused (by /metrics scrapes and /api/drift)."""

    @model_validator(mode="after")
    def _warn_below_alert(self) -> DriftConfig:
        for name in ["", *self.algorithms]:
            settings = self.for_algorithm(name)
            for warn, alert in _DRIFT_PAIRS:
                if getattr(settings, warn) > getattr(settings, alert):
                    where = f"algorithms.{name}: " if name else ""
                    raise ValueError(f"{where}{warn} must not be above {alert}")
        return self

    def for_algorithm(self, name: str) -> DriftThresholds:
        """The thresholds for ``name``: this section's, with the keys its override gives."""
        base = {field: getattr(self, field) for field in DriftThresholds.model_fields}
        override = self.algorithms.get(name)
        if override is not None:
            base.update(override.model_dump(exclude_unset=True))
        return DriftThresholds(**base)


class Fallback(Action):
    """Applied to a series no rule matches. ``run: null`` and no ``send_to`` means record it
    as unrouted and do nothing more (the default)."""


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class PriorSource(Strict):
    """A PACS that is asked for earlier studies (C-FIND) and sends them to radrouter (C-MOVE)."""

    type: Literal["dicom"] = "dicom"
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    move_destination_ae: AETitle | None = None
    """AE title the PACS sends the retrieved instances to (it must know it as a modality);
    defaults to the node's own, so they arrive through radrouter's normal C-STORE path."""
    calling_ae_title: AETitle | None = None
    """AE title radrouter presents; defaults to the node's own."""
    timeout_s: float = Field(default=30.0, gt=0)
    tls: DicomTlsClient | None = None
    """DICOM TLS for the C-FIND/C-MOVE association; ``None``: plain DICOM. (The PACS sends
    the C-MOVE's instances on an association of its own, to the node: its own setting.)"""


class DicomWebPriorSource(DicomWebEndpoint):
    """A PACS asked over DICOMweb: QIDO-RS for the patient's earlier studies and their
    series, WADO-RS for the chosen series, which radrouter stores through its own ingest
    path (checked, spooled, indexed) as if it had arrived by C-STORE."""

    type: Literal["dicomweb"]


AnyPriorSource = Annotated[
    PriorSource | DicomWebPriorSource,
    Field(discriminator="type"),
    BeforeValidator(_dicom_by_default),  # after the discriminator: pydantic runs it first
]
"""``priors.sources[]``: ``type: dicom`` (C-FIND/C-MOVE, the default) or ``type: dicomweb``
(QIDO-RS/WADO-RS)."""


class PriorsConfig(Strict):
    """Where a follow-up algorithm's prior exam (same patient, earlier study) comes from:
    studies radrouter already holds, else the ``sources`` in order."""

    sources: list[AnyPriorSource] = Field(default_factory=list)
    max_age_days: int = Field(default=3 * 365, ge=1, le=36500)
    """Studies older than this (by StudyDate) are not used as priors."""
    series_selector: dict[Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*$")], Matcher] | None = (
        None
    )
    """Which series of a prior study to use (header matchers, as in ``rules[].when``);
    ``None``: the ``when`` of the rule that selected the current series, without the
    association keys (CallingAE, CalledAE)."""
    retrieve_timeout_s: float = Field(default=300.0, gt=0)
    """How long a C-MOVE (or a WADO-RS retrieval) of one prior series may take."""


class AlgorithmSettings(Strict):
    """Site settings of one algorithm (a plugin or a manifest model), by its registry name."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    timeout_s: float | None = Field(default=None, gt=0)
    max_concurrent: int = Field(default=1, ge=1, le=64)
    """Runs of this model at once; more workers wait, so a GPU is not oversubscribed."""
    threshold: Probability | None = None
    """The site's operating point, replacing the algorithm's own default threshold."""
    thresholds_by_model: dict[str, Probability] = Field(default_factory=dict)
    """Operating point per scanner (header ManufacturerModelName; case and surrounding spaces
    ignored); a scanner not listed gets ``threshold``."""
    shadow: bool = False
    """Run and record the result, but send nothing and raise no worklist flag."""
    parameters: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], float] = Field(
        default_factory=dict
    )
    """Values of the algorithm's own parameters (``AlgorithmInfo.parameters``: their names
    and defaults), e.g. the tolerances of the CT water-phantom test."""
    priors: PriorsConfig | None = None
    """For follow-up algorithms: find the patient's most recent earlier exam and pass it in
    ``StudyInput.priors`` (``router.run.priors``); ``None``: no priors."""

    @field_validator("thresholds_by_model")
    @classmethod
    def _distinct_model_names(cls, value: dict[str, float]) -> dict[str, float]:
        seen: dict[str, str] = {}
        for name in value:
            key = name.strip().casefold()
            if not key:
                raise ValueError("a scanner model name must not be empty")
            if key in seen:
                raise ValueError(f"scanner models {seen[key]!r} and {name!r} are the same name")
            seen[key] = name
        return value

    def threshold_for(self, header: Mapping[str, str]) -> float | None:
        """The operating point for a series with this header (see ``effective_threshold``)."""
        scanner = header.get("ManufacturerModelName", "").strip().casefold()
        if scanner:
            for name, value in self.thresholds_by_model.items():
                if name.strip().casefold() == scanner:
                    return value
        return self.threshold


class SafePrivateAttribute(Strict):
    """A private attribute a site judged safe to send (Retain Safe Private Option)."""

    creator: str = Field(min_length=1, max_length=64)
    """Its private creator (e.g. ``SIEMENS CT VA0  COAD``)."""
    element: int = Field(ge=0, le=0xFF)
    """Its element offset in the creator's block (0x00-0xFF)."""


class ExternalDeidentification(Strict):
    """How a series is de-identified before it leaves for a vendor: DICOM PS3.15 Annex E,
    Basic Application Level Confidentiality Profile, with these options
    (docs/external-algorithms.md)."""

    retain_dates: bool = True
    """Retain Longitudinal Temporal Information with Modified Dates: dates shifted per patient."""
    retain_device_identity: bool = True
    retain_patient_characteristics: bool = True
    """Sex, age, size, weight, ... kept."""
    clean_descriptors: bool = True
    """Study and series descriptions and a few other descriptors kept when they name nobody."""
    safe_private: list[SafePrivateAttribute] = Field(default_factory=list)
    """Private attributes kept (Retain Safe Private Option); empty: every one removed."""
    allow_burned_in_annotation: bool = False
    """Send series whose pixels may show who the patient is (BurnedInAnnotation YES, or unknown
    for US, secondary capture, XC, OT); off: such a series is not sent, and the result says so."""
    uid_root: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)*\.$", max_length=40)
    """Make new UIDs under the site's root (ending in '.'); default ``2.25.`` + a UUID."""


class ExternalTarget(Strict):
    """What the vendor's algorithm looks for, as a code (the study-level statement's concept)."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field(min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)


def _printable_text(value: str) -> str:
    if not value.strip() or any(not c.isprintable() for c in value):
        raise ValueError("must be printable text, not empty")
    return value


PrintableText = Annotated[str, Field(max_length=64), AfterValidator(_printable_text)]


class ExternalAlgorithm(Strict):
    """An algorithm that runs outside radrouter, at a vendor: rules run it by name like a local
    one. The series is de-identified and sent to the ``send_to`` destination (C-STORE or
    STOW-RS); the vendor's answer (SR, SEG, KOS, secondary capture), stored back to radrouter's
    node in the de-identified study, is re-identified and becomes the result, or, without an
    answer within ``answer_within_min``, "not assessed: no answer from VENDOR within N min"."""

    vendor: PrintableText
    """Who runs it; named in the results and in "no answer from VENDOR"."""
    version: PrintableText
    """The vendor's algorithm version, as contracted (named in every result)."""
    display_name: PrintableText | None = None
    modalities: list[Annotated[str, Field(pattern=r"^[A-Z]{2,4}$")]] = Field(min_length=1)
    """Modalities it reads; another modality is not sent ("not assessed")."""
    target: ExternalTarget | None = None
    """What it looks for; default SCT 404684003 "Clinical finding"."""
    intended_use: str = Field(default="", max_length=1024)
    send_to: str = Field(min_length=1)
    """The destination (``destinations:``, ``type: dicom`` or ``dicomweb``) that is the vendor's
    endpoint. Only de-identified series go there: no rule may send results to it."""
    answer_within_min: float = Field(default=30.0, gt=0, le=7 * 24 * 60)
    """How long radrouter waits for the answer before the result says "no answer"."""
    answer_idle_s: float = Field(default=5.0, gt=0, le=3600)
    """The answer is taken as complete this long after its last object arrived."""
    answer_poll_s: float | None = Field(default=None, ge=1, le=3600)
    """Fetch the answer from the ``send_to`` endpoint (a ``dicomweb`` destination) by QIDO-RS
    and WADO-RS this often, for a vendor that keeps its answer; ``None``: the vendor stores its
    answer to radrouter's node by C-STORE."""
    deidentify: ExternalDeidentification = ExternalDeidentification()
    mapping_keep_days: float = Field(default=30.0, gt=0, le=3650)
    """How long the way back (original identity and UIDs, encrypted) is kept after a send;
    an answer arriving later cannot be re-identified."""
    clinical_use: bool = False
    """True only when the vendor's product is cleared for clinical use; otherwise every result
    says "not for clinical use"."""


def effective_threshold(
    settings: AlgorithmSettings | None, header: Mapping[str, str]
) -> float | None:
    """The threshold a plugin gets in ``StudyInput.threshold``: the scanner's entry in
    ``thresholds_by_model``, else ``threshold``, else ``None`` (the plugin's own default)."""
    return None if settings is None else settings.threshold_for(header)


# --------------------------------------------------------------------------------------------
# Worklist: AI findings -> worklist priority and reason, and the channels that deliver them.

ALGORITHM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""Algorithm names are Python identifiers (``AlgorithmInfo.name``)."""
HL7_DELIMITERS = "|^~\\&"


def _hl7_name(value: str) -> str:
    if not 1 <= len(value) <= 20 or any(c in HL7_DELIMITERS or not c.isprintable() for c in value):
        raise ValueError(
            f"an HL7 name is 1-20 printable characters without {' '.join(HL7_DELIMITERS)}"
        )
    return value


Hl7Name = Annotated[str, AfterValidator(_hl7_name)]
"""HL7 v2 HD namespace IDs (MSH-3 to MSH-6, the PID-3 assigning authority)."""
URI_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$"
HTTP_URL_PATTERN = r"^https?://[^\s/?#]+(/\S*)?$"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


class ApiRole(enum.StrEnum):
    """What a person or machine may do through the HTTP API; each role includes the ones
    before it (``router.api.access`` holds which endpoint needs which)."""

    VIEWER = "viewer"
    """Reads the worklist and the studies."""
    RADIOLOGIST = "radiologist"
    """A viewer who also gives feedback on AI results (recorded under their own name)."""
    ADMIN = "admin"
    """Everything: jobs, dead letters and their retries, the feedback export, metrics."""

    @property
    def rank(self) -> int:
        return {"viewer": 0, "radiologist": 1, "admin": 2}[self.value]

    def includes(self, other: ApiRole) -> bool:
        return self.rank >= other.rank


JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
"""Signature algorithms a token may use: asymmetric only, so a public key can never be used
as an HMAC secret (the "HS256 with the public key" confusion) and ``none`` is not a choice."""
HOST_NAME_PATTERN = r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$|^\[?[0-9A-Fa-f:.]+\]?$"
"""A host name or address the HTTP API answers to; ``*.example.org`` for its sub-domains."""
CLAIM_PATH_PATTERN = r"^[A-Za-z0-9_:/.-]+$"


def _one_secret_source(env: str | None, file: Path | None, what: str) -> None:
    if env is not None and file is not None:
        raise ValueError(f"give {what}_env or {what}_file, not both")


class HttpTlsConfig(Strict):
    """HTTPS for the HTTP API: the server's certificate chain and private key (PEM files)."""

    cert_file: Path
    """The server certificate, followed by its intermediate CAs."""
    key_file: Path
    key_password_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    """Name of the environment variable holding the key's passphrase (never the passphrase)."""
    key_password_file: Path | None = None
    """A file holding the key's passphrase (its first line)."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """The oldest TLS version accepted."""

    @model_validator(mode="after")
    def _one_password_source(self) -> HttpTlsConfig:
        _one_secret_source(self.key_password_env, self.key_password_file, "key_password")
        return self


def _is_loopback_url(url: str) -> bool:
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


class OidcConfig(Strict):
    """OpenID Connect: bearer tokens (JWT) from the hospital's identity provider, and the
    worklist page's sign-in (authorization code flow with PKCE) when ``client_id`` is set."""

    issuer: str = Field(pattern=HTTP_URL_PATTERN)
    """The ``iss`` every token must carry, exactly."""
    audience: str = Field(min_length=1)
    """The ``aud`` an API bearer token must carry (the ID tokens of the sign-in carry
    ``client_id``)."""
    jwks_url: str = Field(pattern=HTTP_URL_PATTERN)
    """Where the provider publishes its signing keys (``jwks_uri`` of its discovery document)."""
    algorithms: list[JwtAlgorithm] = Field(default=["RS256", "ES256"], min_length=1)
    role_claim: str = Field(default="roles", pattern=CLAIM_PATH_PATTERN)
    """The claim holding the user's roles or groups; dots reach into objects
    (``realm_access.roles``)."""
    role_map: dict[str, ApiRole] = Field(min_length=1)
    """Value of ``role_claim`` -> radrouter role. Values not listed grant nothing."""
    user_claim: str = Field(default="preferred_username", pattern=CLAIM_PATH_PATTERN)
    """The claim naming the user in feedback and audit records (``sub`` when it is missing)."""
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    """Clock skew allowed on ``exp`` and ``nbf``."""
    jwks_cache_s: float = Field(default=3600.0, ge=10, le=86400)
    """How long fetched keys are used before they are fetched again (an unknown ``kid``
    fetches them at once, at most every 10 s)."""
    ca_file: Path | None = None
    """PEM bundle of the CAs to trust for the provider's https URLs; the system's by default."""
    client_id: str | None = Field(default=None, min_length=1)
    """The worklist page's client at the provider; ``None``: no sign-in page (API only)."""
    client_secret_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    """Name of the environment variable holding the client secret (a confidential client);
    without a secret radrouter signs in as a public client (PKCE alone)."""
    client_secret_file: Path | None = None
    authorization_endpoint: str | None = Field(default=None, pattern=HTTP_URL_PATTERN)
    token_endpoint: str | None = Field(default=None, pattern=HTTP_URL_PATTERN)
    redirect_uri: str | None = Field(default=None, pattern=HTTP_URL_PATTERN)
    """The sign-in's return address as registered at the provider; by default
    ``https://<the Host the browser used>/auth/callback``."""
    scopes: list[str] = Field(default=["openid", "profile"], min_length=1)
    session_max_age_s: float = Field(default=28800.0, ge=60, le=7 * 86400)
    """How long a page session lasts after sign-in (8 hours: a shift)."""

    @model_validator(mode="after")
    def _consistent(self) -> OidcConfig:
        _one_secret_source(self.client_secret_env, self.client_secret_file, "client_secret")
        for name in ("issuer", "jwks_url", "authorization_endpoint", "token_endpoint"):
            url = getattr(self, name)
            if url is not None and url.startswith("http://") and not _is_loopback_url(url):
                raise ValueError(f"{name} needs an https:// URL (or a loopback host)")
        page = (self.authorization_endpoint, self.token_endpoint)
        if self.client_id is not None and None in page:
            raise ValueError(
                "client_id (the page's sign-in) needs authorization_endpoint and token_endpoint"
            )
        if self.client_id is None and (
            any(p is not None for p in page)
            or self.client_secret_env is not None
            or self.client_secret_file is not None
        ):
            raise ValueError(
                "authorization_endpoint, token_endpoint and client_secret need client_id"
            )
        if "openid" not in self.scopes:
            raise ValueError("scopes must include openid")
        return self


class HttpAuthConfig(Strict):
    """Who may use the HTTP API: OpenID Connect tokens and sessions, and API keys."""

    oidc: OidcConfig | None = None
    api_keys_file: Path | None = None
    """The API keys for machines, as salted hashes (``radrouter api-key create`` writes it);
    changes are picked up without a restart."""
    metrics_public: bool = False
    """Serve ``/metrics`` without authentication (for a Prometheus that cannot send a key)."""

    @model_validator(mode="after")
    def _some_credential(self) -> HttpAuthConfig:
        if self.oidc is None and self.api_keys_file is None:
            raise ValueError("give oidc, api_keys_file or both (or leave auth out)")
        return self


def http_is_loopback(http: HttpConfig) -> bool:
    """Whether the HTTP API listens on this host's loopback interface only."""
    host = http.host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_is_secure(config: RouterConfig | HttpConfig) -> bool:
    """Whether the HTTP API has both HTTPS and authentication: what a router that listens
    beyond loopback must have (``check-config`` refuses it otherwise)."""
    http = config.http if isinstance(config, RouterConfig) else config
    return http.tls is not None and http.auth is not None


class MeasurementBound(Strict):
    """An inclusive range a finding's measurement must lie in."""

    min: float | None = None
    max: float | None = None
    unit: str | None = Field(default=None, min_length=1)
    """UCUM code the measurement must be given in (``mm``); any other unit never matches."""

    @model_validator(mode="after")
    def _bounded(self) -> MeasurementBound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class FlagCondition(Strict):
    """What one finding (or the study-level answer) must show to raise a flag. All conditions
    given must hold on the same finding; ``{}`` holds for any positive result."""

    finding: str | None = Field(default=None, min_length=1)
    """Finding type: a code value (``27925004``) or its meaning (``Nodule``, any case)."""
    site: str | None = Field(default=None, min_length=1)
    """Finding site: a code value or meaning (``Lung``)."""
    min_probability: float | None = Field(default=None, ge=0, le=1)
    measurements: dict[str, MeasurementBound] = Field(default_factory=dict)
    """By measurement name (code value or meaning): ``{Long axis: {min: 8, unit: mm}}``."""
    qualifiers: dict[str, str] = Field(default_factory=dict)
    """Qualifier name to value (code values or meanings): ``{Laterality: Right}``."""


class PriorityFlag(Strict):
    """Raise a study's worklist priority to ``raise_to`` when a finding meets ``when``."""

    when: FlagCondition = FlagCondition()
    raise_to: Priority
    label: str | None = Field(default=None, min_length=1, max_length=64)
    """What the reason calls the finding ("PE" in "AI: suspected PE, ..."); defaults to the
    finding type's meaning."""

    @field_validator("raise_to")
    @classmethod
    def _raises(cls, value: Priority) -> Priority:
        if value is Priority.ROUTINE:
            raise ValueError("raise_to: routine never raises a priority; use urgent or stat")
        return value


class NotifyRetryPolicy(RetryPolicy):
    """Retries of a worklist notification: a day of them, every 5 minutes at most once the
    back-off is capped (an interface engine or RIS may be down for hours)."""

    max_attempts: int = Field(default=300, ge=1, le=100_000)
    backoff_initial_s: float = Field(default=2.0, ge=0)
    backoff_max_s: float = Field(default=300.0, ge=0)


class Hl7NotifyConfig(Strict):
    """HL7 v2.5.1 ORU^R01 result messages over MLLP to a RIS or interface engine."""

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    receiving_application: Hl7Name
    """MSH-5, as the RIS expects it."""
    receiving_facility: Hl7Name | None = None
    sending_application: Hl7Name = "RADROUTER"
    sending_facility: Hl7Name | None = None
    processing_id: Literal["P", "T", "D"] = "P"
    """MSH-11: P production, T training, D debugging."""
    patient_id_authority: Hl7Name | None = None
    """PID-3 assigning authority (the namespace the RIS knows the patient IDs by); when
    left out, the study's IssuerOfPatientID (if it fits in 20 characters)."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    """Connecting, sending and waiting for the acknowledgement, together."""
    retry: NotifyRetryPolicy = NotifyRetryPolicy()


class FhirNotifyConfig(Strict):
    """FHIR R4: an Observation per result and a Task carrying the priority, in one
    transaction Bundle POSTed to ``base_url``."""

    base_url: str = Field(pattern=HTTP_URL_PATTERN)
    bearer_token_env: str | None = Field(default=None, pattern=ENV_VAR_PATTERN)
    """Name of the environment variable holding the bearer token (never the token itself)."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    ca_file: Path | None = None
    """PEM bundle of the CAs to trust for https; the system's by default."""
    task: Literal["flagged", "always", "never"] = "flagged"
    """When to create a Task: only when a priority flag was raised (default), always, never."""
    urgent_as: Literal["urgent", "asap"] = "urgent"
    """The FHIR request priority for the urgent lane."""
    patient_identifier_system: str | None = Field(default=None, pattern=URI_PATTERN)
    """Identifier system of PatientID (``urn:oid:...``); leave out to send the value alone."""
    accession_identifier_system: str | None = Field(default=None, pattern=URI_PATTERN)
    retry: NotifyRetryPolicy = NotifyRetryPolicy()

    @model_validator(mode="after")
    def _token_only_over_tls(self) -> FhirNotifyConfig:
        host = self.base_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        if (
            self.bearer_token_env is not None
            and self.base_url.startswith("http://")
            and host not in LOOPBACK_HOSTS
        ):
            raise ValueError("bearer_token_env needs an https:// base_url (or a loopback host)")
        return self


class NotifyConfig(Strict):
    """The channels a worklist notification goes to; each is optional."""

    hl7: Hl7NotifyConfig | None = None
    fhir: FhirNotifyConfig | None = None


class WorklistConfig(Strict):
    """AI findings to worklist priority (``priority_policy``) and where it is sent (``notify``)."""

    priority_policy: dict[
        Annotated[str, Field(pattern=ALGORITHM_NAME_PATTERN)], list[PriorityFlag]
    ] = Field(default_factory=dict)
    """By algorithm name: the flags of that algorithm; the most urgent one that holds wins."""
    notify: NotifyConfig = NotifyConfig()


class AuditSyslogConfig(Strict):
    """An audit record repository (IHE ATNA): RFC 5424 messages over TLS (RFC 5425), plain
    TCP (same framing) or UDP (RFC 5426)."""

    host: str = Field(min_length=1)
    port: int = Field(default=6514, ge=1, le=65535)
    """6514 is the IANA port of syslog over TLS."""
    transport: Literal["tls", "tcp", "udp"] = "tls"
    ca_file: Path | None = None
    """PEM file of the CAs the collector's certificate must chain to; the system's by default."""
    cert_file: Path | None = None
    """radrouter's certificate (PEM), for a collector that authenticates its nodes."""
    key_file: Path | None = None
    """The key of ``cert_file`` (default: in ``cert_file`` itself)."""
    server_name: str | None = Field(default=None, min_length=1)
    """The name the collector's certificate must carry; default: ``host``."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    retry_max_s: float = Field(default=60.0, gt=0, le=3600)
    """Longest wait between two tries while the collector does not answer."""

    @model_validator(mode="after")
    def _tls_files_with_tls(self) -> AuditSyslogConfig:
        given = [n for n in ("ca_file", "cert_file", "key_file", "server_name") if getattr(self, n)]
        if given and self.transport != "tls":
            raise ValueError(f"{', '.join(given)}: only with transport: tls")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the certificate the key is for)")
        return self


class AuditConfig(Strict):
    """The audit trail: DICOM audit messages (PS3.15 A.5) of who touched which study."""

    enabled: bool = True
    dir: Path | None = None
    """Folder of the local audit log; default: ``audit`` in ``storage.data_dir``."""
    max_file_mb: float = Field(default=64.0, gt=0)
    """A log file is closed and a new one begun past this size (the old one is kept)."""
    repeat_window_s: float = Field(default=300.0, ge=0, le=86400)
    """The same read by the same person (a polling worklist page) is recorded once in this
    long; 0 records every read."""
    source_id: str | None = Field(default=None, min_length=1)
    """AuditSourceID of the messages; default: the node's AE title."""
    enterprise_site_id: str | None = Field(default=None, min_length=1)
    """AuditEnterpriseSiteID (the hospital), when the collector serves several."""
    syslog: AuditSyslogConfig | None = None
    """Also send every message to this collector; ``None``: the local log only."""


class ReloadConfig(Strict):
    """How a running router takes a changed file (it never takes an invalid one)."""

    settle_s: float = Field(default=2.0, ge=0, le=300)
    """A changed file is read once it has not changed for this long, and read again to check
    it is whole: an editor or a copy writing it in place has finished. Writing it elsewhere
    and renaming it into place (atomic) is best."""
    may_drop_all_rules: bool = False
    """Without this, a file with no rules (while the running one has some) is refused: a file
    cut short is far likelier than an intent to route nothing."""
    may_drop_allowed_callers: bool = False
    """Without this, a file that opens the node to any caller while the running one has an
    allow-list is refused."""


class RouterConfig(Strict):
    """The whole routing YAML."""

    version: Literal[1] = 1
    node: NodeConfig = NodeConfig()
    http: HttpConfig = HttpConfig()
    storage: StorageConfig = StorageConfig()
    destinations: dict[str, Destination] = Field(default_factory=dict)
    completion: CompletionConfig = CompletionConfig()
    jobs: JobsConfig = JobsConfig()
    dispatch: DispatchConfig = DispatchConfig()
    algorithms: dict[str, AlgorithmSettings] = Field(default_factory=dict)
    external_algorithms: dict[
        Annotated[str, Field(pattern=ALGORITHM_NAME_PATTERN, max_length=64)], ExternalAlgorithm
    ] = Field(default_factory=dict)
    """Algorithms that run at a vendor (``router.external``), by the name rules run them by."""
    model_dirs: list[Path] = Field(default_factory=list)
    """Folders holding third-party model manifests (``*.yaml`` beside their model files);
    every manifest found becomes an algorithm. Relative paths are taken from the working
    directory, like ``storage.data_dir``."""
    rules: list[Rule] = Field(default_factory=list)
    fallback: Fallback = Fallback()
    qa: QaConfig = QaConfig()
    usage: UsageConfig = UsageConfig()
    drift: DriftConfig = DriftConfig()
    worklist: WorklistConfig = WorklistConfig()
    audit: AuditConfig = AuditConfig()
    reload: ReloadConfig = ReloadConfig()
    insecure: bool = False
    """Run although something listens beyond loopback unprotected: the HTTP API without TLS
    and authentication, or the DICOM node accepting any caller (no allow-list, no client
    certificates). For a closed test network only; ``/readyz`` says so."""

    @model_validator(mode="after")
    def _references_resolve(self) -> RouterConfig:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        for owner, action in [(f"rule {r.name!r}", r) for r in self.rules] + [
            ("fallback", self.fallback)
        ]:
            for destination in action.send_to:
                if destination not in self.destinations:
                    raise ValueError(
                        f"{owner} sends to unknown destination {destination!r}; "
                        f"known: {sorted(self.destinations) or 'none'}"
                    )
        self._external_endpoints_apart()
        return self

    def _external_endpoints_apart(self) -> None:
        """Each external algorithm's endpoint is a known destination, and one no rule sends
        identified results to."""
        sent_by_rules = {d for rule in self.rules for d in rule.send_to} | set(
            self.fallback.send_to
        )
        for name, external in self.external_algorithms.items():
            if external.send_to not in self.destinations:
                raise ValueError(
                    f"external algorithm {name!r} sends to unknown destination "
                    f"{external.send_to!r}; known: {sorted(self.destinations) or 'none'}"
                )
            if external.answer_poll_s is not None and not isinstance(
                self.destinations[external.send_to], DicomWebDestination
            ):
                raise ValueError(
                    f"external algorithm {name!r} fetches its answer by DICOMweb "
                    f"(answer_poll_s), so its endpoint {external.send_to!r} must be "
                    "type: dicomweb"
                )
            if external.send_to in sent_by_rules:
                raise ValueError(
                    f"destination {external.send_to!r} is external algorithm {name!r}'s "
                    "endpoint: only de-identified series may go there, so no rule may send "
                    "results to it"
                )

    def algorithm_names(self) -> set[str]:
        """Every algorithm a rule or the fallback may run."""
        names = {rule.run for rule in self.rules if rule.run}
        if self.fallback.run:
            names.add(self.fallback.run)
        return names
