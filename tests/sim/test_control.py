"""The /sim/v1 control API over HTTP (as tests, demos and users drive it) and `tradewarden sim` itself."""
from __future__ import annotations

import asyncio
import socket

import pytest

from tradewarden.sim import Simulator, sim_ccxt

pytestmark = pytest.mark.sim


async def test_control_api_round_trip(sim, http):
    u = sim.url + "/sim/v1"
    async with http.post(u + "/accounts", json={"apiKey": "ctl-key", "secret": "ctl-secret",
                                                "balances": {"USDT": "5000", "BTC": "0.5"},
                                                "futuresBalances": {"USDT": "2000"}}) as r:
        assert r.status == 201
        created = await r.json()
        assert "secret" not in created and created["balances"]["USDT"] == {"free": "5000", "locked": "0"}
    async with http.post(u + "/accounts", json={"apiKey": "ctl-key", "secret": "s"}) as r:
        assert r.status == 409
    async with http.post(u + "/accounts/ctl-key/orders", json={"symbol": "BTCUSDT", "side": "BUY",
                                                               "quantity": "0.01", "price": "45000",
                                                               "clientOrderId": "other-client-1"}) as r:
        assert r.status == 201
        order = await r.json()
        assert order["status"] == "NEW" and order["venue"] == "spot" and order["clientOrderId"] == "other-client-1"
    async with http.post(u + "/accounts/ctl-key/orders", json={"symbol": "ETHUSDT", "side": "SELL", "quantity": "1",
                                                               "price": "9000", "newClientOrderId": "by-hand"}) as r:
        assert r.status == 400 and (await r.json())["code"] == -2010    # no ETH: insufficient balance
    async with http.post(u + "/accounts/ctl-key/orders", json={"venue": "usdm", "symbol": "ETHUSDT", "side": "SELL",
                                                               "quantity": "0.1", "price": "3500",
                                                               "time": 1_600_000_000_000,
                                                               "newClientOrderId": "by-hand-2"}) as r:
        fut = await r.json()
        assert fut["time"] == 1_600_000_000_000 and fut["clientOrderId"] == "by-hand-2"
        assert r.status == 201 and fut["venue"] == "usdm"
    async with http.post(u + f"/accounts/ctl-key/orders/{order['orderId']}/fill", json={"quantity": "0.004"}) as r:
        filled = await r.json()
        assert filled["executedQty"] == "0.004" and filled["status"] == "PARTIALLY_FILLED"
    async with http.post(u + f"/accounts/ctl-key/orders/{fut['orderId']}/cancel", json={}) as r:
        assert (await r.json())["status"] == "CANCELED"
    async with http.post(u + "/markets/ETHUSDT/price", json={"price": "3600", "venue": "usdm"}) as r:
        assert (await r.json())["filled"] == []
    async with http.post(u + "/markets/BTCUSDT/price", json={"price": "44000"}) as r:
        moved = await r.json()
        assert [(o["orderId"], o["status"]) for o in moved["filled"]] == [(order["orderId"], "FILLED")]
    async with http.post(u + "/accounts/ctl-key/balances", json={"asset": "USDT", "delta": "-100"}) as r:
        assert r.status == 200
    async with http.get(u + "/accounts/ctl-key") as r:
        view = await r.json()
    assert view["openOrders"] == [] and view["positions"] == [] and view["deliver"] is True
    assert view["balances"]["USDT"] == {"free": "4450", "locked": "0"}      # 5000 - 450 - 100
    assert view["balances"]["BTC"]["free"] == "0.50999"                         # + 0.01 - 0.1% commission
    async with http.post(u + "/accounts/ctl-key/stream", json={"deliver": False}) as r:
        assert (await r.json())["deliver"] is False
    async with http.post(u + "/faults", json={"method": "GET", "path": "/api/v3/time", "status": 503,
                                              "retryAfter": 3, "count": 2}) as r:
        fault = await r.json()
        assert r.status == 201 and fault["count"] == 2
    async with http.get(sim.url + "/api/v3/time") as r:
        assert r.status == 503 and r.headers["Retry-After"] == "3"
    async with http.delete(u + "/faults") as r:
        assert (await r.json())["cleared"] == 1
    async with http.post(u + "/clock", json={"offsetMs": -5000}) as r:
        assert (await r.json())["offsetMs"] == -5000
    async with http.get(sim.url + "/api/v3/time") as r:
        assert r.status == 200
    async with http.get(u + "/requests", params={"path": "/api/v3/time"}) as r:
        log = await r.json()
    assert [e["status"] for e in log] == [503, 200] and all(e["weight"] in (0, 1) for e in log)
    async with http.post(u + "/reset") as r:
        assert (await r.json())["reset"] is True
    async with http.get(u + "/accounts/ctl-key") as r:
        assert r.status == 404


async def test_request_log_never_holds_signatures_or_secrets(sim, spot, creds):
    await spot.fetch_balance()
    await spot.create_order("BTC/USDT", "limit", "buy", 0.001, 40000)
    text = repr(sim.requests())
    assert "signature" not in text and creds[1] not in text
    assert creds[1] not in repr(sim.account(creds[0]))
    entry = [e for e in sim.requests() if e["path"] == "/api/v3/order"][0]
    assert entry["key"] == creds[0] and entry["weight"] == 1 and entry["status"] == 200


async def test_control_api_off_by_default():
    s = Simulator()
    await s.start()
    try:
        import aiohttp
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/sim/v1/reset") as r:
                assert r.status == 404
            async with http.get(s.url + "/api/v3/ping") as r:
                assert r.status == 200 and await r.json() == {}
    finally:
        await s.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_cli_serves_accounts_from_yaml(tmp_path):
    from tradewarden.sim.__main__ import load_accounts, serve
    f = tmp_path / "accounts.yaml"
    f.write_text("accounts:\n  - apiKey: yaml-key\n    secret: yaml-secret\n    balances: {USDT: '1234.5'}\n"
                 "    futuresBalances: {USDT: '99'}\nprices: {BTCUSDT: '61000'}\n")
    port = _free_port()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", port, False, load_accounts(str(f)), ready, stop))
    await asyncio.wait_for(ready.wait(), 10)
    ex = sim_ccxt("binance", f"http://127.0.0.1:{port}", "yaml-key", "yaml-secret")
    fx = sim_ccxt("binanceusdm", f"http://127.0.0.1:{port}", "yaml-key", "yaml-secret")
    try:
        assert (await ex.fetch_balance())["USDT"]["total"] == 1234.5
        assert (await fx.fetch_balance())["USDT"]["total"] == 99.0
        o = await ex.create_order("BTC/USDT", "market", "buy", 0.01)
        assert o["average"] == 61000.0
    finally:
        await ex.close()
        await fx.close()
        stop.set()
        await task


def test_cli_rejects_bad_accounts_file(tmp_path, capsys):
    from tradewarden.sim.__main__ import main
    f = tmp_path / "a.yaml"
    f.write_text("accounts:\n  - apiKey: only-key\n")
    assert main(["--accounts", str(f), "--port", "0"]) == 2
    assert "apiKey and secret are required" in capsys.readouterr().err
    assert main(["--accounts", str(tmp_path / "missing.yaml")]) == 2


async def test_tradewarden_sim_command(tmp_path):
    """`tradewarden sim` from the shell: binds 127.0.0.1, serves accounts from YAML, stops on SIGTERM."""
    import os
    import signal
    import sys
    import aiohttp
    f = tmp_path / "accounts.yaml"
    f.write_text("accounts:\n  - {apiKey: cli-key, secret: cli-secret, balances: {USDT: '42'}}\n")
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tradewarden")
    proc = await asyncio.create_subprocess_exec(exe, "sim", "--port", str(port), "--accounts", str(f),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert f"http://127.0.0.1:{port}" in line.decode()
        ex = sim_ccxt("binance", f"http://127.0.0.1:{port}", "cli-key", "cli-secret")
        try:
            assert (await ex.fetch_balance())["USDT"]["total"] == 42.0
        finally:
            await ex.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/sim/v1/accounts/cli-key") as r:
                assert r.status == 200 and (await r.json())["balances"]["USDT"]["free"] == "42"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_control_lists_every_order_and_drains_the_request_log(sim, http):
    u = sim.url + "/sim/v1"
    sim.add_account("list-key", "list-secret", balances={"USDT": "5000"})
    async with http.post(u + "/accounts/list-key/orders", json={"symbol": "BTCUSDT", "side": "BUY", "quantity": "0.01",
                                                                "price": "40000", "clientOrderId": "tw-1"}) as r:
        first = await r.json()
    async with http.post(u + "/accounts/list-key/orders", json={"symbol": "BTCUSDT", "side": "BUY", "quantity": "0.01",
                                                                "price": "41000", "clientOrderId": "tw-2"}) as r:
        second = await r.json()
    sim.cancel_order("list-key", first["orderId"], "spot")        # as the REST API would: a new clientOrderId
    async with http.get(u + "/accounts/list-key/orders", params={"venue": "spot"}) as r:
        orders = {o["orderId"]: o for o in await r.json()}
    assert set(orders) == {first["orderId"], second["orderId"]}  # the finished one too
    assert orders[first["orderId"]]["status"] == "CANCELED"
    assert orders[first["orderId"]]["origClientOrderId"] == "tw-1"
    assert orders[second["orderId"]]["origClientOrderId"] == "" and orders[second["orderId"]]["clientOrderId"] == "tw-2"
    async with http.get(u + "/accounts/list-key/orders", params={"venue": "usdm"}) as r:
        assert await r.json() == []
    sim.request_log.append({"time": 1, "method": "GET", "path": "/api/v3/account"})
    async with http.delete(u + "/requests") as r:
        assert [row["path"] for row in await r.json()] == ["/api/v3/account"]
    async with http.get(u + "/requests") as r:
        assert await r.json() == []
