"""Stale-order cleanup planning and purge (pure).

Only OWNED orders (client order id starting with the owned prefix, or the triggered child of an
owned algo order) are ever candidates for a cancel; foreign (manual, other bots') orders never are.
PROTECTIVE orders (stop-loss / take-profit: conditional, reduce-only, close-position) are never
candidates unless ``include_protective``: cancelling one leaves a live position unprotected. An order's age is counted from its
creation time on the exchange; an order whose age is unknown (no creation or update time) is
never judged stale. The outcome of a cancel is never assumed:

- the exchange returns the cancelled order -> applied;
- OrderNotFound -> the order is queried for its final state (it may have filled);
- UnknownOutcome -> the order is flagged and queried before anything else next run;
- any other error -> nothing changes, the next run tries again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from tradewarden.domain import Order, OrderNotFound, OrderState, UnknownOutcome, is_owned

from .config import AccountConfig, Discrepancy, Outcome
from .ledger import SOURCE_CANCEL, Ledger, order_label, supersedes
from .reconcile import Correction, Plan, fmt_order, same_order


@dataclass(slots=True)
class StalePlan:
    rechecks: list[Order] = field(default_factory=list)   # unknown cancel outcomes: query first
    stale: list[Order] = field(default_factory=list)      # owned, active, older than the timeout
    deferred: int = 0


def order_age_ms(order: Order, now_ms: int) -> int | None:
    born = order.created_ms or order.updated_ms
    return None if born <= 0 else now_ms - born


def plan_stale(ledger: Ledger, config: AccountConfig, now_ms: int) -> StalePlan:
    plan = StalePlan()
    timeout_ms = config.stale_timeout_s * 1000
    budget = config.max_requests_per_run
    prefix = config.owned_prefix
    scope = set(config.symbols)
    for entry in ledger.orders.values():
        order = entry.order
        if not order.state.active or not (is_owned(order.client_order_id, prefix) or ledger.owns(order)):
            continue
        if order.symbol not in scope:
            continue                 # a symbol removed from spec.symbols: reconciliation asks once, never cancels
        if entry.recheck:
            plan.rechecks.append(order)
            continue
        if order.protective and not config.include_protective:
            continue
        age = order_age_ms(order, now_ms)
        if age is not None and age > timeout_ms:
            if budget > 0:
                plan.stale.append(order)
                budget -= 1
            else:
                plan.deferred += 1
    plan.stale.sort(key=lambda o: o.created_ms or o.updated_ms)
    return plan


def report_only(orders: Iterable[Order], now_ms: int) -> list[Discrepancy]:
    """ObserveOnly: what Correct would have cancelled."""
    return [Discrepancy("stale", order_label(o), fmt_order(o), f"open for {order_age_ms(o, now_ms) // 1000}s",
                        "reported only (policy ObserveOnly: no cancel sent)", Outcome.REPORTED) for o in orders]


def resolve_cancel(ledger: Ledger, order: Order, outcome: "Order | BaseException | None") -> Plan:
    """What a cancel answer means for the ledger. ``None`` or OrderNotFound: the caller must
    query the final state (``needs_query``), never assume it."""
    plan = Plan()
    key = Ledger.order_id(order)
    entry = ledger.orders.get(key)
    local = entry.order if entry else order
    label = order_label(local)
    if isinstance(outcome, Order) and same_order(outcome, local) is None:
        outcome = None                       # not an answer about this order: query it
    if isinstance(outcome, Order):
        outcome = same_order(outcome, local)
        if supersedes(outcome, local):
            plan.corrections.append(Correction("order", key, outcome, SOURCE_CANCEL))
        plan.discrepancies.append(Discrepancy("stale", label, fmt_order(local), fmt_order(outcome),
                                              f"cancelled (stale); exchange says {outcome.state.value}",
                                              Outcome.CANCELLED if outcome.state is OrderState.CANCELED
                                              else Outcome.CANCEL_ANSWERED))
    elif isinstance(outcome, UnknownOutcome):
        plan.corrections.append(Correction("flags", key, misses=entry.misses if entry else 0, recheck=True))
        plan.discrepancies.append(Discrepancy("stale", label, fmt_order(local), "cancel outcome unknown",
                                              f"cancel sent, outcome unknown ({outcome}); re-checked next run",
                                              Outcome.CANCEL_UNKNOWN))
    elif isinstance(outcome, BaseException) and not isinstance(outcome, OrderNotFound):
        plan.discrepancies.append(Discrepancy("stale", label, fmt_order(local), "cancel failed",
                                              f"cancel failed ({type(outcome).__name__}: {outcome}); "
                                              "tried again next run", Outcome.CANCEL_FAILED))
    return plan


def needs_query(outcome: "Order | BaseException | None") -> bool:
    return outcome is None or isinstance(outcome, OrderNotFound)


def purge(ledger: Ledger, config: AccountConfig, now_ms: int) -> int:
    """Finished orders older than the retention go (and the oldest beyond the hard bound)."""
    return ledger.purge(now_ms, config.retention_s * 1000, config.max_finished_orders)
