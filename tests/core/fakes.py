"""An in-memory exchange implementing domain.Gateway, for the PURE-logic and runner-logic unit
tests only (exchange-facing behaviour is tested against the simulator with real ccxt)."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any, Sequence

from tradewarden.domain import (AccountListing, Balance, Fill, SymbolsResult, Order, OrderNotFound, OrderState, Position, Section,
                                Side, Snapshot)

WRITES = frozenset({"cancel_order", "cancel_symbols"})


class Clock:
    """A manual clock (seconds), passed to the runner as ``clock``."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def ms(self) -> int:
        return int(self.t * 1000)

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def order(cid: str, *, xid: str | None = None, symbol: str = "BTC/USDT", side: Side = Side.BUY,
          price: str = "100", amount: str = "1", filled: str = "0", state: OrderState = OrderState.OPEN,
          created_ms: int = 0, updated_ms: int | None = None) -> Order:
    return Order(cid, xid or f"x-{cid}", symbol, side, "limit", Decimal(price), Decimal(amount),
                 Decimal(filled), state, created_ms, created_ms if updated_ms is None else updated_ms)


class FakeExchange:
    """Knows every order it ever had (open and finished) unless ``forget``-ed; records calls;
    ``faults[method]`` = an exception (or list of exceptions, consumed one per call)."""

    exchange_id = "fake"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.orders: dict[str, Order] = {}
        self.balances: dict[str, Balance] = {}
        self.positions: dict[str, Position] = {}
        self.forgotten: set[str] = set()
        self.trades: list[Fill] = []
        self.calls: list[tuple[str, Any]] = []
        self.algo_calls: list[tuple[str, str, bool]] = []   # (method, client order id, algo flag)
        self.faults: dict[str, Any] = {}
        self.venue_ahead_ms = 0                      # the venue's clock minus ours (snapshot times)

    # ---- test helpers ----
    def put(self, *orders: Order) -> None:
        for o in orders:
            self.orders[o.client_order_id] = o

    def balance(self, asset: str, free: str, locked: str = "0", updated_ms: int = 0) -> None:
        self.balances[asset] = Balance(asset, Decimal(free), Decimal(locked), updated_ms)

    def open_orders(self) -> list[Order]:
        return [o for o in self.orders.values() if o.state.active]

    @property
    def writes(self) -> list[tuple[str, Any]]:
        return [c for c in self.calls if c[0] in WRITES]

    def _fault(self, name: str) -> None:
        fault = self.faults.get(name)
        if isinstance(fault, list):
            if fault:
                raise fault.pop(0)
            return
        if fault is not None:
            raise fault

    def _section(self, name: str, value: Any) -> Section:
        try:
            self._fault(name)
        except Exception as exc:
            return Section(error=exc)
        return Section(value=value)

    # ---- domain.Gateway ----
    async def snapshot(self, symbols: Sequence[str]) -> Snapshot:
        self.calls.append(("snapshot", tuple(symbols)))
        self._fault("snapshot")
        wanted = set(symbols)
        return Snapshot(
            taken_ms=self.clock.ms() + self.venue_ahead_ms,
            balances=self._section("balances", dict(self.balances)),
            open_orders=self._section("open_orders", [o for o in self.open_orders() if o.symbol in wanted]),
            positions=self._section("positions", list(self.positions.values())),
        )

    def _find(self, exchange_order_id: str, client_order_id: str) -> Order:
        o = self.orders.get(client_order_id)
        if o is None and exchange_order_id:
            o = next((x for x in self.orders.values() if x.exchange_order_id == exchange_order_id), None)
        if o is None or o.client_order_id in self.forgotten:
            raise OrderNotFound(f"order {client_order_id or exchange_order_id} does not exist")
        return o

    async def fetch_order(self, symbol: str, exchange_order_id: str = "", client_order_id: str = "", *,
                          algo: bool = False) -> Order:
        self.calls.append(("fetch_order", client_order_id))
        self.algo_calls.append(("fetch_order", client_order_id, algo))
        self._fault("fetch_order")
        return self._find(exchange_order_id, client_order_id)

    async def cancel_order(self, symbol: str, exchange_order_id: str = "", client_order_id: str = "", *,
                           algo: bool = False) -> Order | None:
        self.calls.append(("cancel_order", client_order_id))
        self.algo_calls.append(("cancel_order", client_order_id, algo))
        self._fault("cancel_order")
        o = self._find(exchange_order_id, client_order_id)
        if not o.state.active:
            raise OrderNotFound("Unknown order sent.")
        done = replace(o, state=OrderState.CANCELED, updated_ms=self.clock.ms())
        self.orders[o.client_order_id] = done
        # like Binance: the answer carries the cancel request's own client id (origClientOrderId is the order's)
        return replace(done, client_order_id=f"cancel-{len(self.calls)}")

    async def order_history(self, symbol: str, *, since_ms: int = 0, until_ms: int = 0, from_order_id: str = "",
                            limit: int = 1000) -> list[Order]:
        self.calls.append(("order_history", symbol))
        self._fault("order_history")
        return [o for o in self.orders.values() if o.symbol == symbol and o.client_order_id not in self.forgotten
                and (from_order_id and o.exchange_order_id >= from_order_id
                     or not from_order_id and since_ms <= o.created_ms and (not until_ms or o.created_ms <= until_ms))
                ][:limit]

    async def trade_history(self, symbol: str, *, since_ms: int = 0, until_ms: int = 0, from_trade_id: str = "",
                            limit: int = 1000) -> list[Fill]:
        self.calls.append(("trade_history", symbol))
        self._fault("trade_history")
        return [f for f in self.trades if f.symbol == symbol
                and (from_trade_id and int(f.trade_id) >= int(from_trade_id)
                     or not from_trade_id and since_ms <= f.time_ms and (not until_ms or f.time_ms <= until_ms))
                ][:limit]

    async def list_account(self, positions: bool = False) -> AccountListing:
        """Every open order, whatever its symbol (the emergency stop's whole-account listing)."""
        self.calls.append(("list_account", positions))
        self._fault("list_account")
        held = [p for p in self.positions.values() if p.amount != 0] if positions else []
        return AccountListing(orders=self.open_orders(), positions=held)

    async def cancel_symbols(self, symbols: Sequence[str], algo_symbols: Sequence[str] = (),
                             listed: Sequence[Order] = ()) -> SymbolsResult:
        self.calls.append(("cancel_symbols", tuple(symbols)))
        self.writes.append(("cancel_symbols", tuple(symbols)))
        self._fault("cancel_symbols")
        done = []
        for o in self.open_orders():
            if o.symbol in set(symbols) | set(algo_symbols):
                self.orders[o.client_order_id] = replace(o, state=OrderState.CANCELED, updated_ms=self.clock.ms())
                done.append(o)
        return SymbolsResult(done=done)

    def stream(self, symbols: Sequence[str]):  # pragma: no cover - not used by the unit tests
        raise NotImplementedError

    async def close(self) -> None:
        pass


class ConfigMaps:
    """The ConfigMap calls of controller.kube.Kube over a dict (the restart checkpoint's store): what a
    supervisor wrote is what the next one reads, through the same JSON shape the API server returns."""

    def __init__(self) -> None:
        self.configmaps: dict[tuple[str, str], dict] = {}
        self.configmap_writes: list[int] = []          # bytes of each write

    async def get_configmap(self, namespace: str, name: str):
        import copy
        cm = self.configmaps.get((namespace, name))
        return copy.deepcopy(cm) if cm is not None else None

    async def put_configmap(self, body) -> int:
        import copy
        import json as _json
        meta = body["metadata"]
        self.configmaps[(meta["namespace"], meta["name"])] = copy.deepcopy(dict(body))
        size = len(_json.dumps(body, separators=(",", ":")))
        self.configmap_writes.append(size)
        return size
