"""An account's lifecycle as one pure decision: ``decide(observed, state, now) -> action``.

:func:`observe` reads the resource (kopf's body) into :class:`Observed`; :class:`State` is what the
supervisor knows about its own work; :func:`decide` says what to do next, one action at a time, most
urgent first. The supervisor (``supervisor.py``) executes the action, updates the state, and asks
again. Nothing here does I/O or reads a clock.

Order of precedence (the first that applies wins):

1. a new emergency stop opens the breaker (status first, before anything talks to the exchange);
2. an unusable spec tears everything down and says why;
3. a new generation or a changed identity (exchange, endpoint, symbols, credentials, prefix,
   stream) is accepted (rebuilding the gateway when the identity changed);
4. while the emergency stop stands, the stop machine (``emergency.decide``) decides;
5. the gateway is built (after a backoff when the last build failed), the runner configured;
6. a breaker whose annotation is gone is released;
7. the initial sync (or resume of the saved ledger), then the stream;
8. runs by trigger: stream reconnect, annotation, timer, stale-order check.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from pydantic import ValidationError

from .. import models
from ..core.config import AccountConfig, Trigger
from . import emergency
from .emergency import EmergencyStop
from .vocabulary import Problem, ProblemReason, RunKind

ESTOP = models.ANNOTATION_EMERGENCY_STOP
RECONCILE_AT = models.ANNOTATION_RECONCILE_REQUESTED_AT


# ---- what is observed -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """What, when it changes, needs a new gateway (a different account, or different wiring)."""
    exchange: str
    endpoint: str | None
    symbols: tuple[str, ...]
    secret: str
    api_key_key: str
    secret_key: str
    owned_prefix: str
    stream: bool

    def same_account(self, other: "Identity") -> bool:
        """Exchange, endpoint and credentials: otherwise possibly another account, whose state is not this one's."""
        return (self.exchange, self.endpoint, self.secret, self.api_key_key, self.secret_key) == \
            (other.exchange, other.endpoint, other.secret, other.api_key_key, other.secret_key)


@dataclass(frozen=True)
class Observed:
    deleting: bool = False
    generation: int | None = None
    estop: str | None = None                 # the emergency-stop annotation's value (None: absent)
    estop_requested_by: str = ""             # its field manager (managedFields)
    reconcile_requested: str | None = None   # the reconcile-requested-at annotation's value
    spec: models.TradingAccountSpec | None = None
    problem: Problem | None = None           # the spec cannot be served (InvalidSpec, UnknownExchange)
    identity: Identity | None = None
    config: AccountConfig | None = None      # the core's config for this spec (known once a gateway is)
    check_interval_s: int = 60
    stream_enabled: bool = True
    saved_ledger: bool = False               # status carries a ledger to resume from
    quiet_s: float = 0.0                     # a timer run waits for this long without a user-data event ...
    max_delay_s: float = 0.0                 # ... for at most this long after its slot


def requested_by(meta: Mapping[str, Any], annotation: str = ESTOP) -> str:
    """The field manager that last set ``annotation`` (from managedFields), or ''."""
    best: tuple[str, str] | None = None
    for entry in meta.get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get("f:metadata", {}).get("f:annotations", {})
        if f"f:{annotation}" in fields:
            when = str(entry.get("time") or "")
            if best is None or when >= best[0]:
                best = (when, str(entry.get("manager") or ""))
    return best[1] if best else ""


def parse_spec(raw: Mapping[str, Any], known_exchanges: Collection[str]) -> models.TradingAccountSpec | Problem:
    try:
        spec = models.TradingAccountSpec.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return Problem(ProblemReason.INVALID_SPEC, f"spec.{where}: {first.get('msg', str(exc))}")
    if spec.exchange not in known_exchanges:
        return Problem(ProblemReason.UNKNOWN_EXCHANGE, f"ccxt has no exchange {spec.exchange!r}")
    return spec


def identity_of(spec: models.TradingAccountSpec) -> Identity:
    ref = spec.credentialsSecretRef
    return Identity(spec.exchange, spec.endpoint, tuple(spec.symbols), ref.name, ref.apiKeyKey, ref.secretKey,
                    spec.staleOrders.ownedClientOrderIdPrefix, spec.stream.enabled)


def observe(body: Mapping[str, Any], *, known_exchanges: Collection[str], futures: bool | None = None,
            saved_ledger: bool = False) -> Observed:
    """The resource as the lifecycle needs it. ``futures``: the built gateway's answer to "is this a
    derivatives account" (it decides what it fetches), None before a gateway exists."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    estop = annotations.get(ESTOP)
    base = dict(deleting=bool(meta.get("deletionTimestamp")), generation=meta.get("generation"), estop=estop,
                estop_requested_by=requested_by(meta) if estop is not None else "",
                reconcile_requested=annotations.get(RECONCILE_AT), saved_ledger=saved_ledger)
    parsed = parse_spec(body.get("spec") or {}, known_exchanges)
    if isinstance(parsed, Problem):
        return Observed(problem=parsed, **base)
    config = AccountConfig.from_spec(parsed, futures=futures) if futures is not None else None
    return Observed(spec=parsed, identity=identity_of(parsed), config=config,
                    check_interval_s=parsed.staleOrders.checkIntervalSeconds, stream_enabled=parsed.stream.enabled,
                    quiet_s=float(parsed.reconciliation.quietSeconds),
                    max_delay_s=float(parsed.reconciliation.maxDelaySeconds), **base)


# ---- what the supervisor knows about its own work -------------------------------------------------------

@dataclass
class State:
    built: bool = False                      # the gateway started and the runner exists
    identity: Identity | None = None         # of the spec last accepted
    seen_generation: int | None = None
    config: AccountConfig | None = None      # the runner's
    check_interval_s: int | None = None
    problem: Problem | None = None
    failures: int = 0                        # builds / initial syncs failed in a row
    retry_at: float = 0.0                    # no build / initial sync before this
    synced: bool = False
    stream_running: bool = False
    reconnect_pending: bool = False          # the stream reconnected: events may have been lost
    last_handled: str = ""                   # the reconcile-requested-at value last handled
    next_reconcile: float = 0.0
    next_stale: float = 0.0
    last_event_at: float = 0.0               # when the last user-data event arrived (0: none yet)
    stop: EmergencyStop = field(default_factory=EmergencyStop)


# ---- actions ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Idle:
    """Nothing to do before ``wake_at`` (None: until something changes)."""
    wake_at: float | None = None


@dataclass(frozen=True)
class Reject:
    """The spec cannot be served: tear down, show why."""
    problem: Problem


@dataclass(frozen=True)
class AcceptSpec:
    generation: int | None
    identity: Identity
    rebuild: bool          # the identity changed: tear the gateway down, build again
    forget: bool           # ... and it may be another account: drop the kept ledger and the saved one
    retry_now: bool        # a new generation deserves a try now, not after a backoff


@dataclass(frozen=True)
class OpenBreaker:
    reason: str
    requested_by: str


@dataclass(frozen=True)
class Build:
    """Read the Secret, build and start the gateway, configure the runner."""


@dataclass(frozen=True)
class Configure:
    """The runner's config (or the stale-check interval) changed: apply it, keeping the ledger."""


@dataclass(frozen=True)
class Stop:
    """The emergency stop's machine decided: the supervisor executes ``action``."""
    action: emergency.StopAction


@dataclass(frozen=True)
class ReleaseBreaker:
    pass


@dataclass(frozen=True)
class Run:
    kind: RunKind
    trigger: Trigger
    handles: str | None = None   # the reconcile-requested-at value this run answers


@dataclass(frozen=True)
class StartStream:
    pass


Action = Idle | Reject | AcceptSpec | OpenBreaker | Build | Configure | Stop | ReleaseBreaker | Run | StartStream


def waits(action: Action) -> bool:
    """True when the action leaves nothing to do until a wake-up (the supervisor may sleep)."""
    return isinstance(action, Idle) or (isinstance(action, Stop) and isinstance(action.action, (emergency.Hold,
                                                                                                emergency.Wait)))


def wake_at(action: Action) -> float | None:
    if isinstance(action, Idle):
        return action.wake_at
    if isinstance(action, Stop) and isinstance(action.action, emergency.Wait):
        return action.action.wake_at
    return None


def decide(o: Observed, s: State, now: float) -> Action:
    """The next step of the account's lifecycle."""
    if o.deleting:
        return Idle()
    if emergency.pending(o.estop, s.stop):
        return OpenBreaker(o.estop or "", o.estop_requested_by)
    if o.problem is not None or o.spec is None or o.identity is None:
        problem = o.problem or Problem(ProblemReason.INVALID_SPEC, "no spec")
        return Reject(problem) if (s.built or s.problem != problem) else Idle()
    if o.generation != s.seen_generation or o.identity != s.identity:
        changed = s.identity is not None and o.identity != s.identity
        return AcceptSpec(o.generation, o.identity, rebuild=changed,
                          forget=changed and not o.identity.same_account(s.identity),   # type: ignore[arg-type]
                          retry_now=o.generation != s.seen_generation)
    stopping = o.estop is not None
    if stopping and (a := emergency.decide(s.stop, now, gateway_ready=False)) is not None:
        return Stop(a)                   # a completed stop holds, gateway or not
    if not s.built:
        return Idle(s.retry_at) if now < s.retry_at else Build()
    if o.config != s.config or o.check_interval_s != s.check_interval_s:
        return Configure()
    if stopping:
        return Stop(emergency.decide(s.stop, now, gateway_ready=True) or emergency.Wait(None))
    if s.stop.active:
        return ReleaseBreaker()
    if o.stream_enabled and not s.stream_running:
        # subscribe first (issue 19 item 1): events from before the initial sync's snapshot are buffered by
        # the supervisor and applied after it (newest wins), so no window between sync and stream is unseen
        return StartStream()
    if not s.synced:
        if now < s.retry_at:
            return Idle(s.retry_at)
        return Run(RunKind.INITIAL, Trigger.RESUME if o.saved_ledger else Trigger.INITIAL)
    if s.reconnect_pending:
        return Run(RunKind.RECONCILE, Trigger.STREAM_RECONNECT)
    if o.reconcile_requested is not None and o.reconcile_requested != s.last_handled:
        return Run(RunKind.RECONCILE, Trigger.ANNOTATION, handles=o.reconcile_requested)
    quiet_at = quiet_wait(o, s, now)
    if now >= s.next_reconcile and quiet_at is None:
        return Run(RunKind.RECONCILE, Trigger.TIMER)
    if now >= s.next_stale:
        return Run(RunKind.STALE, Trigger.STALE_CLEANUP)
    if o.stream_enabled and not s.stream_running:
        return StartStream()
    return Idle(min(quiet_at if quiet_at is not None else s.next_reconcile, s.next_stale))


def quiet_wait(o: Observed, s: State, now: float) -> float | None:
    """When a due timer run may run if it is waiting for a quiet moment (issue 19 item 8: the seed's "run
    reconciliation during low-activity periods"): None when it runs now (not due, no waiting configured,
    no event seen, a quiet moment, or the maximum delay reached)."""
    if now < s.next_reconcile or o.quiet_s <= 0 or not o.stream_enabled or not s.last_event_at:
        return None
    deadline = s.next_reconcile + o.max_delay_s
    quiet_at = s.last_event_at + o.quiet_s
    if now >= deadline or now >= quiet_at:
        return None
    return min(quiet_at, deadline)


def delay_reason(o: Observed, s: State, now: float) -> str:
    """Why a timer run that waited runs now: a quiet moment came, or the maximum delay was reached."""
    return "quiet" if s.last_event_at and now - s.last_event_at >= o.quiet_s else "max-delay"
