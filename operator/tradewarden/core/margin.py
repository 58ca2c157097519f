"""USD-M margin health and protective coverage, as pure functions (no I/O, no clock).

From what the snapshot already fetched (``domain.MarginSummary``: GET /fapi/v3/account and
/fapi/v3/positionRisk) and the ledger: per position its liquidation price and the mark's distance to it,
the account's margin ratio (maintenance margin / margin balance, usdm-facts.md A3/A6: liquidation at
100%), whether protective orders cover each position, and whether the account is at risk
(``MarginAtRisk``: the ratio at or above its threshold, or a mark within its threshold of liquidation).
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable, Sequence

from tradewarden.domain import MarginSummary, Order, Position, PositionSide, Side


@dataclass(frozen=True, slots=True)
class PositionHealth:
    symbol: str
    side: PositionSide
    amount: Decimal
    mark_price: Decimal | None
    liquidation_price: Decimal | None
    distance: Decimal | None        # |mark - liquidation| / mark; None: no liquidation price
    protected: bool                 # an active protective order would close (part of) it

    @property
    def key(self) -> str:
        return self.symbol if self.side is PositionSide.BOTH else f"{self.symbol} {self.side.value}"


@dataclass(frozen=True, slots=True)
class MarginHealth:
    margin_ratio: Decimal | None
    ratio_threshold: Decimal
    distance_threshold: Decimal
    positions: Sequence[PositionHealth]
    at_risk: bool
    reasons: Sequence[str]


def covers(order: Order, position: Position) -> bool:
    """A protective order that closes (part of) ``position``: same symbol and position side, opposite
    direction (a long is closed by a SELL, a short by a BUY)."""
    if not order.protective or not order.state.active or order.symbol != position.symbol:
        return False
    if order.position_side is not position.side:
        return False
    closing = Side.SELL if position.amount > 0 else Side.BUY
    return order.side is closing


def margin_health(margin: MarginSummary | None, positions: Iterable[Position], orders: Iterable[Order],
                  ratio_threshold: Decimal, distance_threshold: Decimal) -> MarginHealth:
    active = [o for o in orders if o.protective and o.state.active]
    risks = {r.key: r for r in (margin.positions if margin is not None else ())}
    rows: list[PositionHealth] = []
    reasons: list[str] = []
    for p in sorted(positions, key=lambda p: p.key):
        if p.amount == 0:
            continue
        r = risks.get(p.key)
        distance = r.liquidation_distance if r is not None else None
        rows.append(PositionHealth(p.symbol, p.side, p.amount, r.mark_price if r else None,
                                   r.liquidation_price if r and r.liquidation_price > 0 else None, distance,
                                   any(covers(o, p) for o in active)))
        if distance is not None and distance <= distance_threshold:
            reasons.append(f"{p.key}: mark {r.mark_price} is {distance:.2%} from liquidation at "
                           f"{r.liquidation_price} (threshold {distance_threshold:.2%})")
    ratio = margin.margin_ratio if margin is not None else None
    if ratio is not None and ratio >= ratio_threshold:
        reasons.insert(0, f"margin ratio {ratio:.2%} (maintenance margin / margin balance) at or above "
                          f"{ratio_threshold:.2%}")
    return MarginHealth(ratio, ratio_threshold, distance_threshold, tuple(rows), bool(reasons), tuple(reasons))
