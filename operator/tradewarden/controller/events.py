"""Kubernetes Events for what a run found and did, aggregated so that a run with a thousand
discrepancies posts a bounded number of Events (one per kind, plus corrections and stale cancels),
each naming the first few entities with their local and exchange values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from tradewarden.domain import Order, is_owned

from ..core.config import Discrepancy, Outcome

# One reason per discrepancy kind (CamelCase, as Kubernetes wants).
KIND_REASONS = {
    "balance": "BalanceMismatch",
    "fill": "MissedFill",
    "missing": "OrderMissing",
    "lost": "OrderLost",
    "orphan": "OrphanOrderAdopted",
    "position": "PositionMismatch",
    "stale": "StaleOrder",
    "unseen": "UnseenOrder",
}
KIND_WARNING = {"balance", "lost", "position", "missing"}
MAX_ENTITIES = 5
MAX_MESSAGE = 1000


@dataclass(frozen=True)
class EventSpec:
    type: str       # Normal | Warning
    reason: str
    message: str


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    text = str(v)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(d: Discrepancy) -> str:
    """'USDT local=10000 exchange=10500 -> corrected' for one discrepancy."""
    out = f"{d.entity} local={_fmt(d.local)} exchange={_fmt(d.exchange)}"
    if d.action:
        out += f" -> {d.action}"
    return out


def _summary(title: str, items: Sequence[Any]) -> str:
    head = "; ".join(describe(d) for d in items[:MAX_ENTITIES])
    more = f" (+{len(items) - MAX_ENTITIES} more)" if len(items) > MAX_ENTITIES else ""
    msg = f"{title}: {head}{more}"
    return msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 3] + "..."


def is_correction(d: Discrepancy) -> bool:
    """The ledger now holds the exchange's value (corrected, adopted, declared lost)."""
    return d.outcome.corrects_ledger


def is_cancel(d: Discrepancy) -> bool:
    """A stale order the exchange confirmed cancelled (not "cancel sent, the order filled first")."""
    return d.outcome is Outcome.CANCELLED


def run_events(discrepancies: Iterable[Discrepancy], *, trigger: str = "",
               observe_only: bool = False) -> list[EventSpec]:
    """At most len(KIND_REASONS) + 2 Events for one run."""
    by_kind: dict[str, list[Any]] = {}
    for d in discrepancies:
        by_kind.setdefault(str(d.kind), []).append(d)
    out: list[EventSpec] = []
    where = f" ({trigger} run)" if trigger else ""
    for kind, items in sorted(by_kind.items()):
        reason = KIND_REASONS.get(kind, "Discrepancy")
        type_ = "Warning" if kind in KIND_WARNING else "Normal"
        noun = "discrepancy" if len(items) == 1 else "discrepancies"
        out.append(EventSpec(type_, reason, _summary(f"{len(items)} {kind} {noun}{where}", items)))
    all_items = [d for items in by_kind.values() for d in items]
    stale_cancels = [d for d in all_items if d.kind == "stale" and is_cancel(d)]
    corrections = [d for d in all_items if is_correction(d)]
    if stale_cancels:
        out.append(EventSpec("Normal", "StaleOrderCancelled",
                             _summary(f"{len(stale_cancels)} stale owned orders cancelled", stale_cancels)))
    if corrections and not observe_only:
        out.append(EventSpec("Normal", "Corrected",
                             _summary(f"{len(corrections)} local entries corrected to the exchange's state",
                                      corrections)))
    return out


def adoption_event(orders: Sequence[Order], owned_prefix: str, *, trigger: str = "") -> EventSpec | None:
    """One Normal Event for the orders a ledger that had never listed orders took in (a new account, no
    saved ledger): pre-existing orders, not discrepancies."""
    if not orders:
        return None
    owned = sum(1 for o in orders if is_owned(o.client_order_id, owned_prefix))
    where = f" ({trigger} run)" if trigger else ""
    head = "; ".join(f"{o.client_order_id or '#' + o.exchange_order_id} {o.symbol} {o.state.value} "
                     f"filled={o.filled}/{o.amount}" for o in orders[:MAX_ENTITIES])
    more = f" (+{len(orders) - MAX_ENTITIES} more)" if len(orders) > MAX_ENTITIES else ""
    msg = (f"{len(orders)} pre-existing open orders adopted{where} ({owned} owned, {len(orders) - owned} foreign): "
           f"{head}{more}")
    return EventSpec("Normal", "OrdersAdopted", msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 3] + "...")
