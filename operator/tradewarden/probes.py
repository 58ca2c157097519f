"""The operator's readiness endpoint (``/readyz``), for the kubelet's readiness probe.

Liveness is kopf's own endpoint (``--liveness``, ``/healthz``): it answers while kopf's event loop
runs. Readiness answers a different question, "is this operator serving?", and answers 200 only when
both hold:

- kopf raised its ready flag: the startup handlers finished and the watches were started;
- the TradingAccount API answers a ``list`` (limit 1) made with the operator's own credentials in the
  scope it watches: the API server is reachable, the CRD is served and RBAC lets the operator see
  its accounts. The answer is cached for a few seconds, so a probe never floods the API server.

Otherwise it answers 503 with the reason. The server runs in its own thread, so a probe is answered
even while the operator is busy; a wedged event loop is the liveness probe's business.
"""
from __future__ import annotations

import http.server
import json
import logging
import threading
import time
import urllib.parse
from typing import Any, Callable

from . import models

log = logging.getLogger(__name__)

CHECK_TTL = 5.0          # seconds an API answer is reused
CHECK_TIMEOUT = 5.0      # seconds one API check may take


def account_api_check(namespaces: list[str], api_client: Any | None = None) -> Callable[[], None]:
    """A check that lists TradingAccounts (limit 1) where the operator watches; raises when it cannot."""
    def check() -> None:
        import kubernetes

        from .controller.kube import load_config

        nonlocal api_client
        if api_client is None:
            api_client = load_config()
        custom = kubernetes.client.CustomObjectsApi(api_client)
        if namespaces:
            for ns in namespaces:
                custom.list_namespaced_custom_object(models.GROUP, models.VERSION, ns, models.PLURAL, limit=1,
                                                     _request_timeout=CHECK_TIMEOUT)
        else:
            custom.list_cluster_custom_object(models.GROUP, models.VERSION, models.PLURAL, limit=1,
                                              _request_timeout=CHECK_TIMEOUT)
    return check


class Readiness:
    """The readiness state: ``started`` (kopf's ready flag) and the API check's cached answer."""

    def __init__(self, check: Callable[[], None], ttl: float = CHECK_TTL) -> None:
        self.started = threading.Event()    # given to kopf as its ready_flag
        self.stopping = threading.Event()
        self._check = check
        self._ttl = ttl
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._error: str | None = "not checked yet"

    def state(self) -> tuple[bool, str]:
        """(ready, reason)."""
        if self.stopping.is_set():
            return False, "the operator is stopping"
        if not self.started.is_set():
            return False, "the operator is starting (startup handlers, watches)"
        with self._lock:
            if time.monotonic() - self._checked_at >= self._ttl:
                try:
                    self._check()
                    self._error = None
                except Exception as exc:  # noqa: BLE001 - any failure is "not ready", with its reason
                    status = getattr(exc, "status", None)
                    self._error = f"the TradingAccount API did not answer: {type(exc).__name__}" + (
                        f" (HTTP {status})" if status else "")
                self._checked_at = time.monotonic()
            if self._error:
                return False, self._error
        return True, "serving"


class ReadinessServer:
    """``GET <path>`` -> 200 ``{"ready": true}`` or 503 ``{"ready": false, "reason": ...}``."""

    def __init__(self, url: str, readiness: Readiness) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.port is None:
            raise ValueError(f"readiness endpoint must be http://HOST:PORT/PATH, not {url!r}")
        path = parts.path or "/readyz"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if urllib.parse.urlsplit(self.path).path != path:
                    self.send_error(404)
                    return
                ready, reason = readiness.state()
                body = json.dumps({"ready": ready, "reason": reason}).encode()
                self.send_response(200 if ready else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # probes every few seconds: no access log
                pass

        self._server = http.server.ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="tw-readiness", daemon=True)

    def start(self) -> "ReadinessServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
