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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._api.close()
        except Exception:  # noqa: BLE001
            pass
