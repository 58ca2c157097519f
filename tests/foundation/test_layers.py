"""Imports point one way (docs/architecture.md): the pure core imports no I/O layer, the controller
never imports ccxt, the gateway never imports the simulator, the service layer drives the core through
the domain's Gateway Protocol. Read from the source, so a new import that breaks a boundary fails here."""
from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "operator" / "tradewarden"


def imports_of(layer: str) -> dict[str, set[str]]:
    """module path -> the absolute names it imports (relative imports resolved)."""
    out: dict[str, set[str]] = {}
    folder = PACKAGE / layer
    files = sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{layer}.py"]
    for path in files:
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        package = list(rel.parts[:-1])          # what a relative import is relative to
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                names.add(module)
                names.update(f"{module}.{a.name}" for a in node.names)
        out[str(rel)] = names
    return out


def offenders(layer: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for module, names in imports_of(layer).items():
        bad = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
        if bad:
            found[module] = bad
    return found


def test_the_core_is_pure():
    assert offenders("core", ("ccxt", "kopf", "kubernetes", "aiohttp", "asyncio", "tradewarden.gateway",
                              "tradewarden.controller", "tradewarden.service", "tradewarden.sim")) == {}


def test_the_service_drives_the_core_through_the_domain_gateway():
    assert offenders("service", ("ccxt", "kopf", "kubernetes", "tradewarden.gateway", "tradewarden.controller",
                                 "tradewarden.sim")) == {}


def test_the_controller_never_imports_ccxt_nor_the_simulator():
    assert offenders("controller", ("ccxt", "tradewarden.sim")) == {}


def test_the_gateway_never_imports_the_simulator_nor_the_layers_above():
    assert offenders("gateway", ("tradewarden.sim", "tradewarden.controller", "tradewarden.service",
                                 "tradewarden.core", "kopf")) == {}


def test_the_shared_vocabulary_imports_no_layer():
    for leaf in ("domain", "redact", "endpoints", "retry"):
        assert offenders(leaf, ("ccxt", "kopf", "tradewarden.gateway", "tradewarden.controller",
                                "tradewarden.service", "tradewarden.core", "tradewarden.sim")) == {}, leaf


def test_the_reader_itself_sees_imports():
    """The checks above are only as good as the import reader: it must see relative imports resolved."""
    controller = imports_of("controller")
    assert "tradewarden.controller.lifecycle" in controller["tradewarden/controller/supervisor"]
    assert "tradewarden.gateway" in controller["tradewarden/controller/deps"]
    assert "ccxt" in imports_of("gateway")["tradewarden/gateway/errors"]
