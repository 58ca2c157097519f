"""The emergency stop's own state machine (pure: no I/O, no clock; ``now`` is passed in).

The lifecycle (``lifecycle.decide``) opens the breaker when the annotation appears and releases it
when the annotation goes; while it stands, it delegates to :func:`decide` here, and wraps what comes
back in ``lifecycle.Stop``. The supervisor executes those actions in one place
(``AccountSupervisor._execute_stop``) and feeds the outcome of an attempt back through
:func:`attempt_failed` / :func:`attempt_finished`, which return the new state and the Events to post.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from .events import EventSpec

ESTOP_RETRY_S = 30.0        # between attempts while orders remain (or an attempt failed)
ESTOP_DEADLINE_S = 60.0     # one attempt's own retries (runner.emergency_stop)
SETTLE_EXTRA_S = 1.0        # after the core's missing-order grace: one read-only run shows final states


class StopState(enum.StrEnum):
    """``status.emergencyStop.state``."""
    CANCELLING = "Cancelling"
    INCOMPLETE = "Incomplete"
    COMPLETED = "Completed"


@dataclass(frozen=True)
class EmergencyStop:
    """The breaker: what status.emergencyStop shows, and the machine's two timers."""
    active: bool = False
    reason: str = ""
    requested_by: str = ""
    requested_at: str | None = None       # RFC 3339, as status shows it
    completed_at: str | None = None
    orders_cancelled: int = 0
    remaining: int = 0
    state: StopState | None = None        # None: never stopped
    retry_at: float = 0.0                 # next attempt not before (s, epoch)
    settle_at: float | None = None        # the settling run after a completion made here

    def to_status(self) -> dict[str, Any]:
        """``status.emergencyStop`` (the EmergencyStopStatus model's fields)."""
        if self.state is None and not self.active:
            return {"active": False}
        out: dict[str, Any] = {"active": self.active, "reason": self.reason, "requestedBy": self.requested_by,
                               "requestedAt": self.requested_at, "ordersCancelled": self.orders_cancelled,
                               "remaining": self.remaining, "state": str(self.state) if self.state else None}
        if self.completed_at:
            out["completedAt"] = self.completed_at
        return out

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> "EmergencyStop":
        """The breaker as a previous process left it in status (a restart keeps holding it)."""
        s = dict(status or {})
        try:
            state = StopState(s["state"]) if s.get("state") else None
        except ValueError:
            state = StopState.INCOMPLETE
        return cls(active=bool(s.get("active")), reason=str(s.get("reason") or ""),
                   requested_by=str(s.get("requestedBy") or ""), requested_at=s.get("requestedAt"),
                   completed_at=s.get("completedAt"), orders_cancelled=int(s.get("ordersCancelled") or 0),
                   remaining=int(s.get("remaining") or 0), state=state)


# ---- actions ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hold:
    """The stop is done: keep the stream stopped and touch nothing."""


@dataclass(frozen=True)
class Attempt:
    """Cancel every open order and verify (runner.emergency_stop)."""
    deadline_s: float = ESTOP_DEADLINE_S


@dataclass(frozen=True)
class SettleRun:
    """One read-only reconciliation after a completion: orders cancelled seconds after they were
    placed are inside the core's grace, this run shows their final state."""


@dataclass(frozen=True)
class Wait:
    """Nothing due before ``wake_at``."""
    wake_at: float | None


StopAction = Hold | Attempt | SettleRun | Wait


def pending(annotation: str | None, stop: EmergencyStop) -> bool:
    """The annotation asks for a stop the breaker does not show yet (a new one, or a new reason)."""
    return annotation is not None and not (stop.active and stop.reason == annotation)


def open_breaker(reason: str, requested_by: str, requested_at: str | None,
                 symbols: Sequence[str]) -> tuple[EmergencyStop, list[EventSpec]]:
    """The stop as status shows it before any exchange call."""
    who = requested_by or "unknown"
    stop = EmergencyStop(active=True, reason=reason, requested_by=who, requested_at=requested_at,
                         state=StopState.CANCELLING)
    return stop, [EventSpec("Warning", "EmergencyStop",
                            f"emergency stop requested by {who} (reason: {reason or 'none given'}): cancelling "
                            f"every open order on {len(symbols)} symbols")]


def release(stop: EmergencyStop) -> tuple[EmergencyStop, list[EventSpec]]:
    return replace(stop, active=False, settle_at=None), [
        EventSpec("Normal", "EmergencyStopReleased", "emergency stop annotation removed: resuming with an initial sync")]


def decide(stop: EmergencyStop, now: float, *, gateway_ready: bool) -> StopAction | None:
    """The next thing to do while the annotation stands. None: the gateway must be built first."""
    if stop.state is StopState.COMPLETED and stop.settle_at is None:
        return Hold()
    if not gateway_ready:
        return None
    if stop.state is not StopState.COMPLETED and now >= stop.retry_at:
        return Attempt()
    if stop.settle_at is not None and now >= stop.settle_at:
        return SettleRun()
    wake = [t for t in ((stop.retry_at if stop.state is not StopState.COMPLETED else None), stop.settle_at)
            if t is not None]
    return Wait(min(wake) if wake else None)


def attempt_failed(stop: EmergencyStop, error: str, now: float) -> tuple[EmergencyStop, list[EventSpec]]:
    return replace(stop, state=StopState.INCOMPLETE, retry_at=now + ESTOP_RETRY_S), [
        EventSpec("Warning", "EmergencyStopIncomplete",
                  f"emergency stop attempt failed: {error}; retrying in {ESTOP_RETRY_S:.0f}s")]


def attempt_finished(stop: EmergencyStop, report: Any, now: float, *, now_text: str | None, grace_s: float,
                     elapsed_s: float) -> tuple[EmergencyStop, list[EventSpec]]:
    """The outcome of one attempt (a core EmergencyStopReport: cancelled, remaining)."""
    remaining = list(report.remaining)
    cancelled = stop.orders_cancelled + int(report.cancelled)
    if not remaining:
        done = replace(stop, orders_cancelled=cancelled, remaining=0, state=StopState.COMPLETED,
                       completed_at=now_text, settle_at=now + grace_s + SETTLE_EXTRA_S)
        return done, [EventSpec("Warning", "EmergencyStopCompleted",
                                f"emergency stop completed in {elapsed_s:.1f}s: {cancelled} orders cancelled, "
                                f"0 open orders remain (verified)")]
    sample = ", ".join(f"{o.symbol} {o.client_order_id}" for o in remaining[:5])
    return replace(stop, orders_cancelled=cancelled, remaining=len(remaining), state=StopState.INCOMPLETE,
                   retry_at=now + ESTOP_RETRY_S), [
        EventSpec("Warning", "EmergencyStopIncomplete",
                  f"emergency stop: {cancelled} orders cancelled, {len(remaining)} still open ({sample}); "
                  f"retrying in {ESTOP_RETRY_S:.0f}s")]


def settled(stop: EmergencyStop) -> EmergencyStop:
    return replace(stop, settle_at=None)
