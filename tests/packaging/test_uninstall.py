"""`tradewarden release-finalizers` (the chart's post-delete hook): after the operator is gone, no
TradingAccount stays stuck in deletion behind its finalizer; other finalizers and live accounts are left
as they are (a live account only loses the operator's finalizer)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import kubectl

from .conftest import ROOT

pytestmark = pytest.mark.cluster

FINALIZER = "tradewarden.io/finalizer"


def ta(namespace: str, name: str, finalizers: list[str]) -> dict:
    return {"apiVersion": "tradewarden.io/v1alpha1", "kind": "TradingAccount",
            "metadata": {"name": name, "namespace": namespace, "finalizers": finalizers},
            "spec": {"exchange": "binance", "symbols": ["BTC/USDT"], "credentialsSecretRef": {"name": "none"}}}


def finalizers(kc: str, ns: str, name: str) -> list[str] | None:
    r = kubectl(kc, "-n", ns, "get", "ta", name, "-o", "json", check=False)
    return json.loads(r.stdout)["metadata"].get("finalizers", []) if r.returncode == 0 else None


def test_release_finalizers(crd_installed, namespace):
    kc, ns = crd_installed, namespace
    other = "example.com/keep"
    for obj in (ta(ns, "deleting", [FINALIZER]), ta(ns, "shared", [other, FINALIZER]), ta(ns, "live", [FINALIZER])):
        kubectl(kc, "apply", "-f", "-", input=json.dumps(obj))
    kubectl(kc, "-n", ns, "delete", "ta", "deleting", "shared", "--wait=false")
    assert finalizers(kc, ns, "deleting") == [FINALIZER]   # stuck: no operator removes it

    r = subprocess.run([sys.executable, "-m", "tradewarden.cli", "release-finalizers", "-n", ns],
                       capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=dict(os.environ, KUBECONFIG=kc))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(ln for ln in r.stdout.splitlines() if ln.startswith("released")) == [
        f"released {ns}/deleting", f"released {ns}/live", f"released {ns}/shared"]
    assert finalizers(kc, ns, "deleting") is None            # deletion completed
    assert finalizers(kc, ns, "shared") == [other]           # someone else's finalizer stays
    assert finalizers(kc, ns, "live") == []                  # still there, spec intact
    # idempotent
    r = subprocess.run([sys.executable, "-m", "tradewarden.cli", "release-finalizers", "-n", ns],
                       capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=dict(os.environ, KUBECONFIG=kc))
    assert r.returncode == 0 and "0 TradingAccount(s) released" in r.stdout
    kubectl(kc, "-n", ns, "patch", "ta", "shared", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')


def test_release_finalizers_needs_a_scope():
    r = subprocess.run([sys.executable, "-m", "tradewarden.cli", "release-finalizers"], capture_output=True,
                       text=True, timeout=60, cwd=str(ROOT))
    assert r.returncode == 2
