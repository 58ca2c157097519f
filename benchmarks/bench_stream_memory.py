"""Memory a user-data stream keeps per account after N order updates on one connection, with
tradewarden's ccxt.pro cache limits against ccxt's defaults (the baseline, same run).

The simulator runs in its own process; this process holds the gateway and its stream (real ccxt.pro over
WebSocket). For each variant: one account, one connection, N orders placed and filled out of band (two
updates each), every event consumed; then the traced Python heap held by ccxt (files under ccxt/) is
printed.

    .venv/bin/python benchmarks/bench_stream_memory.py [--orders 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import secrets
import sys
import tracemalloc

from soak import RemoteSim

from tradewarden.domain import OrderEvent
from tradewarden.gateway import create_gateway, exchanges


def ccxt_heap() -> float:
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/ccxt/*")])
    return sum(s.size for s in snap.statistics("filename")) / 2**20


async def one(sim: RemoteSim, exchange: str, orders: int, limits: dict) -> tuple[float, int]:
    exchanges.PRO_CACHE_LIMITS = limits
    key, secret = "mem-" + secrets.token_hex(6), secrets.token_hex(32)
    await sim.call("POST", "/accounts", {"apiKey": key, "secret": secret, "balances": {"USDT": "100000000"},
                                         "futuresBalances": {"USDT": "100000000"}})
    venue, symbol = ("spot", "BTC/USDT") if exchange == "binance" else ("usdm", "BTC/USDT:USDT")
    gw = create_gateway(exchange, key, secret, sim.url)
    await gw.start([symbol])
    stream = gw.stream([symbol])
    seen = 0
    want = 2 * orders

    async def pump() -> None:
        nonlocal seen
        async for ev in stream:
            if isinstance(ev, OrderEvent):
                seen += 1
                if seen >= want:
                    return
    task = asyncio.create_task(pump())
    await asyncio.sleep(1.0)
    before = ccxt_heap()
    for i in range(orders):
        o = await sim.call("POST", f"/accounts/{key}/orders",
                           {"venue": venue, "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001",
                            "price": "20000", "timeInForce": "GTC", "clientOrderId": f"tw-{i}"})
        await sim.call("POST", f"/accounts/{key}/orders/{o['orderId']}/fill", {"venue": venue})
    await asyncio.wait_for(task, 60)
    held = ccxt_heap() - before
    await stream.aclose()
    await gw.close()
    return held, seen


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, default=1000)
    args = p.parse_args()
    tracemalloc.start()
    sim = RemoteSim(request_log_size=1000)
    await sim.start()
    ours = dict(exchanges.PRO_CACHE_LIMITS)
    print(f"{'exchange':<12}{'order updates':>14}{'ccxt default MiB':>18}{'tradewarden MiB':>17}{'ratio':>8}")
    try:
        for exchange in ("binance", "binanceusdm"):
            base, n0 = await one(sim, exchange, args.orders, {})
            mine, n1 = await one(sim, exchange, args.orders, ours)
            print(f"{exchange:<12}{n1:>14}{base:>18.2f}{mine:>17.2f}{mine / base if base else 0:>8.2f}")
    finally:
        exchanges.PRO_CACHE_LIMITS = ours
        await sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
