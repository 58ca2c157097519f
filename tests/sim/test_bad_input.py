"""Bad input gets Binance's error JSON (never a stack trace, never a 500) and changes nothing."""
from __future__ import annotations

import pytest

from .conftest import signed_query

pytestmark = pytest.mark.sim

ORDER = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001",
         "price": "40000"}

CASES = [
    # (method, path, params, expected code)
    ("POST", "/api/v3/order", {**ORDER, "quantity": "abc"}, -1100),
    ("POST", "/api/v3/order", {**ORDER, "quantity": "NaN"}, -1100),
    ("POST", "/api/v3/order", {**ORDER, "quantity": "1e999"}, -1100),
    ("POST", "/api/v3/order", {**ORDER, "quantity": ""}, -1102),
    ("POST", "/api/v3/order", {**ORDER, "price": "-5"}, -1013),
    ("POST", "/api/v3/order", {**ORDER, "side": "SIDEWAYS"}, -1117),
    ("POST", "/api/v3/order", {**ORDER, "type": "WHATEVER"}, -1116),
    ("POST", "/api/v3/order", {**ORDER, "timeInForce": "XYZ"}, -1115),
    ("POST", "/api/v3/order", {k: v for k, v in ORDER.items() if k != "symbol"}, -1102),
    ("POST", "/api/v3/order", {**ORDER, "symbol": "NOPE"}, -1121),
    ("POST", "/api/v3/order", {**ORDER, "newClientOrderId": "bad id with spaces"}, -1100),
    ("POST", "/api/v3/order", {**ORDER, "newOrderRespType": "MAYBE"}, -1130),
    ("GET", "/api/v3/order", {"symbol": "BTCUSDT"}, -1102),
    ("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": "x1"}, -1100),
    ("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": "99999999999999999999999"}, -1100),
    ("DELETE", "/api/v3/order", {"symbol": "BTCUSDT"}, -1102),
    ("GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "limit": "0"}, -1130),
    ("GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "limit": "ten"}, -1100),
    ("GET", "/api/v3/exchangeInfo", {"symbols": "[not json"}, -1100),
    ("GET", "/api/v3/account", {"recvWindow": "70000"}, -1131),
    ("GET", "/api/v3/account", {"recvWindow": "abc"}, -1100),
    ("POST", "/fapi/v1/order", {**ORDER, "quantity": "0.0001"}, -1111),
    ("POST", "/fapi/v1/order", {**ORDER, "positionSide": "LONG"}, -4061),
    ("POST", "/fapi/v1/order", {**ORDER, "type": "STOP_MARKET"}, -4120),
    ("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT", "leverage": "500"}, -1130),
    ("GET", "/fapi/v1/openOrders", {"symbol": "nope"}, -1121),
]


@pytest.mark.parametrize("method,path,params,code", CASES)
async def test_bad_parameters(sim, creds, http, method, path, params, code):
    key, secret = creds
    q = signed_query(secret, params)
    headers = {"X-MBX-APIKEY": key}
    if method == "POST":
        resp = http.post(sim.url + path, data=q, headers={**headers,
                                                          "Content-Type": "application/x-www-form-urlencoded"})
    else:
        resp = http.request(method, sim.url + path + "?" + q, headers=headers)
    async with resp as r:
        body = await r.json()
        assert r.status == 400 and body["code"] == code, body
        assert set(body) == {"code", "msg"}
    acct = sim.account(key)
    assert acct.open_count("spot") == 0 and acct.open_count("usdm") == 0
    assert acct.spot["USDT"] == [10000, 0]


async def test_unsigned_and_malformed_requests(sim, creds, http):
    key, secret = creds
    async with http.get(sim.url + "/api/v3/account", headers={"X-MBX-APIKEY": key}) as r:
        assert r.status == 400 and (await r.json())["code"] == -1102     # no signature
    q = signed_query(secret, {"symbol": "BTCUSDT"})
    async with http.get(sim.url + "/api/v3/openOrders?" + q + "&symbol=ETHUSDT",
                        headers={"X-MBX-APIKEY": key}) as r:
        assert r.status == 400 and (await r.json())["code"] == -1101     # duplicate parameter
    async with http.get(sim.url + "/api/v3/openOrders?" + q.replace("timestamp=", "timestamp=x"),
                        headers={"X-MBX-APIKEY": key}) as r:
        assert r.status == 400 and (await r.json())["code"] == -1022     # tampered: signature fails first
    async with http.post(sim.url + "/api/v3/order", data=b"\xff\xfe", headers={"X-MBX-APIKEY": key}) as r:
        assert r.status == 400 and (await r.json())["code"] in (-1100, -1102)
    async with http.post(sim.url + "/api/v3/order", json={"symbol": "BTCUSDT"}, headers={"X-MBX-APIKEY": key}) as r:
        assert r.status == 400 and (await r.json())["code"] == -1102


@pytest.mark.parametrize("method,path,status", [("GET", "/api/v3/nope", 404), ("GET", "/", 404),
                                                ("PATCH", "/api/v3/order", 405), ("GET", "/fapi/v9/x", 404),
                                                ("GET", "/sim/v1/nothing", 404), ("PUT", "/sim/v1/accounts", 405)])
async def test_unknown_paths_answer_json(sim, http, method, path, status):
    async with http.request(method, sim.url + path) as r:
        assert r.status == status and r.content_type == "application/json"
        body = await r.json()
        assert isinstance(body["code"], int) and body["msg"]


async def test_control_api_bad_input(sim, creds, http):
    key, _ = creds
    bad = [
        ("POST", "/sim/v1/accounts", b"not json", 400),
        ("POST", "/sim/v1/accounts", b"[1,2]", 400),
        ("POST", "/sim/v1/accounts", b'{"apiKey": "x"}', 400),
        ("POST", "/sim/v1/accounts", b'{"apiKey": "x", "secret": "y", "balances": {"USDT": "lots"}}', 400),
        ("POST", "/sim/v1/markets/BTCUSDT/price", b'{"price": "abc"}', 400),
        ("POST", "/sim/v1/markets/NOPE/price", b'{"price": "1"}', 400),
        ("POST", f"/sim/v1/accounts/{key}/orders", b'{"symbol": "BTCUSDT", "side": "BUY"}', 400),
        ("POST", f"/sim/v1/accounts/{key}/orders/abc/fill", b"{}", 400),
        ("POST", f"/sim/v1/accounts/{key}/orders/123/cancel", b"{}", 404),
        ("POST", f"/sim/v1/accounts/{key}/balances", b'{"asset": "USDT", "delta": "-99999999"}', 400),
        ("POST", f"/sim/v1/accounts/{key}/stream", b'{"deliver": "no"}', 400),
        ("POST", "/sim/v1/accounts/unknown/stream", b'{"deliver": false}', 404),
        ("POST", "/sim/v1/faults", b'{"status": "five hundred"}', 400),
        ("POST", "/sim/v1/faults", b'{"status": 999}', 400),
        ("POST", "/sim/v1/clock", b'{"offsetMs": "soon"}', 400),
        ("POST", "/sim/v1/limits", b'{"spotWeight": -1}', 400),
    ]
    for method, path, body, status in bad:
        async with http.request(method, sim.url + path, data=body) as r:
            got = await r.json()
            assert r.status == status and isinstance(got["code"], int), (path, body, r.status, got)
    assert sim.account(key).spot["USDT"] == [10000, 0] and "x" not in sim.exchange.accounts
