"""Controller benchmarks (real kube-apiserver + simulator + real ccxt + `tradewarden run`).

Prints, each with a baseline measured in the same run:
  1. emergency stop (issue 14): annotation written -> the simulator shows no open order, p50/p95 for 1,000
     orders over 50 symbols (baseline: the gateway's own whole-account sweep of the same book, no
     operator; with ``--estop-compare DIR`` also another checkout's operator, e.g. main's, in the same
     run), and where the time goes: annotation -> first exchange request, the simulator thread's CPU
     during the stop (the floor: it carries out the cancels one after another), the operator's CPU;
     an order placed after the stop -> cancelled by the breaker, p50/p95 via the stream and
     via the sweep (stream silently dead; baseline: the sweep interval); request weight per sweep;
  2. stream event -> status latency: an order placed out of band -> status.openOrders shows it
     (baseline: the same change made visible by a reconcile-annotation run);
  3. CPU, memory and API-server writes for 100 accounts on one operator over a short window,
     extrapolated per hour (baseline: the same operator process idle with no account);
  4. memory anatomy (``--only anatomy``, no Kubernetes): in a fresh process, what importing the
     gateway costs with ccxt loaded lazily and in full, and per account what one account's gateway,
     runner and stream hold (RSS, tracemalloc's top sites, ccxt instances and TLS contexts per
     account), with this version's sharing and without it (baseline: ccxt's defaults), at
     ``--anatomy-sizes`` accounts.

    .venv/bin/python benchmarks/bench_controller.py [--accounts 100] [--window 90] [--skip-scale]
    .venv/bin/python benchmarks/bench_controller.py --only estop [--estop-compare ../main-src/operator]
    .venv/bin/python benchmarks/bench_controller.py --only anatomy [--anatomy-sizes 50,200]
    .venv/bin/python benchmarks/bench_controller.py --only scale --accounts 50 --window 30 --scale-baseline
    .venv/bin/python benchmarks/bench_controller.py --only shards --accounts 200 --replicas 3 [--lease 15]

Figures are for this machine; compare the ratios, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.controller.conftest import Operator, ThreadSim  # noqa: E402

CONTROLPLANE = ROOT / "operator" / "tradewarden" / "scripts" / "controlplane.sh"


def sh(kc: str, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["kubectl", "--kubeconfig", kc, *args], input=input, capture_output=True, text=True,
                       timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr}")
    return r


def kubeconfig() -> str:
    env = os.environ.get("KUBECONFIG")
    if env and subprocess.run(["kubectl", "--kubeconfig", env, "get", "--raw", "/readyz"],
                              capture_output=True).returncode == 0:
        return env
    out = subprocess.run(["bash", str(CONTROLPLANE), "start"], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1].removeprefix("export KUBECONFIG=")


def api(kc: str):
    import kubernetes

    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=kc, client_configuration=cfg)
    client = kubernetes.client.ApiClient(cfg)
    return kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)


def get(custom, ns: str, name: str) -> dict:
    return custom.get_namespaced_custom_object("tradewarden.io", "v1alpha1", ns, "tradingaccounts", name)


def poll(fn, timeout: float, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError("benchmark step timed out")


def cond(obj: dict, type_: str) -> str:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c["status"]
    return ""


def apply_account(kc: str, ns: str, name: str, url: str, symbols: list[str], secret: str, **spec) -> None:
    body = {"exchange": "binance", "endpoint": url, "symbols": symbols, "credentialsSecretRef": {"name": secret}}
    body.update(spec)
    sh(kc, "apply", "-f", "-", input=json.dumps({"apiVersion": "tradewarden.io/v1alpha1", "kind": "TradingAccount",
                                                  "metadata": {"name": name, "namespace": ns}, "spec": body}))


def apply_secret(kc: str, ns: str, name: str, key: str, secret: str) -> None:
    sh(kc, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Secret",
                                                  "metadata": {"name": name, "namespace": ns},
                                                  "stringData": {"apiKey": key, "secret": secret}}))


def drop_namespace(kc: str, ns: str) -> None:
    """The operators are stopped: strip the finalizers they would have removed, then delete the namespace.
    Without this the namespace stays Terminating with its accounts in it, and every later run's API server
    carries them (found: 720 such accounts from earlier runs loading the control plane)."""
    import concurrent.futures as cf

    custom, _ = api(kc)
    try:
        items = custom.list_namespaced_custom_object("tradewarden.io", "v1alpha1", ns, "tradingaccounts")["items"]
    except Exception:  # noqa: BLE001 - nothing to strip
        items = []

    def strip(o: dict) -> None:
        try:
            custom.patch_namespaced_custom_object("tradewarden.io", "v1alpha1", ns, "tradingaccounts",
                                                  o["metadata"]["name"], {"metadata": {"finalizers": None}})
        except Exception:  # noqa: BLE001 - gone already
            pass
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(strip, [o for o in items if o["metadata"].get("finalizers")]))
    sh(kc, "delete", "namespace", ns, "--wait=false", check=False)


def proc_cpu_mem(pid: int) -> tuple[float, float]:
    """(CPU seconds user+system, RSS MiB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return cpu, rss


class WriteCounter:
    """Counts API writes in a namespace: TradingAccount MODIFIED watch events (status patches,
    finalizers) and Events created."""

    def __init__(self, kc: str, ns: str) -> None:
        import kubernetes

        self.custom, self.core = api(kc)
        self.ns = ns
        self.modified = 0
        self._stop = False
        self._w = kubernetes.watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:  # noqa: BLE001 - the watch is closed under us at the end
            pass

    def _watch(self) -> None:
        for ev in self._w.stream(self.custom.list_namespaced_custom_object, "tradewarden.io", "v1alpha1", self.ns,
                                 "tradingaccounts", timeout_seconds=3600):
            if self._stop:
                break
            if ev["type"] == "MODIFIED":
                self.modified += 1

    def events(self) -> int:
        return len(self.core.list_namespaced_event(self.ns).items)

    def stop(self) -> None:
        self._stop = True
        self._w.stop()


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of a process, in nanoseconds' resolution (/proc/<pid>/task/*/schedstat;
    /proc/<pid>/stat counts in 10 ms ticks, too coarse for one emergency stop)."""
    total = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))]


def bench_emergency_stop(kc: str, tsim: ThreadSim, tmp: pathlib.Path, reps: int = 5, samples: int = 20,
                         sweep_samples: int = 6, compare_src: str | None = None) -> None:
    """Issue 14: annotation -> book empty (1,000 orders over 50 symbols, p50 of ``reps`` stops); an order placed
    after the stop -> cancelled, via the stream and via the sweep (stream silently dead); weight per sweep."""
    ns = "tw-bench-" + uuid.uuid4().hex[:6]
    sh(kc, "create", "namespace", ns)
    sim = tsim.sim
    bases = [f"B{i:02d}X" for i in range(50)]
    for b in bases:
        tsim.call(sim.add_market, f"{b}USDT", price="100")
    symbols = [f"{b}/USDT" for b in bases]

    def book(key: str, tag: str) -> None:
        def place_all() -> None:
            for b in bases:
                for i in range(20):
                    sim.place_order(key, symbol=f"{b}USDT", side="BUY", type="LIMIT", quantity="1",
                                    price=str(50 + i), time_in_force="GTC", client_order_id=f"tw-{tag}-{b}-{i}")
        tsim.call(place_all)

    from tradewarden.sim.engine import SPOT

    def open_count(k: str) -> int:
        # the simulator's own index of open orders: polling every few ms must not load the simulator
        # (tsim.open_orders walks every order the account ever had, in the simulator's thread)
        return tsim.call(lambda: sim.account(k).open_count(SPOT))

    def sim_cpu() -> float:
        return tsim.call(time.thread_time)        # CPU seconds of the simulator's thread

    # Baseline: the gateway alone sweeps the same book (whole-account listing, cancel per symbol, verify),
    # in this process, without a user-data stream. (With the stream read here too, the reader and the
    # simulator share one interpreter and the figure measures that; the simulator's own CPU during the
    # operator's stop, printed below, is the floor instead: its one thread does every cancel in turn.)
    async def direct() -> tuple[float, float]:
        from tradewarden.gateway import create_gateway

        key0, sec0 = "bench-" + uuid.uuid4().hex, uuid.uuid4().hex
        tsim.call(sim.add_account, key0, sec0, balances={"USDT": "10000000"})
        gw = create_gateway("binance", key0, sec0, tsim.url)
        await gw.start(symbols[:1])
        times, cpu = [], []
        for r in range(reps):
            book(key0, f"base{r}")
            c0 = sim_cpu()
            t0 = time.perf_counter()
            listing = await gw.list_account()
            res = await gw.cancel_symbols(sorted({o.symbol for o in listing.orders}), (), listing.orders)
            left = await gw.list_account()
            times.append(time.perf_counter() - t0)
            cpu.append(sim_cpu() - c0)
            assert not res.errors and not left.orders and len(res.done) == 1000
        await gw.close()
        assert not open_count(key0)
        return statistics.median(times), statistics.median(cpu)

    base_s, base_sim_cpu = asyncio.run(direct())

    custom, _ = api(kc)
    med = statistics.median

    def stops(ns_: str, label: str, env: dict[str, str] | None) -> tuple[dict[str, list[float]], Operator, str, Any]:
        """``reps`` stops of 1,000 orders by an operator (``env``: e.g. another checkout's source first on
        PYTHONPATH); the operator is left running."""
        key, sec = "bench-" + uuid.uuid4().hex, uuid.uuid4().hex
        tsim.call(sim.add_account, key, sec, balances={"USDT": "10000000"})
        apply_secret(kc, ns_, "creds", key, sec)
        # the spec lists one symbol: the stop covers the whole account anyway
        apply_account(kc, ns_, "big", tsim.url, symbols[:1], "creds", reconciliation={"intervalSeconds": 3600},
                      emergencyStop={"sweepIntervalSeconds": 5})
        op = Operator(kc, ns_, tmp / f"estop{label}.log", env=env)
        op.start()
        stop = lambda: get(custom, ns_, "big")["status"].get("emergencyStop") or {}  # noqa: E731
        out: dict[str, list[float]] = {k: [] for k in ("gone", "completed", "first", "op_cpu", "sim_cpu")}
        for r in range(reps):
            poll(lambda: cond(get(custom, ns_, "big"), "Ready") == "True", 180, 0.2)
            book(key, f"r{r}")
            assert open_count(key) == 1000
            time.sleep(0.5)                                   # the placements' events read
            o0, c0 = proc_cpu_s(op.proc.pid), sim_cpu()
            sh(kc, "-n", ns_, "annotate", "ta", "big", f"tradewarden.io/emergency-stop=bench-{r}")
            t_written, wall_written = time.perf_counter(), time.time() * 1000
            poll(lambda: not open_count(key), 120, 0.005)
            out["gone"].append(time.perf_counter() - t_written)
            out["op_cpu"].append(proc_cpu_s(op.proc.pid) - o0)
            out["sim_cpu"].append(sim_cpu() - c0)
            first = [e["wall"] for e in sim.requests() if e.get("key") == key and e["wall"] >= wall_written - 500
                     and e["method"] == "GET" and e["path"] == "/api/v3/openOrders" and not e["params"].get("symbol")]
            out["first"].append((min(first) - wall_written) / 1000 if first else float("nan"))
            poll(lambda: stop().get("state") == "Completed", 120, 0.05)
            out["completed"].append(time.perf_counter() - t_written)
            if r < reps - 1:
                sh(kc, "-n", ns_, "annotate", "ta", "big", "tradewarden.io/emergency-stop-")
                poll(lambda: stop().get("active") is False, 60, 0.05)
        g = out["gone"]
        print(f"[estop{label}] 1000 orders / 50 symbols (49 outside spec.symbols): annotation written -> simulator "
              f"shows no open order: p50 {med(g) * 1000:.0f} ms, p95 {_pct(g, 0.95) * 1000:.0f} ms, max "
              f"{max(g) * 1000:.0f} ms (n={reps}); status Completed (verified by a whole-account listing) p50 "
              f"{med(out['completed']) * 1000:.0f} ms")
        print(f"[estop{label}] where the time goes (p50): annotation written -> the operator's first exchange request "
              f"{med(out['first']) * 1000:.0f} ms (kubectl returns after the write); simulator thread CPU during "
              f"the stop {med(out['sim_cpu']) * 1000:.0f} ms (its one thread carries out every cancel in turn: the "
              f"floor); operator process CPU {med(out['op_cpu']) * 1000:.0f} ms")
        return out, op, key, stop

    before = None
    if compare_src:
        ns0 = ns + "-before"
        sh(kc, "create", "namespace", ns0)
        try:
            before, op0, _, _ = stops(ns0, " before", {"PYTHONPATH": compare_src})
            op0.stop()
        finally:
            sh(kc, "delete", "namespace", ns0, "--wait=false", check=False)
    op = None
    try:
        now, op, key, stop = stops(ns, "", None)
        gone = now["gone"]
        print(f"[estop] baseline: the gateway's own sweep of the same book (list, cancel per symbol, verify), "
              f"no operator, no stream: p50 {base_s * 1000:.0f} ms (simulator CPU {base_sim_cpu * 1000:.0f} ms); "
              f"operator/baseline {med(gone) / base_s:.2f}x")
        if before is not None:
            print(f"[estop] this version / before ({compare_src}): p50 {med(gone) * 1000:.0f}/"
                  f"{med(before['gone']) * 1000:.0f} ms ({med(gone) / med(before['gone']):.2f}x), p95 "
                  f"{_pct(gone, 0.95) * 1000:.0f}/{_pct(before['gone'], 0.95) * 1000:.0f} ms, operator CPU "
                  f"{med(now['op_cpu']) * 1000:.0f}/{med(before['op_cpu']) * 1000:.0f} ms")

        # the breaker: orders placed after the stop completed
        via_stream = []
        for i in range(samples):
            t0 = time.perf_counter()
            tsim.call(sim.place_order, key, symbol="B00XUSDT", side="BUY", type="LIMIT", quantity="1", price="60",
                      time_in_force="GTC", client_order_id=f"bot-s{i}")
            poll(lambda: not open_count(key), 30, 0.002)
            via_stream.append(time.perf_counter() - t0)
            time.sleep(0.2)
        tsim.call(sim.set_deliver, key, False)               # the stream silently dead: only the sweep sees
        via_sweep = []
        for i in range(sweep_samples):
            t0 = time.perf_counter()
            tsim.call(sim.place_order, key, symbol="B01XUSDT", side="BUY", type="LIMIT", quantity="1", price="60",
                      time_in_force="GTC", client_order_id=f"bot-w{i}")
            poll(lambda: not open_count(key), 30, 0.01)
            via_sweep.append(time.perf_counter() - t0)
            time.sleep(1.3)                                  # spread the placements over the sweep cycle
        tsim.call(sim.set_deliver, key, True)
        print(f"[estop] order placed after the stop -> cancelled by the breaker: via the stream p50 "
              f"{_pct(via_stream, 0.5) * 1000:.0f} ms, p95 {_pct(via_stream, 0.95) * 1000:.0f} ms (n={samples}); "
              f"via the sweep (stream silently dead, sweepIntervalSeconds=5) p50 {_pct(via_sweep, 0.5):.2f} s, "
              f"p95 {_pct(via_sweep, 0.95):.2f} s (n={sweep_samples}); baseline: the sweep interval, 5 s")
        st = stop()
        print(f"[estop] breakerCancelled in status {st.get('breakerCancelled')} (placed {samples + sweep_samples})")

        # weight per sweep: what the simulator charged this key for one quiet sweep
        tsim.call(sim.request_log.clear)
        time.sleep(11)
        reqs = [r for r in sim.requests() if r.get("key") == key and r.get("path", "").startswith("/api/")]
        sweeps = [r for r in reqs if r["method"] == "GET" and r["path"] == "/api/v3/openOrders"]
        per_sweep = statistics.median([r["weight"] for r in sweeps]) if sweeps else 0
        print(f"[estop] weight per sweep (spot, no open order): {per_sweep:.0f} (GET /api/v3/openOrders without a "
              f"symbol); {len(sweeps)} sweeps in 11 s -> {per_sweep * 60 / 5:.0f} weight/min of 6000; baseline: "
              f"listing the 50 symbols one by one would cost {50 * 6}")
    finally:
        if op is not None:
            op.stop()
        drop_namespace(kc, ns)


def bench_stream_latency(kc: str, tsim: ThreadSim, tmp: pathlib.Path, samples: int = 10) -> None:
    ns = "tw-bench-" + uuid.uuid4().hex[:6]
    sh(kc, "create", "namespace", ns)
    sim = tsim.sim
    key, sec = "bench-" + uuid.uuid4().hex, uuid.uuid4().hex
    tsim.call(sim.add_account, key, sec, balances={"USDT": "10000000"})
    tsim.call(sim.set_price, "BTCUSDT", "50000")
    apply_secret(kc, ns, "creds", key, sec)
    apply_account(kc, ns, "s", tsim.url, ["BTC/USDT"], "creds", reconciliation={"intervalSeconds": 3600})
    op = Operator(kc, ns, tmp / "stream.log")
    op.start()
    custom, _ = api(kc)
    stream_lat, annot_lat = [], []
    try:
        poll(lambda: cond(get(custom, ns, "s"), "StreamConnected") == "True", 120, 0.1)
        for i in range(samples):
            n = get(custom, ns, "s")["status"]["openOrders"]["count"]
            t0 = time.perf_counter()
            tsim.call(sim.place_order, key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                      price=str(40000 - i), time_in_force="GTC", client_order_id=f"manual-s{i}")
            poll(lambda: get(custom, ns, "s")["status"]["openOrders"]["count"] == n + 1, 30, 0.005)
            stream_lat.append(time.perf_counter() - t0)
            time.sleep(1.1)   # outside the status write coalescing window
        tsim.call(sim.set_deliver, key, False)     # baseline: the same change seen only through a run
        for i in range(samples):
            n = get(custom, ns, "s")["status"]["openOrders"]["count"]
            t0 = time.perf_counter()
            tsim.call(sim.place_order, key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                      price=str(30000 - i), time_in_force="GTC", client_order_id=f"manual-a{i}")
            sh(kc, "-n", ns, "annotate", "ta", "s", f"tradewarden.io/reconcile-requested-at=b{i}", "--overwrite")
            poll(lambda: get(custom, ns, "s")["status"]["openOrders"]["count"] == n + 1, 30, 0.005)
            annot_lat.append(time.perf_counter() - t0)
            time.sleep(1.1)
        med = statistics.median
        print(f"[stream] event -> status: median {med(stream_lat) * 1000:.0f} ms, max {max(stream_lat) * 1000:.0f} ms "
              f"(n={samples})")
        print(f"[stream] baseline reconcile-annotation run -> status: median {med(annot_lat) * 1000:.0f} ms, "
              f"max {max(annot_lat) * 1000:.0f} ms; ratio stream/annotation {med(stream_lat) / med(annot_lat):.2f}")
    finally:
        op.stop()
        drop_namespace(kc, ns)


BASELINE_ENV = {"TRADEWARDEN_CCXT_IMPORT": "full", "TRADEWARDEN_CCXT_SHARING": "off"}


def bench_scale(kc: str, tsim: ThreadSim, tmp: pathlib.Path, accounts: int, window: float,
                env: dict | None = None, label: str = "") -> dict:
    ns = "tw-bench-" + uuid.uuid4().hex[:6]
    sh(kc, "create", "namespace", ns)
    sim = tsim.sim
    tag = f"[scale{label}]"
    op = Operator(kc, ns, tmp / f"scale{label.replace(' ', '-')}.log", env=env)
    op.start()
    time.sleep(8)   # the process is up and watching, no account yet
    c0, m0 = proc_cpu_mem(op.proc.pid)
    time.sleep(window / 3)
    c1, m1 = proc_cpu_mem(op.proc.pid)
    idle_cpu_h = (c1 - c0) / (window / 3) * 3600
    interval, check = 60, 20
    custom, _ = api(kc)
    try:
        docs = []
        for i in range(accounts):
            key, sec = f"scale-{i}-" + uuid.uuid4().hex, uuid.uuid4().hex
            tsim.call(sim.add_account, key, sec, balances={"USDT": "100000", "BTC": "1"})
            tsim.call(sim.place_order, key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                      price="20000", time_in_force="GTC", client_order_id=f"tw-{i}")
            docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"c{i}", "namespace": ns},
                         "stringData": {"apiKey": key, "secret": sec}})
            docs.append({"apiVersion": "tradewarden.io/v1alpha1", "kind": "TradingAccount",
                         "metadata": {"name": f"a{i}", "namespace": ns},
                         "spec": {"exchange": "binance", "endpoint": tsim.url, "symbols": ["BTC/USDT", "ETH/USDT"],
                                  "credentialsSecretRef": {"name": f"c{i}"},
                                  "reconciliation": {"intervalSeconds": interval},
                                  "staleOrders": {"checkIntervalSeconds": check}}})
        t_apply = time.perf_counter()
        sh(kc, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))

        def all_ready() -> bool:
            items = custom.list_namespaced_custom_object("tradewarden.io", "v1alpha1", ns, "tradingaccounts")["items"]
            return sum(1 for o in items if cond(o, "Ready") == "True") == accounts
        poll(all_ready, 600, 1.0)
        t_ready = time.perf_counter() - t_apply
        time.sleep(5)
        counter = WriteCounter(kc, ns)
        time.sleep(1)
        e0 = counter.events()
        c0, _ = proc_cpu_mem(op.proc.pid)
        t0 = time.perf_counter()
        time.sleep(window)
        dt = time.perf_counter() - t0
        c1, rss = proc_cpu_mem(op.proc.pid)
        writes, events = counter.modified, counter.events() - e0
        counter.stop()
        per_h = 3600 / dt
        print(f"{tag} {accounts} accounts ready in {t_ready:.1f}s (initial syncs through one rate budget)")
        print(f"{tag} steady window {dt:.0f}s, intervalSeconds={interval}, checkIntervalSeconds={check}: "
              f"CPU {(c1 - c0):.2f}s -> {(c1 - c0) * per_h / 3600 * 100:.1f}% of a core "
              f"({(c1 - c0) * per_h:.0f} CPU-s/h); RSS {rss:.0f} MiB")
        print(f"{tag} API writes in window: {writes} TradingAccount updates + {events} Events -> "
              f"{(writes + events) * per_h:.0f}/h ({(writes + events) * per_h / accounts:.1f}/h per account; "
              f"runs per account per hour at this config: {3600 / interval + 3600 / check:.0f})")
        print(f"{tag} idle operator (0 accounts): CPU {idle_cpu_h:.1f} CPU-s/h, RSS {m1:.0f} MiB; "
              f"RSS per account {(rss - m1) / accounts:.2f} MiB")
        return {"idle": m1, "rss": rss, "per_account": (rss - m1) / accounts, "ready_s": t_ready}
    finally:
        op.stop()
        drop_namespace(kc, ns)


ANATOMY_CHILD = r"""
import asyncio, gc, json, os, sys, time, tracemalloc, uuid
sys.path.insert(0, sys.argv[1])
def rss():
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmRSS:")[1].split()[0]) / 1024
r0 = rss(); m0 = len(sys.modules)
import tradewarden.gateway as gwpkg
gwpkg.create_gateway          # the gateway's modules (they load ccxt, lazily unless turned off)
import ccxt.async_support, ccxt.pro
ccxt.async_support.binance; ccxt.pro.binance
r_import = rss() - r0
ccxt_modules = sum(1 for m in sys.modules if m.split(".")[0] == "ccxt")
n, url, keys, share = int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5] == "1"
if not share:   # ccxt's defaults: a TLS context and the definitions per instance, compressed sockets
    from tradewarden.gateway import exchanges
    exchanges.CCXT_SHARING = False
from tradewarden.core.config import AccountConfig
from tradewarden.service import AccountRunner
from tradewarden.domain import ConnectionEvent
async def one(k, s):
    gw = gwpkg.create_gateway("binance", k, s, url)
    await gw.start(["BTC/USDT"])
    cfg = AccountConfig(symbols=["BTC/USDT"])
    runner = AccountRunner(gw, cfg)
    await runner.reconcile()
    stream = gw.stream(["BTC/USDT"])
    async for ev in stream:
        if isinstance(ev, ConnectionEvent):
            break
    return gw, runner, stream
async def main():
    held = [await one(*keys[0])]             # warm-up: lazy imports, shared markets, first TLS context
    gc.collect(); tracemalloc.start(25); m1 = rss(); t1 = tracemalloc.take_snapshot()
    for k, s in keys[1:n + 1]:
        held.append(await one(k, s))
    await asyncio.sleep(1)
    gc.collect(); m2 = rss(); t2 = tracemalloc.take_snapshot()
    import ssl
    objs = gc.get_objects()
    n_ccxt = sum(1 for o in objs if isinstance(o, ccxt.async_support.Exchange))
    ctxs = {id(o.ssl_context) for o in objs if isinstance(o, ccxt.async_support.Exchange) and o.ssl_context}
    diff = t2.compare_to(t1, "filename")
    top = [(str(d.traceback[0].filename).split("site-packages/")[-1].split("operator/")[-1], d.size_diff)
           for d in diff[:6]]
    print(json.dumps({"import_mib": r_import, "ccxt_modules": ccxt_modules, "modules": len(sys.modules) - m0,
                      "rss_per_account_mib": (m2 - m1) / n,
                      "traced_per_account_mib": sum(d.size_diff for d in diff) / n / 2**20,
                      "ccxt_instances_per_account": n_ccxt / (n + 1), "tls_contexts": len(ctxs),
                      "top": top}))
    for gw, runner, stream in held:
        await stream.aclose(); await gw.close()
asyncio.run(main())
"""


def bench_anatomy(tsim: ThreadSim, sizes: list[int]) -> None:
    """Memory per account and at import, each in a fresh process (the simulator stays in this one)."""
    keys = []
    for i in range(max(sizes) + 1):
        key, sec = f"anat-{i}-" + uuid.uuid4().hex, uuid.uuid4().hex
        tsim.call(tsim.sim.add_account, key, sec, balances={"USDT": "1000", "BTC": "1"})
        keys.append([key, sec])

    def child(n: int, share: bool, ccxt_import: str) -> dict:
        env = dict(os.environ, TRADEWARDEN_CCXT_IMPORT=ccxt_import)
        out = subprocess.run([sys.executable, "-c", ANATOMY_CHILD, str(ROOT / "operator"), str(n), tsim.url,
                              json.dumps(keys), "1" if share else "0"],
                             capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    for n in sizes:
        base = child(n, share=False, ccxt_import="full")
        now = child(n, share=True, ccxt_import="lazy")
        for label, r in (("baseline (ccxt defaults, full import)", base), ("this version", now)):
            print(f"[anatomy] {n} accounts, {label}: import gateway+ccxt {r['import_mib']:.1f} MiB "
                  f"({r['ccxt_modules']} ccxt modules, {r['modules']} modules); per account RSS "
                  f"{r['rss_per_account_mib']:.3f} MiB, traced {r['traced_per_account_mib']:.3f} MiB; "
                  f"ccxt instances/account {r['ccxt_instances_per_account']:.2f}, TLS contexts {r['tls_contexts']}")
            print("[anatomy]   top traced growth: " + ", ".join(f"{f} {b / n / 1024:.0f} KiB/acct" for f, b in r["top"]))
        print(f"[anatomy] {n} accounts: per-account RSS ratio this/baseline "
              f"{now['rss_per_account_mib'] / max(base['rss_per_account_mib'], 1e-9):.2f}; import "
              f"{now['import_mib']:.1f} vs {base['import_mib']:.1f} MiB")


_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].*?(stopped )?supervising ([^/\s]+)/(\S+)")


def serving_intervals(log: str, ns: str, end: float) -> dict[str, list[tuple[float, float]]]:
    """account -> [(start, stop)] (epoch seconds) of one replica's supervisors, from its log."""
    import datetime

    open_: dict[str, float] = {}
    out: dict[str, list[tuple[float, float]]] = {}
    for line in log.splitlines():
        m = _LINE.search(line)
        if not m or m.group(3) != ns:
            continue
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        name = m.group(4)
        if m.group(2):
            if name in open_:
                out.setdefault(name, []).append((open_.pop(name), t))
        else:
            open_.setdefault(name, t)
    for name, t in open_.items():
        out.setdefault(name, []).append((t, end))
    return out


def serving_now(op: "Operator", ns: str) -> set[str]:
    """The accounts one replica's log says it supervises now."""
    return {n for n, iv in serving_intervals(op.log(), ns, math.inf).items() if iv[-1][1] == math.inf}


def kill_first_replica(ops: list, ns: str, names: set[str], timeout: float, interval: float
                       ) -> tuple[set[str], float, float, float]:
    """Kill ``ops[0]`` and wait until the others serve every account: (the accounts it served, seconds until
    they moved, perf_counter and wall time of the kill)."""
    victim, survivors = ops[0], ops[1:]
    moving = serving_now(victim, ns)
    victim.kill()
    t_kill, w_kill = time.perf_counter(), time.time()
    poll(lambda: set().union(*[serving_now(op, ns) for op in survivors]) == names, timeout, interval)
    return moving, time.perf_counter() - t_kill, t_kill, w_kill


def bench_shards(kc: str, tsim: ThreadSim, tmp: pathlib.Path, accounts: int, replicas: int,
                 lease_s: int, shards: int = 32) -> None:
    """R replicas split N accounts; one is killed; time until the others serve its accounts; no
    account served by two replicas at once (from the replicas' logs and the Leases)."""
    ns = "tw-bench-" + uuid.uuid4().hex[:6]
    sh(kc, "create", "namespace", ns)
    sim = tsim.sim
    custom, _ = api(kc)
    docs = []
    for i in range(accounts):
        key, sec = f"shard-{i}-" + uuid.uuid4().hex, uuid.uuid4().hex
        tsim.call(sim.add_account, key, sec, balances={"USDT": "100000"})
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"c{i}", "namespace": ns},
                     "stringData": {"apiKey": key, "secret": sec}})
        docs.append({"apiVersion": "tradewarden.io/v1alpha1", "kind": "TradingAccount",
                     "metadata": {"name": f"a{i}", "namespace": ns},
                     "spec": {"exchange": "binance", "endpoint": tsim.url, "symbols": ["BTC/USDT"],
                              "credentialsSecretRef": {"name": f"c{i}"},
                              "reconciliation": {"intervalSeconds": 300}}})
    sh(kc, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    env = {"TRADEWARDEN_SHARDS": str(shards), "TRADEWARDEN_SHARD_LEASE_SECONDS": str(lease_s),
           "TRADEWARDEN_RATE_SHARE": f"{1 / replicas:.4f}"}
    ops = [Operator(kc, ns, tmp / f"shard-{r}.log", env={**env, "POD_NAME": f"replica-{r}"}) for r in range(replicas)]
    names = {f"a{i}" for i in range(accounts)}
    t0 = time.perf_counter()
    for op in ops:
        op.start()
    try:
        from tradewarden.controller.sharding import preferred, shard_of

        def current(op: Operator) -> set[str]:
            return serving_now(op, ns)

        def members() -> set[str]:
            items = json.loads(sh(kc, "-n", ns, "get", "leases", "-o", "json").stdout)["items"]
            return {i["spec"].get("holderIdentity") for i in items if "-member-" in i["metadata"]["name"]} - {None}

        def split() -> bool:
            """Settled: every replica serves exactly the accounts whose shard prefers it."""
            live = members()
            if len(live) != len(ops):
                return False
            for r, op in enumerate(ops):
                want = {n for n in names if preferred(shard_of(ns, n, shards), live).rsplit("-", 1)[0] == f"replica-{r}"}
                if current(op) != want:
                    return False
            return True

        def all_ready() -> bool:
            items = custom.list_namespaced_custom_object("tradewarden.io", "v1alpha1", ns, "tradingaccounts")["items"]
            return sum(1 for o in items if cond(o, "Ready") == "True") == accounts
        poll(split, 600, 1.0)
        poll(all_ready, 600, 1.0)
        t_ready = time.perf_counter() - t0
        shares = [len(current(op)) for op in ops]
        rss = [proc_cpu_mem(op.proc.pid)[1] for op in ops]
        print(f"[shards] {accounts} accounts, {replicas} replicas, {shards} shards, lease {lease_s}s: split and all Ready "
              f"in {t_ready:.1f}s; accounts per replica {shares}; RSS per replica {[round(r) for r in rss]} MiB")
        moving, t_moved, t_kill, w_kill = kill_first_replica(ops, ns, names, 300, 0.5)
        survivors = ops[1:]
        print(f"[shards] replica killed: its {len(moving)} accounts served by the others {t_moved:.1f}s later "
              f"(bound: lease {lease_s}s + renewal {lease_s / 5:.0f}s + supervisor start); shares now "
              f"{[len(current(op)) for op in survivors]}")
        time.sleep(3)
        # no account served by two replicas at once: per account, the replicas' intervals never overlap
        per_replica = [serving_intervals(ops[0].log(), ns, w_kill)] + \
                      [serving_intervals(op.log(), ns, time.time()) for op in survivors]
        overlaps = 0
        for n in names:
            spans = sorted((a, b, r) for r, iv in enumerate(per_replica) for a, b in iv.get(n, []))
            for (a1, b1, r1), (a2, b2, r2) in zip(spans, spans[1:]):
                if r1 != r2 and a2 < b1:
                    overlaps += 1
        items = json.loads(sh(kc, "-n", ns, "get", "leases", "-o", "json").stdout)["items"]
        holders = {i["spec"].get("holderIdentity") for i in items if "-shard-" in i["metadata"]["name"]}
        print(f"[shards] accounts served by two replicas at once (log intervals, 1 ms resolution): {overlaps}; "
              f"shard Lease holders now: {sorted(h.rsplit('-', 1)[0] for h in holders if h)}")
    finally:
        for op in ops:
            op.stop()
        drop_namespace(kc, ns)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--accounts", type=int, default=100)
    p.add_argument("--window", type=float, default=90.0)
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--only", choices=["estop", "stream", "scale", "anatomy", "shards"])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--lease", type=int, default=15)
    p.add_argument("--anatomy-sizes", default="50,200")
    p.add_argument("--estop-reps", type=int, default=5)
    p.add_argument("--estop-compare", metavar="DIR",
                   help="also time the stops with another checkout's package first on PYTHONPATH (its "
                        "operator/ directory, e.g. a worktree of main), before this version, and print the ratio")
    p.add_argument("--scale-baseline", action="store_true",
                   help="also run the scale part with ccxt's defaults first (TRADEWARDEN_CCXT_IMPORT=full, "
                        "TRADEWARDEN_CCXT_SHARING=off) and print the ratios")
    args = p.parse_args()
    if args.only == "anatomy":
        tsim = ThreadSim()
        try:
            bench_anatomy(tsim, [int(x) for x in args.anatomy_sizes.split(",")])
        finally:
            tsim.stop()
        return 0
    kc = kubeconfig()
    sh(kc, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    sh(kc, "wait", "--for", "condition=established", "--timeout=60s", "crd/tradingaccounts.tradewarden.io")
    tsim = ThreadSim()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tw-bench-"))
    print(f"[bench] operator logs in {tmp}")
    try:
        if args.only in (None, "estop"):
            bench_emergency_stop(kc, tsim, tmp, reps=args.estop_reps, compare_src=args.estop_compare)
        if args.only in (None, "stream"):
            bench_stream_latency(kc, tsim, tmp)
        if args.only == "shards":
            bench_shards(kc, tsim, tmp, args.accounts, args.replicas, args.lease)
        if args.only == "scale" or (args.only is None and not args.skip_scale):
            base = None
            if args.scale_baseline:   # the same operator with ccxt's defaults (full import, a TLS context each)
                base = bench_scale(kc, tsim, tmp, args.accounts, args.window, env=BASELINE_ENV, label=" baseline")
            now = bench_scale(kc, tsim, tmp, args.accounts, args.window)
            if base:
                print(f"[scale] this version / baseline: idle RSS {now['idle']:.0f}/{base['idle']:.0f} MiB "
                      f"({now['idle'] / base['idle']:.2f}x), per account {now['per_account']:.2f}/"
                      f"{base['per_account']:.2f} MiB ({now['per_account'] / max(base['per_account'], 1e-9):.2f}x)")
    finally:
        tsim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
