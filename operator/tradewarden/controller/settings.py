"""kopf settings for tradewarden: its own annotation prefix, peering, posting, watching."""
from __future__ import annotations

import logging
import os
import random
import socket

import kopf

from .. import models

PREFIX = models.GROUP                          # "tradewarden.io"
FINALIZER = f"{PREFIX}/finalizer"
DIFFBASE_KEY = "last-handled-configuration"
REPORTING_COMPONENT = "tradewarden"       # Events' "From" (reportingComponent, source.component)
FIELD_MANAGER = "tradewarden"             # managedFields of what the operator writes


def reporting_instance() -> str:
    """Which operator replica posted an Event: the pod name (POD_ID, set by the chart from
    metadata.name; kopf's peer identity too), else the host name."""
    return os.environ.get("POD_ID") or os.environ.get("HOSTNAME") or socket.gethostname()


def posting_level(name: str | None = None) -> int:
    """TRADEWARDEN_EVENT_LEVEL (DEBUG/INFO/WARNING/ERROR) -> logging level for kopf's Event posting."""
    value = (name or os.environ.get("TRADEWARDEN_EVENT_LEVEL", "INFO")).strip().upper()
    level = logging.getLevelName(value)
    return level if isinstance(level, int) else logging.INFO


def peering_priority() -> int:
    """A distinct priority per replica (TRADEWARDEN_PEERING_PRIORITY or random): with equal
    priorities kopf freezes every replica; with distinct ones exactly one acts and the next
    takes over when it dies."""
    env = os.environ.get("TRADEWARDEN_PEERING_PRIORITY")
    if env:
        return int(env)
    return random.SystemRandom().randint(1, 2**30)


def configure(settings: kopf.OperatorSettings, *, clusterwide: bool | None = None) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key=DIFFBASE_KEY)
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = posting_level()
    settings.posting.loggers = False            # Events are posted deliberately, not from every log line
    settings.posting.reporting_component = REPORTING_COMPONENT
    settings.posting.reporting_instance = reporting_instance()
    settings.peering.priority = peering_priority()
    if clusterwide is not None:
        settings.peering.clusterwide = clusterwide
    settings.peering.lifetime = int(os.environ.get("TRADEWARDEN_PEERING_LIFETIME", "60"))
    # Watches: reconnect regularly so a silently dead connection cannot hide changes.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # A stopping daemon is polled often, so a deletion is released as soon as it has exited.
    settings.background.cancellation_polling = 5
