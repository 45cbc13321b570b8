"""Deterministic replacement values: new UIDs, patient pseudonyms and date offsets.

Each is an HMAC-SHA-256 under the site secret (``router.store.pseudonyms``) of the scope (one
per vendor, so two vendors cannot join their data on a UID or pseudonym) and the original
value. A re-sent series therefore maps to the same UIDs, and a vendor without the secret
cannot recompute or reverse them. The mapping store keeps the way back.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from pydicom.uid import generate_uid

PSEUDONYM_PREFIX = "RR"


class DeidKeys:
    def __init__(self, secret: bytes, scope: str) -> None:
        if len(secret) < 32:
            raise ValueError("the de-identification secret must be at least 32 bytes")
        if not scope:
            raise ValueError("a mapping scope is required (the external algorithm's name)")
        self._secret = secret
        self.scope = scope

    def _digest(self, purpose: str, value: str) -> bytes:
        message = "\x00".join((purpose, self.scope, value)).encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def uid(self, original: str, root: str) -> str:
        """The new UID for ``original``: ``2.25.<uuid>`` or under ``root``."""
        digest = self._digest("uid", original.strip())
        if root == "2.25.":
            return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"
        return str(generate_uid(prefix=root, entropy_srcs=[digest.hex()]))

    def patient_pseudonym(self, patient_id: str, issuer: str) -> str:
        """Patient ID and Name sent instead of the patient's (``RR`` + 20 hex digits)."""
        digest = self._digest("patient", f"{issuer.strip()}\x00{patient_id.strip()}")
        return PSEUDONYM_PREFIX + digest.hex()[:20].upper()

    def date_offset_days(self, pseudonym: str, low: int, high: int) -> int:
        """Days every date of this patient moves (negative: into the past)."""
        digest = self._digest("date-offset", pseudonym)
        return -(low + int.from_bytes(digest[:8], "big") % (high - low + 1))

    def storage_key(self) -> bytes:
        """The AES-256 key that protects the originals in the mapping store."""
        return hmac.new(self._secret, b"radrouter deidentify mapping v1", hashlib.sha256).digest()
