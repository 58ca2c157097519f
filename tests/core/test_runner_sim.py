"""The key scenarios through AccountRunner -> CcxtGateway -> real ccxt over HTTP -> the simulator."""
from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import pytest

from tradewarden.core import AccountConfig, Ledger
from tradewarden.service import AccountRunner
from tradewarden.domain import ConnectionState, OrderState, Policy, Position

pytestmark = pytest.mark.sim

SYMBOLS = ["BTC/USDT", "ETH/USDT"]
HOUR_S = 3600


class Later:
    """The runner's clock, ``ahead`` seconds in the future (to make orders stale)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture
def account(sim):
    key, secret = "tw-test-" + uuid.uuid4().hex, uuid.uuid4().hex
    sim.add_account(key, secret, balances={"USDT": "10000", "BTC": "1", "ETH": "10"},
                    futures_balances={"USDT": "10000"})
    return key, secret


@pytest.fixture
async def make_runner(sim, account):
    from tradewarden.gateway import create_gateway
    gateways = []

    async def make(*, futures: bool = False, ledger: Ledger | None = None, clock=None, **kw):
        symbols = kw.pop("symbols", ["BTC/USDT:USDT"] if futures else SYMBOLS)
        gw = create_gateway("binanceusdm" if futures else "binance", *account, endpoint=sim.url)
        gateways.append(gw)
        await gw.start(symbols)
        cfg = AccountConfig(symbols=symbols, futures=futures, missing_grace_s=0, **kw)
        return AccountRunner(gw, cfg, ledger=ledger, clock=clock or time.time)

    yield make
    for gw in gateways:
        await gw.close()


def place(sim, key, cid, symbol="BTCUSDT", side="BUY", qty="0.1", price="40000", venue="spot"):
    return sim.place_order(key, venue, symbol=symbol, side=side, type="LIMIT", quantity=qty, price=price,
                           time_in_force="GTC", client_order_id=cid)


def kinds(report):
    return sorted((d.kind, d.entity) for d in report.discrepancies)


def writes(sim, key):
    return [(r["method"], r["path"]) for r in sim.requests()
            if r["key"] == key and r["method"] in ("POST", "DELETE", "PUT")
            and "userDataStream" not in r["path"]]


async def test_initial_sync_against_the_simulator(sim, account, make_runner):
    key = account[0]
    place(sim, key, "tw-sync-1")
    place(sim, key, "manual-1", symbol="ETHUSDT", side="SELL", qty="1", price="5000")
    runner = await make_runner()
    report = await runner.initial_sync()
    assert report.ok, report.error
    assert kinds(report) == [("orphan", "manual-1"), ("orphan", "tw-sync-1")]
    led = runner.ledger
    assert led.balance("USDT").free == Decimal("6000") and led.balance("USDT").locked == Decimal("4000")
    assert led.balance("ETH").locked == Decimal("1")
    assert led.position("BTC/USDT").amount == Decimal("1") and led.position("ETH/USDT").amount == Decimal("10")
    assert {o.client_order_id for o in led.active_orders()} == {"tw-sync-1", "manual-1"}
    assert (await runner.reconcile()).discrepancies == []


async def test_balance_mismatch_and_fill_detected_against_the_simulator(sim, account, make_runner):
    key = account[0]
    o = place(sim, key, "tw-fill-1")
    runner = await make_runner()
    await runner.initial_sync()
    sim.adjust_balance(key, "USDT", "-2500")           # a withdrawal nobody told us about
    sim.fill(key, o.order_id, "0.04")                  # a partial fill we missed
    report = await runner.reconcile()
    assert set(kinds(report)) >= {("balance", "USDT"), ("fill", "tw-fill-1"), ("balance", "BTC"),
                                  ("position", "BTC/USDT")}
    usdt = next(d for d in report.discrepancies if d.entity == "USDT")
    assert usdt.local.startswith("free=6000") and "free=3500" in usdt.exchange
    assert runner.ledger.order("tw-fill-1").filled == Decimal("0.04")
    free, locked = sim.account(key).balance("BTC")[:2]                # net of the simulator's commission
    assert (runner.ledger.balance("BTC").free, runner.ledger.balance("BTC").locked) == (free, locked)
    assert (await runner.reconcile()).discrepancies == []


async def test_missing_order_resolved_by_query_and_unknown_one_declared_lost(sim, account, make_runner):
    key = account[0]
    filled = place(sim, key, "tw-miss-1")
    cancelled = place(sim, key, "tw-miss-2", symbol="ETHUSDT", side="SELL", qty="1", price="5000")
    runner = await make_runner(missing_retries=1)
    await runner.initial_sync()
    sim.fill(key, filled.order_id)
    sim.cancel_order(key, cancelled.order_id)
    # and an order the ledger believes open that the exchange never had
    ghost = runner.ledger.order("tw-miss-1")
    from dataclasses import replace
    runner.ledger.put_order(replace(ghost, client_order_id="tw-ghost", exchange_order_id="999999999"),
                            "rest", runner.now_ms() - 60_000)
    first = await runner.reconcile()
    order_kinds = lambda r: [k for k in kinds(r) if k[0] not in ("balance", "position")]  # noqa: E731
    assert order_kinds(first) == [("missing", "tw-ghost"), ("missing", "tw-miss-1"), ("missing", "tw-miss-2")]
    assert runner.ledger.order("tw-miss-1").state is OrderState.FILLED
    assert runner.ledger.order("tw-miss-2").state is OrderState.CANCELED
    assert runner.ledger.order("tw-ghost").state is OrderState.OPEN      # not found once: retried
    second = await runner.reconcile()
    assert kinds(second) == [("lost", "tw-ghost")]           # balances settled in the first run
    assert runner.ledger.order("tw-ghost").state is OrderState.LOST


async def test_partial_state_against_the_simulator(sim, account, make_runner):
    key = account[0]
    o = place(sim, key, "tw-part-1")
    runner = await make_runner()
    await runner.initial_sync()
    sim.add_fault(method="GET", path="/api/v3/account", status=503)
    sim.fill(key, o.order_id, "0.05")
    report = await runner.reconcile()
    assert not report.ok and "balances" in report.stale_sections and "orders" not in report.stale_sections
    assert ("fill", "tw-part-1") in kinds(report)
    assert runner.ledger.balance("BTC").free == Decimal("1")                 # kept, not guessed
    assert runner.monitor.consecutive_failures == 1
    sim.clear_faults()
    assert (await runner.reconcile()).ok and runner.monitor.consecutive_failures == 0
    assert runner.ledger.balance("BTC").free == sim.account(key).balance("BTC")[0] > Decimal("1")


async def test_stale_cleanup_against_the_simulator(sim, account, make_runner):
    key = account[0]
    owned = place(sim, key, "tw-stale-1")
    foreign = place(sim, key, "manual-stale", symbol="ETHUSDT", side="SELL", qty="1", price="5000")
    raced = place(sim, key, "tw-stale-2", price="39000")
    clock = Later()
    runner = await make_runner(clock=clock, stale_timeout_s=HOUR_S)
    await runner.initial_sync()
    assert (await runner.stale_cleanup()).discrepancies == []                # young: nothing to do
    clock.ahead = 2 * HOUR_S
    sim.fill(key, raced.order_id)          # filled on the exchange just before our cancel arrives
    report = await runner.stale_cleanup()
    acct = sim.account(key)
    assert acct.orders["spot"][owned.order_id].status == "CANCELED"
    assert acct.orders["spot"][foreign.order_id].status == "NEW"             # foreign: never cancelled
    assert runner.ledger.order("tw-stale-1").state is OrderState.CANCELED
    assert runner.ledger.order("tw-stale-2").state is OrderState.FILLED     # asked, not assumed
    assert runner.ledger.order("manual-stale").state is OrderState.OPEN
    assert {d.entity for d in report.discrepancies} == {"tw-stale-1", "tw-stale-2"}
    assert runner.monitor.stale_cancelled == 1
    # terminal orders are purged once older than the retention
    runner.config = AccountConfig(symbols=SYMBOLS, retention_s=60, stale_timeout_s=HOUR_S)
    purged = await runner.stale_cleanup()
    assert purged.purged == 2 and runner.ledger.order("tw-stale-1") is None
    assert runner.ledger.order("manual-stale") is not None


async def test_observe_only_sends_no_write_against_the_simulator(sim, account, make_runner):
    key = account[0]
    place(sim, key, "tw-obs-1")
    clock = Later()
    runner = await make_runner(clock=clock, policy=Policy.OBSERVE_ONLY, stale_timeout_s=HOUR_S)
    await runner.initial_sync()
    clock.ahead = 2 * HOUR_S
    sim.adjust_balance(key, "ETH", "-1")
    before = writes(sim, key)
    reconciled = await runner.reconcile()
    stale = await runner.stale_cleanup()
    assert ("balance", "ETH") in kinds(reconciled) and kinds(stale) == [("stale", "tw-obs-1")]
    assert writes(sim, key) == before == []
    assert any(r["key"] == key and r["path"] == "/api/v3/openOrders" for r in sim.requests())  # log works


async def test_emergency_stop_cancels_everything_with_cancel_all(sim, account, make_runner):
    key = account[0]
    for i in range(3):
        place(sim, key, f"tw-es-{i}", qty="0.01", price=str(40000 - i))
    place(sim, key, "manual-es", symbol="ETHUSDT", side="SELL", qty="1", price="5000")
    runner = await make_runner(policy=Policy.OBSERVE_ONLY)        # a human asked: applies anyway
    await runner.initial_sync()
    report = await runner.emergency_stop(deadline_s=20)
    assert report.verified and report.remaining == [] and report.cancelled == 4
    assert sim.account(key).open_count("spot") == 0
    assert list(runner.ledger.active_orders()) == []
    assert {e.order.state for e in runner.ledger.orders.values()} == {OrderState.CANCELED}


async def test_futures_positions_against_the_simulator(sim, account, make_runner):
    key = account[0]
    runner = await make_runner(futures=True)
    await runner.initial_sync()
    assert runner.ledger.position("BTC/USDT:USDT") is None
    sim.set_price("BTCUSDT", "50000")
    sim.place_order(key, "usdm", symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01",
                    client_order_id="manual-fut")
    report = await runner.reconcile()
    assert ("position", "BTC/USDT:USDT") in kinds(report)
    pos = runner.ledger.position("BTC/USDT:USDT")
    assert isinstance(pos, Position) and pos.amount == Decimal("0.01")


async def test_reconnect_triggers_reconciliation_through_the_stream(sim, account, make_runner):
    key = account[0]
    runner = await make_runner()
    await runner.initial_sync()
    stream = runner.gateway.stream(runner.config.symbols)
    reports = []

    async def consume():
        async for event in stream:
            report = await runner.handle_event(event)
            if report is not None:
                reports.append(report)
                return
            if getattr(event, "state", None) is ConnectionState.CONNECTED:
                sim.set_deliver(key, False)          # events of the gap are lost ...
                sim.adjust_balance(key, "USDT", "-100")
                await sim.drop_streams(abort=True)   # ... and the socket dies

    await asyncio.wait_for(consume(), 60)
    await stream.aclose()
    assert reports[0].trigger == "stream-reconnect"
    assert ("balance", "USDT") in kinds(reports[0])               # the missed change is caught
    assert runner.ledger.balance("USDT").free == Decimal("9900")
