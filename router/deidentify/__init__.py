"""De-identification for external algorithms (DICOM PS3.15 Annex E), and the way back.

Used by ``router.external``: the worker sends what ``Deidentifier`` makes to a vendor, and
the answer stage passes what comes back to ``reidentify``.

- ``options``: the profile options a site selects (``DeidOptions``) and their CID 7050 codes;
- ``annex_e_table``: Table E.1-1 of the standard (generated; edition and source inside);
- ``plan``: the action per attribute under the options (a pure function);
- ``engine``: pydicom/deid applies the plan (the only module that imports deid);
- ``keys``: new UIDs, pseudonyms and date offsets, keyed by the site secret and the scope;
- ``deidentifier``: one instance de-identified, and what was replaced;
- ``mapping``: the way back, protected, kept for a configured time, purged;
- ``reidentify``: a vendor's answer re-identified;
- ``burned_in``: series whose pixels may name the patient are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from router.deidentify.burned_in import burned_in_refusal
from router.deidentify.deidentifier import DeidentifiedInstance, Deidentifier
from router.deidentify.keys import DeidKeys
from router.deidentify.mapping import MappingStore
from router.deidentify.options import DeidOptions
from router.deidentify.reidentify import ReidentificationError, Reidentified, reidentify
from router.store.pseudonyms import site_secret

__all__ = [
    "DeidKeys",
    "DeidOptions",
    "DeidentifiedInstance",
    "Deidentifier",
    "MappingStore",
    "ReidentificationError",
    "Reidentified",
    "SeriesRefusedError",
    "burned_in_refusal",
    "deidentify_series",
    "keys_for_site",
    "reidentify",
]


class SeriesRefusedError(ValueError):
    """The series must not leave the hospital; the message says why (no patient data)."""


def keys_for_site(data_dir: Path, scope: str) -> DeidKeys:
    """The keys of ``scope`` (an external algorithm) under the site secret."""
    return DeidKeys(site_secret(data_dir), scope)


def deidentify_series(
    instances: Sequence[Dataset], deidentifier: Deidentifier, store: MappingStore
) -> list[DeidentifiedInstance]:
    """De-identify one series for sending, after the burned-in check, and record the way
    back (one transaction) before anything is returned to be sent."""
    reason = burned_in_refusal(instances, allow=deidentifier.options.allow_burned_in_annotation)
    if reason is not None:
        raise SeriesRefusedError(reason)
    done = [deidentifier.deidentify(instance) for instance in instances]
    store.record(deidentifier.keys.scope, done)
    return done
