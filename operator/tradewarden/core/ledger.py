"""The ledger: tradewarden's record of one account as the exchange last told it.

Orders by their real identity, ``OrderKey(symbol, exchange order id)``: a client order id is not an
identity (Binance accepts a client order id again once the earlier order has finished, rest-api.md
"New order (TRADE)" ``newClientOrderId``: "A unique id among open orders", and the same id can live
on two symbols); it stays the order's label and decides ownership (prefix). Balances by asset,
positions by (symbol, side) (``domain.position_key``: the bare symbol in one-way mode, "<symbol> LONG" /
"<symbol> SHORT" for hedge-mode legs). Every entry remembers
which source last changed it (``rest``, ``stream``, ``fetch``, ``cancel``, ``restore``) and
when (``changed_ms``, local time), besides the exchange's own update time carried by the
domain value (``updated_ms``). The ledger is a mirror of the exchange, not a desired state:
reconciliation brings it back to what the exchange says.

The ledger never looks at a clock: every mutating call takes ``now_ms``.

``dump()`` gives a compact, JSON-able, bounded form (it lives in the resource status, which
Kubernetes caps at ~1.5 MiB); ``Ledger.load()`` restores it and raises ``LedgerFormatError``
(a ``ValueError``) with a clear message on bad input, never half-loading.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Iterator, NamedTuple

from tradewarden.domain import (ZERO, Balance, Fill, Order, OrderState, Position, PositionSide, Side, is_owned,
                                position_key)

FORMAT_VERSION = 1
DEFAULT_DUMP_MAX_ORDERS = 5000
DEFAULT_DUMP_MAX_BALANCES = 1000
DEFAULT_DUMP_MAX_POSITIONS = 1000

SOURCE_REST = "rest"          # the periodic snapshot
SOURCE_STREAM = "stream"      # a user-data stream event
SOURCE_FETCH = "fetch"        # a targeted single-order query
SOURCE_CANCEL = "cancel"      # the exchange's answer to a cancel
SOURCE_LOCAL = "local"        # tradewarden's own judgement (declared lost)
SOURCE_HISTORY = "history"    # the venue's order history, read to close a gap


class OrderKey(NamedTuple):
    """An order's identity on its venue: (unified symbol, exchange order id). Algo (conditional)
    orders live in their own id space (the Algo Service's algoId): their id is prefixed ``algo:``;
    an order known without an exchange id (never seen from the venue) by ``client:<id>``."""
    symbol: str
    order_id: str

    def __str__(self) -> str:
        return f"{self.symbol}#{self.order_id}"


def order_key(order: Order) -> OrderKey:
    """The ledger key of an order (see ``OrderKey``)."""
    if order.exchange_order_id:
        oid = f"algo:{order.exchange_order_id}" if order.algo else order.exchange_order_id
    else:
        oid = f"client:{order.client_order_id}"
    return OrderKey(order.symbol, oid)


def order_label(order: Order) -> str:
    """How reports name an order: its client order id (what users and bots know), else its exchange id."""
    return order.client_order_id or f"#{order.exchange_order_id}"


class LedgerFormatError(ValueError):
    """A dumped ledger that cannot be restored (the caller should start from a fresh sync)."""


def observation_rank(order: Order) -> tuple[bool, Decimal, int]:
    """Total order on observations of one order. What is monotonic on every venue decides before
    any clock does: a finished state beats an active one, more executed quantity beats less; only
    then the later exchange update time. (Update times come from several venue clocks: an event
    stamped by a clock that later stepped back must not keep a filled order "partially filled"
    forever - seen in benchmarks/soak.py.)"""
    return (order.state.finished, order.filled, order.updated_ms)


def supersedes(new: Order, old: Order) -> bool:
    """True when ``new`` may replace ``old``: it is not older by the exchange's clock.
    A ``lost`` order is tradewarden's judgement, not the exchange's: any exchange
    observation replaces it."""
    if old.state is OrderState.LOST and new.state is not OrderState.LOST:
        return True
    return observation_rank(new) >= observation_rank(old)


@dataclass(slots=True)
class OrderEntry:
    order: Order
    source: str
    changed_ms: int
    misses: int = 0            # consecutive runs in which neither list nor query found it
    recheck: bool = False      # a cancel of it had an unknown outcome: query before acting again
    first_miss_ms: int = 0     # local time of the first not-found of the current streak (0: none)


@dataclass(slots=True)
class BalanceEntry:
    balance: Balance
    source: str
    changed_ms: int


@dataclass(slots=True)
class PositionEntry:
    position: Position
    source: str
    changed_ms: int


class Ledger:
    """Local state of one account. Plain dicts: every lookup is O(1), every pass O(n)."""

    __slots__ = ("orders", "balances", "positions", "owned_prefix", "synced_ms", "truncated", "orders_ms",
                 "fills", "trade_cursors", "gap_since_ms", "suspects", "children")

    def __init__(self, owned_prefix: str = "tw-") -> None:
        self.orders: dict[OrderKey, OrderEntry] = {}
        self.balances: dict[str, BalanceEntry] = {}
        self.positions: dict[str, PositionEntry] = {}
        self.owned_prefix = owned_prefix
        self.synced_ms = 0          # end of the last run that reconciled every section (0: never)
        self.truncated = 0          # orders left out of the dump this ledger was restored from
        # end of the last run whose open-orders section came back (0: never). Until then the
        # ledger has no belief about orders: the first listing is adopted, not reported as orphans.
        self.orders_ms = 0
        # fills per order (trade id -> Fill), recorded from trade history; they go with their order
        self.fills: dict[OrderKey, dict[str, Fill]] = {}
        # per symbol: the last trade id read from trade history (the next read starts after it: fromId)
        self.trade_cursors: dict[str, str] = {}
        # the start of a window in which events may have been missed and history not yet read (0: none)
        self.gap_since_ms = 0
        # (section, key) -> time of a balance or position mismatch seen too recently to judge (reported
        # next run unless the stream updated the entity since), or ("unseen", OrderKey) of an unknown order
        # history showed while the stream was live (reported by the next read unless its events came);
        # transient, not dumped
        self.suspects: dict[tuple[str, Any], int] = {}
        # USD-M: (symbol, child order id) -> the key of the algo order it is the triggered child of
        self.children: dict[tuple[str, str], OrderKey] = {}

    # ---- reading -------------------------------------------------------------------------

    def is_owned(self, client_order_id: str) -> bool:
        return is_owned(client_order_id, self.owned_prefix)

    @property
    def knows_orders(self) -> bool:
        """The ledger has a belief about the account's open orders: a run listed them before (or a
        full sync did). Until then, listed orders are adopted, not orphans."""
        return self.orders_ms > 0 or self.synced_ms > 0

    def entry(self, ref: OrderKey | str) -> OrderEntry | None:
        """The entry under ``ref``: an ``OrderKey``, or a client order id (a label, not an identity:
        the active order with that id if there is one, else the latest one; O(n))."""
        if isinstance(ref, OrderKey):
            return self.orders.get(ref)
        best: OrderEntry | None = None
        for entry in self.orders.values():
            o = entry.order
            if o.client_order_id != ref:
                continue
            if best is None or (o.state.active, o.created_ms, o.updated_ms) > (
                    best.order.state.active, best.order.created_ms, best.order.updated_ms):
                best = entry
        return best

    def order(self, ref: OrderKey | str) -> Order | None:
        entry = self.entry(ref)
        return entry.order if entry else None

    def active_orders(self) -> Iterator[Order]:
        for entry in self.orders.values():
            if entry.order.state.active:
                yield entry.order

    def fills_of(self, ref: "OrderKey | str") -> list[Fill]:
        """The recorded fills of an order, oldest first."""
        key = ref if isinstance(ref, OrderKey) else (order_key(o) if (o := self.order(ref)) else None)
        return sorted((self.fills.get(key) or {}).values(), key=lambda f: (f.time_ms, f.trade_id)) if key else []

    def add_fill(self, fill: Fill) -> bool:
        """Record one fill of a known order (idempotent by trade id). False when its order is unknown."""
        key = OrderKey(fill.symbol, fill.exchange_order_id)
        if key not in self.orders:
            return False
        self.fills.setdefault(key, {})[fill.trade_id] = fill
        return True

    def note_gap(self, since_ms: int) -> None:
        """Events from ``since_ms`` on may have been missed: the next run reads history from there."""
        if since_ms > 0:
            self.gap_since_ms = min(self.gap_since_ms, since_ms) if self.gap_since_ms else since_ms

    def balance(self, asset: str) -> Balance | None:
        entry = self.balances.get(asset)
        return entry.balance if entry else None

    def position(self, symbol: str, side: PositionSide | str = PositionSide.BOTH) -> Position | None:
        entry = self.positions.get(position_key(symbol, side))
        return entry.position if entry else None

    def owns(self, order: Order) -> bool:
        """Owned by its client order id, or (a triggered algo order's child) by its parent's."""
        if self.is_owned(order.client_order_id):
            return True
        parent = self.algo_parent_of(order)
        return parent is not None and self.is_owned(parent.client_order_id)

    def algo_parent_of(self, child: Order) -> Order | None:
        """The algo order whose triggered child ``child`` is (by the parent's ``child_id``), if known."""
        if child.algo or not child.exchange_order_id:
            return None
        key = self.children.get((child.symbol, child.exchange_order_id))
        entry = self.orders.get(key) if key is not None else None
        return entry.order if entry is not None else None

    def link_child(self, order: Order) -> Order:
        """``order`` with its algo parent's id when it is a known parent's child (else unchanged)."""
        if order.parent_id or order.algo:
            return order
        parent = self.algo_parent_of(order)
        return order if parent is None else replace_order(order, parent_id=parent.exchange_order_id)

    def _index(self, key: OrderKey, order: Order) -> None:
        if order.algo and order.child_id:
            self.children[(order.symbol, order.child_id)] = key

    def balance_values(self) -> dict[str, Balance]:
        return {a: e.balance for a, e in self.balances.items()}

    def position_values(self) -> dict[str, Position]:
        return {s: e.position for s, e in self.positions.items()}

    def __repr__(self) -> str:
        active = sum(1 for _ in self.active_orders())
        return (f"Ledger(orders={len(self.orders)}, active={active}, balances={len(self.balances)}, "
                f"positions={len(self.positions)}, synced_ms={self.synced_ms})")

    # ---- writing -------------------------------------------------------------------------

    order_id = staticmethod(order_key)

    def put_order(self, order: Order, source: str, now_ms: int, *, misses: int = 0,
                  recheck: bool = False, key: OrderKey | None = None) -> None:
        """Set an order unconditionally (reconciliation decided). A not-found streak (``misses``) keeps
        the time it started."""
        key = key or self.order_id(order)
        prev = self.orders.get(key)
        first = (prev.first_miss_ms if prev is not None else 0) or now_ms if misses else 0
        self.orders[key] = OrderEntry(order, source, now_ms, misses, recheck, first)
        self._index(key, order)

    def upsert_order(self, order: Order, source: str, now_ms: int) -> bool:
        """Apply an observation unless the ledger already holds a newer one. Returns applied."""
        key = self.order_id(order)
        entry = self.orders.get(key)
        if entry is not None and not supersedes(order, entry.order):
            return False
        if entry is not None and entry.order.child_id and not order.child_id:
            order = replace_order(order, child_id=entry.order.child_id)   # the link is never forgotten
        self.orders[key] = OrderEntry(order, source, now_ms)
        self._index(key, order)
        return True

    def set_order_flags(self, key: OrderKey, *, misses: int | None = None, recheck: bool | None = None,
                        now_ms: int = 0) -> None:
        entry = self.orders.get(key)
        if entry is None:
            return
        if misses is not None:
            entry.misses = misses
            entry.first_miss_ms = 0 if misses == 0 else (entry.first_miss_ms or now_ms)
        if recheck is not None:
            entry.recheck = recheck

    def put_balance(self, balance: Balance | None, asset: str, source: str, now_ms: int) -> None:
        """Set or (None / zero) remove an asset's balance."""
        if balance is None or (balance.free == ZERO and balance.locked == ZERO):
            self.balances.pop(asset, None)
        else:
            self.balances[asset] = BalanceEntry(balance, source, now_ms)

    def upsert_balance(self, balance: Balance, source: str, now_ms: int) -> bool:
        entry = self.balances.get(balance.asset)
        if entry is not None and entry.balance.updated_ms > balance.updated_ms:
            return False
        self.put_balance(balance, balance.asset, source, now_ms)
        return True

    def put_position(self, position: Position | None, key: str, source: str, now_ms: int) -> None:
        """Set or (None / zero) remove the position under ``key`` (``position_key(symbol, side)``)."""
        if position is None or position.amount == ZERO:
            self.positions.pop(key, None)
        else:
            self.positions[key] = PositionEntry(position, source, now_ms)

    def upsert_position(self, position: Position, source: str, now_ms: int) -> bool:
        entry = self.positions.get(position.key)
        if entry is not None and entry.position.updated_ms > position.updated_ms:
            return False
        self.put_position(position, position.key, source, now_ms)
        return True

    def purge(self, now_ms: int, retention_ms: int, max_finished: int) -> int:
        """Drop finished orders whose last exchange update (else local change) is older than the
        retention, then the oldest finished ones beyond
        ``max_finished``, so memory stays bounded under any load. Returns how many went.
        A ``lost`` order is tradewarden's judgement, not a venue update: its retention counts from its
        declaration (the local change that declared it), so it is never purged in the run that declares it."""
        cutoff = now_ms - retention_ms
        finished: list[tuple[int, OrderKey]] = []
        doomed: list[OrderKey] = []
        for key, entry in self.orders.items():
            order = entry.order
            if order.state.active:
                continue
            if order.state is OrderState.LOST:
                last = entry.changed_ms                     # from its declaration
            else:
                last = order.updated_ms or entry.changed_ms     # age by the exchange's clock when known
            if last < cutoff:
                doomed.append(key)
            else:
                finished.append((last, key))
        if len(finished) > max_finished:
            finished.sort()
            doomed.extend(key for _, key in finished[: len(finished) - max_finished])
        for key in doomed:
            del self.orders[key]
            self.fills.pop(key, None)
        if doomed and self.children:
            self.children = {k: v for k, v in self.children.items() if v in self.orders}
        return len(doomed)

    # ---- persistence ---------------------------------------------------------------------

    def dump(self, max_orders: int = DEFAULT_DUMP_MAX_ORDERS) -> dict[str, Any]:
        """Compact JSON-able form, bounded. When there are more than ``max_orders`` orders the
        ones that matter most on restart are kept: orders being chased (misses, unknown cancel
        outcome) first, then active owned, active foreign, then finished newest first;
        ``truncated`` counts what was left out."""
        entries = list(self.orders.items())
        truncated = 0
        if len(entries) > max_orders:
            def rank(item: tuple[OrderKey, OrderEntry]) -> tuple[int, int]:
                _, e = item
                o = e.order
                if o.state.active and (e.misses or e.recheck):
                    tier = 0
                elif o.state.active:
                    tier = 1 if self.is_owned(o.client_order_id) else 2
                else:
                    tier = 3
                return (tier, -max(o.updated_ms, e.changed_ms))
            entries.sort(key=rank)
            truncated = len(entries) - max_orders
            entries = entries[:max_orders]
        balances = sorted(self.balances.items(), key=lambda kv: -(abs(kv[1].balance.total)))
        positions = sorted(self.positions.items(), key=lambda kv: -(abs(kv[1].position.amount)))
        return {
            "v": FORMAT_VERSION,
            "prefix": self.owned_prefix,
            "synced": self.synced_ms,
            "os": self.orders_ms,
            "truncated": truncated + max(0, len(balances) - DEFAULT_DUMP_MAX_BALANCES)
                         + max(0, len(positions) - DEFAULT_DUMP_MAX_POSITIONS),
            "o": [_order_row(e) for _, e in entries],
            # not-found streaks' start times (the "lost" rule needs a minimum span): [symbol, order id, ms]
            "m": [[k.symbol, k.order_id, e.first_miss_ms] for k, e in entries if e.first_miss_ms],
            # fills of the dumped orders: [symbol, order id, trade id, price, qty, fee, fee asset, time]
            "f": [[f.symbol, f.exchange_order_id, f.trade_id, str(f.price), str(f.amount), str(f.fee), f.fee_asset,
                   f.time_ms] for k, _ in entries for f in (self.fills.get(k) or {}).values()],
            "tc": dict(self.trade_cursors),
            "gap": self.gap_since_ms,
            "b": {a: [str(e.balance.free), str(e.balance.locked), e.balance.updated_ms, e.source, e.changed_ms]
                  for a, e in balances[:DEFAULT_DUMP_MAX_BALANCES]},
            "p": {s: [str(e.position.amount), str(e.position.entry_price), e.position.updated_ms, e.source,
                      e.changed_ms] + ([e.position.side.value] if e.position.side is not PositionSide.BOTH else [])
                  for s, e in positions[:DEFAULT_DUMP_MAX_POSITIONS]},
        }

    @classmethod
    def load(cls, data: Any, owned_prefix: str | None = None) -> "Ledger":
        """Restore a dump. ``owned_prefix`` (the account's current setting) overrides the dumped one."""
        if not isinstance(data, dict):
            raise LedgerFormatError(f"ledger: expected a mapping, got {type(data).__name__}")
        if data.get("v") != FORMAT_VERSION:
            raise LedgerFormatError(f"ledger: unsupported format version {data.get('v')!r} "
                                    f"(expected {FORMAT_VERSION})")
        prefix = owned_prefix if owned_prefix is not None else data.get("prefix", "tw-")
        ledger = cls(owned_prefix=str(prefix))
        where = "header"
        try:
            ledger.synced_ms = int(data.get("synced", 0))
            ledger.truncated = int(data.get("truncated", 0))
            ledger.orders_ms = int(data.get("os", ledger.synced_ms))
            for i, row in enumerate(data.get("o", [])):
                where = f"order #{i}"
                entry = _order_entry(row)
                ledger.orders[cls.order_id(entry.order)] = entry
                ledger._index(cls.order_id(entry.order), entry.order)
            for i, row in enumerate(data.get("m", [])):
                where = f"miss #{i}"
                symbol, oid, first = row
                entry = ledger.orders.get(OrderKey(str(symbol), str(oid)))
                if entry is not None:
                    entry.first_miss_ms = int(first)
            for i, row in enumerate(data.get("f", [])):
                where = f"fill #{i}"
                symbol, oid, tid, price, qty, fee, fee_asset, at = row
                ledger.add_fill(Fill(str(tid), str(oid), str(symbol), _dec(price), _dec(qty), _dec(fee),
                                     str(fee_asset), int(at)))
            where = "cursors"
            ledger.trade_cursors = {str(k): str(v) for k, v in dict(data.get("tc", {})).items()}
            ledger.gap_since_ms = int(data.get("gap", 0))
            for asset, row in data.get("b", {}).items():
                where = f"balance {asset!r}"
                free, locked, updated, source, changed = row
                ledger.balances[str(asset)] = BalanceEntry(
                    Balance(str(asset), _dec(free), _dec(locked), int(updated)), str(source), int(changed))
            for key, row in data.get("p", {}).items():
                where = f"position {key!r}"
                amount, entry_price, updated, source, changed, *rest = row
                side = PositionSide(rest[0]) if rest else PositionSide.BOTH
                symbol = str(key) if side is PositionSide.BOTH else str(key).rpartition(" ")[0]
                pos = Position(symbol, _dec(amount), _dec(entry_price), int(updated), side)
                if pos.key != key:
                    raise ValueError(f"key does not match its side {side.value}")
                ledger.positions[pos.key] = PositionEntry(pos, str(source), int(changed))
        except LedgerFormatError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, InvalidOperation) as exc:
            raise LedgerFormatError(f"ledger: bad {where}: {exc.__class__.__name__}: {exc}") from None
        return ledger


_STATES = {s.value: s for s in OrderState}
_SIDES = {"b": Side.BUY, "s": Side.SELL}


def _dec(value: Any) -> Decimal:
    if not isinstance(value, str):
        raise ValueError(f"expected a decimal string, got {type(value).__name__}")
    d = Decimal(value)
    if not d.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    return d


def _order_row(e: OrderEntry) -> list[Any]:
    o = e.order
    row = [o.client_order_id, o.exchange_order_id, o.symbol, "b" if o.side is Side.BUY else "s", o.type,
           str(o.price), str(o.amount), str(o.filled), o.state.value, o.created_ms, o.updated_ms,
           e.source, e.changed_ms, e.misses, int(e.recheck), int(o.algo)]
    if o.child_id or o.parent_id or o.protective or o.position_side is not PositionSide.BOTH:
        row += [o.child_id, o.parent_id, int(o.protective), o.position_side.value]
    return row


def _order_entry(row: Any) -> OrderEntry:
    if not isinstance(row, list) or len(row) not in (16, 20):
        raise ValueError("expected a list of 16 or 20 fields")
    (cid, xid, symbol, side, typ, price, amount, filled, state, created, updated,
     source, changed, misses, recheck, algo) = row[:16]
    child, parent, protective, pside = row[16:] if len(row) == 20 else ("", "", 0, "BOTH")
    if side not in _SIDES:
        raise ValueError(f"unknown side {side!r}")
    if state not in _STATES:
        raise ValueError(f"unknown state {state!r}")
    order = Order(str(cid), str(xid), str(symbol), _SIDES[side], str(typ), _dec(price), _dec(amount),
                  _dec(filled), _STATES[state], int(created), int(updated), bool(algo), str(child), str(parent),
                  bool(protective), PositionSide(pside))
    return OrderEntry(order, str(source), int(changed), int(misses), bool(recheck))


def replace_order(order: Order, **changes: Any) -> Order:
    return dataclasses.replace(order, **changes)
