"""The operator as a Pod from its own image, installed by helm on the local node: Running and Ready
(liveness and readiness answering), in-cluster config with its own ServiceAccount, reconciling an
account against the simulator on this machine and performing an emergency stop; `helm upgrade` to a
chart whose CRD gained a field (the field is served, the operator Ready again); `helm uninstall` leaves
no TradingAccount stuck in deletion."""
from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest

from tests.conftest import kubectl
from tests.controller.conftest import ThreadSim, account, apply, checkpoint_of, cond, get_ta, secret, wait_for
from tests.packaging.conftest import CHART
from tests.packaging.test_chart_cluster import _chart_with_new_field

from tradewarden import incluster
from tradewarden.incluster import operator_pods, wait_ready_pod

# the first test of the tier also waits for the node and the image (cold: a build of several minutes)
pytestmark = [pytest.mark.timeout(1800), pytest.mark.cluster, pytest.mark.node, pytest.mark.sim]


def test_image_user_entrypoint_and_size(operator_image):
    info = json.loads(subprocess.run(["bash", str(incluster.SCRIPTS / "image.sh"), "inspect"], capture_output=True, text=True,
                                     check=True, timeout=120).stdout)
    assert info["ref"] == operator_image
    assert info["user"] == "10001:10001"
    assert info["entrypoint"] == ["tradewarden"] and info["cmd"] == ["run", "--all-namespaces"]
    assert {"8080/tcp", "8081/tcp", "9464/tcp"} <= set(info["exposed_ports"])
    # Debian's python3 with the locked dependencies (ccxt and the kubernetes client weigh ~200 MB)
    assert 150e6 < info["archive_bytes"] < 700e6, info["archive_bytes"]


def pod_log(kc: str, ns: str, release: str) -> str:
    r = kubectl(kc, "-n", ns, "logs", "-l", f"app.kubernetes.io/instance={release}", "--tail=60", check=False)
    return r.stdout + r.stderr


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_operator_pod_installs_reconciles_stops_upgrades_uninstalls(node, operator_image, namespace, tmp_path):
    kc, ns = node.kubeconfig, namespace
    release = "tw" + uuid.uuid4().hex[:8]
    values = incluster.install_values(node, operator_image, ns, release)
    field = "upgradeProbe" + uuid.uuid4().hex[:6]
    tsim = ThreadSim(host=node.ip)

    class Log:   # wait_for shows the operator Pod's log on a timeout
        def log(self) -> str:
            return pod_log(kc, ns, release)
    try:
        api_key, api_secret = "tw-pod-" + uuid.uuid4().hex, uuid.uuid4().hex
        tsim.call(tsim.sim.set_price, "BTCUSDT", "50000")
        tsim.call(tsim.sim.add_account, api_key, api_secret, balances={"USDT": "10000", "BTC": "1"})
        for i in range(2):
            tsim.call(tsim.sim.place_order, api_key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                      price=str(40000 + i), time_in_force="GTC", client_order_id=f"tw-pod-{i}")

        # install: the CRD exists already (earlier tiers), the release adopts it
        incluster.helm("install", release, str(CHART), *values, "--take-ownership", kubeconfig=kc, timeout=300)
        pod = wait_ready_pod(kc, ns, release)
        spec = pod["spec"]
        assert spec["serviceAccountName"] == f"{release}-tradewarden"
        (c,) = spec["containers"]
        assert c["image"] == operator_image and c["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"] for e in c.get("env", [])}
        assert "KUBECONFIG" not in env   # no kubeconfig: the ServiceAccount's token, in-cluster config
        assert any(m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in c["volumeMounts"])
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        # the kubelet's probes answer; so do the endpoints themselves, at the Pod's address
        ip = pod["status"]["podIP"]
        assert get(f"http://{ip}:8080/healthz")[0] == 200
        status, body = get(f"http://{ip}:8081/readyz")
        assert status == 200 and json.loads(body) == {"ready": True, "reason": "serving"}
        # the non-root user and the read-only root filesystem, from inside
        r = kubectl(kc, "-n", ns, "exec", pod["metadata"]["name"], "--", "python", "-c",
                    "import os\ntry:\n open('/probe', 'w')\nexcept OSError as e:\n print(os.getuid(), e.strerror)")
        assert r.stdout.strip() == "10001 Read-only file system", r.stdout

        # reconcile against the simulator on this machine, then the emergency stop
        apply(kc, secret(ns, "creds", {"apiKey": api_key, "secret": api_secret}))
        apply(kc, account(ns, "main", endpoint=tsim.url, symbols=["BTC/USDT"], secret_name="creds",
                          reconciliation={"intervalSeconds": 3600}))
        obj = wait_for("account Ready", lambda: (o := get_ta(kc, ns, "main")) and
                       cond(o, "Ready").get("status") == "True" and o, timeout=120, operator=Log())
        assert obj["status"]["openOrders"]["count"] == 2
        assert "tradewarden.io/finalizer" in obj["metadata"]["finalizers"]
        # the restart checkpoint, written by the Pod under the chart's RBAC (configmaps get/create/update)
        saved = wait_for("the checkpoint ConfigMap", lambda: checkpoint_of(kc, ns, "main"), timeout=60, operator=Log())
        assert len(saved["o"]) == 2
        kubectl(kc, "-n", ns, "annotate", "ta", "main", "tradewarden.io/emergency-stop=node tier")
        wait_for("EmergencyStopped", lambda: cond(get_ta(kc, ns, "main"), "EmergencyStopped").get("status")
                 == "True", timeout=60, operator=Log())
        wait_for("the book emptied", lambda: tsim.open_orders(api_key) == [], timeout=60, operator=Log())
        assert "Forbidden" not in pod_log(kc, ns, release)

        # upgrade to a chart whose CRD gained a field: the field is served; the operator comes back Ready
        # --force-conflicts: the CRD was first applied with kubectl by the earlier tiers (another manager)
        incluster.helm("upgrade", release, str(_chart_with_new_field(tmp_path, field)), *values,
             "--force-conflicts", kubeconfig=kc, timeout=300)
        kubectl(kc, "-n", ns, "patch", "ta", "main", "--type=merge", "-p", json.dumps({"spec": {field: "served"}}))
        assert get_ta(kc, ns, "main")["spec"][field] == "served"
        wait_ready_pod(kc, ns, release, not_named=pod["metadata"]["name"])

        # uninstall: the post-delete Job releases the finalizer; deleting the account then completes
        incluster.helm("uninstall", release, "--namespace", ns, kubeconfig=kc, timeout=300)
        assert all(p["metadata"].get("deletionTimestamp") for p in operator_pods(kc, ns, release))
        obj = get_ta(kc, ns, "main")
        assert "tradewarden.io/finalizer" not in (obj["metadata"].get("finalizers") or [])
        kubectl(kc, "-n", ns, "delete", "ta", "main", "--timeout=30s")
        assert get_ta(kc, ns, "main") is None
    finally:
        incluster.helm("uninstall", release, "--namespace", ns, check=False, kubeconfig=kc, timeout=300)
        for i in range(2):   # the test's field off the shared CRD
            kubectl(kc, "patch", "crd", "tradingaccounts.tradewarden.io", "--type=json", "-p", json.dumps([
                {"op": "remove", "path": f"/spec/versions/{i}/schema/openAPIV3Schema/properties/spec/properties/"
                 f"{field}"}]), check=False)
        tsim.stop()
