"""The simulator's USD-M answers and events against Binance's documentation.

Reference: ../shared/reference/binance-usdm/usdm-facts.md (section cited per test) and its official payload
examples in examples/ (provenance in examples/SOURCES.md). Every payload the simulator sends has the keys of
the example and the same JSON value types (numbers as strings, ids/times/booleans native); where the sources
disagree (usdm-facts.md section I) the test says which one the simulator follows and why.
"""
from __future__ import annotations

import json
import os
import pathlib
from decimal import Decimal, InvalidOperation

import pytest

pytestmark = pytest.mark.sim

_DEFAULT_REF = pathlib.Path(__file__).resolve().parents[3] / "shared" / "reference" / "binance-usdm"
REF = pathlib.Path(os.environ.get("TRADEWARDEN_USDM_REF", str(_DEFAULT_REF)))
if not (REF / "usdm-facts.md").exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"USD-M reference not found under {REF}: CI must have ../shared beside the clone")
    pytest.skip(f"USD-M reference not found under {REF}", allow_module_level=True)

D = Decimal


def example(name: str):
    data = json.loads((REF / "examples" / name).read_text())
    return data["data"] if isinstance(data, dict) and "data" in data and "stream" in data else data


def kind(v) -> str:
    """A JSON value's type, numbers-as-strings told apart from other strings."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        try:
            D(v)
            return "decimal-string" if v not in ("NaN", "Infinity") else "string"
        except InvalidOperation:
            return "string"
    return type(v).__name__


def same_shape(real: dict, ours: dict, *, added: set[str] = frozenset(), absent: set[str] = frozenset(),
               loose: set[str] = frozenset()) -> None:
    """Same keys (``added``: ours only, ``absent``: the example's only, each with a reason at the call)
    and the same value kind per key (``loose``: string either way, e.g. "" vs a decimal)."""
    assert set(ours) - set(added) == set(real) - set(absent), (sorted(set(real) - set(ours) - set(absent)),
                                                              sorted(set(ours) - set(real) - set(added)))
    for k in set(real) & set(ours):
        if k in loose:
            assert isinstance(ours[k], str) == isinstance(real[k], str), k
            continue
        if isinstance(real[k], (dict, list)):
            continue
        assert kind(ours[k]) == kind(real[k]), (k, ours[k], real[k])


@pytest.fixture
def events(sim):
    out = []
    sim.exchange.listeners.append(lambda acct, venue, ev: out.append(json.loads(json.dumps(ev))))
    return out


@pytest.fixture
async def long_position(usdm, sim, creds):
    sim.set_price("BTCUSDT", "50000")
    await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.1"})
    return creds


# ---- A. account and balance ---------------------------------------------------------------------------

async def test_account_v3_shape_and_balance_arithmetic(usdm, sim, long_position):
    """A3/A4/A6: walletBalance excludes UPnL; marginBalance = wallet + UPnL; initialMargin = position IM
    (at the mark) + open-order IM; available = max(0, cross wallet + cross UPnL - IM); totals likewise."""
    sim.set_price("BTCUSDT", "51000")
    await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.1",
                                       "price": "45000", "timeInForce": "GTC"})
    ours = await usdm.fapiprivatev3_get_account()
    real = example("GET_fapi_v3_account.single-asset.json")
    same_shape(real, ours)
    same_shape(real["assets"][0], ours["assets"][0])
    same_shape(real["positions"][0], ours["positions"][0])
    a = ours["assets"][0]
    wallet, upnl = D(a["walletBalance"]), D(a["unrealizedProfit"])
    assert upnl == D("0.1") * (51000 - 50000)                                   # mark moved 1000
    assert D(a["marginBalance"]) == wallet + upnl
    assert D(a["initialMargin"]) == D(a["positionInitialMargin"]) + D(a["openOrderInitialMargin"])
    assert D(a["positionInitialMargin"]) == D("0.1") * 51000 / 20               # at the mark, leverage 20
    assert D(a["openOrderInitialMargin"]) == D("0.1") * 45000 / 20
    assert D(a["availableBalance"]) == max(D(0), D(a["crossWalletBalance"]) + upnl - D(a["initialMargin"]))
    assert D(ours["totalMarginBalance"]) == D(ours["totalWalletBalance"]) + D(ours["totalUnrealizedProfit"])
    # the wallet moved only by the fill's commission (taker 0.05% of 5000): no UPnL in it
    assert wallet == D(10000) - D("2.5")


async def test_account_v2_and_balance_shapes(usdm, long_position):
    """A2/A5. v2 account: the doc example has feeBurn and no canTrade; the SDK model (A2) lists canTrade
    too: the simulator sends both (a key more is harmless to a client, a key less is not)."""
    ours = await usdm.fapiprivatev2_get_account()
    real = example("GET_fapi_v2_account.single-asset.json")
    same_shape(real, ours, added={"canTrade"})
    same_shape(real["assets"][0], ours["assets"][0])
    same_shape(real["positions"][0], ours["positions"][0])
    for path in ("fapiprivatev2_get_balance", "fapiprivatev3_get_balance"):
        rows = await getattr(usdm, path)()
        same_shape(example("GET_fapi_v2_balance.json")[0], rows[0])
        account = await usdm.fapiprivatev3_get_account()
        assert rows[0]["balance"] == account["assets"][0]["walletBalance"]       # A5: balance = wallet


# ---- B. positions and position mode -----------------------------------------------------------------

async def test_position_risk_one_way(usdm, long_position):
    """B2: one-way mode returns BOTH rows; v3 only symbols with a position or open orders."""
    v3 = await usdm.fapiprivatev3_get_positionrisk()
    assert [(r["symbol"], r["positionSide"]) for r in v3] == [("BTCUSDT", "BOTH")]
    same_shape(example("GET_fapi_v3_positionRisk.one-way.json")[0], v3[0])
    v2 = await usdm.fapiprivatev2_get_positionrisk({"symbol": "BTCUSDT"})
    same_shape(example("GET_fapi_v2_positionRisk.one-way.json")[0], v2[0])
    assert v3[0]["liquidationPrice"] == "0.00000000"      # 0.1 BTC on a 10,000 wallet: no liquidation price
    await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "2.9"})
    row = (await usdm.fapiprivatev3_get_positionrisk())[0]
    account = await usdm.fapiprivatev3_get_account()
    # cross margin: liquidation when the margin balance meets the maintenance margin (A6), the mark alone moving
    lp, amt, entry = D(row["liquidationPrice"]), D(row["positionAmt"]), D(row["entryPrice"])
    wallet = D(account["totalWalletBalance"])
    assert amt == 3 and 40000 < lp < 50000
    assert abs((wallet + amt * (lp - entry)) - amt * lp * D("0.004")) < D("0.01")


async def test_hedge_mode_position_rows_and_orders(usdm, sim, creds):
    """B1/B2/C3: POST positionSide/dual switches the mode (refused with a position: -4068); hedge mode
    returns LONG and SHORT rows (SHORT negative, both rows even when one is zero in v2); orders need
    positionSide LONG/SHORT (BOTH -> -4061) and refuse reduceOnly."""
    assert await usdm.fapiprivate_get_positionside_dual() == example("GET_fapi_v1_positionSide_dual.json") | {
        "dualSidePosition": False}
    await usdm.fapiprivate_post_positionside_dual({"dualSidePosition": "true"})
    assert (await usdm.fapiprivate_get_positionside_dual())["dualSidePosition"] is True
    sim.set_price("BTCUSDT", "50000")
    with pytest.raises(Exception, match="-4061"):
        await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "1"})
    with pytest.raises(Exception, match="-1106"):
        await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "1",
                                           "positionSide": "LONG", "reduceOnly": "true"})
    await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.2",
                                       "positionSide": "LONG"})
    v2 = await usdm.fapiprivatev2_get_positionrisk({"symbol": "BTCUSDT"})
    assert [(r["positionSide"], r["positionAmt"]) for r in v2] == [("LONG", "0.200"), ("SHORT", "0.000")]
    same_shape(example("GET_fapi_v2_positionRisk.hedge.json")[1], v2[1])
    await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.05",
                                       "positionSide": "SHORT"})
    v3 = await usdm.fapiprivatev3_get_positionrisk()
    assert {(r["positionSide"], r["positionAmt"]) for r in v3} == {("LONG", "0.200"), ("SHORT", "-0.050")}
    for row in v3:
        same_shape(example("GET_fapi_v3_positionRisk.hedge.json")[0], row)
    account = await usdm.fapiprivatev3_get_account()
    assert {r["positionSide"] for r in account["positions"]} == {"LONG", "SHORT"}
    with pytest.raises(Exception, match="-4068"):
        await usdm.fapiprivate_post_positionside_dual({"dualSidePosition": "false"})


# ---- C. regular orders ------------------------------------------------------------------------------

async def test_order_shapes(usdm, sim):
    """C2: GET order / openOrders carry time and no cumQty; POST/DELETE carry cumQty and no time. The
    SDK dropped avgPrice/cumQuote from POST/DELETE in 2026-07 while the doc's Cancel-Order example and
    ccxt's captured 2025 traffic have them (I-4): the simulator keeps them, the safer choice."""
    placed = await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                "quantity": "0.01", "price": "40000", "timeInForce": "GTC"})
    same_shape(example("POST_fapi_v1_order.sdk-2026-08.json"), placed, added={"avgPrice", "cumQuote"})
    real_get = example("GET_fapi_v1_order.json")
    trailing_only = {"activatePrice", "priceRate"}     # C2: TRAILING_STOP_MARKET only
    got = await usdm.fapiprivate_get_order({"symbol": "BTCUSDT", "orderId": placed["orderId"]})
    same_shape(real_get, got, absent=trailing_only)
    listed = await usdm.fapiprivate_get_openorders({"symbol": "BTCUSDT"})
    same_shape(example("GET_fapi_v1_openOrders.json")[0], listed[0], absent=trailing_only)
    cancelled = await usdm.fapiprivate_delete_order({"symbol": "BTCUSDT", "orderId": placed["orderId"]})
    same_shape(example("DELETE_fapi_v1_order.json"), cancelled, absent=trailing_only, added={"avgPrice"})
    assert await usdm.fapiprivate_delete_allopenorders({"symbol": "BTCUSDT"}) == \
        example("DELETE_fapi_v1_allOpenOrders.json")


async def test_user_trades_shape(usdm, long_position):
    """E: the 2026-08 shape (baseQty, marginAsset, pair added by the CM merge)."""
    rows = await usdm.fapiprivate_get_usertrades({"symbol": "BTCUSDT"})
    same_shape(example("GET_fapi_v1_userTrades.sdk-2026-08.json")[0], rows[0])


async def test_countdown_cancel_all(usdm, sim, creds):
    """C4: the reply echoes countdownTime as a string; when the countdown expires the symbol's open
    orders are cancelled; each call replaces the countdown; 0 stops it. Whether it also cancels algo
    orders is not documented (C4, I-11): the doc says "open orders", so the simulator cancels regular
    orders only and leaves algo orders."""
    import asyncio
    sim.set_price("BTCUSDT", "50000")
    await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.01",
                                       "price": "40000", "timeInForce": "GTC"})
    await usdm.fapiprivate_post_algoorder({"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "BUY",
                                           "type": "STOP_MARKET", "quantity": "0.01", "triggerPrice": "60000"})
    reply = await usdm.fapiprivate_post_countdowncancelall({"symbol": "BTCUSDT", "countdownTime": "100000"})
    assert reply == example("POST_fapi_v1_countdownCancelAll.json") | {"symbol": "BTCUSDT", "countdownTime": "100000"}
    await usdm.fapiprivate_post_countdowncancelall({"symbol": "BTCUSDT", "countdownTime": "0"})     # stopped
    await asyncio.sleep(0.3)
    assert sim.account(creds[0]).open_count("usdm") == 1
    await usdm.fapiprivate_post_countdowncancelall({"symbol": "BTCUSDT", "countdownTime": "200"})
    await asyncio.sleep(0.6)
    acct = sim.account(creds[0])
    assert acct.open_count("usdm") == 0 and [a.status for a in acct.algo.values()] == ["NEW"]


# ---- D. algo orders ---------------------------------------------------------------------------------

async def test_algo_rest_shapes_and_lifecycle(usdm, sim, long_position, events):
    """D2/D3/D4/D5: POST / openAlgoOrders / allAlgoOrders / GET algoOrder shapes; on trigger the algo
    becomes TRIGGERED with actualOrderId = the child regular order (another id space), then FINISHED with
    the child's executed quantity; cancel replies with code "200" (a string) and cancel-all with 200 (I-10)."""
    placed = await usdm.fapiprivate_post_algoorder({"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "SELL",
                                                    "type": "STOP_MARKET", "quantity": "0.1",
                                                    "triggerPrice": "48000", "reduceOnly": "true",
                                                    "clientAlgoId": "tw-doc-sl"})
    same_shape(example("POST_fapi_v1_algoOrder.json"), placed, loose={"activatePrice", "callbackRate"})
    listed = await usdm.fapiprivate_get_openalgoorders({"symbol": "BTCUSDT"})
    same_shape(example("GET_fapi_v1_openAlgoOrders.json")[0], listed[0])
    sim.set_price("BTCUSDT", "47900")
    got = await usdm.fapiprivate_get_algoorder({"algoId": placed["algoId"]})
    # the 2026-08 query shape (D3): actualType once triggered, actualQty once filled; the SDK example's
    # "icebergQuantity": "None" is a Python str(None) artefact: null, as every other example has it
    same_shape(example("GET_fapi_v1_algoOrder.sdk-2026-08.json") | {"icebergQuantity": None}, got,
               loose={"actualOrderId"})   # "" until triggered, an id after
    assert got["icebergQuantity"] is None
    assert got["algoStatus"] == "FINISHED" and got["actualQty"] == "0.100" and got["actualType"] == "MARKET"
    child = await usdm.fapiprivate_get_order({"symbol": "BTCUSDT", "orderId": got["actualOrderId"]})
    assert child["status"] == "FILLED" and str(child["orderId"]) != str(got["algoId"])
    history = await usdm.fapiprivate_get_allalgoorders({"symbol": "BTCUSDT"})
    same_shape(example("GET_fapi_v1_allAlgoOrders.json")[0], history[0], loose={"actualOrderId"})
    # the stream, in the documented order (D5): TRIGGERING -> TRIGGERED (ai) -> child NEW/TRADE -> FINISHED
    seq = [(e["e"], e["o"].get("X")) for e in events if e["e"] in ("ALGO_UPDATE", "ORDER_TRADE_UPDATE")]
    algo_at = [i for i, (e, _) in enumerate(seq) if e == "ALGO_UPDATE"]
    assert [seq[i][1] for i in algo_at] == ["NEW", "TRIGGERING", "TRIGGERED", "FINISHED"]
    child_events = [x for i, x in enumerate(seq) if algo_at[2] < i < algo_at[3]]
    assert child_events == [("ORDER_TRADE_UPDATE", "NEW"), ("ORDER_TRADE_UPDATE", "FILLED")]
    algo_events = [e for e in events if e["e"] == "ALGO_UPDATE"]
    triggering, triggered, finished = algo_events[1:]
    same_shape(example("captured/ws_ALGO_UPDATE.TRIGGERING.fixture.json")["o"], triggering["o"])
    assert triggering["o"]["ai"] == "" and triggering["T"] <= triggering["E"]
    same_shape(example("captured/ws_ALGO_UPDATE.TRIGGERED.live-2025-12-11.json")["o"], triggered["o"],
               loose={"act"})
    assert triggered["o"]["ai"] == str(child["orderId"])
    same_shape(example("captured/ws_ALGO_UPDATE.FINISHED.filled.fixture.json")["o"], finished["o"])
    assert finished["o"]["aq"] == "0.100" and finished["o"]["act"] == "MARKET"

    again = await usdm.fapiprivate_post_algoorder({"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "BUY",
                                                   "type": "TAKE_PROFIT_MARKET", "quantity": "0.1",
                                                   "triggerPrice": "40000"})
    assert await usdm.fapiprivate_delete_algoorder({"algoId": again["algoId"]}) == \
        example("DELETE_fapi_v1_algoOrder.json") | {"algoId": again["algoId"], "clientAlgoId": again["clientAlgoId"]}
    assert await usdm.fapiprivate_delete_algoopenorders({"symbol": "BTCUSDT"}) == \
        example("DELETE_fapi_v1_algoOpenOrders.json")


async def test_algo_child_refused_is_rejected_with_a_reason(usdm, sim, creds, events):
    """D1/D4/F6: no margin check before the trigger; a child the matching engine refuses makes the
    algo REJECTED with the reason in ``rm`` (e.g. "Reduce Only reject", as the doc example)."""
    sim.set_price("BTCUSDT", "50000")
    await usdm.fapiprivate_post_algoorder({"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "SELL",
                                           "type": "STOP_MARKET", "quantity": "0.1", "triggerPrice": "48000",
                                           "reduceOnly": "true"})      # no position to reduce
    sim.set_price("BTCUSDT", "47000")
    last = [e for e in events if e["e"] == "ALGO_UPDATE"][-1]
    assert last["o"]["X"] == "REJECTED" and last["o"]["rm"] == "Reduce Only reject"
    same_shape(example("ws_ALGO_UPDATE.json")["o"], last["o"])


# ---- F. user data stream -----------------------------------------------------------------------------

async def test_stream_event_shapes(usdm, sim, creds, events):
    """F4/F5: ORDER_TRADE_UPDATE keys as the doc example (AP and cr are the trailing order's only);
    ACCOUNT_UPDATE B and P rows as the doc example (``ma`` is a 3rd-party observation, not sent);
    a hedge-leg change pushes the symbol's BOTH row and the changed leg."""
    sim.set_price("BTCUSDT", "50000")
    await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.1"})
    otu = [e for e in events if e["e"] == "ORDER_TRADE_UPDATE"]
    real = example("ws_ORDER_TRADE_UPDATE.json")
    same_shape({k: v for k, v in real.items() if k != "o"}, {k: v for k, v in otu[-1].items() if k != "o"})
    for e in otu:
        same_shape(real["o"], e["o"], absent={"AP", "cr"})
    au = [e for e in events if e["e"] == "ACCOUNT_UPDATE"][-1]
    ra = example("ws_ACCOUNT_UPDATE.json")
    same_shape({k: v for k, v in ra.items() if k != "a"}, {k: v for k, v in au.items() if k != "a"})
    assert set(au["a"]) == {"m", "B", "P"} and au["a"]["m"] == "ORDER"
    same_shape(ra["a"]["B"][0], au["a"]["B"][0])
    same_shape(ra["a"]["P"][0], au["a"]["P"][0])
    assert au["a"]["B"][0]["wb"] == str(sim.account(creds[0]).wallet["USDT"].quantize(D("0.00000001")))

    await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.1"})
    await usdm.fapiprivate_post_positionside_dual({"dualSidePosition": "true"})
    await usdm.fapiprivate_post_order({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.1",
                                       "positionSide": "SHORT"})
    au = [e for e in events if e["e"] == "ACCOUNT_UPDATE"][-1]
    assert [(p["ps"], p["pa"]) for p in au["a"]["P"]] == [("BOTH", "0.000"), ("SHORT", "-0.100")]
