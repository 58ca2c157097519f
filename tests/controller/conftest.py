"""Fixtures of the controller's cluster tests: a simulator on its own event-loop thread (so the
tests may block on kubectl while it serves ccxt), the operator as a `tradewarden run` subprocess,
and small helpers to read TradingAccounts and Events."""
from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import pytest

from tests.conftest import kubectl

ROOT = pathlib.Path(__file__).resolve().parents[2]


class ThreadSim:
    """A tradewarden.sim.Simulator running on a private loop in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        from tradewarden.sim import Simulator

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim-loop", daemon=True)
        self.thread.start()
        self.sim = Simulator(control=True)
        self.call_async(self.sim.start(host=host, port=0))
        self.url = self.sim.url

    def call_async(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return fn(*args, **kwargs)
        return self.call_async(run())

    def open_orders(self, api_key: str) -> list[Any]:
        def get() -> list[Any]:
            acct = self.sim.account(api_key)
            return [o for venue in acct.orders.values() for o in venue.values() if _is_open(o)]
        return self.call(get)

    def stop(self) -> None:
        try:
            self.call_async(self.sim.stop(), timeout=5)
        except TimeoutError:   # a request held by a latency fault; the thread is a daemon anyway
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


def _is_open(order: Any) -> bool:
    status = str(getattr(order, "status", "")).upper()
    return status in ("NEW", "PARTIALLY_FILLED")


@pytest.fixture(scope="module")
def tsim():
    s = ThreadSim()
    try:
        yield s
    finally:
        s.stop()


class Operator:
    """`tradewarden run --standalone -n <ns>` as a subprocess (killable, restartable)."""

    def __init__(self, kubeconfig: str, namespace: str, log_path: pathlib.Path, *,
                 peering: str | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.peering = peering
        self.env = env or {}
        self.args = list(args or [])            # extra `tradewarden run` arguments (the last of a flag wins)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, PYTHONUNBUFFERED="1", **self.env)
        self._log = open(self.log_path, "ab")
        mode = ["--peering", self.peering] if self.peering else ["--standalone"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tradewarden.cli", "run", *mode, "-n", self.namespace,
             "--metrics-port", "0", "--liveness", "off", *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def operator_factory(crd_installed, tmp_path):
    started: list[Operator] = []

    def make(namespace: str, **kw: Any) -> Operator:
        op = Operator(crd_installed, namespace, tmp_path / f"operator-{len(started)}.log", **kw)
        op.start()
        started.append(op)
        return op

    yield make
    for op in started:
        op.stop()


def get_ta(kubeconfig: str, namespace: str, name: str) -> dict[str, Any] | None:
    r = kubectl(kubeconfig, "-n", namespace, "get", "tradingaccount", name, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return {}


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60, interval: float = 0.3,
             operator: Operator | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    tail = operator.log()[-4000:] if operator else ""
    raise AssertionError(f"timed out waiting for {what}; last={last!r}\n--- operator log tail ---\n{tail}")


def events_of(kubeconfig: str, namespace: str, name: str) -> list[dict[str, Any]]:
    r = kubectl(kubeconfig, "-n", namespace, "get", "events", "-o", "json",
                "--field-selector", f"involvedObject.name={name}")
    return json.loads(r.stdout).get("items", [])


def apply(kubeconfig: str, obj: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps(obj))


def secret(namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque", "stringData": data}


def account(namespace: str, name: str, *, endpoint: str, symbols: list[str], secret_name: str,
            exchange: str = "binance", **spec: Any) -> dict[str, Any]:
    body = {"exchange": exchange, "endpoint": endpoint, "symbols": symbols,
            "credentialsSecretRef": {"name": secret_name}}
    body.update(spec)
    return {"apiVersion": "tradewarden.io/v1alpha1", "kind": "TradingAccount",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def checkpoint_of(kubeconfig: str, namespace: str, account_name: str) -> dict[str, Any] | None:
    """The account's restart checkpoint (the ConfigMap controller/checkpoint.py writes), decoded; None if absent."""
    from tradewarden.controller import checkpoint

    r = kubectl(kubeconfig, "-n", namespace, "get", "configmap", checkpoint.name_for(account_name), "-o", "json",
                check=False)
    if r.returncode != 0:
        return None
    payload = checkpoint.payload_of(json.loads(r.stdout))
    return checkpoint.decode(payload) if payload is not None else None
