"""spec.emergencyStop.scaleDown against the real API server: real Deployment and StatefulSet objects scaled
to 0 through the scale subresource and restored; the operator's RBAC (manifests/rbac.yaml's
tradewarden-scale ClusterRole, bound in one namespace only) exercised by impersonating its ServiceAccount."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.conftest import ROOT, kubectl
from tradewarden.controller import workloads as wl

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def deployment(ns: str, name: str, replicas: int, labels: dict) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"pod": name}},
                     "template": {"metadata": {"labels": {"pod": name}},
                                  "spec": {"containers": [{"name": "bot", "image": "example.invalid/bot:1"}]}}}}


def statefulset(ns: str, name: str, replicas: int, labels: dict) -> dict:
    d = deployment(ns, name, replicas, labels)
    d["kind"] = "StatefulSet"
    d["spec"]["serviceName"] = name
    return d


def apply(kc: str, *objs: dict) -> None:
    kubectl(kc, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def replicas(kc: str, ns: str, kind: str, name: str) -> int:
    r = kubectl(kc, "-n", ns, "get", kind.lower(), name, "-o", "jsonpath={.spec.replicas}")
    return int(r.stdout)


def kube_as(kc: str, user: str | None = None):
    import kubernetes

    from tradewarden.controller.kube import Kube

    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=kc, client_configuration=cfg)
    api = kubernetes.client.ApiClient(cfg)
    if user:
        api.set_default_header("Impersonate-User", user)
    return Kube(api)


@pytest.fixture
def two_namespaces(kubeconfig):
    names = ["tw-scale-" + uuid.uuid4().hex[:8] for _ in range(2)]
    for n in names:
        kubectl(kubeconfig, "create", "namespace", n)
    yield names
    for n in names:
        kubectl(kubeconfig, "delete", "namespace", n, "--wait=false", check=False)


def test_scale_down_and_restore_with_the_operators_rbac(kubeconfig, two_namespaces):
    kc = kubeconfig
    allowed, other = two_namespaces
    sa = "system:serviceaccount:tradewarden:tradewarden"
    # the shipped ClusterRole, bound in `allowed` only (as the chart does for rbac.scaleDownNamespaces)
    kubectl(kc, "apply", "-f", "-", input=_scale_role())
    kubectl(kc, "-n", allowed, "create", "rolebinding", "tradewarden-scale", "--clusterrole=tradewarden-scale",
            "--serviceaccount=tradewarden:tradewarden")
    for ns in (allowed, other):
        apply(kc, deployment(ns, "bot-a", 3, {"team": "quant", "kind": "bot"}),
              statefulset(ns, "bot-b", 2, {"team": "quant", "kind": "bot"}),
              deployment(ns, "bystander", 1, {"team": "quant", "kind": "dashboard"}))
    selector = {"matchLabels": {"team": "quant"}, "matchExpressions": [{"key": "kind", "operator": "In",
                                                                        "values": ["bot"]}]}
    kube = kube_as(kc, sa)
    try:
        report = asyncio.run(wl.scale_down(kube, allowed, selector, []))
        assert report.problem is None, report.message
        assert sorted((h.kind, h.name, h.replicas) for h in report.changed) == \
            [("Deployment", "bot-a", 3), ("StatefulSet", "bot-b", 2)]
        assert replicas(kc, allowed, "Deployment", "bot-a") == 0
        assert replicas(kc, allowed, "StatefulSet", "bot-b") == 0
        assert replicas(kc, allowed, "Deployment", "bystander") == 1          # not selected: untouched
        assert "Deployment/bot-a (3 -> 0)" in wl.describe(report.changed, "down")

        # idempotent while the stop stands; a bot scaled up meanwhile goes back to 0, its first count kept
        kubectl(kc, "-n", allowed, "scale", "deployment", "bot-a", "--replicas=5")
        again = asyncio.run(wl.scale_down(kube, allowed, selector, report.held))
        assert [(h.name, h.replicas) for h in again.changed] == [("bot-a", 5)]
        assert sorted((h.name, h.replicas) for h in again.held) == [("bot-a", 3), ("bot-b", 2)]
        assert replicas(kc, allowed, "Deployment", "bot-a") == 0

        # held workloads survive a restart through status
        held = [wl.Held.from_status(h.to_status()) for h in again.held]
        back = asyncio.run(wl.restore(kube, allowed, held))
        assert back.problem is None and back.held == []
        assert replicas(kc, allowed, "Deployment", "bot-a") == 3
        assert replicas(kc, allowed, "StatefulSet", "bot-b") == 2

        # a namespace where the operator may not scale: a clear problem, nothing changed
        denied = asyncio.run(wl.scale_down(kube, other, selector, []))
        assert denied.problem is wl.ScaleProblem.FORBIDDEN and "tradewarden-scale" in denied.message
        assert replicas(kc, other, "Deployment", "bot-a") == 3

        # a selector that matches nothing
        none = asyncio.run(wl.scale_down(kube, allowed, {"matchLabels": {"team": "nobody"}}, []))
        assert none.problem is wl.ScaleProblem.NO_MATCH and "team=nobody" in none.message
        # the ServiceAccount can write nothing but the scale subresource
        r = kubectl(kc, "--as", sa, "-n", allowed, "annotate", "deployment", "bot-a", "x=y", check=False)
        assert r.returncode != 0 and "forbidden" in r.stderr.lower()
    finally:
        kube.close()


def _scale_role() -> str:
    """The tradewarden-scale ClusterRole exactly as manifests/rbac.yaml ships it."""
    import yaml

    docs = [d for d in yaml.safe_load_all(open(ROOT / "manifests" / "rbac.yaml").read()) if d]
    (role,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "tradewarden-scale"]
    return json.dumps(role)


def test_selector_strings():
    assert wl.selector_string({"matchLabels": {"b": "2", "a": "1"},
                               "matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["y", "x"]},
                                                    {"key": "e", "operator": "Exists"},
                                                    {"key": "d", "operator": "DoesNotExist"}]}) == \
        "a=1,b=2,k notin (x,y),e,!d"
    assert wl.selector_string({}) == ""
