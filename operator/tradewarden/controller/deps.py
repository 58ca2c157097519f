"""What every supervisor shares (one per operator process), typed by the little each part needs."""
from __future__ import annotations

import random
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Protocol

from .. import domain


class KubeAPI(Protocol):
    """The Kubernetes calls a supervisor makes itself (controller.kube.Kube)."""

    async def get_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool: ...
    async def get_configmap(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    async def put_configmap(self, body: Mapping[str, Any]) -> int: ...
    def close(self) -> None: ...


class GatewayFactory(Protocol):
    def __call__(self, exchange_id: str, api_key: str, secret: str, endpoint: str | None = None, *,
                 budgets: Any = None) -> domain.Gateway: ...


class Budgets(Protocol):
    """The shared rate budgets (gateway.RateBudgets), as the metrics read them."""

    def snapshot(self) -> list[dict[str, Any]]: ...


class AccountTelemetry(Protocol):
    attributes: Mapping[str, str]

    monitor: Any                  # the attached core.MonitoringState (run history and health), or None

    def attach(self, monitor: Any) -> None: ...
    def observe_run(self, duration_s: float) -> None: ...
    def set_open_orders(self, n: int) -> None: ...
    def set_margin(self, health: Any) -> None: ...
    def set_stream_connected(self, connected: bool) -> None: ...
    def stream_reconnected(self) -> None: ...
    def emergency_stop(self) -> None: ...
    def set_emergency_stop_active(self, active: bool) -> None: ...
    def forget(self) -> None: ...


class Telemetry(Protocol):
    """tradewarden.telemetry.Telemetry as the supervisors use it."""

    def account(self, namespace: str, name: str, exchange: str) -> AccountTelemetry: ...
    def span(self, span_name: str, /, **attrs: Any) -> AbstractContextManager[Any]: ...
    def traced(self, gateway: Any, **attrs: Any) -> Any: ...
    def exchange_weight_used(self, exchange: str, host: str, weight: float, limit: float | None = None) -> None: ...
    def rate_limit_wait(self, exchange: str, seconds: float) -> None: ...


EventPoster = Callable[[Any, str, str, str], None]     # (body, type, reason, message)


class BudgetPublisher:
    """The weight in use and the time spent waiting of the budgets an account's exchange spends from
    (its API family: ``api`` for spot, ``fapi`` for USD-M), labelled with that exchange. Waits are
    cumulative in the budgets and published as increments, so it remembers what it published."""

    def __init__(self) -> None:
        self._published_waits: dict[str, float] = {}

    def publish(self, telemetry: Telemetry, budgets: Budgets | None, exchange: str, family: str) -> None:
        if budgets is None or not family:
            return
        try:
            for b in budgets.snapshot():
                key = str(b.get("key"))
                if not key.endswith("/" + family):
                    continue
                telemetry.exchange_weight_used(exchange, key, float(b.get("last_server_used") or b.get("used") or 0),
                                               limit=float(b.get("limit") or 0))
                waited = float(b.get("wait_seconds") or 0.0)
                telemetry.rate_limit_wait(exchange, waited - self._published_waits.get(key, 0.0))
                self._published_waits[key] = waited
        except Exception:  # noqa: BLE001 - metrics are never worth a failed run
            pass


def _default_gateway_factory(*args: Any, **kwargs: Any) -> domain.Gateway:
    from ..gateway import create_gateway

    return create_gateway(*args, **kwargs)


def _known_exchanges() -> Collection[str]:
    from ..gateway import exchange_ids

    return exchange_ids()


@dataclass
class Deps:
    kube: KubeAPI
    post_event: EventPoster
    gateway_factory: GatewayFactory = _default_gateway_factory
    budgets: Budgets | None = None
    telemetry: Telemetry | None = None
    clock: Callable[[], float] = time.time
    min_write_interval_s: float = 1.0
    checkpoint_interval_s: float = 30.0      # the restart checkpoint: at most this often (controller/checkpoint.py)
    rng: random.Random = field(default_factory=random.Random)
    exchanges: Callable[[], Collection[str]] = _known_exchanges
    budget_publisher: BudgetPublisher = field(default_factory=BudgetPublisher)
