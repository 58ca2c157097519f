"""Soak: N accounts on the simulator (real ccxt over HTTP/WS, the real gateway and core), bots
trading on them, random faults injected and cleared for a configurable time; then recovery and
the invariants counted. Prints figures; exits 1 if an invariant was broken.

    .venv/bin/python benchmarks/soak.py --minutes 3 --accounts 5 [--seed 1] [--interval 1.0]

The simulator runs in its own process (spawned) and is driven over its /sim/v1 control API, so the
memory figures are tradewarden's (gateway, ccxt, core) alone. Every --sample seconds the soak prints
RSS, the traced Python heap, live ccxt instances, aiohttp sessions and connectors, asyncio tasks and
ledger sizes; at the end a verdict on memory: the RSS slope over the second half of the run (after
warm-up) in MiB/min. --malloc-trim also prints RSS after glibc's malloc_trim(0) at every sample
(memory the allocator holds but Python freed); run with MALLOC_ARENA_MAX=2 to see arena effects.

Faults: 5xx on any endpoint tradewarden calls, latency beyond the client timeout, a 429 storm with
Retry-After, a 418 ban, clock skew beyond recvWindow, dropped and aborted sockets, expired listen
keys, events not delivered, hostile answers (a body that is not what the venue promises).

Printed: faults injected (by kind), runs, discrepancies found and corrected, orders lost (must be
0), wrong cancels (must be 0: foreign, not stale, or under ObserveOnly), requests sent inside a
Retry-After (must be 0), ledgers unequal to the exchange after recovery (must be 0), memory (RSS)
after warm-up and at the end with a verdict (must be FLAT), and the largest ledger.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import multiprocessing
import random
import secrets
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp

from tradewarden.core import AccountConfig
from tradewarden.service import AccountRunner
from tradewarden.domain import OrderState, Policy
from tradewarden.gateway import RateBudgets, create_gateway

SPOT = ["BTC/USDT", "ETH/USDT"]
USDM = ["BTC/USDT:USDT", "ETH/USDT:USDT"]
STALE_S = 3600
FINISHED = {OrderState.FILLED, OrderState.CANCELED, OrderState.EXPIRED, OrderState.REJECTED}
SIM_STATE = {"NEW": OrderState.OPEN, "PARTIALLY_FILLED": OrderState.PARTIALLY_FILLED,
             "FILLED": OrderState.FILLED, "CANCELED": OrderState.CANCELED, "EXPIRED": OrderState.EXPIRED,
             "EXPIRED_IN_MATCH": OrderState.EXPIRED, "REJECTED": OrderState.REJECTED}
ENDPOINTS = [("GET", "/api/v3/account"), ("GET", "/api/v3/openOrders"), ("GET", "/api/v3/order"),
             ("DELETE", "/api/v3/order"), ("GET", "/fapi/v3/account"), ("GET", "/fapi/v1/openOrders"),
             ("GET", "/fapi/v1/openAlgoOrders"), ("GET", "/fapi/v3/positionRisk"), ("GET", "/fapi/v1/order"),
             ("DELETE", "/fapi/v1/order"), ("POST", "/fapi/v1/listenKey")]
HOSTILE = [("/api/v3/account", {"balances": "none"}), ("/api/v3/openOrders", [{"symbol": "BTCUSDT"}]),
           ("/api/v3/account", '{"balances": [{"asset"'), ("/fapi/v3/positionRisk", {"oops": 1})]


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def census(accounts) -> dict:
    """What could grow without bound: live ccxt instances, aiohttp sessions/connectors, tasks, ledgers."""
    from ccxt.async_support.base.exchange import Exchange as CcxtExchange
    n = collections.Counter()
    for o in gc.get_objects():
        if isinstance(o, CcxtExchange):
            n["ccxt"] += 1
        elif isinstance(o, aiohttp.ClientSession):
            n["sessions"] += 1
        elif isinstance(o, aiohttp.BaseConnector):
            n["connectors"] += 1
    n["tasks"] = len(asyncio.all_tasks())
    return {**n, **ledger_sizes(accounts)}


def ledger_sizes(accounts) -> dict:
    """Orders the accounts' ledgers hold, and how many of them are active."""
    ledgers = [a.ledger for a in accounts if a.ledger is not None]
    return {"ledger": sum(len(led.orders) for led in ledgers),
            "ledger_open": sum(1 for led in ledgers for e in led.orders.values() if e.order.state.active)}


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points, in y per unit of t."""
    if len(points) < 2:
        return 0.0
    mt = sum(t for t, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den if den else 0.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cid_of(o: dict) -> str:
    return o.get("origClientOrderId") or o["clientOrderId"]


def _serve_sim(conn, request_log_size: int) -> None:
    """The simulator's own process: serve until the parent says stop (or goes away)."""
    from tradewarden.sim import Simulator
    
    async def main() -> None:
        sim = Simulator(control=True, request_log_size=request_log_size)
        await sim.start(host="127.0.0.1", port=0)
        conn.send(sim.url)
        try:
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        except EOFError:
            pass
        await sim.stop()
    asyncio.run(main())


class SimError(Exception):
    pass


class RemoteSim:
    """The simulator in a spawned child process, driven over its /sim/v1 HTTP control API."""

    def __init__(self, request_log_size: int):
        self.request_log_size = request_log_size
        self.url = ""
        self.proc = None
        self.conn = None
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_sim, args=(child, self.request_log_size), daemon=True)
        self.proc.start()
        if not await asyncio.get_running_loop().run_in_executor(None, self.conn.poll, 60):
            self.proc.kill()
            raise RuntimeError("the simulator process did not start")
        self.url = self.conn.recv()
        self.http = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        self.conn.send("stop")
        await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 10)

    async def call(self, method: str, path: str, body: dict | None = None, **query):
        async with self.http.request(method, self.url + "/sim/v1" + path, json=body,
                                     params={k: v for k, v in query.items() if v is not None}) as r:
            data = await r.json()
            if r.status >= 300:
                raise SimError(f"{method} {path}: {r.status} {data}")
            return data

    async def add_fault(self, **fault) -> dict:
        return await self.call("POST", "/faults", {k: v for k, v in fault.items() if v is not None})

    async def clear_faults(self) -> None:
        await self.call("DELETE", "/faults")

    async def account(self, key: str) -> dict:
        return await self.call("GET", f"/accounts/{key}")

    async def orders(self, key: str, venue: str) -> dict[int, dict]:
        return {o["orderId"]: o for o in await self.call("GET", f"/accounts/{key}/orders", venue=venue)}

    async def set_deliver(self, key: str, deliver: bool) -> None:
        await self.call("POST", f"/accounts/{key}/stream", {"deliver": deliver})


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
    tracked: dict = field(default_factory=dict)   # owned client id -> finished when last seen
    lost: dict = field(default_factory=dict)        # client id -> how it was lost
    seq: int = 0
    name: str = ""                                 # the TradingAccount's (operator soak)
    restored: object = None                        # the ledger read back from status (operator soak)

    @property
    def ledger(self):
        return self.runner.ledger if self.runner is not None else self.restored

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
        self.sim = RemoteSim(request_log_size=200_000)
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
        self.samples: list[dict] = []
        self.t_start = 0.0
        self.result: dict = {}

    # ---- setup ---------------------------------------------------------------------------------

    async def new_account(self, i: int) -> Account:
        """Account i on the simulator (every second one USD-M, every third ObserveOnly), seeded with a
        stale owned order and a foreign one."""
        key, secret = f"soak-{i}-" + secrets.token_hex(8), secrets.token_hex(32)
        await self.sim.call("POST", "/accounts", {"apiKey": key, "secret": secret,
                                                  "balances": {"USDT": "1000000", "BTC": "10", "ETH": "100"},
                                                  "futuresBalances": {"USDT": "1000000"}})
        a = Account(i, key, secret, futures=i % 2 == 1,
                    policy=Policy.OBSERVE_ONLY if i % 3 == 2 else Policy.CORRECT, name=f"soak-{i}")
        await self.place(a, "tw", stale=True)
        await self.place(a, "manual")
        return a

    async def start(self) -> None:
        for i in range(self.args.accounts):
            a = await self.new_account(i)
            key, secret = a.key, a.secret
            a.gw = create_gateway("binanceusdm" if a.futures else "binance", key, secret, self.sim.url,
                                  budgets=self.budgets,
                                  stream_options={"backoff_base_s": 0.1, "backoff_cap_s": 2.0,
                                                  "connect_timeout_s": 5.0})
            a.gw._rest.timeout = 3000
            await a.gw.start(a.symbols)
            a.runner = AccountRunner(a.gw, AccountConfig(symbols=a.symbols, policy=a.policy, futures=a.futures,
                                                         stale_timeout_s=STALE_S, missing_grace_s=1.0,
                                                         retention_s=self.args.retention))
            await a.runner.initial_sync()
            self.track(a)
            self.accounts.append(a)

    async def place(self, a: Account, prefix: str, stale: bool = False, symbol: str = "BTCUSDT"):
        a.seq += 1
        price = "30000" if symbol == "BTCUSDT" else "2000"
        price = str(int(price) - self.rng.randrange(0, 500))
        body = {"venue": a.venue, "symbol": symbol, "side": "BUY", "type": "LIMIT", "quantity": "0.01",
                "price": price, "timeInForce": "GTC", "clientOrderId": f"{prefix}-{a.seq}"}
        if stale:   # backdated beyond the stale timeout
            body["time"] = int(time.time() * 1000) - (STALE_S + 600) * 1000
        try:
            return await self.sim.call("POST", f"/accounts/{a.key}/orders", body)
        except SimError as exc:  # a rejected bot order is the bot's problem
            self.errors.append(f"place: {exc}")
            return None

    def track(self, a: Account) -> None:
        """No owned order ever drops out of tracking or becomes LOST (a finished one may be purged
        after the retention: that is the ledger's memory bound, not a loss)."""
        led = a.ledger
        if led is None:
            return
        by_cid = {e.order.client_order_id: e for e in led.orders.values()}   # the soak's ids are never reused
        for cid, finished in list(a.tracked.items()):
            e = by_cid.get(cid)
            o = e.order if e is not None else None
            if o is None:
                if finished:
                    del a.tracked[cid]
                else:
                    self.left_ledger(a, cid)
            elif o.state is OrderState.LOST:
                a.lost.setdefault(cid, f"marked lost (misses {getattr(e, 'misses', '?')}, updated {o.updated_ms})")
        for entry in led.orders.values():
            if led.is_owned(entry.order.client_order_id):
                a.tracked[entry.order.client_order_id] = entry.order.state in FINISHED

    def left_ledger(self, a: Account, cid: str) -> None:
        """An owned order last seen active is gone from the ledger. Here every change is seen (the soak
        tracks after each run and event), so that is a loss."""
        del a.tracked[cid]
        a.lost.setdefault(cid, "left the ledger while active")

    async def confirm_losses(self) -> None:
        """Hook: settle what could only be suspected while running (the operator soak)."""

    # ---- what runs ---------------------------------------------------------------------------------

    async def bot(self, a: Account, until: float) -> None:
        """Trading on the account out of band: new orders (some stale), fills, foreign cancels.
        The open book stays near --book orders: at --book the bot only fills and cancels (the
        foreign and ObserveOnly orders nobody else ends), so what the ledgers hold is bounded by
        the workload and any growth left is tradewarden's."""
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))
            acct = await self.sim.account(a.key)
            r = self.rng.random()
            open_orders = [o for o in acct["openOrders"] if o["venue"] == a.venue]
            full = len(open_orders) >= self.args.book
            try:
                if not open_orders or (r < 0.35 and not full):
                    await self.place(a, "tw" if self.rng.random() < 0.8 else "manual",
                                     stale=self.rng.random() < 0.2, symbol=self.rng.choice(["BTCUSDT", "ETHUSDT"]))
                elif r < 0.6:
                    o = self.rng.choice(open_orders)
                    fill = {"venue": a.venue} if self.rng.random() < 0.5 else {"venue": a.venue, "quantity": "0.002"}
                    await self.sim.call("POST", f"/accounts/{a.key}/orders/{o['orderId']}/fill", fill)
                elif r < 0.75 or full:
                    o = self.rng.choice(open_orders)
                    await self.sim.call("POST", f"/accounts/{a.key}/orders/{o['orderId']}/cancel", {"venue": a.venue})
                elif not a.futures and r < 0.85:
                    await self.sim.call("POST", f"/accounts/{a.key}/balances",
                                        {"asset": "USDT", "delta": str(self.rng.randrange(1, 100))})
            except SimError:   # the order finished meanwhile
                pass

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
            f = None
            if kind == "5xx":
                method, path = self.rng.choice(ENDPOINTS)
                f = await sim.add_fault(method=method, path=path, status=self.rng.choice([500, 502, 503, 504]))
            elif kind == "5xx-processed-cancel":
                f = await sim.add_fault(method="DELETE", path=self.rng.choice(["/api/v3/order", "/fapi/v1/order"]),
                                        status=503, processed=True, count=3)
            elif kind == "timeout":
                method, path = self.rng.choice(ENDPOINTS)
                f = await sim.add_fault(method=method, path=path, latencyMs=3500)
            elif kind == "429":
                ra = self.rng.choice([1, 2])
                f = await sim.add_fault(path="*", status=429, retryAfter=ra, count=self.rng.randrange(2, 8))
                self.retry_after_by_fault[f["id"]] = ra
            elif kind == "418":
                ra = self.rng.choice([2, 3])
                f = await sim.add_fault(path="*", status=418, retryAfter=ra, count=1)
                self.retry_after_by_fault[f["id"]] = ra
            elif kind == "hostile":
                path, body = self.rng.choice(HOSTILE)
                f = await sim.add_fault(method="GET", path=path, body=body, count=self.rng.randrange(1, 4))
            elif kind == "skew":
                await self.skew()
            elif kind in ("drop", "abort"):
                await sim.call("POST", "/streams/drop", {"abort": kind == "abort"})
            elif kind == "expire":
                await sim.call("POST", "/listen-keys/expire", {})
            elif kind == "no-delivery":
                victim = self.rng.choice(self.accounts)
                await sim.set_deliver(victim.key, False)
            await asyncio.sleep(hold)
            if f is not None:   # one fault at a time: clearing all clears this one
                await sim.clear_faults()
            if kind == "no-delivery":
                await sim.set_deliver(victim.key, True)
            await self.drain()

    async def skew(self) -> None:
        """Our clock off beyond recvWindow (the venue's stays monotonic): ccxt signs with its clock
        minus options["timeDifference"]; left for tradewarden's clock re-sync to repair."""
        victim = self.rng.choice(self.accounts)
        victim.gw._rest.options["timeDifference"] = self.rng.choice([-1, 1]) * self.rng.randrange(12_000, 30_000)

    async def drain(self) -> None:
        """Examine (and drop) the simulator's request log: wrong cancels, requests inside Retry-After."""
        log = await self.sim.call("DELETE", "/requests")
        by_key = {a.key: a for a in self.accounts}
        orders: dict[str, dict[int, dict]] = {}
        for r in log:
            if not r["path"].startswith(("/api/", "/fapi/")):
                continue
            t = r.get("wall", r["time"])     # the machine's clock: skew faults move the venue's
            for venue, start, end in self.windows:    # spot and USD-M are separate hosts and limits
                if venue == r["venue"] and start + 150 < t < end:
                    at = time.strftime("%H:%M:%S", time.localtime(t / 1000))
                    who = by_key[r["key"]].i if r["key"] in by_key else "?"
                    self.inside_retry_after.append(f"{r['method']} {r['path']} at {at}, {t - start} ms after a "
                                                   f"limit (account {who})")
                    break
            if r["status"] in (429, 418):
                ra = self.retry_after_by_fault.get(r.get("fault"), 0)
                if ra:
                    self.windows.append((r["venue"], t, t + int(ra * 1000) - 50))
            a = by_key.get(r["key"])
            if a is not None and r["method"] == "DELETE" and "listenKey" not in r["path"]:
                if a.key not in orders:
                    orders[a.key] = await self.sim.orders(a.key, a.venue)
                self.check_cancel(a, r, orders[a.key])
        now = max((r.get("wall", r["time"]) for r in log), default=0)
        self.windows = [w for w in self.windows if w[2] > now - 1000]

    def check_cancel(self, a: Account, r: dict, orders: dict[int, dict]) -> None:
        if a.policy is Policy.OBSERVE_ONLY:
            self.wrong_cancels.append(f"ObserveOnly account {a.i} sent {r['method']} {r['path']}")
            return
        if not r["path"].endswith("/order"):
            self.wrong_cancels.append(f"cancel-all outside an emergency stop: {r['path']}")
            return
        p = r["params"]
        o = orders.get(int(p["orderId"])) if p.get("orderId") else None
        cid = cid_of(o) if o is not None else p.get("origClientOrderId", "")
        if not cid.startswith("tw-"):
            self.wrong_cancels.append(f"foreign order {cid} cancelled")
        elif o is not None and o["time"] > r["time"] - STALE_S * 1000 + 30_000:   # 30 s: clock skew faults
            self.wrong_cancels.append(f"order {cid} cancelled before it was stale")

    async def sampler(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.args.sample)

    def measure(self) -> dict:
        """One memory sample of what the soak measures (here: this process, which runs the gateways
        and the cores)."""
        gc.collect()
        row = {"rss": rss_mb()}
        if self.args.malloc_trim:
            malloc_trim()
            row["rss_after_trim"] = rss_mb()
        if tracemalloc.is_tracing():
            row["py_heap"] = tracemalloc.get_traced_memory()[0] / 2**20
            row["tracemalloc_itself"] = tracemalloc.get_tracemalloc_memory() / 2**20
        return {**row, **census(self.accounts)}

    def sample(self) -> None:
        row = {"t": time.monotonic() - self.t_start, **self.measure()}
        self.samples.append(row)
        cols = [f"t={row['t']:6.0f}s"] + [f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in row.items() if k != "t"]
        print("  sample " + " ".join(cols) + "  (MiB)", flush=True)

    def verdict(self) -> tuple[str, bool | None]:
        """Flat if RSS in the steady state grows by less than 1 MiB/min. The steady state starts when
        the ledgers stop filling: finished orders are purged after --retention seconds, so before
        retention + 30 s memory grows by design. None: the run was too short to judge."""
        rows = self.samples
        warm = self.args.retention + 30
        steady = [r for r in rows if r["t"] >= warm]
        early = [r for r in rows if r["t"] <= warm]
        if len(steady) < 4:
            return (f"too short to judge: the ledgers fill for --retention ({self.args.retention} s) + 30 s, "
                    f"then at least 4 samples are needed (have {len(steady)}); run longer"), None
        s_early = slope([(r["t"] / 60, r["rss"]) for r in early]) if len(early) > 1 else 0.0
        s_steady = slope([(r["t"] / 60, r["rss"]) for r in steady])
        late = steady[len(steady) // 2:]
        text = (f"RSS slope while the ledgers fill (t <= {warm} s) {s_early:+.2f} MiB/min, steady state "
                f"{s_steady:+.2f} MiB/min ({steady[0]['rss']:.1f} -> {steady[-1]['rss']:.1f} MiB over the last "
                f"{(steady[-1]['t'] - steady[0]['t']) / 60:.1f} min; its second half "
                f"{slope([(r['t'] / 60, r['rss']) for r in late]):+.2f} MiB/min, "
                f"{min(r['rss'] for r in late):.1f}..{max(r['rss'] for r in late):.1f} MiB)")
        if "py_heap" in rows[0]:
            text += f"; Python heap steady state {slope([(r['t'] / 60, r['py_heap']) for r in steady]):+.2f} MiB/min"
        if "rss_after_trim" in rows[0]:
            text += (f"; RSS after malloc_trim steady state "
                     f"{slope([(r['t'] / 60, r['rss_after_trim']) for r in steady]):+.2f} MiB/min")
        return text, s_steady < 1.0

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

    async def unequal(self, a: Account) -> list[str]:
        led = a.ledger
        out = []
        by_cid = {e.order.client_order_id: e.order for e in led.orders.values()}
        for o in (await self.sim.orders(a.key, a.venue)).values():
            mine = by_cid.get(cid_of(o))
            if mine is None:
                if o["status"] in ("NEW", "PARTIALLY_FILLED"):
                    out.append(f"open order {cid_of(o)} not tracked")
                continue
            if mine.state is not SIM_STATE[o["status"]] or mine.filled != Decimal(o["executedQty"]):
                e = led.orders.get(cid_of(o))
                out.append(f"{cid_of(o)}: {mine.state.value}/{mine.filled} vs {o['status']}/{o['executedQty']} "
                           f"(ledger: {e.source}, misses {e.misses}, recheck {e.recheck}, updated "
                           f"{mine.updated_ms}, exchange updated {o['updateTime']})")
        if not a.futures:
            for asset, b in (await self.sim.account(a.key))["balances"].items():
                free, locked = Decimal(b["free"]), Decimal(b["locked"])
                mb = led.balance(asset)
                mine = (mb.free, mb.locked) if mb is not None else (0, 0)
                if mine != (free, locked) and (free + locked) != 0:
                    out.append(f"{asset}: {mine} vs {(free, locked)}")
        return out

    # ---- the phases (the operator soak replaces some) ----------------------------------------------

    async def setup(self) -> None:
        await self.sim.start()
        self.t_start = time.monotonic()
        print(f"simulator in its own process (pid {self.sim.proc.pid}) at {self.sim.url}; "
              f"this process: pid {multiprocessing.current_process().pid}", flush=True)
        await self.start()

    def launch(self, until: float) -> None:
        for a in self.accounts:
            a.stream = a.gw.stream(a.symbols)
            a.tasks = [asyncio.create_task(self.pump(a)), asyncio.create_task(self.loop(a, until)),
                       asyncio.create_task(self.bot(a, until))]

    async def settle(self) -> list[bool]:
        """Faults cleared: every account back to a clean run; stale owned orders of Correct accounts
        get one cleanup now that the venue is healthy."""
        for a in self.accounts:
            await asyncio.gather(*a.tasks[1:], return_exceptions=True)
        recovered = [await self.recover(a) for a in self.accounts]
        for a in self.accounts:
            self.count(await a.runner.stale_cleanup(), run=False)
            await self.recover(a)
        await asyncio.sleep(1.0)
        for a in self.accounts:
            await self.recover(a)
        return recovered

    async def teardown(self) -> None:
        for a in self.accounts:
            await a.stream.aclose()
            a.tasks[0].cancel()
            await a.gw.close()
        await self.sim.stop()

    def describe_memory(self, rss_start: float, rss_end: float) -> str:
        live = self.samples[-1]
        biggest = max(len(a.ledger.orders) for a in self.accounts)
        return (f"memory (RSS, this process only): {rss_start:.1f} MiB after warm-up, {rss_end:.1f} MiB at the "
                f"end ({rss_end - rss_start:+.1f} MiB); largest ledger: {biggest} orders; live ccxt instances: "
                f"{live['ccxt']}, aiohttp sessions {live['sessions']}, connectors {live['connectors']}, "
                f"tasks {live['tasks']} for {len(self.accounts)} accounts")

    def describe_runs(self) -> str:
        return (f"runs: {self.runs} ({self.run_failures} failed or partial while faults lasted), "
                f"stream events: {self.stream_events}")

    async def run(self) -> int:
        args = self.args
        await self.setup()
        until = time.monotonic() + args.minutes * 60
        self.launch(until)
        sampler = asyncio.create_task(self.sampler())
        await asyncio.sleep(min(10.0, args.minutes * 60 / 6))     # warm-up
        rss_start = self.measure()["rss"]
        snap_start = self.snapshot()
        t0 = time.monotonic()
        try:
            await self.injector(until)
            await self.sim.clear_faults()
            for a in self.accounts:
                await self.sim.set_deliver(a.key, True)
            await asyncio.sleep(1.0)
            recovered = await self.settle()
            await self.drain()
            sampler.cancel()
            self.sample()
            rss_end = self.samples[-1]["rss"]
            if snap_start is not None:
                self.heap_growth(snap_start)
            unequal = {a.i: await self.unequal(a) for a in self.accounts}
            await self.confirm_losses()
            lost = sum(len(a.lost) for a in self.accounts)
            memory = self.describe_memory(rss_start, rss_end)
        finally:
            sampler.cancel()
            await self.teardown()
        verdict, flat = self.verdict()

        corrected = sum(self.discrepancies.values())
        lost_items = [f"account {a.i} {cid}: {why}" for a in self.accounts for cid, why in a.lost.items()]
        n_unequal = sum(1 for v in unequal.values() if v)
        print(f"soak: {args.accounts} accounts ({sum(a.futures for a in self.accounts)} USD-M, "
              f"{sum(a.policy is Policy.OBSERVE_ONLY for a in self.accounts)} ObserveOnly), "
              f"{(time.monotonic() - t0) / 60:.1f} min of faults, seed {args.seed}")
        print(f"faults injected: {sum(self.faults.values())} {dict(sorted(self.faults.items()))}")
        print(self.describe_runs())
        print(f"discrepancies found and corrected: {corrected} {dict(sorted(self.discrepancies.items()))}")
        print(f"accounts recovered to a clean run: {sum(recovered)}/{len(recovered)}")
        print(f"orders lost: {lost}")
        print(f"wrong cancels: {len(self.wrong_cancels)}")
        print(f"requests inside Retry-After: {len(self.inside_retry_after)}")
        print(f"ledgers unequal to the exchange after recovery: {n_unequal}")
        print(memory)
        print(f"memory verdict: {'INCONCLUSIVE' if flat is None else 'FLAT' if flat else 'GROWING'}: {verdict}")
        for what, items in (("lost", lost_items), ("wrong cancel", self.wrong_cancels),
                            ("inside Retry-After", self.inside_retry_after),
                            ("unequal", [f"{i}: {v[:3]}" for i, v in unequal.items() if v])):
            for item in items[:5]:
                print(f"  {what}: {item}")
        self.result = {"faults": sum(self.faults.values()), "fault_kinds": len(self.faults), "runs": self.runs,
                       "discrepancies": corrected, "recovered": sum(recovered), "accounts": len(recovered),
                       "lost": lost, "wrong_cancels": len(self.wrong_cancels),
                       "inside_retry_after": len(self.inside_retry_after), "unequal": n_unequal, "memory_flat": flat,
                       "detail": {"lost": lost_items[:5], "wrong_cancels": self.wrong_cancels[:5],
                                  "inside_retry_after": self.inside_retry_after[:5],
                                  "unequal": {i: v[:3] for i, v in unequal.items() if v}}}
        bad = lost or self.wrong_cancels or self.inside_retry_after or n_unequal or not all(recovered) or flat is False
        return 1 if bad else 0

    def snapshot(self):
        return tracemalloc.take_snapshot() if self.args.trace_memory else None

    def heap_growth(self, snap_start) -> None:
        diff = tracemalloc.take_snapshot().compare_to(snap_start, "filename")
        groups = collections.Counter()
        for stat in diff:
            name = stat.traceback[0].filename
            group = ("tradewarden" if "/tradewarden/" in name else "ccxt" if "/ccxt/" in name
                     else "aiohttp" if "/aiohttp/" in name else "other")
            groups[group] += stat.size_diff
        print("Python heap growth since warm-up by package (tracemalloc): " +
              ", ".join(f"{g} {v / 2**20:+.2f} MiB" for g, v in groups.most_common()))
        for stat in tracemalloc.take_snapshot().compare_to(snap_start, "lineno")[:5]:
            print(f"  {stat}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0,
                   help="minutes of faults (the memory verdict needs the ledgers' retention + 30 s, then 40 s)")
    p.add_argument("--accounts", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reconciliation runs")
    p.add_argument("--retention", type=int, default=60,
                   help="seconds finished orders stay in the ledger (the operator's default is 86400: a soak "
                        "shorter than that would measure the ledger filling up by design)")
    p.add_argument("--book", type=int, default=20,
                   help="open orders per account the bots keep the book at (at it they only fill and cancel)")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    p.add_argument("--trace-memory", action="store_true",
                   help="trace the Python heap (tracemalloc; slower): sampled total and where it grew")
    p.add_argument("--malloc-trim", action="store_true",
                   help="at every sample also print RSS after glibc malloc_trim(0)")
    return p


def main() -> int:
    args = build_parser().parse_args()
    if args.trace_memory:
        tracemalloc.start()
    return asyncio.run(Soak(args).run())


if __name__ == "__main__":
    sys.exit(main())
