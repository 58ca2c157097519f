"""USD-M as Binance defines it, through AccountRunner -> CcxtGateway -> real ccxt -> the simulator.

Every venue behaviour relied on is the documentation's (../shared/reference/binance-usdm/usdm-facts.md,
section cited per test); the simulator follows it (tests/sim/test_usdm_docs.py checks its payloads).
"""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from decimal import Decimal

import pytest

from tradewarden.core import AccountConfig
from tradewarden.service import AccountRunner
from tradewarden.domain import ConnectionState, OrderState, PositionSide

from .test_runner_sim import Later

pytestmark = pytest.mark.sim

SYMBOL = "BTC/USDT:USDT"
D = Decimal


@pytest.fixture
def account(sim):
    key, secret = "tw-test-" + uuid.uuid4().hex, uuid.uuid4().hex
    sim.add_account(key, secret, futures_balances={"USDT": "10000"})
    sim.set_price("BTCUSDT", "50000")
    return key, secret


@pytest.fixture
async def make_runner(sim, account):
    from tradewarden.gateway import create_gateway
    gateways = []

    async def make(clock=None, **kw):
        gw = create_gateway("binanceusdm", *account, endpoint=sim.url)
        gateways.append(gw)
        await gw.start([SYMBOL])
        cfg = AccountConfig(symbols=[SYMBOL], futures=True, missing_grace_s=0, **kw)
        return AccountRunner(gw, cfg, clock=clock or time.time)

    yield make
    for gw in gateways:
        await gw.close()


class Consumer:
    """The runner's stream loop (what the controller runs), in a task."""

    def __init__(self, runner: AccountRunner):
        self.runner = runner
        self.stream = runner.gateway.stream(runner.config.symbols)
        self.connected = asyncio.Event()
        self.events = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            await self.runner.handle_event(event)
            if getattr(event, "state", None) in (ConnectionState.CONNECTED, ConnectionState.RECONNECTED):
                self.connected.set()
            else:
                self.events += 1

    async def settle(self, quiet_s: float = 0.3) -> None:
        """Until no event arrived for ``quiet_s``."""
        last = -1
        while last != self.events:
            last = self.events
            await asyncio.sleep(quiet_s)

    async def close(self) -> None:
        await self.stream.aclose()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        # as the supervisor does when its stream stops (whether the DISCONNECTED event got through the
        # closing stream or not): no event can be on its way, nothing is judged later
        self.runner.stream_live = False


def kinds(report) -> list[tuple[str, str]]:
    return [(d.kind, d.entity) for d in report.discrepancies]


def market(sim, key, side, qty, position_side=None, cid=None):
    return sim.place_order(key, "usdm", symbol="BTCUSDT", side=side, type="MARKET", quantity=qty,
                           client_order_id=cid, position_side=position_side)


# ---- (1) balances: the same quantity on both sides --------------------------------------------------

async def test_price_moves_across_ten_reconciliations_give_no_discrepancy_while_a_transfer_is_found(
        sim, account, make_runner):
    """usdm-facts.md A6/F5: the stream's ``wb`` is the wallet balance (no unrealised PnL); REST's
    walletBalance is the same quantity; margin balance = wallet + UPnL moves with the price and is only
    reported. Ten reconciliations while the mark moves (and trades change the wallet through the stream):
    no balance or position discrepancy. Then a margin transfer the stream does not deliver: found."""
    key = account[0]
    market(sim, key, "BUY", "0.2")                       # an open position before tradewarden starts
    runner = await make_runner()
    first = await runner.initial_sync()
    assert first.ok and first.discrepancies == []
    assert runner.ledger.balance("USDT").free == sim.account(key).wallet["USDT"]     # the wallet, not margin
    consumer = Consumer(runner)
    await asyncio.wait_for(consumer.connected.wait(), 30)
    rng = random.Random(15)
    price = D(50000)
    margin_balances = set()
    for i in range(10):
        price = (price * (1 + D(rng.uniform(-0.03, 0.03)))).quantize(D("0.01"))
        sim.set_price("BTCUSDT", str(price))
        if i % 3 == 1:                                   # the wallet changes too: a fee, realised PnL
            market(sim, key, "SELL" if i % 2 else "BUY", "0.01")
        await consumer.settle()
        report = await runner.reconcile()
        assert report.ok, report.error
        assert kinds(report) == [], (i, price, kinds(report))
        margin = runner.last_margin
        assert margin is not None and margin.assets["USDT"].wallet == runner.ledger.balance("USDT").free
        margin_balances.add(margin.assets["USDT"].margin_balance)
    assert len(margin_balances) == 10                    # the margin balance did move every time

    sim.set_deliver(key, False)                          # an out-of-band transfer the stream misses
    sim.adjust_balance(key, "USDT", "-750", venue="usdm")
    report = await runner.reconcile()
    if kinds(report) == []:          # with the stream live a just-seen mismatch is judged by the next run
        report = await runner.reconcile()
    assert kinds(report) == [("balance", "USDT")]
    assert runner.ledger.balance("USDT").free == sim.account(key).wallet["USDT"]
    await consumer.close()


# ---- (3) hedge mode --------------------------------------------------------------------------------

async def test_hedge_mode_both_legs_reconciled_and_streamed(sim, account, make_runner):
    """usdm-facts.md B1/B2/F5: in hedge mode a symbol has a LONG and a SHORT leg (SHORT amounts negative);
    positionRisk returns LONG/SHORT rows only; ACCOUNT_UPDATE carries the changed leg (and BOTH)."""
    key = account[0]
    sim.exchange.set_dual_side(sim.account(key), True)
    market(sim, key, "BUY", "2", "LONG")
    market(sim, key, "SELL", "0.5", "SHORT")
    runner = await make_runner()
    assert runner.gateway.hedge_mode is True             # read at start (GET /fapi/v1/positionSide/dual)
    await runner.initial_sync()
    long_, short = runner.ledger.position(SYMBOL, "LONG"), runner.ledger.position(SYMBOL, "SHORT")
    assert long_.amount == D(2) and long_.side is PositionSide.LONG
    assert short.amount == D("-0.5") and short.side is PositionSide.SHORT
    assert runner.ledger.position(SYMBOL) is None        # no netted BOTH row (2 long + 0.5 short is not 1.5)
    consumer = Consumer(runner)
    await asyncio.wait_for(consumer.connected.wait(), 30)
    market(sim, key, "SELL", "0.5", "LONG")              # reduce the long leg: the stream tells
    market(sim, key, "SELL", "0.25", "SHORT")            # grow the short leg
    await consumer.settle()
    assert runner.ledger.position(SYMBOL, "LONG").amount == D("1.5")
    assert runner.ledger.position(SYMBOL, "SHORT").amount == D("-0.75")
    for px in ("50500", "49800", "51000"):
        sim.set_price("BTCUSDT", px)
        report = await runner.reconcile()
        assert report.ok and kinds(report) == [], kinds(report)
    margin = runner.last_margin
    assert {r.key for r in margin.positions} == {f"{SYMBOL} LONG", f"{SYMBOL} SHORT"}
    assert margin.hedge_mode is True
    await consumer.close()
    # a leg changed out of band (no stream): found under its own key, the other leg untouched
    oob = market(sim, key, "BUY", "0.25", "SHORT")     # (its fee and realised PnL change the wallet too)
    report = await runner.reconcile()
    # the order itself, born and finished while nobody listened, is found in the order history (unseen)
    assert sorted(kinds(report)) == [("balance", "USDT"), ("position", f"{SYMBOL} SHORT"),
                                     ("unseen", oob.client_order_id)]
    assert runner.ledger.position(SYMBOL, "LONG").amount == D("1.5")


# ---- (4) algo orders ------------------------------------------------------------------------------

async def test_stop_loss_triggered_child_filled_reported_once_with_its_fills(sim, account, make_runner):
    """usdm-facts.md D4/D5: NEW -> TRIGGERING -> TRIGGERED (``ai`` = the child regular order) -> child
    ORDER_TRADE_UPDATEs -> FINISHED (``aq`` = the child's executed quantity). The child is linked to its
    parent (not adopted as an orphan); the parent's fill is the child's."""
    key = account[0]
    market(sim, key, "BUY", "0.1")
    acct = sim.account(key)
    sim.exchange.place_algo(acct, symbol="BTCUSDT", side="SELL", order_type="STOP_MARKET", quantity="0.1",
                            trigger_price="48000", client_algo_id="tw-sl-1", reduce_only=True)
    runner = await make_runner()
    await runner.initial_sync()
    parent = runner.ledger.order("tw-sl-1")
    assert parent.algo and parent.protective and parent.state is OrderState.OPEN
    consumer = Consumer(runner)
    await asyncio.wait_for(consumer.connected.wait(), 30)
    sim.set_price("BTCUSDT", "47900")                    # the stop triggers; the child market order fills
    await consumer.settle()
    parent = runner.ledger.order("tw-sl-1")
    algo = next(iter(acct.algo.values()))
    assert algo.status == "FINISHED" and algo.child is not None and algo.child.status == "FILLED"
    assert parent.state is OrderState.FILLED and parent.filled == D("0.1")
    assert parent.child_id == str(algo.child.order_id)
    child = runner.ledger.order(algo.child.client_order_id)
    assert child is not None and child.parent_id == parent.exchange_order_id
    assert child.state is OrderState.FILLED and child.filled == D("0.1")
    assert runner.ledger.owns(child)                     # owned through its owned parent
    report = await runner.reconcile()
    assert report.ok and kinds(report) == []             # nothing new: no orphan, no second fill report
    assert runner.ledger.position(SYMBOL) is None        # the stop closed the position
    await consumer.close()


async def test_stop_loss_triggered_while_the_stream_is_away_is_reported_once(sim, account, make_runner):
    """Without the stream, the parent leaves openAlgoOrders; its query (GET /fapi/v1/algoOrder) answers
    FINISHED with actualQty and actualOrderId (usdm-facts.md D3): one report, the fill on the parent."""
    key = account[0]
    market(sim, key, "BUY", "0.1")
    sim.exchange.place_algo(sim.account(key), symbol="BTCUSDT", side="SELL", order_type="STOP_MARKET",
                            quantity="0.1", trigger_price="48000", client_algo_id="tw-sl-2", reduce_only=True)
    runner = await make_runner()
    await runner.initial_sync()
    sim.set_price("BTCUSDT", "47900")
    report = await runner.reconcile()
    # the order once (its final state, queried), and what the fill did to the position and the wallet
    assert sorted(kinds(report)) == [("balance", "USDT"), ("missing", "tw-sl-2"), ("position", SYMBOL)]
    missing = next(d for d in report.discrepancies if d.kind == "missing")
    assert missing.exchange.startswith("filled filled=0.1") and "final state filled" in missing.action, missing
    parent = runner.ledger.order("tw-sl-2")
    assert parent.state is OrderState.FILLED and parent.filled == D("0.1") and parent.child_id
    again = await runner.reconcile()
    assert kinds(again) == []


async def test_stop_limit_child_resting_is_linked_and_its_fill_finishes_the_parent(sim, account, make_runner):
    """A STOP (limit) algo: the child rests in the book after TRIGGERED; the parent is TRIGGERED (not
    open, not filled) until the child fills, then FINISHED (usdm-facts.md D4)."""
    key = account[0]
    market(sim, key, "BUY", "0.1")
    acct = sim.account(key)
    sim.exchange.place_algo(acct, symbol="BTCUSDT", side="SELL", order_type="STOP", quantity="0.1",
                            trigger_price="48000", price="48500", client_algo_id="tw-sl-3", reduce_only=True)
    runner = await make_runner()
    await runner.initial_sync()
    consumer = Consumer(runner)
    await asyncio.wait_for(consumer.connected.wait(), 30)
    sim.set_price("BTCUSDT", "47900")                    # triggers; the child SELL 48500 rests (above the market)
    await consumer.settle()
    parent = runner.ledger.order("tw-sl-3")
    assert parent.state is OrderState.TRIGGERED and parent.child_id
    report = await runner.reconcile()                    # the child is in openOrders: linked, no orphan
    assert report.ok and kinds(report) == [], kinds(report)
    child = next(o for o in runner.ledger.active_orders() if not o.algo)
    assert child.parent_id == parent.exchange_order_id and child.protective
    sim.set_price("BTCUSDT", "48600")                    # the market comes back up: the child fills
    await consumer.settle()
    assert runner.ledger.order("tw-sl-3").state is OrderState.FILLED
    await consumer.close()


# ---- (5) protective orders --------------------------------------------------------------------------

async def test_owned_stop_loss_older_than_the_stale_timeout_is_left_alone(sim, account, make_runner):
    key = account[0]
    market(sim, key, "BUY", "0.1")
    acct = sim.account(key)
    sim.exchange.place_algo(acct, symbol="BTCUSDT", side="SELL", order_type="STOP_MARKET", quantity="0.1",
                            trigger_price="45000", client_algo_id="tw-sl-old", reduce_only=True)
    sim.place_order(key, "usdm", symbol="BTCUSDT", side="SELL", type="LIMIT", quantity="0.1", price="60000",
                    time_in_force="GTC", client_order_id="tw-tp-old", reduce_only=True)
    sim.place_order(key, "usdm", symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="40000",
                    time_in_force="GTC", client_order_id="tw-entry-old")
    clock = Later()
    runner = await make_runner(clock=clock, stale_timeout_s=60)
    await runner.initial_sync()
    clock.ahead = 3600
    report = await runner.stale_cleanup()
    assert report.cancelled == 1                         # only the plain entry order
    assert [a.status for a in acct.algo.values()] == ["NEW"]
    assert {o.client_order_id for o in acct.open_orders("usdm")} == {"tw-tp-old"}

    runner_all = await make_runner(clock=clock, stale_timeout_s=60, include_protective=True)
    await runner_all.initial_sync()
    report = await runner_all.stale_cleanup()
    assert report.cancelled == 2                         # staleOrders.includeProtective: true
    assert acct.open_orders("usdm") == [] and [a.status for a in acct.algo.values()] == ["CANCELED"]


# ---- bad input: clear error, nothing overwritten with a guess ------------------------------------------

@pytest.mark.parametrize("path,body,section,text", [
    ("/fapi/v3/account", {"totalMaintMargin": "0", "totalMarginBalance": "1",
                          "assets": [{"asset": "USDT", "marginBalance": "1", "unrealizedProfit": "0",
                                      "availableBalance": "1", "maintMargin": "0", "updateTime": 1}]},
     "balances", "walletBalance missing"),
    ("/fapi/v1/openAlgoOrders", [{"algoId": 1, "clientAlgoId": "x", "symbol": "BTCUSDT", "side": "SELL",
                                  "orderType": "STOP_MARKET", "quantity": "0.1", "algoStatus": "PAUSED",
                                  "positionSide": "BOTH", "createTime": 1, "updateTime": 1}],
     "orders", "unknown algo order status 'PAUSED'"),
    ("/fapi/v3/positionRisk", [{"symbol": "BTCUSDT", "positionSide": "MIDDLE", "positionAmt": "1",
                                "entryPrice": "50000", "markPrice": "50000", "unRealizedProfit": "0",
                                "liquidationPrice": "0", "notional": "50000", "updateTime": 1}],
     "positions", "unknown position side 'MIDDLE'"),
])
async def test_bad_venue_answers_give_a_clear_error_and_keep_the_ledger(sim, account, make_runner, path, body,
                                                                        section, text):
    key = account[0]
    market(sim, key, "BUY", "0.1")
    sim.exchange.place_algo(sim.account(key), symbol="BTCUSDT", side="SELL", order_type="STOP_MARKET",
                            quantity="0.1", trigger_price="45000", client_algo_id="tw-sl-b", reduce_only=True)
    runner = await make_runner()
    await runner.initial_sync()
    before = (runner.ledger.balance_values(), runner.ledger.position_values(),
              {k: e.order for k, e in runner.ledger.orders.items()})
    sim.add_fault(method="GET", path=path, body=body)
    report = await runner.reconcile()
    assert report.stale_sections == [section] and text in report.error, report.error
    after = (runner.ledger.balance_values(), runner.ledger.position_values(),
             {k: e.order for k, e in runner.ledger.orders.items()})
    assert after == before


# ---- the emergency stop: algo parents and their children -----------------------------------------------

async def test_emergency_stop_cancels_untriggered_algo_orders_and_triggered_children(sim, account, make_runner):
    """usdm-facts.md D5: an untriggered algo order lives in the Algo Service (cancelled there), a triggered
    one's child is a regular order (cancelled in the matching engine): the stop cancels both and verifies."""
    key = account[0]
    market(sim, key, "BUY", "0.2")
    acct = sim.account(key)
    sim.exchange.place_algo(acct, symbol="BTCUSDT", side="SELL", order_type="STOP", quantity="0.1",
                            trigger_price="48000", price="48500", client_algo_id="tw-es-sl", reduce_only=True)
    sim.exchange.place_algo(acct, symbol="BTCUSDT", side="SELL", order_type="STOP_MARKET", quantity="0.1",
                            trigger_price="40000", client_algo_id="tw-es-far", reduce_only=True)
    runner = await make_runner()
    await runner.initial_sync()
    sim.set_price("BTCUSDT", "47900")            # the first triggers: its child SELL 48500 rests
    child = acct.algo[min(acct.algo)].child
    assert child is not None and child.is_open
    # the stop's machine (core/estop.py) run by its executor as the supervisor runs it, on this gateway
    from tradewarden.controller.breaker import StopExecutor
    from tradewarden.core import estop as es
    gw = runner.gateway
    stop = StopExecutor(namespace="ns", gateway=lambda: gw, kube=None, post=lambda *a: None, telemetry=lambda: None,
                        cfg=es.StopConfig(sweep_interval_ms=200, backoff_first_ms=50, backoff_cap_ms=200),
                        selector=None, futures=True)
    stop.open("runaway", "me")
    for _ in range(100):
        await stop.work()
        if stop.state.phase is es.StopPhase.COMPLETED:
            break
        await asyncio.sleep(0.1)
    assert stop.state.phase is es.StopPhase.COMPLETED and stop.state.remaining == 0, stop.state
    await runner.confirm_stopped()            # the ledger learns each order's final state, asked for
    assert acct.open_count("usdm") == 0 and not any(a.is_open for a in acct.algo.values())
    assert child.status == "CANCELED" and acct.algo[min(acct.algo)].status == "FINISHED"   # child done: FINISHED
    assert list(runner.ledger.active_orders()) == []
