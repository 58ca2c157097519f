"""helm install / upgrade / uninstall on the real API server, and the RBAC the chart grants, checked with
`kubectl auth can-i` as the operator's ServiceAccount."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import kubectl

from .conftest import CHART, ROOT, helm

pytestmark = pytest.mark.cluster


def can_i(kubeconfig: str, sa: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, "--as", sa]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    r = kubectl(kubeconfig, *args, check=False)
    return r.stdout.strip() == "yes"


def exists(kubeconfig: str, *args: str) -> bool:
    return kubectl(kubeconfig, "get", *args, "-o", "name", check=False).returncode == 0


def test_install_upgrade_uninstall(helm_bin, kubeconfig, namespace):
    release = "tw" + uuid.uuid4().hex[:8]
    peering = "peering-" + release
    watched = namespace + "-b"
    kubectl(kubeconfig, "create", "namespace", watched)
    try:
        r = helm(helm_bin, "install", release, str(CHART), "--namespace", namespace,
                 "--set", f"peering.name={peering}", kubeconfig=kubeconfig)
        assert "STATUS: deployed" in r.stdout and "emergency-stop" in r.stdout
        for crd in ("tradingaccounts.tradewarden.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
            kubectl(kubeconfig, "wait", "--for", "condition=established", "--timeout=60s", f"crd/{crd}")
        full = f"{release}-tradewarden"
        dep = json.loads(kubectl(kubeconfig, "-n", namespace, "get", "deployment", full, "-o", "json").stdout)
        assert dep["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
            "run", "--all-namespaces", f"--peering={peering}"]
        assert exists(kubeconfig, "-n", namespace, "serviceaccount", full)
        assert exists(kubeconfig, "-n", namespace, "service", f"{full}-metrics")
        assert exists(kubeconfig, "clusterkopfpeering", peering)
        sa = f"system:serviceaccount:{namespace}:{full}"
        assert can_i(kubeconfig, sa, "watch", "tradingaccounts.tradewarden.io")
        assert can_i(kubeconfig, sa, "patch", "tradingaccounts.tradewarden.io/status", watched)
        assert can_i(kubeconfig, sa, "get", "secrets", watched)
        assert can_i(kubeconfig, sa, "create", "events", watched)
        assert can_i(kubeconfig, sa, "patch", f"clusterkopfpeerings.kopf.dev/{peering}")
        assert not can_i(kubeconfig, sa, "list", "secrets", watched)
        assert not can_i(kubeconfig, sa, "delete", "tradingaccounts.tradewarden.io", watched)
        assert not can_i(kubeconfig, sa, "create", "pods", watched)

        # upgrade to namespaced mode: only the listed namespace, a KopfPeering there, no ClusterKopfPeering
        r = helm(helm_bin, "upgrade", release, str(CHART), "--namespace", namespace,
                 "--set", f"peering.name={peering}", "--set", f"watchNamespaces={{{watched}}}",
                 "--set", "replicaCount=2", kubeconfig=kubeconfig)
        assert "STATUS: deployed" in r.stdout and "REVISION: 2" in r.stdout
        dep = json.loads(kubectl(kubeconfig, "-n", namespace, "get", "deployment", full, "-o", "json").stdout)
        assert dep["spec"]["replicas"] == 2
        assert dep["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
            "run", f"--namespace={watched}", f"--peering={peering}"]
        assert exists(kubeconfig, "-n", watched, "kopfpeering", peering)
        assert not exists(kubeconfig, "clusterkopfpeering", peering)
        assert can_i(kubeconfig, sa, "get", "secrets", watched)
        assert not can_i(kubeconfig, sa, "get", "secrets", namespace)
        assert not can_i(kubeconfig, sa, "watch", "tradingaccounts.tradewarden.io", namespace)
        assert can_i(kubeconfig, sa, "watch", "tradingaccounts.tradewarden.io", watched)
        assert can_i(kubeconfig, sa, "list", "customresourcedefinitions.apiextensions.k8s.io")
        assert can_i(kubeconfig, sa, "watch", "namespaces")

        helm(helm_bin, "uninstall", release, "--namespace", namespace, kubeconfig=kubeconfig)
        assert not exists(kubeconfig, "-n", namespace, "deployment", full)
        assert not exists(kubeconfig, "-n", watched, "role", full)
        assert not exists(kubeconfig, "clusterrole", f"{full}-discovery")
        assert not exists(kubeconfig, "-n", watched, "kopfpeering", peering)
        # CRDs outlive the release (helm never deletes crds/): accounts are not wiped by an uninstall
        assert exists(kubeconfig, "crd", "tradingaccounts.tradewarden.io")
    finally:
        helm(helm_bin, "uninstall", release, "--namespace", namespace, check=False, kubeconfig=kubeconfig)
        kubectl(kubeconfig, "delete", "namespace", watched, "--wait=false", check=False)


def test_plain_manifests_apply(kubeconfig, crd_installed):
    """manifests/{operator,rbac}.yaml apply cleanly with kubectl and grant the same access."""
    files = ["-f", str(ROOT / "manifests" / "operator.yaml"), "-f", str(ROOT / "manifests" / "rbac.yaml")]
    try:
        kubectl(kubeconfig, "apply", *files)
        assert exists(kubeconfig, "-n", "tradewarden", "deployment", "tradewarden")
        sa = "system:serviceaccount:tradewarden:tradewarden"
        assert can_i(kubeconfig, sa, "get", "secrets", "default")
        assert not can_i(kubeconfig, sa, "list", "secrets", "default")
        assert can_i(kubeconfig, sa, "patch", "clusterkopfpeerings.kopf.dev/tradewarden")
    finally:
        kubectl(kubeconfig, "delete", "--ignore-not-found", "--wait=false", "-f", str(ROOT / "manifests" / "rbac.yaml"),
                check=False)
        kubectl(kubeconfig, "delete", "--ignore-not-found", "--wait=false", "-n", "tradewarden",
                "deployment/tradewarden", "service/tradewarden-metrics", check=False)
