"""Controller-level faults: `tradewarden run` as a subprocess against the real API server, the
simulator and real ccxt. Few and fast (they share the API server with every other test)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
import uuid

import pytest

from tests.conftest import ROOT, kubectl
from tests.controller.conftest import (Operator, account, apply, checkpoint_of, cond, events_of, get_ta, secret,
                                      wait_for)

pytestmark = [pytest.mark.cluster, pytest.mark.sim, pytest.mark.timeout(240)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MetricsOperator(Operator):
    """The operator with its /metrics on 127.0.0.1:<port>, verbose (DEBUG) logging, optional kubeconfig."""

    def __init__(self, *args, port: int, **kw):
        super().__init__(*args, **kw)
        self.port = port

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, PYTHONUNBUFFERED="1",
                   TRADEWARDEN_METRICS_HOST="127.0.0.1", **self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tradewarden.cli", "run", "--standalone", "-n", self.namespace,
             "--metrics-port", str(self.port), "--liveness", "off", "-v"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture
def operators(crd_installed, tmp_path):
    started: list[Operator] = []

    def make(namespace: str, kubeconfig: str | None = None, **kw) -> MetricsOperator:
        op = MetricsOperator(kubeconfig or crd_installed, namespace, tmp_path / f"op-{len(started)}.log",
                             port=free_port(), **kw)
        op.start()
        started.append(op)
        return op

    yield make
    for op in started:
        op.stop()


def ready(kc, ns, name):
    return lambda: (o := get_ta(kc, ns, name)) and cond(o, "Ready").get("status") == "True" and o


def poke(kc, ns, name, value):
    kubectl(kc, "-n", ns, "annotate", "ta", name, f"tradewarden.io/reconcile-requested-at={value}", "--overwrite")


def rekey(sim, old: str, new: str, new_secret: str) -> None:
    """Rotate an account's credentials on the venue: the old key is revoked at once."""
    acct = sim.exchange.accounts.pop(old)
    acct.api_key, acct.secret = new, new_secret
    sim.exchange.accounts[new] = acct


def assert_no_secret(texts: dict[str, str], *secrets: str) -> None:
    for where, text in texts.items():
        for s in secrets:
            assert s not in text, f"a secret appeared in {where}"
        assert not re.search(r"signature=[0-9a-f]{16,}", text), f"a signature appeared in {where}"


def test_credentials_rotated_then_recovered_and_nothing_leaks(crd_installed, namespace, tsim, operators):
    """The key is revoked on the venue (CredentialsValid False), the Secret is rotated (recovery to
    Ready); the operator is SIGKILLed in the middle of a slow run and restarted (Ready again, no order
    lost, the foreign order untouched). Afterwards: no key, secret or signature in the operator's DEBUG
    log, the status, the Events or /metrics."""
    kc, ns, sim = crd_installed, namespace, tsim.sim
    key1, secret1 = "tw-key-" + uuid.uuid4().hex, "tw-secret-" + uuid.uuid4().hex
    key2, secret2 = "tw-key-" + uuid.uuid4().hex, "tw-secret-" + uuid.uuid4().hex
    tsim.call(sim.add_account, key1, secret1, balances={"USDT": "100000", "BTC": "1"})
    for cid, price in (("tw-1", "40000"), ("manual-1", "39000")):
        tsim.call(sim.place_order, key1, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                  price=price, time_in_force="GTC", client_order_id=cid)
    apply(kc, secret(ns, "creds", {"apiKey": key1, "secret": secret1}))
    apply(kc, account(ns, "acct", endpoint=tsim.url, symbols=["BTC/USDT"], secret_name="creds",
                      reconciliation={"intervalSeconds": 3600}))
    op = operators(ns)
    wait_for("Ready", ready(kc, ns, "acct"), operator=op)

    # ---- the key is revoked on the venue -------------------------------------------------------
    tsim.call(rekey, sim, key1, key2, secret2)
    poke(kc, ns, "acct", "after-revoke")
    obj = wait_for("CredentialsValid False", lambda: (o := get_ta(kc, ns, "acct"))
                   and cond(o, "CredentialsValid").get("status") == "False" and o, timeout=90, operator=op)
    assert cond(obj, "Ready")["status"] == "False"
    # ---- the Secret is rotated -----------------------------------------------------------------
    apply(kc, secret(ns, "creds", {"apiKey": key2, "secret": secret2}))
    poke(kc, ns, "acct", "after-rotate")
    obj = wait_for("Ready after rotation", ready(kc, ns, "acct"), timeout=120, operator=op)
    assert cond(obj, "CredentialsValid")["status"] == "True"
    metrics = op.metrics()

    # ---- the operator is killed in the middle of a run -----------------------------------------
    slow = tsim.call(sim.add_fault, method="GET", path="/api/v3/openOrders", latency_ms=3000)
    before = len(sim.requests())
    poke(kc, ns, "acct", "mid-run")
    wait_for("a run in flight", lambda: any(r["path"] == "/api/v3/account" for r in sim.requests()[before:]),
             timeout=30, operator=op)
    op.kill()
    tsim.call(sim.faults.remove, slow)
    # while nobody watches: a partial fill of the owned order, a new owned order
    tw1 = tsim.call(lambda: sim.account(key2).find("spot", "BTCUSDT", None, "tw-1").order_id)
    tsim.call(sim.fill, key2, tw1, "0.004")
    tsim.call(sim.place_order, key2, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
              price="38000", time_in_force="GTC", client_order_id="tw-2")
    op2 = operators(ns)

    def reconciled():
        o = ready(kc, ns, "acct")()
        items = {i["clientOrderId"]: i for i in (o or {}).get("status", {}).get("openOrders", {}).get("items", [])}
        return o if set(items) == {"tw-1", "tw-2", "manual-1"} and items["tw-1"]["filled"] == "0.004" else None
    obj = wait_for("the restarted operator reconciled what changed while it was down", reconciled, timeout=90,
                   operator=op2)
    deletes = [r for r in sim.requests() if r["method"] == "DELETE" and r["key"] in (key1, key2)]
    assert deletes == []                              # nothing stale, nothing foreign: no cancel at all

    # ---- nothing leaked anywhere ---------------------------------------------------------------
    texts = {
        "operator log": op.log() + op2.log(),
        "status": json.dumps(obj),
        "events": json.dumps(events_of(kc, ns, "acct")),
        "metrics": metrics + op2.metrics(),
    }
    assert "AuthenticationFailed" in texts["operator log"] + texts["events"] + texts["status"] or \
        "credentials" in texts["events"]
    assert_no_secret(texts, key1, secret1, key2, secret2)


# ---- the operator under its own ServiceAccount with the shipped RBAC --------------------------

def sa_kubeconfig(kc: str, ns: str, sa: str, path) -> str:
    """A kubeconfig that authenticates with a token of ServiceAccount ``ns/sa``."""
    r = kubectl(kc, "-n", ns, "create", "token", sa, "--duration=1h", check=False)
    token = r.stdout.strip()
    if r.returncode != 0 or not token:
        raise AssertionError(f"kubectl create token failed: {r.stderr}")
    cfg = json.loads(kubectl(kc, "config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = cfg["clusters"][0]
    out = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
           "users": [{"name": sa, "user": {"token": token}}],
           "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}],
           "current-context": sa}
    path.write_text(json.dumps(out))
    return str(path)


def shipped_rbac(ns: str, suffix: str) -> list[dict]:
    """manifests/rbac.yaml bound to a ServiceAccount in ``ns`` (cluster objects renamed per test)."""
    import yaml
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text()) if d]
    for d in docs:
        if d["kind"] == "ServiceAccount":
            d["metadata"]["namespace"] = ns
        elif d["kind"] in ("ClusterRole", "Role"):
            d["metadata"]["name"] += suffix
        elif d["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            d["metadata"]["name"] += suffix
            d["roleRef"]["name"] += suffix
            for s in d["subjects"]:
                s["namespace"] = ns
    return docs


def test_operator_under_its_service_account_rbac(crd_installed, namespace, tsim, operators, tmp_path):
    kc, ns, sim = crd_installed, namespace, tsim.sim
    suffix = "-" + ns
    docs = shipped_rbac(ns, suffix)
    for d in docs:
        apply(kc, d)
    try:
        sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        sakc = sa_kubeconfig(kc, ns, sa, tmp_path / "sa.kubeconfig")
        # what the ServiceAccount may not do: a denied request is the expected result
        denied = [("get", "secrets", "-A"), ("delete", "namespace", ns),
                  ("create", "secret", "generic", "x", "-n", ns), ("get", "secrets", "-n", "kube-system"),
                  ("delete", "tradingaccount", "acct", "-n", ns), ("get", "pods", "-n", ns),
                  ("delete", "configmap", "acct-ledger", "-n", ns)]     # the checkpoint goes with its account (GC)
        for verb, *rest in denied:
            r = kubectl(sakc, verb, *rest, check=False)
            assert r.returncode != 0 and "forbidden" in (r.stderr + r.stdout).lower(), (verb, rest, r.stdout)
        assert kubectl(sakc, "auth", "can-i", "patch", "tradingaccounts/status", "-n", ns, check=False
                       ).stdout.strip() == "yes"
        # what it must do: serve an account end to end under that identity
        key, api_secret = "tw-key-" + uuid.uuid4().hex, "tw-secret-" + uuid.uuid4().hex
        tsim.call(sim.add_account, key, api_secret, balances={"USDT": "1000", "BTC": "1"})
        apply(kc, secret(ns, "creds", {"apiKey": key, "secret": api_secret}))
        apply(kc, account(ns, "acct", endpoint=tsim.url, symbols=["BTC/USDT"], secret_name="creds",
                          reconciliation={"intervalSeconds": 3600}))
        op = operators(ns, kubeconfig=sakc)
        obj = wait_for("Ready under the ServiceAccount", ready(kc, ns, "acct"), timeout=90, operator=op)
        assert cond(obj, "CredentialsValid")["status"] == "True"
        # the restart checkpoint (a ConfigMap owned by the account) written under that identity
        wait_for("the checkpoint under the ServiceAccount", lambda: checkpoint_of(kc, ns, "acct"), timeout=60,
                 operator=op)
        assert not (get_ta(kc, ns, "acct") or {}).get("status", {}).get("checkpoint", {}).get("error")
        # ... and in doing its job it was never denied anything (the API server answers 403 to a denial)
        assert not re.search(r'HTTP/1.1" 403|Forbidden', op.log()), op.log()[-3000:]
        # a run on request works too (patching the resource, writing its status)
        poke(kc, ns, "acct", "under-sa")
        wait_for("handled under the ServiceAccount", lambda: (get_ta(kc, ns, "acct") or {}).get("status", {}).get(
            "lastHandledReconcileAt") == "under-sa", timeout=60, operator=op)
    finally:
        for d in docs:
            if d["kind"] != "ServiceAccount":
                kubectl(kc, "delete", d["kind"].lower(), d["metadata"]["name"], "--wait=false", check=False)


# ---- the API server restarted under the operator (a dedicated control plane) ---------------------

# ports below Linux's ephemeral range (32768-60999): a port inside it can be taken at any moment by some
# connection's local end (etcd once failed with "address already in use" on 33790)
CP_ENV = {"TRADEWARDEN_CACHE": "/tmp/tw-faults-cp-24790", "TRADEWARDEN_RUN": "/tmp/tw-faults-cp-24790/run",
          "TRADEWARDEN_API_PORT": "26443", "TRADEWARDEN_ETCD_PORT": "24790"}


def controlplane(action: str) -> str:
    out = subprocess.run(["bash", str(ROOT / "operator" / "tradewarden" / "scripts" / "controlplane.sh"), action],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, **CP_ENV))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture
def own_control_plane(kubeconfig):
    """A second control plane (own etcd, API server, ports) whose API server this test may restart;
    the binaries are the shared build's (``kubeconfig`` made sure they exist), never rebuilt."""
    import pathlib
    shared_bin = pathlib.Path(os.environ.get("TRADEWARDEN_CACHE") or pathlib.Path.home() / ".cache" / "tradewarden") / "bin"
    cache = pathlib.Path(CP_ENV["TRADEWARDEN_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / "bin").exists():
        (cache / "bin").symlink_to(shared_bin)
    path = controlplane("start").strip().splitlines()[-1].removeprefix("export KUBECONFIG=")
    try:
        kubectl(path, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
        kubectl(path, "wait", "--for", "condition=established", "--timeout=60s", "crd/tradingaccounts.tradewarden.io")
        yield path
    finally:
        controlplane("stop")


def test_api_server_restarted_under_the_operator(own_control_plane, tsim, operators):
    kc, sim = own_control_plane, tsim.sim
    ns = "tw-" + uuid.uuid4().hex[:10]
    kubectl(kc, "create", "namespace", ns)
    key, api_secret = "tw-key-" + uuid.uuid4().hex, "tw-secret-" + uuid.uuid4().hex
    tsim.call(sim.add_account, key, api_secret, balances={"USDT": "100000", "BTC": "1"})
    tsim.call(sim.place_order, key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="40000",
              time_in_force="GTC", client_order_id="tw-1")
    apply(kc, secret(ns, "creds", {"apiKey": key, "secret": api_secret}))
    apply(kc, account(ns, "acct", endpoint=tsim.url, symbols=["BTC/USDT"], secret_name="creds",
                      reconciliation={"intervalSeconds": 3600}))
    op = operators(ns, kubeconfig=kc)
    wait_for("Ready", ready(kc, ns, "acct"), operator=op)

    controlplane("stop")                       # etcd, API server, controller manager: all gone
    tw1 = tsim.call(lambda: sim.account(key).find("spot", "BTCUSDT", None, "tw-1").order_id)
    tsim.call(sim.fill, key, tw1, "0.004")     # the exchange moves on meanwhile
    tsim.call(sim.place_order, key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="39000",
              time_in_force="GTC", client_order_id="tw-2")
    import time as _time
    _time.sleep(3)
    controlplane("start")                      # same etcd data: the resource is still there
    assert op.proc.poll() is None, "the operator died with the API server"
    poke(kc, ns, "acct", "after-restart")

    def caught_up():
        o = get_ta(kc, ns, "acct") or {}
        st = o.get("status", {})
        items = {i["clientOrderId"]: i for i in st.get("openOrders", {}).get("items", [])}
        return o if st.get("lastHandledReconcileAt") == "after-restart" and set(items) == {"tw-1", "tw-2"} \
            and items["tw-1"]["filled"] == "0.004" and cond(o, "Ready").get("status") == "True" else None
    wait_for("the operator caught up after the API server came back", caught_up, timeout=120, operator=op)
    assert op.proc.poll() is None
