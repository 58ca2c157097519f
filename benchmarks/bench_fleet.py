"""Many accounts on one operator, or split across replicas (issue 18's proof at scale).

    .venv/bin/python benchmarks/bench_fleet.py --accounts 1000 --replicas 1 [--window 120]
    .venv/bin/python benchmarks/bench_fleet.py --accounts 1000 --replicas 3 [--lease 15] [--window 120]

Real kube-apiserver (the control plane of $TRADEWARDEN_RUN), the simulator in its own process (so the
harness's polling never competes with it for a GIL), `tradewarden run` per replica. Prints:

- creation of N Secrets + N TradingAccounts through the API (8 concurrent writers), and the time from the
  first write to every account Ready; the floor the venue's weight limit puts under that time (every
  replica shares one egress IP here, as behind one NAT: N x the initial sync's weight / the usable limit);
- RSS per replica, idle (measured before the accounts, same run: the baseline) and loaded, and per account;
- CPU seconds of every process (replicas, simulator, kube-apiserver, etcd, this harness) during the
  startup and during the steady window: which process limits a run on this machine;
- API-server writes per hour in the steady window (TradingAccount updates, Events, Lease updates);
- request weight per minute on the egress IP from the simulator's request log, against the venue's limit;
- with replicas: each one's share, one replica killed -> time until its accounts are served by the others,
  and no double serving: every signed request in the simulator's log names its replica (User-Agent,
  gateway/identity.py); each must fall inside that replica's own serving interval for the account (its
  log), the replicas' intervals must never overlap, and every User-Agent must be a member Lease's holder.

Figures are for this machine; compare the ratios.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from benchmarks.bench_controller import (Operator, api, cond, drop_namespace, kubeconfig, poll,  # noqa: E402
                                         kill_first_replica, proc_cpu_mem, serving_intervals, serving_now, sh)
from tradewarden.gateway.budget import WEIGHTS  # noqa: E402
from tradewarden.gateway.identity import instance_of  # noqa: E402

SPOT_LIMIT = 6000               # the simulator's (and Binance's) REQUEST_WEIGHT per minute per IP
SAFETY = 0.9                    # budget.RateBudgets' default: the usable part
# per account at startup: the gateway start's credentials check (account) + the initial sync (account, open orders of 1 symbol)
RUN_WEIGHT = WEIGHTS[("GET", "/api/v3/account")] + WEIGHTS[("GET", "/api/v3/openOrders")][0]    # a reconciliation
INITIAL_WEIGHT = WEIGHTS[("GET", "/api/v3/account")] + RUN_WEIGHT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_by_cmdline(fragment: str) -> list[int]:
    out = []
    for p in pathlib.Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if fragment in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


class CpuMeter:
    """CPU seconds of named processes between marks (from /proc)."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = procs
        self.last = self._read()

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.procs.items():
            try:
                out[name] = proc_cpu_mem(pid)[0]
            except OSError:
                out[name] = math.nan
        return out

    def mark(self) -> dict[str, float]:
        now = self._read()
        delta = {k: now[k] - self.last.get(k, 0.0) for k in now}
        self.last = now
        return delta


class SimProcess:
    """`python -m tradewarden.sim` with N accounts, its request log drained into compact aggregates."""

    def __init__(self, accounts: list[tuple[str, str]], tmp: pathlib.Path) -> None:
        import yaml

        path = tmp / "accounts.yaml"
        path.write_text(yaml.safe_dump({"accounts": [{"apiKey": k, "secret": s, "balances": {"USDT": "100000", "BTC": "1"}}
                                                     for k, s in accounts]}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(tmp / "sim.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tradewarden.sim", "--port", str(self.port), "--accounts",
                                      str(path)], stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT / "operator"),
                                     env=dict(os.environ, PYTHONPATH=str(ROOT / "operator")))
        import requests

        self.http = requests.Session()
        poll(lambda: self._up(), 120, 0.2)
        self.weight_by_min: collections.Counter = collections.Counter()     # (ip, wall minute) -> weight
        # key -> [(signed at, ms: the request's own timestamp, taken by the replica when it built it; agent)]
        self.signed: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
        self.statuses: collections.Counter = collections.Counter()
        self.by_request: collections.Counter = collections.Counter()     # "GET /path[?symbol]" -> weight
        self.count_by_request: collections.Counter = collections.Counter()
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain_loop, daemon=True)
        self._thread.start()

    def _up(self) -> bool:
        try:
            return self.http.get(self.url + "/api/v3/ping", timeout=2).status_code == 200
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    def drain(self) -> None:
        rows = self.http.delete(self.url + "/sim/v1/requests", timeout=60).json()
        for r in rows:
            self.requests += 1
            self.weight_by_min[(r["ip"], r["wall"] // 60000)] += r["weight"]
            self.statuses[(r["status"], r.get("code"))] += 1
            what = f"{r['method']} {r['path']}{'?symbol' if 'symbol' in (r.get('params') or {}) else ''}"
            self.by_request[what] += r["weight"]
            self.count_by_request[what] += 1
            if r.get("key") and "timestamp" in (r.get("params") or {}):
                self.signed[r["key"]].append((int(r["params"]["timestamp"]), r.get("agent") or ""))

    def _drain_loop(self) -> None:
        while not self._stop.wait(2.0):
            try:
                self.drain()
            except Exception:  # noqa: BLE001 - the next drain catches up (the log holds 10,000 rows)
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        try:
            self.drain()
        except Exception:  # noqa: BLE001
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class WriteWatch:
    """MODIFIED/ADDED events of TradingAccounts, Events and Leases in a namespace: the API writes."""

    def __init__(self, kc: str, ns: str) -> None:
        import kubernetes

        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kc, client_configuration=cfg)
        client = kubernetes.client.ApiClient(cfg)
        custom = kubernetes.client.CustomObjectsApi(client)
        core = kubernetes.client.CoreV1Api(client)
        coord = kubernetes.client.CoordinationV1Api(client)
        self.counts: collections.Counter = collections.Counter()
        self._watches = []
        for what, fn, args in (("accounts", custom.list_namespaced_custom_object,
                                ("tradewarden.io", "v1alpha1", ns, "tradingaccounts")),
                               ("events", core.list_namespaced_event, (ns,)),
                               ("leases", coord.list_namespaced_lease, (ns,))):
            w = kubernetes.watch.Watch()
            rv = fn(*args)
            rv = rv["metadata"]["resourceVersion"] if isinstance(rv, dict) else rv.metadata.resource_version
            self._watches.append(w)
            threading.Thread(target=self._run, args=(w, what, fn, args, rv), daemon=True).start()

    def _run(self, w, what, fn, args, rv) -> None:
        try:
            for ev in w.stream(fn, *args, resource_version=rv, timeout_seconds=3600):
                if ev["type"] in ("ADDED", "MODIFIED"):
                    self.counts[what] += 1
        except Exception:  # noqa: BLE001 - closed under us at the end
            pass

    def stop(self) -> None:
        for w in self._watches:
            w.stop()


def create_objects(kc: str, ns: str, url: str, accounts: list[tuple[str, str]], spec: dict) -> float:
    """N Secrets + N TradingAccounts through the API, 8 writers at once; returns the seconds taken."""
    custom, core = api(kc)

    def one(i: int) -> None:
        key, sec = accounts[i]
        core.create_namespaced_secret(ns, {"apiVersion": "v1", "kind": "Secret",
                                           "metadata": {"name": f"c{i}", "namespace": ns},
                                           "stringData": {"apiKey": key, "secret": sec}})
        custom.create_namespaced_custom_object("tradewarden.io", "v1alpha1", ns, "tradingaccounts", {
            "apiVersion": "tradewarden.io/v1alpha1", "kind": "TradingAccount",
            "metadata": {"name": f"a{i}", "namespace": ns},
            "spec": {"exchange": "binance", "endpoint": url, "credentialsSecretRef": {"name": f"c{i}"}, **spec}})
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(one, range(len(accounts))))
    return time.perf_counter() - t0


def ready_count(custom, ns: str) -> int:
    items = custom.list_namespaced_custom_object("tradewarden.io", "v1alpha1", ns, "tradingaccounts")["items"]
    return sum(1 for o in items if cond(o, "Ready") == "True")


def fmt_cpu(d: dict[str, float], seconds: float) -> str:
    return ", ".join(f"{k} {v:.0f}s ({v / seconds * 100:.0f}%)" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def weight_report(sim: SimProcess, t0_ms: int, t1_ms: int) -> str:
    mins = [(ip, m) for (ip, m) in sim.weight_by_min if t0_ms // 60000 < m < t1_ms // 60000]   # whole minutes
    if not mins:
        return "no whole minute in the window"
    per = [sim.weight_by_min[k] for k in mins]
    ips = sorted({ip for ip, _ in mins})
    return (f"{len(per)} whole minute(s) on {ips}: mean {sum(per) / len(per):.0f}, max {max(per)} weight/min; limit "
            f"{SPOT_LIMIT} (usable {int(SPOT_LIMIT * SAFETY)}): max {max(per) / SPOT_LIMIT * 100:.0f}% of the limit")


def double_serving(sim: SimProcess, keys: dict[str, str], intervals: dict[str, dict[str, list[tuple[float, float]]]],
                   tolerance_s: float) -> tuple[int, int, int, collections.Counter, set[str]]:
    """From the simulator's log: (signed requests checked, requests outside their sender's serving
    interval, accounts whose requests came from more than one replica, replicas per account, agents)."""
    outside = checked = 0
    multi = 0
    per_account: collections.Counter = collections.Counter()
    agents: set[str] = set()
    for key, rows in sim.signed.items():
        name = keys.get(key)
        if name is None:
            continue
        senders = set()
        for signed_ms, agent in rows:
            inst = instance_of(agent)
            agents.add(inst or agent)
            replica = inst.rsplit("-", 1)[0] if inst else "?"
            senders.add(replica)
            checked += 1
            t = signed_ms / 1000
            spans = intervals.get(replica, {}).get(name, [])
            if not any(a - tolerance_s <= t <= b + tolerance_s for a, b in spans):
                outside += 1
        per_account[len(senders)] += 1
        multi += len(senders) > 1
    return checked, outside, multi, per_account, agents


def overlaps(intervals: dict[str, dict[str, list[tuple[float, float]]]], names: set[str]) -> int:
    n = 0
    for name in names:
        spans = sorted((a, b, r) for r, iv in intervals.items() for a, b in iv.get(name, []))
        for (a1, b1, r1), (a2, b2, r2) in zip(spans, spans[1:]):
            if r1 != r2 and a2 < b1:
                n += 1
    return n


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--accounts", type=int, default=200)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--shards", type=int, default=32)
    p.add_argument("--lease", type=int, default=15)
    p.add_argument("--window", type=float, default=120.0, help="steady window after all Ready (s)")
    p.add_argument("--interval", type=int, default=600, help="spec.reconciliation.intervalSeconds")
    p.add_argument("--check", type=int, default=300, help="spec.staleOrders.checkIntervalSeconds")
    p.add_argument("--ready-timeout", type=float, default=1800.0)
    p.add_argument("--no-kill", action="store_true", help="replicas: skip killing one")
    args = p.parse_args()
    n, R = args.accounts, args.replicas
    kc = kubeconfig()
    sh(kc, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    sh(kc, "wait", "--for", "condition=established", "--timeout=60s", "crd/tradingaccounts.tradewarden.io")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tw-fleet-"))
    ns = "tw-fleet-" + uuid.uuid4().hex[:6]
    sh(kc, "create", "namespace", ns)
    accounts = [(f"fleet-{i}-{uuid.uuid4().hex}", uuid.uuid4().hex) for i in range(n)]
    keys = {k: f"a{i}" for i, (k, _) in enumerate(accounts)}
    names = set(keys.values())
    per_acct_min = RUN_WEIGHT / args.interval * 60 + WEIGHTS[("GET", "/api/v3/openOrders")][0] / args.check * 60
    print(f"[fleet] {n} accounts, {R} replica(s); logs in {tmp}; spec: 1 symbol, intervalSeconds={args.interval}, "
          f"checkIntervalSeconds={args.check} -> {per_acct_min:.2f} weight/min per account by the table "
          f"({per_acct_min * n:.0f}/min for all, usable {int(SPOT_LIMIT * SAFETY)})")
    sim = SimProcess(accounts, tmp)
    custom, _ = api(kc)
    env: dict[str, str] = {}
    if R > 1:
        env = {"TRADEWARDEN_SHARDS": str(args.shards), "TRADEWARDEN_SHARD_LEASE_SECONDS": str(args.lease),
               "TRADEWARDEN_RATE_SHARE": f"{1 / R:.4f}"}
    ops = [Operator(kc, ns, tmp / f"replica-{r}.log", env={**env, "POD_NAME": f"replica-{r}"}) for r in range(R)]
    api_port = os.environ.get("TRADEWARDEN_API_PORT", "")
    etcd_port = os.environ.get("TRADEWARDEN_ETCD_PORT", "")
    watch = None
    try:
        for op in ops:
            op.start()
        procs = {f"replica-{r}": op.proc.pid for r, op in enumerate(ops)}
        procs["simulator"] = sim.proc.pid
        procs["harness"] = os.getpid()
        for label, frag in (("kube-apiserver", f"--secure-port={api_port}"), ("etcd", f"127.0.0.1:{etcd_port}")):
            found = [pid for pid in pids_by_cmdline(frag) if label.split("-")[-1] in
                     (pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())]
            if found and api_port:
                procs[label] = found[0]
        time.sleep(15)                                      # up, watching, no account yet
        idle = [proc_cpu_mem(op.proc.pid)[1] for op in ops]
        meter = CpuMeter(procs)
        t0, t0_ms = time.perf_counter(), int(time.time() * 1000)
        created_s = create_objects(kc, ns, sim.url, accounts, {"symbols": ["BTC/USDT"],
                                                               "reconciliation": {"intervalSeconds": args.interval},
                                                               "staleOrders": {"checkIntervalSeconds": args.check}})
        print(f"[fleet] {n} Secrets + {n} TradingAccounts created through the API in {created_s:.1f}s "
              f"({2 * n / created_s:.0f} objects/s, 8 writers)")
        last = [0, time.perf_counter()]

        def all_ready() -> bool:
            k = ready_count(custom, ns)
            if time.perf_counter() - last[1] > 60:
                print(f"[fleet]   {time.perf_counter() - t0:.0f}s: {k}/{n} Ready", flush=True)
                last[1] = time.perf_counter()
            return k == n
        poll(all_ready, args.ready_timeout, max(5.0, n / 100))      # a list of N accounts per poll
        t_ready = time.perf_counter() - t0
        cpu_start = meter.mark()
        usable = int(SPOT_LIMIT * SAFETY)
        floor = max(0.0, (n * INITIAL_WEIGHT - usable) / usable * 60)
        print(f"[fleet] all {n} Ready {t_ready:.1f}s after the first write (floor set by the venue's weight limit on "
              f"one IP: initial syncs {n} x {INITIAL_WEIGHT} = {n * INITIAL_WEIGHT} weight, {usable} usable per minute "
              f"-> at least {floor:.0f}s)")
        print(f"[fleet] CPU during the startup ({t_ready:.0f}s): {fmt_cpu(cpu_start, t_ready)}")
        if R > 1:
            def current(op: Operator) -> set[str]:
                return serving_now(op, ns)
            poll(lambda: sum(len(current(op)) for op in ops) == n, 300, 2.0)
            shares = [len(current(op)) for op in ops]
        else:
            shares = [n]
        rss = [proc_cpu_mem(op.proc.pid)[1] for op in ops]
        print(f"[fleet] accounts per replica {shares}; RSS idle {[round(x) for x in idle]} MiB -> loaded "
              f"{[round(x) for x in rss]} MiB; per account "
              f"{[round((b - a) / max(s, 1), 3) for a, b, s in zip(idle, rss, shares)]} MiB")
        # steady window
        watch = WriteWatch(kc, ns)
        time.sleep(2)
        meter.mark()
        w0, w0_ms = time.perf_counter(), int(time.time() * 1000)
        time.sleep(args.window)
        dt = time.perf_counter() - w0
        cpu_win = meter.mark()
        counts = dict(watch.counts)
        watch.stop()
        watch = None
        per_h = 3600 / dt
        total = sum(counts.values())
        print(f"[fleet] steady {dt:.0f}s: API writes {counts} -> {total * per_h:.0f}/h "
              f"({total * per_h / n:.2f}/h per account)")
        print(f"[fleet] steady CPU: {fmt_cpu(cpu_win, dt)}")
        sim.drain()
        print(f"[fleet] weight on the egress IP, steady: {weight_report(sim, w0_ms, int(time.time() * 1000))}")
        print(f"[fleet] weight on the egress IP, from the first write: {weight_report(sim, t0_ms, int(time.time() * 1000))}")
        print("[fleet] weight by request since the first write: " + ", ".join(
            f"{k} {v} ({sim.count_by_request[k]} requests)" for k, v in sim.by_request.most_common(8)))
        bad = {k: v for k, v in sim.statuses.items() if k[0] != 200}
        print(f"[fleet] simulator: {sim.requests} REST requests, not 200: {bad or 'none'}")
        members_seen: set[str] = set()
        if R > 1:   # the member Leases now (a killed replica's is deleted by the survivors later)
            members_seen = {i["spec"].get("holderIdentity") for i in json.loads(sh(kc, "-n", ns, "get", "leases", "-o",
                            "json").stdout)["items"] if "-member-" in i["metadata"]["name"]} - {None}
        if R > 1 and not args.no_kill:
            moving, t_moved, t_kill, w_kill = kill_first_replica(ops, ns, names, 900, 1.0)
            survivors = ops[1:]
            print(f"[fleet] replica-0 killed: its {len(moving)} accounts served by the others {t_moved:.1f}s later "
                  f"(lease {args.lease}s + renewal {args.lease / 5:.0f}s + supervisors); shares now "
                  f"{[len(current(op)) for op in survivors]}", flush=True)
            try:
                poll(lambda: ready_count(custom, ns) == n, args.ready_timeout / 2, 5.0)
                print(f"[fleet] all Ready again {time.perf_counter() - t_kill:.1f}s after the kill (the moved accounts' "
                      f"initial syncs through the survivors' rate shares)")
            except TimeoutError:
                print(f"[fleet] NOT all Ready {time.perf_counter() - t_kill:.0f}s after the kill: "
                      f"{n - ready_count(custom, ns)} not Ready")
            time.sleep(5)
        sim.drain()
        if R > 1:
            end = time.time()
            intervals = {f"replica-{r}": serving_intervals(op.log(), ns, w_kill if (r == 0 and not args.no_kill) else end)
                         for r, op in enumerate(ops)}
            checked, outside, multi, per_account, agents = double_serving(sim, keys, intervals, tolerance_s=0.05)
            leases = json.loads(sh(kc, "-n", ns, "get", "leases", "-o", "json").stdout)["items"]
            members = members_seen | {i["spec"].get("holderIdentity") for i in leases if "-member-" in i["metadata"]["name"]}
            print(f"[fleet] no double serving, from the simulator's log: {checked} signed requests, each naming its "
                  f"replica: {outside} outside that replica's own serving interval for the account; accounts by "
                  f"number of replicas that ever sent for them {dict(sorted(per_account.items()))} ({multi} moved); "
                  f"replicas' serving intervals overlapping: {overlaps(intervals, names)}")
            print(f"[fleet] User-Agents seen {sorted(agents)}; member Lease holders (before the kill and now) "
                  f"{sorted(m for m in members if m)}; "
                  f"unknown agents: {sorted(a for a in agents if a not in members)}")
    finally:
        if watch is not None:
            watch.stop()
        for op in ops:
            op.stop()
        sim.stop()
        drop_namespace(kc, ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
