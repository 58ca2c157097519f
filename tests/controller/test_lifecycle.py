"""The operator end to end: real kube-apiserver, the simulator, real ccxt, `tradewarden run`.

One operator per test serves every account of the test's namespace; assertions poll with timeouts."""
from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.conftest import kubectl
from tests.controller.conftest import account, apply, cond, events_of, get_ta, secret, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.sim, pytest.mark.timeout(240)]


def _key() -> tuple[str, str]:
    return "tw-key-" + uuid.uuid4().hex, "tw-secret-" + uuid.uuid4().hex


def _status(kc, ns, name) -> dict:
    return (get_ta(kc, ns, name) or {}).get("status") or {}


def test_account_lifecycle(crd_installed, namespace, tsim, operator_factory):
    kc, ns = crd_installed, namespace
    api_key, api_secret = _key()
    sim = tsim.sim
    tsim.call(sim.set_price, "BTCUSDT", "50000")
    tsim.call(sim.set_price, "ETHUSDT", "3000")
    tsim.call(sim.add_account, api_key, api_secret, balances={"USDT": "100000", "BTC": "2", "ETH": "10"})
    owned = tsim.call(sim.place_order, api_key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.1",
                      price="40000", time_in_force="GTC", client_order_id="tw-stale-1")
    foreign = tsim.call(sim.place_order, api_key, symbol="ETHUSDT", side="BUY", type="LIMIT", quantity="1",
                        price="2000", time_in_force="GTC", client_order_id="manual-1")
    placed_at = time.monotonic()

    apply(kc, secret(ns, "creds", {"apiKey": api_key, "secret": api_secret}))
    apply(kc, account(ns, "main", endpoint=tsim.url, symbols=["BTC/USDT", "ETH/USDT"], secret_name="creds",
                      staleOrders={"timeoutSeconds": 25, "checkIntervalSeconds": 5},
                      reconciliation={"intervalSeconds": 3600}))
    op = operator_factory(ns)

    # 1. Ready, with the simulator's balances and open orders.
    obj = wait_for("Ready", lambda: (o := get_ta(kc, ns, "main")) and cond(o, "Ready").get("status") == "True"
                   and cond(o, "StreamConnected").get("status") == "True" and o, operator=op)
    st = obj["status"]
    assert st["phase"] == "Ready"
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    assert cond(obj, "CredentialsValid")["status"] == "True"
    balances = {b["asset"]: b for b in st["balances"]}
    assert balances["BTC"]["free"] == "2" and balances["ETH"]["free"] == "10"
    assert st["openOrders"]["count"] == 2 and st["openOrders"]["owned"] == 1
    assert {i["clientOrderId"] for i in st["openOrders"]["items"]} == {"tw-stale-1", "manual-1"}
    assert st["stream"]["tradingSafe"] is True
    assert "ledger" not in st                  # the ledger lives in its checkpoint ConfigMap (issue 19 item 7)
    ready_ltt = cond(obj, "Ready")["lastTransitionTime"]

    # 2. A balance changed out of band and a fill whose event was dropped -> discrepancies + Events.
    tsim.call(sim.set_deliver, api_key, False)
    tsim.call(sim.adjust_balance, api_key, "USDT", "500")
    tsim.call(sim.fill, api_key, foreign.order_id, "0.4")
    tsim.call(sim.set_deliver, api_key, True)
    kubectl(kc, "-n", ns, "annotate", "ta", "main", "tradewarden.io/reconcile-requested-at=run-1", "--overwrite")
    obj = wait_for("annotation run", lambda: (o := get_ta(kc, ns, "main"))
                   and o["status"].get("lastHandledReconcileAt") == "run-1" and o, operator=op)
    last = obj["status"]["lastReconciliation"]
    assert last["trigger"] == "annotation"
    assert last["discrepancies"].get("balance", 0) >= 1 and last["discrepancies"].get("fill") == 1, last
    assert cond(obj, "BalanceMismatch")["status"] == "True"
    assert cond(obj, "Ready")["lastTransitionTime"] == ready_ltt        # did not flip
    item = next(i for i in obj["status"]["openOrders"]["items"] if i["clientOrderId"] == "manual-1")
    assert item["filled"] == "0.4"
    reasons = wait_for("Events", lambda: {e["reason"]: e for e in events_of(kc, ns, "main")}
                       if {"BalanceMismatch", "MissedFill"} <= {e["reason"] for e in events_of(kc, ns, "main")}
                       else None, operator=op)
    assert "USDT" in reasons["BalanceMismatch"]["message"] and "exchange=" in reasons["BalanceMismatch"]["message"]
    assert "manual-1" in reasons["MissedFill"]["message"]

    # 3. A dropped socket -> a reconciliation right after the reconnect.
    reconnects = obj["status"]["stream"]["reconnects"]
    tsim.call_async(sim.drop_streams(abort=False))
    obj = wait_for("stream-reconnect run", lambda: (o := get_ta(kc, ns, "main"))
                   and o["status"]["lastReconciliation"].get("trigger") == "stream-reconnect"
                   and o["status"]["stream"]["reconnects"] > reconnects
                   and cond(o, "StreamConnected").get("status") == "True" and o, timeout=60, operator=op)
    assert obj["status"]["stream"]["tradingSafe"] is True

    # 4. The owned order past its timeout is cancelled; the foreign one is untouched.
    remaining = max(0.0, 25 - (time.monotonic() - placed_at))
    wait_for("stale cancel", lambda: not any(o.client_order_id == "tw-stale-1" or
                                              getattr(o, "orig_client_order_id", "") == "tw-stale-1"
                                              for o in tsim.open_orders(api_key)),
             timeout=remaining + 40, operator=op)
    open_ids = {o.client_order_id for o in tsim.open_orders(api_key)}
    assert open_ids == {"manual-1"}
    wait_for("StaleOrderCancelled Event", lambda: any(e["reason"] == "StaleOrderCancelled"
                                                     for e in events_of(kc, ns, "main")), operator=op)
    obj = wait_for("status shows one open order", lambda: (o := get_ta(kc, ns, "main"))
                   and o["status"]["openOrders"]["count"] == 1 and o, operator=op)
    assert obj["status"]["metrics"]["staleOrdersCancelled"] >= 1

    # 5. Deletion is quick and leaves nothing behind.
    kubectl(kc, "-n", ns, "delete", "ta", "main", "--wait=true", "--timeout=30s")
    assert get_ta(kc, ns, "main") is None
    # Secrets never leak into the object or the Events.
    dump = json.dumps(events_of(kc, ns, "main"))
    assert api_secret not in dump and api_key not in dump
    assert api_secret not in op.log()
