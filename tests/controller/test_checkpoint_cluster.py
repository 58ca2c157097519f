"""Issue 19 item 7 through the real parts: the operator (`tradewarden run`) on the real kube-apiserver, the
simulator driven by real ccxt. The ledger is off the status: a bounded summary there, the restart checkpoint
in a ConfigMap owned by the account; the operator is killed with many open orders, the book changes while it
is down (full fills, partial fills, cancels, new orders, an order born and filled), and the restarted
operator finds every change and reports nothing else.

The cluster test runs it with 5,000 open orders (25 symbols at Binance's 200 open orders per symbol,
MAX_NUM_ORDERS; about 20 s here); benchmarks/bench_checkpoint.py runs the same scenario at other sizes
(``--restart-sizes 10000``)."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from tests.conftest import kubectl
from tests.controller.conftest import account, apply, checkpoint_of, cond, get_ta, secret, wait_for

PER_SYMBOL = 200           # Binance's MAX_NUM_ORDERS filter (the simulator's default too)
CHANGES = 5                # of each kind, made while the operator is down


@dataclass
class Figures:
    orders: int
    symbols: int
    status_bytes: int = 0
    checkpoint_bytes: int = 0
    checkpoint_orders: int = 0
    checkpoint_left_out: int = 0
    resume_s: float = 0.0
    discrepancies: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)


def restart_scenario(kc: str, ns: str, tsim: Any, start_operator: Callable[[], Any], n: int,
                     timeout: float = 300) -> Figures:
    """``start_operator()`` starts `tradewarden run` on ``ns`` (with a short checkpoint interval) and returns it
    (with .kill()). Returns what was measured; asserts what must hold."""
    sim = tsim.sim
    api_key, api_secret = "tw-key-" + uuid.uuid4().hex, "tw-secret-" + uuid.uuid4().hex
    nsym = max(1, -(-n // PER_SYMBOL))
    tag = uuid.uuid4().hex[:4].upper()
    bases = [f"K{tag}{i:03d}" for i in range(nsym)]
    for b in bases:
        tsim.call(sim.exchange.add_market, b + "USDT", price="100", tick="0.01", step="0.1")
    tsim.call(sim.add_account, api_key, api_secret, balances={"USDT": "100000000"})

    def place_all() -> list[Any]:
        placed = []
        for i in range(n):
            b = bases[i // PER_SYMBOL]
            placed.append(sim.place_order(api_key, symbol=b + "USDT", side="BUY", type="LIMIT", quantity="10",
                                          price=f"{1 + (i % 50) / 100:.2f}", time_in_force="GTC",
                                          client_order_id=f"tw-grid-{i}"))
        return placed
    placed = tsim.call(place_all)

    name = "book"
    apply(kc, secret(ns, "creds", {"apiKey": api_key, "secret": api_secret}))
    apply(kc, account(ns, name, endpoint=tsim.url, symbols=[f"{b}/USDT" for b in bases], secret_name="creds",
                      reconciliation={"intervalSeconds": 3600}))
    op = start_operator()
    obj = wait_for("Ready, the book adopted", lambda: (o := get_ta(kc, ns, name))
                   and cond(o, "Ready").get("status") == "True"
                   and (o["status"].get("adoption") or {}).get("count") == n and o, timeout=timeout, operator=op)
    st = obj["status"]
    fig = Figures(orders=n, symbols=nsym, status_bytes=len(json.dumps(st, separators=(",", ":"))))
    assert "ledger" not in st and st["openOrders"]["count"] == n
    saved = wait_for("the checkpoint", lambda: (c := checkpoint_of(kc, ns, name)) and len(c.get("o") or ()) == n
                     and c, timeout=timeout, operator=op)
    assert saved["truncated"] == 0
    cm = json.loads(kubectl(kc, "-n", ns, "get", "configmap", name + "-ledger", "-o", "json").stdout)
    assert [(r["kind"], r["name"], r["uid"]) for r in cm["metadata"]["ownerReferences"]] == \
        [("TradingAccount", name, obj["metadata"]["uid"])]
    obj = wait_for("status.checkpoint", lambda: (o := get_ta(kc, ns, name))
                   and (o["status"].get("checkpoint") or {}).get("orders") == n and o, timeout=60, operator=op)
    fig.checkpoint_bytes = obj["status"]["checkpoint"]["bytes"]
    fig.checkpoint_orders = obj["status"]["checkpoint"]["orders"]
    fig.checkpoint_left_out = obj["status"]["checkpoint"].get("leftOut", 0)
    before = obj["status"]["lastReconciliation"]["time"]

    op.kill()                       # SIGKILL: no final checkpoint; the cadence's last one is all there is
    k = CHANGES
    filled, partial, cancelled = placed[:k], placed[k:2 * k], placed[2 * k:3 * k]

    def change_while_down() -> None:
        for o in filled:
            sim.fill(api_key, o.order_id)
        for o in partial:
            sim.fill(api_key, o.order_id, "4")
        for o in cancelled:
            sim.cancel_order(api_key, o.order_id)
        for i in range(k):
            sim.place_order(api_key, symbol=bases[0] + "USDT", side="BUY", type="LIMIT", quantity="10",
                            price="1.5", time_in_force="GTC",
                            client_order_id=(f"tw-new-{i}" if i % 2 else f"manual-new-{i}"))
        born = sim.place_order(api_key, symbol=bases[0] + "USDT", side="BUY", type="LIMIT", quantity="10",
                               price="1.7", time_in_force="GTC", client_order_id="tw-born-and-filled")
        sim.fill(api_key, born.order_id)
    tsim.call(change_while_down)
    time.sleep(6)                   # older than the grace (5 s) when the restarted operator looks

    t0 = time.monotonic()
    op2 = start_operator()
    obj = wait_for("resumed", lambda: (o := get_ta(kc, ns, name))
                   and o["status"]["lastReconciliation"].get("time") not in (None, before)
                   and o["status"]["lastReconciliation"].get("trigger") == "resume" and o,
                   timeout=timeout, operator=op2)
    fig.resume_s = time.monotonic() - t0
    last = obj["status"]["lastReconciliation"]
    fig.discrepancies = dict(last["discrepancies"])
    # what changed, by kind: queried final states of orders the listing no longer shows (filled, cancelled),
    # partial fills, orders new to the ledger, the order born and filled inside the gap; the balances the
    # fills moved (USDT and the bought assets: undelivered events) are balance discrepancies
    fig.expected = {"missing": 2 * k, "fill": k, "orphan": k, "unseen": 1}
    orders_only = {kk: v for kk, v in fig.discrepancies.items() if kk != "balance"}
    assert orders_only == fig.expected, last
    moved_assets = {"USDT", bases[0]}       # every change is on the first symbol (room: 2k of its orders finished)
    assert 0 < fig.discrepancies.get("balance", 0) <= len(moved_assets), last
    assert last["adoptedOrders"] == 0, last                # a restart resumes: nothing adopted again
    assert obj["status"]["openOrders"]["count"] == n - 2 * k + k
    return fig


@pytest.mark.cluster
@pytest.mark.sim
@pytest.mark.timeout(420)
def test_restart_with_5000_open_orders_finds_every_change_made_while_down_and_nothing_else(
        crd_installed, namespace, tsim, operator_factory):
    fig = restart_scenario(crd_installed, namespace, tsim,
                           lambda: operator_factory(namespace, env={"TRADEWARDEN_CHECKPOINT_INTERVAL": "2"}), 5000)
    assert fig.status_bytes < 64 * 1024 and fig.checkpoint_left_out == 0
    # owned by the account: the garbage collector deletes the checkpoint with it
    kubectl(crd_installed, "-n", namespace, "delete", "tradingaccount", "book", "--wait=false")
    wait_for("the checkpoint garbage-collected", lambda: kubectl(
        crd_installed, "-n", namespace, "get", "configmap", "book-ledger", check=False).returncode != 0, timeout=90)
    print(f"5,000 open orders: status {fig.status_bytes} B, checkpoint {fig.checkpoint_bytes} B, "
          f"resumed in {fig.resume_s:.1f}s, {fig.discrepancies}")
