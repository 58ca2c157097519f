"""The few Kubernetes API calls the supervisors make themselves (kopf does the watching).

The official client is synchronous; its calls run in a small dedicated thread pool so a slow API
server never blocks the event loop, and so many accounts cannot exhaust the loop's default
executor. Works in a cluster (service account) and from a laptop (kubeconfig), like kopf.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from typing import Any, Mapping

from .. import models
from .settings import FIELD_MANAGER      # managedFields name tradewarden, not the client library

log = logging.getLogger(__name__)


def load_config() -> Any:
    """A kubernetes.client.ApiClient for in-cluster config, else the kubeconfig."""
    import kubernetes

    cfg = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=cfg)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = 16
    return kubernetes.client.ApiClient(cfg)


class Forbidden(Exception):
    """The API server refused (403): RBAC does not allow it."""


WORKLOAD_KINDS = ("Deployment", "StatefulSet")


class Kube:
    """Async facade over the official client. ``writes`` counts API writes (status patches)."""

    def __init__(self, api_client: Any | None = None, workers: int = 8) -> None:
        import kubernetes

        self._api = api_client or load_config()
        self._core = kubernetes.client.CoreV1Api(self._api)
        self._custom = kubernetes.client.CustomObjectsApi(self._api)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tw-kube")
        self._lock = threading.Lock()
        self.writes = 0
        self.reads = 0

    async def _call(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as raw JSON, or None if it does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            resp = await self._call(self._core.read_namespaced_secret, name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        with self._lock:
            self.reads += 1
        return json.loads(resp.data)

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any],
                           timeout: float = 30.0) -> bool:
        """Merge-patch ``status``. False when the object is gone."""
        from kubernetes.client.exceptions import ApiException

        body = {"status": patch}
        try:
            await self._call(self._custom.patch_namespaced_custom_object_status, models.GROUP, models.VERSION,
                             namespace, models.PLURAL, name, body, field_manager=FIELD_MANAGER,
                             _content_type="application/merge-patch+json", _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        with self._lock:
            self.writes += 1
        return True

    # ---- the restart checkpoint (controller/checkpoint.py: a ConfigMap owned by the account) -------

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap as raw JSON, or None if it does not exist (Forbidden: RBAC does not allow it)."""
        from kubernetes.client.exceptions import ApiException

        try:
            resp = await self._call(self._core.read_namespaced_config_map, name, namespace, _preload_content=False,
                                    _request_timeout=30)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise Forbidden(f"read ConfigMap {namespace}/{name}: forbidden by RBAC") from None
            raise
        with self._lock:
            self.reads += 1
        return json.loads(resp.data)

    async def put_configmap(self, body: Mapping[str, Any]) -> int:
        """Create or replace (unconditionally: the operator is its one writer) a ConfigMap. Returns the
        bytes sent."""
        from kubernetes.client.exceptions import ApiException

        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            try:
                await self._call(self._core.replace_namespaced_config_map, name, namespace, dict(body),
                                 field_manager=FIELD_MANAGER, _request_timeout=30)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                await self._call(self._core.create_namespaced_config_map, namespace, dict(body),
                                 field_manager=FIELD_MANAGER, _request_timeout=30)
        except ApiException as exc:
            if exc.status == 403:
                raise Forbidden(f"write ConfigMap {namespace}/{name}: forbidden by RBAC") from None
            raise
        with self._lock:
            self.writes += 1
        return len(json.dumps(body, separators=(",", ":")))

    # ---- workloads (the emergency stop's scaleDown: the scale subresource only) ----------------

    def _apps(self) -> Any:
        import kubernetes

        return kubernetes.client.AppsV1Api(self._api)

    async def _apps_call(self, what: str, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException

        try:
            return await self._call(fn, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 403:
                raise Forbidden(f"{what}: forbidden by RBAC") from None
            if exc.status == 404:
                return None
            raise

    async def list_workloads(self, namespace: str, label_selector: str) -> list[tuple[str, str]]:
        """(kind, name) of the Deployments and StatefulSets matching ``label_selector``."""
        apps = self._apps()
        out: list[tuple[str, str]] = []
        for kind, fn in (("Deployment", apps.list_namespaced_deployment),
                         ("StatefulSet", apps.list_namespaced_stateful_set)):
            resp = await self._apps_call(f"list {kind}s in {namespace}", fn, namespace, label_selector=label_selector,
                                         _request_timeout=30)
            with self._lock:
                self.reads += 1
            out += [(kind, item.metadata.name) for item in (resp.items if resp is not None else [])]
        return sorted(out)

    async def get_scale(self, namespace: str, kind: str, name: str) -> int | None:
        """spec.replicas from the workload's scale subresource (None: it is gone)."""
        apps = self._apps()
        fn = apps.read_namespaced_deployment_scale if kind == "Deployment" else apps.read_namespaced_stateful_set_scale
        resp = await self._apps_call(f"read the scale of {kind}/{name}", fn, name, namespace, _request_timeout=30)
        return None if resp is None else int(resp.spec.replicas or 0)

    async def set_scale(self, namespace: str, kind: str, name: str, replicas: int) -> bool:
        """Patch spec.replicas through the scale subresource (False: the workload is gone)."""
        apps = self._apps()
        fn = apps.patch_namespaced_deployment_scale if kind == "Deployment" else apps.patch_namespaced_stateful_set_scale
        resp = await self._apps_call(f"scale {kind}/{name}", fn, name, namespace, {"spec": {"replicas": int(replicas)}},
                                     _request_timeout=30)
        with self._lock:
            self.writes += 1
        return resp is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._api.close()
        except Exception:  # noqa: BLE001
            pass
