"""The way back: de-identified UID -> original UID, pseudonym -> patient, study -> identity.

Kept apart from the router's database, in ``<data>/deid-mapping.sqlite3`` (mode 0600): that
database holds no patient data by design (docs/architecture.md), and this file is nothing
but patient data, so it can be kept, backed up and purged on its own terms. Every original
value (UIDs included) is stored encrypted (AES-256-GCM, a key derived from the site secret,
the row's key as associated data, so a value cannot be moved to another row); only the
de-identified values, which the vendor holds anyway, are stored in the clear to be looked
up. Deleted rows are overwritten (``secure_delete``).

Rows are kept ``keep_days`` after they were last written (a re-send renews them);
``purge`` deletes the older ones. An answer that arrives after that cannot be re-identified
and is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from router.deidentify.deidentifier import DeidentifiedInstance

FILE_NAME = "deid-mapping.sqlite3"
DAY_S = 86400.0
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    scope TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    identity BLOB NOT NULL,
    date_offset_days INTEGER NOT NULL,
    written_at REAL NOT NULL,
    PRIMARY KEY (scope, pseudonym)
);
CREATE TABLE IF NOT EXISTS studies (
    deid_study_uid TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    identity BLOB NOT NULL,
    written_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uids (
    deid_uid TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    deid_study_uid TEXT NOT NULL,
    original BLOB NOT NULL,
    written_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS patients_written ON patients (written_at);
CREATE INDEX IF NOT EXISTS studies_written ON studies (written_at);
CREATE INDEX IF NOT EXISTS uids_written ON uids (written_at);
"""


class MappingError(RuntimeError):
    """The mapping file cannot be used (newer schema, wrong key)."""


@dataclass(frozen=True)
class StudyMapping:
    """What re-identification needs about one de-identified study."""

    scope: str
    pseudonym: str
    date_offset_days: int
    patient_identity: dict[str, str]
    study_identity: dict[str, str]


@dataclass(frozen=True)
class Purged:
    patients: int
    studies: int
    uids: int


class MappingStore:
    def __init__(self, path: Path, storage_key: bytes, keep_days: float) -> None:
        if keep_days <= 0:
            raise ValueError("keep_days must be positive")
        self.path = path
        self.keep_days = keep_days
        self._aead = AESGCM(storage_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Made 0600 before SQLite opens it; SQLite gives its WAL and shared-memory files the
        # database file's permissions.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        with self._connection() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise MappingError(f"{path.name} has schema {version}, newer than this code")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def in_data_dir(cls, data_dir: Path, storage_key: bytes, keep_days: float) -> MappingStore:
        return cls(data_dir / FILE_NAME, storage_key, keep_days)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30.0, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA secure_delete=ON")
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _seal(self, row_key: str, value: object) -> bytes:
        nonce = secrets.token_bytes(12)
        plain = json.dumps(value, sort_keys=True).encode("utf-8", "surrogatepass")
        return nonce + self._aead.encrypt(nonce, plain, row_key.encode())

    def _open(self, row_key: str, sealed: bytes) -> object:
        try:
            plain = self._aead.decrypt(sealed[:12], sealed[12:], row_key.encode())
        except Exception as exc:  # InvalidTag: another site secret, or a tampered row
            raise MappingError("a mapping row cannot be decrypted with this site secret") from exc
        return json.loads(plain.decode("utf-8", "surrogatepass"))

    def record(
        self, scope: str, instances: Iterable[DeidentifiedInstance], now: float | None = None
    ) -> None:
        """Keep the way back for ``instances`` (one transaction; re-sends renew the rows)."""
        written = time.time() if now is None else now
        patients: dict[str, tuple[bytes, int]] = {}
        studies: dict[str, tuple[str, bytes]] = {}
        uids: dict[str, tuple[str, bytes]] = {}
        for instance in instances:
            patients[instance.pseudonym] = (
                self._seal(f"patient:{scope}:{instance.pseudonym}", instance.patient_identity),
                instance.date_offset_days,
            )
            study_key = instance.study_uid
            studies[study_key] = (
                instance.pseudonym,
                self._seal(f"study:{study_key}", instance.study_identity),
            )
            for new, original in instance.uids.items():
                if new not in uids:
                    uids[new] = (study_key, self._seal(f"uid:{new}", original))
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO patients (scope, pseudonym, identity, date_offset_days, written_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, pseudonym) DO UPDATE SET"
                " identity = excluded.identity, date_offset_days = excluded.date_offset_days,"
                " written_at = excluded.written_at",
                [(scope, p, sealed, off, written) for p, (sealed, off) in patients.items()],
            )
            conn.executemany(
                "INSERT INTO studies (deid_study_uid, scope, pseudonym, identity, written_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (deid_study_uid) DO UPDATE SET"
                " identity = excluded.identity, written_at = excluded.written_at",
                [(s, scope, p, sealed, written) for s, (p, sealed) in studies.items()],
            )
            conn.executemany(
                "INSERT INTO uids (deid_uid, scope, deid_study_uid, original, written_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (deid_uid) DO UPDATE SET"
                " written_at = excluded.written_at",
                [(u, scope, s, sealed, written) for u, (s, sealed) in uids.items()],
            )

    def original_uids(self, deid_uids: Iterable[str]) -> dict[str, str]:
        """De-identified UID -> original, for those of ``deid_uids`` the mapping knows."""
        wanted = sorted(set(deid_uids))
        found: dict[str, str] = {}
        with self._connection() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for deid_uid, sealed in conn.execute(
                    f"SELECT deid_uid, original FROM uids WHERE deid_uid IN ({marks})", chunk
                ):
                    found[deid_uid] = str(self._open(f"uid:{deid_uid}", sealed))
        return found

    def study(self, deid_study_uid: str) -> StudyMapping | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT s.scope, s.pseudonym, s.identity, p.identity, p.date_offset_days"
                " FROM studies s JOIN patients p ON p.scope = s.scope AND p.pseudonym ="
                " s.pseudonym WHERE s.deid_study_uid = ?",
                (deid_study_uid,),
            ).fetchone()
        if row is None:
            return None
        scope, pseudonym, study_sealed, patient_sealed, offset = row
        study_identity = self._open(f"study:{deid_study_uid}", study_sealed)
        patient_identity = self._open(f"patient:{scope}:{pseudonym}", patient_sealed)
        assert isinstance(study_identity, dict) and isinstance(patient_identity, dict)
        return StudyMapping(scope, pseudonym, int(offset), patient_identity, study_identity)

    def purge(self, now: float | None = None, *, scope: str | None = None) -> Purged:
        """Delete what was last written more than ``keep_days`` ago (of ``scope`` only, when
        given: each vendor's mapping is kept for its own time)."""
        cutoff = (time.time() if now is None else now) - self.keep_days * DAY_S
        only = "" if scope is None else " AND scope = ?"
        params: tuple[object, ...] = (cutoff,) if scope is None else (cutoff, scope)
        with self._transaction() as conn:
            uids = conn.execute(f"DELETE FROM uids WHERE written_at < ?{only}", params).rowcount
            studies = conn.execute(
                f"DELETE FROM studies WHERE written_at < ?{only}", params
            ).rowcount
            patients = conn.execute(
                f"DELETE FROM patients WHERE written_at < ?{only} AND NOT EXISTS (SELECT 1 FROM"
                " studies s WHERE s.scope = patients.scope AND s.pseudonym = patients.pseudonym)",
                params,
            ).rowcount
        return Purged(patients=patients, studies=studies, uids=uids)
