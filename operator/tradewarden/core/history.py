"""Closing a gap through the venue's history (pure).

After a window in which user-data events may have been lost (a stream gap, an operator restart, a
balance that moved with no event to explain it), the open-orders snapshot cannot show an order that was
born and finished inside the window: it shows up only as a balance change, or not at all. The venue's
order history (spot/USD-M ``allOrders``) and trade history (spot ``myTrades``, USD-M ``userTrades``) do.

The service reads them per configured symbol, page by page, with these rules (the venue's, cited):

- order history: the first page by creation time from the gap's start (``startTime``, with ``endTime``:
  spot rest-api.md "All orders (USER_DATA)": "The time between startTime and endTime can't be longer than
  24 hours"; USD-M usdm-facts.md C1: under 7 days); a full page is followed by ``orderId`` = the last
  id + 1 ("If orderId is set, it will get orders >= that orderId");
- trade history: from the symbol's trade cursor (``fromId`` = the last trade id read + 1: "If fromId is
  set, it will get trades >= that fromId"), else by time from the gap's start; ``fromId`` is never
  combined with a time range (rest-api.md "Account trade list": the supported combinations; usdm-facts.md
  E: "fromId cannot be combined with start/end");
- trade history is read only when the order history shows executions the ledger has no fills for: a gap
  with no fill costs the order history alone (spot 20 weight per symbol, USD-M 5).

``resolve_history`` turns what was read into a Plan: orders unknown to the ledger and finished are
reported as ``unseen`` (a kind of their own) and recorded; known orders are brought up to date silently
(the snapshot's rules report their changes in the same run); fills are recorded per order; the symbol's
trade cursor moves on.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable, Sequence

from tradewarden.domain import Fill, Order

from .config import AccountConfig, Discrepancy, Outcome
from .ledger import SOURCE_HISTORY, Ledger, OrderKey, order_key, order_label, supersedes
from .reconcile import Correction, Plan, fmt_order

PAGE = 1000                                    # the venues' maximum limit (both endpoints, both venues)
SPOT_WINDOW_MS = 24 * 3600 * 1000              # rest-api.md: startTime..endTime at most 24 hours
USDM_WINDOW_MS = 7 * 24 * 3600 * 1000 - 1000   # usdm-facts.md C1/E: under 7 days
# spot allOrders 20, myTrades 20 (without orderId); USD-M allOrders 5, userTrades 5
HISTORY_WEIGHTS = {False: (20, 20), True: (5, 5)}


@dataclass(frozen=True, slots=True)
class Window:
    since_ms: int
    until_ms: int


def windows(since_ms: int, now_ms: int, futures: bool) -> list[Window]:
    """The time windows covering [since_ms, now_ms], each within the venue's maximum span."""
    span = USDM_WINDOW_MS if futures else SPOT_WINDOW_MS
    out: list[Window] = []
    start = since_ms
    while True:
        end = min(start + span, now_ms)
        out.append(Window(start, end))
        if end >= now_ms:
            return out
        start = end + 1


def next_order_page(page: Sequence[Order]) -> str:
    """The ``orderId`` of the next page after a full one ('' when the page was the last)."""
    if len(page) < PAGE:
        return ""
    return str(max(int(o.exchange_order_id) for o in page if o.exchange_order_id.isdigit()) + 1)


def next_trade_page(page: Sequence[Fill]) -> str:
    if len(page) < PAGE:
        return ""
    return str(max(int(f.trade_id) for f in page if f.trade_id.isdigit()) + 1)


def needs_trades(ledger: Ledger, orders: Iterable[Order]) -> bool:
    """Trade history is worth its weight only when an order of the window executed more than the
    ledger holds fills for."""
    for o in orders:
        if o.filled <= 0:
            continue
        recorded = sum((f.amount for f in (ledger.fills.get(order_key(o)) or {}).values()), Decimal(0))
        if recorded < o.filled:
            return True
    return False


def resolve_history(ledger: Ledger, symbol: str, orders: Sequence[Order], fills: Sequence[Fill],
                    config: AccountConfig, horizon_ms: int, live_since_ms: int | None = None) -> Plan:
    """``horizon_ms``: the venue time before which the stream had time to deliver an order's events. An
    unknown order that finished after it is not judged now (its events may be queued behind this run): it
    goes to ``plan.deferred``, the caller keeps the gap open from it, and the trade cursor stays before its
    fills, so the next read sees it again (known by then, or reported).

    ``live_since_ms``: the stream is live and has been since then. An unknown order that finished while it
    was live may have its events still queued however old it is (an event consumer behind under load): the
    first read remembers it (a ``suspect``) and defers it as above; the next read reports it if it is still
    unknown. One that finished before the connection came up is reported at once: no event of it can come."""
    plan = Plan()
    known: set[OrderKey] = set()
    deferred: set[OrderKey] = set()
    for o in orders:
        if o.symbol != symbol:
            continue
        key = order_key(o)
        entry = ledger.orders.get(key)
        suspect = ("unseen", key)
        if entry is None:
            if o.state.active:
                continue             # open now: the snapshot lists it (adopted or an orphan in this run)
            if o.updated_ms > horizon_ms:
                plan.deferred.append(o)
                deferred.add(key)
                continue
            if live_since_ms is not None and o.updated_ms > live_since_ms and suspect not in ledger.suspects:
                plan.corrections.append(Correction("suspect", suspect, o.updated_ms or 1))
                plan.deferred.append(o)
                deferred.add(key)
                continue
            if suspect in ledger.suspects:
                plan.corrections.append(Correction("suspect", suspect, 0))
            o = ledger.link_child(o)
            plan.corrections.append(Correction("order", key, o, SOURCE_HISTORY))
            known.add(key)
            if o.parent_id:
                continue             # a known algo order's triggered child: its parent reports it (usdm-facts D5)
            plan.discrepancies.append(Discrepancy(
                "unseen", order_label(o), "absent", fmt_order(o),
                f"order {o.exchange_order_id} on {o.symbol} born and finished inside a gap in the events "
                "(found in the order history); recorded with its fills", Outcome.CORRECTED))
            known.add(key)
            continue
        known.add(key)
        if suspect in ledger.suspects:
            plan.corrections.append(Correction("suspect", suspect, 0))      # its events came: explained
        if o != entry.order and supersedes(o, entry.order) and not entry.order.state.active:
            # finished both here and there: history completes it (executed quantity, final state)
            plan.corrections.append(Correction("order", key, o, SOURCE_HISTORY))
    last = ledger.trade_cursors.get(symbol, "")
    stop_before: int | None = None          # the first trade of a deferred order: the cursor stays before it
    for f in fills:
        if f.symbol != symbol:
            continue
        key = OrderKey(symbol, f.exchange_order_id)
        if key in deferred:
            if f.trade_id.isdigit():
                stop_before = int(f.trade_id) if stop_before is None else min(stop_before, int(f.trade_id))
            continue
        if key in known or key in ledger.orders:
            plan.corrections.append(Correction("fill", key, f))
        if f.trade_id.isdigit() and (not last or int(f.trade_id) > int(last)):
            last = f.trade_id
    if stop_before is not None and last and int(last) >= stop_before:
        last = str(stop_before - 1)
    if last and last != ledger.trade_cursors.get(symbol, ""):
        plan.corrections.append(Correction("cursor", symbol, last))
    return plan
