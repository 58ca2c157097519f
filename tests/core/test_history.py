"""Closing gaps through history: the pure rules (core/history.py) and the runner around them, over the
in-memory exchange. The venue behaviour they rely on is cited per rule (and proved through the simulator
with real ccxt in test_runner_sim.py)."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from tradewarden.core import AccountConfig, Ledger
from tradewarden.core.history import (PAGE, SPOT_WINDOW_MS, USDM_WINDOW_MS, needs_trades, next_order_page,
                                      next_trade_page, resolve_history, windows)
from tradewarden.core.ledger import OrderKey
from tradewarden.core.reconcile import apply_corrections
from tradewarden.domain import Fill, OrderState, Temporary

from .fakes import order
from .test_runner import HOUR_MS, kinds, synced

CFG = AccountConfig(symbols=["BTC/USDT"])
H = 3600 * 1000


def fill(tid: int, xid: str, amount: str = "0.5", symbol: str = "BTC/USDT") -> Fill:
    return Fill(str(tid), xid, symbol, Decimal("100"), Decimal(amount), Decimal("0.001"), "BNB", 1000 + tid)


def test_windows_respect_the_venues_maximum_span():
    # spot rest-api.md "All orders": "The time between startTime and endTime can't be longer than 24 hours"
    assert windows(0, 10, futures=False) == [windows(0, 10, False)[0]] and windows(0, 10, False)[0].until_ms == 10
    w = windows(0, 50 * H, futures=False)
    assert len(w) == 3 and all(x.until_ms - x.since_ms <= SPOT_WINDOW_MS for x in w)
    assert w[0].since_ms == 0 and w[-1].until_ms == 50 * H and w[1].since_ms == w[0].until_ms + 1
    # usdm-facts.md C1/E: a window under 7 days
    assert len(windows(0, 8 * 24 * H, futures=True)) == 2 and USDM_WINDOW_MS < 7 * 24 * H


def test_pages_continue_by_id_only_after_a_full_page():
    # rest-api.md: "If orderId is set, it will get orders >= that orderId"; "If fromId is set, it will get
    # trades >= that fromId"
    assert next_order_page([order("a", xid="5")]) == ""
    full = [order(f"o{i}", xid=str(100 + i)) for i in range(PAGE)]
    assert next_order_page(full) == str(100 + PAGE)
    assert next_trade_page([fill(i, "1") for i in range(PAGE)]) == str(PAGE)
    assert next_trade_page([fill(1, "1")]) == ""


def test_trades_are_read_only_for_executions_without_fills():
    led = Ledger()
    done = order("tw-1", xid="7", filled="1", state=OrderState.FILLED)
    cancelled = order("tw-2", xid="8", state=OrderState.CANCELED)
    assert not needs_trades(led, [cancelled])                 # nothing executed: allOrders is enough
    assert needs_trades(led, [cancelled, done])
    led.put_order(done, "history", 1)
    led.add_fill(fill(1, "7", "1"))
    assert not needs_trades(led, [done])                      # its fills are recorded already


def test_resolve_history_reports_unseen_orders_once_and_records_fills():
    led = Ledger()
    led.orders_ms = 1
    known_open = order("tw-open", xid="1")
    known_done = order("tw-done", xid="2", state=OrderState.FILLED, filled="1", updated_ms=5)
    led.put_order(known_open, "rest", 1)
    led.put_order(replace(known_done, filled=Decimal("0.5"), updated_ms=3), "rest", 1)
    born_died = order("tw-gap", xid="3", state=OrderState.FILLED, filled="1", created_ms=10, updated_ms=11)
    still_open = order("manual-new", xid="4", created_ms=12)
    other = order("x", xid="9", symbol="ETH/USDT", state=OrderState.FILLED, filled="1")
    fills = [fill(20, "3", "0.4"), fill(21, "3", "0.6"), fill(22, "2", "1"), fill(23, "77")]
    plan = resolve_history(led, "BTC/USDT", [known_open, known_done, born_died, still_open, other], fills, CFG,
                           horizon_ms=10**12)
    assert [(d.kind, d.entity) for d in plan.discrepancies] == [("unseen", "tw-gap")]
    assert "born and finished inside a gap" in plan.discrepancies[0].action
    apply_corrections(led, plan.corrections, 100)
    assert led.order(OrderKey("BTC/USDT", "3")).state is OrderState.FILLED
    assert led.order(OrderKey("BTC/USDT", "2")).filled == Decimal("1")        # a finished one completed
    assert led.order(OrderKey("BTC/USDT", "4")) is None                        # open: the snapshot's business
    assert [f.trade_id for f in led.fills_of(OrderKey("BTC/USDT", "3"))] == ["20", "21"]
    assert [f.trade_id for f in led.fills_of(OrderKey("BTC/USDT", "2"))] == ["22"]
    assert OrderKey("BTC/USDT", "77") not in led.fills                         # an order not in the ledger
    assert led.trade_cursors == {"BTC/USDT": "23"}
    again = resolve_history(led, "BTC/USDT", [born_died], fills, CFG, horizon_ms=10**12)
    assert again.discrepancies == []                                           # known now: silent


def test_fills_cursors_and_the_gap_survive_a_dump_and_go_with_their_order():
    led = Ledger()
    done = order("tw-1", xid="7", filled="1", state=OrderState.FILLED, updated_ms=1000)
    led.put_order(done, "history", 1000)
    assert led.add_fill(fill(1, "7", "1")) and not led.add_fill(fill(2, "999"))
    led.trade_cursors["BTC/USDT"] = "1"
    led.note_gap(5000)
    led.note_gap(7000)                     # the earliest start wins
    back = Ledger.load(led.dump())
    assert back.fills_of("tw-1") == led.fills_of("tw-1") and back.trade_cursors == {"BTC/USDT": "1"}
    assert back.gap_since_ms == 5000
    assert back.purge(10 * HOUR_MS, retention_ms=HOUR_MS, max_finished=10) == 1
    assert back.fills == {}                # bounded by the retention, like orders


async def test_a_balance_moved_with_no_event_reads_history_and_a_failed_read_keeps_the_gap():
    clock, ex, runner = await synced()
    assert not [c for c in ex.calls if c[0] == "order_history"]        # a first sync reads no history
    gone = order("tw-gap", xid="31", created_ms=clock.ms(), updated_ms=clock.ms() + 1, filled="1",
                 state=OrderState.FILLED)
    ex.put(gone)
    ex.trades.append(Fill("501", "31", "BTC/USDT", Decimal("100"), Decimal("1"), Decimal("0.1"), "USDT",
                          clock.ms() + 1))
    ex.balance("USDT", "900", "100")                                      # its money moved, no event said so
    ex.faults["order_history"] = [Temporary("503")]
    clock.t += 60
    first = await runner.reconcile()
    assert kinds(first) == [("balance", "USDT")]                          # history failed: nothing invented
    assert runner.ledger.gap_since_ms > 0                                 # ... and the gap stays open
    clock.t += 60
    second = await runner.reconcile()
    assert kinds(second) == [("unseen", "tw-gap")]
    assert [f.trade_id for f in runner.ledger.fills_of("tw-gap")] == ["501"]
    assert runner.ledger.gap_since_ms == 0
    assert [c[1] for c in ex.calls if c[0] == "order_history"] == ["BTC/USDT", "ETH/USDT"] * 2
    assert [c[1] for c in ex.calls if c[0] == "trade_history"] == ["BTC/USDT"]


def test_an_unknown_order_finished_too_recently_is_deferred_and_its_fills_read_again():
    """Its events may be queued behind the run that reads history: judged by the next read, never now
    (precision), and never skipped for good (recall: the cursor stays before its first trade)."""
    led = Ledger()
    led.orders_ms = 1
    old = order("tw-old", xid="3", state=OrderState.FILLED, filled="1", created_ms=10, updated_ms=50)
    recent = order("tw-new", xid="4", state=OrderState.FILLED, filled="1", created_ms=90, updated_ms=120)
    fills = [fill(20, "3", "1"), fill(21, "4", "1")]
    plan = resolve_history(led, "BTC/USDT", [old, recent], fills, CFG, horizon_ms=100)
    assert [(d.kind, d.entity) for d in plan.discrepancies] == [("unseen", "tw-old")]
    assert [o.client_order_id for o in plan.deferred] == ["tw-new"]
    apply_corrections(led, plan.corrections, 200)
    assert led.order("tw-new") is None and led.trade_cursors == {"BTC/USDT": "20"}
    # the next read: its event arrived meanwhile -> known, silent, fills recorded
    led.put_order(recent, "stream", 300)
    again = resolve_history(led, "BTC/USDT", [recent], [fills[1]], CFG, horizon_ms=1000)
    assert again.discrepancies == [] and not again.deferred
    apply_corrections(led, again.corrections, 400)
    assert [f.trade_id for f in led.fills_of("tw-new")] == ["21"] and led.trade_cursors == {"BTC/USDT": "21"}


def test_an_unknown_order_that_finished_while_the_stream_was_live_is_reported_by_the_next_read_only():
    """Past the horizon yet finished while the stream was live: its events may still be queued (a consumer
    behind under load: the USD-M soak reported a bot's market order as unseen). The first read remembers
    and defers it; the next read reports it if still unknown, and nothing if its events came. An order that
    finished before the connection came up is reported at once: none of its events can come."""
    before = order("tw-gap", xid="5", state=OrderState.FILLED, filled="1", created_ms=10, updated_ms=40)
    during = order("tw-live", xid="6", state=OrderState.FILLED, filled="1", created_ms=60, updated_ms=70)
    for events_come in (False, True):
        led = Ledger()
        led.orders_ms = 1
        plan = resolve_history(led, "BTC/USDT", [before, during], [], CFG, horizon_ms=100, live_since_ms=50)
        assert [(d.kind, d.entity) for d in plan.discrepancies] == [("unseen", "tw-gap")]
        assert [o.client_order_id for o in plan.deferred] == ["tw-live"]
        apply_corrections(led, plan.corrections, 200)
        if events_come:
            led.put_order(during, "stream", 300)
        again = resolve_history(led, "BTC/USDT", [during], [], CFG, horizon_ms=1000, live_since_ms=50)
        assert [(d.kind, d.entity) for d in again.discrepancies] == ([] if events_come else [("unseen", "tw-live")])
        assert not again.deferred
        apply_corrections(led, again.corrections, 400)
        assert led.suspects == {} and led.order("tw-live").state is OrderState.FILLED
