"""``tradewarden run``: the operator process (kopf), in a cluster or from a laptop."""
from __future__ import annotations

import logging
import os
import sys

import kopf

from ..probes import Readiness, ReadinessServer, account_api_check


def run(namespaces: list[str] | None = None, all_namespaces: bool = False, standalone: bool = False,
        metrics_port: int | None = 9464, liveness: str | None = None, peering: str | None = "tradewarden",
        verbose: bool = False, log_format: str = "text", readiness: str | None = None,
        shards: int | None = None) -> int:
    namespaces = list(namespaces or [])
    if not namespaces and not all_namespaces:
        print("tradewarden run: either --namespace (repeatable) or --all-namespaces is required", file=sys.stderr)
        return 2
    if namespaces and all_namespaces:
        print("tradewarden run: --namespace and --all-namespaces are mutually exclusive", file=sys.stderr)
        return 2
    from ..output import configure_operator_logging

    configure_operator_logging(log_format, verbose)
    _quiet_ccxt(verbose)
    from . import handlers  # noqa: F401 - registers the handlers

    memo = kopf.Memo()
    memo.metrics_port = metrics_port if metrics_port and metrics_port > 0 else None
    # In a pod the metrics endpoint must be reachable by Prometheus; on a laptop, bind loopback.
    memo.metrics_host = os.environ.get("TRADEWARDEN_METRICS_HOST", "0.0.0.0")
    from .sharding import ShardSettings
    # sharded: every replica watches every account and serves its shards' (Leases arbitrate, see
    # controller/sharding.py), so kopf's peering, which keeps one replica active, is off
    memo.shard_settings = ShardSettings.from_env(shards, namespaces=namespaces)
    if memo.shard_settings is not None:
        standalone = True
    liveness_endpoint = liveness if liveness and liveness.lower() not in ("off", "none", "") else None
    ready = Readiness(account_api_check(namespaces))
    probe = None
    if readiness and readiness.lower() not in ("off", "none"):
        probe = ReadinessServer(readiness, ready).start()
    try:
        kopf.run(
            standalone=standalone,
            peering_name=None if standalone else peering,
            clusterwide=all_namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness_endpoint,
            memo=memo,
            ready_flag=ready.started,
        )
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a clean message and exit code, not a traceback, at the top
        logging.getLogger("tradewarden").error("operator failed: %s: %s", type(exc).__name__, exc)
        return 1
    finally:
        ready.stopping.set()
        if probe is not None:
            probe.stop()
    return 0


def _quiet_ccxt(verbose: bool) -> None:
    # ccxt logs request details (headers, URLs) at DEBUG: never let them through.
    logging.getLogger("ccxt").setLevel(logging.INFO if verbose else logging.WARNING)

