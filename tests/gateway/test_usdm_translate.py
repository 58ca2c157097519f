"""USD-M translation (pure): algo statuses per the documentation, position sides, the wallet balance."""
from __future__ import annotations

import json
import pathlib
from decimal import Decimal as D

import pytest

from tradewarden.domain import OrderState, PositionSide
from tradewarden.gateway.translate import (Malformed, futures_balances, order_from_ccxt,
                                           positions_from_futures_account_update)

REF = pathlib.Path(__file__).resolve().parents[3] / "shared" / "reference" / "binance-usdm" / "examples"


def algo(status, q="38", aq="0", ai="", **extra):
    info = {"caid": "tw-1", "aid": 7, "at": "CONDITIONAL", "o": "STOP_MARKET", "s": "DOGEUSDT", "S": "BUY",
            "ps": "BOTH", "q": q, "X": status, "ai": ai, "aq": aq, "R": False, "cp": False, **extra}
    return {"id": "7", "clientOrderId": "tw-1", "symbol": "DOGE/USDT:USDT", "side": "buy", "amount": float(q),
            "filled": 0.0, "status": "closed", "info": info, "timestamp": 1}


@pytest.mark.parametrize("status,aq,ai,state,filled,child", [
    ("NEW", "0", "", OrderState.OPEN, "0", ""),
    ("TRIGGERING", "0", "", OrderState.OPEN, "0", ""),                       # D4: forwarded, not placed yet
    ("TRIGGERED", "0", "88937381063", OrderState.TRIGGERED, "0", "88937381063"),   # the child exists
    ("FINISHED", "38", "88937381063", OrderState.FILLED, "38", "88937381063"),     # child filled
    ("FINISHED", "0", "88937381064", OrderState.CANCELED, "0", "88937381064"),     # child ended unfilled
    ("FINISHED", "10", "1", OrderState.CANCELED, "10", "1"),                        # partly, then cancelled
    ("CANCELED", "0", "", OrderState.CANCELED, "0", ""),
    ("REJECTED", "0", "", OrderState.REJECTED, "0", ""),
    ("EXPIRED", "0", "", OrderState.EXPIRED, "0", ""),
])
def test_algo_statuses_per_the_documentation(status, aq, ai, state, filled, child):
    o = order_from_ccxt(algo(status, aq=aq, ai=ai), algo=True)
    assert (o.state, o.filled, o.child_id) == (state, D(filled), child)
    assert o.algo and o.protective                                   # a conditional stop guards a position


def test_unknown_algo_status_and_missing_status_are_malformed():
    with pytest.raises(Malformed, match="unknown algo order status 'PAUSED'"):
        order_from_ccxt(algo("PAUSED"), algo=True)
    bad = algo("NEW")
    del bad["info"]["X"]
    with pytest.raises(Malformed, match="without its status"):
        order_from_ccxt(bad, algo=True)


def test_captured_algo_updates_translate():
    for name, state in (("ws_ALGO_UPDATE.TRIGGERED.live-2025-12-11.json", OrderState.TRIGGERED),
                        ("ws_ALGO_UPDATE.FINISHED.filled.fixture.json", OrderState.FILLED),
                        ("ws_ALGO_UPDATE.FINISHED.unfilled.fixture.json", OrderState.CANCELED)):
        path = REF / "captured" / name
        if not path.exists():
            pytest.skip("reference not beside the clone")
        o = json.loads(path.read_text())["data"]["o"]
        order = order_from_ccxt({"id": str(o["aid"]), "symbol": "DOGE/USDT:USDT", "side": "buy",
                                 "amount": float(o["q"]), "info": o}, algo=True)
        assert order.state is state and order.child_id == o["ai"]


def test_hedge_orders_closing_their_leg_are_protective():
    base = {"id": "1", "clientOrderId": "x", "symbol": "BTC/USDT:USDT", "amount": 1.0, "filled": 0.0, "timestamp": 1}
    close_long = order_from_ccxt({**base, "side": "sell", "info": {"status": "NEW", "positionSide": "LONG",
                                                                  "reduceOnly": False}})
    open_long = order_from_ccxt({**base, "side": "buy", "info": {"status": "NEW", "positionSide": "LONG",
                                                                "reduceOnly": False}})
    reduce_only = order_from_ccxt({**base, "side": "sell", "info": {"status": "NEW", "positionSide": "BOTH",
                                                                   "reduceOnly": True}})
    assert close_long.protective and not open_long.protective and reduce_only.protective
    assert close_long.position_side is PositionSide.LONG
    with pytest.raises(Malformed, match="unknown position side"):
        order_from_ccxt({**base, "side": "buy", "info": {"status": "NEW", "positionSide": "UP"}})


def test_account_update_keeps_hedge_legs_and_refuses_an_unknown_side():
    """F5 (doc example): a BOTH row and LONG / SHORT legs, each its own position."""
    path = REF / "ws_ACCOUNT_UPDATE.json"
    if not path.exists():
        pytest.skip("reference not beside the clone")
    msg = json.loads(path.read_text())
    legs = positions_from_futures_account_update(msg, lambda s: "BTC/USDT:USDT")
    assert [(p.key, p.amount) for p in legs] == [("BTC/USDT:USDT", D(0)), ("BTC/USDT:USDT LONG", D(20)),
                                                 ("BTC/USDT:USDT SHORT", D(-10))]
    msg["a"]["P"][1]["ps"] = "SIDEWAYS"
    with pytest.raises(Malformed, match="unknown position side 'SIDEWAYS'"):
        positions_from_futures_account_update(msg, lambda s: "BTC/USDT:USDT")


def test_futures_balances_are_the_wallet_and_missing_fields_are_malformed():
    """A6: walletBalance (= ACCOUNT_UPDATE wb) is compared; marginBalance / UPnL / available are reported."""
    path = REF / "GET_fapi_v3_account.single-asset.json"
    if not path.exists():
        pytest.skip("reference not beside the clone")
    info = json.loads(path.read_text())
    info["assets"][0]["unrealizedProfit"] = "5.00000000"
    info["assets"][0]["marginBalance"] = "28.72469206"
    balances, margin = futures_balances(info)
    assert balances["USDT"].free == D("23.72469206") and balances["USDT"].locked == 0
    assert margin.assets["USDT"].margin_balance == D("28.72469206") and margin.assets["USDT"].unrealized_pnl == 5
    del info["assets"][1]["walletBalance"]
    with pytest.raises(Malformed, match="USDC walletBalance missing"):
        futures_balances(info)
