"""Shared fixtures: the exchange simulator (real HTTP/WebSocket on 127.0.0.1) and a real
Kubernetes API server (tradewarden testenv, or the cluster KUBECONFIG points at)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONTROLPLANE = ROOT / "operator" / "tradewarden" / "scripts" / "controlplane.sh"


# ---- the exchange simulator ------------------------------------------------------------------

@pytest.fixture
async def sim():
    """A fresh simulator on an ephemeral port with its control API on. ``sim.url`` is its base URL."""
    from tradewarden.sim import Simulator

    simulator = Simulator(control=True)
    await simulator.start(host="127.0.0.1", port=0)
    try:
        yield simulator
    finally:
        await simulator.stop()


def new_key() -> str:
    return "tw-test-" + uuid.uuid4().hex


# ---- a real Kubernetes API server ------------------------------------------------------------

def _reachable(kubeconfig: str) -> bool:
    try:
        r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "--request-timeout=5s", "get", "--raw", "/readyz"],
                           capture_output=True, text=True, timeout=20)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    """KUBECONFIG of a reachable cluster: the user's own if it answers, else the local control plane."""
    existing = os.environ.get("KUBECONFIG")
    if existing and _reachable(existing):
        return existing
    out = subprocess.run(["bash", str(CONTROLPLANE), "start"], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"tradewarden testenv start failed:\n{out.stderr[-4000:]}")
    path = out.stdout.strip().splitlines()[-1].removeprefix("export KUBECONFIG=")
    os.environ["KUBECONFIG"] = path
    return path


def kubectl(kubeconfig: str, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=input,
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def parse_table(out: str) -> list[dict[str, str]]:
    """Rows of `kubectl get` output as dicts by column header (empty cells stay empty)."""
    lines = out.rstrip("\n").splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows.append(dict(zip(names, cells)))
    return rows


@pytest.fixture(scope="session")
def crd_installed(kubeconfig: str) -> str:
    """The committed CRD applied and Established."""
    kubectl(kubeconfig, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    kubectl(kubeconfig, "wait", "--for", "condition=established", "--timeout=60s",
            "crd/tradingaccounts.tradewarden.io")
    return kubeconfig


@pytest.fixture
def namespace(kubeconfig: str):
    """A fresh namespace, deleted afterwards (without waiting). TradingAccounts left in it keep the
    operator's finalizer once their operator is gone; it is dropped after the deletion started (so no
    operator can add it back), or the namespace would stay Terminating on the API server forever."""
    name = "tw-" + uuid.uuid4().hex[:10]
    kubectl(kubeconfig, "create", "namespace", name)
    try:
        yield name
    finally:
        kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", check=False)
        left = kubectl(kubeconfig, "get", "-n", name, "tradingaccounts.tradewarden.io", "-o", "name",
                       check=False).stdout.split()
        if left:
            kubectl(kubeconfig, "patch", "-n", name, *left, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}', check=False)
