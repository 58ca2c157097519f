"""The ledger: tradewarden's record of one account as the exchange last told it.

Orders by client order id, balances by asset, positions by (symbol, side) (``domain.position_key``:
the bare symbol in one-way mode, "<symbol> LONG" / "<symbol> SHORT" for hedge-mode legs). Every entry remembers
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
from typing import Any, Iterator

from tradewarden.domain import (ZERO, Balance, Order, OrderState, Position, PositionSide, Side, is_owned,
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


class LedgerFormatError(ValueError):
    """A dumped ledger that cannot be restored (the caller should start from a fresh sync)."""


def order_key(order: Order) -> tuple[bool, Decimal, int]:
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
    return order_key(new) >= order_key(old)


@dataclass(slots=True)
class OrderEntry:
    order: Order
    source: str
    changed_ms: int
    misses: int = 0            # consecutive runs in which neither list nor query found it
    recheck: bool = False      # a cancel of it had an unknown outcome: query before acting again


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

    __slots__ = ("orders", "balances", "positions", "owned_prefix", "synced_ms", "truncated", "children")

    def __init__(self, owned_prefix: str = "tw-") -> None:
        self.orders: dict[str, OrderEntry] = {}
        self.balances: dict[str, BalanceEntry] = {}
        self.positions: dict[str, PositionEntry] = {}
        self.owned_prefix = owned_prefix
        self.synced_ms = 0          # end of the last run that reconciled every section (0: never)
        self.truncated = 0          # orders left out of the dump this ledger was restored from
        self.children: dict[tuple[str, str], str] = {}   # (symbol, child order id) -> algo parent's key

    # ---- reading -------------------------------------------------------------------------

    def is_owned(self, client_order_id: str) -> bool:
        return is_owned(client_order_id, self.owned_prefix)

    def owns(self, order: Order) -> bool:
        """Owned by its client order id, or (a triggered algo order's child) by its parent's."""
        if self.is_owned(order.client_order_id):
            return True
        parent = self.algo_parent_of(order) if not order.algo else None
        return parent is not None and self.is_owned(parent.client_order_id)

    def order(self, key: str) -> Order | None:
        entry = self.orders.get(key)
        return entry.order if entry else None

    def active_orders(self) -> Iterator[Order]:
        for entry in self.orders.values():
            if entry.order.state.active:
                yield entry.order

    def balance(self, asset: str) -> Balance | None:
        entry = self.balances.get(asset)
        return entry.balance if entry else None

    def position(self, symbol: str, side: PositionSide | str = PositionSide.BOTH) -> Position | None:
        entry = self.positions.get(position_key(symbol, side))
        return entry.position if entry else None

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
        if parent is None:
            return order
        return dataclasses.replace(order, parent_id=parent.exchange_order_id)

    def balance_values(self) -> dict[str, Balance]:
        return {a: e.balance for a, e in self.balances.items()}

    def position_values(self) -> dict[str, Position]:
        return {s: e.position for s, e in self.positions.items()}

    def __repr__(self) -> str:
        active = sum(1 for _ in self.active_orders())
        return (f"Ledger(orders={len(self.orders)}, active={active}, balances={len(self.balances)}, "
                f"positions={len(self.positions)}, synced_ms={self.synced_ms})")

    # ---- writing -------------------------------------------------------------------------

    @staticmethod
    def order_id(order: Order) -> str:
        """The ledger key of an order: its client order id (or its exchange id when it has none)."""
        return order.client_order_id or f"#{order.exchange_order_id}"

    def put_order(self, order: Order, source: str, now_ms: int, *, misses: int = 0,
                  recheck: bool = False, key: str | None = None) -> None:
        """Set an order unconditionally (reconciliation decided)."""
        key = key or self.order_id(order)
        self.orders[key] = OrderEntry(order, source, now_ms, misses, recheck)
        self._index(key, order)

    def _index(self, key: str, order: Order) -> None:
        if order.algo and order.child_id:
            self.children[(order.symbol, order.child_id)] = key

    def upsert_order(self, order: Order, source: str, now_ms: int) -> bool:
        """Apply an observation unless the ledger already holds a newer one. Returns applied."""
        key = self.order_id(order)
        entry = self.orders.get(key)
        if entry is not None and not supersedes(order, entry.order):
            return False
        if entry is not None and entry.order.child_id and not order.child_id:
            order = dataclasses.replace(order, child_id=entry.order.child_id)   # the link is never forgotten
        self.orders[key] = OrderEntry(order, source, now_ms)
        self._index(key, order)
        return True

    def set_order_flags(self, key: str, *, misses: int | None = None, recheck: bool | None = None) -> None:
        entry = self.orders.get(key)
        if entry is None:
            return
        if misses is not None:
            entry.misses = misses
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
        ``max_finished``, so memory stays bounded under any load. Returns how many went."""
        cutoff = now_ms - retention_ms
        finished: list[tuple[int, str]] = []
        doomed: list[str] = []
        for key, entry in self.orders.items():
            order = entry.order
            if order.state.active:
                continue
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
            def rank(item: tuple[str, OrderEntry]) -> tuple[int, int]:
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
            "truncated": truncated + max(0, len(balances) - DEFAULT_DUMP_MAX_BALANCES)
                         + max(0, len(positions) - DEFAULT_DUMP_MAX_POSITIONS),
            "o": [_order_row(e) for _, e in entries],
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
            for i, row in enumerate(data.get("o", [])):
                where = f"order #{i}"
                entry = _order_entry(row)
                ledger.orders[cls.order_id(entry.order)] = entry
                ledger._index(cls.order_id(entry.order), entry.order)
            for asset, row in data.get("b", {}).items():
                where = f"balance {asset!r}"
                free, locked, updated, source, changed = row
                ledger.balances[str(asset)] = BalanceEntry(
                    Balance(str(asset), _dec(free), _dec(locked), int(updated)), str(source), int(changed))
            for key, row in data.get("p", {}).items():
                where = f"position {key!r}"
                amount, entry_price, updated, source, changed, *rest = row
                side = PositionSide(rest[0]) if rest else PositionSide.BOTH
                symbol = str(key)
                if side is not PositionSide.BOTH:
                    symbol, _, _ = symbol.rpartition(" ")
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
