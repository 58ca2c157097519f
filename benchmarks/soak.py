"""Soak: N accounts on the simulator (real ccxt over HTTP/WS, the real gateway and core), bots
trading on them, random faults injected and cleared for a configurable time; then recovery and
the invariants counted. Prints figures; exits 1 if an invariant was broken.

    .venv/bin/python benchmarks/soak.py --minutes 2 --accounts 5 [--seed 1] [--interval 1.0]

Faults: 5xx on any endpoint tradewarden calls, latency beyond the client timeout, a 429 storm with
Retry-After, a 418 ban, clock skew beyond recvWindow, dropped and aborted sockets, expired listen
keys, events not delivered, hostile answers (a body that is not what the venue promises).

Printed: faults injected (by kind), runs, discrepancies found and corrected, orders lost (must be
0), wrong cancels (must be 0: foreign, not stale, or under ObserveOnly), requests sent inside a
Retry-After (must be 0), ledgers unequal to the exchange after recovery (must be 0), memory (RSS)
after warm-up and at the end, and the largest ledger.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import random
import secrets
import sys
import time
import tracemalloc
from dataclasses import dataclass, field

from tradewarden.core import AccountConfig, AccountRunner
from tradewarden.domain import OrderState, Policy
from tradewarden.gateway import RateBudgets, create_gateway
from tradewarden.sim import Simulator

SPOT = ["BTC/USDT", "ETH/USDT"]
USDM = ["BTC/USDT:USDT", "ETH/USDT:USDT"]
STALE_S = 3600
SIM_STATE = {"NEW": OrderState.OPEN, "PARTIALLY_FILLED": OrderState.PARTIALLY_FILLED,
             "FILLED": OrderState.FILLED, "CANCELED": OrderState.CANCELED, "EXPIRED": OrderState.EXPIRED,
             "EXPIRED_IN_MATCH": OrderState.EXPIRED, "REJECTED": OrderState.REJECTED}
ENDPOINTS = [("GET", "/api/v3/account"), ("GET", "/api/v3/openOrders"), ("GET", "/api/v3/order"),
             ("DELETE", "/api/v3/order"), ("GET", "/fapi/v3/account"), ("GET", "/fapi/v1/openOrders"),
             ("GET", "/fapi/v1/openAlgoOrders"), ("GET", "/fapi/v3/positionRisk"), ("GET", "/fapi/v1/order"),
             ("DELETE", "/fapi/v1/order"), ("POST", "/fapi/v1/listenKey")]
HOSTILE = [("/api/v3/account", {"balances": "none"}), ("/api/v3/openOrders", [{"symbol": "BTCUSDT"}]),
           ("/api/v3/account", '{"balances": [{"asset"'), ("/fapi/v3/positionRisk", {"oops": 1})]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cid_of(o) -> str:
    return o.orig_client_order_id or o.client_order_id


@dataclass
class Account:
    i: int
    key: str
    secret: str
    futures: bool
    policy: Policy
    gw: object = None
    runner: AccountRunner | None = None
    stream: object = None
    tasks: list = field(default_factory=list)
    tracked: set = field(default_factory=set)
    lost: set = field(default_factory=set)
    seq: int = 0

    @property
    def venue(self) -> str:
        return "usdm" if self.futures else "spot"

    @property
    def symbols(self) -> list[str]:
        return USDM if self.futures else SPOT


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.sim = Simulator(control=True, request_log_size=200_000)
        self.budgets = RateBudgets()
        self.accounts: list[Account] = []
        self.faults = collections.Counter()
        self.runs = 0
        self.run_failures = 0
        self.discrepancies = collections.Counter()
        self.wrong_cancels: list[str] = []
        self.inside_retry_after: list[str] = []
        self.windows: list[tuple[str, int, int]] = []  # (venue, sent at, nothing before) after a 429/418
        self.retry_after_by_fault: dict[int, float] = {}
        self.stream_events = 0
        self.errors: list[str] = []

    # ---- setup ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.sim.start(host="127.0.0.1", port=0)
        for i in range(self.args.accounts):
            key, secret = f"soak-{i}-" + secrets.token_hex(8), secrets.token_hex(32)
            self.sim.add_account(key, secret, balances={"USDT": "1000000", "BTC": "10", "ETH": "100"},
                                 futures_balances={"USDT": "1000000"})
            a = Account(i, key, secret, futures=i % 2 == 1,
                        policy=Policy.OBSERVE_ONLY if i % 3 == 2 else Policy.CORRECT)
            a.gw = create_gateway("binanceusdm" if a.futures else "binance", key, secret, self.sim.url,
                                  budgets=self.budgets,
                                  stream_options={"backoff_base_s": 0.1, "backoff_cap_s": 2.0,
                                                  "connect_timeout_s": 5.0})
            a.gw._rest.timeout = 3000
            await a.gw.start(a.symbols)
            a.runner = AccountRunner(a.gw, AccountConfig(symbols=a.symbols, policy=a.policy, futures=a.futures,
                                                         stale_timeout_s=STALE_S, missing_grace_s=1.0))
            self.place(a, "tw", stale=True)
            self.place(a, "manual")
            await a.runner.initial_sync()
            self.track(a)
            self.accounts.append(a)

    def place(self, a: Account, prefix: str, stale: bool = False, symbol: str = "BTCUSDT"):
        a.seq += 1
        offset = self.sim.clock_offset_ms
        if stale:
            self.sim.set_clock_offset(offset - (STALE_S + 600) * 1000)
        try:
            price = "30000" if symbol == "BTCUSDT" else "2000"
            price = str(int(price) - self.rng.randrange(0, 500))
            return self.sim.place_order(a.key, a.venue, symbol=symbol, side="BUY", type="LIMIT", quantity="0.01",
                                        price=price, time_in_force="GTC", client_order_id=f"{prefix}-{a.seq}")
        except Exception as exc:  # noqa: BLE001 - a rejected bot order is the bot's problem
            self.errors.append(f"place: {exc}")
            return None
        finally:
            if stale:
                self.sim.set_clock_offset(offset)

    def track(self, a: Account) -> None:
        """No owned order ever drops out of tracking or becomes LOST."""
        led = a.runner.ledger
        for cid in a.tracked:
            o = led.order(cid)
            if o is None or o.state is OrderState.LOST:
                a.lost.add(cid)
        for entry in led.orders.values():
            if led.is_owned(entry.order.client_order_id):
                a.tracked.add(entry.order.client_order_id)

    # ---- what runs ---------------------------------------------------------------------------------

    async def bot(self, a: Account, until: float) -> None:
        """Trading on the account out of band: new orders (some stale), fills, foreign cancels."""
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))
            acct = self.sim.account(a.key)
            r = self.rng.random()
            open_orders = acct.open_orders(a.venue)
            if r < 0.35 or not open_orders:
                self.place(a, "tw" if self.rng.random() < 0.8 else "manual", stale=self.rng.random() < 0.2,
                           symbol=self.rng.choice(["BTCUSDT", "ETHUSDT"]))
            elif r < 0.6:
                o = self.rng.choice(open_orders)
                try:
                    self.sim.fill(a.key, o.order_id, None if self.rng.random() < 0.5 else "0.002")
                except Exception:  # noqa: BLE001
                    pass
            elif r < 0.75:
                o = self.rng.choice(open_orders)
                try:
                    self.sim.cancel_order(a.key, o.order_id, a.venue)
                except Exception:  # noqa: BLE001
                    pass
            elif not a.futures and r < 0.85:
                self.sim.adjust_balance(a.key, "USDT", str(self.rng.randrange(1, 100)))

    async def loop(self, a: Account, until: float) -> None:
        n = 0
        while time.monotonic() < until:
            await asyncio.sleep(self.args.interval * self.rng.uniform(0.8, 1.2))
            try:
                report = await a.runner.reconcile(trigger="timer")
                self.count(report)
                if n % 3 == 0:
                    self.count(await a.runner.stale_cleanup(), run=False)
            except Exception as exc:  # noqa: BLE001 - counted, never fatal
                self.run_failures += 1
                self.errors.append(f"run: {type(exc).__name__}: {exc}"[:200])
            self.track(a)
            n += 1

    def count(self, report, run: bool = True) -> None:
        if run:
            self.runs += 1
            if not report.ok:
                self.run_failures += 1
        for d in report.discrepancies:
            self.discrepancies[d.kind] += 1

    async def pump(self, a: Account) -> None:
        async for ev in a.stream:
            self.stream_events += 1
            try:
                rep = await a.runner.handle_event(ev)
                if rep is not None:
                    self.count(rep)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"event: {type(exc).__name__}: {exc}"[:200])
            self.track(a)

    # ---- faults ----------------------------------------------------------------------------------

    async def injector(self, until: float) -> None:
        while time.monotonic() < until - 2:
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            kind = self.rng.choice(["5xx", "timeout", "429", "418", "skew", "drop", "abort", "expire",
                                    "no-delivery", "hostile", "5xx-processed-cancel"])
            self.faults[kind] += 1
            hold = self.rng.uniform(1.0, 4.0)
            sim = self.sim
            if kind == "5xx":
                method, path = self.rng.choice(ENDPOINTS)
                f = sim.add_fault(method=method, path=path, status=self.rng.choice([500, 502, 503, 504]))
            elif kind == "5xx-processed-cancel":
                f = sim.add_fault(method="DELETE", path=self.rng.choice(["/api/v3/order", "/fapi/v1/order"]),
                                  status=503, processed=True, count=3)
            elif kind == "timeout":
                method, path = self.rng.choice(ENDPOINTS)
                f = sim.add_fault(method=method, path=path, latency_ms=3500)
            elif kind == "429":
                ra = self.rng.choice([1, 2])
                f = sim.add_fault(path="*", status=429, retry_after=ra, count=self.rng.randrange(2, 8))
                self.retry_after_by_fault[f.id] = ra
            elif kind == "418":
                ra = self.rng.choice([2, 3])
                f = sim.add_fault(path="*", status=418, retry_after=ra, count=1)
                self.retry_after_by_fault[f.id] = ra
            elif kind == "hostile":
                path, body = self.rng.choice(HOSTILE)
                f = sim.add_fault(method="GET", path=path, body=body, count=self.rng.randrange(1, 4))
            else:
                f = None
            if kind == "skew":
                # our clock is off beyond recvWindow (the venue's stays monotonic): ccxt signs with
                # its clock minus options["timeDifference"]
                victim = self.rng.choice(self.accounts)
                victim.gw._rest.options["timeDifference"] = self.rng.choice([-1, 1]) * self.rng.randrange(12_000, 30_000)
            elif kind in ("drop", "abort"):
                await sim.drop_streams(abort=kind == "abort")
            elif kind == "expire":
                sim.expire_listen_keys()
            elif kind == "no-delivery":
                victim = self.rng.choice(self.accounts)
                sim.set_deliver(victim.key, False)
            await asyncio.sleep(hold)
            if f is not None and f in sim.faults:
                sim.faults.remove(f)
            if kind == "no-delivery":
                sim.set_deliver(victim.key, True)
            self.drain()

    def drain(self) -> None:
        """Examine (and drop) the simulator's request log: wrong cancels, requests inside Retry-After."""
        log = list(self.sim.request_log)
        self.sim.request_log.clear()
        by_key = {a.key: a for a in self.accounts}
        for r in log:
            if not r["path"].startswith(("/api/", "/fapi/")):
                continue
            t = r["time"]
            for venue, start, end in self.windows:    # spot and USD-M are separate hosts and limits
                if venue == r["venue"] and start + 150 < t < end:
                    self.inside_retry_after.append(f"{r['method']} {r['path']} {t - start} ms after a limit")
                    break
            if r["status"] in (429, 418):
                ra = self.retry_after_by_fault.get(r.get("fault"), 0)
                if ra:
                    self.windows.append((r["venue"], t, t + int(ra * 1000) - 50))
            a = by_key.get(r["key"])
            if a is not None and r["method"] == "DELETE" and "listenKey" not in r["path"]:
                self.check_cancel(a, r)
        now = max((r["time"] for r in log), default=0)
        self.windows = [w for w in self.windows if w[2] > now - 1000]

    def check_cancel(self, a: Account, r: dict) -> None:
        if a.policy is Policy.OBSERVE_ONLY:
            self.wrong_cancels.append(f"ObserveOnly account {a.i} sent {r['method']} {r['path']}")
            return
        if not r["path"].endswith("/order"):
            self.wrong_cancels.append(f"cancel-all outside an emergency stop: {r['path']}")
            return
        p = r["params"]
        acct = self.sim.account(a.key)
        o = acct.orders[a.venue].get(int(p["orderId"])) if p.get("orderId") else None
        cid = cid_of(o) if o is not None else p.get("origClientOrderId", "")
        if not cid.startswith("tw-"):
            self.wrong_cancels.append(f"foreign order {cid} cancelled")
        elif o is not None and o.time > r["time"] - STALE_S * 1000 + 30_000:   # 30 s: clock skew faults
            self.wrong_cancels.append(f"order {cid} cancelled before it was stale")

    # ---- the end -----------------------------------------------------------------------------------

    async def recover(self, a: Account) -> bool:
        for _ in range(20):
            report = await a.runner.reconcile(trigger="recovery")
            self.count(report)
            self.track(a)
            if report.ok and not report.discrepancies:
                return True
            await asyncio.sleep(0.5)
        return False

    def unequal(self, a: Account) -> list[str]:
        led, acct = a.runner.ledger, self.sim.account(a.key)
        out = []
        for o in acct.orders[a.venue].values():
            mine = led.order(cid_of(o))
            if mine is None:
                if o.is_open:
                    out.append(f"open order {cid_of(o)} not tracked")
                continue
            if mine.state is not SIM_STATE[o.status] or mine.filled != o.executed_qty:
                e = led.orders.get(cid_of(o))
                out.append(f"{cid_of(o)}: {mine.state.value}/{mine.filled} vs {o.status}/{o.executed_qty} "
                           f"(ledger: {e.source}, misses {e.misses}, recheck {e.recheck}, updated "
                           f"{mine.updated_ms}, exchange updated {o.update_time})")
        if not a.futures:
            for asset, (free, locked) in acct.spot.items():
                b = led.balance(asset)
                mine = (b.free, b.locked) if b is not None else (0, 0)
                if mine != (free, locked) and (free + locked) != 0:
                    out.append(f"{asset}: {mine} vs {(free, locked)}")
        return out

    async def run(self) -> int:
        args = self.args
        await self.start()
        until = time.monotonic() + args.minutes * 60
        for a in self.accounts:
            a.stream = a.gw.stream(a.symbols)
            a.tasks = [asyncio.create_task(self.pump(a)), asyncio.create_task(self.loop(a, until)),
                       asyncio.create_task(self.bot(a, until))]
        await asyncio.sleep(min(10.0, args.minutes * 60 / 6))     # warm-up
        gc.collect()
        rss_start = rss_mb()
        snap_start = tracemalloc.take_snapshot() if args.trace_memory else None
        t0 = time.monotonic()
        await self.injector(until)
        for a in self.accounts:
            await asyncio.gather(*a.tasks[1:], return_exceptions=True)
        self.sim.clear_faults()
        self.sim.set_clock_offset(0)
        for a in self.accounts:
            self.sim.set_deliver(a.key, True)
        await asyncio.sleep(1.0)
        recovered = [await self.recover(a) for a in self.accounts]
        # stale owned orders of Correct accounts: one cleanup now that the venue is healthy
        for a in self.accounts:
            self.count(await a.runner.stale_cleanup(), run=False)
            await self.recover(a)
        await asyncio.sleep(1.0)
        for a in self.accounts:
            await self.recover(a)
        self.drain()
        gc.collect()
        rss_end = rss_mb()
        if snap_start is not None:
            diff = tracemalloc.take_snapshot().compare_to(snap_start, "filename")
            groups = collections.Counter()
            for stat in diff:
                name = stat.traceback[0].filename
                group = ("simulator" if "/tradewarden/sim/" in name else "tradewarden" if "/tradewarden/" in name
                         else "ccxt" if "/ccxt/" in name else "aiohttp" if "/aiohttp/" in name else "other")
                groups[group] += stat.size_diff
            print("Python heap growth since warm-up by package (tracemalloc): " +
                  ", ".join(f"{g} {v / 2**20:+.2f} MiB" for g, v in groups.most_common()))
            for stat in tracemalloc.take_snapshot().compare_to(snap_start, "lineno")[:5]:
                print(f"  {stat}")
        from ccxt.async_support.base.exchange import Exchange as CcxtExchange
        live_ccxt = sum(1 for o in gc.get_objects() if isinstance(o, CcxtExchange))
        unequal = {a.i: self.unequal(a) for a in self.accounts}
        lost = sum(len(a.lost) for a in self.accounts)
        biggest = max(len(a.runner.ledger.orders) for a in self.accounts)
        for a in self.accounts:
            await a.stream.aclose()
            a.tasks[0].cancel()
            await a.gw.close()
        await self.sim.stop()

        corrected = sum(self.discrepancies.values())
        n_unequal = sum(1 for v in unequal.values() if v)
        print(f"soak: {args.accounts} accounts ({sum(a.futures for a in self.accounts)} USD-M, "
              f"{sum(a.policy is Policy.OBSERVE_ONLY for a in self.accounts)} ObserveOnly), "
              f"{(time.monotonic() - t0) / 60:.1f} min of faults, seed {args.seed}")
        print(f"faults injected: {sum(self.faults.values())} {dict(sorted(self.faults.items()))}")
        print(f"runs: {self.runs} ({self.run_failures} failed or partial while faults lasted), "
              f"stream events: {self.stream_events}")
        print(f"discrepancies found and corrected: {corrected} {dict(sorted(self.discrepancies.items()))}")
        print(f"accounts recovered to a clean run: {sum(recovered)}/{len(recovered)}")
        print(f"orders lost: {lost}")
        print(f"wrong cancels: {len(self.wrong_cancels)}")
        print(f"requests inside Retry-After: {len(self.inside_retry_after)}")
        print(f"ledgers unequal to the exchange after recovery: {n_unequal}")
        print(f"memory (RSS): {rss_start:.1f} MiB after warm-up, {rss_end:.1f} MiB at the end "
              f"({rss_end - rss_start:+.1f} MiB); largest ledger: {biggest} orders; "
              f"live ccxt instances: {live_ccxt} for {len(self.accounts)} accounts")
        for what, items in (("lost", [c for a in self.accounts for c in a.lost]), ("wrong cancel", self.wrong_cancels),
                            ("inside Retry-After", self.inside_retry_after),
                            ("unequal", [f"{i}: {v[:3]}" for i, v in unequal.items() if v])):
            for item in items[:5]:
                print(f"  {what}: {item}")
        bad = lost or self.wrong_cancels or self.inside_retry_after or n_unequal or not all(recovered)
        return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--accounts", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reconciliation runs")
    p.add_argument("--trace-memory", action="store_true", help="print where memory grew (tracemalloc; slower)")
    args = p.parse_args()
    if args.trace_memory:
        tracemalloc.start()
    return asyncio.run(Soak(args).run())


if __name__ == "__main__":
    sys.exit(main())
