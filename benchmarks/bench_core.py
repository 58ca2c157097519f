"""Benchmark of one pure reconciliation run (tradewarden.core.reconcile + applying its
corrections) for 1,000 / 10,000 / 100,000 open orders over 200 symbols and 500 assets, the
growth ratio between sizes (linear = 10.0 for a tenfold size), and ledger memory per 10,000
orders (tracemalloc). Prints figures; asserts nothing about speed (machines are noisy).

    .venv/bin/python benchmarks/bench_core.py [--sizes 1000,10000,100000] [--repeat 3]

Each ledger differs from the exchange in 1 % fills, 1 % orders gone from the list (targeted
queries planned, bounded per run) and 1 % orphans, and 2 % of the balances.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from dataclasses import replace
from decimal import Decimal

from tradewarden.core import AccountConfig, Ledger
from tradewarden.core.reconcile import apply_corrections, reconcile
from tradewarden.domain import Balance, Order, OrderState, Position, Section, Side, Snapshot

N_SYMBOLS, N_ASSETS = 200, 500
NOW = 1_700_000_000_000


def world(n: int) -> tuple[Ledger, Snapshot, AccountConfig]:
    assets = ["USDT"] + [f"A{i:03d}" for i in range(N_ASSETS - 1)]
    symbols = [f"{assets[1 + i]}/USDT" for i in range(N_SYMBOLS)]
    exchange_orders = []
    ledger = Ledger("tw-")
    ledger.synced_ms = NOW - 60_000
    for i in range(n):
        o = Order(f"tw-{i:08d}" if i % 3 else f"bot-{i:08d}", str(10_000_000 + i), symbols[i % N_SYMBOLS],
                  Side.BUY if i % 2 else Side.SELL, "limit", Decimal(100 + i % 977) / 10, Decimal("1.5"),
                  Decimal(0), OrderState.OPEN, NOW - 3_600_000 - i, NOW - 3_600_000 - i)
        r = i % 100
        if r == 0:      # filled a bit more on the exchange
            exchange_orders.append(replace(o, filled=Decimal("0.5"), state=OrderState.PARTIALLY_FILLED,
                                           updated_ms=o.updated_ms + 1000))
            ledger.put_order(o, "rest", NOW - 60_000)
        elif r == 1:    # gone from the exchange's list: a targeted query is planned
            ledger.put_order(o, "rest", NOW - 60_000)
        elif r == 2:    # unknown locally: orphan
            exchange_orders.append(o)
        else:
            exchange_orders.append(o)
            ledger.put_order(o, "rest", NOW - 60_000)
    balances = {}
    for j, a in enumerate(assets):
        b = Balance(a, Decimal(1000 + j), Decimal(j % 7), NOW - 120_000)
        balances[a] = b
        local = replace(b, free=b.free + 5) if j % 50 == 0 else b
        ledger.put_balance(local, a, "rest", NOW - 60_000)
    for symbol in symbols:
        total = balances[symbol.split("/")[0]].total
        ledger.put_position(Position(symbol, total, Decimal(0), NOW - 120_000), symbol, "rest", NOW - 60_000)
    snapshot = Snapshot(NOW, Section(balances), Section(exchange_orders), Section([]))
    return ledger, snapshot, AccountConfig(symbols=symbols)


def time_run(n: int, repeat: int) -> tuple[float, float, int, int]:
    best_plan = best_apply = float("inf")
    found = fetches = 0
    for _ in range(repeat):
        ledger, snapshot, config = world(n)
        gc.collect()
        t0 = time.perf_counter()
        plan = reconcile(ledger, snapshot, config, NOW)
        t1 = time.perf_counter()
        apply_corrections(ledger, plan.corrections, NOW)
        t2 = time.perf_counter()
        best_plan, best_apply = min(best_plan, t1 - t0), min(best_apply, t2 - t1)
        found, fetches = len(plan.discrepancies), len(plan.fetches) + len(plan.deferred)
        del ledger, snapshot, plan
    return best_plan, best_apply, found, fetches


def memory_per_10k() -> tuple[float, int]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    ledger, snapshot, _ = world(10_000)
    del snapshot                      # the exchange's copy is not the ledger's cost
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    size = sum(s.size_diff for s in after.compare_to(before, "filename"))
    dump_bytes = len(json.dumps(ledger.dump(max_orders=10_000), separators=(",", ":")))
    return size / len(ledger.orders) * 10_000, dump_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"one pure reconciliation run, {N_SYMBOLS} symbols, {N_ASSETS} assets (best of {args.repeat})")
    print(f"{'open orders':>12} {'reconcile ms':>13} {'apply ms':>9} {'total ms':>9} {'us/order':>9} "
          f"{'growth':>7} {'discrepancies':>14} {'queries':>8}")
    prev = None
    for n in sizes:
        plan_s, apply_s, found, fetches = time_run(n, args.repeat)
        total = plan_s + apply_s
        growth = f"{total / prev[1]:.1f}x/{n / prev[0]:.0f}x" if prev else "base"
        print(f"{n:>12,} {plan_s * 1e3:>13.1f} {apply_s * 1e3:>9.1f} {total * 1e3:>9.1f} "
              f"{total / n * 1e6:>9.2f} {growth:>7} {found:>14,} {fetches:>8,}")
        prev = (n, total)
    mem, dump_bytes = memory_per_10k()
    print(f"ledger memory per 10,000 orders (tracemalloc, incl. 500 balances): {mem / 2**20:.2f} MiB "
          f"({mem / 10_000:.0f} B/order)")
    print(f"compact dump of 10,000 orders: {dump_bytes / 2**20:.2f} MiB "
          f"(status keeps at most 5,000 by default: Ledger.dump(max_orders=5000))")


if __name__ == "__main__":
    main()
