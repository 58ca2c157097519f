"""scaleDown's bookkeeping without an API server: the replicas to restore are recorded before any workload
is scaled (so an operator killed between the two still restores them), and only what was scaled is held.
The same code against the real API server and the shipped RBAC: tests/controller/test_scale_down.py and
test_emergency_stop_breaker.py (killed during a stop, restored on release)."""
from __future__ import annotations

import asyncio

from tradewarden.controller import workloads as wl
from tradewarden.controller.kube import Forbidden


class FakeKube:
    def __init__(self, replicas: dict[tuple[str, str], int], refuse: set[str] = frozenset()) -> None:
        self.replicas = dict(replicas)
        self.refuse = set(refuse)
        self.log: list[tuple] = []

    async def list_workloads(self, namespace: str, selector: str) -> list[tuple[str, str]]:
        return sorted(self.replicas)

    async def get_scale(self, namespace: str, kind: str, name: str) -> int | None:
        return self.replicas.get((kind, name))

    async def set_scale(self, namespace: str, kind: str, name: str, replicas: int) -> bool:
        self.log.append(("scale", kind, name, replicas))
        if name in self.refuse:
            raise Forbidden(f"{kind}/{name}: forbidden")
        self.replicas[(kind, name)] = replicas
        return True


SELECTOR = {"matchLabels": {"app": "bot"}}


def test_replicas_are_recorded_before_the_first_scale_call():
    kube = FakeKube({("Deployment", "bot"): 3, ("StatefulSet", "db"): 2, ("Deployment", "idle"): 0})

    async def record(held: list[wl.Held]) -> None:
        kube.log.append(("record", sorted((h.kind, h.name, h.replicas) for h in held)))

    report = asyncio.run(wl.scale_down(kube, "ns", SELECTOR, [], record))
    assert kube.log[0] == ("record", [("Deployment", "bot", 3), ("StatefulSet", "db", 2)])
    assert sorted(kube.log[1:]) == [("scale", "Deployment", "bot", 0), ("scale", "StatefulSet", "db", 0)]
    assert sorted((h.name, h.replicas) for h in report.held) == [("bot", 3), ("db", 2)]
    assert report.problem is None

    # while the stop stands: a bot scaled up again goes back to 0 with its first count kept; nothing new
    # to hold, so nothing recorded again
    kube.replicas[("Deployment", "bot")] = 5
    kube.log.clear()
    again = asyncio.run(wl.scale_down(kube, "ns", SELECTOR, report.held, record))
    assert kube.log == [("scale", "Deployment", "bot", 0)]
    assert sorted((h.name, h.replicas) for h in again.held) == [("bot", 3), ("db", 2)]


def test_a_workload_that_could_not_be_scaled_is_not_held():
    kube = FakeKube({("Deployment", "bot"): 3, ("Deployment", "locked"): 4}, refuse={"locked"})
    recorded: list[list[str]] = []

    async def record(held: list[wl.Held]) -> None:
        recorded.append(sorted(h.name for h in held))

    report = asyncio.run(wl.scale_down(kube, "ns", SELECTOR, [], record))
    assert recorded == [["bot", "locked"]]                  # intended, before trying
    assert [h.name for h in report.held] == ["bot"]         # held: only what is at zero
    assert report.problem is wl.ScaleProblem.FORBIDDEN and "Deployment/locked" in report.message
    # restore after a restart reads the recorded count back from status
    held = [wl.Held.from_status(h.to_status()) for h in report.held]
    back = asyncio.run(wl.restore(kube, "ns", held))
    assert back.held == [] and kube.replicas[("Deployment", "bot")] == 3
    assert kube.replicas[("Deployment", "locked")] == 4
