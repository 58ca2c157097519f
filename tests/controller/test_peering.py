"""Two replicas with kopf peering: only one acts; when it dies the other takes over."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import ROOT, kubectl
from tests.controller.conftest import account, apply, cond, get_ta, secret, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.sim, pytest.mark.timeout(240)]


def test_two_replicas_one_acts_then_failover(crd_installed, namespace, tsim, operator_factory):
    kc, ns = crd_installed, namespace
    kubectl(kc, "apply", "-f", str(ROOT / "charts" / "tradewarden" / "crds" / "kopf-peerings.yaml"))
    kubectl(kc, "wait", "--for", "condition=established", "--timeout=60s", "crd/kopfpeerings.kopf.dev")
    apply(kc, {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "tw-test", "namespace": ns}})
    api_key, api_secret = "tw-key-" + uuid.uuid4().hex, "tw-secret-" + uuid.uuid4().hex
    tsim.call(tsim.sim.add_account, api_key, api_secret, balances={"USDT": "1000"})
    apply(kc, secret(ns, "creds", {"apiKey": api_key, "secret": api_secret}))
    apply(kc, account(ns, "acct", endpoint=tsim.url, symbols=["BTC/USDT"], secret_name="creds",
                      reconciliation={"intervalSeconds": 3600}))

    fast = {"TRADEWARDEN_PEERING_LIFETIME": "6"}
    leader = operator_factory(ns, peering="tw-test", env={"TRADEWARDEN_PEERING_PRIORITY": "200", **fast})
    wait_for("Ready under the leader", lambda: cond(get_ta(kc, ns, "acct"), "Ready").get("status") == "True",
             operator=leader)
    standby = operator_factory(ns, peering="tw-test", env={"TRADEWARDEN_PEERING_PRIORITY": "100", **fast})
    wait_for("both replicas registered in the peering object", lambda: len(json.loads(kubectl(
        kc, "-n", ns, "get", "kopfpeering", "tw-test", "-o", "json").stdout).get("status") or {}) == 2,
        timeout=60, operator=standby)
    kubectl(kc, "-n", ns, "annotate", "ta", "acct", "tradewarden.io/reconcile-requested-at=one", "--overwrite")
    wait_for("leader handles", lambda: (get_ta(kc, ns, "acct") or {}).get("status", {}).get(
        "lastHandledReconcileAt") == "one", operator=leader)
    assert "supervising" not in standby.log()          # the standby never served the account

    leader.kill()
    wait_for("standby resumes", lambda: "Resuming operations after the pause" in standby.log(), timeout=90,
             operator=standby)
    kubectl(kc, "-n", ns, "annotate", "ta", "acct", "tradewarden.io/reconcile-requested-at=two", "--overwrite")
    wait_for("standby handles", lambda: (get_ta(kc, ns, "acct") or {}).get("status", {}).get(
        "lastHandledReconcileAt") == "two", timeout=60, operator=standby)
