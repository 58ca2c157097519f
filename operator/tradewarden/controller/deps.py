"""What every supervisor shares (one per operator process), typed by the little each part needs."""
from __future__ import annotations

import random
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

from .. import domain
from .vocabulary import gateway_problem  # noqa: F401 - re-exported for the supervisor


class KubeAPI(Protocol):
    """The Kubernetes calls a supervisor makes itself (controller.kube.Kube)."""

    async def get_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool: ...
    def close(self) -> None: ...


class AccountGateway(domain.Gateway, Protocol):
    """A domain.Gateway as the supervisor builds it: started, and telling its API family."""

    futures: bool           # a derivatives (USD-M) account: what it fetches depends on it
    rest_family: str        # the rate budget family of its REST API ("api", "fapi")

    async def start(self, symbols: Sequence[str] = ()) -> None: ...


class GatewayFactory(Protocol):
    def __call__(self, exchange_id: str, api_key: str, secret: str, endpoint: str | None = None, *,
                 budgets: Any = None) -> AccountGateway: ...


class Budgets(Protocol):
    """The shared rate budgets (gateway.RateBudgets), as the metrics read them."""

    def snapshot(self) -> list[dict[str, Any]]: ...


class AccountTelemetry(Protocol):
    attributes: Mapping[str, str]

    def run_finished(self, duration_s: float, ok: bool, discrepancies_by_kind: Mapping[str, int] | None = None) -> None: ...
    def set_last_success(self, ts_s: float | None) -> None: ...
    def set_open_orders(self, n: int) -> None: ...
    def set_margin(self, health: Any) -> None: ...
    def stale_cancelled(self, n: int = 1) -> None: ...
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
    def exchange_weight_used(self, exchange: str, host: str, weight: float) -> None: ...
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
                telemetry.exchange_weight_used(exchange, key, float(b.get("last_server_used") or b.get("used") or 0))
                waited = float(b.get("wait_seconds") or 0.0)
                telemetry.rate_limit_wait(exchange, waited - self._published_waits.get(key, 0.0))
                self._published_waits[key] = waited
        except Exception:  # noqa: BLE001 - metrics are never worth a failed run
            pass


def _default_gateway_factory(*args: Any, **kwargs: Any) -> AccountGateway:
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
    rng: random.Random = field(default_factory=random.Random)
    exchanges: Callable[[], Collection[str]] = _known_exchanges
    budget_publisher: BudgetPublisher = field(default_factory=BudgetPublisher)
