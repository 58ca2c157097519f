"""Fixtures for the packaging tests: helm (cached by the testenv), rendering the chart."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tradewarden"
CACHE = pathlib.Path(os.environ.get("TRADEWARDEN_CACHE") or
                     pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "tradewarden")


def _find_helm() -> str | None:
    cached = CACHE / "bin" / "helm"
    if cached.exists():
        return str(cached)
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm_bin() -> str:
    found = _find_helm()
    if found is None:
        out = subprocess.run(["bash", str(ROOT / "operator/tradewarden/scripts/controlplane.sh"), "setup"],
                             capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stderr[-3000:]
        found = _find_helm()
    assert found, "helm not found after `controlplane.sh setup`"
    return found


def helm(helm_bin: str, *args: str, check: bool = True, kubeconfig: str | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # helm keeps its caches/config out of the repository and out of the read-only HOME paths
    env.setdefault("HELM_CACHE_HOME", str(CACHE / "helm" / "cache"))
    env.setdefault("HELM_CONFIG_HOME", str(CACHE / "helm" / "config"))
    env.setdefault("HELM_DATA_HOME", str(CACHE / "helm" / "data"))
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    r = subprocess.run([helm_bin, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def render(helm_bin):
    """render(*set_args, release="tradewarden", namespace="tradewarden") -> list of objects (the release's
    own, without hooks unless hooks=True)."""
    def _render(*sets: str, release: str = "tradewarden", namespace: str = "tradewarden",
                include_crds: bool = False, hooks: bool = False) -> list[dict]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        if include_crds:
            args.append("--include-crds")
        if not hooks:
            args.append("--no-hooks")
        for s in sets:
            args += ["--set", s]
        out = helm(helm_bin, *args).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    return _render


def find(objs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]
