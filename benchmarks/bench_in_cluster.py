"""The operator as a Pod on the local node (containerd + kubelet), from its image built here.

Prints, each with a baseline measured in the same run:
  1. image build time: cold (an empty cache: the mmdebstrap base, then every Dockerfile step), warm with
     nothing changed, warm after a code change (baseline: warm with nothing changed); the image's size;
  2. helm install -> the operator Pod Running and Ready (baseline: a Pod of the same image that only
     sleeps, created -> Running: what scheduling, the sandbox and the container start cost by themselves);
  3. operator Pod Ready -> the account (created then) Ready against the simulator (baseline: the same with
     the operator as a local process, `tradewarden run`, from its /readyz answering 200).

    .venv/bin/python benchmarks/bench_in_cluster.py [--skip-cold] [--rounds 3]

Figures are for this machine; compare the ratios, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.controller.conftest import (Operator, ThreadSim, account, apply, cond, get_ta, secret,  # noqa: E402
                                      wait_for)
from tradewarden import incluster  # noqa: E402

IMAGE_SH = incluster.SCRIPTS / "image.sh"


def kubectl(kc: str, *args: str, input: str | None = None, check: bool = True) -> str:
    r = subprocess.run(["kubectl", "--kubeconfig", kc, *args], input=input, capture_output=True, text=True,
                       timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr}")
    return r.stdout


def timed_build(context: pathlib.Path, env: dict | None = None) -> float:
    t0 = time.monotonic()
    subprocess.run(["bash", str(IMAGE_SH), "build", str(context)], check=True, capture_output=True, text=True,
                   env=env, timeout=3600)
    return time.monotonic() - t0


def context_copy(dst: pathlib.Path) -> pathlib.Path:
    """What the Dockerfile copies (the .dockerignore's allow list), so a code change can be made to it."""
    for name in ("Dockerfile", ".dockerignore", "requirements.lock", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    shutil.copytree(ROOT / "operator", dst / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readyz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def account_ready(kc: str, ns: str, name: str) -> bool:
    return cond(get_ta(kc, ns, name), "Ready").get("status") == "True"


def build_figures(skip_cold: bool) -> None:
    print("== 1. image build (buildah, Dockerfile with the local base)")
    with tempfile.TemporaryDirectory(prefix="tw-bench-ctx-") as tmp:
        ctx = context_copy(pathlib.Path(tmp))
        if not skip_cold:
            cache = pathlib.Path(tempfile.mkdtemp(prefix="tw-bench-cache-"))
            try:
                cold = timed_build(ctx, env=dict(os.environ, TRADEWARDEN_CACHE=str(cache)))
                print(f"   cold (empty cache: base + every step + export): {cold:7.1f} s")
            finally:
                subprocess.run(["buildah", "--root", str(cache / "containers" / "storage"), "--runroot",
                                str(cache / "containers" / "run"), "rmi", "--all", "--force"], capture_output=True)
                shutil.rmtree(cache, ignore_errors=True)
        timed_build(ctx)                                         # the shared cache up to date with this tree
        warm = timed_build(ctx)
        (ctx / "operator" / "tradewarden" / "_bench_change.py").write_text(f"CHANGE = {uuid.uuid4().hex!r}\n")
        changed = timed_build(ctx)
        print(f"   warm, nothing changed (baseline):              {warm:7.1f} s")
        print(f"   warm, after a code change:                     {changed:7.1f} s  ({changed / warm:.1f}x)")
    timed_build(ROOT)                                            # the image of this tree again, for what follows
    info = json.loads(subprocess.run(["bash", str(IMAGE_SH), "inspect"], check=True, capture_output=True,
                                     text=True).stdout)
    print(f"   image size (uncompressed archive):             {info['archive_bytes'] / 1e6:7.1f} MB")


def pod_figures(rounds: int) -> None:
    node = incluster.start_node()
    image = incluster.load_image()
    kc = node.kubeconfig
    kubectl(kc, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    tsim = ThreadSim(host=node.ip)
    installs, baselines, pod_to_account, local_to_account = [], [], [], []
    try:
        for r in range(rounds):
            ns = f"tw-bench-{uuid.uuid4().hex[:6]}"
            kubectl(kc, "create", "namespace", ns)
            try:
                # baseline: a Pod of the same image that only sleeps
                name = "sleeper"
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                       "spec": {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
                                "containers": [{"name": "s", "image": image, "imagePullPolicy": "Never",
                                                "command": ["python", "-c", "import time; time.sleep(3600)"]}]}}
                wait_for("the namespace's ServiceAccount", lambda: kubectl(kc, "-n", ns, "get", "sa", "default",
                                                                              check=False), interval=0.1)
                t0 = time.monotonic()
                kubectl(kc, "apply", "-f", "-", input=json.dumps(pod))
                wait_for("the sleeper Running", lambda: json.loads(kubectl(kc, "-n", ns, "get", "pod", name, "-o",
                                                                       "json"))["status"].get("phase") == "Running",
                         timeout=240, interval=0.1)
                baselines.append(time.monotonic() - t0)
                kubectl(kc, "-n", ns, "delete", "pod", name, "--wait=false")

                # the same account twice: once for the local operator, once for the Pod
                api_key, api_secret = "tw-bench-" + uuid.uuid4().hex, uuid.uuid4().hex
                tsim.call(tsim.sim.add_account, api_key, api_secret, balances={"USDT": "1000"})
                apply(kc, secret(ns, "creds", {"apiKey": api_key, "secret": api_secret}))

                # local process: ready (its /readyz answers 200) -> account Ready
                with tempfile.TemporaryDirectory() as logdir:
                    port = free_port()
                    op = Operator(kc, ns, pathlib.Path(logdir) / "op.log",
                                  env={"TRADEWARDEN_READINESS": f"http://127.0.0.1:{port}/readyz"})
                    op.start()
                    wait_for("the local operator ready", lambda: readyz(port), timeout=120, interval=0.1)
                    t0 = time.monotonic()
                    apply(kc, account(ns, "local", endpoint=tsim.url, symbols=["BTC/USDT"], secret_name="creds"))
                    wait_for("the local operator's account Ready", lambda: account_ready(kc, ns, "local"),
                             timeout=240, interval=0.1)
                    local_to_account.append(time.monotonic() - t0)
                    kubectl(kc, "-n", ns, "delete", "ta", "local", "--timeout=60s")
                    op.stop()

                # the Pod: helm install -> Ready; Ready -> account Ready
                release = f"twb{r}{uuid.uuid4().hex[:4]}"
                t0 = time.monotonic()
                incluster.helm("install", release, str(incluster.CHART), "--take-ownership",
                               "--set", "crds.enabled=false",
                               *incluster.install_values(node, image, ns, release), kubeconfig=kc)
                incluster.wait_ready_pod(kc, ns, release)
                t1 = time.monotonic()
                installs.append(t1 - t0)
                apply(kc, account(ns, "pod", endpoint=tsim.url, symbols=["BTC/USDT"], secret_name="creds"))
                wait_for("the Pod operator's account Ready", lambda: account_ready(kc, ns, "pod"), timeout=240,
                         interval=0.1)
                pod_to_account.append(time.monotonic() - t1)
                kubectl(kc, "-n", ns, "delete", "ta", "pod", "--timeout=60s")
                incluster.helm("uninstall", release, "--namespace", ns, kubeconfig=kc)
            finally:
                kubectl(kc, "delete", "namespace", ns, "--wait=false", check=False)
    finally:
        tsim.stop()

    def med(xs):
        return statistics.median(xs)
    print(f"== 2. helm install -> operator Pod Ready (median of {rounds})")
    print(f"   helm install -> Pod Running and Ready:         {med(installs):7.1f} s")
    print(f"   baseline: sleeping Pod created -> Running:     {med(baselines):7.1f} s  "
          f"({med(installs) / med(baselines):.1f}x)")
    print(f"== 3. operator -> account Ready (median of {rounds})")
    print(f"   Pod Ready -> account Ready:                    {med(pod_to_account):7.1f} s")
    print(f"   baseline: local `tradewarden run` ready -> account Ready: {med(local_to_account):5.1f} s  "
          f"(Pod/local {med(pod_to_account) / med(local_to_account):.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-cold", action="store_true", help="skip the cold build (an empty cache: ~5 minutes)")
    p.add_argument("--skip-build", action="store_true", help="skip the build figures")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not args.skip_build:
        build_figures(args.skip_cold)
    else:
        incluster.build_image()
    pod_figures(args.rounds)


if __name__ == "__main__":
    main()
