"""Find a follow-up's prior: held locally, else from each configured PACS in order (C-FIND and
C-MOVE, or QIDO-RS and WADO-RS for a ``type: dicomweb`` source)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from config.schema import DicomWebPriorSource, Matcher, PriorsConfig
from router.audit.events import NO_AUDIT, AuditRecorder
from router.logs import log_safe
from router.run.priors.dicomweb_retrieve import InstanceStore, retrieve_prior_dicomweb
from router.run.priors.local_index import find_local_prior
from router.run.priors.query_retrieve import PriorRetrievalError, retrieve_prior
from router.run.priors.selection import CurrentStudy, FoundPrior
from router.store.database import Database
from router.store.pseudonyms import PatientKeys

LOGGER = logging.getLogger(__name__)


def find_prior(
    db: Database,
    keys: PatientKeys,
    config: PriorsConfig,
    node_ae: str,
    current: CurrentStudy,
    rule_selector: Mapping[str, Matcher],
    audit: AuditRecorder = NO_AUDIT,
    instances: InstanceStore | None = None,
) -> FoundPrior | None:
    """The most recent earlier matching series of the patient: held locally, else from each
    source in order. A source that fails is logged and skipped. ``instances``: where a
    DICOMweb source's instances are stored (the node's ingest path)."""
    selector = config.series_selector if config.series_selector is not None else rule_selector
    found = find_local_prior(db, keys, current, selector, config.max_age_days)
    if found is not None:
        return found
    for source in config.sources:
        try:
            if isinstance(source, DicomWebPriorSource):
                found = retrieve_prior_dicomweb(
                    db,
                    source,
                    node_ae,
                    current,
                    selector,
                    config.max_age_days,
                    config.retrieve_timeout_s,
                    instances,
                    audit,
                )
            else:
                found = retrieve_prior(
                    db,
                    source,
                    node_ae,
                    current,
                    selector,
                    config.max_age_days,
                    config.retrieve_timeout_s,
                    audit,
                )
        except PriorRetrievalError as exc:
            LOGGER.warning(
                "prior for study %s: source %s failed: %s",
                log_safe(current.study_instance_uid),
                source.url if isinstance(source, DicomWebPriorSource) else source.ae_title,
                log_safe(exc, 300),
            )
            continue
        if found is not None:
            return found
    LOGGER.debug("prior for study %s: none found", log_safe(current.study_instance_uid))
    return None
