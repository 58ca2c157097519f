"""The emergency stop as the lifecycle sees it (pure: no I/O, no clock; ``now`` is passed in).

The stop's own state machine is ``core/estop.py`` (states, observations, retries, Events); the executor
that carries out its actions is ``controller/breaker.py``. This module is the small seam between them and
the lifecycle (``lifecycle.decide``): the frozen :class:`EmergencyStop` held in ``State.stop`` (a mirror of
the executor's machine state, and what status.emergencyStop shows), and :func:`decide`, which tells the
lifecycle whether the machine has work due (``Sweep``) or waits (``Wait``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..core import estop as es
from .workloads import Held

StopState = es.StopPhase        # status.emergencyStop.state


@dataclass(frozen=True)
class EmergencyStop:
    """The breaker: the machine's state (None: never stopped), the workloads it holds at zero and how
    the last scaling went. ``active``: the annotation stands."""
    active: bool = False
    machine: es.StopState | None = None
    held: tuple[Held, ...] = ()
    scale: tuple[str, str] | None = None            # (problem or "", message) of the last scaleDown

    @property
    def reason(self) -> str:
        return self.machine.reason if self.machine is not None else ""

    @property
    def requested_by(self) -> str:
        return self.machine.requested_by if self.machine is not None else ""

    @property
    def state(self) -> es.StopPhase | None:
        return self.machine.phase if self.machine is not None else None

    def to_status(self) -> dict[str, Any]:
        """``status.emergencyStop`` (the EmergencyStopStatus model's fields)."""
        from .status import rfc3339

        if self.machine is None:
            return {"active": False}
        out = es.to_status(self.machine, rfc3339)
        out["active"] = self.active
        out["scaledDown"] = [h.to_status() for h in self.held]
        if self.scale is not None:
            out["scaleDown"] = {"problem": self.scale[0], "message": self.scale[1]}
        if not self.active:
            out.pop("nextAttemptAt", None)
        return out

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> "EmergencyStop":
        """The breaker as a previous process left it in status (a restart keeps holding it)."""
        from .status import parse_rfc3339

        s = dict(status or {})
        machine = es.from_status({**s, "active": True}, parse_rfc3339) if s.get("state") else None
        held = tuple(Held.from_status(h) for h in s.get("scaledDown") or [] if isinstance(h, Mapping))
        return cls(active=bool(s.get("active")) and machine is not None, machine=machine, held=held)


# ---- what the lifecycle hands the supervisor ---------------------------------------------------------

@dataclass(frozen=True)
class Sweep:
    """The machine has work due: queued actions, or its sweep / retry time has come."""


@dataclass(frozen=True)
class Wait:
    """Nothing due before ``wake_at``."""
    wake_at: float | None


StopAction = Sweep | Wait


def pending(annotation: str | None, stop: EmergencyStop) -> bool:
    """The annotation asks for a stop the breaker does not show yet (a new one, or a new reason)."""
    return annotation is not None and not (stop.active and stop.reason == annotation)


def decide(stop: EmergencyStop, now: float, *, gateway_ready: bool) -> StopAction | None:
    """The next thing to do while the annotation stands. None: the gateway must be built first (every
    part of the stop talks to the exchange: nothing holds without it, and nothing is claimed)."""
    if not gateway_ready:
        return None
    machine = stop.machine
    if machine is None or machine.in_flight:
        return Sweep()
    wake = es.next_wake_ms(machine)
    if wake is None or now * 1000 >= wake:
        return Sweep()
    return Wait(wake / 1000.0)
