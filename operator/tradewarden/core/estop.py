"""The emergency stop as a pure state machine: (state, observation, now) -> (state, actions, Events).

No I/O, no clock, no kopf, no ccxt: the supervisor executes the actions (whole-account listings,
cancels, position closes, workload scaling) and feeds back what the exchange answered. Table tests:
tests/core/test_estop.py.

The rules it keeps (issue 14: "the emergency stop tells the truth and holds"):
- ``Completed`` is entered only on ``Listed`` with no open order (and, under Flatten, no open
  position): a successful listing of every open order of the whole account. A failed listing, a
  failed cancel, a cancel not yet verified never completes anything; no deadline turns into success.
- Failures are retried with capped exponential backoff (and never before a Retry-After) for as long
  as the stop stands; status names what remains and the error of each symbol.
- After completion the breaker holds: a sweep of the whole account every ``sweep_interval_ms``
  (and every order the stream shows, at once) is cancelled and reported: a Warning Event naming it
  and a count (``breaker_cancelled``).
- Every order cancelled is counted once, from what the exchange reported cancelled.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from tradewarden.domain import ZERO, Order, Position

MAX_ERRORS = 20          # per-symbol errors kept in state/status
MAX_NAMED = 5            # orders or positions named in one Event
MAX_BREAKER_EVENTS = 10  # breaker Events per sweep round (each names up to MAX_NAMED orders)


class StopPhase(str, enum.Enum):
    CANCELLING = "Cancelling"   # cancels under way, nothing verified yet (or new orders found by the breaker)
    INCOMPLETE = "Incomplete"   # a listing or a cancel failed, or orders remained: retrying with backoff
    COMPLETED = "Completed"     # a whole-account listing returned none: the breaker holds


class PositionsMode(str, enum.Enum):
    KEEP = "Keep"
    FLATTEN = "Flatten"


class EventType(str, enum.Enum):
    NORMAL = "Normal"
    WARNING = "Warning"


class StopReason(str, enum.Enum):
    REQUESTED = "EmergencyStop"
    COMPLETED = "EmergencyStopCompleted"
    INCOMPLETE = "EmergencyStopIncomplete"
    BREAKER_FOUND = "EmergencyStopBreakerFound"          # a sweep found orders after the stop completed
    BREAKER_CANCELLED = "EmergencyStopBreakerCancelled"  # the breaker cancelled orders (named)
    BREAKER_CANCEL_FAILED = "EmergencyStopBreakerCancelFailed"
    FLATTENED = "EmergencyStopPositionsClosed"
    RELEASED = "EmergencyStopReleased"


@dataclass(frozen=True, slots=True)
class StopEvent:
    type: EventType
    reason: StopReason
    message: str


@dataclass(frozen=True, slots=True)
class StopConfig:
    sweep_interval_ms: int = 10_000
    flatten: bool = False               # USD-M only (spot has no positions)
    scale_down: bool = False            # spec.emergencyStop.scaleDown is set
    backoff_first_ms: int = 1_000
    backoff_cap_ms: int = 15_000
    max_rounds: int = 3                 # list -> cancel -> list rounds in one sweep before backing off


# ---- observations (what the executor saw) -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the executor is idle: nothing of the machine's in flight)."""


@dataclass(frozen=True, slots=True)
class Listed:
    """A successful listing of every open order of the whole account (USD-M: algo orders too), and
    under Flatten the account's positions."""
    orders: tuple[Order, ...]
    positions: tuple[Position, ...] = ()


@dataclass(frozen=True, slots=True)
class ListFailed:
    error: str
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The outcome of CancelSymbols: the orders the exchange reported cancelled, and per symbol the
    error of each cancel that failed."""
    orders: tuple[Order, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class Flattened:
    """The outcome of ClosePositions: positions a reduce-only market order was accepted for, errors."""
    closed: tuple[Position, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class StreamOrder:
    """The stream showed an order while the stop stands."""
    order: Order


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    """The outcome of CancelOrder: ``cancelled`` when the exchange said so; ``gone`` when it no
    longer knew the order as open (filled, or cancelled by a sweep); else ``error``."""
    order: Order
    cancelled: bool = False
    gone: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class StreamGap:
    """The stream reconnected after a gap: orders placed meanwhile were not seen; sweep now."""


Observation = Tick | Listed | ListFailed | Cancelled | Flattened | StreamOrder | OrderCancelled | StreamGap


# ---- actions (what the executor does) ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ListAccount:
    positions: bool            # also list the positions (Flatten)


@dataclass(frozen=True, slots=True)
class CancelSymbols:
    """Spot: cancel-all per symbol. USD-M: cancel all open orders of each symbol in ``symbols`` and
    the open algo orders of each symbol in ``algo_symbols``."""
    symbols: tuple[str, ...]
    algo_symbols: tuple[str, ...] = ()
    orders: tuple[Order, ...] = ()       # what the listing showed (the USD-M reply names none)


@dataclass(frozen=True, slots=True)
class CancelOrder:
    order: Order


@dataclass(frozen=True, slots=True)
class ClosePositions:
    positions: tuple[Position, ...]


@dataclass(frozen=True, slots=True)
class ScaleDown:
    """Scale the selected workloads to 0 (idempotent: the previous replicas are kept once)."""


@dataclass(frozen=True, slots=True)
class RestoreWorkloads:
    pass


Action = ListAccount | CancelSymbols | CancelOrder | ClosePositions | ScaleDown | RestoreWorkloads


# ---- state ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StopState:
    phase: StopPhase
    reason: str = ""
    requested_by: str = ""
    requested_at_ms: int = 0
    completed_at_ms: int | None = None   # first time a whole-account listing returned none
    verified_at_ms: int | None = None    # last time a whole-account listing returned none
    cancelled: int = 0                   # orders the exchange reported cancelled by this stop
    breaker_cancelled: int = 0           # of them: placed after the stop had completed, or seen on the stream
    remaining: int | None = None         # open orders at the last successful listing; None: never listed
    open_positions: int | None = None    # Flatten: non-zero positions at the last listing
    errors: tuple[tuple[str, str], ...] = ()   # (symbol or "listing", error) of the last attempt
    failures: int = 0                    # consecutive failed attempts
    rounds: int = 0                      # list -> act rounds in the current sweep
    next_sweep_ms: int = 0
    in_flight: bool = False              # a listing, cancel or close is being executed
    breaker_round: bool = False          # the current round's orders were found after completion

    @property
    def verified(self) -> bool:
        return self.phase is StopPhase.COMPLETED


@dataclass(frozen=True, slots=True)
class Transition:
    state: StopState
    actions: tuple[Action, ...] = ()
    events: tuple[StopEvent, ...] = ()


def backoff_ms(failures: int, cfg: StopConfig) -> int:
    """Capped exponential backoff (deterministic: the machine is pure; one account's retries do not
    need spreading, the shared rate budget paces every account)."""
    if failures <= 0:
        return 0
    return int(min(cfg.backoff_cap_ms, cfg.backoff_first_ms * 2 ** min(30, failures - 1)))


def _list(cfg: StopConfig) -> ListAccount:
    return ListAccount(positions=cfg.flatten)


def open_stop(reason: str, requested_by: str, now_ms: int, cfg: StopConfig) -> Transition:
    """The annotation appeared: the breaker opens, every open order of the account is to go."""
    state = StopState(StopPhase.CANCELLING, reason=reason, requested_by=requested_by, requested_at_ms=now_ms,
                      in_flight=True, next_sweep_ms=now_ms)
    what = "every open order of the whole account" + (" and every position" if cfg.flatten else "")
    actions: tuple[Action, ...] = ((ScaleDown(),) if cfg.scale_down else ()) + (_list(cfg),)
    return Transition(state, actions, (StopEvent(
        EventType.WARNING, StopReason.REQUESTED,
        f"emergency stop requested by {requested_by or 'unknown'} (reason: {reason or 'none given'}): "
        f"cancelling {what}"),))


def resume(state: StopState, now_ms: int, cfg: StopConfig) -> Transition:
    """After an operator restart (state read back from status): look at the whole account at once.
    A completed stop stays completed (it was verified) and its breaker holds from here."""
    state = replace(state, in_flight=True, rounds=0, next_sweep_ms=now_ms, breaker_round=False)
    actions: tuple[Action, ...] = ((ScaleDown(),) if cfg.scale_down else ()) + (_list(cfg),)
    return Transition(state, actions)


def release(state: StopState) -> Transition:
    """The annotation was removed."""
    return Transition(state, (RestoreWorkloads(),), (StopEvent(
        EventType.NORMAL, StopReason.RELEASED,
        f"emergency stop annotation removed after {state.cancelled} orders cancelled "
        f"({state.breaker_cancelled} by the breaker): resuming with an initial sync"),))


def step(state: StopState, obs: Observation, now_ms: int, cfg: StopConfig) -> Transition:
    if isinstance(obs, Tick):
        return _tick(state, now_ms, cfg)
    if isinstance(obs, Listed):
        return _listed(state, obs, now_ms, cfg)
    if isinstance(obs, ListFailed):
        return _failed(replace(state, in_flight=False), (("listing", obs.error),), obs.retry_after_ms, now_ms, cfg,
                       "listing the open orders of the account failed")
    if isinstance(obs, Cancelled):
        return _cancelled(state, obs, now_ms, cfg)
    if isinstance(obs, Flattened):
        return _flattened(state, obs, now_ms, cfg)
    if isinstance(obs, StreamOrder):
        if obs.order.state.active:
            return Transition(state, (CancelOrder(obs.order),))
        return Transition(state)
    if isinstance(obs, OrderCancelled):
        return _order_cancelled(state, obs, now_ms)
    if isinstance(obs, StreamGap):
        return Transition(replace(state, next_sweep_ms=min(state.next_sweep_ms, now_ms)))
    raise TypeError(f"not an observation: {obs!r}")


def next_wake_ms(state: StopState) -> int | None:
    """When the executor must come back with a Tick (None while something is in flight)."""
    return None if state.in_flight else state.next_sweep_ms


# ---- transitions ------------------------------------------------------------------------------

def _tick(state: StopState, now_ms: int, cfg: StopConfig) -> Transition:
    if state.in_flight or now_ms < state.next_sweep_ms:
        return Transition(state)
    actions: tuple[Action, ...] = ((ScaleDown(),) if cfg.scale_down else ()) + (_list(cfg),)
    return Transition(replace(state, in_flight=True, rounds=0, breaker_round=False), actions)


def _nonzero(positions: Sequence[Position]) -> tuple[Position, ...]:
    return tuple(p for p in positions if p.amount != ZERO)


def _listed(state: StopState, obs: Listed, now_ms: int, cfg: StopConfig) -> Transition:
    positions = _nonzero(obs.positions) if cfg.flatten else ()
    state = replace(state, in_flight=False, remaining=len(obs.orders),
                    open_positions=len(positions) if cfg.flatten else None)
    if not obs.orders and not positions:
        first = state.completed_at_ms is None
        done = replace(state, phase=StopPhase.COMPLETED, verified_at_ms=now_ms, errors=(), failures=0, rounds=0,
                       breaker_round=False, next_sweep_ms=now_ms + cfg.sweep_interval_ms,
                       completed_at_ms=now_ms if first else state.completed_at_ms)
        events: tuple[StopEvent, ...] = ()
        if state.phase is not StopPhase.COMPLETED:
            flat = "; every position is 0" if cfg.flatten else ""
            events = (StopEvent(EventType.WARNING, StopReason.COMPLETED,
                                f"emergency stop completed: {state.cancelled} orders cancelled "
                                f"({state.breaker_cancelled} by the breaker); a listing of every open order of the "
                                f"whole account returned none{flat}. The breaker holds while the annotation "
                                f"stands."),)
        return Transition(done, (), events)
    if state.rounds >= cfg.max_rounds:
        what = _name_orders(obs.orders) if obs.orders else _name_positions(positions)
        return _failed(state, (("remaining", f"{len(obs.orders)} orders, {len(positions)} positions still "
                                             f"open after {state.rounds} rounds: {what}"),),
                       0, now_ms, cfg, "orders or positions remain")
    # after the first completion verified the account empty, whatever a listing shows was placed since
    breaker = state.completed_at_ms is not None
    events = ()
    phase = state.phase
    if state.phase is StopPhase.COMPLETED:
        phase = StopPhase.CANCELLING
        events = (StopEvent(EventType.WARNING, StopReason.BREAKER_FOUND,
                            f"breaker: a sweep of the whole account found {len(obs.orders)} open orders placed after "
                            f"the stop completed ({_name_orders(obs.orders)}); cancelling"),)
    state = replace(state, phase=phase, rounds=state.rounds + 1, in_flight=True, breaker_round=breaker)
    if obs.orders:
        plain = tuple(sorted({o.symbol for o in obs.orders if not o.algo}))
        algo = tuple(sorted({o.symbol for o in obs.orders if o.algo}))
        return Transition(state, (CancelSymbols(plain, algo, tuple(obs.orders)),), events)
    return Transition(state, (ClosePositions(positions),), events)


def _cancelled(state: StopState, obs: Cancelled, now_ms: int, cfg: StopConfig) -> Transition:
    n = len(obs.orders)
    state = replace(state, in_flight=False, cancelled=state.cancelled + n,
                    breaker_cancelled=state.breaker_cancelled + (n if state.breaker_round else 0))
    events: list[StopEvent] = []
    if state.breaker_round and n:
        events += _breaker_events(obs.orders, "a sweep")
    if obs.errors:
        t = _failed(state, tuple(sorted(obs.errors.items())), obs.retry_after_ms, now_ms, cfg,
                    f"{n} orders cancelled; cancels failed")
        return replace(t, events=tuple(events) + t.events)
    return Transition(replace(state, in_flight=True), (_list(cfg),), tuple(events))


def _flattened(state: StopState, obs: Flattened, now_ms: int, cfg: StopConfig) -> Transition:
    state = replace(state, in_flight=False)
    events: list[StopEvent] = []
    if obs.closed:
        events.append(StopEvent(EventType.WARNING, StopReason.FLATTENED,
                                f"emergency stop: reduce-only market orders sent to close {len(obs.closed)} "
                                f"positions ({_name_positions(obs.closed)}); verifying"))
    if obs.errors:
        t = _failed(state, tuple(sorted(obs.errors.items())), obs.retry_after_ms, now_ms, cfg,
                    "closing positions failed")
        return replace(t, events=tuple(events) + t.events)
    return Transition(replace(state, in_flight=True), (_list(cfg),), tuple(events))


def _order_cancelled(state: StopState, obs: OrderCancelled, now_ms: int) -> Transition:
    if obs.cancelled:
        state = replace(state, cancelled=state.cancelled + 1, breaker_cancelled=state.breaker_cancelled + 1)
        return Transition(state, (), _breaker_events((obs.order,), "the stream"))
    if obs.gone:
        return Transition(state)
    # the next sweep comes now: the order may still rest
    return Transition(replace(state, next_sweep_ms=min(state.next_sweep_ms, now_ms)), (), (StopEvent(
        EventType.WARNING, StopReason.BREAKER_CANCEL_FAILED,
        f"breaker: cancelling {_name_order(obs.order)} (seen on the stream) failed: {obs.error}; "
        f"sweeping the whole account now"),))


def _failed(state: StopState, errors: tuple[tuple[str, str], ...], retry_after_ms: int, now_ms: int,
            cfg: StopConfig, what: str) -> Transition:
    failures = state.failures + 1
    wait = max(backoff_ms(failures, cfg), retry_after_ms)
    keys_changed = tuple(k for k, _ in errors) != tuple(k for k, _ in state.errors)
    # A completed stop stays completed (it was verified); its breaker reports the failed sweep.
    phase = StopPhase.COMPLETED if state.phase is StopPhase.COMPLETED else StopPhase.INCOMPLETE
    new = replace(state, phase=phase, errors=errors[:MAX_ERRORS], failures=failures, rounds=0, in_flight=False,
                  breaker_round=False, next_sweep_ms=now_ms + wait)
    events: tuple[StopEvent, ...] = ()
    if failures == 1 or keys_changed:
        remain = "unknown (no successful listing yet)" if state.remaining is None else \
            f"{state.remaining} at the last successful listing"
        detail = "; ".join(f"{k}: {v}" for k, v in errors[:MAX_NAMED])
        events = (StopEvent(EventType.WARNING, StopReason.INCOMPLETE,
                            f"emergency stop NOT verified: {what} ({detail}); open orders: {remain}; "
                            f"retrying in {wait / 1000:.0f}s for as long as the annotation stands"),)
    return Transition(new, (), events)


def _breaker_events(orders: Sequence[Order], via: str) -> list[StopEvent]:
    out = []
    for i in range(0, min(len(orders), MAX_NAMED * MAX_BREAKER_EVENTS), MAX_NAMED):
        chunk = orders[i:i + MAX_NAMED]
        out.append(StopEvent(EventType.WARNING, StopReason.BREAKER_CANCELLED,
                             f"breaker cancelled {len(chunk)} orders placed while the emergency stop stands "
                             f"(seen by {via}): {_name_orders(chunk)}"))
    return out


def _name_order(o: Order) -> str:
    kind = " algo" if o.algo else ""
    return (f"{o.symbol} {o.side.value} {o.amount}@{o.price}{kind} (client id {o.client_order_id or '-'}, "
            f"id {o.exchange_order_id or '-'})")


def _name_orders(orders: Sequence[Order]) -> str:
    named = ", ".join(_name_order(o) for o in orders[:MAX_NAMED])
    return named + (f" and {len(orders) - MAX_NAMED} more" if len(orders) > MAX_NAMED else "")


def _name_positions(positions: Sequence[Position]) -> str:
    named = ", ".join(f"{p.symbol} {p.amount}" for p in positions[:MAX_NAMED])
    return named + (f" and {len(positions) - MAX_NAMED} more" if len(positions) > MAX_NAMED else "")


# ---- status (the state survives an operator restart in status.emergencyStop) -------------------

def to_status(state: StopState, rfc3339: Any) -> dict[str, Any]:
    """status.emergencyStop (``rfc3339``: ms -> text). ``remaining`` is absent until a listing
    succeeded: no number is shown that was not counted."""
    out: dict[str, Any] = {
        "active": True, "state": state.phase.value, "reason": state.reason, "requestedBy": state.requested_by,
        "requestedAt": rfc3339(state.requested_at_ms), "ordersCancelled": state.cancelled,
        "breakerCancelled": state.breaker_cancelled, "failures": state.failures,
        "errors": [{"symbol": k, "message": v} for k, v in state.errors],
    }
    if state.remaining is not None:
        out["remaining"] = state.remaining
    if state.open_positions is not None:
        out["openPositions"] = state.open_positions
    if state.completed_at_ms is not None:
        out["completedAt"] = rfc3339(state.completed_at_ms)
    if state.verified_at_ms is not None:
        out["verifiedAt"] = rfc3339(state.verified_at_ms)
    if state.phase is not StopPhase.COMPLETED or state.errors:
        out["nextAttemptAt"] = rfc3339(state.next_sweep_ms)
    return out


def from_status(status: Mapping[str, Any], parse_ms: Any) -> StopState | None:
    """The state a previous operator wrote (None when there is no active stop in it)."""
    if not status or not status.get("active"):
        return None
    try:
        phase = StopPhase(status.get("state") or StopPhase.CANCELLING.value)
    except ValueError:
        phase = StopPhase.CANCELLING
    # A stop that was Cancelling or Incomplete is not verified: it is retried from the start.
    remaining = status.get("remaining")
    positions = status.get("openPositions")
    return StopState(
        phase=phase, reason=str(status.get("reason") or ""), requested_by=str(status.get("requestedBy") or ""),
        requested_at_ms=parse_ms(status.get("requestedAt")) or 0,
        completed_at_ms=parse_ms(status.get("completedAt")) if status.get("completedAt") else None,
        verified_at_ms=parse_ms(status.get("verifiedAt")) if status.get("verifiedAt") else None,
        cancelled=int(status.get("ordersCancelled") or 0), breaker_cancelled=int(status.get("breakerCancelled") or 0),
        remaining=int(remaining) if remaining is not None else None,
        open_positions=int(positions) if positions is not None else None,
        failures=0)
