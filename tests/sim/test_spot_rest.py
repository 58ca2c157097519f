"""Real ccxt `binance` (async) against the simulator: every spot REST call tradewarden uses."""
from __future__ import annotations

import ccxt
import pytest

pytestmark = pytest.mark.sim


async def test_markets_and_balance(spot):
    assert {"BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT", "DOGE/USDT",
            "LTC/USDT"} <= set(spot.markets)
    m = spot.markets["BTC/USDT"]
    assert m["spot"] and m["active"] and m["precision"]["amount"] == 1e-05 and m["limits"]["cost"]["min"] == 5.0
    bal = await spot.fetch_balance()
    assert bal["USDT"] == {"free": 10000.0, "used": 0.0, "total": 10000.0}
    assert bal["BTC"]["total"] == 1.0


async def test_limit_order_lifecycle_locks_and_releases(spot, sim, creds):
    o = await spot.create_order("BTC/USDT", "limit", "buy", 0.01, 40000, {"clientOrderId": "tw-abc-1"})
    assert o["status"] == "open" and o["clientOrderId"] == "tw-abc-1" and o["remaining"] == 0.01
    bal = await spot.fetch_balance()
    assert bal["USDT"]["used"] == 400.0 and bal["USDT"]["free"] == 9600.0
    assert [x["id"] for x in await spot.fetch_open_orders()] == [o["id"]]
    assert [x["id"] for x in await spot.fetch_open_orders("BTC/USDT")] == [o["id"]]
    assert await spot.fetch_open_orders("ETH/USDT") == []
    fetched = await spot.fetch_order(o["id"], "BTC/USDT")
    assert fetched["status"] == "open" and fetched["price"] == 40000.0 and fetched["clientOrderId"] == "tw-abc-1"
    c = await spot.cancel_order(o["id"], "BTC/USDT")
    assert c["status"] == "canceled"
    assert (await spot.fetch_order(o["id"], "BTC/USDT"))["status"] == "canceled"
    bal = await spot.fetch_balance()
    assert bal["USDT"] == {"free": 10000.0, "used": 0.0, "total": 10000.0}
    with pytest.raises(ccxt.OrderNotFound):
        await spot.cancel_order(o["id"], "BTC/USDT")


async def test_generated_client_order_id_is_binance_like(sim, creds):
    acct = sim.account(creds[0])
    o = sim.exchange.place_order(acct, "spot", symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.001",
                                 price="40000", time_in_force="GTC")
    assert len(o.client_order_id) == 22 and o.client_order_id.isalnum()


async def test_cancel_all_per_symbol(spot):
    ids = [(await spot.create_order("BTC/USDT", "limit", "sell", 0.01, 60000 + i))["id"] for i in range(3)]
    other = await spot.create_order("ETH/USDT", "limit", "sell", 0.1, 4000)
    res = await spot.cancel_all_orders("BTC/USDT")
    assert sorted(r["id"] for r in res) == sorted(ids) and all(r["status"] == "canceled" for r in res)
    assert [x["id"] for x in await spot.fetch_open_orders()] == [other["id"]]
    bal = await spot.fetch_balance()
    assert bal["BTC"] == {"free": 1.0, "used": 0.0, "total": 1.0}
    with pytest.raises(ccxt.OrderNotFound):   # nothing open: Binance answers -2011
        await spot.cancel_all_orders("BTC/USDT")


async def test_price_cross_fills_partly_then_fully_with_commission(spot, sim):
    o = await spot.create_order("BTC/USDT", "limit", "buy", 0.02, 45000)
    sim.set_price("BTCUSDT", "44000", quantity="0.005")
    f = await spot.fetch_order(o["id"], "BTC/USDT")
    assert f["status"] == "open" and f["filled"] == 0.005 and f["remaining"] == 0.015
    bal = await spot.fetch_balance()
    assert bal["USDT"]["used"] == pytest.approx(0.015 * 45000)
    assert bal["USDT"]["total"] == pytest.approx(10000 - 0.005 * 45000)
    assert bal["BTC"]["total"] == pytest.approx(1 + 0.005 * 0.999)
    sim.set_price("BTCUSDT", "44000")
    f = await spot.fetch_order(o["id"], "BTC/USDT")
    assert f["status"] == "closed" and f["filled"] == 0.02 and f["average"] == 45000.0
    trades = await spot.fetch_my_trades("BTC/USDT")
    assert [t["amount"] for t in trades] == [0.005, 0.015]
    assert all(t["takerOrMaker"] == "maker" and t["fee"]["currency"] == "BTC" for t in trades)
    bal = await spot.fetch_balance()
    assert bal["USDT"] == {"free": pytest.approx(10000 - 900), "used": 0.0, "total": pytest.approx(9100)}
    assert bal["BTC"]["total"] == pytest.approx(1 + 0.02 * 0.999)
    assert await spot.fetch_open_orders() == []


async def test_market_and_crossing_limit_take_at_market(spot, sim):
    sim.set_price("ETHUSDT", "3000")
    m = await spot.create_order("ETH/USDT", "market", "sell", 1)
    assert m["status"] == "closed" and m["average"] == 3000.0 and m["fee"]["cost"] == pytest.approx(3.0)
    t = await spot.create_order("ETH/USDT", "limit", "buy", 0.5, 3100)   # crosses: fills at 3000 (taker)
    assert t["status"] == "closed" and t["average"] == 3000.0
    bal = await spot.fetch_balance()
    assert bal["USDT"]["total"] == pytest.approx(10000 + 3000 - 3 - 1500) and bal["USDT"]["used"] == 0
    assert bal["ETH"]["total"] == pytest.approx(10 - 1 + 0.5 * 0.999)


async def test_out_of_band_fill_and_cancel_are_seen_over_rest(spot, sim, creds):
    o = await spot.create_order("BTC/USDT", "limit", "sell", 0.1, 70000)
    sim.fill(creds[0], int(o["id"]), "0.04")
    f = await spot.fetch_order(o["id"], "BTC/USDT")
    assert f["filled"] == 0.04 and f["status"] == "open"
    sim.cancel_order(creds[0], int(o["id"]))
    f = await spot.fetch_order(o["id"], "BTC/USDT")
    assert f["status"] == "canceled" and f["filled"] == 0.04
    bal = await spot.fetch_balance()
    assert bal["BTC"] == {"free": pytest.approx(0.96), "used": 0.0, "total": pytest.approx(0.96)}
    assert bal["USDT"]["total"] == pytest.approx(10000 + 0.04 * 70000 * 0.999)


async def test_limit_maker_and_time(spot, sim):
    with pytest.raises(ccxt.InvalidOrder):   # -2010 would take -> OrderImmediatelyFillable (an InvalidOrder)
        await spot.create_order("BTC/USDT", "limit", "buy", 0.01, 51000, {"postOnly": True})
    o = await spot.create_order("BTC/USDT", "limit", "buy", 0.01, 49000, {"postOnly": True})
    assert o["postOnly"] is True and o["status"] == "open"
    assert abs(await spot.fetch_time() - sim.now_ms()) < 60_000
