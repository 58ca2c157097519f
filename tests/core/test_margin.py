"""Margin health and protective coverage (pure): table tests."""
from __future__ import annotations

from decimal import Decimal as D

import pytest

from tradewarden.core.margin import covers, margin_health
from tradewarden.domain import (AssetMargin, MarginSummary, Order, OrderState, Position, PositionRisk, PositionSide,
                                Side)

S = "BTC/USDT:USDT"


def order(side, pside=PositionSide.BOTH, protective=True, state=OrderState.OPEN, symbol=S):
    return Order("tw-1", "1", symbol, side, "stop_market", D(0), D(1), D(0), state, 1, 1, algo=True,
                 protective=protective, position_side=pside)


@pytest.mark.parametrize("o,p,expected", [
    (order(Side.SELL), Position(S, D(1)), True),                                   # stop under a long
    (order(Side.BUY), Position(S, D(1)), False),                                   # would add to it
    (order(Side.BUY), Position(S, D(-1)), True),                                   # stop over a short
    (order(Side.SELL, protective=False), Position(S, D(1)), False),                # an entry, not protection
    (order(Side.SELL, state=OrderState.CANCELED), Position(S, D(1)), False),
    (order(Side.SELL, symbol="ETH/USDT:USDT"), Position(S, D(1)), False),
    (order(Side.SELL, PositionSide.LONG), Position(S, D(1), side=PositionSide.LONG), True),
    (order(Side.SELL, PositionSide.LONG), Position(S, D(-1), side=PositionSide.SHORT), False),   # other leg
    (order(Side.BUY, PositionSide.SHORT), Position(S, D(-1), side=PositionSide.SHORT), True),
])
def test_covers(o, p, expected):
    assert covers(o, p) is expected


def summary(maint, margin_balance, risks=()):
    return MarginSummary({"USDT": AssetMargin("USDT", D(1000), D(margin_balance), D(0), D(0), D(maint))},
                         D(maint), D(margin_balance), tuple(risks))


@pytest.mark.parametrize("maint,balance,mark,liq,at_risk", [
    ("10", "1000", "50000", "40000", False),      # ratio 1%, 20% from liquidation
    ("850", "1000", "50000", "40000", True),      # ratio 85% >= 80%
    ("10", "1000", "50000", "48000", True),       # 4% from liquidation <= 5%
    ("10", "1000", "50000", "0", False),          # no liquidation price
])
def test_margin_health(maint, balance, mark, liq, at_risk):
    risk = PositionRisk(S, PositionSide.BOTH, D(1), D(mark), D(liq), D(0))
    h = margin_health(summary(maint, balance, [risk]), [Position(S, D(1))], [order(Side.SELL)], D("0.8"), D("0.05"))
    assert h.at_risk is at_risk and len(h.reasons) == int(at_risk)
    assert h.margin_ratio == D(maint) / D(balance)
    (row,) = h.positions
    assert row.protected and (row.liquidation_price is None) == (liq == "0")


def test_no_margin_known_is_not_at_risk_and_says_nothing_it_did_not_check():
    h = margin_health(None, [Position(S, D(1))], [], D("0.8"), D("0.05"))
    assert not h.at_risk and h.margin_ratio is None and h.positions[0].distance is None
    assert not h.positions[0].protected
