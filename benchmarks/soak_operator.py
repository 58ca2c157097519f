"""Soak through the whole operator: `tradewarden run` (kopf, the Kubernetes client, status writes,
Events, telemetry, the gateways and cores) on the real kube-apiserver, N TradingAccounts on the
simulator (its own process), the same bots and random faults as soak.py. Prints figures; exits 1 if
an invariant was broken.

    .venv/bin/python benchmarks/soak_operator.py --minutes 30 --accounts 5 [--seed 1]

What it measures is the operator process as deployed: its RSS (from /proc) every --sample seconds,
with the status it keeps (bytes of all accounts' status) and the ledgers read back from their checkpoints. The
invariants come from outside the operator, as a user would see them: the simulator's request log
(no foreign or early cancel, no write under ObserveOnly, nothing inside a Retry-After), the ledgers
in the checkpoints (no owned order lost, equal to the exchange after recovery), and the conditions (every
account Ready after the faults clear). Runs and discrepancies are the operator's own status counters.

Faults are soak.py's, except clock skew: here the venue's clock jumps (the simulator's /sim/v1/clock)
rather than ccxt's offset inside this process. Uses $KUBECONFIG when it reaches a cluster, else the
project's local control plane (`tradewarden testenv`).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from bench_controller import ROOT, api, kubeconfig, proc_cpu_mem, sh
from soak import SPOT, STALE_S, USDM, Account, Soak, ledger_sizes

from tests.controller.conftest import Operator
from tradewarden.controller import checkpoint
from tradewarden.core.ledger import Ledger, LedgerFormatError
from tradewarden.models import ANNOTATION_RECONCILE_REQUESTED_AT

GROUP, VERSION, PLURAL = "tradewarden.io", "v1alpha1", "tradingaccounts"

# --trace-memory: the operator runs under tracemalloc; on SIGUSR1 it writes where its Python heap grew
# since the first SIGUSR1 (the end of the warm-up) to $TW_HEAP_REPORT. Diagnostics, not the product.
TRACED = """
import os, signal, sys, tracemalloc
tracemalloc.start(int(os.environ.get("TW_HEAP_FRAMES", "1")))
base = []
def report(*_):
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    if not base:
        base.append(snap)
        return
    out = os.environ["TW_HEAP_REPORT"]
    with open(out + ".part", "w") as fh:
        cur, peak = tracemalloc.get_traced_memory()
        fh.write(f"traced heap now {cur / 2**20:.1f} MiB (peak {peak / 2**20:.1f})\\n")
        for group in ("filename", "lineno"):
            for stat in snap.compare_to(base[0], group)[:12]:
                fh.write(f"  {stat}\\n")
        census(fh)
    os.replace(out + ".part", out)
def census(fh):
    # live objects that could pile up (ccxt instances, WebSocket and HTTP machinery) and, for the
    # kinds with many, what holds the oldest
    import gc, types, collections
    gc.collect()
    kinds = ("Exchange", "ZLibDecompressor", "ZLibCompressor", "WebSocketWriter", "WebSocketReader",
             "ClientWebSocketResponse", "ClientResponse",
             "ClientSession", "TCPConnector", "Client", "Task", "Future")
    found = collections.defaultdict(list)
    for o in gc.get_objects():
        for k in type(o).__mro__:
            if k.__name__ in kinds:
                found[k.__name__].append(o)
                break
    fh.write("live: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(found.items())) + "\\n")
    ignore = {id(found)} | {id(v) for v in found.values()}
    for kind, objs in sorted(found.items()):
        if len(objs) <= 6 or kind in ("Task", "Future"):
            continue
        for obj in objs[:2]:
            chain, cur = [], obj
            seen = set(ignore) | {id(obj)}
            for _ in range(10):
                refs = [r for r in gc.get_referrers(cur) if id(r) not in seen
                        and not isinstance(r, (types.FrameType, types.CoroutineType))]
                if not refs:
                    break
                cur = refs[0]
                seen.add(id(cur))
                desc = type(cur).__name__
                if isinstance(cur, dict):
                    desc += "{" + ",".join(map(str, list(cur)[:5])) + "}"
                chain.append(desc)
            fh.write(f"  a {kind} is held by: " + " <- ".join(chain) + "\\n")
signal.signal(signal.SIGUSR1, report)
from tradewarden.cli import main
sys.exit(main(sys.argv[1:]))
"""


# the ledgers are read back from the checkpoints: written every 5 s (default 30), so the invariants' slack
# for a ledger that lags the venue stays what it was when the ledger was in status
CHECKPOINT_ENV = {checkpoint.INTERVAL_ENV: "5"}


class TracedOperator(Operator):
    """The operator under tracemalloc (see TRACED)."""

    def __init__(self, *args, report: pathlib.Path, **kw) -> None:
        super().__init__(*args, **kw)
        self.report = report

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, PYTHONUNBUFFERED="1", TW_HEAP_REPORT=str(self.report),
                   **self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRACED, "run", "--standalone", "-n", self.namespace, "--metrics-port", "0",
             "--liveness", "off"], stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

    def heap_report(self) -> str:
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(120):
            time.sleep(0.5)
            if self.report.exists():
                return self.report.read_text()
        return "(no heap report from the operator)"


class OperatorSoak(Soak):
    def __init__(self, args):
        super().__init__(args)
        self.kc = ""
        self.ns = "tw-soak-" + uuid.uuid4().hex[:6]
        self.op: Operator | None = None
        self.custom = None
        self.status: dict[str, dict] = {}
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="tw-soak-"))
        self.stale_cancelled = 0
        self.suspects: list[tuple[Account, str, int]] = []
        self.purged_unseen = 0      # finished and purged between two status reads (not a loss)
        self.clock_offset = 0       # how far the venue's clock is ahead of ours (skew faults), ms

    # ---- setup: TradingAccounts served by `tradewarden run` ---------------------------------------

    async def start(self) -> None:
        self.kc = kubeconfig()
        sh(self.kc, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
        sh(self.kc, "wait", "--for", "condition=established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
        sh(self.kc, "create", "namespace", self.ns)
        self.custom, self.core = api(self.kc)
        docs = []
        for i in range(self.args.accounts):
            a = await self.new_account(i)
            docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{a.name}-creds"},
                         "stringData": {"apiKey": a.key, "secret": a.secret}})
            docs.append({"apiVersion": f"{GROUP}/{VERSION}", "kind": "TradingAccount", "metadata": {"name": a.name},
                         "spec": {"exchange": "binanceusdm" if a.futures else "binance", "endpoint": self.sim.url,
                                  "symbols": USDM if a.futures else SPOT, "policy": a.policy.value,
                                  "credentialsSecretRef": {"name": f"{a.name}-creds"},
                                  "reconciliation": {"intervalSeconds": self.args.interval_s},
                                  "staleOrders": {"timeoutSeconds": STALE_S,
                                                  "checkIntervalSeconds": self.args.stale_check_s},
                                  "retention": {"finishedOrdersSeconds": self.args.retention}}})
            self.accounts.append(a)
        sh(self.kc, "apply", "-n", self.ns, "-f", "-",
           input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        if self.args.trace_memory:
            self.op = TracedOperator(self.kc, self.ns, self.tmp / "operator.log", report=self.tmp / "heap.txt",
                                     env=CHECKPOINT_ENV)
        else:
            self.op = Operator(self.kc, self.ns, self.tmp / "operator.log", env=CHECKPOINT_ENV)
        self.op.start()
        print(f"operator pid {self.op.proc.pid}, namespace {self.ns}, log {self.tmp / 'operator.log'}", flush=True)
        deadline = time.monotonic() + 300
        while not all(self.condition(a, "Ready") == "True" for a in self.accounts):
            if self.op.proc.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.op.proc.returncode}): {self.op.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"accounts not Ready after 300 s: "
                                   f"{[(a.name, self.condition(a, 'Ready')) for a in self.accounts]}")
            await asyncio.sleep(1.0)
            self.refresh()
        for a in self.accounts:
            self.track(a)

    def refresh(self) -> None:
        """Read every account's status, and its ledger from the restart checkpoint as the operator keeps it."""
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]
        self.status = {o["metadata"]["name"]: o.get("status") or {} for o in items}
        cms = {cm.metadata.name: cm for cm in self.core.list_namespaced_config_map(
            self.ns, label_selector="app.kubernetes.io/component=checkpoint").items}
        for a in self.accounts:
            cm = cms.get(checkpoint.name_for(a.name))
            if cm is None:
                continue
            try:
                payload = checkpoint.payload_of({"binaryData": cm.binary_data or {}})
                if payload is not None:
                    a.restored = Ledger.load(checkpoint.decode(payload))
            except (LedgerFormatError, checkpoint.CheckpointError) as exc:
                self.errors.append(f"{a.name}: ledger {exc}")
        metrics = [s.get("metrics", {}) for s in self.status.values()]
        self.runs = sum(int(m.get("runs", 0)) for m in metrics)
        self.run_failures = sum(int(m.get("failures", 0)) for m in metrics)
        total, bal, order = (sum(int(m.get(k, 0)) for m in metrics)
                             for k in ("discrepanciesTotal", "balanceMismatches", "orderMismatches"))
        self.discrepancies = collections.Counter(balance=bal, order=order, other=total - bal - order)
        self.stale_cancelled = sum(int(m.get("staleOrdersCancelled", 0)) for m in metrics)

    def condition(self, a: Account, type_: str) -> str:
        for c in self.status.get(a.name, {}).get("conditions", []):
            if c.get("type") == type_:
                return c.get("status", "")
        return ""

    # ---- what runs: only the bots (the operator does the rest) ----------------------------------------

    def launch(self, until: float) -> None:
        for a in self.accounts:
            a.tasks = [asyncio.create_task(self.bot(a, until))]

    async def skew(self) -> None:
        """Our clock falls behind the venue's beyond recvWindow: the venue's clock jumps 12-30 s ahead
        (never back: a venue's timestamps are monotonic; the operator's own clock cannot be moved from
        here, soak.py covers both directions in process). The operator must re-measure its offset.
        At most 90 s in all, so retention and staleness stay meaningful; beyond it, a socket drop."""
        if self.clock_offset > 60_000:
            self.faults["skew"] -= 1
            self.faults["drop"] += 1
            await self.sim.call("POST", "/streams/drop", {"abort": False})
            return
        self.clock_offset += self.rng.randrange(12_000, 30_000)
        await self.sim.call("POST", "/clock", {"offsetMs": self.clock_offset})

    def measure(self) -> dict:
        """The operator process: RSS and CPU seconds, the status it keeps, the ledgers in it."""
        cpu, rss = proc_cpu_mem(self.op.proc.pid)
        self.refresh()
        for a in self.accounts:
            self.track(a)
        return {"rss": rss, "cpu_s": cpu,
                "status_kib": sum(len(json.dumps(s)) for s in self.status.values()) / 1024,
                **ledger_sizes(self.accounts),
                "ready": sum(self.condition(a, "Ready") == "True" for a in self.accounts),
                "runs": self.runs}

    # ---- the end --------------------------------------------------------------------------------------

    async def settle(self) -> list[bool]:
        """Faults cleared: ask each account for a run (the reconcile annotation) until one finds nothing
        and the account is Ready; the Correct accounts' stale cleanup runs on its own timer."""
        await asyncio.gather(*(t for a in self.accounts for t in a.tasks), return_exceptions=True)
        await asyncio.sleep(self.args.stale_check_s + 2)
        recovered = []
        for a in self.accounts:
            ok = False
            for attempt in range(10):
                stamp = datetime.datetime.now(datetime.timezone.utc).isoformat() + f"#{attempt}"
                sh(self.kc, "annotate", "-n", self.ns, "--overwrite", f"{PLURAL}.{GROUP}/{a.name}",
                   f"{ANNOTATION_RECONCILE_REQUESTED_AT}={stamp}")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    self.refresh()
                    if self.status.get(a.name, {}).get("lastHandledReconcileAt") == stamp:
                        break
                last = self.status.get(a.name, {}).get("lastReconciliation", {})
                if (self.condition(a, "Ready") == "True" and not last.get("error")
                        and not last.get("discrepancyCount")):
                    ok = True
                    break
            self.track(a)
            recovered.append(ok)
        for a in self.accounts:
            self.track(a)
        return recovered

    def left_ledger(self, a: Account, cid: str) -> None:
        """Status is read every --sample seconds, so an order can finish (learned late, e.g. after a
        stream gap) and be purged by retention between two reads, which is no loss. Suspected here,
        settled against the exchange at the end."""
        del a.tracked[cid]
        self.suspects.append((a, cid, int(time.time() * 1000) + self.clock_offset))    # the venue's time

    async def confirm_losses(self) -> None:
        """A suspect is lost unless the exchange has it finished for longer than the retention when it
        left the ledger (35 s of slack for a skew fault landing between two status reads)."""
        from soak import FINISHED, SIM_STATE, cid_of
        orders: dict[str, dict[str, dict]] = {}
        for a, cid, left_ms in self.suspects:
            if a.key not in orders:
                orders[a.key] = {cid_of(o): o for o in (await self.sim.orders(a.key, a.venue)).values()}
            o = orders[a.key].get(cid)
            if o is None:
                a.lost[cid] = "left the ledger; unknown to the exchange"
            elif SIM_STATE[o["status"]] not in FINISHED:
                a.lost[cid] = f"left the ledger while {o['status']} at the exchange"
            elif o["updateTime"] > left_ms - self.args.retention * 1000 + 35_000:
                a.lost[cid] = (f"left the ledger {(left_ms - o['updateTime']) / 1000:.0f} s after it finished "
                               f"({o['status']}), before the retention of {self.args.retention} s")
            else:
                self.purged_unseen += 1

    async def unequal(self, a: Account) -> list[str]:
        """The ledger in status against the exchange. Status writes are coalesced (a few seconds), and a
        stale check may cancel right after the last run: compared until equal, for up to 60 s."""
        for _ in range(30):
            self.refresh()
            diff = await super().unequal(a)
            if not diff:
                return []
            await asyncio.sleep(2.0)
        return diff

    async def teardown(self) -> None:
        try:
            if self.op is not None and self.op.proc.poll() is None:   # finalizers released by the operator
                sh(self.kc, "delete", "-n", self.ns, PLURAL, "--all", "--wait=true", "--timeout=120s", check=False)
        finally:
            if self.op is not None:
                self.op.stop()
            sh(self.kc, "delete", "namespace", self.ns, "--wait=false", check=False)
            await self.sim.stop()

    def describe_memory(self, rss_start: float, rss_end: float) -> str:
        live = self.samples[-1]
        biggest = max(len(a.ledger.orders) for a in self.accounts if a.ledger is not None)
        return (f"memory (RSS of the operator process): {rss_start:.1f} MiB after warm-up, {rss_end:.1f} MiB at "
                f"the end ({rss_end - rss_start:+.1f} MiB); status kept {live['status_kib']:.0f} KiB for "
                f"{len(self.accounts)} accounts; largest ledger: {biggest} orders; operator CPU "
                f"{live['cpu_s']:.0f} s; log {self.tmp / 'operator.log'}")

    def snapshot(self):
        if isinstance(self.op, TracedOperator):
            self.op.proc.send_signal(signal.SIGUSR1)     # the baseline
            return True
        return None

    def heap_growth(self, snap_start) -> None:
        print("operator Python heap growth since warm-up (tracemalloc):")
        print(self.op.heap_report(), end="")

    def describe_runs(self) -> str:
        reconnects = sum(int(s.get("stream", {}).get("reconnects", 0)) for s in self.status.values())
        events = sh(self.kc, "get", "events", "-n", self.ns, "-o", "name", check=False).stdout.count("\n")
        return (f"runs: {self.runs} ({self.run_failures} failed or partial while faults lasted; the status "
                f"counters), stale orders cancelled: {self.stale_cancelled}, stream reconnects: {reconnects}, "
                f"Events: {events}; owned orders that finished and were purged between two status reads: "
                f"{self.purged_unseen}; unreadable checkpoint ledgers: {sum('ledger' in e for e in self.errors)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--accounts", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interval-s", type=int, default=30, help="spec.reconciliation.intervalSeconds (minimum 30)")
    p.add_argument("--stale-check-s", type=int, default=10, help="spec.staleOrders.checkIntervalSeconds")
    p.add_argument("--retention", type=int, default=120, help="spec.retention.finishedOrdersSeconds")
    p.add_argument("--book", type=int, default=20, help="open orders per account the bots keep the book at")
    p.add_argument("--sample", type=float, default=15.0, help="seconds between memory samples")
    p.add_argument("--trace-memory", action="store_true",
                   help="run the operator under tracemalloc and print where its Python heap grew after warm-up")
    p.set_defaults(malloc_trim=False)
    return p


def main() -> int:
    return asyncio.run(OperatorSoak(build_parser().parse_args()).run())


if __name__ == "__main__":
    sys.exit(main())
