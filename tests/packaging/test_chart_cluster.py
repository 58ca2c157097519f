"""helm install / upgrade / uninstall on the real API server, and the RBAC the chart grants, checked with
`kubectl auth can-i` as the operator's ServiceAccount."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid

import pytest
import yaml

from tests.conftest import CONTROLPLANE, kubectl

from .conftest import CHART, ROOT, helm

pytestmark = pytest.mark.cluster

# These releases are installed on an API server whose CRD the session manages (crd_installed), and are
# never meant to run: no Pod of theirs may be scheduled on a node another test tier started.
NOT_RUN = ["--set", "crds.enabled=false", "--set", "uninstallHook.enabled=false",
           "--set-string", "nodeSelector.tradewarden\\.io/never=true"]


def can_i(kubeconfig: str, sa: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, "--as", sa]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    r = kubectl(kubeconfig, *args, check=False)
    return r.stdout.strip() == "yes"


def exists(kubeconfig: str, *args: str) -> bool:
    return kubectl(kubeconfig, "get", *args, "-o", "name", check=False).returncode == 0


def test_install_upgrade_uninstall(helm_bin, kubeconfig, crd_installed, namespace):
    release = "tw" + uuid.uuid4().hex[:8]
    peering = "peering-" + release
    watched = namespace + "-b"
    kubectl(kubeconfig, "create", "namespace", watched)
    try:
        r = helm(helm_bin, "install", release, str(CHART), "--namespace", namespace,
                 "--set", f"peering.name={peering}", *NOT_RUN, kubeconfig=kubeconfig)
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
                 "--set", "replicaCount=2", *NOT_RUN, kubeconfig=kubeconfig)
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_cluster(tmp_path):
    """A second control plane of its own (own etcd, API server, ports): nothing installed yet."""
    env = dict(os.environ, TRADEWARDEN_RUN=str(tmp_path / "run"), TRADEWARDEN_API_PORT=str(_free_port()),
               TRADEWARDEN_ETCD_PORT=str(_free_port()))
    env.pop("KUBECONFIG", None)
    out = subprocess.run(["bash", str(CONTROLPLANE), "start"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    try:
        yield out.stdout.strip().splitlines()[-1].removeprefix("export KUBECONFIG=")
    finally:
        subprocess.run(["bash", str(CONTROLPLANE), "stop"], capture_output=True, env=env, timeout=120)


def test_plain_manifests_apply_in_readme_order_on_a_fresh_cluster(fresh_cluster):
    """The README's `kubectl apply` command, as written there, on a cluster that has nothing of ours: every
    object is created (the namespace before what lives in it) and grants what the chart grants."""
    kc = fresh_cluster
    readme = (ROOT / "README.md").read_text()
    (command,) = [ln.strip() for ln in readme.splitlines() if ln.strip().startswith("kubectl apply -f manifests/")]
    files = command.split()[2:]
    assert files[::2] == ["-f"] * (len(files) // 2) and files[1::2][0] == "manifests/namespace.yaml", command
    assert not exists(kc, "namespace", "tradewarden")
    r = kubectl(kc, "apply", *[a if a == "-f" else str(ROOT / a) for a in files])
    assert "serviceaccount/tradewarden created" in r.stdout and "deployment.apps/tradewarden created" in r.stdout
    assert exists(kc, "-n", "tradewarden", "serviceaccount", "tradewarden")
    assert exists(kc, "-n", "tradewarden", "deployment", "tradewarden")
    kubectl(kc, "wait", "--for", "condition=established", "--timeout=60s", "crd/tradingaccounts.tradewarden.io")
    sa = "system:serviceaccount:tradewarden:tradewarden"
    assert can_i(kc, sa, "get", "secrets", "default")
    assert not can_i(kc, sa, "list", "secrets", "default")
    assert can_i(kc, sa, "patch", "clusterkopfpeerings.kopf.dev/tradewarden")
    # applying again changes nothing (the order is also right for an update)
    r = kubectl(kc, "apply", *[a if a == "-f" else str(ROOT / a) for a in files])
    assert "created" not in r.stdout, r.stdout


def _chart_with_new_field(dst, field: str):
    """A copy of the chart, version bumped, whose TradingAccount CRD gained spec.<field> (a string)."""
    chart = dst / "tradewarden"
    shutil.copytree(CHART, chart)
    crd_file = chart / "files" / "crds" / "tradingaccounts.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    for version in crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][field] = {
            "type": "string", "description": "added by the next chart version"}
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = meta["version"] + "-next"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return chart


def test_helm_upgrade_serves_a_field_the_crd_gained(helm_bin, crd_installed, namespace, tmp_path):
    """Helm never upgrades crds/: the chart's TradingAccount CRD is a template, so `helm upgrade` to a chart
    whose CRD gained a field makes the API server keep that field (before, it prunes it). The CRD already
    exists here (as after an earlier install, or `kubectl apply`): the release adopts it (--take-ownership)."""
    kc, field = crd_installed, "upgradeProbe" + uuid.uuid4().hex[:6]
    release = "tw" + uuid.uuid4().hex[:8]
    common = ["--namespace", namespace, "--set", "uninstallHook.enabled=false", "--set", f"peering.name=p-{release}",
              "--set-string", "nodeSelector.tradewarden\\.io/never=true"]
    ta = {"apiVersion": "tradewarden.io/v1alpha1", "kind": "TradingAccount",
          "metadata": {"name": "probe", "namespace": namespace},
          "spec": {"exchange": "binance", "symbols": ["BTC/USDT"], "credentialsSecretRef": {"name": "none"},
                   field: "kept"}}
    path = f"/apis/tradewarden.io/v1alpha1/namespaces/{namespace}/tradingaccounts/probe"
    try:
        helm(helm_bin, "install", release, str(CHART), *common, "--take-ownership", kubeconfig=kc)
        crd = json.loads(kubectl(kc, "get", "crd", "tradingaccounts.tradewarden.io", "-o", "json").stdout)
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
        # before: kubectl's schema check refuses the field; past it, the API server prunes it
        assert "unknown field" in kubectl(kc, "apply", "-f", "-", input=json.dumps(ta), check=False).stderr
        kubectl(kc, "apply", "--validate=false", "-f", "-", input=json.dumps(ta))
        stored = json.loads(kubectl(kc, "get", "--raw", path).stdout)
        assert field not in stored["spec"], "the unknown field should be pruned before the upgrade"

        # --force-conflicts: this CRD was first applied by kubectl (the session's), another field manager
        # of .spec.versions; a CRD that helm itself created needs no flag
        helm(helm_bin, "upgrade", release, str(_chart_with_new_field(tmp_path, field)), *common,
             "--force-conflicts", kubeconfig=kc)
        kubectl(kc, "wait", "--for", "condition=established", "--timeout=60s", "crd/tradingaccounts.tradewarden.io")
        crd = json.loads(kubectl(kc, "get", "crd", "tradingaccounts.tradewarden.io", "-o", "json").stdout)
        assert all(field in v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
                   for v in crd["spec"]["versions"])
        # (--validate=false: kubectl may still hold the schema it downloaded before the upgrade)
        kubectl(kc, "apply", "--validate=false", "-f", "-", input=json.dumps(ta))
        stored = json.loads(kubectl(kc, "get", "--raw", path).stdout)
        assert stored["spec"][field] == "kept"

        helm(helm_bin, "uninstall", release, "--namespace", namespace, kubeconfig=kc)
        # crds.keep: the CRD, and the account, outlive the release
        assert exists(kc, "crd", "tradingaccounts.tradewarden.io")
        assert json.loads(kubectl(kc, "get", "--raw", path).stdout)["spec"][field] == "kept"
    finally:
        helm(helm_bin, "uninstall", release, "--namespace", namespace, check=False, kubeconfig=kc)
        kubectl(kc, "-n", namespace, "delete", "ta", "probe", "--wait=false", check=False)
        # the session's CRD back to the generated one (without the test's field)
        for i in range(len(json.loads(kubectl(kc, "get", "crd", "tradingaccounts.tradewarden.io", "-o",
                                              "json").stdout)["spec"]["versions"])):
            kubectl(kc, "patch", "crd", "tradingaccounts.tradewarden.io", "--type=json", "-p", json.dumps([
                {"op": "remove",
                 "path": f"/spec/versions/{i}/schema/openAPIV3Schema/properties/spec/properties/{field}"}]),
                check=False)
