"""Request weight spent per snapshot, for 1, 10, 50 and 200 symbols, against the cheapest possible.

Runs real ccxt against the simulator on 127.0.0.1. The weight is the venue's (the simulator's request
log), not the gateway's own accounting. Baselines measured in the same run:
- cheapest: account + min(one open-orders query per symbol, one for all symbols) (+ USD-M algo orders
  and positions), from the documented weights;
- naive per-symbol: what a client that always asks per symbol pays.

    .venv/bin/python benchmarks/bench_gateway.py
"""
from __future__ import annotations

import asyncio
import secrets
import time

from tradewarden.gateway import RateBudgets, cheapest_open_orders_weight, create_gateway
from tradewarden.sim import Simulator

COUNTS = (1, 10, 50, 200)
ROUNDS = 3


def cheapest(exchange: str, n: int) -> int:
    if exchange == "binance":
        return 20 + cheapest_open_orders_weight(n, "api")
    return 5 + 2 * cheapest_open_orders_weight(n, "fapi") + 5   # account + plain and algo orders + positions


def naive(exchange: str, n: int) -> int:
    return 20 + 6 * n if exchange == "binance" else 5 + 2 * n + 5


async def main() -> None:
    sim = Simulator(control=True, spot_weight_limit=10**9, futures_weight_limit=10**9)
    await sim.start()
    names = [f"GEN{i:03d}USDT" for i in range(200)]
    for i, name in enumerate(names):
        sim.add_market(name, price="10")
    key, secret = "bench-" + secrets.token_hex(8), secrets.token_hex(32)
    sim.add_account(key, secret, balances={"USDT": "100000"}, futures_balances={"USDT": "100000"})
    print(f"{'exchange':<12}{'symbols':>8}{'weight/snapshot':>17}{'cheapest':>10}{'ratio':>8}"
          f"{'naive':>8}{'naive/ours':>12}{'ms/snapshot':>13}")
    try:
        for exchange in ("binance", "binanceusdm"):
            gw = create_gateway(exchange, key, secret, sim.url, budgets=RateBudgets())
            suffix = "/USDT" if exchange == "binance" else "/USDT:USDT"
            all_symbols = [n[:-4] + suffix for n in names]
            await gw.start(all_symbols[:1])
            for n in COUNTS:
                symbols = all_symbols[:n]
                sim.request_log.clear()
                t0 = time.perf_counter()
                for _ in range(ROUNDS):
                    snap = await gw.snapshot(symbols)
                    assert snap.balances.ok and snap.open_orders.ok and snap.positions.ok
                elapsed = (time.perf_counter() - t0) / ROUNDS * 1000
                spent = sum(r["weight"] for r in sim.requests()) / ROUNDS
                best, worst = cheapest(exchange, n), naive(exchange, n)
                print(f"{exchange:<12}{n:>8}{spent:>17.1f}{best:>10}{spent / best:>8.2f}{worst:>8}"
                      f"{worst / spent:>12.2f}{elapsed:>13.1f}")
            await gw.close()
    finally:
        await sim.stop()


if __name__ == "__main__":
    asyncio.run(main())
