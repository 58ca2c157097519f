"""Reconciliation as pure functions: (ledger, snapshot, config, now_ms) -> a Plan.

Nothing here talks to an exchange, reads a clock or mutates the ledger: ``reconcile`` reads
the ledger and returns what differs (discrepancies), how the ledger must change
(corrections) and which targeted queries the runner must make (fetches); the runner sends
the queries and feeds the answers to ``resolve_fetches``, which is pure too. Every pass is
O(n) in orders + assets + symbols, with dict lookups only.

Policy and the ledger. The ledger is tradewarden's record of what the exchange says, not a
desired state, so after a run it mirrors the exchange under BOTH policies: a ledger left
diverging in ObserveOnly would re-report the same difference every run (hiding new ones),
publish wrong balances in the status, and could never heal (no one else feeds it).
The policies differ in what is done ON THE EXCHANGE: ``Correct`` cancels stale owned orders,
``ObserveOnly`` never sends a write (it reports what Correct would have done). Every
discrepancy is reported under both policies; its ``action`` says what happened.

Never inferred: an active order absent from the open-orders list is queried by id; it is
only declared ``lost`` after the exchange answered "not found" ``missing_retries + 1`` runs
in a row (a failed query counts nothing). Never overwritten by older news: a REST value
whose exchange update time is older than the ledger's (the stream raced ahead) is left
alone, and an order with activity after the snapshot (minus a grace) is not "missing".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Mapping

from tradewarden.domain import (ZERO, Balance, GatewayError, Order, OrderNotFound, OrderState, Position,
                                Snapshot)

from .config import AccountConfig, Discrepancy, Outcome
from .ledger import (SOURCE_FETCH, SOURCE_LOCAL, SOURCE_REST, SOURCE_STREAM, Ledger, OrderKey, order_label,
                     replace_order, supersedes)


@dataclass(frozen=True, slots=True)
class Correction:
    """One change to the ledger. ``op``: order (set, with flags) | flags | drop (leave tracking) | fill (record
    one, under its order's key) | cursor (a symbol's trade-history cursor) | balance | position.
    ``key``: an ``OrderKey`` for order and flags, the asset or symbol otherwise."""
    op: str
    key: Any
    value: Any = None
    source: str = SOURCE_REST
    misses: int = 0
    recheck: bool = False


@dataclass(slots=True)
class Plan:
    discrepancies: list[Discrepancy] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)
    adopted: list[Order] = field(default_factory=list)     # first listing: known from now on, not discrepancies
    fetches: list[Order] = field(default_factory=list)     # targeted queries to send now
    unscoped: list[Order] = field(default_factory=list)    # active, on a symbol no longer configured: ask once
    deferred: list[Order] = field(default_factory=list)    # over the per-run bound: next run
    stale_sections: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)   # section -> error text
    recent: int = 0      # changes too recent to judge under a live stream: the next run decides

    @property
    def complete(self) -> bool:
        return not self.stale_sections


# ---- formatting (values are reported as strings: exact decimals, JSON-able) -----------------

def fmt_balance(b: Balance | None) -> str:
    return "free=0 locked=0" if b is None else f"free={b.free} locked={b.locked}"


def fmt_order(o: Order | None) -> str:
    return "absent" if o is None else f"{o.state.value} filled={o.filled}/{o.amount}"


def fmt_position(p: Position | None) -> str:
    return "0" if p is None else str(p.amount)


def differs(a: Decimal, b: Decimal, tolerance: Decimal, dust: Decimal) -> bool:
    """Outside tolerance: more than the dust floor AND more than ``tolerance`` relative to the
    larger magnitude."""
    diff = abs(a - b)
    if diff <= dust:
        return False
    return diff > tolerance * max(abs(a), abs(b))


def apply_corrections(ledger: Ledger, corrections: Iterable[Correction], now_ms: int) -> None:
    for c in corrections:
        if c.op == "order":
            ledger.put_order(c.value, c.source, now_ms, misses=c.misses, recheck=c.recheck, key=c.key)
        elif c.op == "flags":
            ledger.set_order_flags(c.key, misses=c.misses, recheck=c.recheck, now_ms=now_ms)
        elif c.op == "drop":
            ledger.orders.pop(c.key, None)
            ledger.fills.pop(c.key, None)
        elif c.op == "fill":
            ledger.add_fill(c.value)
        elif c.op == "cursor":
            ledger.trade_cursors[c.key] = c.value
        elif c.op == "suspect":
            if c.value:
                ledger.suspects[c.key] = c.value
            else:
                ledger.suspects.pop(c.key, None)
        elif c.op == "balance":
            ledger.put_balance(c.value, c.key, c.source, now_ms)
        elif c.op == "position":
            ledger.put_position(c.value, c.key, c.source, now_ms)
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown correction {c.op!r}")


# ---- the run ---------------------------------------------------------------------------------

def reconcile(ledger: Ledger, snapshot: Snapshot, config: AccountConfig, now_ms: int, *,
              stream_live: bool = False, own_cancels: bool = False) -> Plan:
    """Compare every section that came back; keep (and name) the ones that did not. ``stream_live``: a
    user-data stream is delivering events, so an order change newer than the snapshot minus the grace may
    have its event on the way: it is judged by the next run, not reported now. ``own_cancels``: the run
    follows cancels tradewarden sent (the emergency stop), which move balances from locked to free and
    leave every total as it was: balances are compared by total, so those moves are corrected silently
    and any real change of a total is still reported."""
    plan = Plan()
    baseline = ledger.synced_ms == 0   # a never-synced ledger has no belief about balances/positions
    balances_ok = snapshot.balances.ok and snapshot.balances.value is not None
    if balances_ok:
        _balances(ledger, snapshot.balances.value, snapshot.taken_ms, config, baseline, plan, stream_live,
                  totals_only=config.futures or own_cancels)
    else:
        _stale(plan, "balances", snapshot.balances.error)
    if config.futures:
        if snapshot.positions.ok and snapshot.positions.value is not None:
            exchange = {p.key: p for p in snapshot.positions.value}
            _positions(ledger, exchange, ledger.positions.keys() | exchange.keys(), snapshot.taken_ms,
                       config, baseline, plan, stream_live)
        else:
            _stale(plan, "positions", snapshot.positions.error)
    # Spot: no positions. A spot "position" is the base asset's holding, i.e. its balance, compared and
    # reported above once per asset; deriving one per symbol reported one BTC change once per BTC symbol.
    if snapshot.open_orders.ok and snapshot.open_orders.value is not None:
        _orders(ledger, snapshot.open_orders.value, snapshot.taken_ms, now_ms, config, plan, stream_live)
    else:
        _stale(plan, "orders", snapshot.open_orders.error)
    return plan


def _stale(plan: Plan, section: str, error: GatewayError | None) -> None:
    plan.stale_sections.append(section)
    plan.errors[section] = f"{type(error).__name__}: {error}" if error else "no data"


def _defer(ledger: Ledger, plan: Plan, entity: tuple[str, str], seen_ms: int, local_ms: int) -> bool:
    """The one rule for a balance or position mismatch that may be an event still on its way, when the venue
    gives no time that settles it (a balance changed just now, a position gone from the listing): the first
    time it is remembered (a ``suspect`` correction: no change, no report) and the next run judges it, unless
    the stream updated the entity since it was remembered (then it is remembered afresh). True: deferred."""
    first = ledger.suspects.get(entity)
    if first is not None and local_ms < first:
        return False
    plan.corrections.append(Correction("suspect", entity, seen_ms))
    plan.recent += 1
    return True


def _forget_judged(ledger: Ledger, plan: Plan, section: str, kept: set[tuple[str, str]]) -> None:
    for entity in [e for e in ledger.suspects if e[0] == section and e not in kept]:
        plan.corrections.append(Correction("suspect", entity, 0))    # judged (or explained) this run


def _balances(ledger: Ledger, exchange: Mapping[str, Balance], taken_ms: int, config: AccountConfig,
              baseline: bool, plan: Plan, stream_live: bool = False, totals_only: bool = False) -> None:
    """With a live stream, a mismatch whose venue value is newer than the snapshot minus the grace may be an
    event still on its way: ``_defer`` decides. ``totals_only``: compare free + locked, not each (USD-M, whose
    user-data events carry only the wallet balance while REST splits it into available and margin; and the
    run after tradewarden's own cancels)."""
    tol, dust = config.balance_tolerance, config.dust
    horizon = taken_ms - int(config.missing_grace_s * 1000)
    kept: set[tuple[str, str]] = set()
    local_entries = ledger.balances
    for asset in local_entries.keys() | exchange.keys():
        entry = local_entries.get(asset)
        local = entry.balance if entry else None
        ex = exchange.get(asset)
        if ex is not None and ex.free == ZERO and ex.locked == ZERO:
            ex = None                                   # zero = absent
        rest_ms = ex.updated_ms if ex is not None and ex.updated_ms else taken_ms
        if local is not None and local.updated_ms > rest_ms:
            continue                                    # the stream told us something newer
        if local == ex:
            continue
        lf, ll = (local.free, local.locked) if local else (ZERO, ZERO)
        ef, el = (ex.free, ex.locked) if ex else (ZERO, ZERO)
        value = None if ex is None else Balance(asset, ex.free, ex.locked, rest_ms)
        if value is not None and local is not None and value == local:
            continue
        if totals_only:
            mismatch = differs(lf + ll, ef + el, tol, dust)
        else:
            mismatch = differs(lf, ef, tol, dust) or differs(ll, el, tol, dust)
        entity = ("balance", asset)
        if (not baseline and mismatch and stream_live and rest_ms > horizon
                and _defer(ledger, plan, entity, rest_ms, local.updated_ms if local else 0)):
            kept.add(entity)                            # not corrected either: the event may bring it
            continue
        plan.corrections.append(Correction("balance", asset, value))
        if not baseline and mismatch:
            plan.discrepancies.append(Discrepancy(
                "balance", asset, fmt_balance(local), fmt_balance(ex),
                "ledger set to the exchange's value" + (" (asset gone from the exchange)" if ex is None else ""),
                Outcome.CORRECTED))
    _forget_judged(ledger, plan, "balance", kept)


def _positions(ledger: Ledger, exchange: Mapping[str, Position], keys: Iterable[str], taken_ms: int,
               config: AccountConfig, baseline: bool, plan: Plan, stream_live: bool = False) -> None:
    """Positions by key: the symbol (one-way) or (symbol, side) for a hedge-mode leg (``domain.position_key``):
    a LONG and a SHORT leg of one symbol are two positions, never netted (usdm-facts.md B2).

    With a live stream, a leg the venue moved within the grace is judged by the next run (its updateTime says
    so); a leg gone from the listing has no time at all (v3 positionRisk "only returns symbols that the user
    has positions or open orders in", usdm-facts.md B), and it may have closed just before the listing was
    read, however long after the snapshot began that was: ``_defer`` decides."""
    tol, dust = config.balance_tolerance, config.dust
    kept: set[tuple[str, str]] = set()
    for key in keys:
        entry = ledger.positions.get(key)
        local = entry.position if entry else None
        ex = exchange.get(key)
        if ex is not None and ex.amount == ZERO:
            ex = None
        rest_ms = ex.updated_ms if ex is not None and ex.updated_ms else taken_ms
        if local is not None and local.updated_ms > rest_ms:
            continue
        if (stream_live and not baseline and ex is not None and ex.updated_ms
                and ex.updated_ms > taken_ms - int(config.missing_grace_s * 1000)
                and (local is None or local.updated_ms < ex.updated_ms)):
            plan.recent += 1
            continue      # the venue moved this leg just now: its ACCOUNT_UPDATE may be on its way; next run
        value = None if ex is None else Position(ex.symbol, ex.amount, ex.entry_price, rest_ms, ex.side)
        if value == local:
            continue
        la = local.amount if local else ZERO
        ea = ex.amount if ex else ZERO
        mismatch = not baseline and differs(la, ea, tol, dust)
        entity = ("position", key)
        if (mismatch and stream_live and ex is None and local is not None
                and _defer(ledger, plan, entity, taken_ms, local.updated_ms)):
            kept.add(entity)
            continue
        plan.corrections.append(Correction("position", key, value))
        if mismatch:
            plan.discrepancies.append(Discrepancy(
                "position", key, fmt_position(local), fmt_position(ex), "ledger set to the exchange's value",
                Outcome.CORRECTED))
    _forget_judged(ledger, plan, "position", kept)


def _orders(ledger: Ledger, open_orders: Iterable[Order], taken_ms: int, now_ms: int, config: AccountConfig,
            plan: Plan, stream_live: bool = False) -> None:
    listed: dict[OrderKey, Order] = {}
    for o in open_orders:
        listed[Ledger.order_id(o)] = o
    # Adoption, not discrepancy: on the first listing the ledger has ever seen (a new account, or no
    # saved ledger) every order is pre-existing, so nothing about it can differ from a belief. The
    # same holds after a restore from a truncated dump: unknown listed orders are most likely ones
    # the dump left out. (The runner sets ``orders_ms`` and clears ``truncated`` after the run.)
    adopting = not ledger.knows_orders or ledger.truncated > 0
    local_orders = ledger.orders
    grace_ms = int(config.missing_grace_s * 1000)
    horizon = taken_ms - grace_ms        # the venue's clock, as the order's own times
    local_horizon = now_ms - grace_ms    # ours, as the ledger's changed_ms
    for key, ex in listed.items():
        entry = local_orders.get(key)
        if entry is None:
            if not adopting and stream_live and ex.updated_ms > horizon:
                plan.recent += 1
                continue                 # too recent to judge: its event may be on its way; next run decides
            ex = ledger.link_child(ex)
            plan.corrections.append(Correction("order", key, ex))
            if ex.parent_id:
                continue                 # a known algo order's triggered child: not an orphan (usdm-facts D5)
            if adopting:
                plan.adopted.append(ex)
            else:
                plan.discrepancies.append(Discrepancy(
                    "orphan", order_label(ex), "absent", fmt_order(ex),
                    "adopted: " + ("owned" if ledger.is_owned(ex.client_order_id) else "foreign")
                    + f" order {ex.exchange_order_id} on {ex.symbol}", Outcome.ADOPTED))
            continue
        local = entry.order
        if local.parent_id and not ex.parent_id:
            ex = replace_order(ex, parent_id=local.parent_id)
        if local.child_id and not ex.child_id:
            ex = replace_order(ex, child_id=local.child_id)
        if not supersedes(ex, local):
            continue                     # the ledger holds newer news (stream raced ahead)
        if local == ex:
            if entry.misses or entry.recheck:
                plan.corrections.append(Correction("flags", key))
            continue
        if stream_live and entry.source == SOURCE_STREAM and ex.updated_ms > horizon:
            plan.recent += 1
            continue                     # the stream follows it and the change is too recent to judge
        plan.corrections.append(Correction("order", key, ex))
        if local.filled != ex.filled or local.state is not ex.state:
            plan.discrepancies.append(Discrepancy(
                "fill", order_label(local), fmt_order(local), fmt_order(ex),
                f"ledger set to the exchange's order {ex.exchange_order_id} on {ex.symbol}", Outcome.CORRECTED))
    scope = set(config.symbols)
    budget = config.max_requests_per_run
    for key, entry in local_orders.items():
        local = entry.order
        if not local.state.active or key in listed:
            continue
        if local.symbol not in scope:
            # its symbol left spec.symbols: its final state is asked once, then it leaves tracking
            # (resolve_unscoped); never a discrepancy, never a stale cancel
            if budget > 0:
                plan.unscoped.append(local)
                budget -= 1
            continue
        if local.created_ms > horizon or local.updated_ms > horizon or (
                entry.source == SOURCE_STREAM and entry.changed_ms > local_horizon):
            continue                     # too recent to be missing: may not be listed yet
        if budget > 0:
            plan.fetches.append(local)
            budget -= 1
        else:
            plan.deferred.append(local)
            plan.discrepancies.append(Discrepancy(
                "missing", order_label(local), fmt_order(local), "not in open orders",
                "query deferred to the next run (per-run request bound)", Outcome.PENDING))


def same_order(answer: Order, local: Order) -> Order | None:
    """The exchange's answer about ``local``, under ``local``'s client order id. Binance answers a
    cancel with the cancel request's own client id (the order's goes to origClientOrderId), so the
    exchange order id decides; an answer about a different exchange order is None."""
    if answer.exchange_order_id and local.exchange_order_id and answer.exchange_order_id != local.exchange_order_id:
        return None
    if answer.client_order_id != local.client_order_id:
        answer = replace_order(answer, client_order_id=local.client_order_id)
    return answer


def resolve_unscoped(ledger: Ledger, results: Mapping[OrderKey, "Order | BaseException"]) -> Plan:
    """The one answer about each order whose symbol left the configuration: a final state is applied (the
    order then ages out with the retention); anything else (still open, not found, a failed query) drops
    it from the ledger. Either way it leaves active tracking, and nothing is reported."""
    plan = Plan()
    for key, result in results.items():
        entry = ledger.orders.get(key)
        if entry is None:
            continue
        answer = same_order(result, entry.order) if isinstance(result, Order) else None
        if answer is not None and answer.state.finished and supersedes(answer, entry.order):
            plan.corrections.append(Correction("order", key, answer, SOURCE_FETCH))
        else:
            plan.corrections.append(Correction("drop", key))
    return plan


def resolve_fetches(ledger: Ledger, results: Mapping[OrderKey, "Order | BaseException"], config: AccountConfig,
                    context: str = "missing", expected: frozenset[OrderState] = frozenset(), *,
                    now_ms: int, recent_after_ms: int | None = None) -> Plan:
    """Apply the exchange's answers to targeted queries of orders the list did not show.

    Order -> its state is applied (finished or, rarely, still open). OrderNotFound -> one more
    miss; declared lost after ``missing_retries`` further misses AND at least ``lost_after_s`` after the
    first not-found answer of the streak (several answers can come within seconds). Any other error -> nothing is
    counted, the order stays pending and is queried again next run. Answers in an ``expected``
    state (e.g. cancelled, right after an emergency stop) are applied without a discrepancy."""
    plan = Plan()
    retries = config.missing_retries
    for key, result in results.items():
        entry = ledger.orders.get(key)
        if entry is None:
            continue
        local = entry.order
        label = order_label(local)
        if isinstance(result, Order):
            result = same_order(result, local)
            if result is None:
                plan.discrepancies.append(Discrepancy(
                    context, label, fmt_order(local), "answer for another order",
                    "kept pending (the exchange answered with another order id); queried again next run",
                    Outcome.PENDING))
                continue
            if not supersedes(result, local):
                continue                 # a stream event newer than the answer already arrived
            if recent_after_ms is not None and result.updated_ms > recent_after_ms:
                # changed on the venue just now with the stream live: its event may be on its way. Not applied
                # (applied silently, a lost event would never be reported): the next run asks again, and
                # reports it unless the event came meanwhile
                plan.recent += 1
                continue
            plan.corrections.append(Correction("order", key, result, SOURCE_FETCH))
            if result.state in expected:
                continue
            if result.state.active:
                action = "queried: still open on the exchange (absent from its open-orders list); ledger updated"
            else:
                action = f"queried: final state {result.state.value}; ledger updated"
            plan.discrepancies.append(Discrepancy(context, label, fmt_order(local), fmt_order(result), action,
                                                  Outcome.CORRECTED))
        elif isinstance(result, OrderNotFound):
            misses = entry.misses + 1
            first = entry.first_miss_ms or now_ms
            span_ms = now_ms - first
            if misses > retries and span_ms >= config.lost_after_s * 1000:
                lost = replace_order(local, state=OrderState.LOST)
                plan.corrections.append(Correction("order", key, lost, SOURCE_LOCAL, misses=misses))
                plan.discrepancies.append(Discrepancy(
                    "lost", label, fmt_order(local), "unknown to the exchange",
                    f"declared lost after {misses} not-found queries (kept in the ledger, reported)",
                    Outcome.DECLARED_LOST))
            else:
                plan.corrections.append(Correction("flags", key, misses=misses, recheck=entry.recheck))
                plan.discrepancies.append(Discrepancy(
                    context, label, fmt_order(local), "unknown to the exchange",
                    f"not found ({misses}/{retries + 1}, for {span_ms // 1000}s of {config.lost_after_s:g}s); "
                    "queried again next run", Outcome.PENDING))
        else:
            plan.discrepancies.append(Discrepancy(
                context, label, fmt_order(local), "query failed",
                f"kept pending ({type(result).__name__}: {result}); queried again next run", Outcome.PENDING))
    return plan
