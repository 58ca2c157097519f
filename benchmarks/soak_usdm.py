"""USD-M soak: precision and recall of discrepancy reports on accounts holding positions while prices move.

    .venv/bin/python benchmarks/soak_usdm.py --minutes 3 --accounts 4 [--seed 1] [--interval 1.0]

N USD-M accounts on the simulator (half one-way, half hedge mode), each with open positions, owned
stop-losses (algo orders, some of which trigger as prices move: TRIGGERING -> TRIGGERED -> child fill ->
FINISHED) and take-profits; a bot per account trading out of band (market and limit orders, new and
cancelled stops), prices random-walking on every symbol, the user-data stream on, the real gateway and
core reconciling every --interval seconds (real ccxt over HTTP/WS).

Losses are injected: with the account's bot and the price mover paused, the stream is told not to
deliver while the venue changes the account (a margin transfer in or out, or a trade that moves a
position leg and the wallet); the stream is then on again and the account stays quiet until a
reconciliation reports the change.

Printed: reconciliations, discrepancies by kind, FALSE discrepancies (any report not explained by a
pending injected loss: must be 0), injected losses and how many were found (must be all), algo orders
triggered, the largest price move. Exit 1 when a false discrepancy was reported or a loss was missed.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import random
import secrets
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal

from tradewarden.core import AccountConfig
from tradewarden.service import AccountRunner
from tradewarden.domain import ConnectionState
from tradewarden.gateway import RateBudgets, create_gateway
from tradewarden.sim import Simulator
from tradewarden.sim.engine import SimError

SYMBOLS = {"BTCUSDT": ("BTC/USDT:USDT", Decimal("50000"), "0.01"),
           "ETHUSDT": ("ETH/USDT:USDT", Decimal("3000"), "0.1")}
D = Decimal
RUNS_TO_FIND = 3       # timer runs begun after an injected loss by which it must be reported
HANG_S = 120.0         # a loss still pending this long: the harness stops waiting (counted missed)


@dataclass
class Pending:
    """An injected loss not yet reported: the (kind, entity) pairs a run must report, the ones it may."""
    expected: set
    kind: str
    at: float                    # monotonic time of the injection
    optional: set
    runs: int = 0                # timer runs begun after the injection and ended without finding it all


@dataclass
class Acct:
    i: int
    key: str
    hedge: bool
    gw: object = None
    runner: AccountRunner | None = None
    stream: object = None
    quiet: asyncio.Lock = field(default_factory=asyncio.Lock)   # held while a loss is injected and found
    holds_prices: bool = False
    pending: list = field(default_factory=list)                 # [Pending]
    events: int = 0
    seq: int = 0


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.sim = Simulator(control=False)
        self.accounts: list[Acct] = []
        self.prices_lock = asyncio.Lock()
        self.runs = 0
        self.failed_runs = 0
        self.kinds = collections.Counter()
        self.false: list[str] = []
        self.injected = collections.Counter()
        self.found = collections.Counter()
        self.missed: list[str] = []
        self.max_move = D(0)
        self.errors: list[str] = []
        self.result: dict = {}

    # ---- setup ------------------------------------------------------------------------------------

    def open_book(self, a: Acct) -> None:
        """Positions on both symbols (both legs in hedge mode), owned stop-losses and take-profits."""
        acct = self.sim.account(a.key)
        for market, (_, price, qty) in SYMBOLS.items():
            q = D(qty) * 5
            if a.hedge:
                self.order(a, market, "BUY", q, "LONG")
                self.order(a, market, "SELL", q / 2, "SHORT")
                self.stop(acct, a, market, "SELL", q / 5, price * D("0.97"), "LONG")
                self.stop(acct, a, market, "BUY", q / 5, price * D("1.03"), "SHORT")
            else:
                self.order(a, market, "BUY", q)
                self.stop(acct, a, market, "SELL", q / 5, price * D("0.97"), None, reduce_only=True)
                self.sim.place_order(a.key, "usdm", symbol=market, side="SELL", type="LIMIT", quantity=str(q / 5),
                                     price=str((price * D("1.05")).quantize(D("0.01"))), time_in_force="GTC",
                                     client_order_id=self.cid(a, "tp"), reduce_only=True)

    def cid(self, a: Acct, what: str) -> str:
        a.seq += 1
        return f"tw-{what}-{a.i}-{a.seq}"

    def order(self, a: Acct, market: str, side: str, qty, pside=None):
        return self.sim.place_order(a.key, "usdm", symbol=market, side=side, type="MARKET", quantity=str(qty),
                                    client_order_id=self.cid(a, "mkt"), position_side=pside)

    def stop(self, acct, a: Acct, market: str, side: str, qty, trigger, pside, reduce_only=False):
        try:
            self.sim.exchange.place_algo(acct, symbol=market, side=side, order_type="STOP_MARKET", quantity=str(qty),
                                         trigger_price=str(trigger.quantize(D("0.01"))),
                                         client_algo_id=self.cid(a, "sl"), reduce_only=reduce_only,
                                         position_side=pside)
        except SimError as exc:   # e.g. would trigger at once after a move: the bot's problem
            self.errors.append(f"stop: {exc.msg}")

    async def start(self) -> None:
        await self.sim.start()
        budgets = self.budgets = RateBudgets()
        for i in range(self.args.accounts):
            key = f"soak-usdm-{i}-" + secrets.token_hex(6)
            self.sim.add_account(key, secrets.token_hex(16), futures_balances={"USDT": "100000"})
            a = Acct(i, key, hedge=i % 2 == 1)
            if a.hedge:
                self.sim.exchange.set_dual_side(self.sim.account(key), True)
            self.open_book(a)
            a.gw = create_gateway("binanceusdm", key, self.sim.account(key).secret, self.sim.url, budgets=budgets,
                                  stream_options={"backoff_base_s": 0.1, "backoff_cap_s": 1.0})
            symbols = [s for s, _, _ in SYMBOLS.values()]
            await a.gw.start(symbols)
            a.runner = AccountRunner(a.gw, AccountConfig(symbols=symbols, futures=True, missing_grace_s=1.0,
                                                         stale_timeout_s=3600))
            report = await a.runner.initial_sync()
            assert report.ok, report.error
            a.stream = a.gw.stream(symbols)
            self.accounts.append(a)

    # ---- what runs ----------------------------------------------------------------------------------

    async def pump(self, a: Acct, connected: asyncio.Event) -> None:
        async for ev in a.stream:
            if getattr(ev, "state", None) in (ConnectionState.CONNECTED, ConnectionState.RECONNECTED):
                connected.set()
            a.events += 1
            rep = await a.runner.handle_event(ev)
            if rep is not None:
                self.judge(a, rep)

    async def mover(self, until: float) -> None:
        start = {m: p for m, (_, p, _) in SYMBOLS.items()}
        price = dict(start)
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(0.1, 0.3))
            async with self.prices_lock:
                m = self.rng.choice(list(SYMBOLS))
                price[m] = (price[m] * (1 + D(str(round(self.rng.gauss(0, 0.004), 6))))).quantize(D("0.01"))
                self.max_move = max(self.max_move, abs(price[m] / start[m] - 1))
                self.sim.set_price(m, str(price[m]))

    async def bot(self, a: Acct, until: float) -> None:
        acct = self.sim.account(a.key)
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))
            async with a.quiet:
                m = self.rng.choice(list(SYMBOLS))
                _, _, qty = SYMBOLS[m]
                last = self.sim.exchange.markets["usdm"][m].price
                r = self.rng.random()
                try:
                    if r < 0.3:
                        side = self.rng.choice(["BUY", "SELL"])
                        pside = ("LONG" if side == "BUY" else "SHORT") if a.hedge else None
                        self.order(a, m, side, qty, pside)
                    elif r < 0.5:
                        side = self.rng.choice(["BUY", "SELL"])
                        off = D("0.995") if side == "BUY" else D("1.005")
                        pside = ("LONG" if side == "BUY" else "SHORT") if a.hedge else None
                        self.sim.place_order(a.key, "usdm", symbol=m, side=side, type="LIMIT", quantity=qty,
                                             price=str((last * off).quantize(D("0.01"))), time_in_force="GTC",
                                             client_order_id=self.cid(a, "lim"), position_side=pside)
                    elif r < 0.65:
                        stops = [x for x in acct.algo.values() if x.is_open]
                        if stops:
                            self.sim.exchange.cancel_algo(self.rng.choice(stops))
                    elif r < 0.85:
                        if a.hedge:
                            self.stop(acct, a, m, "SELL", qty, last * D("0.99"), "LONG")
                        else:
                            self.stop(acct, a, m, "SELL", qty, last * D("0.99"), None, reduce_only=True)
                    else:
                        open_ = acct.open_orders("usdm")
                        if open_:
                            o = self.rng.choice(open_)
                            self.sim.exchange.cancel_order(acct, "usdm", o.symbol, order_id=o.order_id)
                except SimError:
                    pass      # margin, reduce-only, would-trigger: a refused bot order changes nothing

    async def injector(self, until: float) -> None:
        while time.monotonic() < until - 5:
            await asyncio.sleep(self.rng.uniform(2.0, 5.0))
            a = self.rng.choice(self.accounts)
            if a.pending:
                continue
            await a.quiet.acquire()               # the bot pauses; released once the loss is found
            # no price move until it is found either: a stop triggered meanwhile would tell the stream the
            # new wallet balance (an absolute value) and the loss would be repaired, not found
            await self.prices_lock.acquire()
            a.holds_prices = True
            if time.monotonic() > until - 5:          # waited past the injection window: stop here
                self.release(a)
                return
            await asyncio.sleep(0.4)          # what was in flight arrives
            self.sim.set_deliver(a.key, False)
            kind = self.rng.choice(["transfer-in", "transfer-out", "trade"])
            # a transfer beyond the balance tolerance (0.01% of the wallet) must be reported; a trade
            # must be reported as its position leg, and its wallet change (fee, realised PnL) only
            # when beyond the tolerance
            expected, optional = {("balance", "USDT")}, set()
            try:
                if kind.startswith("transfer"):
                    amount = D(self.rng.randrange(50, 500))
                    self.sim.adjust_balance(a.key, "USDT", str(amount if kind == "transfer-in" else -amount),
                                            venue="usdm")
                else:
                    m = self.rng.choice(list(SYMBOLS))
                    symbol, _, qty = SYMBOLS[m]
                    pside = self.rng.choice(["LONG", "SHORT"]) if a.hedge else None
                    side = self.rng.choice(["BUY", "SELL"]) if not a.hedge else ("BUY" if pside == "LONG" else "SELL")
                    placed = self.order(a, m, side, qty, pside)
                    expected = {("position", symbol if not a.hedge else f"{symbol} {pside}")}
                    # the wallet moves by its fee and realised PnL (reported beyond the tolerance), and a
                    # balance moved with no event makes the run read history (issue 19 item 2), where the
                    # order itself, born and filled while nothing was delivered, is rightly "unseen"
                    optional = {("balance", "USDT"), ("unseen", placed.client_order_id)}
            finally:
                self.sim.set_deliver(a.key, True)
            self.injected[kind] += 1
            a.pending.append(Pending(expected, kind, time.monotonic(), optional))

    async def loop(self, a: Acct, until: float) -> None:
        """Recall is judged in runs, not seconds: a loss must be reported by one of the first RUNS_TO_FIND
        timer runs begun after it (the first may defer a mismatch too recent to judge, usdm-facts.md B and
        core/reconcile.py ``_defer``; one more closes a history gap). A run that waits for the weight
        window (the accounts share one IP's allowance) is slow, not blind."""
        n = 0
        while time.monotonic() < until or a.pending:
            await asyncio.sleep(self.args.interval * self.rng.uniform(0.8, 1.2))
            began = time.monotonic()
            self.judge(a, await a.runner.reconcile(trigger="timer"))
            if n % 5 == 0:
                self.judge(a, await a.runner.stale_cleanup(), run=False)
            n += 1
            for item in list(a.pending):
                if item.at < began:
                    item.runs += 1
                if item.runs >= RUNS_TO_FIND or time.monotonic() - item.at > HANG_S:
                    self.release(a)
                    led = a.runner.ledger.balance("USDT")
                    self.missed.append(f"account {a.i} {item.kind}: {sorted(item.expected)} not reported by "
                                       f"{item.runs} runs in {time.monotonic() - item.at:.0f} s "
                                       f"(ledger USDT {led.free if led else None} from {a.runner.ledger.balances['USDT'].source}, "
                                       f"venue {self.sim.account(a.key).wallet['USDT']})")
                    a.pending.remove(item)
            if time.monotonic() > until + HANG_S:
                for item in list(a.pending):          # never leave the bot or the prices locked
                    self.missed.append(f"account {a.i} {item.kind}: {sorted(item.expected)} not reported by the end")
                    a.pending.remove(item)
                    self.release(a)
                break

    def judge(self, a: Acct, report, run: bool = True) -> None:
        if run:
            self.runs += 1
            self.failed_runs += not report.ok
        got = {(d.kind, d.entity) for d in report.discrepancies}
        for d in report.discrepancies:
            self.kinds[d.kind] += 1
        explained: set = set()
        for item in list(a.pending):
            explained |= item.optional
            if item.expected & got:
                explained |= item.expected
                item.expected -= got         # a leg and the wallet may be reported by different runs
                if not item.expected:
                    self.found[item.kind] += 1
                    a.pending.remove(item)
                    self.release(a)
        for d in report.discrepancies:
            if (d.kind, d.entity) not in explained:
                self.false.append(f"account {a.i} ({'hedge' if a.hedge else 'one-way'}) {report.trigger}: "
                                  f"{d.kind} {d.entity} local {d.local} exchange {d.exchange} ({d.action})")

    def release(self, a: Acct) -> None:
        if a.holds_prices:
            a.holds_prices = False
            self.prices_lock.release()
        a.quiet.release()

    async def run(self) -> int:
        await self.start()
        until = time.monotonic() + self.args.minutes * 60
        tasks = []
        for a in self.accounts:
            connected = asyncio.Event()
            tasks.append(asyncio.create_task(self.pump(a, connected)))
            await asyncio.wait_for(connected.wait(), 30)
        work = [asyncio.create_task(self.mover(until)), asyncio.create_task(self.injector(until))]
        work += [asyncio.create_task(self.bot(a, until)) for a in self.accounts]
        work += [asyncio.create_task(self.loop(a, until)) for a in self.accounts]
        await asyncio.gather(*work)
        triggered = sum(1 for a in self.accounts for x in self.sim.account(a.key).algo.values()
                        if x.status in ("TRIGGERED", "FINISHED", "REJECTED"))
        for a in self.accounts:
            await a.stream.aclose()
            await a.gw.close()
        for t in tasks:
            t.cancel()
        await self.sim.stop()
        n_injected, n_found = sum(self.injected.values()), sum(self.found.values())
        print(f"soak (USD-M): {len(self.accounts)} accounts ({sum(a.hedge for a in self.accounts)} hedge mode), "
              f"{self.args.minutes} min, seed {self.args.seed}, largest price move {self.max_move:.2%}")
        print(f"reconciliations: {self.runs} ({self.failed_runs} not ok), stream events: "
              f"{sum(a.events for a in self.accounts)}, algo orders triggered: {triggered}")
        spent = [b.snapshot() for b in self.budgets.all()]
        print("weight: " + ", ".join(f"{b['key']} {b['weight_spent']} spent, limit {b['limit']}/min, "
                                     f"{b['waits']} waits for the window ({b['wait_seconds']:.1f} s)" for b in spent))
        print(f"discrepancies reported: {sum(self.kinds.values())} {dict(sorted(self.kinds.items()))}")
        print(f"false discrepancies: {len(self.false)}")
        print(f"injected losses: {n_injected} {dict(sorted(self.injected.items()))}; found: {n_found}; "
              f"missed: {len(self.missed)}")
        precision = 1.0 if not self.kinds else (sum(self.kinds.values()) - len(self.false)) / sum(self.kinds.values())
        recall = 1.0 if not n_injected else n_found / n_injected
        print(f"precision {precision:.3f}, recall {recall:.3f}")
        for item in (self.false[:8] + self.missed[:8]):
            print("  " + item)
        self.result = {"runs": self.runs, "reported": sum(self.kinds.values()), "false": len(self.false),
                       "injected": n_injected, "found": n_found, "missed": len(self.missed), "triggered": triggered,
                       "max_move": float(self.max_move), "detail": self.false[:5] + self.missed[:5]}
        return 1 if self.false or self.missed or n_found != n_injected else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--accounts", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interval", type=float, default=1.0)
    return p


def main() -> int:
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args()
    return asyncio.run(asyncio.wait_for(Soak(args).run(), args.minutes * 60 + 180))


if __name__ == "__main__":
    sys.exit(main())
