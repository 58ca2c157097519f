"""Pure builders of the TradingAccount status (no kopf, no I/O, no clock: ``now_ms`` is passed in).

The supervisor (``supervisor.py``) gathers what it knows into :class:`StatusInputs`; :func:`build_status`
turns it into the ``status`` dict; :func:`merge_patch` says what changed since the last write, so the
API server is written only when something did.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Mapping, Sequence

from pydantic import ValidationError

from .. import domain
from ..core.monitor import FAILING_AFTER, Health, stale_after_ms
from ..models import MAX_STATUS_BALANCES, MAX_STATUS_OPEN_ORDERS, MAX_STATUS_POSITIONS, TradingAccountStatus
from .emergency import EmergencyStop, StopState
from .vocabulary import Problem, StreamState

# Condition types.
READY = "Ready"
SYNCED = "Synced"
CREDENTIALS_VALID = "CredentialsValid"
STREAM_CONNECTED = "StreamConnected"
EMERGENCY_STOPPED = "EmergencyStopped"
RECONCILIATION_FAILING = "ReconciliationFailing"
BALANCE_MISMATCH = "BalanceMismatch"
RECONCILIATION_STALE = "ReconciliationStale"
WORKLOADS_SCALED_DOWN = "WorkloadsScaledDown"   # only while a stop with spec.emergencyStop.scaleDown stands
MARGIN_AT_RISK = "MarginAtRisk"
CONDITION_TYPES = (READY, SYNCED, CREDENTIALS_VALID, STREAM_CONNECTED, EMERGENCY_STOPPED,
                   RECONCILIATION_FAILING, BALANCE_MISMATCH, RECONCILIATION_STALE, WORKLOADS_SCALED_DOWN,
                   MARGIN_AT_RISK)

# The health rules (failing, stale, balance mismatch) are the core's: tradewarden.core.monitor.Health.
# The ledger is not in status (controller/checkpoint.py keeps it in a ConfigMap): every list in status is
# bounded (models.MAX_STATUS_*), so status stays under this for any book size (tests/controller/test_status.py).
MAX_STATUS_BYTES = 64 * 1024
MAX_MESSAGE = 1024


def rfc3339(ms: int | float | None) -> str | None:
    if ms is None:
        return None
    t = _dt.datetime.fromtimestamp(float(ms) / 1000.0, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> int | None:
    """Milliseconds since the epoch, or None."""
    if not text:
        return None
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return int(t.timestamp() * 1000)


def dstr(value: Any) -> str:
    """A decimal as a plain string (no exponent, no trailing zeros)."""
    d = domain.dec(value)
    if d == 0:
        return "0"
    text = format(d.normalize(), "f")
    return text


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- conditions (metav1.Condition semantics) -------------------------------------------------------

@dataclass(frozen=True)
class Cond:
    type: str
    status: str          # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


def merge_conditions(previous: Sequence[Mapping[str, Any]] | None, desired: Iterable[Cond], now_ms: int,
                     generation: int | None) -> list[dict[str, Any]]:
    """The new conditions list: lastTransitionTime kept unless the status flipped; order is
    CONDITION_TYPES order; unknown types from before are dropped (we own every condition)."""
    prev = {c.get("type"): c for c in (previous or []) if isinstance(c, Mapping)}
    out: list[dict[str, Any]] = []
    for c in desired:
        old = prev.get(c.type)
        if old is not None and old.get("status") == c.status and old.get("lastTransitionTime"):
            ltt = old["lastTransitionTime"]
        else:
            ltt = rfc3339(now_ms)
        entry = {"type": c.type, "status": c.status, "reason": c.reason, "message": clip(c.message),
                 "lastTransitionTime": ltt}
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    out.sort(key=lambda e: order.get(e["type"], len(order)))
    return out


def condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


# ---- lists ----------------------------------------------------------------------------------------

def balances_status(balances: Mapping[str, domain.Balance] | Iterable[domain.Balance] | None,
                    limit: int = MAX_STATUS_BALANCES) -> list[dict[str, str]]:
    """Non-zero balances sorted by asset, at most ``limit``."""
    if balances is None:
        return []
    items = balances.values() if isinstance(balances, Mapping) else balances
    rows = [b for b in items if domain.dec(b.free) != 0 or domain.dec(b.locked) != 0]
    rows.sort(key=lambda b: b.asset)
    return [{"asset": b.asset, "free": dstr(b.free), "locked": dstr(b.locked)} for b in rows[:limit]]


def order_status(o: domain.Order, owned_prefix: str) -> dict[str, Any]:
    return {
        "clientOrderId": o.client_order_id,
        "orderId": str(o.exchange_order_id or ""),
        "symbol": o.symbol,
        "side": o.side.value if isinstance(o.side, domain.Side) else str(o.side),
        "price": dstr(o.price),
        "amount": dstr(o.amount),
        "filled": dstr(o.filled),
        "owned": domain.is_owned(o.client_order_id, owned_prefix),
        **({"createdAt": rfc3339(o.created_ms)} if o.created_ms else {}),
    }


def open_orders_status(orders: Iterable[domain.Order] | None, owned_prefix: str,
                       limit: int = MAX_STATUS_OPEN_ORDERS) -> dict[str, Any]:
    """Active orders: the full count and the oldest ``limit`` (the ones a human looks for first)."""
    active = [o for o in (orders or []) if o.state.active]
    active.sort(key=lambda o: (o.created_ms, o.symbol, o.client_order_id))
    owned = sum(1 for o in active if domain.is_owned(o.client_order_id, owned_prefix))
    return {"count": len(active), "owned": owned, "truncated": len(active) > limit,
            "items": [order_status(o, owned_prefix) for o in active[:limit]]}


def positions_status(positions: Iterable[domain.Position] | None, limit: int = MAX_STATUS_POSITIONS,
                     health: Any = None) -> list[dict[str, Any]]:
    """Positions by (symbol, side); with ``health`` (core.margin.MarginHealth, USD-M) each row also says
    whether protective orders cover it and how far its mark is from liquidation."""
    rows = [p for p in (positions or []) if domain.dec(p.amount) != 0]
    rows.sort(key=lambda p: (p.symbol, getattr(p, "side", domain.PositionSide.BOTH).value))
    by_key = {h.key: h for h in (health.positions if health is not None else ())}
    out = []
    for p in rows[:limit]:
        row: dict[str, Any] = {"symbol": p.symbol, "amount": dstr(p.amount), "entryPrice": dstr(p.entry_price)}
        side = getattr(p, "side", domain.PositionSide.BOTH)
        if side is not domain.PositionSide.BOTH:
            row["side"] = side.value
        h = by_key.get(p.key)
        if h is not None:
            row["protected"] = h.protected
            if h.mark_price is not None:
                row["markPrice"] = dstr(h.mark_price)
            if h.liquidation_price is not None:
                row["liquidationPrice"] = dstr(h.liquidation_price)
            if h.distance is not None:
                row["liquidationDistance"] = dstr(h.distance.quantize(Decimal("0.0001")))
        out.append(row)
    return out


def margin_status(margin: Any, health: Any) -> dict[str, Any]:
    """USD-M: the margin figures (reported, never compared) and the MarginAtRisk verdict."""
    out: dict[str, Any] = {"atRisk": bool(health.at_risk) if health is not None else False}
    if health is not None:
        if health.margin_ratio is not None and health.margin_ratio.is_finite():
            out["marginRatio"] = dstr(health.margin_ratio.quantize(Decimal("0.0001")))
        out["marginRatioThreshold"] = dstr(health.ratio_threshold)
        out["liquidationDistanceThreshold"] = dstr(health.distance_threshold)
    if margin is not None:
        if margin.hedge_mode is not None:
            out["hedgeMode"] = bool(margin.hedge_mode)
        out["assets"] = [{"asset": a.asset, "walletBalance": dstr(a.wallet), "marginBalance": dstr(a.margin_balance),
                          "unrealizedProfit": dstr(a.unrealized_pnl), "availableBalance": dstr(a.available)}
                         for a in sorted(margin.assets.values(), key=lambda a: a.asset)][:MAX_STATUS_BALANCES]
    return out


def margin_condition(health: Any) -> "Cond":
    """MarginAtRisk: True with what is at risk; Unknown until a USD-M run has measured it."""
    if health is None:
        return Cond(MARGIN_AT_RISK, "Unknown", "NotMeasured", "no margin figures yet (USD-M accounts only)")
    if health.at_risk:
        return Cond(MARGIN_AT_RISK, "True", "MarginAtRisk", "; ".join(health.reasons))
    ratio = "unknown" if health.margin_ratio is None else f"{health.margin_ratio:.2%}"
    return Cond(MARGIN_AT_RISK, "False", "MarginHealthy",
                f"margin ratio {ratio} (threshold {health.ratio_threshold:.2%}); no position within "
                f"{health.distance_threshold:.2%} of liquidation")


# ---- runs -----------------------------------------------------------------------------------------

def last_reconciliation(report: Any, delay: tuple[int, str] = (0, "")) -> dict[str, Any]:
    """From a core RunReport (duck-typed: trigger, finished_ms, duration_ms, discrepancies,
    stale_sections, error, counts_by_kind())."""
    counts = {str(k): int(v) for k, v in report.counts_by_kind().items() if int(v)}
    return {
        "time": rfc3339(report.finished_ms),
        "durationMs": int(report.duration_ms),
        "trigger": str(report.trigger),
        "discrepancyCount": sum(counts.values()),
        "discrepancies": dict(sorted(counts.items())),
        "adoptedOrders": len(getattr(report, "adopted", None) or ()),
        "delayedMs": int(delay[0]) if str(report.trigger) == "timer" else 0,
        "delayReason": delay[1] if str(report.trigger) == "timer" else "",
        "staleSections": sorted(str(s) for s in (report.stale_sections or [])),
        "error": clip(report.error or ""),
    }


def adoption_status(orders: Sequence[Any], owned_prefix: str, when_ms: int) -> dict[str, Any]:
    """status.adoption for the orders a first listing adopted."""
    owned = sum(1 for o in orders if domain.is_owned(o.client_order_id, owned_prefix))
    return {"count": len(orders), "owned": owned, "time": rfc3339(when_ms)}


def metrics_status(monitor: Any) -> dict[str, Any]:
    """From a core MonitoringState (duck-typed)."""
    g = lambda name: int(getattr(monitor, name, 0) or 0)  # noqa: E731
    last_success = getattr(monitor, "last_success_ms", None)
    return {
        "runs": g("runs"), "failures": g("failures"), "discrepanciesTotal": g("discrepancies_total"),
        "balanceMismatches": g("balance_mismatches"), "orderMismatches": g("order_mismatches"),
        "staleOrdersCancelled": g("stale_cancelled"), "consecutiveFailures": g("consecutive_failures"),
        "lastSuccessTime": rfc3339(last_success) if last_success else None,
    }


# ---- the whole status -----------------------------------------------------------------------------

@dataclass
class StatusInputs:
    generation: int | None = None
    problem: Problem | None = None          # spec / secret / gateway build error
    credentials_ok: bool | None = None      # True once the exchange accepted them
    syncing: bool = False                   # initial sync not done yet
    synced: bool = False                    # initial sync done (runner state is meaningful)
    report: Any = None                      # last reconciliation RunReport (not stale cleanup)
    last_run_ok: bool | None = None         # the last run of any kind
    last_run_error: str = ""
    balances: Any = None
    orders: Any = None
    positions: Any = None
    owned_prefix: str = "tw-"
    monitor: Any = None                     # core MonitoringState (run counters for status.metrics)
    health: Health | None = None            # the monitor's health now (None: no runner yet)
    restored_success_ms: int | None = None  # the last success status showed before a restart
    stream_enabled: bool = True
    stream_state: StreamState = StreamState.DISCONNECTED
    stream_since_ms: int | None = None
    stream_reconnects: int = 0
    stream_last_event_ms: int | None = None
    estop: EmergencyStop = field(default_factory=EmergencyStop)
    last_handled_reconcile_at: str = ""
    checkpoint: Mapping[str, Any] | None = None   # status.checkpoint (None: keep the previous)
    futures: bool = False                   # USD-M: margin health is reported
    margin: Any = None                      # domain.MarginSummary of the last USD-M snapshot
    margin_health: Any = None               # core.margin.MarginHealth
    adoption: Mapping[str, Any] | None = None   # status.adoption, once orders were adopted
    delay: tuple[int, str] = (0, "")            # the last timer run's wait for a quiet moment (ms, why)


def desired_conditions(s: StatusInputs, now_ms: int) -> list[Cond]:
    estop_active = s.estop.active
    conds: list[Cond] = []

    # CredentialsValid
    if s.problem is not None and s.problem.credentials:
        conds.append(Cond(CREDENTIALS_VALID, "False", s.problem.reason, s.problem.message))
    elif s.credentials_ok:
        conds.append(Cond(CREDENTIALS_VALID, "True", "Accepted", "the exchange accepted the API credentials"))
    else:
        conds.append(Cond(CREDENTIALS_VALID, "Unknown", "NotChecked", "the exchange has not been reached yet"))

    # Synced
    if s.problem is not None:
        conds.append(Cond(SYNCED, "False", s.problem.reason, s.problem.message))
    elif not s.synced:
        msg = s.last_run_error or "initial sync in progress"
        conds.append(Cond(SYNCED, "False" if s.last_run_error else "Unknown",
                          "SyncFailed" if s.last_run_error else "Syncing", msg))
    elif s.last_run_ok is False:
        conds.append(Cond(SYNCED, "False", "ReconcileError", s.last_run_error or "the last run failed"))
    else:
        rep = s.report
        msg = "local state matches the exchange"
        if rep is not None and rep.counts_by_kind():
            n = sum(int(v) for v in rep.counts_by_kind().values())
            msg = f"last run found {n} discrepancies ({_kinds(rep.counts_by_kind())})"
        if rep is not None and rep.stale_sections:
            msg += f"; sections not refreshed: {', '.join(sorted(rep.stale_sections))}"
        conds.append(Cond(SYNCED, "True", "ReconcileSuccess", msg))

    # StreamConnected
    if not s.stream_enabled:
        conds.append(Cond(STREAM_CONNECTED, "False", "Disabled", "spec.stream.enabled is false"))
    elif s.stream_state is StreamState.CONNECTED:
        conds.append(Cond(STREAM_CONNECTED, "True", "Connected", "user-data stream connected"))
    elif s.stream_state is StreamState.RECONNECTING:
        conds.append(Cond(STREAM_CONNECTED, "False", "Reconnecting",
                          "user-data stream lost; reconnecting (trading is not safe)"))
    else:
        conds.append(Cond(STREAM_CONNECTED, "False", "Disconnected", "user-data stream not connected"))

    # EmergencyStopped (the machine's own words: core/estop.py; nothing here claims more than it verified)
    if estop_active:
        e = s.estop.to_status()
        state = e.get("state") or "Cancelling"
        who = e.get("requestedBy") or "unknown"
        remaining = e.get("remaining")
        msg = (f"emergency stop ({state}) requested by {who}: {e.get('reason') or 'no reason given'}; "
               f"orders cancelled {int(e.get('ordersCancelled') or 0)} "
               f"(by the breaker {int(e.get('breakerCancelled') or 0)}), open orders "
               f"{'unknown: no whole-account listing has succeeded yet' if remaining is None else remaining}")
        if e.get("verifiedAt"):
            msg += f", verified none at {e['verifiedAt']}"
        errors = e.get("errors") or []
        if errors:
            msg += "; failing: " + "; ".join(f"{x.get('symbol')}: {x.get('message')}" for x in errors[:5])
        conds.append(Cond(EMERGENCY_STOPPED, "True", f"EmergencyStop{state}", msg))
        scale = e.get("scaleDown")
        if isinstance(scale, Mapping):
            ok = not scale.get("problem")
            conds.append(Cond(WORKLOADS_SCALED_DOWN, "True" if ok else "False",
                              "ScaledDown" if ok else str(scale.get("problem")), str(scale.get("message") or "")))
    else:
        conds.append(Cond(EMERGENCY_STOPPED, "False", "NotRequested", "no emergency stop annotation"))

    # Health: read from the core's monitor, never decided here
    h = s.health
    consecutive = h.consecutive_failures if h is not None else 0
    failing = h is not None and h.failing
    conds.append(Cond(RECONCILIATION_FAILING, "True" if failing else "False",
                      "ConsecutiveFailures" if failing else "RunsSucceeding",
                      f"{consecutive} consecutive failed runs (threshold {FAILING_AFTER})"))
    rep = s.report
    if h is not None and h.balance_mismatch:
        ents = [d.entity for d in rep.discrepancies if d.kind == "balance"][:10] if rep is not None else []
        conds.append(Cond(BALANCE_MISMATCH, "True", "BalanceMismatch",
                          f"last run found {h.last_balance_mismatches} balance mismatches: {', '.join(map(str, ents))}"))
    else:
        conds.append(Cond(BALANCE_MISMATCH, "False", "BalancesMatch", "last run found no balance mismatch"))
    if s.futures:
        conds.append(margin_condition(s.margin_health))
    limit_s = (h.stale_after_ms if h is not None else stale_after_ms(300)) // 1000
    if estop_active:
        conds.append(Cond(RECONCILIATION_STALE, "False", "EmergencyStopped", "runs paused by the emergency stop"))
    else:
        stale = h is not None and h.stale
        last = (h.last_success_ms if h is not None else 0) or s.restored_success_ms
        when = rfc3339(last) if last else "never"
        conds.append(Cond(RECONCILIATION_STALE, "True" if stale else "False",
                          "NoRecentRun" if stale else "RecentRun",
                          f"last successful run: {when} (stale after {limit_s}s without one)"))

    # Ready (last: it summarizes)
    if estop_active:
        ready = Cond(READY, "False", "EmergencyStopped", f"emergency stop: {s.estop.reason}")
    elif s.problem is not None:
        ready = Cond(READY, "False", s.problem.reason, s.problem.message)
    elif not s.synced:
        ready = Cond(READY, "False", "SyncFailed" if s.last_run_error else "Syncing",
                     s.last_run_error or "initial sync in progress")
    elif failing:
        # more than FAILING_AFTER runs in a row could not confirm the account: what status
        # shows may no longer be what the exchange says
        ready = Cond(READY, "False", "ReconciliationFailing",
                     f"{consecutive} consecutive failed runs: local state is not confirmed by the exchange"
                     + (f" ({s.last_run_error})" if s.last_run_error else ""))
    else:
        ready = Cond(READY, "True", "Reconciled", "synced with the exchange")
    conds.insert(0, ready)
    return conds


def phase(s: StatusInputs, conds: Sequence[Cond]) -> str:
    by = {c.type: c for c in conds}
    if s.estop.active:
        return "EmergencyStopped"
    if s.problem is not None:
        return "Error"
    if not s.synced:
        return "Syncing" if not s.last_run_error else "Error"
    degraded = (by[STREAM_CONNECTED].status != "True" and s.stream_enabled) or any(
        by[t].status == "True" for t in (RECONCILIATION_FAILING, RECONCILIATION_STALE)) or \
        by[SYNCED].status != "True"
    return "Degraded" if degraded else "Ready"


def trading_safe(s: StatusInputs, conds: Sequence[Cond]) -> bool:
    """Safe for a bot to trade on what status says: synced, confirmed by recent runs, stream up."""
    if s.estop.active or s.problem is not None or not s.synced:
        return False
    if any(c.type == RECONCILIATION_FAILING and c.status == "True" for c in conds):
        return False
    return (not s.stream_enabled) or s.stream_state is StreamState.CONNECTED


def build_status(s: StatusInputs, previous: Mapping[str, Any] | None, now_ms: int) -> dict[str, Any]:
    """The full status dict, built through the status model the CRD is generated from (so the writer
    cannot drift from the schema: an unknown field or a wrong type raises here, not at the API
    server). Parts the inputs do not know (no run yet) keep their previous value, so a restart shows
    the last known state until the first run replaces it."""
    previous = previous or {}
    conds = desired_conditions(s, now_ms)
    out: dict[str, Any] = {
        "phase": phase(s, conds),
        "observedGeneration": s.generation,
        "conditions": merge_conditions(previous.get("conditions"), conds, now_ms, s.generation),
    }
    if s.balances is not None:
        out["balances"] = balances_status(s.balances)
        out["openOrders"] = open_orders_status(s.orders, s.owned_prefix)
        out["positions"] = positions_status(s.positions, health=s.margin_health)
    else:
        for k, default in (("balances", []), ("openOrders", {"count": 0, "owned": 0, "truncated": False,
                                                             "items": []}), ("positions", [])):
            out[k] = kept(previous, k, default)
    out["lastReconciliation"] = (last_reconciliation(s.report, s.delay) if s.report is not None
                                 else kept(previous, "lastReconciliation", {}))
    out["adoption"] = dict(s.adoption) if s.adoption is not None else kept(previous, "adoption", {})
    out["lastHandledReconcileAt"] = s.last_handled_reconcile_at or ""
    out["metrics"] = metrics_status(s.monitor) if s.monitor is not None else kept(previous, "metrics", {})
    prev_stream = kept(previous, "stream", {})
    # the breaker keeps the stream up during a stop: status shows it as it is
    state = StreamState.DISABLED if not s.stream_enabled else s.stream_state
    out["stream"] = {
        "state": str(state),
        "since": rfc3339(s.stream_since_ms) if s.stream_since_ms else prev_stream.get("since"),
        "reconnects": int(s.stream_reconnects),
        "tradingSafe": trading_safe(s, conds),
        "lastEventTime": rfc3339(s.stream_last_event_ms) if s.stream_last_event_ms else prev_stream.get(
            "lastEventTime"),
    }
    if s.futures:
        out["margin"] = (margin_status(s.margin, s.margin_health) if s.margin_health is not None
                         else kept(previous, "margin", {"atRisk": False}))
    out["emergencyStop"] = s.estop.to_status()
    out["checkpoint"] = dict(s.checkpoint) if s.checkpoint is not None else kept(previous, "checkpoint", {})
    status = TradingAccountStatus.model_validate(out)
    if status.model_extra:          # the model allows extras for readers; the writer may not invent fields
        raise ValueError(f"status fields the model does not have: {sorted(status.model_extra)}")
    return prune_none(status.model_dump(exclude_unset=True))


def kept(previous: Mapping[str, Any], key: str, default: Any) -> Any:
    """``previous[key]`` when it still fits the status model (a status written by another version
    may not), else ``default``."""
    value = previous.get(key, default)
    try:
        TradingAccountStatus.model_validate({key: value})
    except ValidationError:
        return default
    return value


def prune_none(value: Any) -> Any:
    """Dicts without None or "" values: a merge patch reads None as "delete", the schema has no
    nulls, and the kube-apiserver 1.20 build used here rejects "" in a custom resource as "null"
    (every such field defaults to "" in the models, so leaving it out means the same)."""
    if isinstance(value, Mapping):
        return {k: prune_none(v) for k, v in value.items() if v is not None and v != ""}
    if isinstance(value, list):
        return [prune_none(v) for v in value]
    return value


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning ``old`` into ``new`` (dicts recurse, removed keys -> None,
    anything else replaced). Returns {} when they are equal."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {}
    for k in old:
        if k not in new:
            patch[k] = None
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif isinstance(v, Mapping) and isinstance(old[k], Mapping):
            sub = merge_patch(old[k], v)
            if sub != {}:
                patch[k] = sub
        elif old[k] != v:
            patch[k] = v
    return patch


def apply_merge_patch(old: Any, patch: Any) -> Any:
    """RFC 7386 applied (used to keep the last-written copy exact without re-reading)."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(old) if isinstance(old, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = apply_merge_patch(out.get(k), v)
    return out


def urgent_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """A change readers must see at once (phase, a condition's status, tradingSafe, the emergency
    stop); everything else may be coalesced."""
    old = old or {}
    if old.get("phase") != new.get("phase"):
        return True
    if (old.get("stream") or {}).get("tradingSafe") != (new.get("stream") or {}).get("tradingSafe"):
        return True
    if (old.get("emergencyStop") or {}) != (new.get("emergencyStop") or {}):
        return True
    if old.get("lastHandledReconcileAt") != new.get("lastHandledReconcileAt"):
        return True
    before = {c.get("type"): c.get("status") for c in old.get("conditions") or []}
    after = {c.get("type"): c.get("status") for c in new.get("conditions") or []}
    return before != after


def _kinds(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v)

