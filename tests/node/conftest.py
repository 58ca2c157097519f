"""Fixtures of the node tier: the local node (containerd, CNI, kubelet, kube-scheduler) on the local
control plane, the operator's image built here and loaded into the node, and the Helm values that run
the chart on that node. The node is stopped when the tier ends, so no later test finds Pods running."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import urllib.parse
from dataclasses import dataclass

import pytest
import yaml

from tests.conftest import CONTROLPLANE, ROOT

IMAGE_SCRIPT = ROOT / "operator" / "tradewarden" / "scripts" / "image.sh"
CACHE = pathlib.Path(os.environ.get("TRADEWARDEN_CACHE") or
                     pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "tradewarden")
RUN = pathlib.Path(os.environ.get("TRADEWARDEN_RUN") or CACHE / "run")


@dataclass
class Node:
    kubeconfig: str
    ip: str          # the node's bridge address: this machine as Pods see it
    api_port: int    # the API server's port (also forwarded on `ip` for Pods)

    def in_cluster_values(self) -> list[str]:
        """Helm flags so the operator's in-cluster config reaches the API server here: no kube-proxy
        routes the `kubernetes` Service's ClusterIP, so the standard KUBERNETES_SERVICE_HOST/PORT point
        at the forwarder on the node's address, named as in the API server's certificate."""
        return ["--set-json", "hostAliases=" + json.dumps([{"ip": self.ip, "hostnames": ["kubernetes.default.svc"]}]),
                "--set-json", "extraEnv=" + json.dumps([
                    {"name": "KUBERNETES_SERVICE_HOST", "value": "kubernetes.default.svc"},
                    {"name": "KUBERNETES_SERVICE_PORT", "value": str(self.api_port)}])]


@pytest.fixture(scope="package")
def node(kubeconfig) -> Node:
    if pathlib.Path(kubeconfig).resolve() != (RUN / "kubeconfig").resolve():
        pytest.skip(f"the node tier runs on the local control plane ({RUN}/kubeconfig), not on {kubeconfig}")
    out = subprocess.run(["bash", str(CONTROLPLANE), "node"], capture_output=True, text=True, timeout=2400)
    assert out.returncode == 0, f"controlplane.sh node failed:\n{out.stderr[-4000:]}"
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines()
                   if line.startswith("export "))
    server = yaml.safe_load(open(kubeconfig))["clusters"][0]["cluster"]["server"]
    try:
        yield Node(kubeconfig, exports["TRADEWARDEN_NODE_IP"], urllib.parse.urlsplit(server).port)
    finally:
        subprocess.run(["bash", str(CONTROLPLANE), "node-stop"], capture_output=True, timeout=300)


@pytest.fixture(scope="package")
def operator_image(node) -> str:
    """The operator's image built from the Dockerfile here (cached layers) and loaded into the node."""
    out = subprocess.run(["bash", str(IMAGE_SCRIPT), "build", str(ROOT)], capture_output=True, text=True,
                         timeout=2400)
    assert out.returncode == 0, f"image.sh build failed:\n{out.stderr[-4000:]}"
    out = subprocess.run(["bash", str(IMAGE_SCRIPT), "load"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"image.sh load failed:\n{out.stderr[-4000:]}"
    return out.stdout.strip().splitlines()[-1]
