"""Malformed and hostile exchange answers, and malformed stream events: each gives a clear error,
loses nothing, and the rest (other sections, later runs, the stream, other accounts) keeps working.

The venue's answers are replaced with the simulator's ``body`` faults (real HTTP, real ccxt parsing);
stream garbage is written into the real sockets."""
from __future__ import annotations

import asyncio
import json

import pytest

from tradewarden.domain import ConnectionState, OrderEvent, OrderState
from tradewarden.core import Ledger

from .test_matrix import wait_for_state

pytestmark = [pytest.mark.sim, pytest.mark.timeout(60)]

ORDER = {"symbol": "BTCUSDT", "orderId": 1, "clientOrderId": "tw-x", "price": "1", "origQty": "1",
         "executedQty": "0", "cummulativeQuoteQty": "0", "status": "NEW", "timeInForce": "GTC", "type": "LIMIT",
         "side": "BUY", "time": 1, "updateTime": 1, "isWorking": True, "origQuoteOrderQty": "0"}

HOSTILE = [
    # (name, path, body): answers of a broken or hostile venue (or a proxy in front of it)
    ("account without balances", "/api/v3/account", {"makerCommission": 10}),
    ("balances of the wrong type", "/api/v3/account", {"balances": "all of them"}),
    ("balance amount not a number", "/api/v3/account",
     {"balances": [{"asset": "BTC", "free": "lots", "locked": "0"}]}),
    ("balance amount NaN", "/api/v3/account", {"balances": [{"asset": "BTC", "free": "NaN", "locked": "0"}]}),
    ("open orders not a list", "/api/v3/openOrders", {"orders": []}),
    ("open order missing fields", "/api/v3/openOrders", [{"symbol": "BTCUSDT"}]),
    ("open order with an unknown status", "/api/v3/openOrders", [dict(ORDER, status="MOONWALKING")]),
    ("open order quantity of the wrong type", "/api/v3/openOrders", [dict(ORDER, origQty={"a": 1})]),
    ("HTML instead of JSON", "/api/v3/openOrders", "<html><body>maintenance</body></html>"),
    ("truncated JSON", "/api/v3/account", '{"balances": [{"asset": "BTC", "fr'),
    ("huge payload", "/api/v3/openOrders", [dict(ORDER, orderId=i, clientOrderId=f"x{i}", symbol="XRPUSDT")
                                            for i in range(20_000)]),
    ("huge string", "/api/v3/account", {"balances": [{"asset": "A" * 2_000_000, "free": "1", "locked": "0"}]}),
]


async def synced(harness):
    h = harness()
    h.seed()
    await h.start(stream=False)
    report = await h.runner.initial_sync()
    assert report.ok, report.error
    h.watch()
    return h


@pytest.mark.parametrize("name, path, body", HOSTILE, ids=[c[0] for c in HOSTILE])
async def test_hostile_response(harness, name, path, body):
    h = await synced(harness)
    other = harness(futures=True)                    # another account of the same operator
    await other.start(stream=False)
    before = h.runner.ledger.dump()
    h.sim.add_fault(method="GET", path=path, body=body)
    h.mutate()
    report = await h.runner.reconcile(trigger="timer")
    h.watch()                                        # nothing owned dropped or marked lost
    if not report.ok:
        # a clear, bounded reason naming what failed
        assert report.error and len(report.error) < 2000, report.error
        assert h.secret not in report.error and h.key not in report.error
        assert report.stale_sections
    else:
        # a venue's garbage that parsed cleanly must not have changed what we believe wrongly:
        # the only tolerated outcome of "success" is an empty or foreign-only answer
        assert name == "huge payload", (name, report.counts_by_kind())
        assert not any(d.entity.startswith("x") for d in report.discrepancies)   # foreign symbols ignored
    # the other sections of the same run kept working
    if path.endswith("openOrders"):
        assert "balances" not in report.stale_sections
        assert h.runner.ledger.balance("USDT").free == h.acct.spot["USDT"][0]
    if path.endswith("account") and report.stale_sections:
        assert "orders" not in report.stale_sections
    # no owned order the ledger knew is gone from it
    assert set(Ledger.load(before).orders) <= set(h.runner.ledger.orders)
    # another account in the same process is not disturbed
    assert (await other.runner.reconcile()).ok
    # the venue recovers: one clean run puts the ledger back to the exchange's state
    h.sim.clear_faults()
    await h.recover()
    h.check()


def junk_events(futures: bool) -> list[str]:
    exec_report = {"e": "ORDER_TRADE_UPDATE", "E": 1, "T": 1, "o": {"s": "BTCUSDT"}} if futures else \
        {"e": "executionReport", "E": 1, "s": "BTCUSDT"}
    wrong_types = {"e": "ORDER_TRADE_UPDATE", "E": "soon", "o": {"s": "BTCUSDT", "i": "x", "q": "abc", "X": 5}} \
        if futures else {"e": "executionReport", "E": "soon", "s": "BTCUSDT", "i": "x", "q": "abc", "X": 5,
                         "c": "tw-a"}
    account = {"e": "ACCOUNT_UPDATE", "E": 1, "a": {"B": "nope", "P": [{"s": 3}]}} if futures else \
        {"e": "outboundAccountPosition", "E": 1, "B": "nope"}
    events = [exec_report, wrong_types, account, {"e": "somethingNew", "E": 1, "x": [1, 2]},
              {"e": None}, {"no": "event"}, {"e": "executionReport", "E": 1, "s": "NOPEUSDT", "X": "NEW"}]
    out = [json.dumps(e) for e in events]
    out += ["}{ not json", "[]", "null", json.dumps({"e": "balanceUpdate", "E": 1, "a": "X" * 500_000})]
    return out


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
async def test_malformed_stream_events(harness, futures):
    h = harness(futures=futures)
    h.seed()
    await h.start()
    assert (await h.runner.initial_sync()).ok
    await wait_for_state(h, ConnectionState.CONNECTED)
    conns = list(h.sim.streams)
    assert conns
    for text in junk_events(futures):
        for conn in conns:
            if conn.kind == "ws-api":
                for sid in conn.subscriptions:
                    try:
                        payload = json.loads(text)
                    except ValueError:
                        conn.queue.put_nowait(text)
                        continue
                    conn.queue.put_nowait(json.dumps({"subscriptionId": sid, "event": payload}))
            else:
                conn.queue.put_nowait(text)
    # a real event after the garbage still arrives and is applied
    h.place("tw-after", price="30000")

    async def arrived():
        while h.runner.ledger.order("tw-after") is None:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(arrived(), 10)
    assert h.runner.ledger.order("tw-after").state is OrderState.OPEN
    # no garbage became an order, the known orders kept their state
    for entry in h.runner.ledger.orders.values():
        o = entry.order
        assert o.client_order_id or o.exchange_order_id, o
        assert o.symbol in h.symbols, o
    assert h.runner.ledger.order("tw-a").state is OrderState.OPEN
    order_events = [e for e in h.events if isinstance(e, OrderEvent)]
    assert all(e.order.symbol in h.symbols for e in order_events)
    await h.recover()
    h.check()
