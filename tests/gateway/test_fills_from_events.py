"""The trade an execution event carries (issue 19: fills recorded from the stream, not only from history).

Spot: user-data-stream.md "Order Update" (executionReport): x (execution type), i (order id), l/L (last
executed quantity/price), n/N (commission amount/asset), T (transaction time), t (trade id, -1 when none).
USD-M: usdm-facts.md F4 (ORDER_TRADE_UPDATE ``o``): the same letters; t is 0 when there is no trade, and N
"will not push if no commission" (older doc). The USD-M payload is Binance's own example
(examples/ws_ORDER_TRADE_UPDATE.json), turned into a trade.
"""
from __future__ import annotations

import json
import pathlib
from decimal import Decimal as D

import pytest

from tradewarden.domain import Fill
from tradewarden.gateway.translate import Malformed, fill_from_execution

REF = pathlib.Path(__file__).resolve().parents[3] / "shared" / "reference" / "binance-usdm" / "examples"

# user-data-stream.md "Order Update": the documented executionReport, with its NEW values
SPOT_NEW = {"e": "executionReport", "E": 1499405658658, "s": "ETHBTC", "c": "mUvoqJxFIILMdfAW5iGSOW", "S": "BUY",
            "o": "LIMIT", "f": "GTC", "q": "1.00000000", "p": "0.10264410", "x": "NEW", "X": "NEW", "r": "NONE",
            "i": 4293153, "l": "0.00000000", "z": "0.00000000", "L": "0.00000000", "n": "0", "N": None,
            "T": 1499405658657, "t": -1}
SPOT_TRADE = {**SPOT_NEW, "x": "TRADE", "X": "PARTIALLY_FILLED", "l": "0.40000000", "z": "0.40000000",
              "L": "0.10264410", "n": "0.00040000", "N": "ETH", "t": 1777}


def usdm(**o):
    payload = json.loads((REF / "ws_ORDER_TRADE_UPDATE.json").read_text())["o"]
    return {**payload, **o}


@pytest.mark.parametrize("payload,symbol,expected", [
    (SPOT_NEW, "ETH/BTC", None),                                          # x NEW: no trade
    (SPOT_TRADE, "ETH/BTC", Fill("1777", "4293153", "ETH/BTC", D("0.10264410"), D("0.40000000"), D("0.00040000"),
                                 "ETH", 1499405658657)),
    (usdm(), "BTC/USDT:USDT", None),                                      # Binance's example as published: NEW
    (usdm(x="TRADE", X="FILLED", l="0.001", z="0.001", L="7103.04", n="0.00284121", t=56),
     "BTC/USDT:USDT", Fill("56", "8886774", "BTC/USDT:USDT", D("7103.04"), D("0.001"), D("0.00284121"), "USDT",
                           1568879465650)),
    ({k: v for k, v in usdm(x="TRADE", l="0.001", L="7103.04", n="0", t=57).items() if k != "N"},
     "BTC/USDT:USDT", Fill("57", "8886774", "BTC/USDT:USDT", D("7103.04"), D("0.001"), D("0"), "", 1568879465650)),
    (usdm(x="CALCULATED"), "BTC/USDT:USDT", None),                         # a liquidation's own event: no fill here
], ids=["spot NEW", "spot TRADE", "usdm example NEW", "usdm TRADE", "usdm TRADE without N", "usdm CALCULATED"])
def test_the_trade_an_execution_event_carries(payload, symbol, expected):
    assert fill_from_execution(payload, symbol) == expected


@pytest.mark.parametrize("broken", [
    {**SPOT_TRADE, "t": -1},                    # TRADE that names no trade
    {**SPOT_TRADE, "i": None},
    {**SPOT_TRADE, "l": None},                  # no quantity: never guessed
    {**SPOT_TRADE, "L": "NaN"},
])
def test_a_trade_event_missing_what_it_must_name_is_malformed(broken):
    with pytest.raises(Malformed):
        fill_from_execution(broken, "ETH/BTC")
