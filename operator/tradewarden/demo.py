"""`tradewarden demo`: the whole mission in one command.

Local control plane (or the cluster KUBECONFIG points at) + the exchange simulator + the operator +
the sample TradingAccount, then a walk through what tradewarden is for: initial sync, a balance drift and
a missed fill found by the next reconciliation, a stale order cancelled (a foreign one untouched), a
stream drop followed by an immediate reconciliation, and an emergency stop that empties the book.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Callable

from . import models
from .output import Console

PKG = pathlib.Path(__file__).resolve().parent
NAMESPACE = "tradewarden-demo"
ACCOUNT = "demo"
API_KEY = "demo-api-key"
API_SECRET = "demo-api-secret"
SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]

# Styles are always written; the console drops them under NO_COLOR, off a terminal and in JSON mode.
BOLD, DIM, GREEN, YELLOW, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[33m", "\033[31m", "\033[0m")
CONSOLE = Console()


def emit(text: str, **kw: Any) -> None:
    CONSOLE.emit(text, **kw)


class DemoError(RuntimeError):
    pass


def step(n: int, title: str) -> None:
    emit(f"\n{BOLD}== {n}. {title}{RESET}", step=n)


def say(text: str) -> None:
    emit(f"   {text}")


def ok(text: str) -> None:
    emit(f"   {GREEN}✓{RESET} {text}", ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    def __init__(self, keep: bool, fast: bool, in_cluster: bool = False):
        self.keep = keep
        self.in_cluster = in_cluster    # the operator as a Pod from its image, on the local node
        self.node = None
        self.started_node = False
        self.release = "tradewarden-demo"
        self.pause = 0.5 if fast else 2.0
        self.procs: list[subprocess.Popen] = []
        self.started_control_plane = False
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="tradewarden-demo-"))
        self.kubeconfig = ""
        self.sim_port = 8765
        self.sim_url = ""

    # ---- plumbing -----------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        r = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=input,
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def sim(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.sim_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def account(self) -> dict:
        return self.sim("GET", f"/sim/v1/accounts/{API_KEY}")

    def ta(self) -> dict:
        return json.loads(self.kubectl("-n", NAMESPACE, "get", "ta", ACCOUNT, "-o", "json"))

    def wait_for(self, what: str, predicate: Callable[[dict], bool], timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        spinner = "|/-\\"
        tty = CONSOLE.interactive
        t0 = time.monotonic()
        i = 0
        if not tty:
            say(f"waiting for {what} ...")
        while True:
            obj = self.ta()
            if predicate(obj):
                if tty:
                    print("\r" + " " * 70 + "\r", end="", flush=True)
                say(f"{DIM}({what}: {time.monotonic() - t0:.1f} s){RESET}")
                return obj
            if time.monotonic() > deadline:
                raise DemoError(f"timed out waiting for {what}; status: "
                                f"{json.dumps(obj.get('status', {}).get('conditions', []))[:800]}")
            if tty:
                print(f"\r   {spinner[i % 4]} waiting for {what} ...", end="", flush=True)
            i += 1
            time.sleep(0.5)

    def show_table(self) -> None:
        for line in self.kubectl("-n", NAMESPACE, "get", "ta", "-o", "wide").splitlines():
            say(f"{DIM}{line}{RESET}")

    def show_events(self, since_count: int = 0) -> int:
        out = json.loads(self.kubectl("-n", NAMESPACE, "get", "events", "-o", "json",
                                      f"--field-selector=involvedObject.name={ACCOUNT}"))
        items = sorted(out["items"], key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "",
                                                     e["metadata"]["name"]))
        for e in items[since_count:]:
            colour = YELLOW if e.get("type") == "Warning" else DIM
            say(f"{colour}event {e.get('type', ''):7} {e.get('reason', ''):24} {e.get('message', '')[:110]}{RESET}")
        return len(items)

    def request_reconcile(self) -> str:
        token = str(time.time())
        self.kubectl("-n", NAMESPACE, "annotate", "ta", ACCOUNT, "--overwrite",
                     f"{models.ANNOTATION_RECONCILE_REQUESTED_AT}={token}")
        return token

    # ---- the mission ----------------------------------------------------------------------------

    def setup_cluster(self) -> None:
        if self.in_cluster:
            self.setup_node()
            return self.install_crd()
        step(1, "A real Kubernetes API server")
        existing = os.environ.get("KUBECONFIG")
        if existing and subprocess.run(["kubectl", "--kubeconfig", existing, "--request-timeout=5s", "get", "--raw",
                                        "/readyz"], capture_output=True).returncode == 0:
            self.kubeconfig = existing
            ok(f"using the cluster KUBECONFIG points at ({existing})")
        else:
            say("starting the local control plane (etcd + kube-apiserver on 127.0.0.1);")
            say("the first run on a machine builds it from Debian's sources: about 5 minutes")
            r = subprocess.run(["bash", str(PKG / "scripts" / "controlplane.sh"), "status"], capture_output=True)
            already = r.returncode == 0
            out = subprocess.run(["bash", str(PKG / "scripts" / "controlplane.sh"), "start"], stdout=subprocess.PIPE,
                                 text=True)
            if out.returncode != 0:
                raise DemoError("the local control plane did not start (see the messages above)")
            self.kubeconfig = out.stdout.strip().splitlines()[-1].removeprefix("export KUBECONFIG=")
            self.started_control_plane = not already
            ok(f"kube-apiserver ready; KUBECONFIG={self.kubeconfig}")
        self.install_crd()

    def setup_node(self) -> None:
        from . import incluster
        step(1, "A real Kubernetes API server and a node (containerd, kubelet, scheduler)")
        say("the local control plane and its node; the first run on a machine builds them from Debian's")
        say("sources (about 10 minutes), later runs start them in seconds")
        r = subprocess.run(["bash", str(PKG / "scripts" / "controlplane.sh"), "status"], capture_output=True,
                           text=True)
        self.started_control_plane = r.returncode != 0
        self.started_node = "node: " not in r.stdout
        try:
            self.node = incluster.start_node()
        except incluster.InClusterError as e:
            raise DemoError(str(e)) from None
        self.kubeconfig = self.node.kubeconfig
        ok(f"node Ready; Pods reach this machine at {self.node.ip}; KUBECONFIG={self.kubeconfig}")

    def install_crd(self) -> None:
        crd = self.workdir / "crd.yaml"
        from .crd import crd_yaml
        crd.write_text(crd_yaml())
        self.kubectl("apply", "-f", str(crd))
        self.kubectl("wait", "--for", "condition=established", "--timeout=60s", f"crd/{models.PLURAL}.{models.GROUP}")
        ok("TradingAccount CRD installed and Established")
        self.clear_leftover_namespace()
        self.kubectl("create", "namespace", NAMESPACE, check=False)

    def clear_leftover_namespace(self) -> None:
        """A namespace left terminating by an earlier run whose operator died before removing its
        finalizers: with no operator serving it, release the accounts and wait for it to go."""
        out = self.kubectl("get", "namespace", NAMESPACE, "-o", "jsonpath={.status.phase}", check=False)
        if out.strip() != "Terminating":
            return
        say(f"namespace {NAMESPACE} is still terminating from an earlier run: releasing its accounts")
        for name in self.kubectl("-n", NAMESPACE, "get", "ta", "-o", "name", check=False).split():
            self.kubectl("-n", NAMESPACE, "patch", name, "--type=merge", "-p",
                         '{"metadata":{"finalizers":null}}', check=False)
        deadline = time.monotonic() + 60
        while self.kubectl("get", "namespace", NAMESPACE, "-o", "name", check=False).strip():
            if time.monotonic() > deadline:
                raise DemoError(f"namespace {NAMESPACE} did not finish terminating")
            time.sleep(0.5)

    def start_simulator(self) -> None:
        step(2, "The exchange: tradewarden's Binance-compatible simulator")
        self.sim_port = free_port()
        host = self.node.ip if self.node else "127.0.0.1"   # a Pod reaches this machine at the node's address
        self.sim_url = f"http://{host}:{self.sim_port}"
        log = open(self.workdir / "sim.log", "w")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "tradewarden.cli", "sim", "--host", host,
                                            "--port", str(self.sim_port)],
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.sim_url + "/api/v3/ping", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise DemoError(f"the simulator did not start; log: {self.workdir / 'sim.log'}")
                time.sleep(0.2)
        self.sim("POST", "/sim/v1/accounts", {"apiKey": API_KEY, "secret": API_SECRET,
                                               "balances": {"USDT": "25000", "BTC": "0.5", "ETH": "4", "BNB": "30"}})
        for sym, price in (("BTCUSDT", "60000"), ("ETHUSDT", "3000"), ("BNBUSDT", "600")):
            self.sim("POST", f"/sim/v1/markets/{sym}/price", {"price": price})
        # the bot's orders (owned: client order id "tw-...") and one placed by hand (foreign)
        orders = [
            ("BTCUSDT", "BUY", "0.01", "55000", "tw-bot-btc-1"),
            ("BTCUSDT", "SELL", "0.02", "65000", "tw-bot-btc-2"),
            ("ETHUSDT", "BUY", "0.5", "2800", "tw-bot-eth-1"),
            ("ETHUSDT", "SELL", "1", "3300", "tw-bot-eth-2"),
            ("BNBUSDT", "BUY", "2", "550", "tw-bot-bnb-1"),
            ("BNBUSDT", "SELL", "3", "700", "manual-by-alice"),
        ]
        self.order_ids = {}
        for sym, side, qty, price, cid in orders:
            o = self.sim("POST", f"/sim/v1/accounts/{API_KEY}/orders",
                         {"symbol": sym, "side": side, "type": "LIMIT", "quantity": qty, "price": price,
                          "newClientOrderId": cid})
            self.order_ids[cid] = o["orderId"]
        ok(f"simulator on {self.sim_url}: account with USDT, BTC, ETH, BNB and {len(orders)} open orders "
           f"(5 placed by the bot, 1 by hand)")

    def start_operator(self) -> None:
        step(3, "The operator and the TradingAccount")
        if self.in_cluster:
            self.install_operator_pod()
        else:
            log = open(self.workdir / "operator.log", "w")
            env = {**os.environ, "KUBECONFIG": self.kubeconfig}
            self.metrics_port = free_port()
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "tradewarden.cli", "run", "--standalone", "--namespace", NAMESPACE,
                 "--metrics-port", str(self.metrics_port), "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
                 "--log-format", CONSOLE.fmt],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
            ok(f"operator running (log: {self.workdir / 'operator.log'}, metrics: "
               f"http://127.0.0.1:{self.metrics_port}/metrics)")
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tradewarden-demo-credentials"},
                  "type": "Opaque", "stringData": {"apiKey": API_KEY, "secret": API_SECRET}}
        self.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=json.dumps(secret))
        account = {
            "apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": ACCOUNT},
            "spec": {"exchange": "binance", "endpoint": self.sim_url,
                     "credentialsSecretRef": {"name": "tradewarden-demo-credentials"},
                     "symbols": SYMBOLS, "policy": "Correct",
                     "reconciliation": {"intervalSeconds": 300},
                     "staleOrders": {"timeoutSeconds": 3600, "checkIntervalSeconds": 5,
                                     "ownedClientOrderIdPrefix": "tw-"}},
        }
        self.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=json.dumps(account))
        say("kubectl apply -f tradingaccount.yaml   (exchange binance, 3 symbols, policy Correct)")

    def install_operator_pod(self) -> None:
        from . import incluster
        try:
            say("building the operator's image from the Dockerfile (buildah; the first build makes the base)")
            t0 = time.monotonic()
            image = incluster.build_image()
            incluster.load_image()
            ok(f"image {image} built and loaded into the node in {time.monotonic() - t0:.0f} s")
            t0 = time.monotonic()
            incluster.helm("install", self.release, str(incluster.CHART), "--take-ownership",
                           *incluster.install_values(self.node, image, NAMESPACE, self.release),
                           kubeconfig=self.kubeconfig)
            self.installed = True
            say(f"helm install {self.release} charts/tradewarden -n {NAMESPACE} "
                f"--set watchNamespaces={{{NAMESPACE}}} --set image.repository=... (the image built here)")
            pod = incluster.wait_ready_pod(self.kubeconfig, NAMESPACE, self.release)
        except incluster.InClusterError as e:
            raise DemoError(str(e)) from None
        ok(f"operator Pod {pod['metadata']['name']} Running and Ready in {time.monotonic() - t0:.1f} s "
           f"(in-cluster config, ServiceAccount {pod['spec']['serviceAccountName']}; "
           f"log: kubectl -n {NAMESPACE} logs {pod['metadata']['name']})")

    def initial_sync(self) -> None:
        step(4, "Initial sync")
        obj = self.wait_for("Ready", lambda o: _cond(o, "Ready") == "True", timeout=120)
        st = obj["status"]
        ok(f"Ready: {len(st.get('balances', []))} balances, {st['openOrders']['count']} open orders "
           f"({st['openOrders'].get('owned', '?')} owned), {len(st.get('positions', []))} positions")
        for b in st.get("balances", [])[:6]:
            say(f"{DIM}{b['asset']:6} free {b['free']:>14}  locked {b['locked']:>12}{RESET}")
        self.show_table()
        self.events_seen = self.show_events()
        time.sleep(self.pause)

    def drift_and_missed_fill(self) -> None:
        step(5, "A balance drift and a missed fill, found by the next reconciliation")
        self.sim("POST", f"/sim/v1/accounts/{API_KEY}/balances", {"asset": "USDT", "delta": "-1500"})
        say("withdrawal of 1500 USDT made outside the bot (out of band)")
        self.sim("POST", f"/sim/v1/accounts/{API_KEY}/stream", {"deliver": False})
        self.sim("POST", f"/sim/v1/accounts/{API_KEY}/orders/{self.order_ids['tw-bot-eth-1']}/fill",
                 {"quantity": "0.2"})
        self.sim("POST", f"/sim/v1/accounts/{API_KEY}/stream", {"deliver": True})
        say("order tw-bot-eth-1 partly filled (0.2 of 0.5) while its stream event was lost")
        before = self.ta()["status"].get("metrics", {}).get("runs", 0)
        self.request_reconcile()
        say(f"kubectl annotate ta {ACCOUNT} {models.ANNOTATION_RECONCILE_REQUESTED_AT}=<now>")
        obj = self.wait_for("the reconciliation", lambda o: o["status"].get("metrics", {}).get("runs", 0) > before
                            and o["status"]["lastReconciliation"].get("discrepancyCount", 0) > 0)
        last = obj["status"]["lastReconciliation"]
        ok(f"reconciliation found {last['discrepancyCount']} discrepancies: {last.get('discrepancies')}")
        self.events_seen = self.show_events(self.events_seen)
        self.show_table()
        time.sleep(self.pause)

    def stale_order(self) -> None:
        step(6, "A stale order cancelled; an order placed by hand left alone")
        self.kubectl("-n", NAMESPACE, "patch", "ta", ACCOUNT, "--type=merge",
                     "-p", json.dumps({"spec": {"staleOrders": {"timeoutSeconds": 1}}}))
        say("staleOrders.timeoutSeconds lowered to 1 s: every bot order is now stale")
        obj = self.wait_for("the stale cleanup", lambda o: o["status"].get("metrics", {}).get("staleOrdersCancelled", 0) > 0)
        acct = self.account()
        cids = sorted(o.get("clientOrderId", "") for o in acct.get("openOrders", []))
        ok(f"{obj['status']['metrics']['staleOrdersCancelled']} stale bot orders cancelled; still open on the "
           f"exchange: {cids}")
        self.kubectl("-n", NAMESPACE, "patch", "ta", ACCOUNT, "--type=merge",
                     "-p", json.dumps({"spec": {"staleOrders": {"timeoutSeconds": 3600}}}))
        self.events_seen = self.show_events(self.events_seen)
        # fresh bot orders for the emergency stop
        for sym, side, qty, price, cid in (("BTCUSDT", "BUY", "0.01", "50000", "tw-bot-btc-3"),
                                           ("ETHUSDT", "BUY", "0.3", "2500", "tw-bot-eth-3")):
            self.sim("POST", f"/sim/v1/accounts/{API_KEY}/orders",
                     {"symbol": sym, "side": side, "type": "LIMIT", "quantity": qty, "price": price,
                      "newClientOrderId": cid})
        time.sleep(self.pause)

    def stream_drop(self) -> None:
        step(7, "The user-data stream drops: events in the gap are lost, so tradewarden reconciles at once")
        before = self.ta()["status"].get("metrics", {}).get("runs", 0)
        self.sim("POST", "/sim/v1/streams/drop", {"abort": True})
        say("every user-data socket aborted on the exchange side (TCP drop)")
        obj = self.wait_for("reconnect + reconciliation",
                            lambda o: o["status"].get("metrics", {}).get("runs", 0) > before
                            and o["status"]["lastReconciliation"].get("trigger") == "stream-reconnect")
        ok(f"stream {obj['status']['stream']['state']} again (reconnects: {obj['status']['stream']['reconnects']}); "
           f"reconciled right after: {obj['status']['openOrders']['count']} open orders")
        self.events_seen = self.show_events(self.events_seen)
        time.sleep(self.pause)

    def emergency_stop(self) -> None:
        step(8, "Emergency stop by annotation")
        n = len(self.account().get("openOrders", []))
        t0 = time.monotonic()
        self.kubectl("-n", NAMESPACE, "annotate", "ta", ACCOUNT, "--overwrite",
                     f"{models.ANNOTATION_EMERGENCY_STOP}=demo: pull the brake")
        say(f'kubectl annotate ta {ACCOUNT} {models.ANNOTATION_EMERGENCY_STOP}="demo: pull the brake"   '
            f"({n} orders open on the exchange)")
        obj = self.wait_for("the emergency stop",
                            lambda o: o["status"].get("emergencyStop", {}).get("completedAt"), timeout=120)
        took = time.monotonic() - t0
        es = obj["status"]["emergencyStop"]
        left = self.account().get("openOrders", [])
        ok(f"EmergencyStopped={_cond(obj, 'EmergencyStopped')}: {es.get('ordersCancelled')} orders cancelled, "
           f"{len(left)} open on the exchange, in {took:.1f} s (requested by {es.get('requestedBy') or 'unknown'})")
        self.show_table()
        self.events_seen = self.show_events(self.events_seen)
        if left:
            raise DemoError(f"orders still open after the emergency stop: {left}")

    def cleanup(self) -> None:
        if self.keep:
            emit(f"\n{BOLD}Everything keeps running (--keep).{RESET}")
            emit(f"   export KUBECONFIG={self.kubeconfig}; kubectl -n {NAMESPACE} get ta")
            emit(f"   simulator: {self.sim_url} (control API under /sim/v1/)")
            pids = " ".join(str(p.pid) for p in self.procs)
            emit(f"   stop it: kill {pids}" + ("; ./tw testenv stop" if self.started_control_plane else ""))
            return
        if self.kubeconfig and (self.procs or getattr(self, "installed", False)):
            # delete the account while the operator runs, so it removes its finalizer (an account
            # deleted after its operator is gone would hold the namespace in Terminating)
            self.kubectl("-n", NAMESPACE, "delete", "ta", "--all", "--timeout=30s", check=False)
        if getattr(self, "installed", False):
            from . import incluster
            incluster.helm("uninstall", self.release, "--namespace", NAMESPACE, kubeconfig=self.kubeconfig,
                           check=False)
        if self.started_node and not self.started_control_plane:
            from . import incluster
            incluster.stop_node()
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if self.kubeconfig:
            self.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        if self.started_control_plane:
            subprocess.run(["bash", str(PKG / "scripts" / "controlplane.sh"), "stop"], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
        emit(f"\n{DIM}Stopped the operator and the simulator"
              + (" and the local control plane" if self.started_control_plane else "") + f"; nothing left running.{RESET}")

    def run(self) -> int:
        emit(f"{BOLD}tradewarden demo{RESET}: an exchange account kept honest, end to end")
        try:
            self.setup_cluster()
            self.start_simulator()
            self.start_operator()
            self.initial_sync()
            self.drift_and_missed_fill()
            self.stale_order()
            self.stream_drop()
            self.emergency_stop()
            emit(f"\n{GREEN}{BOLD}Demo complete.{RESET}")
            return 0
        except (DemoError, OSError) as e:
            emit(f"\n{RED}demo failed: {e}{RESET}", level="error", err=True)
            if getattr(self, "installed", False):
                logs = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, "-n", NAMESPACE, "logs", "-l",
                                       f"app.kubernetes.io/instance={self.release}", "--tail=15"],
                                      capture_output=True, text=True).stdout
                emit("--- last lines of the operator Pod's log:\n" + logs, level="error", err=True)
            for name in ("operator.log", "sim.log"):
                path = self.workdir / name
                if path.exists():
                    tail = path.read_text().splitlines()[-15:]
                    emit("\n".join([f"--- last lines of {name}:", *tail]), level="error", err=True)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            self.cleanup()


def _cond(obj: dict, type_: str) -> str:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c["status"]
    return ""


def main(keep: bool = False, fast: bool = False, log_format: str = "text", in_cluster: bool = False) -> int:
    global CONSOLE
    CONSOLE = Console(log_format)
    return Demo(keep=keep, fast=fast, in_cluster=in_cluster).run()
