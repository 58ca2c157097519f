"""The local node: Ready, its Pods get addresses on the node's bridge, and a Pod reaches a server on this
machine (the exchange simulator) at the node's address."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import kubectl
from tests.controller.conftest import ThreadSim, wait_for

# the first test of the tier also waits for the node and the image (cold: a build of several minutes)
pytestmark = [pytest.mark.timeout(1800), pytest.mark.cluster, pytest.mark.node]


def test_node_ready(node):
    obj = json.loads(kubectl(node.kubeconfig, "get", "node", "-o", "json").stdout)
    (n,) = obj["items"]
    ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}
    assert ready["Ready"] == "True", n["status"]["conditions"]
    assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert n["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"


def test_pod_gets_an_address_and_reaches_the_simulator(node, operator_image, namespace):
    kc, ns = node.kubeconfig, namespace
    tsim = ThreadSim(host=node.ip)
    name = "reach-" + uuid.uuid4().hex[:6]
    try:
        code = ("import urllib.request, sys; r = urllib.request.urlopen(sys.argv[1], timeout=10); "
                "open('/dev/termination-log', 'w').write('%d %s' % (r.status, r.read().decode()))")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
               "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                        "containers": [{"name": "probe", "image": operator_image, "imagePullPolicy": "Never",
                                        "command": ["python", "-c", code, f"{tsim.url}/api/v3/ping"]}]}}
        kubectl(kc, "apply", "-f", "-", input=json.dumps(pod))

        def finished():
            p = json.loads(kubectl(kc, "-n", ns, "get", "pod", name, "-o", "json").stdout)
            return p["status"].get("phase") in ("Succeeded", "Failed") and p
        p = wait_for("the probe Pod to finish", finished, timeout=120, interval=1)
        assert p["status"]["phase"] == "Succeeded", p["status"]
        assert p["status"]["podIP"].startswith(node.ip.rsplit(".", 1)[0] + "."), p["status"]["podIP"]
        (cs,) = p["status"]["containerStatuses"]
        assert cs["state"]["terminated"]["message"] == "200 {}"
    finally:
        kubectl(kc, "-n", ns, "delete", "pod", name, "--wait=false", check=False)
        tsim.stop()
