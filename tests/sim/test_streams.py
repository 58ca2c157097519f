"""User-data streams with real ccxt.pro: spot WS-API subscription, USD-M listenKey streams, and the stream
faults (suppressed delivery, dropped sockets, expired listen keys, unsubscribe, server shutdown)."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import aiohttp
import ccxt
import pytest

from tradewarden.sim import sim_ccxt

pytestmark = pytest.mark.sim


@pytest.fixture
async def spot_pro(sim, creds):
    ex = sim_ccxt("binance", sim.url, *creds, pro=True)
    await ex.load_markets()
    yield ex
    await ex.close()


@pytest.fixture
async def usdm_pro(sim, creds):
    ex = sim_ccxt("binanceusdm", sim.url, *creds, pro=True)
    await ex.load_markets()
    yield ex
    await ex.close()


async def _subscribed(sim, kind: str) -> None:
    for _ in range(100):
        if any(c.kind == kind and (c.subscriptions or c.kind == "listenKey") for c in sim.streams):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {kind} user-data subscription")


async def test_spot_watch_orders_balance_and_fill(spot_pro, sim, creds):
    w = asyncio.create_task(spot_pro.watch_orders())
    await _subscribed(sim, "ws-api")
    o = await spot_pro.create_order("BTC/USDT", "limit", "buy", 0.01, 40000, {"clientOrderId": "tw-ws-1"})
    got = await asyncio.wait_for(w, 5)
    assert [(x["id"], x["status"], x["clientOrderId"]) for x in got] == [(o["id"], "open", "tw-ws-1")]
    wb = asyncio.create_task(spot_pro.watch_balance())
    wo = asyncio.create_task(spot_pro.watch_orders())
    await asyncio.sleep(0.05)
    sim.set_price("BTCUSDT", "39000")
    bal = await asyncio.wait_for(wb, 5)
    assert bal["USDT"]["free"] == 9600.0 and bal["USDT"]["used"] == 0.0
    assert bal["BTC"]["free"] == pytest.approx(1 + 0.01 * 0.999)
    got = await asyncio.wait_for(wo, 5)
    assert got[-1]["status"] == "closed" and got[-1]["filled"] == 0.01


async def test_spot_deposit_emits_balance_update(spot_pro, sim, creds):
    wb = asyncio.create_task(spot_pro.watch_balance())
    await _subscribed(sim, "ws-api")
    sim.adjust_balance(creds[0], "USDT", "250")
    bal = await asyncio.wait_for(wb, 5)
    # balanceUpdate (a delta; ccxt seeds free with it when it has no snapshot), then outboundAccountPosition
    assert bal["USDT"]["free"] == 250.0
    for _ in range(100):
        if spot_pro.balance["spot"]["USDT"]["total"] == 10250.0:
            break
        await asyncio.sleep(0.02)
    assert spot_pro.balance["spot"]["USDT"] == {"free": 10250.0, "used": 0.0, "total": 10250.0}


async def test_usdm_watch_orders_positions_balance(usdm_pro, sim):
    w = asyncio.create_task(usdm_pro.watch_orders())
    await _subscribed(sim, "listenKey")
    o = await usdm_pro.create_order("BTC/USDT:USDT", "limit", "buy", 0.01, 38000)
    got = await asyncio.wait_for(w, 5)
    assert [(x["id"], x["status"]) for x in got] == [(o["id"], "open")]
    wp = asyncio.create_task(usdm_pro.watch_positions())
    wb = asyncio.create_task(usdm_pro.watch_balance())
    await asyncio.sleep(0.05)
    sim.set_price("BTCUSDT", "37000")
    pos = await asyncio.wait_for(wp, 5)
    assert [(p["symbol"], p["contracts"], p["side"], p["entryPrice"]) for p in pos] == \
        [("BTC/USDT:USDT", 0.01, "long", 38000.0)]
    bal = await asyncio.wait_for(wb, 5)
    assert bal["USDT"]["total"] == pytest.approx(10000 - 0.01 * 38000 * 0.0002)


async def test_deliver_false_loses_events_until_restored(spot_pro, sim, creds):
    w = asyncio.create_task(spot_pro.watch_orders())
    await _subscribed(sim, "ws-api")
    sim.set_deliver(creds[0], False)
    lost = await spot_pro.create_order("BTC/USDT", "limit", "buy", 0.01, 40000)
    await asyncio.sleep(0.2)
    assert not w.done()
    sim.set_deliver(creds[0], True)
    seen = await spot_pro.create_order("BTC/USDT", "limit", "buy", 0.01, 41000)
    got = await asyncio.wait_for(w, 5)
    assert [x["id"] for x in got] == [seen["id"]] and lost["id"] != seen["id"]


@pytest.mark.parametrize("abort", [False, True])
async def test_drop_streams_raises_network_error(spot_pro, usdm_pro, sim, abort):
    ws = asyncio.create_task(spot_pro.watch_orders())
    wf = asyncio.create_task(usdm_pro.watch_orders())
    await _subscribed(sim, "ws-api")
    await _subscribed(sim, "listenKey")
    assert await sim.drop_streams(abort=abort) == 2
    for t in (ws, wf):
        with pytest.raises(ccxt.NetworkError):
            await asyncio.wait_for(t, 5)


async def test_listen_key_expiry_and_keepalive(sim, creds, http):
    key, _ = creds
    async with http.post(sim.url + "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": key}) as r:
        lk = (await r.json())["listenKey"]
    async with http.ws_connect(sim.url + "/private/ws?listenKey=" + lk) as ws:
        sim.place_order(key, "usdm", symbol="ETHUSDT", side="BUY", type="LIMIT", quantity="0.1", price="2000",
                        time_in_force="GTC")
        ev = json.loads((await ws.receive(timeout=5)).data)
        assert ev["e"] == "ORDER_TRADE_UPDATE" and ev["o"]["X"] == "NEW"
        algo = sim.exchange.place_algo(sim.account(key), symbol="ETHUSDT", side="SELL", order_type="STOP_MARKET",
                                       quantity="0.1", trigger_price="2500")
        ev = json.loads((await ws.receive(timeout=5)).data)
        assert ev["e"] == "ALGO_UPDATE" and ev["o"]["aid"] == algo.algo_id and ev["o"]["X"] == "NEW"
        sim.adjust_balance(key, "USDT", "5", venue="usdm")
        ev = json.loads((await ws.receive(timeout=5)).data)
        assert ev["e"] == "ACCOUNT_UPDATE" and ev["a"]["m"] == "DEPOSIT" and ev["a"]["B"][0]["wb"] == "10005.00000000"
        assert sim.expire_listen_keys(key) == 1
        ev = json.loads((await ws.receive(timeout=5)).data)
        assert ev == {"e": "listenKeyExpired", "E": ev["E"], "listenKey": lk}
    async with http.put(sim.url + "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": key}) as r:
        assert r.status == 400 and (await r.json())["code"] == -1125
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:   # the key is gone: the server refuses
        async with http.ws_connect(sim.url + "/ws/" + lk):
            pass
    assert e.value.status == 400


def _sign(secret: str, params: dict) -> dict:
    payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
    return {**params, "signature": hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()}


async def test_ws_api_subscribe_unsubscribe_and_shutdown(sim, creds, http):
    key, secret = creds
    async with http.ws_connect(sim.url + "/ws-api/v3") as ws:
        bad = _sign("wrong", {"apiKey": key, "timestamp": int(time.time() * 1000)})
        await ws.send_json({"id": "a", "method": "userDataStream.subscribe.signature", "params": bad})
        r = json.loads((await ws.receive(timeout=5)).data)
        assert r["status"] == 400 and r["error"]["code"] == -1022
        good = _sign(secret, {"apiKey": key, "timestamp": int(time.time() * 1000), "recvWindow": 5000})
        await ws.send_json({"id": "b", "method": "userDataStream.subscribe.signature", "params": good})
        r = json.loads((await ws.receive(timeout=5)).data)
        assert r["id"] == "b" and r["status"] == 200
        sub = r["result"]["subscriptionId"]
        sim.adjust_balance(key, "BTC", "-0.5")
        ev1 = json.loads((await ws.receive(timeout=5)).data)
        ev2 = json.loads((await ws.receive(timeout=5)).data)
        assert ev1["subscriptionId"] == sub and ev1["event"]["e"] == "balanceUpdate" and ev1["event"]["d"] == "-0.50000000"
        assert ev2["event"]["e"] == "outboundAccountPosition" and ev2["event"]["B"] == [
            {"a": "BTC", "f": "0.50000000", "l": "0.00000000"}]
        await ws.send_json({"id": "c", "method": "userDataStream.unsubscribe", "params": {"subscriptionId": sub}})
        r = json.loads((await ws.receive(timeout=5)).data)
        assert r["id"] == "c" and r["status"] == 200
        term = json.loads((await ws.receive(timeout=5)).data)
        assert term["subscriptionId"] == sub and term["event"]["e"] == "eventStreamTerminated"
        await ws.send_json({"id": "d", "method": "userDataStream.subscribe.signature", "params": _sign(
            secret, {"apiKey": key, "timestamp": int(time.time() * 1000)})})
        assert json.loads((await ws.receive(timeout=5)).data)["status"] == 200
        await sim.stop()
        shutdown = json.loads((await ws.receive(timeout=5)).data)
        assert shutdown["event"]["e"] == "serverShutdown"


async def test_server_pings_user_data_sockets(creds, http):
    from tradewarden.sim import Simulator
    s = Simulator(ws_ping_interval_s=0.2)
    await s.start()
    try:
        async with http.ws_connect(s.url + "/ws-api/v3", autoping=False) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.PING
            await ws.pong(msg.data)
    finally:
        await s.stop()


async def test_ws_api_connection_lifetime(creds, http):
    from tradewarden.sim import Simulator
    s = Simulator(ws_lifetime_s=0.4)
    await s.start()
    try:
        async with http.ws_connect(s.url + "/ws-api/v3") as ws:
            first = await ws.receive(timeout=5)
            assert json.loads(first.data)["event"]["e"] == "serverShutdown"
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        await s.stop()
