"""Print requirements.lock: the exact versions installed in this environment of tradewarden's runtime
dependencies (with the `otlp` extra), for the Docker image. Regenerate after changing dependencies:

    .venv/bin/python -m tests.packaging.lock > requirements.lock
"""
from __future__ import annotations

import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement

EXTRAS = ("otlp",)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(project: str = "tradewarden", extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    pinned: dict[str, str] = {}
    done: set[tuple[str, tuple[str, ...]]] = set()

    def walk(name: str, active: tuple[str, ...]) -> None:
        key = (canonical(name), tuple(sorted(active)))
        if key in done:
            return
        done.add(key)
        dist = md.distribution(name)
        pinned[canonical(dist.metadata["Name"])] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *active)):
                continue
            walk(req.name, tuple(req.extras))

    walk(project, extras)
    pinned.pop(canonical(project))
    return dict(sorted(pinned.items()))


def render() -> str:
    lines = ["# Runtime dependencies of tradewarden (with the otlp extra), pinned exactly, for the container image",
             "# (CPython 3.11, linux x86_64/aarch64). Generated: .venv/bin/python -m tests.packaging.lock > requirements.lock",
             "# tests/packaging/test_dockerfile.py fails when it drifts from the development environment."]
    lines += [f"{name}=={version}" for name, version in runtime_closure().items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
