"""Real ccxt `binanceusdm` (async) against the simulator: orders, balances, one-way positions."""
from __future__ import annotations

import ccxt
import pytest

pytestmark = pytest.mark.sim


async def test_markets_balance_and_order_lifecycle(usdm, sim):
    assert {"BTC/USDT:USDT", "ETH/USDT:USDT", "LTC/USDT:USDT"} <= set(usdm.markets)
    assert usdm.markets["BTC/USDT:USDT"]["linear"] and usdm.markets["BTC/USDT:USDT"]["swap"]
    bal = await usdm.fetch_balance()
    assert bal["USDT"]["total"] == 10000.0 and bal["USDT"]["free"] == 10000.0
    o = await usdm.create_order("BTC/USDT:USDT", "limit", "buy", 0.01, 40000, {"clientOrderId": "tw-f-1"})
    assert o["status"] == "open" and o["clientOrderId"] == "tw-f-1"
    bal = await usdm.fetch_balance()
    assert bal["USDT"]["used"] == pytest.approx(0.01 * 40000 / 20)     # open-order margin at 20x
    assert [x["id"] for x in await usdm.fetch_open_orders()] == [o["id"]]
    assert (await usdm.fetch_order(o["id"], "BTC/USDT:USDT"))["clientOrderId"] == "tw-f-1"
    assert (await usdm.cancel_order(o["id"], "BTC/USDT:USDT"))["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):
        await usdm.cancel_order(o["id"], "BTC/USDT:USDT")
    for i in range(3):
        await usdm.create_order("ETH/USDT:USDT", "limit", "sell", 0.1, 3500 + i)
    res = await usdm.cancel_all_orders("ETH/USDT:USDT")
    assert res[0]["info"] == {"code": 200, "msg": "The operation of cancel all open order is done."}
    assert await usdm.fetch_open_orders() == []
    # nothing open: still code 200 on USD-M
    await usdm.cancel_all_orders("ETH/USDT:USDT")


async def test_positions_pnl_and_reduce_only(usdm, sim):
    sim.set_price("BTCUSDT", "50000")
    o = await usdm.create_order("BTC/USDT:USDT", "limit", "buy", 0.1, 49000)
    sim.set_price("BTCUSDT", "48500", quantity="0.04")      # partial fill at the limit price
    assert (await usdm.fetch_order(o["id"], "BTC/USDT:USDT"))["filled"] == 0.04
    sim.set_price("BTCUSDT", "48000")
    pos = await usdm.fetch_positions(["BTC/USDT:USDT"])
    assert len(pos) == 1 and pos[0]["contracts"] == 0.1 and pos[0]["side"] == "long"
    assert pos[0]["entryPrice"] == 49000.0 and pos[0]["unrealizedPnl"] == pytest.approx(-100.0)
    # reduceOnly in the direction of the position: -2022 (ccxt's futures table maps it to InvalidOrder only for
    # the real host; with a local URL the generic table applies, see docs/simulator.md)
    with pytest.raises(ccxt.ExchangeError, match="-2022"):
        await usdm.create_order("BTC/USDT:USDT", "market", "buy", 0.01, None, {"reduceOnly": True})
    sim.set_price("BTCUSDT", "51000")
    c = await usdm.create_order("BTC/USDT:USDT", "market", "sell", 0.1, None, {"reduceOnly": True})
    assert c["status"] == "closed"
    assert await usdm.fetch_positions(["BTC/USDT:USDT"]) == []
    trades = await usdm.fetch_my_trades("BTC/USDT:USDT")
    assert [t["info"]["realizedPnl"] for t in trades] == ["0.00000000", "0.00000000", "200.00000000"]
    fees = 0.1 * 49000 * 0.0002 + 0.1 * 51000 * 0.0005
    bal = await usdm.fetch_balance()
    assert bal["USDT"]["total"] == pytest.approx(10000 + 200 - fees)


async def test_margin_insufficient(usdm):
    with pytest.raises(ccxt.ExchangeError, match="-2019"):   # InsufficientFunds in ccxt's futures table
        await usdm.create_order("BTC/USDT:USDT", "limit", "buy", 10, 49000)   # 490k notional / 20 > 10k


async def test_open_algo_orders_and_leverage_bracket_served(usdm, creds, sim, http):
    from .conftest import signed_query
    for path in ("/fapi/v1/openAlgoOrders", "/fapi/v1/leverageBracket", "/fapi/v2/positionRisk",
                 "/fapi/v2/account", "/fapi/v2/balance"):
        async with http.get(sim.url + path + "?" + signed_query(creds[1]),
                            headers={"X-MBX-APIKEY": creds[0]}) as r:
            assert r.status == 200, path
            body = await r.json()
            assert body is not None
    assert (await usdm.fetch_leverage_tiers(["BTC/USDT:USDT"]))["BTC/USDT:USDT"][0]["maxLeverage"] == 125


async def test_algo_orders_rest_apart_and_trigger(usdm, sim, creds):
    """Conditional orders live in the Algo Service: not in openOrders, only in openAlgoOrders."""
    await usdm.create_order("BTC/USDT:USDT", "market", "buy", 0.01)
    stop = await usdm.create_order("BTC/USDT:USDT", "market", "sell", 0.01, None,
                                   {"stopPrice": 45000, "reduceOnly": True})
    assert stop["status"] == "open" and stop["triggerPrice"] == 45000.0
    assert await usdm.fetch_open_orders("BTC/USDT:USDT") == []
    algos = await usdm.fetch_open_orders("BTC/USDT:USDT", params={"trigger": True})
    assert [a["id"] for a in algos] == [stop["id"]]
    await usdm.cancel_order(stop["id"], "BTC/USDT:USDT", {"trigger": True})
    assert await usdm.fetch_open_orders("BTC/USDT:USDT", params={"trigger": True}) == []
    for _ in range(2):
        await usdm.create_order("BTC/USDT:USDT", "market", "sell", 0.01, None, {"stopPrice": 44000, "reduceOnly": True})
    await usdm.cancel_all_orders("BTC/USDT:USDT", {"trigger": True})
    assert await usdm.fetch_open_orders("BTC/USDT:USDT", params={"trigger": True}) == []
    last = await usdm.create_order("BTC/USDT:USDT", "market", "sell", 0.01, None,
                                   {"stopPrice": 45000, "reduceOnly": True})
    sim.set_price("BTCUSDT", "44900")       # the stop fires: a market order closes the position
    assert (await usdm.fetch_order(last["id"], "BTC/USDT:USDT", {"trigger": True}))["status"] == "closed"
    assert await usdm.fetch_positions(["BTC/USDT:USDT"]) == []


async def test_post_only_that_would_take_is_rejected(usdm):
    with pytest.raises(ccxt.ExchangeError, match="-5022"):   # OrderNotFillable in ccxt's futures table
        await usdm.create_order("BTC/USDT:USDT", "limit", "buy", 0.01, 51000, {"timeInForce": "GTX"})
    assert await usdm.fetch_open_orders() == []
