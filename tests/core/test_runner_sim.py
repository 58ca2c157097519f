"""The key scenarios through AccountRunner -> CcxtGateway -> real ccxt over HTTP -> the simulator."""
from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import pytest

from tradewarden.core import AccountConfig, Ledger
from tradewarden.core.ledger import OrderKey
from tradewarden.service import AccountRunner
from tradewarden.domain import ConnectionState, OrderEvent, OrderState, Policy, Position

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
    # a ledger that never listed orders adopts them: not discrepancies (issue 19 item 4)
    assert kinds(report) == []
    assert sorted(o.client_order_id for o in report.adopted) == ["manual-1", "tw-sync-1"]
    led = runner.ledger
    assert led.balance("USDT").free == Decimal("6000") and led.balance("USDT").locked == Decimal("4000")
    assert led.balance("ETH").locked == Decimal("1")
    assert led.balance("BTC").total == Decimal("1") and led.positions == {}     # spot: balances, no positions
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
    assert sorted(kinds(report)) == [("balance", "BTC"), ("balance", "USDT"), ("fill", "tw-fill-1")]
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
    clock = Later()
    runner = await make_runner(missing_retries=1, lost_after_s=30, clock=clock)
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
    second = await runner.reconcile()                        # count reached, 30 s not yet: still pending
    assert kinds(second) == [("missing", "tw-ghost")] and runner.ledger.order("tw-ghost").state is OrderState.OPEN
    clock.ahead = 31
    third = await runner.reconcile()
    assert kinds(third) == [("lost", "tw-ghost")]            # balances settled in the first run
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


async def test_the_ledger_learns_the_emergency_stops_cancels(sim, account, make_runner):
    key = account[0]
    for i in range(3):
        place(sim, key, f"tw-es-{i}", qty="0.01", price=str(40000 - i))
    place(sim, key, "manual-es", symbol="ETHUSDT", side="SELL", qty="1", price="5000")
    runner = await make_runner(policy=Policy.OBSERVE_ONLY)        # a human asked: applies anyway
    await runner.initial_sync()
    listing = await runner.gateway.list_account()
    result = await runner.gateway.cancel_symbols(sorted({o.symbol for o in listing.orders}), (), listing.orders)
    assert result.errors == {} and len(result.done) == 4
    assert sim.account(key).open_count("spot") == 0
    sim.adjust_balance(key, "ETH", "-2")          # and a real change of a total, out of band, meanwhile
    report = await runner.confirm_stopped()
    # the cancels: asked for, not alarms; nor the locked balance they freed (USDT and ETH moved from locked
    # to free, their totals did not); the ETH total that moved is reported
    assert [(d.kind, d.entity) for d in report.discrepancies] == [("balance", "ETH")], report.discrepancies
    assert runner.ledger.balance("USDT").locked == 0 and runner.ledger.balance("ETH").total == Decimal("8")
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


# ---- identity: (symbol, exchange order id), not the client order id (issue 19 item 3) ------------------
# Binance spot, rest-api.md "New order (TRADE)", newClientOrderId: "A unique id among open orders ...
# Orders with the same newClientOrderID can be accepted only when the previous one is filled": an id
# names one order at a time, not one order for ever; and it is unique per symbol, not per account.

async def test_client_order_id_reused_on_one_symbol_is_a_new_order(sim, account, make_runner):
    key = account[0]
    first = place(sim, key, "tw-grid-1")
    clock = Later()
    runner = await make_runner(clock=clock, stale_timeout_s=HOUR_S)
    await runner.initial_sync()
    sim.fill(key, first.order_id)                         # filled; its events are not consumed here
    report = await runner.reconcile()
    assert kinds(report) == [("balance", "BTC"), ("balance", "USDT"), ("missing", "tw-grid-1")]
    led = runner.ledger
    old_key = OrderKey("BTC/USDT", str(first.order_id))
    assert led.order(old_key).state is OrderState.FILLED
    # the grid bot places its next order under the same client order id (the venue accepts it)
    second = place(sim, key, "tw-grid-1", price="39000")
    assert second.order_id != first.order_id
    await asyncio.sleep(0.2)             # older than the snapshot (minus the grace): judged now, not next run
    report = await runner.reconcile()
    new_key = OrderKey("BTC/USDT", str(second.order_id))
    # seen, not hidden behind the finished order of the same id: an order the ledger did not know
    assert kinds(report) == [("balance", "USDT"), ("orphan", "tw-grid-1")]
    assert str(second.order_id) in report.discrepancies[-1].action
    assert led.order(new_key).state is OrderState.OPEN and led.order(new_key).price == Decimal("39000")
    assert led.order(old_key).state is OrderState.FILLED              # the earlier one is kept as it was
    assert led.order("tw-grid-1") == led.order(new_key)                # by its label: the active one
    assert [o.exchange_order_id for o in led.active_orders()] == [str(second.order_id)]
    assert (await runner.reconcile()).discrepancies == []
    # ... and it is the one stale cleanup cancels (it is owned: the prefix decides)
    clock.ahead = 2 * HOUR_S
    cleanup = await runner.stale_cleanup()
    assert cleanup.cancelled == 1
    assert led.order(new_key).state is OrderState.CANCELED and led.order(old_key).state is OrderState.FILLED
    assert [(m, p) for m, p in writes(sim, key)] == [("DELETE", "/api/v3/order")]


async def test_same_client_order_id_on_two_symbols_are_two_orders(sim, account, make_runner):
    key = account[0]
    btc = place(sim, key, "tw-twin")
    eth = place(sim, key, "tw-twin", symbol="ETHUSDT", side="SELL", qty="1", price="5000")
    runner = await make_runner()
    first = await runner.initial_sync()
    assert sorted(o.symbol for o in first.adopted) == ["BTC/USDT", "ETH/USDT"]
    led = runner.ledger
    kb, ke = OrderKey("BTC/USDT", str(btc.order_id)), OrderKey("ETH/USDT", str(eth.order_id))
    assert {kb, ke} <= set(led.orders)
    sim.fill(key, eth.order_id, "0.25")                  # a partial fill on ETH only
    report = await runner.reconcile()
    fills = [d for d in report.discrepancies if d.kind == "fill"]
    assert len(fills) == 1 and fills[0].entity == "tw-twin" and fills[0].exchange == "partially_filled filled=0.25/1.0"
    assert f"{eth.order_id} on ETH/USDT" in fills[0].action
    assert led.order(ke).filled == Decimal("0.25") and led.order(kb).filled == 0
    sim.cancel_order(key, btc.order_id)                  # the BTC one goes behind our back
    report = await runner.reconcile()
    missing = [d for d in report.discrepancies if d.kind == "missing"]
    assert len(missing) == 1 and "canceled" in missing[0].action
    assert led.order(kb).state is OrderState.CANCELED
    assert led.order(ke).state is OrderState.PARTIALLY_FILLED
    assert led.order("tw-twin") == led.order(ke)                       # the active one of the label


async def test_reused_client_order_id_through_the_stream_is_no_discrepancy(sim, account, make_runner):
    """With every event delivered, the reuse is followed through the stream and nothing is reported."""
    key = account[0]
    first = place(sim, key, "tw-grid-2")
    runner = await make_runner()
    await runner.initial_sync()
    stream = runner.gateway.stream(runner.config.symbols)
    second = None

    async def consume():
        nonlocal second
        async for event in stream:
            await runner.apply_event(event)
            if getattr(event, "state", None) is ConnectionState.CONNECTED:
                sim.fill(key, first.order_id)
                second = place(sim, key, "tw-grid-2", price="39500")
            o = runner.ledger.order(OrderKey("BTC/USDT", str(second.order_id))) if second else None
            if o is not None:
                return

    await asyncio.wait_for(consume(), 60)
    await stream.aclose()
    led = runner.ledger
    assert led.order(OrderKey("BTC/USDT", str(first.order_id))).state is OrderState.FILLED
    assert led.order(OrderKey("BTC/USDT", str(second.order_id))).state is OrderState.OPEN
    await asyncio.sleep(0.3)                      # the balance events of the fill
    report = await runner.reconcile()
    assert [d for d in report.discrepancies if d.kind in ("orphan", "fill", "missing")] == [], report.discrepancies


# ---- scope (issue 19 item 6) ---------------------------------------------------------------------------

async def test_symbol_removed_from_the_spec_orders_asked_once_never_cancelled(sim, account, make_runner):
    key = account[0]
    place(sim, key, "tw-keep")
    eth = place(sim, key, "tw-eth-1", symbol="ETHUSDT", side="SELL", qty="1", price="5000")
    clock = Later()
    runner = await make_runner(clock=clock, stale_timeout_s=HOUR_S)
    await runner.initial_sync()
    # the user removes ETH/USDT from spec.symbols: the runner is reconfigured, the ledger kept
    narrowed = await make_runner(clock=clock, ledger=runner.ledger, stale_timeout_s=HOUR_S, symbols=["BTC/USDT"])
    clock.ahead = 2 * HOUR_S                        # both orders are now old enough to be stale
    cleanup = await narrowed.stale_cleanup()
    assert cleanup.cancelled == 1                   # tw-keep only: stale cleanup acts on configured symbols
    assert any(o.order_id == eth.order_id for o in sim.account(key).open_orders("spot"))
    report = await narrowed.reconcile()
    assert report.ok and report.released == 1
    # (the USDT the cancel released shows as a balance change: no stream in this test)
    assert [d.kind for d in report.discrepancies] == ["balance"], report.discrepancies
    assert narrowed.ledger.order("tw-eth-1") is None            # still open on the venue: out of tracking
    again = await narrowed.reconcile()
    assert again.released == 0 and again.requests == 0
    assert any(o.order_id == eth.order_id for o in sim.account(key).open_orders("spot"))   # never cancelled


# ---- gaps closed through history (issue 19 item 2) ------------------------------------------------------
# Spot rest-api.md "All orders (USER_DATA)" (GET /api/v3/allOrders, weight 20: startTime/endTime at most
# 24 hours apart; orderId returns orders >= it) and "Account trade list (USER_DATA)" (GET /api/v3/myTrades,
# weight 20 without orderId; fromId returns trades >= it and is not combined with a time range).

def _history_paths(sim, key):
    return [r["path"] for r in sim.requests() if r["key"] == key and r["path"] in
            ("/api/v3/allOrders", "/api/v3/myTrades", "/fapi/v1/allOrders", "/fapi/v1/userTrades")]


async def test_order_placed_and_filled_inside_a_stream_gap_is_found_with_its_fills(sim, account, make_runner):
    key = account[0]
    runner = await make_runner()
    await runner.initial_sync()
    stream = runner.gateway.stream(runner.config.symbols)
    reports, inside = [], {}

    async def consume():
        async for event in stream:
            report = await runner.handle_event(event)
            if report is not None:
                reports.append(report)
                return
            if getattr(event, "state", None) is ConnectionState.CONNECTED:
                sim.set_deliver(key, False)                          # the gap: events lost ...
                o = place(sim, key, "tw-gap-1", price="41000")      # ... an order born ...
                sim.fill(key, o.order_id, "0.04")
                sim.fill(key, o.order_id)                            # ... filled in two trades ...
                inside["order"] = o
                sim.set_deliver(key, True)
                await sim.drop_streams(abort=True)                   # ... and the socket dies

    await asyncio.wait_for(consume(), 60)
    await stream.aclose()
    report = reports[0]
    assert report.trigger == "stream-reconnect"
    unseen = [d for d in report.discrepancies if d.kind == "unseen"]
    assert [d.entity for d in unseen] == ["tw-gap-1"], report.discrepancies
    led = runner.ledger
    xid = str(inside["order"].order_id)
    assert led.order(OrderKey("BTC/USDT", xid)).state is OrderState.FILLED
    fills = led.fills_of(OrderKey("BTC/USDT", xid))
    assert [f.amount for f in fills] == [Decimal("0.04"), Decimal("0.06")]
    venue_trades = [t for t in sim.account(key).trades["spot"] if t.order_id == inside["order"].order_id]
    assert [(f.trade_id, f.price, f.fee, f.fee_asset) for f in fills] == \
        [(str(t.trade_id), t.price, t.commission, t.commission_asset) for t in venue_trades]
    assert led.trade_cursors["BTC/USDT"] == str(venue_trades[-1].trade_id)
    assert led.gap_since_ms == 0
    # the cost: one allOrders per symbol, and myTrades only where there were executions to explain
    assert sorted(_history_paths(sim, key)) == ["/api/v3/allOrders", "/api/v3/allOrders", "/api/v3/myTrades"]
    assert report.history_requests == 3
    # reported once: the next run has nothing to say about it
    assert [d for d in (await runner.reconcile()).discrepancies if d.kind == "unseen"] == []


async def test_fills_are_recorded_from_the_stream_and_a_later_gap_reads_no_trades_for_them(
        sim, account, make_runner):
    """The trades the stream delivered are recorded from its events (gateway fill_from_execution): the same
    ids, prices, quantities and fees as the venue's trades; a gap afterwards reads order history, and no
    trade history for executions the ledger already holds fills for (the cheapest read)."""
    key = account[0]
    runner = await make_runner()
    await runner.initial_sync()
    stream = runner.gateway.stream(runner.config.symbols)
    seen: dict = {}

    async def consume():
        async for event in stream:
            report = await runner.handle_event(event)
            if report is not None:
                seen["report"] = report
                return
            if getattr(event, "state", None) is ConnectionState.CONNECTED and "order" not in seen:
                o = place(sim, key, "tw-live-1", price="41000")
                sim.fill(key, o.order_id, "0.04")
                sim.fill(key, o.order_id)
                seen["order"] = o
            if isinstance(event, OrderEvent) and event.order.state is OrderState.FILLED:
                await sim.drop_streams(abort=True)               # a gap, after everything was delivered

    await asyncio.wait_for(consume(), 60)
    await stream.aclose()
    xid = seen["order"].order_id
    venue_trades = [t for t in sim.account(key).trades["spot"] if t.order_id == xid]
    fills = runner.ledger.fills_of(OrderKey("BTC/USDT", str(xid)))
    assert len(venue_trades) == 2
    assert [(f.trade_id, f.price, f.amount, f.fee, f.fee_asset) for f in fills] == \
        [(str(t.trade_id), t.price, t.qty, t.commission, t.commission_asset) for t in venue_trades]
    report = seen["report"]
    assert report.trigger == "stream-reconnect" and kinds(report) == []
    assert sorted(_history_paths(sim, key)) == ["/api/v3/allOrders", "/api/v3/allOrders"]   # no myTrades


async def test_order_placed_and_filled_while_the_operator_was_down_is_found_with_its_fills(
        sim, account, make_runner):
    key = account[0]
    runner = await make_runner()
    await runner.initial_sync()
    saved = runner.ledger.dump()                                     # the last checkpoint before the stop
    o = place(sim, key, "manual-down", symbol="ETHUSDT", side="SELL", qty="1", price="5000")
    sim.fill(key, o.order_id)
    c = place(sim, key, "tw-down-2", price="45000")                  # placed and cancelled: no fill
    sim.cancel_order(key, c.order_id)
    restarted = await make_runner(ledger=Ledger.load(saved))
    report = await restarted.initial_sync()
    unseen = sorted((d.entity, d.exchange) for d in report.discrepancies if d.kind == "unseen")
    assert unseen == [("manual-down", "filled filled=1.0/1.0"), ("tw-down-2", "canceled filled=0.0/0.1")]
    fills = restarted.ledger.fills_of(OrderKey("ETH/USDT", str(o.order_id)))
    assert len(fills) == 1 and fills[0].amount == Decimal("1") and fills[0].fee_asset
    assert restarted.ledger.fills_of(OrderKey("BTC/USDT", str(c.order_id))) == []
    # myTrades was read for ETH only (the cancelled BTC order executed nothing)
    assert sorted(_history_paths(sim, key)) == ["/api/v3/allOrders", "/api/v3/allOrders", "/api/v3/myTrades"]
    # the fills survive a restart (they are in the dump), and the gap is closed
    back = Ledger.load(restarted.ledger.dump())
    assert back.fills_of(OrderKey("ETH/USDT", str(o.order_id))) == fills and back.gap_since_ms == 0


async def test_no_gap_no_history(sim, account, make_runner):
    """With every event delivered and nothing unexplained, history is never read (it costs weight)."""
    key = account[0]
    runner = await make_runner()
    await runner.initial_sync()
    for _ in range(3):
        assert (await runner.reconcile()).discrepancies == []
    assert _history_paths(sim, key) == []


async def test_usdm_gap_closed_through_all_orders_and_user_trades(sim, account, make_runner):
    """USD-M: GET /fapi/v1/allOrders (weight 5, usdm-facts.md C1) and /fapi/v1/userTrades (weight 5, E)."""
    key = account[0]
    runner = await make_runner(futures=True)
    await runner.initial_sync()
    saved = runner.ledger.dump()
    o = place(sim, key, "tw-fut-gap", qty="0.01", price="45000", venue="usdm")
    sim.fill(key, o.order_id)
    restarted = await make_runner(futures=True, ledger=Ledger.load(saved))
    report = await restarted.initial_sync()
    assert [(d.kind, d.entity) for d in report.discrepancies if d.kind == "unseen"] == [("unseen", "tw-fut-gap")]
    fills = restarted.ledger.fills_of(OrderKey("BTC/USDT:USDT", str(o.order_id)))
    assert [f.amount for f in fills] == [Decimal("0.01")] and fills[0].fee_asset == "USDT"
    assert sorted(_history_paths(sim, key)) == ["/fapi/v1/allOrders", "/fapi/v1/userTrades"]
