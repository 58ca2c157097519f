"""The emergency stop's executor (controller/breaker.py) driving the pure machine against the simulator with
real ccxt: a venue failing every cancel and listing never yields Completed; recovery yields it with the true
count; orders on symbols outside spec.symbols are cancelled; the breaker cancels orders placed after the stop
(stream path and sweep path) and reports each; USD-M Flatten leaves every position at 0."""
from __future__ import annotations

import asyncio
import secrets as _secrets

import pytest

from tradewarden.core import estop as es
from tradewarden.controller.breaker import StopExecutor
from tradewarden.gateway import RateBudgets, create_gateway
from tradewarden.sim.engine import SPOT, USDM
from tests.conftest import new_key

pytestmark = [pytest.mark.sim, pytest.mark.timeout(120)]

FAST = es.StopConfig(sweep_interval_ms=200, backoff_first_ms=50, backoff_cap_ms=200)


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, str, str]] = []
        self.breaker = 0

    def post(self, type_, reason, message):
        self.events.append((type_, reason, message))

    def reasons(self):
        return [r for _, r, _ in self.events]

    # telemetry
    def breaker_cancelled(self, n):
        self.breaker += n


@pytest.fixture
async def setup(sim):
    made = []

    async def make(exchange="binance", symbols=("BTC/USDT",), cfg=FAST, futures=False):
        key, secret = new_key(), _secrets.token_hex(32)
        sim.add_account(key, secret, balances={"USDT": "1000000", "BTC": "10", "ETH": "100", "SOL": "1000"},
                        futures_balances={"USDT": "1000000"})
        gw = create_gateway(exchange, key, secret, sim.url, budgets=RateBudgets())
        made.append(gw)
        await gw.start(list(symbols))
        rec = Recorder()
        ex = StopExecutor(namespace="ns", gateway=lambda: gw, kube=None, post=rec.post, telemetry=lambda: rec,
                          cfg=cfg, selector=None, futures=futures)
        return key, gw, ex, rec

    yield make
    for gw in made:
        await gw.close()


async def until(ex: StopExecutor, pred, timeout=20.0):
    """Run the executor as the supervisor does (work() whenever due) until pred() holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        await ex.work()
        if pred():
            return
        wake = ex.wake_at()
        import time
        await asyncio.sleep(max(0.01, min(0.2, (wake or time.time() + 0.2) - time.time())))
    raise AssertionError(f"timed out; state {ex.state}")


def place(sim, key, symbol, price, cid, venue=SPOT, qty="1"):
    return sim.place_order(key, venue, symbol=symbol, side="BUY", type="LIMIT", quantity=qty, price=price,
                           time_in_force="GTC", client_order_id=cid)


def open_count(sim, key):
    acct = sim.account(key)
    return sum(1 for venue in acct.orders.values() for o in venue.values() if o.is_open)


async def test_failing_venue_never_completes_then_completes_with_the_true_count(sim, setup):
    key, gw, ex, rec = await setup(symbols=("BTC/USDT",))
    for i, sym in enumerate(("BTCUSDT", "ETHUSDT", "SOLUSDT")):        # ETH and SOL: outside spec.symbols
        place(sim, key, sym, "10", f"bot-{i}")
        place(sim, key, sym, "11", f"tw-{i}")
    sim.add_fault(method="DELETE", path="/api/v3/openOrders", status=503)
    sim.add_fault(method="GET", path="/api/v3/openOrders", status=503)
    ex.open("runaway", "kubectl")
    await until(ex, lambda: ex.state.failures >= 6, timeout=30)     # many retry windows, capped backoff
    assert ex.state.phase is es.StopPhase.INCOMPLETE and ex.state.completed_at_ms is None
    assert ex.state.remaining is None                                  # never listed: not a number
    assert not any("Completed" in r for r in rec.reasons())
    assert open_count(sim, key) == 6
    status = ex.snapshot().to_status()
    assert "remaining" not in status and status["errors"][0]["symbol"] == "listing"
    # listing recovers, cancels still fail: it says what remains, per symbol
    sim.clear_faults()
    sim.add_fault(method="DELETE", path="/api/v3/openOrders", status=503)
    await until(ex, lambda: ex.state.remaining == 6 and ex.state.errors and ex.state.errors[0][0] != "listing")
    assert ex.state.phase is es.StopPhase.INCOMPLETE
    assert {k for k, _ in ex.state.errors} == {"BTC/USDT", "ETH/USDT", "SOL/USDT"}
    sim.clear_faults()
    await until(ex, lambda: ex.state.phase is es.StopPhase.COMPLETED)
    assert ex.state.cancelled == 6 and ex.state.remaining == 0 and open_count(sim, key) == 0
    assert rec.reasons().count("EmergencyStopCompleted") == 1
    completed = [m for _, r, m in rec.events if r == "EmergencyStopCompleted"][0]
    assert "6 orders cancelled" in completed


async def test_the_breaker_cancels_orders_placed_after_the_stop_by_sweep_and_by_stream(sim, setup):
    key, gw, ex, rec = await setup(symbols=("BTC/USDT",))
    ex.open("r", "me")
    await until(ex, lambda: ex.state.phase is es.StopPhase.COMPLETED)
    # the stream is silently dead: only the sweep sees this one (on a symbol outside the spec)
    place(sim, key, "ETHUSDT", "10", "bot-late")
    await until(ex, lambda: ex.state.breaker_cancelled == 1 and ex.state.phase is es.StopPhase.COMPLETED)
    assert open_count(sim, key) == 0 and rec.breaker == 1
    msg = [m for _, r, m in rec.events if r == "EmergencyStopBreakerCancelled"][0]
    assert "bot-late" in msg and "ETH/USDT" in msg and "sweep" in msg
    # the stream path: the order as the stream shows it is cancelled at once, reported by name
    placed = place(sim, key, "BTCUSDT", "10", "bot-stream")
    from tradewarden.domain import Order, OrderState, Side
    from decimal import Decimal
    seen = Order("bot-stream", str(placed.order_id), "BTC/USDT", Side.BUY, "limit", Decimal("10"), Decimal("1"),
                 Decimal(0), OrderState.OPEN, 0, 0)
    await ex.on_stream_order(seen)
    assert open_count(sim, key) == 0
    assert ex.state.breaker_cancelled == 2 and rec.breaker == 2
    assert "bot-stream" in [m for _, r, m in rec.events if r == "EmergencyStopBreakerCancelled"][-1]
    await ex.on_stream_order(seen)                      # seen twice (e.g. its CANCELED update): counted once
    assert ex.state.breaker_cancelled == 2


async def test_usdm_flatten_leaves_every_position_at_zero(sim, setup):
    cfg = es.StopConfig(sweep_interval_ms=200, backoff_first_ms=50, backoff_cap_ms=200, flatten=True)
    key, gw, ex, rec = await setup("binanceusdm", symbols=("BTC/USDT:USDT",), cfg=cfg, futures=True)
    sim.place_order(key, USDM, symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.02")
    sim.place_order(key, USDM, symbol="SOLUSDT", side="SELL", type="MARKET", quantity="3")    # outside the spec
    place(sim, key, "ETHUSDT", "100", "bot-f", venue=USDM, qty="1")
    ex.open("r", "me")
    await until(ex, lambda: ex.state.phase is es.StopPhase.COMPLETED)
    assert ex.state.open_positions == 0 and ex.state.cancelled == 1
    assert (await gw.list_account(positions=True)).positions == []
    assert "EmergencyStopPositionsClosed" in rec.reasons()
    assert "every position is 0" in [m for _, r, m in rec.events if r == "EmergencyStopCompleted"][0]


async def test_a_flood_of_breaker_cancels_does_not_flood_the_api_server_with_events(sim, setup):
    from tradewarden.controller import breaker
    from tradewarden.domain import Order, OrderState, Side
    from decimal import Decimal

    key, gw, ex, rec = await setup(symbols=("BTC/USDT",))
    ex.open("r", "me")
    await until(ex, lambda: ex.state.phase is es.StopPhase.COMPLETED)
    n = 40
    for i in range(n):
        placed = place(sim, key, "BTCUSDT", "10", f"flood-{i}")
        await ex.on_stream_order(Order(f"flood-{i}", str(placed.order_id), "BTC/USDT", Side.BUY, "limit",
                                       Decimal("10"), Decimal("1"), Decimal(0), OrderState.OPEN, 0, 0))
    assert open_count(sim, key) == 0 and ex.state.breaker_cancelled == n and rec.breaker == n
    named = [m for _, r, m in rec.events if r == "EmergencyStopBreakerCancelled"]
    assert len(named) <= breaker.BREAKER_EVENT_BURST + 1
    ex._event_refill_at -= 10                       # time passes: the held-back ones go out as one Event
    await ex.work()
    named = [m for _, r, m in rec.events if r == "EmergencyStopBreakerCancelled"]
    assert f"{n - breaker.BREAKER_EVENT_BURST} breaker Events held back" in named[-1]
    held = n - breaker.BREAKER_EVENT_BURST
    assert f"flood-{breaker.BREAKER_EVENT_BURST}" in named[-1] and f"and {held - 5} more" in named[-1]
