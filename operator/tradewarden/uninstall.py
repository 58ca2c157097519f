"""``tradewarden release-finalizers``: after the operator is uninstalled, no TradingAccount may stay
stuck in deletion behind the operator's finalizer (its own, ``tradewarden.io/finalizer``, never anyone
else's). The chart runs it as a post-delete hook Job, when the operator's Deployment is gone; by hand:
``tradewarden release-finalizers --all-namespaces`` with a kubeconfig.

An account that still exists keeps its spec and status and loses only the finalizer; a new operator
adds it back when it starts. Each removal is a JSON patch that first tests the finalizer's position,
so a concurrent change makes it retry on a fresh read instead of removing the wrong entry.
"""
from __future__ import annotations

import logging
from typing import Any

from . import models
from .controller.settings import FINALIZER

log = logging.getLogger(__name__)


def _accounts(custom: Any, namespaces: list[str]) -> list[dict]:
    if namespaces:
        items: list[dict] = []
        for ns in namespaces:
            items += custom.list_namespaced_custom_object(models.GROUP, models.VERSION, ns, models.PLURAL)["items"]
        return items
    return custom.list_cluster_custom_object(models.GROUP, models.VERSION, models.PLURAL)["items"]


def release_finalizers(namespaces: list[str], api_client: Any | None = None, attempts: int = 5) -> list[str]:
    """Remove FINALIZER from every TradingAccount in scope; returns ``namespace/name`` of those released."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    from .controller.kube import load_config

    custom = kubernetes.client.CustomObjectsApi(api_client or load_config())
    released = []
    for obj in _accounts(custom, namespaces):
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        for _ in range(attempts):
            finalizers = obj["metadata"].get("finalizers") or []
            if FINALIZER not in finalizers:
                break
            i = finalizers.index(FINALIZER)
            patch = [{"op": "test", "path": f"/metadata/finalizers/{i}", "value": FINALIZER},
                     {"op": "remove", "path": f"/metadata/finalizers/{i}"}]
            try:
                custom.patch_namespaced_custom_object(models.GROUP, models.VERSION, ns, models.PLURAL, name, patch,
                                                      _content_type="application/json-patch+json")
                released.append(f"{ns}/{name}")
                break
            except ApiException as exc:
                if exc.status == 404:
                    break
                if exc.status not in (409, 422):   # 422: the test op failed (the list changed)
                    raise
                try:
                    obj = custom.get_namespaced_custom_object(models.GROUP, models.VERSION, ns, models.PLURAL, name)
                except ApiException as again:
                    if again.status == 404:
                        break
                    raise
        else:
            raise RuntimeError(f"could not remove {FINALIZER} from {ns}/{name} after {attempts} attempts")
    return released


def main(namespaces: list[str], all_namespaces: bool) -> int:
    if bool(namespaces) == bool(all_namespaces):
        print("tradewarden release-finalizers: either --namespace (repeatable) or --all-namespaces", flush=True)
        return 2
    released = release_finalizers(namespaces)
    for ref in released:
        print(f"released {ref}", flush=True)
    print(f"{len(released)} TradingAccount(s) released from {FINALIZER}", flush=True)
    return 0
