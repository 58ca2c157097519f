"""The gateway against the simulator: real ccxt over HTTP and WebSocket on 127.0.0.1, nothing mocked."""
from __future__ import annotations

import asyncio
import secrets as _secrets
from decimal import Decimal

import pytest

from tradewarden.domain import (AuthenticationFailed, ConnectionState, Invalid, SymbolNotListed, OrderEvent, OrderNotFound,
                                OrderState, Temporary, UnknownOutcome)
from tests.conftest import new_key

pytestmark = [pytest.mark.sim, pytest.mark.timeout(60)]
SPOT = ["BTC/USDT", "ETH/USDT"]
USDM = ["BTC/USDT:USDT", "ETH/USDT:USDT"]


async def place(gw, symbol, price, cid, amount=0.01):
    return await gw._rest.create_order(symbol, "limit", "buy", amount, price, {"clientOrderId": cid})


async def test_start_checks_symbols_and_credentials(sim, account, gateways):
    key, secret = account
    with pytest.raises(SymbolNotListed, match="unknown symbol: NOPE/USDT"):
        await gateways("binance", key, secret).start(["BTC/USDT", "NOPE/USDT"])
    with pytest.raises(AuthenticationFailed) as info:
        await gateways("binance", key, "f" * 64).start(["BTC/USDT"])
    assert "f" * 64 not in str(info.value) and key not in str(info.value) and "signature=" not in str(info.value)


@pytest.mark.parametrize("exchange, symbols", [("binance", SPOT), ("binanceusdm", USDM)])
async def test_snapshot_fetch_and_cancel(sim, account, gateways, exchange, symbols):
    key, secret = account
    gw = gateways(exchange, key, secret)
    await gw.start(symbols)
    placed = await place(gw, symbols[0], 20000, "tw-a")
    snap = await gw.snapshot(symbols)
    assert snap.balances.ok and snap.open_orders.ok and snap.positions.ok
    assert snap.balances.value["USDT"].total == Decimal("10000")
    [order] = snap.open_orders.value
    assert (order.client_order_id, order.symbol, order.state) == ("tw-a", symbols[0], OrderState.OPEN)
    assert (await gw.fetch_order(symbols[0], client_order_id="tw-a")).exchange_order_id == str(placed["id"])
    cancelled = await gw.cancel_order(symbols[0], exchange_order_id=str(placed["id"]))
    assert cancelled is None or cancelled.state is OrderState.CANCELED
    assert (await gw.fetch_order(symbols[0], exchange_order_id=str(placed["id"]))).state is OrderState.CANCELED
    with pytest.raises(OrderNotFound):
        await gw.fetch_order(symbols[0], exchange_order_id="987654321")
    with pytest.raises(OrderNotFound):
        await gw.cancel_order(symbols[0], exchange_order_id=str(placed["id"]))


async def test_usdm_positions_come_from_the_venue(sim, account, gateways):
    key, secret = account
    gw = gateways("binanceusdm", key, secret)
    await gw.start(USDM)
    await gw._rest.create_order("BTC/USDT:USDT", "market", "buy", 0.01)
    snap = await gw.snapshot(USDM)
    assert [(p.symbol, p.amount) for p in snap.positions.value] == [("BTC/USDT:USDT", Decimal("0.01"))]


async def test_partial_snapshot_keeps_other_sections(sim, account, gateways):
    key, secret = account
    gw = gateways("binance", key, secret)
    await gw.start(SPOT)
    sim.add_fault(method="GET", path="/api/v3/openOrders", status=503, count=10)
    snap = await gw.snapshot(SPOT)
    assert isinstance(snap.open_orders.error, Temporary)
    assert snap.balances.ok and snap.balances.value["BTC"].free == Decimal("1")
    assert snap.positions.ok and snap.positions.value == []


async def test_5xx_on_cancel_is_unknown_outcome(sim, account, gateways):
    key, secret = account
    gw = gateways("binance", key, secret)
    await gw.start(SPOT)
    placed = await place(gw, "BTC/USDT", 20000, "tw-b")
    # processed by the venue, then the answer is lost
    sim.add_fault(method="DELETE", path="/api/v3/order", status=503, count=1, processed=True)
    with pytest.raises(UnknownOutcome) as info:
        await gw.cancel_order("BTC/USDT", exchange_order_id=str(placed["id"]))
    assert "signature=" not in str(info.value) and secret not in str(info.value)
    assert (await gw.fetch_order("BTC/USDT", client_order_id="tw-b")).state is OrderState.CANCELED


@pytest.mark.parametrize("exchange, symbols", [("binance", SPOT + ["SOL/USDT"]), ("binanceusdm", USDM)])
async def test_cancel_symbols_counts_what_the_venue_cancelled(sim, account, gateways, exchange, symbols):
    key, secret = account
    gw = gateways(exchange, key, secret)
    await gw.start(symbols)
    for i, price in enumerate((20000, 21000, 22000)):
        await place(gw, symbols[0], price, f"tw-c{i}")
    await place(gw, symbols[1], 100, "manual-1", amount=0.1)
    listed = (await gw.list_account()).orders
    # symbols[2:] (spot) have no open order: -2011 there is success with zero (rest-api.md, errors.md -2011)
    result = await gw.cancel_symbols(symbols, (), listed)
    assert result.errors == {} and len(result.done) == 4
    assert (await gw.list_account()).orders == []


async def test_429_storm_never_sends_inside_retry_after(sim, account, gateways):
    key, secret = account
    gw = gateways("binance", key, secret)
    await gw.start(SPOT)
    sim.request_log.clear()
    sim.add_fault(method=None, path="*", status=429, retry_after=1, count=4)
    for _ in range(4):
        snap = await gw.snapshot(SPOT)
    assert snap.balances.ok and snap.open_orders.ok
    log = [r for r in sim.requests() if r["path"].startswith("/api/")]
    limited = [r for r in log if r["status"] == 429]
    assert limited, "the storm did happen"
    assert not [r for r in log if r["status"] == 418]
    for r in limited:
        # requests already in flight when the 429 left the venue may land just after it;
        # nothing may be *sent* after the client saw it, until Retry-After has passed
        inside = [x for x in log if r["time"] + 150 < x["time"] < r["time"] + 1000]
        assert inside == [], (r, inside)
    assert gw.budgets.for_url(sim.url + "/api/v3/account").counters.rate_limited_responses >= 1


async def test_budget_waits_rather_than_exceed(sim, account, gateways):
    """The venue's limit (read from exchangeInfo) is never exceeded, even by many accounts."""
    sim.set_limits(spot_weight=400)
    key, secret = account
    gws = [gateways("binance", key, secret) for _ in range(3)]
    for gw in gws:
        await gw.start(["BTC/USDT"])
    budget = gws[0].budgets.for_url(sim.url + "/api/v3/account")
    assert budget.limit == 400 and gws[1].budgets is gws[0].budgets
    spent_before = budget.counters.weight_spent
    budget.max_wait_s = 0.0   # refuse instead of waiting a minute in a test
    results = await asyncio.gather(*(gw.snapshot(["BTC/USDT"]) for gw in gws for _ in range(5)))
    assert not [r for r in sim.requests() if r["status"] in (429, 418)]
    assert budget.counters.weight_spent - spent_before <= 400
    assert any(not r.balances.ok or not r.open_orders.ok for r in results)   # refused, not sent


async def test_a_request_that_waited_for_the_budget_is_signed_after_the_wait(sim, account, gateways):
    """ccxt signs before ``fetch`` spends the budget: a request that waited for the next weight window
    (up to a minute) must carry a timestamp taken after the wait, or Binance refuses it (-1021, outside
    recvWindow; binance-spot-api-docs/rest-api.md, "Timing security")."""
    key, secret = account
    gw = gateways("binance", key, secret)
    await gw.start(["BTC/USDT"])
    budget = gw.budgets.for_url(sim.url + "/api/v3/account")
    budget._roll()
    budget._used = budget.usable            # another client spent the IP's window
    waits: list[float] = []

    async def next_window(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(1.5)            # the window rolls (the budget forgets what was spent)
        budget._window, budget._used, budget._own = budget.window(), 0, 0
    budget.sleep = next_window
    sim.request_log.clear()
    t_before = sim.now_ms()
    snap = await gw.snapshot(["BTC/USDT"])
    assert waits and snap.balances.ok and snap.open_orders.ok
    signed = [r for r in sim.requests() if r["key"] == key and "timestamp" in r["params"]]
    assert signed and all(r["status"] == 200 for r in signed)
    assert min(int(r["params"]["timestamp"]) for r in signed) >= t_before + 1400   # signed after the wait


async def test_requests_name_their_replica_in_the_user_agent(sim, account, gateways):
    """The simulator's request log tells replicas apart (bench_controller's no-double-serving check)."""
    from tradewarden.gateway import identity
    key, secret = account
    identity.set_instance("replica-7-a1b2c3")
    try:
        gw = gateways("binance", key, secret)
        await gw.start(["BTC/USDT"])
        await gw.snapshot(["BTC/USDT"])
    finally:
        identity.set_instance(None)
    mine = [r for r in sim.requests() if r["key"] == key]
    assert mine and {identity.instance_of(r["agent"]) for r in mine} == {"replica-7-a1b2c3"}


# ---- the user-data stream ------------------------------------------------------------------------

async def next_event(it, kind=None, state=None, timeout=15.0):
    async def find():
        async for ev in it:
            if kind is not None and isinstance(ev, kind):
                return ev
            if state is not None and getattr(ev, "state", None) == state:
                return ev
    return await asyncio.wait_for(find(), timeout)


async def order_roundtrip(gw, it, symbol, cid, price=20000):
    await place(gw, symbol, price, cid)
    while True:
        ev = await next_event(it, OrderEvent)
        if ev.order.client_order_id == cid:
            assert ev.order.state is OrderState.OPEN and ev.event_ms > 0
            return ev


async def open_stream(gw, symbols):
    await gw.start(symbols)
    it = gw.stream(symbols)
    await next_event(it, state=ConnectionState.CONNECTED)
    return it


@pytest.mark.parametrize("exchange, symbols, abort", [
    ("binance", SPOT, False), ("binance", SPOT, True), ("binanceusdm", USDM, False), ("binanceusdm", USDM, True)])
async def test_stream_recovers_from_dropped_socket(sim, account, gateways, exchange, symbols, abort):
    key, secret = account
    gw = gateways(exchange, key, secret)
    it = await open_stream(gw, symbols)
    await order_roundtrip(gw, it, symbols[0], "tw-s1")
    await sim.drop_streams(abort=abort)
    down = await next_event(it, state=ConnectionState.DISCONNECTED)
    assert down.reason and secret not in down.reason
    await next_event(it, state=ConnectionState.RECONNECTED)
    await order_roundtrip(gw, it, symbols[0], "tw-s2", 21000)
    await it.aclose()


async def test_stream_recovers_from_expired_listen_key(sim, account, gateways):
    key, secret = account
    gw = gateways("binanceusdm", key, secret)
    it = await open_stream(gw, USDM)
    old_key = next(iter(sim.listen_keys))
    assert sim.expire_listen_keys(key) == 1
    down = await next_event(it, state=ConnectionState.DISCONNECTED)
    assert "listen key expired" in down.reason
    await next_event(it, state=ConnectionState.RECONNECTED)
    assert old_key not in sim.listen_keys and len(sim.listen_keys) == 1   # a fresh key, not the stale one
    await order_roundtrip(gw, it, "BTC/USDT:USDT", "tw-s3")


async def test_stream_recovers_from_server_shutdown(sim, account, gateways):
    key, secret = account
    gw = gateways("binance", key, secret)
    it = await open_stream(gw, SPOT)
    for conn in list(sim.streams):      # the warning alone: the socket stays open
        sim._send(conn, {"event": {"e": "serverShutdown", "E": sim.now_ms()}})
    down = await next_event(it, state=ConnectionState.DISCONNECTED)
    assert down.reason == "server shutdown"
    await next_event(it, state=ConnectionState.RECONNECTED)
    await order_roundtrip(gw, it, "BTC/USDT", "tw-s4")


async def test_stream_recovers_from_rejected_subscribe(sim, account, gateways):
    """The venue's clock moves 30 s ahead: the resubscribe is rejected (-1021), ccxt raises a KeyError;
    the stream re-measures the clock offset on a fresh instance and comes back."""
    key, secret = account
    gw = gateways("binance", key, secret)
    it = await open_stream(gw, SPOT)
    sim.set_clock_offset(30_000)
    await sim.drop_streams()
    await next_event(it, state=ConnectionState.DISCONNECTED)
    await next_event(it, state=ConnectionState.RECONNECTED, timeout=20)
    assert it.attempts >= 3             # initial, rejected, accepted
    await order_roundtrip(gw, it, "BTC/USDT", "tw-s5")


@pytest.mark.parametrize("exchange, symbols, time_path", [("binance", SPOT, "/api/v3/time"),
                                                           ("binanceusdm", USDM, "/fapi/v1/time")])
async def test_venue_clock_jump_is_absorbed_by_one_resync(sim, account, gateways, exchange, symbols, time_path):
    """The venue's clock jumps beyond recvWindow (either way): the requests it refuses (-1021, not
    processed) are sent once more after one shared offset measurement, so the snapshot and a cancel
    succeed instead of failing a whole run."""
    key, secret = account
    gw = gateways(exchange, key, secret)
    await gw.start(symbols)
    placed = await place(gw, symbols[0], 20000, "tw-clock")
    for offset in (25_000, -25_000):
        sim.set_clock_offset(offset)
        sim.request_log.clear()
        snap = await gw.snapshot(symbols)
        assert snap.balances.ok and snap.open_orders.ok and snap.positions.ok, snap
        assert [o.client_order_id for o in snap.open_orders.value] == ["tw-clock"]
        log = [r for r in sim.requests() if r["key"] == key or r["path"] == time_path]
        refused = [r for r in log if r["status"] == 400]
        assert refused and all(r["path"] != time_path for r in refused)
        assert [r["path"] for r in log].count(time_path) == 1          # one measurement for the sections
        assert gw._rest.options["timeDifference"] == pytest.approx(-offset, abs=1000)
        assert snap.taken_ms == pytest.approx(sim.now_ms(), abs=2000)     # on the venue's clock
    sim.set_clock_offset(0)
    sim.request_log.clear()
    cancelled = await gw.cancel_order(symbols[0], exchange_order_id=str(placed["id"]))
    assert cancelled is None or cancelled.state is OrderState.CANCELED
    deletes = [r["status"] for r in sim.requests() if r["method"] == "DELETE"]
    assert deletes == [400, 200]                                        # refused unprocessed, then done
    assert (await gw.fetch_order(symbols[0], exchange_order_id=str(placed["id"]))).state is OrderState.CANCELED


async def test_closing_the_gateway_closes_streams_and_sockets(sim, account, gateways):
    key, secret = account
    gw = gateways("binanceusdm", key, secret)
    it = await open_stream(gw, USDM)
    assert sim.streams
    before = {t for t in asyncio.all_tasks() if t.get_name().startswith("tw-")}
    assert before
    await gw.close()
    with pytest.raises(StopAsyncIteration):
        await it.__anext__()
    await asyncio.sleep(0.2)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("tw-") and not t.done()]
    assert not sim.streams


async def test_markets_are_loaded_once_for_every_account_of_an_endpoint(sim, gateways):
    """exchangeInfo (weight 20, megabytes on the real venue) is shared by all accounts of one
    exchange and endpoint; a symbol not yet known reloads it once (a new listing)."""
    from tradewarden.gateway.markets import MarketsCache
    cache = MarketsCache()
    accounts = []
    for _ in range(5):
        key, secret = new_key(), _secrets.token_hex(32)
        sim.add_account(key, secret, balances={"USDT": "100"})
        accounts.append((key, secret))
    sim.request_log.clear()
    gws = [gateways("binance", k, s, markets=cache) for k, s in accounts]
    await asyncio.gather(*(gw.start(["BTC/USDT"]) for gw in gws))
    info = [r for r in sim.requests() if r["path"] == "/api/v3/exchangeInfo"]
    assert len(info) == 1 and cache.loads == 1
    assert all(gw._rest.markets["BTC/USDT"]["id"] == "BTCUSDT" for gw in gws)
    snap = await gws[3].snapshot(["BTC/USDT"])
    assert snap.balances.ok and snap.balances.value["USDT"].free == 100
    # a new listing: the next account asking for it reloads once, and sees it
    sim.add_market("NEWUSDT", price="1.5", tick="0.0001", step="0.1")
    key, secret = accounts[0]
    late = gateways("binance", key, secret, markets=cache)
    await late.start(["NEW/USDT"])
    assert cache.loads == 2 and "NEW/USDT" in late._rest.markets
    # USD-M is another exchange: its own markets
    await gateways("binanceusdm", key, secret, markets=cache).start(["BTC/USDT:USDT"])
    assert cache.loads == 3
    assert len([r for r in sim.requests() if r["path"] == "/fapi/v1/exchangeInfo"]) == 1


# ---- the emergency stop's whole-account calls (issue 14) ------------------------------------------

@pytest.mark.parametrize("exchange, listed, other", [("binance", SPOT, "SOL/USDT"),
                                                     ("binanceusdm", USDM, "SOL/USDT:USDT")])
async def test_whole_account_listing_and_cancel_reach_symbols_outside_the_spec(sim, account, gateways, exchange,
                                                                                 listed, other):
    # spot rest-api.md "Current open orders (USER_DATA)": "If the symbol is not sent, orders for all symbols
    # will be returned in an array", weight 80; usdm-facts.md C1 "GET /fapi/v1/openOrders: 1 with symbol, 40
    # without; no symbol -> all symbols in one array" and D2 "GET /fapi/v1/openAlgoOrders: 1 / 40 without"
    key, secret = account
    gw = gateways(exchange, key, secret)
    await gw.start(listed)
    await place(gw, listed[0], 20000, "tw-in")
    await place(gw, other, 10, "bot-outside", amount=1)
    if exchange == "binanceusdm":
        await gw._rest.create_order("ETH/USDT:USDT", "STOP_MARKET", "sell", 0.1, None,
                                    {"stopPrice": 100, "clientOrderId": "bot-stop"})
    sim.request_log.clear()
    listing = await gw.list_account()
    got = sorted((o.symbol, o.client_order_id, o.algo) for o in listing.orders)
    want = [(listed[0], "tw-in", False), (other, "bot-outside", False)]
    if exchange == "binanceusdm":
        want.append(("ETH/USDT:USDT", "bot-stop", True))
    assert got == sorted(want)
    reqs = [r for r in sim.requests() if r["method"] == "GET"]
    assert all("symbol" not in r["params"] for r in reqs)
    weights = {r["path"]: r["weight"] for r in reqs}
    assert weights == ({"/api/v3/openOrders": 80} if exchange == "binance" else
                       {"/fapi/v1/openOrders": 40, "/fapi/v1/openAlgoOrders": 40})

    plain = sorted({o.symbol for o in listing.orders if not o.algo})
    algo = sorted({o.symbol for o in listing.orders if o.algo})
    result = await gw.cancel_symbols(plain, algo, listing.orders)
    assert result.errors == {}
    assert sorted(o.client_order_id for o in result.done) == sorted(c for _, c, _ in want)
    assert (await gw.list_account()).orders == []
    # spot rest-api.md "Cancel All Open Orders on a Symbol (TRADE)": weight 1, symbol mandatory
    deletes = [r for r in sim.requests() if r["method"] == "DELETE"]
    assert deletes and all(r["weight"] == 1 and "symbol" in r["params"] for r in deletes)


async def test_cancel_symbols_reports_each_failing_symbol_and_never_hides_it(sim, account, gateways):
    key, secret = account
    gw = gateways("binance", key, secret)
    await gw.start(SPOT)
    await place(gw, "BTC/USDT", 20000, "a")
    await place(gw, "ETH/USDT", 100, "b", amount=0.1)
    sim.add_fault(method="DELETE", path="/api/v3/openOrders", status=503, count=1)
    result = await gw.cancel_symbols(["BTC/USDT", "ETH/USDT"], (), [])
    # one of the two failed (the fault hit the first to arrive): named with its error, the other counted
    assert len(result.errors) == 1 and len(result.done) == 1
    [(symbol, text)] = result.errors.items()
    assert symbol in SPOT and text.startswith("UnknownOutcome")     # a 5xx on a write: outcome unknown
    left = (await gw.list_account()).orders
    assert [o.symbol for o in left] == [symbol]
    # a failing listing raises: never an empty list that would look verified
    sim.add_fault(method="GET", path="/api/v3/openOrders", status=503, count=1)
    with pytest.raises(Temporary):
        await gw.list_account()


async def test_usdm_close_positions_leaves_every_position_at_zero(sim, account, gateways):
    # usdm-facts.md C3 "reduceOnly ... positionSide=BOTH with reduceOnly=true": a reduce-only order only reduces
    key, secret = account
    gw = gateways("binanceusdm", key, secret)
    await gw.start(USDM)
    await gw._rest.create_order("BTC/USDT:USDT", "market", "buy", 0.01)
    await gw._rest.create_order("SOL/USDT:USDT", "market", "sell", 2)      # outside the spec
    listing = await gw.list_account(positions=True)
    assert sorted((p.symbol, p.amount) for p in listing.positions) == [("BTC/USDT:USDT", Decimal("0.01")),
                                                                      ("SOL/USDT:USDT", Decimal("-2"))]
    result = await gw.close_positions(listing.positions)
    assert result.errors == {} and len(result.done) == 2
    assert (await gw.list_account(positions=True)).positions == []
    spot = gateways("binance", key, secret)
    await spot.start(SPOT)
    from tradewarden.domain import Unsupported
    with pytest.raises(Unsupported):
        await spot.close_positions(listing.positions)
