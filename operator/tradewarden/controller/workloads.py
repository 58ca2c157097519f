"""spec.emergencyStop.scaleDown: the bots of the account's namespace scaled to zero while the stop stands,
restored on release. Executes the machine's ScaleDown / RestoreWorkloads actions (core/estop.py).

Only the scale subresource is written (RBAC: ``<fullname>-scale``); the workloads are only read, to resolve
the label selector. The previous replicas of each workload are kept in status.emergencyStop.scaledDown, not
in an annotation on the workload as issue 14 first asked: writing annotations needs ``patch`` on the
workload itself, which could also rewrite its pod template (docs/architecture.md, "Why these choices").
They are recorded there *before* a workload is scaled (``record``), so an operator killed between the two
restores the right count. Nothing here can fail the stop: every problem becomes the WorkloadsScaledDown
condition and an Event.
"""
from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .kube import Forbidden


class ScaleEvent(str, enum.Enum):
    """The reasons of the Events about the workloads (posted on the TradingAccount)."""
    SCALED_DOWN = "EmergencyStopScaledDown"
    SCALED_UP = "EmergencyStopScaledUp"
    LEFT_AT_ZERO = "EmergencyStopWorkloadsLeftAtZero"   # the account deleted while the stop held them


def left_at_zero(held: Sequence["Held"]) -> str:
    """What a TradingAccount deleted during its stop leaves behind (docs/architecture.md: a deletion is not
    a release; nobody would watch the bots once the account is gone)."""
    named = ", ".join(f"{h.kind}/{h.name} (replicas before the stop: {h.replicas})" for h in held)
    return (f"TradingAccount deleted while its emergency stop stands: {named} stay at 0 (a deletion is not a "
            f"release); scale them back yourself once the bots are safe")


class ScaleProblem(str, enum.Enum):
    NO_MATCH = "NoWorkloadMatched"
    FORBIDDEN = "ScaleForbidden"
    FAILED = "ScaleFailed"


@dataclass(frozen=True, slots=True)
class Held:
    """A workload held at zero, and the replicas it had before the stop."""
    kind: str
    name: str
    replicas: int

    def to_status(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "replicas": self.replicas}

    @classmethod
    def from_status(cls, d: Mapping[str, Any]) -> "Held":
        return cls(str(d.get("kind") or "Deployment"), str(d.get("name") or ""), int(d.get("replicas") or 0))


@dataclass(slots=True)
class ScaleReport:
    held: list[Held]                                   # every workload held at zero now (with its previous replicas)
    changed: list[Held] = field(default_factory=list)  # scaled to zero (down) or restored (release) by this call
    problem: ScaleProblem | None = None
    message: str = ""


def selector_string(selector: Mapping[str, Any]) -> str:
    """A metav1.LabelSelector as the API's labelSelector query ('a=b,c in (d,e),!f')."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], sorted(req.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


async def _no_record(held: list[Held]) -> None:
    return None


async def scale_down(kube: Any, namespace: str, selector: Mapping[str, Any], held: Sequence[Held],
                     record: Callable[[list[Held]], Awaitable[None]] = _no_record) -> ScaleReport:
    """Every selected workload to 0 replicas. Idempotent: one already held keeps its first recorded
    replicas; one scaled up again while the stop stands is scaled to 0 again. ``record`` is awaited with
    every workload to be held (their replicas read, none scaled yet) before the first scale call: the
    caller makes that durable (status), so a crash between the two loses no replica count. A workload
    whose scaling then fails is dropped from ``held`` again (it is not held at zero: nothing claims it)."""
    text = selector_string(selector)
    kept = {(h.kind, h.name): h for h in held}
    if not text:
        return ScaleReport(list(kept.values()), [], ScaleProblem.NO_MATCH,
                           "spec.emergencyStop.scaleDown is an empty selector: it selects nothing (by design)")
    try:
        found = await kube.list_workloads(namespace, text)
    except Forbidden as exc:
        return ScaleReport(list(kept.values()), [], ScaleProblem.FORBIDDEN,
                           f"{exc}: bind the tradewarden-scale ClusterRole in namespace {namespace}")
    except Exception as exc:  # noqa: BLE001 - reported; the stop goes on
        return ScaleReport(list(kept.values()), [], ScaleProblem.FAILED, f"listing workloads failed: {exc}")
    if not found:
        return ScaleReport(list(kept.values()), [], ScaleProblem.NO_MATCH,
                           f"no Deployment or StatefulSet in {namespace} matches {text!r}")
    changed: list[Held] = []
    problems: list[str] = []
    forbidden = False

    def failed(kind: str, name: str, exc: Exception) -> None:
        nonlocal forbidden
        forbidden = forbidden or isinstance(exc, Forbidden)
        problems.append(f"{kind}/{name}: {exc}" if isinstance(exc, Forbidden) else
                        f"{kind}/{name}: {type(exc).__name__}: {exc}")

    async def read(kind: str, name: str) -> tuple[str, str, int] | None:
        try:
            replicas = await kube.get_scale(namespace, kind, name)
        except Exception as exc:  # noqa: BLE001 - Forbidden included: named, the others go on
            failed(kind, name, exc)
            return None
        return None if replicas is None or replicas == 0 else (kind, name, replicas)

    due = [r for r in await asyncio.gather(*(read(k, n) for k, n in found)) if r is not None]
    new = {(k, n): Held(k, n, r) for k, n, r in due if (k, n) not in kept}
    if new:
        await record(list(kept.values()) + list(new.values()))       # durable before the first scale call

    async def zero(kind: str, name: str, replicas: int) -> None:
        try:
            if await kube.set_scale(namespace, kind, name, 0):
                kept.setdefault((kind, name), new.get((kind, name)) or Held(kind, name, replicas))
                changed.append(Held(kind, name, replicas))
        except Exception as exc:  # noqa: BLE001
            failed(kind, name, exc)

    await asyncio.gather(*(zero(k, n, r) for k, n, r in due))
    if problems:
        reason = ScaleProblem.FORBIDDEN if forbidden else ScaleProblem.FAILED
        hint = f" (bind the tradewarden-scale ClusterRole in namespace {namespace})" if forbidden else ""
        return ScaleReport(list(kept.values()), changed, reason, "; ".join(sorted(problems)) + hint)
    return ScaleReport(list(kept.values()), changed)


async def restore(kube: Any, namespace: str, held: Sequence[Held]) -> ScaleReport:
    """Each held workload back to its previous replicas, unless someone changed it meanwhile (then
    theirs stands). What could not be restored stays in ``held`` and is named."""
    left: list[Held] = []
    changed: list[Held] = []
    problems: list[str] = []
    forbidden = False
    for h in held:
        try:
            now = await kube.get_scale(namespace, h.kind, h.name)
            if now is None or now != 0:
                continue                    # gone, or scaled by someone else since: theirs stands
            if await kube.set_scale(namespace, h.kind, h.name, h.replicas):
                changed.append(h)
        except Forbidden as exc:
            forbidden = True
            left.append(h)
            problems.append(f"{h.kind}/{h.name}: {exc}")
        except Exception as exc:  # noqa: BLE001
            left.append(h)
            problems.append(f"{h.kind}/{h.name}: {type(exc).__name__}: {exc}")
    if problems:
        reason = ScaleProblem.FORBIDDEN if forbidden else ScaleProblem.FAILED
        return ScaleReport(left, changed, reason, "restoring failed: " + "; ".join(problems))
    return ScaleReport(left, changed)


def describe(held: Sequence[Held], verb: str) -> str:
    return ", ".join(f"{h.kind}/{h.name} ({h.replicas} -> 0)" if verb == "down" else
                     f"{h.kind}/{h.name} (0 -> {h.replicas})" for h in held)
