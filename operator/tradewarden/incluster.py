"""The operator as a Pod on the local node: what `tradewarden demo --in-cluster`, the in-cluster benchmark
and the node tier's tests share. The node (containerd, kubelet, scheduler) and the image are made by
scripts/controlplane.sh and scripts/image.sh; this module drives them, helm and kubectl.

No kube-proxy runs on the local node, so the `kubernetes` Service's ClusterIP routes nowhere: the Pods'
standard in-cluster variables (KUBERNETES_SERVICE_HOST/PORT) name kubernetes.default.svc (in the API
server's certificate) at the API server's port, and hostAliases map that name to the node's address,
where controlplane.sh forwards to the API server.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time
import urllib.parse
from dataclasses import dataclass

import yaml

PKG = pathlib.Path(__file__).resolve().parent
SCRIPTS = PKG / "scripts"
CHECKOUT = PKG.parent.parent            # the repository (Dockerfile, charts/) when run from a clone
CHART = CHECKOUT / "charts" / "tradewarden"
CACHE = pathlib.Path(os.environ.get("TRADEWARDEN_CACHE") or
                     pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "tradewarden")


class InClusterError(RuntimeError):
    pass


@dataclass
class LocalNode:
    kubeconfig: str
    ip: str          # the node's bridge address: this machine as Pods see it
    api_port: int    # the API server's port (forwarded on `ip` for Pods)

    def helm_values(self) -> list[str]:
        """Helm flags that let the chart's Pods use in-cluster config on this node."""
        return ["--set-json", "hostAliases=" + json.dumps([{"ip": self.ip, "hostnames": ["kubernetes.default.svc"]}]),
                "--set-json", "extraEnv=" + json.dumps([
                    {"name": "KUBERNETES_SERVICE_HOST", "value": "kubernetes.default.svc"},
                    {"name": "KUBERNETES_SERVICE_PORT", "value": str(self.api_port)}])]


def _run(argv: list[str], timeout: float, what: str) -> str:
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if r.returncode != 0:
        raise InClusterError(f"{what} failed:\n{r.stderr[-3000:]}")
    return r.stdout


def start_node(timeout: float = 2400) -> LocalNode:
    """The local control plane and its node (built on the first run), Ready."""
    out = _run(["bash", str(SCRIPTS / "controlplane.sh"), "node"], timeout, "controlplane.sh node")
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines()
                   if line.startswith("export "))
    kubeconfig = exports["KUBECONFIG"]
    server = yaml.safe_load(open(kubeconfig))["clusters"][0]["cluster"]["server"]
    return LocalNode(kubeconfig, exports["TRADEWARDEN_NODE_IP"], urllib.parse.urlsplit(server).port)


def stop_node() -> None:
    subprocess.run(["bash", str(SCRIPTS / "controlplane.sh"), "node-stop"], capture_output=True, timeout=300)


def build_image(context: pathlib.Path = CHECKOUT, timeout: float = 2400) -> str:
    """Build the operator's image from the Dockerfile (cached layers); returns its reference."""
    if not (context / "Dockerfile").exists():
        raise InClusterError(f"no Dockerfile in {context}: the image is built from a clone of the repository")
    return _run(["bash", str(SCRIPTS / "image.sh"), "build", str(context)], timeout,
                "image.sh build").strip().splitlines()[-1]


def load_image(timeout: float = 600) -> str:
    """Import the built image into the local node's containerd (like `kind load`); returns its reference."""
    return _run(["bash", str(SCRIPTS / "image.sh"), "load"], timeout, "image.sh load").strip().splitlines()[-1]


def helm_bin() -> str:
    cached = CACHE / "bin" / "helm"
    found = str(cached) if cached.exists() else shutil.which("helm")
    if not found:
        raise InClusterError("helm not found: run `tradewarden testenv setup`")
    return found


def helm(*args: str, kubeconfig: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    env.setdefault("HELM_CACHE_HOME", str(CACHE / "helm" / "cache"))
    env.setdefault("HELM_CONFIG_HOME", str(CACHE / "helm" / "config"))
    env.setdefault("HELM_DATA_HOME", str(CACHE / "helm" / "data"))
    r = subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise InClusterError(f"helm {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def install_values(node: LocalNode, image: str, namespace: str, release: str) -> list[str]:
    """The chart's values for the operator Pod on the local node, watching `namespace` only."""
    repository, tag = image.rsplit(":", 1)
    return ["--namespace", namespace, "--set", f"watchNamespaces={{{namespace}}}",
            "--set", f"peering.name={release}", "--set", f"image.repository={repository}",
            "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never", *node.helm_values()]


def operator_pods(kubeconfig: str, namespace: str, release: str) -> list[dict]:
    r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "-n", namespace, "get", "pods", "-l",
                        f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator", "-o", "json"],
                       capture_output=True, text=True, timeout=60)
    return json.loads(r.stdout)["items"] if r.returncode == 0 else []


def ready_pod(kubeconfig: str, namespace: str, release: str) -> dict | None:
    """The release's operator Pod that is Running and Ready (and not being deleted), if any."""
    for p in operator_pods(kubeconfig, namespace, release):
        if p["metadata"].get("deletionTimestamp"):
            continue
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        if p["status"].get("phase") == "Running" and conds.get("Ready") == "True":
            return p
    return None


def wait_ready_pod(kubeconfig: str, namespace: str, release: str, timeout: float = 240,
                   not_named: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = ready_pod(kubeconfig, namespace, release)
        if p and p["metadata"]["name"] != not_named:
            return p
        time.sleep(0.25)
    states = [(p["metadata"]["name"], p["status"].get("phase"), p["status"].get("containerStatuses"))
              for p in operator_pods(kubeconfig, namespace, release)]
    raise InClusterError(f"the operator Pod was not Ready within {timeout:.0f} s: {json.dumps(states)[:1500]}")
