"""Simulator benchmark: prints figures, asserts nothing.

1. requests/s for GET /api/v3/openOrders (all symbols) with 10,000 open orders on one account, against
   baselines measured in the same run (GET /api/v3/ping, and GET /api/v3/openOrders with 10 open orders);
2. time to cancel 1,000 orders across 50 symbols with parallel cancel-all calls (DELETE /api/v3/openOrders per
   symbol, all 50 at once), against cancelling the same 1,000 one by one (DELETE /api/v3/order).

Run: .venv/bin/python benchmarks/bench_sim.py [--seconds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import time
from urllib.parse import urlencode

import aiohttp

from tradewarden.sim import Simulator

KEY, SECRET = "bench-key", "bench-secret"


def signed(params: dict) -> str:
    p = dict(params)
    p["timestamp"] = int(time.time() * 1000)
    q = urlencode(p)
    return q + "&signature=" + hmac.new(SECRET.encode(), q.encode(), hashlib.sha256).hexdigest()


async def rate(http: aiohttp.ClientSession, url: str, seconds: float, signed_params: dict | None,
               concurrency: int = 4) -> tuple[float, int]:
    """Requests per second over ``seconds`` with ``concurrency`` clients; returns (rps, last body size)."""
    deadline = time.perf_counter() + seconds
    count = 0
    size = 0

    async def worker() -> None:
        nonlocal count, size
        while time.perf_counter() < deadline:
            full = url + ("?" + signed(signed_params) if signed_params is not None else "")
            async with http.get(full, headers={"X-MBX-APIKEY": KEY}) as r:
                body = await r.read()
                assert r.status == 200, body[:200]
                size = len(body)
            count += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start), size


def fill_book(sim: Simulator, symbols: list[str], per_symbol: int) -> None:
    for s in symbols:
        for i in range(per_symbol):
            sim.place_order(KEY, "spot", symbol=s, side="BUY", type="LIMIT", quantity="1",
                            price=f"{10 + (i % 50) * 0.01:.2f}", time_in_force="GTC")


async def main(seconds: float) -> None:
    sim = Simulator(control=False, spot_weight_limit=10**9, spot_orders_10s=10**9, max_num_orders=10_000)
    symbols = [f"BN{i:02d}USDT" for i in range(50)]
    for s in symbols:
        sim.add_market(s, price="20", tick="0.01", step="1")
    sim.add_account(KEY, SECRET, balances={"USDT": "100000000"})
    await sim.start()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:
        url = sim.url + "/api/v3/openOrders"
        ping_rps, _ = await rate(http, sim.url + "/api/v3/ping", seconds, None)
        fill_book(sim, symbols[:1], 10)
        small_rps, small_size = await rate(http, url, seconds, {})
        for o in sim.account(KEY).open_orders("spot"):
            sim.exchange._cancel(o)
        t0 = time.perf_counter()
        fill_book(sim, symbols, 200)
        place_s = time.perf_counter() - t0
        assert sim.account(KEY).open_count("spot") == 10_000
        big_rps, big_size = await rate(http, url, seconds, {})
        one_rps, _ = await rate(http, url, seconds, {"symbol": symbols[7]})
        print(f"GET /api/v3/ping                              {ping_rps:9.1f} req/s   (baseline)")
        print(f"GET /api/v3/openOrders, 10 open               {small_rps:9.1f} req/s   ({small_size} bytes)")
        print(f"GET /api/v3/openOrders, 10,000 open (all)     {big_rps:9.1f} req/s   ({big_size / 1e6:.1f} MB, "
              f"{big_rps * 10_000:,.0f} orders/s serialized)")
        print(f"GET /api/v3/openOrders?symbol=, 200 of 10,000 {one_rps:9.1f} req/s")
        print(f"  ratio 10,000-open / 10-open: {big_rps / small_rps:.4f}; "
              f"per-symbol query vs 10-open: {one_rps / small_rps:.2f}")
        print(f"placing 10,000 orders in-process: {place_s:.2f} s ({10_000 / place_s:,.0f} orders/s)")

        # cancel 1,000 orders across 50 symbols
        for s in symbols:
            for o in sim.account(KEY).open_orders("spot", s):
                sim.exchange._cancel(o)
        fill_book(sim, symbols, 20)

        async def cancel_all(symbol: str) -> int:
            async with http.delete(url + "?" + signed({"symbol": symbol}), headers={"X-MBX-APIKEY": KEY}) as r:
                body = await r.json()
                assert r.status == 200, body
                return len(body)

        t0 = time.perf_counter()
        cancelled = sum(await asyncio.gather(*(cancel_all(s) for s in symbols)))
        parallel_s = time.perf_counter() - t0
        assert cancelled == 1000 and sim.account(KEY).open_count("spot") == 0

        fill_book(sim, symbols, 20)
        ids = [(o.symbol, o.order_id) for o in sim.account(KEY).open_orders("spot")]
        t0 = time.perf_counter()
        for s, oid in ids:
            async with http.delete(sim.url + "/api/v3/order?" + signed({"symbol": s, "orderId": oid}),
                                   headers={"X-MBX-APIKEY": KEY}) as r:
                assert r.status == 200
        serial_s = time.perf_counter() - t0
        assert sim.account(KEY).open_count("spot") == 0
        print(f"cancel 1,000 orders / 50 symbols, 50 parallel cancel-all calls: {parallel_s * 1000:8.1f} ms")
        print(f"cancel 1,000 orders one by one (DELETE /api/v3/order):        {serial_s * 1000:8.1f} ms (baseline)")
        print(f"  speed-up of parallel cancel-all: {serial_s / parallel_s:.1f}x")
    await sim.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(ap.parse_args().seconds))
