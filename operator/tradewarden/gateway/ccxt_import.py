"""Import ccxt without loading every exchange it ships.

``import ccxt`` (and ``ccxt.async_support``, ``ccxt.pro``) imports each of its ~100 exchange classes
three times over: about 60 MiB of modules in a process that uses one or two of them
(bench_controller.py's memory anatomy prints the figure). ``install()`` loads the three packages'
``__init__`` with every ``from <package>.<id> import <id>  # noqa: F401`` line left out, and gives
each package a module ``__getattr__`` that imports an exchange the first time it is named
(``ccxt.async_support.binance``, ``getattr(ccxt.pro, "binanceusdm")``, ``from ccxt import kraken``).
Everything else of the packages (errors, base classes, ``ccxt.exchanges``, version) is unchanged.

It must run before anything imports ccxt (the gateway package calls it first); if ccxt is already
imported in full it does nothing. ``TRADEWARDEN_CCXT_IMPORT=full`` turns it off.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import types

PACKAGES = ("ccxt", "ccxt.async_support", "ccxt.pro")
_EXCHANGE_LINE = re.compile(r"^from (ccxt(?:\.async_support|\.pro)?)\.(\w+) import (\w+)\s+# noqa: F401[^\n]*$",
                            re.M)
_LAZY: dict[str, frozenset[str]] = {}


def installed() -> bool:
    return bool(_LAZY)


def install() -> bool:
    """Load ccxt's packages lazily (True), or leave them as they are (False: already imported, or
    turned off)."""
    if _LAZY or "ccxt" in sys.modules or os.environ.get("TRADEWARDEN_CCXT_IMPORT", "lazy") == "full":
        return False
    for name in PACKAGES:
        _load(name)
    return True


def _load(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not an importable package")
    source = spec.loader.get_source(name) or ""
    lazy: set[str] = set()

    def drop(m: re.Match) -> str:
        if m.group(1) == name and m.group(2) == m.group(3):
            lazy.add(m.group(2))
            return ""
        return m.group(0)

    filtered = _EXCHANGE_LINE.sub(drop, source)
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _Package
    _LAZY[name] = frozenset(lazy)
    module.__getattr__ = _getter(name)          # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        exec(compile(filtered, spec.origin or name, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        del _LAZY[name]
        raise
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


class _Package(types.ModuleType):
    """Importing ``<package>.<id>`` binds the *module* to the package's name ``<id>`` (and an exchange
    module imports others: ccxt.pro's binanceusdm imports ``ccxt.async_support.binanceusdm as
    binanceusdmRest`` and calls it); in ccxt's own ``__init__`` that name is the *class*. So a
    package binds an exchange module's class where the import system binds the module."""

    def __setattr__(self, attr: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and attr in _LAZY.get(self.__name__, ()) \
                and isinstance(getattr(value, attr, None), type):
            value = getattr(value, attr)
        super().__setattr__(attr, value)


def _getter(package: str):
    def __getattr__(attr: str):
        if attr in _LAZY.get(package, ()):
            importlib.import_module(f"{package}.{attr}")
            return sys.modules[package].__dict__[attr]
        raise AttributeError(f"module {package!r} has no attribute {attr!r}")
    return __getattr__


__all__ = ["install", "installed", "PACKAGES"]
