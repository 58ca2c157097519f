"""The alert conditions of the status rise while a fault lasts and fall after it, through the real
operator: real kube-apiserver, `tradewarden run` as a subprocess, the simulator's fault API over
HTTP, real ccxt. Runs are triggered one at a time by the reconcile annotation (a one-hour interval
keeps the timer out of the way)."""
from __future__ import annotations

import datetime as dt
import json
import urllib.request
import uuid

import pytest

from tests.conftest import kubectl
from tests.controller.conftest import account, apply, cond, get_ta, secret, wait_for
from tests.controller.conftest import operator_factory  # noqa: F401  (fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.sim, pytest.mark.timeout(180)]


def control(tsim, method: str, path: str, body: dict | None = None):
    req = urllib.request.Request(tsim.url + "/sim/v1" + path, method=method,
                                 data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_alert_conditions_rise_during_a_fault_and_fall_after(crd_installed, namespace, tsim, operator_factory):
    kc, ns = crd_installed, namespace
    api_key, api_secret = "tw-key-" + uuid.uuid4().hex, "tw-secret-" + uuid.uuid4().hex
    control(tsim, "POST", "/accounts", {"apiKey": api_key, "secret": api_secret,
                                        "balances": {"USDT": "100000", "BTC": "2"}})
    apply(kc, secret(ns, "creds", {"apiKey": api_key, "secret": api_secret}))
    apply(kc, account(ns, "acct", endpoint=tsim.url, symbols=["BTC/USDT"], secret_name="creds",
                      reconciliation={"intervalSeconds": 3600}))
    op = operator_factory(ns)
    obj = wait_for("Ready", lambda: (o := get_ta(kc, ns, "acct")) and cond(o, "Ready").get("status") == "True"
                   and cond(o, "StreamConnected").get("status") == "True" and o, operator=op)
    assert cond(obj, "ReconciliationFailing")["status"] == "False"
    calm_ltt = cond(obj, "ReconciliationFailing")["lastTransitionTime"]
    seq = iter(range(1, 1000))

    def run() -> dict:
        """One reconciliation by annotation; returns the resource once the operator handled it."""
        value = f"alert-{next(seq)}"
        kubectl(kc, "-n", ns, "annotate", "ta", "acct", f"tradewarden.io/reconcile-requested-at={value}",
                "--overwrite")
        return wait_for(f"run {value} handled", lambda: (o := get_ta(kc, ns, "acct"))
                        and o["status"].get("lastHandledReconcileAt") == value and o, timeout=30, operator=op)

    # 1. A persistent 503 on the balance endpoint: every run fails (balances not refreshed).
    fault = control(tsim, "POST", "/faults", {"method": "GET", "path": "/api/v3/account", "status": 503})
    assert fault["id"]
    failures, rose_ltt, lower, upper = 0, None, now_rfc3339(), None
    for _ in range(8):
        before = now_rfc3339()
        obj = run()
        st = obj["status"]
        failures = st["metrics"]["consecutiveFailures"]
        failing = cond(obj, "ReconciliationFailing")
        assert cond(obj, "Synced")["status"] == "False", cond(obj, "Synced")
        assert st["phase"] == "Degraded"
        assert failing["status"] == ("True" if failures > 3 else "False"), (failures, failing)
        # past the threshold the account is not confirmed by the exchange: not Ready, not safe to trade
        ready = cond(obj, "Ready")
        assert (ready["status"], ready["reason"]) == (("False", "ReconciliationFailing") if failures > 3
                                                      else ("True", "Reconciled")), (failures, ready)
        assert st["stream"]["tradingSafe"] is (failures <= 3)
        if failing["status"] == "False":
            assert failing["lastTransitionTime"] == calm_ltt          # no flip, no new time
            lower = before                                            # the flip comes after this run
        elif rose_ltt is None:
            rose_ltt, upper = failing["lastTransitionTime"], now_rfc3339()
            assert "consecutive failed runs" in failing["message"]
        else:
            assert failing["lastTransitionTime"] == rose_ltt          # still failing: unchanged
            break
    assert failures > 4, f"{failures} consecutive failures after the fault"
    assert lower <= rose_ltt <= upper and rose_ltt >= calm_ltt        # set by the flip itself

    # 2. The fault clears: one clean run and the alert falls.
    control(tsim, "DELETE", "/faults")
    before = now_rfc3339()
    obj = run()
    st, failing = obj["status"], cond(obj, "ReconciliationFailing")
    assert failing["status"] == "False" and st["metrics"]["consecutiveFailures"] == 0
    assert before <= failing["lastTransitionTime"] <= now_rfc3339() and failing["lastTransitionTime"] >= rose_ltt
    assert cond(obj, "Synced")["status"] == "True" and cond(obj, "Ready")["status"] == "True"
    assert st["phase"] == "Ready" and st["stream"]["tradingSafe"] is True
    assert cond(obj, "BalanceMismatch")["status"] == "False"
    fell_ltt = failing["lastTransitionTime"]

    # 3. A balance changed out of band (its stream event suppressed): BalanceMismatch rises for the
    #    run that finds it and falls after the next clean run; ReconciliationFailing does not move.
    control(tsim, "POST", f"/accounts/{api_key}/stream", {"deliver": False})
    control(tsim, "POST", f"/accounts/{api_key}/balances", {"asset": "USDT", "delta": "250"})
    control(tsim, "POST", f"/accounts/{api_key}/stream", {"deliver": True})
    obj = run()
    mismatch = cond(obj, "BalanceMismatch")
    assert mismatch["status"] == "True" and "USDT" in mismatch["message"], mismatch
    assert obj["status"]["lastReconciliation"]["discrepancies"].get("balance", 0) >= 1
    assert {b["asset"]: b["free"] for b in obj["status"]["balances"]}["USDT"] == "100250"
    assert cond(obj, "ReconciliationFailing")["lastTransitionTime"] == fell_ltt
    obj = run()
    assert cond(obj, "BalanceMismatch")["status"] == "False"
    assert cond(obj, "ReconciliationFailing")["status"] == "False"
    assert cond(obj, "ReconciliationFailing")["lastTransitionTime"] == fell_ltt
    assert obj["status"]["metrics"]["consecutiveFailures"] == 0 and obj["status"]["phase"] == "Ready"
