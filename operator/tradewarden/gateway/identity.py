"""How an exchange (and anything between: a proxy, the simulator's request log) tells this process's
requests from another's: the User-Agent of every REST request, ``tradewarden (<instance>)``.

The instance is the replica's identity: its member Lease's holder when accounts are sharded (so a
request can be matched to the Leases), else the pod name. Nothing secret: the pod name is visible to
anyone who can list the pods, and the suffix is random. No ccxt here (the controller sets it before
the first gateway loads ccxt)."""
from __future__ import annotations

import re

PRODUCT = "tradewarden"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_instance = ""


def user_agent(instance: str | None) -> str:
    """The User-Agent for an instance name (characters a header comment may not carry are dropped)."""
    name = _UNSAFE.sub("", instance or "")[:63]
    return f"{PRODUCT} ({name})" if name else PRODUCT


def set_instance(instance: str | None) -> None:
    """This process's instance name, for every gateway built from now on."""
    global _instance
    _instance = instance or ""


def current_user_agent() -> str:
    return user_agent(_instance)


def instance_of(agent: str | None) -> str | None:
    """The instance named by a User-Agent this module wrote (None: not one of ours, or unnamed)."""
    m = re.fullmatch(rf"{PRODUCT} \(([A-Za-z0-9._-]+)\)", agent or "")
    return m.group(1) if m else None
