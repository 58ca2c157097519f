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


# ---- test tiers -------------------------------------------------------------------------------
# unit: hermetic (no simulator, no API server, no helm/promtool, no network): `pytest -m unit`, first in CI.
# sim: real ccxt against the exchange simulator on 127.0.0.1.
# cluster: the real kube-apiserver, or the tools `./tw test` sets up beside it (helm, promtool, PyPI).
# soak: long runs of the whole stack.
# A test's tier follows from the fixtures it uses (so a mislabelled test cannot slip into the unit tier);
# a test that needs none of them is a unit test, and is then kept from reaching out (see _hermetic).
TIERS = ("unit", "sim", "cluster", "soak")
SIM_FIXTURES = {"sim", "tsim"}
CLUSTER_FIXTURES = {"kubeconfig", "helm_bin"}
OUTSIDE_TOOLS = {"helm", "kubectl", "promtool", "prometheus", "pip", "pip3", "apt-get", "docker", "kube-apiserver", "etcd"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)
        if names & SIM_FIXTURES:
            item.add_marker(pytest.mark.sim)
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if "unit" in tiers and len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid}: marked unit but needs {sorted(tiers - {'unit'})}")
        if not tiers:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _hermetic(request, monkeypatch):
    """Unit tests may not leave the machine's loopback nor start the outside tools."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    import socket
    import subprocess

    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a unit test connects to {address!r}: mark it (sim, cluster) or fake the peer")
        return real_connect(self, address)

    real_popen_init = subprocess.Popen.__init__

    def popen_init(self, args, *a, **kw):
        argv = [args] if isinstance(args, (str, bytes)) else list(args)
        tool = os.path.basename(str(argv[0])) if argv else ""
        if tool in OUTSIDE_TOOLS or (tool.startswith("python") and "pip" in map(str, argv[1:3])):
            raise AssertionError(f"a unit test runs {tool!r}: mark it cluster")
        return real_popen_init(self, args, *a, **kw)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(subprocess.Popen, "__init__", popen_init)
    yield


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
