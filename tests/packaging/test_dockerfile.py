"""The Dockerfile: structure (pinned slim base, multi-stage, non-root, entrypoint) and its install steps,
run for real in a clean virtual environment (no container engine on these machines)."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from .conftest import ROOT
from .lock import runtime_closure

DOCKERFILE = (ROOT / "Dockerfile").read_text()
VENV_IN_IMAGE = "/opt/tradewarden"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


INSTR = instructions(DOCKERFILE)


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in INSTR:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_base_image_pinned_slim_python311():
    args = dict(a.split("=", 1) for k, a in INSTR if k == "ARG" and "=" in a)
    froms = [a.split()[0] for k, a in INSTR if k == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image


def test_runtime_stage_is_non_root_and_copies_only_the_venv():
    final = stages()[-1]
    users = [a for k, a in final if k == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root") and (uid.isdigit() and int(uid) >= 1000)
    copies = [a for k, a in final if k == "COPY"]
    assert copies == [f"--from=build {VENV_IN_IMAGE} {VENV_IN_IMAGE}"]
    # no secrets or caches baked in
    for k, a in INSTR:
        if k in ("ENV", "ARG"):
            assert not re.search(r"(?i)(secret|token|password|api_?key)", a), a
    build_runs = " ".join(a for k, a in stages()[0] if k == "RUN")
    assert "PIP_NO_CACHE_DIR=1" in DOCKERFILE or "--no-cache-dir" in build_runs


def test_entrypoint_is_the_console_script():
    entry = [json.loads(a) for k, a in INSTR if k == "ENTRYPOINT"][-1]
    cmd = [json.loads(a) for k, a in INSTR if k == "CMD"][-1]
    assert entry == ["tradewarden"] and cmd == ["run", "--all-namespaces"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tradewarden"] == "tradewarden.cli:main"
    from tradewarden.cli import build_parser
    args = build_parser().parse_args(cmd)
    assert args.command == "run" and args.all_namespaces is True


def test_dockerignore_keeps_context_minimal():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set()
    for k, a in INSTR:
        if k == "COPY" and not a.startswith("--from"):
            copied.update(a.split()[:-1])
    assert copied <= included, copied - included


def test_lock_matches_environment_and_pyproject():
    from packaging.requirements import Requirement
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name] = version
    assert lock == runtime_closure(), "regenerate: .venv/bin/python -m tests.packaging.lock > requirements.lock"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["otlp"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert req.specifier.contains(lock[name], prereleases=True), (spec, lock[name])


def _build_context(dst):
    """Copy the repository as docker would send it, honouring .dockerignore (simple patterns)."""
    rules = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]

    def ignored(rel: str) -> bool:
        verdict = False
        for rule in rules:
            neg = rule.startswith("!")
            pat = rule[1:] if neg else rule
            pat = pat.rstrip("/")
            parts = rel.split("/")
            hit = fnmatch.fnmatch(rel, pat) or any(fnmatch.fnmatch("/".join(parts[:i]), pat)
                                                   for i in range(1, len(parts)))
            if pat.startswith("operator/**/"):
                hit = fnmatch.fnmatch(parts[-1], pat.split("/")[-1]) or any(
                    fnmatch.fnmatch(p, pat.split("/")[-1]) for p in parts[1:])
            if hit:
                verdict = not neg
        return verdict

    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".venv", ".git")) or path.is_dir() or ignored(rel):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


@pytest.mark.cluster      # pip from PyPI: not hermetic
@pytest.mark.skipif(os.environ.get("TRADEWARDEN_SKIP_IMAGE_INSTALL") == "1",
                    reason="TRADEWARDEN_SKIP_IMAGE_INSTALL=1")
def test_build_stage_installs_in_a_clean_venv(tmp_path):
    """Run the build stage's RUN steps (with the image's venv path mapped to a temp dir) in a copy of the
    build context: the locked dependencies install without a resolver, `pip check` passes, and the
    console script answers."""
    ctx = tmp_path / "context"
    _build_context(ctx)
    assert (ctx / "requirements.lock").exists() and (ctx / "operator" / "tradewarden" / "cli.py").exists()
    assert not (ctx / "tests").exists() and not (ctx / ".venv").exists()
    assert not list(ctx.rglob("__pycache__"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    runs = [a for k, a in stages()[0] if k == "RUN"]
    assert runs[0] == f"python -m venv {VENV_IN_IMAGE}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    for step in runs[1:]:
        cmd = step.replace(VENV_IN_IMAGE, str(venv))
        r = subprocess.run(["bash", "-ec", cmd], cwd=ctx, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    r = subprocess.run([str(venv / "bin" / "tradewarden"), "run", "--help"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and "--all-namespaces" in r.stdout
    r = subprocess.run([str(venv / "bin" / "tradewarden"), "crd"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "tradingaccounts.tradewarden.io" in r.stdout
    # the installed package is the copy, not the editable checkout
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import tradewarden, ccxt, kopf; print(tradewarden.__file__)"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and str(venv) in r.stdout, r.stderr
