"""The ledger off the status (issue 19 item 7): sizes and API-server write volume.

Prints, each against a baseline measured in the same run (the previous design: the ledger dumped into
status.ledger, at most 2,000 orders, rewritten with every status write):

  1. ``sizes`` (no Kubernetes): the status object and the restart checkpoint (compressed, what the ConfigMap
     holds) at 1,000 / 5,000 / 10,000 open orders (realistic ids and prices, plus finished orders with
     fills kept for the retention), the time to encode it, and what status.ledger weighed for the same book;
  2. ``restart`` (real kube-apiserver + simulator + real ccxt + `tradewarden run`): the cluster test's
     scenario (tests/controller/test_checkpoint_cluster.py) at 5,000 open orders (``--restart-sizes``):
     killed, the book changed while down, restarted: every change found, no other report (asserted by the
     scenario), the time to resume, the status and checkpoint sizes on the API server;
  3. ``busy``: one busy account (a resting book of ``--book`` orders and a bot placing, filling and cancelling
     ``--rate`` times a second, every event delivered) watched on the API server for ``--window`` seconds:
     status writes and checkpoint writes, the bytes sent (merge patches / whole ConfigMaps) and the bytes
     stored (each write stores the whole object), per hour; target under 1 MiB/h of status.

    .venv/bin/python benchmarks/bench_checkpoint.py [--only sizes|restart|busy] [--restart-sizes 5000,10000]
        [--book 1000] [--rate 10] [--window 120]

Figures are for this machine; compare the ratios, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tradewarden.controller import checkpoint as ckpt  # noqa: E402
from tradewarden.controller import status as st  # noqa: E402
from tradewarden.controller.emergency import EmergencyStop  # noqa: E402
from tradewarden.controller.vocabulary import StreamState  # noqa: E402
from tradewarden.core import Ledger, MonitoringState, RunReport  # noqa: E402
from tradewarden.domain import Balance, Fill, Order, OrderState, Side  # noqa: E402

OLD_LEDGER_ORDERS = 2000          # what status.ledger held before (supervisor.LEDGER_DUMP_ORDERS)
MIB = 1024 * 1024


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


# ---- 1. sizes --------------------------------------------------------------------------------------------

def realistic_ledger(n_open: int, n_finished: int, rng: random.Random) -> Ledger:
    """A grid bot's book: client ids as bots make them, prices and quantities with venue precision, order ids
    and times increasing with jitter, finished orders with one or two fills each."""
    led = Ledger("tw-")
    t = 1_790_000_000_000
    oid = 4_100_000_000
    tid = 900_000_000
    symbols = [f"S{i:03d}/USDT" for i in range(max(1, -(-n_open // 200)))]
    for i in range(n_open + n_finished):
        t += rng.randrange(5, 400)
        oid += rng.randrange(1, 40)
        finished = i < n_finished
        sym = rng.choice(symbols)
        amount = Decimal(rng.randrange(1, 100_000)) / 1000
        price = Decimal(rng.randrange(100_000, 9_000_000)) / 100
        state = rng.choice((OrderState.FILLED, OrderState.CANCELED)) if finished else \
            rng.choice((OrderState.OPEN,) * 9 + (OrderState.PARTIALLY_FILLED,))
        filled = amount if state is OrderState.FILLED else (amount / 2 if state is OrderState.PARTIALLY_FILLED
                                                           else Decimal(0))
        coid = f"tw-grid-{rng.getrandbits(64):016x}"
        o = Order(coid, str(oid), sym, rng.choice((Side.BUY, Side.SELL)), "limit", price, amount, filled, state,
                  t, t + (rng.randrange(1000, 60_000) if finished else 0))
        led.put_order(o, rng.choice(("rest", "stream")), t + 50)
        if filled:
            for part in ((filled,) if rng.random() < 0.5 else (filled / 2, filled - filled / 2)):
                tid += rng.randrange(1, 30)
                led.add_fill(Fill(str(tid), str(oid), sym, price, part, (part * price / 1000).quantize(
                    Decimal("0.00000001")), "USDT", t + 100))
    for a in ("USDT", "BTC", "ETH", "BNB"):
        led.put_balance(Balance(a, Decimal("12345.6789"), Decimal("2345.1")), a, "rest", t)
    led.orders_ms = led.synced_ms = t
    return led


def status_of(led: Ledger, now_ms: int) -> dict:
    mon = MonitoringState(runs=10, last_success_ms=now_ms, since_ms=now_ms - 3_600_000)
    report = RunReport(trigger="timer", started_ms=now_ms - 200, finished_ms=now_ms)
    inputs = st.StatusInputs(generation=1, credentials_ok=True, synced=True, report=report, last_run_ok=True,
                             balances=led.balance_values(), orders=list(led.active_orders()), positions=[],
                             monitor=mon, health=mon.health(now_ms, 300), stream_state=StreamState.CONNECTED,
                             estop=EmergencyStop(),
                             checkpoint={"configMap": "grid-ledger", "time": st.rfc3339(now_ms), "orders": 1,
                                         "leftOut": 0, "bytes": 1})
    return st.build_status(inputs, {}, now_ms)


def bench_sizes(sizes: list[int], finished: int, seed: int) -> None:
    print(f"\n1. status and checkpoint sizes (+{finished:,} finished orders with fills in the retention)")
    print(f"   {'open':>7} {'status':>11} {'checkpoint':>12} {'(json)':>12} {'kept':>7} {'left out':>8} "
          f"{'encode':>8} | baseline: status with status.ledger (left out)")
    for n in sizes:
        led = realistic_ledger(n, finished, random.Random(seed + n))
        now = led.synced_ms + 1000
        status = status_of(led, now)
        status_bytes = len(json.dumps(status, separators=(",", ":")))
        t0 = time.perf_counter()
        enc = ckpt.encode(led.dump, len(led.orders))
        took = time.perf_counter() - t0
        old = led.dump(max_orders=OLD_LEDGER_ORDERS)
        old_bytes = status_bytes + len(json.dumps(old, separators=(",", ":")))
        print(f"   {n:>7,} {kib(status_bytes):>11} {kib(len(enc.payload)):>12} {kib(enc.raw_bytes):>12} "
              f"{enc.orders:>7,} {enc.left_out:>8,} {took * 1000:>6.0f}ms | {kib(old_bytes)} "
              f"({old['truncated']:,} orders left out, {old_bytes / status_bytes:.0f}x this status)")
    print(f"   bounds: status < {kib(st.MAX_STATUS_BYTES)} for any book; checkpoint payload <= "
          f"{kib(ckpt.MAX_PAYLOAD_BYTES)} (beyond: oldest orders left out, history from the oldest closes the gap)")


# ---- cluster helpers ---------------------------------------------------------------------------------------

def cluster():
    from benchmarks.bench_controller import kubeconfig, sh

    kc = kubeconfig()
    sh(kc, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    sh(kc, "wait", "--for", "condition=established", "--timeout=60s", "crd/tradingaccounts.tradewarden.io")
    return kc, sh


def new_namespace(kc: str, sh) -> str:
    ns = "twb-" + uuid.uuid4().hex[:8]
    sh(kc, "create", "namespace", ns)
    return ns


def drop_namespace(kc: str, sh, ns: str) -> None:
    sh(kc, "delete", "namespace", ns, "--wait=false", check=False)
    left = sh(kc, "get", "-n", ns, "tradingaccounts.tradewarden.io", "-o", "name", check=False).stdout.split()
    if left:
        sh(kc, "patch", "-n", ns, *left, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)


# ---- 2. restart --------------------------------------------------------------------------------------------

def bench_restart(sizes: list[int]) -> None:
    from tests.controller.conftest import Operator, ThreadSim
    from tests.controller.test_checkpoint_cluster import restart_scenario

    kc, sh = cluster()
    print("\n2. restart through the operator: killed (SIGKILL), the book changed while down, restarted")
    tsim = ThreadSim()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    try:
        for n in sizes:
            ns = new_namespace(kc, sh)
            ops: list = []

            def start():
                op = Operator(kc, ns, tmp / f"restart-{n}-{len(ops)}.log",
                              env={"TRADEWARDEN_CHECKPOINT_INTERVAL": "2"})
                op.start()
                ops.append(op)
                return op
            try:
                fig = restart_scenario(kc, ns, tsim, start, n, timeout=900)
            finally:
                for op in ops:
                    op.stop()
                drop_namespace(kc, sh, ns)
            print(f"   {n:,} open orders on {fig.symbols} symbols: status {kib(fig.status_bytes)}, checkpoint "
                  f"{kib(fig.checkpoint_bytes)} ({fig.checkpoint_orders:,} orders, {fig.checkpoint_left_out} left "
                  f"out); resumed in {fig.resume_s:.1f}s; reported {fig.discrepancies} (expected orders "
                  f"{fig.expected}, balances only those moved): every change found, nothing else")
    finally:
        tsim.stop()


# ---- 3. busy account -------------------------------------------------------------------------------------------

class Watcher:
    """Every version of one object the API server stores, from a watch: the bytes of each."""

    def __init__(self, list_fn, name: str, **kw) -> None:
        self.list_fn, self.name, self.kw = list_fn, name, kw
        self.versions: list[dict] = []
        self._seen: set = set()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        w = watch.Watch()
        while not self._stop.is_set():
            try:
                for ev in w.stream(self.list_fn, field_selector=f"metadata.name={self.name}", timeout_seconds=5,
                                   **self.kw):
                    obj = ev["object"]
                    if not isinstance(obj, dict):
                        obj = obj.to_dict()
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or \
                        (obj.get("metadata") or {}).get("resource_version")
                    if ev["type"] in ("ADDED", "MODIFIED") and rv not in self._seen:   # a re-watch lists again
                        self._seen.add(rv)
                        self.versions.append(obj)
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - a watch timeout or a blip: watch again
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


def bench_busy(book: int, rate: float, window: float) -> None:
    import kubernetes

    from tests.controller.conftest import Operator, ThreadSim, account, apply, secret

    kc, sh = cluster()
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=kc, client_configuration=cfg)
    client = kubernetes.client.ApiClient(cfg)
    custom, core = kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)
    print(f"\n3. a busy account: {book:,} resting orders, a bot changing the book {rate:g} times a second "
          f"(placed / filled / cancelled, every event delivered), watched for {window:.0f}s")
    tsim = ThreadSim()
    sim = tsim.sim
    ns = new_namespace(kc, sh)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-busy-"))
    key, secret_ = "busy-" + uuid.uuid4().hex, uuid.uuid4().hex
    tag = uuid.uuid4().hex[:4].upper()
    bases = [f"B{tag}{i:02d}" for i in range(max(1, -(-book // 180)))]
    bot_base = f"B{tag}BOT"                        # the bot's own symbol (Binance: 200 open orders per symbol)
    for b in bases + [bot_base]:
        tsim.call(sim.exchange.add_market, b + "USDT", price="100", tick="0.01", step="0.1")
    tsim.call(sim.add_account, key, secret_, balances={"USDT": "100000000", bot_base: "1000000"})

    def place(i: int) -> None:
        sim.place_order(key, symbol=bases[i % len(bases)] + "USDT", side="BUY", type="LIMIT", quantity="10",
                        price=f"{1 + (i % 50) / 100:.2f}", time_in_force="GTC", client_order_id=f"tw-rest-{i}")
    tsim.call(lambda: [place(i) for i in range(book)])
    apply(kc, secret(ns, "creds", {"apiKey": key, "secret": secret_}))
    apply(kc, account(ns, "busy", endpoint=tsim.url, symbols=[f"{b}/USDT" for b in bases + [bot_base]],
                      secret_name="creds", reconciliation={"intervalSeconds": 60}))
    op = Operator(kc, ns, tmp / "busy.log")          # the defaults: status writes coalesced, checkpoint every 30 s
    op.start()
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            o = custom.get_namespaced_custom_object("tradewarden.io", "v1alpha1", ns, "tradingaccounts", "busy")
            if (o.get("status", {}).get("adoption") or {}).get("count") == book:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("the busy account did not sync")
        time.sleep(3)
        ta = Watcher(custom.list_namespaced_custom_object, "busy", group="tradewarden.io", version="v1alpha1",
                     namespace=ns, plural="tradingaccounts")
        cm = Watcher(core.list_namespaced_config_map, ckpt.name_for("busy"), namespace=ns)
        rng = random.Random(7)

        def bot() -> None:
            live: list[int] = []
            i = 0
            while not stop.is_set():
                i += 1
                action = rng.random()
                if (action < 0.5 or len(live) < 10) and len(live) < 150:
                    o = tsim.call(sim.place_order, key, symbol=bot_base + "USDT", side="SELL", type="LIMIT",
                                  quantity="1", price=f"{150 + rng.randrange(100)}", time_in_force="GTC",
                                  client_order_id=f"tw-bot-{i}")
                    live.append(o.order_id)
                elif action < 0.8:
                    tsim.call(sim.fill, key, live.pop(rng.randrange(len(live))))
                else:
                    tsim.call(sim.cancel_order, key, live.pop(rng.randrange(len(live))))
                time.sleep(1.0 / rate)
        t = threading.Thread(target=bot, daemon=True)
        t.start()
        time.sleep(window)
        stop.set()
        t.join(10)
        ta.stop()
        cm.stop()
    finally:
        stop.set()
        op.stop()
        drop_namespace(kc, sh, ns)
        tsim.stop()
    per_h = 3600.0 / window
    statuses = [v.get("status") or {} for v in ta.versions]
    writes = max(0, len(statuses) - 1)
    patch_bytes = sum(len(json.dumps(st.merge_patch(a, b), separators=(",", ":")))
                      for a, b in zip(statuses, statuses[1:]))
    stored = sum(len(json.dumps(v, separators=(",", ":"), default=str)) for v in ta.versions[1:])
    cm_versions = cm.versions[1:] if len(cm.versions) > 1 else cm.versions
    cm_bytes = sum(len(json.dumps(v, separators=(",", ":"), default=str)) for v in cm_versions)
    print(f"   status: {writes} writes ({writes * per_h:,.0f}/h), sent {kib(patch_bytes)} "
          f"({patch_bytes * per_h / MIB:.2f} MiB/h; target < 1 MiB/h), stored {kib(stored)} "
          f"({stored * per_h / MIB:.2f} MiB/h: etcd keeps the whole object per write)")
    print(f"   checkpoint (counted apart): {len(cm_versions)} writes ({len(cm_versions) * per_h:,.0f}/h), "
          f"{kib(cm_bytes)} ({cm_bytes * per_h / MIB:.2f} MiB/h)")
    last_cm = cm.versions[-1] if cm.versions else None
    if last_cm is not None:
        payload = ckpt.payload_of(last_cm if "binaryData" in last_cm else
                                  {"binaryData": last_cm.get("binary_data") or {}})
        led = Ledger.load(ckpt.decode(payload)) if payload else None
        if led is not None and writes:
            old = len(json.dumps(led.dump(max_orders=OLD_LEDGER_ORDERS), separators=(",", ":")))
            base_h = writes * per_h * old / MIB
            print(f"   baseline (status.ledger, rewritten with every status write: {kib(old)} each): "
                  f"{base_h:,.1f} MiB/h sent and stored; this design sends "
                  f"{(patch_bytes * per_h / MIB + cm_bytes * per_h / MIB) / base_h:.3f}x of it, checkpoint included")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("sizes", "restart", "busy"))
    p.add_argument("--sizes", default="1000,5000,10000")
    p.add_argument("--finished", type=int, default=2000)
    p.add_argument("--restart-sizes", default="5000")
    p.add_argument("--book", type=int, default=1000)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--window", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if a.only in (None, "sizes"):
        bench_sizes([int(x) for x in a.sizes.split(",")], a.finished, a.seed)
    if a.only in (None, "restart"):
        bench_restart([int(x) for x in a.restart_sizes.split(",")])
    if a.only in (None, "busy"):
        bench_busy(a.book, a.rate, a.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
