"""Each Binance error the simulator produces reaches ccxt as the exception it maps to on Binance; rate limits
(per client IP), faults and clock offset behave like the exchange."""
from __future__ import annotations

import ccxt
import pytest

from tradewarden.sim import sim_ccxt

pytestmark = pytest.mark.sim


async def test_auth_errors(sim, creds):
    key, secret = creds
    for k, s in ((key, "wrong-secret"), ("unknown-key", secret), ("k" * 101, secret)):
        ex = sim_ccxt("binance", sim.url, k, s)
        try:
            with pytest.raises(ccxt.AuthenticationError):
                await ex.fetch_balance()
        finally:
            await ex.close()
    codes = [r.get("code") for r in sim.requests() if r["path"] == "/api/v3/account"]
    assert codes == [-1022, -2015, -2014]


async def test_missing_key_is_2014(sim, http):
    from .conftest import signed_query
    async with http.get(sim.url + "/api/v3/account?" + signed_query("x")) as r:
        assert r.status == 401 and await r.json() == {"code": -2014, "msg": "API-key format invalid."}


async def test_timestamp_outside_recv_window_is_invalid_nonce(sim, spot):
    sim.set_clock_offset(20_000)     # the exchange clock runs 20 s ahead of ours
    with pytest.raises(ccxt.InvalidNonce):
        await spot.fetch_balance()
    sim.set_clock_offset(-20_000)    # ... or behind: our timestamp is "1000 ms ahead"
    with pytest.raises(ccxt.InvalidNonce):
        await spot.fetch_balance()
    sim.set_clock_offset(0)
    await spot.fetch_balance()


async def test_adjust_for_time_difference_recovers_from_clock_offset(sim, creds):
    sim.set_clock_offset(20_000)
    ex = sim_ccxt("binance", sim.url, *creds, adjustForTimeDifference=True)
    try:
        await ex.load_markets()
        assert (await ex.fetch_balance())["USDT"]["total"] == 10000.0
    finally:
        await ex.close()


async def test_order_errors(spot, usdm):
    with pytest.raises(ccxt.OrderNotFound):          # -2013
        await spot.fetch_order("123", "BTC/USDT")
    with pytest.raises(ccxt.OrderNotFound):          # -2011
        await spot.cancel_order("123", "BTC/USDT")
    with pytest.raises(ccxt.InsufficientFunds):      # -2010
        await spot.create_order("BTC/USDT", "limit", "sell", 5, 60000)
    with pytest.raises(ccxt.BadRequest, match="NOTIONAL"):      # -1013: BadRequest in ccxt's table
        await spot.create_order("BTC/USDT", "limit", "buy", 0.00001, 40000)
    with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):    # -1013 LOT_SIZE: matched on the message
        await spot.create_order("BTC/USDT", "limit", "buy", 0.000011, 40000, {"quantity": "0.000011"})
    with pytest.raises(ccxt.InvalidOrder, match="PRICE_FILTER"):
        await spot.create_order("BTC/USDT", "limit", "buy", 0.001, 40000.001, {"price": "40000.001"})
    with pytest.raises(ccxt.OrderNotFound):
        await usdm.fetch_order("123", "BTC/USDT:USDT")
    with pytest.raises(ccxt.OrderNotFound):
        await usdm.cancel_order("123", "BTC/USDT:USDT")


async def test_unknown_symbol_is_1121(spot, sim, creds, http):
    from .conftest import signed_query
    async with http.get(sim.url + "/api/v3/openOrders?" + signed_query(creds[1], {"symbol": "NOPEUSDT"}),
                        headers={"X-MBX-APIKEY": creds[0]}) as r:
        assert r.status == 400 and await r.json() == {"code": -1121, "msg": "Invalid symbol."}
    spot.markets["NOPE/USDT"] = {**spot.markets["BTC/USDT"], "id": "NOPEUSDT", "symbol": "NOPE/USDT"}
    spot.markets_by_id["NOPEUSDT"] = [spot.markets["NOPE/USDT"]]
    with pytest.raises(ccxt.BadSymbol):
        await spot.fetch_open_orders("NOPE/USDT")


async def test_weight_headers_429_retry_after_then_418(sim, spot, http):
    async with http.get(sim.url + "/api/v3/exchangeInfo") as r:
        used = int(r.headers["X-MBX-USED-WEIGHT-1M"])
        assert used >= 20      # ccxt's load_markets (20) + this one (20), counted per IP
    sim.set_limits(spot_weight=45)     # lifts any ban and resets counters
    async with http.get(sim.url + "/api/v3/exchangeInfo") as r:
        assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "20"
    async with http.get(sim.url + "/api/v3/exchangeInfo") as r:
        assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "40"
    with pytest.raises(ccxt.DDoSProtection):
        await spot.fetch_balance()      # weight 20 -> over the limit: 429
    last = sim.requests()[-1]
    assert last["status"] == 429 and last["code"] == -1003
    async with http.get(sim.url + "/api/v3/time") as r:   # kept going after a 429: banned
        assert r.status == 418 and int(r.headers["Retry-After"]) > 0
        assert (await r.json())["code"] == -1003
    with pytest.raises(ccxt.DDoSProtection):
        await spot.fetch_time()
    # USD-M has its own budget on its own host
    async with http.get(sim.url + "/fapi/v1/time") as r:
        assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "1"
    sim.set_limits(spot_weight=6000)
    assert (await spot.fetch_balance())["USDT"]["total"] == 10000.0


async def test_429_retry_after_header(sim, http):
    sim.set_limits(spot_weight=1)
    async with http.get(sim.url + "/api/v3/time") as r:
        assert r.status == 200
    async with http.get(sim.url + "/api/v3/time") as r:
        assert r.status == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert (await r.json())["code"] == -1003


async def test_order_count_headers_and_limit(sim, creds, http):
    from .conftest import signed_query
    sim.set_limits(spot_orders_10s=2)
    statuses = []
    for i in range(3):
        q = signed_query(creds[1], {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                    "quantity": "0.001", "price": str(40000 + i)})
        async with http.post(sim.url + "/api/v3/order", data=q, headers={
                "X-MBX-APIKEY": creds[0], "Content-Type": "application/x-www-form-urlencoded"}) as r:
            statuses.append((r.status, r.headers.get("X-MBX-ORDER-COUNT-10S"), (await r.json()).get("code")))
    assert statuses == [(200, "1", None), (200, "2", None), (429, "3", -1015)]


async def test_faults(sim, spot, usdm):
    sim.add_fault(method="GET", path="/api/v3/account", status=503, count=1)   # no code: a bare gateway error
    with pytest.raises(ccxt.ExchangeNotAvailable):
        await spot.fetch_balance()
    await spot.fetch_balance()                       # count 1: gone
    sim.add_fault(method="GET", path="/api/v3/account", status=400, code=-1001, msg="Internal error; unable to "
                  "process your request. Please try again.", count=1)
    with pytest.raises(ccxt.OperationFailed):
        await spot.fetch_balance()
    sim.add_fault(path="/fapi/*", status=504, count=1)
    with pytest.raises(ccxt.RequestTimeout):
        await usdm.fetch_open_orders()
    # processed, answer lost: the order exists although the client saw a 500 -> unknown outcome
    sim.add_fault(method="POST", path="/api/v3/order", status=500, processed=True, count=1)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        await spot.create_order("BTC/USDT", "limit", "buy", 0.001, 40000, {"clientOrderId": "tw-unknown-1"})
    opened = await spot.fetch_open_orders("BTC/USDT")
    assert [o["clientOrderId"] for o in opened] == ["tw-unknown-1"]
    sim.add_fault(path="/api/v3/time", latency_ms=300)
    spot.timeout = 100
    with pytest.raises(ccxt.RequestTimeout):
        await spot.fetch_time()
    sim.clear_faults()
    spot.timeout = 10000
    assert await spot.fetch_time() > 0


async def test_accounts_are_isolated(sim, spot, creds):
    other_key, other_secret = "tw-test-other", "other-secret"
    sim.add_account(other_key, other_secret, balances={"USDT": "100"})
    mine = await spot.create_order("BTC/USDT", "limit", "buy", 0.001, 40000)
    other = sim_ccxt("binance", sim.url, other_key, other_secret)
    try:
        await other.load_markets()
        assert await other.fetch_open_orders() == []
        with pytest.raises(ccxt.OrderNotFound):
            await other.cancel_order(mine["id"], "BTC/USDT")
        with pytest.raises(ccxt.OrderNotFound):
            await other.fetch_order(mine["id"], "BTC/USDT")
        with pytest.raises(ccxt.InsufficientFunds):
            await other.create_order("BTC/USDT", "limit", "buy", 0.01, 40000)
    finally:
        await other.close()
    assert [o["id"] for o in await spot.fetch_open_orders()] == [mine["id"]]
