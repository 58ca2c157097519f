"""Pure parts of the gateway: error mapping, scrubbing, budget arithmetic, translation of real captured
Binance responses (ccxt's own static fixtures) into domain types."""
from __future__ import annotations

import json
import logging
import pathlib
from decimal import Decimal

import ccxt
import pytest

from tradewarden.domain import (AuthenticationFailed, Invalid, OrderNotFound, OrderState, RateLimited, Side,
                                Temporary, UnknownOutcome, Unsupported)
from tradewarden.gateway import (RateBudgets, backoff_delay, cheapest_open_orders_weight, jittered_offset,
                                 map_error, per_symbol_is_cheaper, request_weight, scrub)
from tradewarden.gateway.budget import RateBudget
from tradewarden.gateway.errors import ScrubFilter
from tradewarden.gateway.translate import balances_from_ccxt, order_from_ccxt, positions_from_ccxt

STATIC = pathlib.Path("/work/shared/reference/ccxt-static/response-binance.json")
SECRET = "Zx9" + "s" * 61
KEY = "Ak" + "k" * 62
SIGNED_URL = f"https://api.binance.com/api/v3/order?symbol=BTCUSDT&timestamp=1&signature={'ab12' * 16}"


# ---- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("exc, write, expected", [
    (ccxt.ExchangeNotAvailable("binance GET x 503"), False, Temporary),
    (ccxt.ExchangeNotAvailable("binance DELETE x 503"), True, UnknownOutcome),
    (ccxt.RequestTimeout("binance DELETE x"), True, UnknownOutcome),
    (ccxt.RequestTimeout("binance GET x"), False, Temporary),
    (ccxt.DDoSProtection("binance 429"), False, RateLimited),
    (ccxt.DDoSProtection("binance 418"), True, RateLimited),
    (ccxt.AuthenticationError("-2015"), False, AuthenticationFailed),
    (ccxt.OrderNotFound("-2011"), True, OrderNotFound),
    (ccxt.BadSymbol("-1121"), False, Invalid),
    (ccxt.InvalidOrder("-1013"), True, Invalid),
    (ccxt.InvalidNonce("-1021"), False, Temporary),
    (ccxt.NotSupported("x"), False, Unsupported),
    (ccxt.OperationFailed("-1008"), True, UnknownOutcome),
])
def test_ccxt_errors_map_to_the_vocabulary(exc, write, expected):
    err = map_error(exc, write=write)
    assert type(err) is expected


def test_rate_limited_carries_the_wait():
    err = map_error(ccxt.DDoSProtection("429"), retry_after=7.5)
    assert isinstance(err, RateLimited) and err.retry_after == 7.5


def test_no_secret_survives_mapping_or_logging(caplog):
    exc = ccxt.ExchangeNotAvailable(f"binance DELETE {SIGNED_URL} 503 Service Unavailable {KEY} {SECRET}")
    err = map_error(exc, write=True, secrets=(KEY, SECRET))
    for text in (str(err), repr(err)):
        assert "signature=" + "ab12" not in text and KEY not in text and SECRET not in text
    assert "api.binance.com/api/v3/order" in str(err)   # still says what failed
    logger = logging.getLogger("tw-test-scrub")
    logger.addFilter(ScrubFilter((KEY, SECRET)))
    with caplog.at_level(logging.DEBUG, logger="tw-test-scrub"):
        logger.debug("%s %s, Request: %s", "GET", SIGNED_URL, {"X-MBX-APIKEY": KEY})
    assert caplog.records and "ab12ab12" not in caplog.text and KEY not in caplog.text


def test_scrub_removes_listen_keys_and_queries():
    key = "Q" * 60
    text = scrub(f"ws://127.0.0.1:1/private/ws?listenKey={key} and wss://x/ws/{key}")
    assert key not in text


# ---- budget --------------------------------------------------------------------------------------

class Clock:
    def __init__(self, t: float = 6000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_documented_weights():
    assert request_weight("GET", "https://api.binance.com/api/v3/openOrders?symbol=BTCUSDT&timestamp=1") == 6
    assert request_weight("GET", "https://api.binance.com/api/v3/openOrders?timestamp=1") == 80
    assert request_weight("GET", "http://127.0.0.1:9/api/v3/account?timestamp=1") == 20
    assert request_weight("GET", "http://127.0.0.1:9/api/v3/order?symbol=B") == 4
    assert request_weight("DELETE", "http://127.0.0.1:9/api/v3/openOrders?symbol=B") == 1
    assert request_weight("GET", "http://127.0.0.1:9/fapi/v1/openOrders") == 40
    assert request_weight("GET", "http://127.0.0.1:9/fapi/v1/openOrders?symbol=BTCUSDT") == 1
    assert request_weight("GET", "http://127.0.0.1:9/fapi/v3/account") == 5


def test_cheaper_open_orders_shape_by_symbol_count():
    assert per_symbol_is_cheaper(13, "api") and not per_symbol_is_cheaper(14, "api")
    assert per_symbol_is_cheaper(40, "fapi") and not per_symbol_is_cheaper(41, "fapi")
    assert cheapest_open_orders_weight(1, "api") == 6 and cheapest_open_orders_weight(200, "api") == 80


def test_budget_spends_and_waits_for_the_next_window():
    clock = Clock(6000.0)
    b = RateBudget(key="h/api", limit=100, safety=1.0, clock=clock)
    assert b.try_spend(60) == 0 and b.used == 60
    delay = b.try_spend(60)                       # would exceed: wait for the window to roll
    assert 0 < delay <= 60.05 and b.used == 60
    clock.t += delay
    assert b.try_spend(60) == 0 and b.used == 60  # new window
    assert b.counters.weight_spent == 120


def test_budget_follows_the_venue_counter_and_rate_limits():
    clock = Clock()
    b = RateBudget(key="h/api", limit=6000, clock=clock)
    b.try_spend(20)
    b.observe(200, {"X-MBX-USED-WEIGHT-1M": "5000"}, b.window())
    assert b.used == 5000                        # other clients on the same IP count too
    b.observe(200, {"x-mbx-used-weight-1m": "10"}, b.window())
    assert b.used == 5000                        # never lowered within a window
    b.apply_rate_limits([{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                         {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100}])
    assert b.limit == 1200


async def test_nothing_is_sent_inside_retry_after():
    clock = Clock()
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        clock.t += s

    b = RateBudget(key="h/api", clock=clock, sleep=sleep, max_wait_s=10)
    assert b.observe(429, {"Retry-After": "3"}) == 3.0
    assert b.try_spend(1) == pytest.approx(3.0)
    await b.acquire(1)                            # waits the Retry-After out, then spends
    assert sum(slept) == pytest.approx(3.0) and b.counters.waits == 1
    b.observe(418, {"Retry-After": "120"})
    with pytest.raises(RateLimited) as info:      # longer than max_wait: refused without sending
        await b.acquire(1)
    assert info.value.retry_after == pytest.approx(120.0) and b.counters.rejected == 1


def test_budgets_are_per_egress_and_shared():
    budgets = RateBudgets()
    a = budgets.for_url("https://api.binance.com/api/v3/account?x=1")
    assert budgets.for_url("https://api.binance.com/api/v3/openOrders") is a
    assert budgets.for_url("https://fapi.binance.com/fapi/v1/openOrders") is not a
    assert budgets.for_url("https://fapi.binance.com/fapi/v1/openOrders").limit == 2400


def test_jittered_offsets_are_stable_and_spread():
    offsets = [jittered_offset(f"ns/account-{i}", 300) for i in range(200)]
    assert offsets[0] == jittered_offset("ns/account-0", 300)
    assert all(0 <= o < 300 for o in offsets)
    buckets = {int(o // 30) for o in offsets}
    assert len(buckets) == 10                     # every tenth of the interval is used


def test_backoff_is_capped_and_jittered():
    assert backoff_delay(0, base=1, cap=30, rng=lambda: 0.0) == 0.5
    assert backoff_delay(20, base=1, cap=30, rng=lambda: 1.0) == 30
    assert backoff_delay(3, base=1, cap=30, rng=lambda: 0.5) == pytest.approx(6.0)


# ---- translation of real captured Binance responses (ccxt's static fixtures) -----------------------

@pytest.fixture(scope="module")
def static_cases():
    return json.loads(STATIC.read_text())["methods"]


def test_spot_open_orders_translate(static_cases):
    raw = static_cases["fetchOpenOrders"][0]["parsedResponse"][0]
    o = order_from_ccxt(raw)
    assert (o.exchange_order_id, o.client_order_id, o.symbol) == ("3811057334", raw["clientOrderId"], "LTC/USDT")
    assert o.side is Side.BUY and o.type == "limit_maker" and o.state is OrderState.OPEN
    assert o.price == Decimal("50") and o.amount == Decimal("0.2") and o.filled == 0
    assert o.created_ms == 1699380855570 and o.updated_ms == 1699380855570


def test_filled_order_translates(static_cases):
    o = order_from_ccxt(static_cases["fetchOrder"][0]["parsedResponse"])
    assert o.state is OrderState.FILLED and o.side is Side.SELL and o.filled == o.amount == Decimal("0.1")


def test_spot_balance_translates(static_cases):
    bal = balances_from_ccxt(static_cases["fetchBalance"][0]["parsedResponse"])
    assert bal["LTC"].free == Decimal("0.919741") and bal["LTC"].locked == 0
    assert bal["LTC"].updated_ms == 1701856395927


def test_linear_positions_translate(static_cases):
    raw = static_cases["fetchPositions"][0]["parsedResponse"]
    pos = positions_from_ccxt(raw)
    assert [(p.symbol, p.amount) for p in pos] == [("BTC/USDT:USDT", Decimal("0.009"))]
    assert pos[0].entry_price == Decimal("67445.9") and pos[0].updated_ms == 1722161166529
    assert positions_from_ccxt(raw, ["ETH/USDT:USDT"]) == []


def test_cancel_answer_keeps_the_orders_own_client_order_id():
    """Binance answers a cancel with the cancel request's clientOrderId; the order's is origClientOrderId."""
    from tradewarden.gateway.translate import order_from_ccxt
    raw = {"id": "42", "clientOrderId": "web_cancel_x1", "symbol": "BTC/USDT", "side": "buy", "amount": 1,
           "filled": 0, "price": 10, "status": "canceled",
           "info": {"orderId": 42, "clientOrderId": "web_cancel_x1", "origClientOrderId": "tw-abc", "status": "CANCELED"}}
    order = order_from_ccxt(raw)
    assert order.client_order_id == "tw-abc" and order.exchange_order_id == "42"


@pytest.mark.parametrize("exchange, outcome", [
    ("kraken", None),                                   # ccxt declares every capability tradewarden needs
    ("okx", None),
    ("coinbase", "unsupported: watchBalance"),
    ("zaif", "unsupported: fetchOrder"),
    ("btcmarkets", "unsupported: watchOrders"),
    ("paymium", "unsupported: fetchOpenOrders"),
])
def test_other_exchanges_by_declared_capability(exchange, outcome):
    """Exchanges beyond Binance work where ccxt (pinned) declares the needed capabilities, and fail at
    construction with "unsupported: <capability>" otherwise."""
    from tradewarden.gateway import create_gateway
    if outcome is None:
        gw = create_gateway(exchange, "key-not-used", "secret-not-used")
        assert gw.exchange_id == exchange and "secret-not-used" not in repr(gw)
    else:
        with pytest.raises(Unsupported, match=f"^{outcome}"):
            create_gateway(exchange, "key-not-used", "secret-not-used")


def test_unknown_exchange_is_invalid():
    from tradewarden.gateway import create_gateway
    with pytest.raises(Invalid, match="unknown exchange: nosuchexchange"):
        create_gateway("nosuchexchange", "k", "s")


async def test_secrets_stay_scrubbed_while_any_gateway_uses_them():
    """Two accounts may share one Secret: closing one gateway keeps the other's credentials scrubbed;
    a gateway that failed to construct leaves nothing registered."""
    from tradewarden.gateway import create_gateway
    from tradewarden.gateway import exchanges as exm
    key, secret = "shared-key-" + "k" * 20, "shared-secret-" + "s" * 40
    a = create_gateway("binance", key, secret, "http://127.0.0.1:9")
    b = create_gateway("binance", key, secret, "http://127.0.0.1:9")
    await a.close()
    assert secret in exm._FILTER.secrets and key in exm._FILTER.secrets
    await b.close()
    assert secret not in exm._FILTER.secrets and key not in exm._FILTER.secrets
    with pytest.raises(Unsupported):
        create_gateway("coinbase", "failed-" + key, "failed-" + secret)
    assert "failed-" + secret not in exm._FILTER.secrets


def test_the_ccxt_gateway_is_the_whole_domain_gateway():
    """The controller and the service call nothing past domain.Gateway: the ccxt gateway has all of it."""
    from tradewarden.domain import Gateway
    from tradewarden.gateway import create_gateway

    gw = create_gateway("binanceusdm", "k" * 16, "s" * 16)
    try:
        assert isinstance(gw, Gateway)
        assert gw.futures and gw.rest_family == "fapi" and gw.exchange_id == "binanceusdm"
    finally:
        import asyncio
        asyncio.run(gw.close())


# ---- spot executionReport read from Binance's own fields == ccxt's reading --------------------------

# user-data-stream.md "Order Update" (the documented example), and the same order through its lifecycle
_REPORT = {"e": "executionReport", "E": 1499405658658, "s": "ETHBTC", "c": "mUvoqJxFIILMdfAW5iGSOW", "S": "BUY",
           "o": "LIMIT", "f": "GTC", "q": "1.00000000", "p": "0.10264410", "P": "0.00000000", "F": "0.00000000",
           "g": -1, "C": "", "x": "NEW", "X": "NEW", "r": "NONE", "i": 4293153, "l": "0.00000000",
           "z": "0.00000000", "L": "0.00000000", "n": "0", "N": None, "T": 1499405658657, "t": -1, "I": 8641984,
           "w": True, "m": False, "M": False, "O": 1499405658657, "Z": "0.00000000", "Y": "0.00000000",
           "Q": "0.00000000", "W": 1499405658657, "V": "NONE"}
_REPORTS = {
    "new": {},
    "partially filled": {"x": "TRADE", "X": "PARTIALLY_FILLED", "z": "0.40000000", "l": "0.40000000",
                         "L": "0.10264410", "T": 1499405660000, "E": 1499405660001, "t": 77},
    "filled, sell": {"S": "SELL", "x": "TRADE", "X": "FILLED", "z": "1.00000000", "T": 1499405661000},
    "cancelled: C is the order's own id": {"x": "CANCELED", "X": "CANCELED", "c": "cancel-request-id",
                                          "C": "mUvoqJxFIILMdfAW5iGSOW", "T": 1499405662000},
    "cancelled, no creation time": {"x": "CANCELED", "X": "CANCELED", "O": None, "T": 1499405662000},
    "trade, no creation time": {"x": "TRADE", "X": "PARTIALLY_FILLED", "O": None, "z": "0.1"},
    "expired": {"x": "EXPIRED", "X": "EXPIRED", "T": 1499405663000},
    "expired in match": {"x": "TRADE_PREVENTION", "X": "EXPIRED_IN_MATCH"},
    "limit maker": {"o": "LIMIT_MAKER"},
    "stop loss limit": {"o": "STOP_LOSS_LIMIT", "P": "0.09"},
    "no transaction time": {"T": None},
    "zero price, limit": {"p": "0.00000000"},
    "no client order id": {"c": "", "C": ""},
}


@pytest.fixture(scope="module")
def spot_pro():
    import ccxt.pro

    pro = ccxt.pro.binance()
    pro.set_markets([{"id": mid, "symbol": sym, "base": sym.split("/")[0], "quote": sym.split("/")[1],
                      "baseId": sym.split("/")[0], "quoteId": sym.split("/")[1], "type": "spot", "spot": True,
                      "active": True, "precision": {}, "limits": {}}
                     for mid, sym in (("ETHBTC", "ETH/BTC"), ("BTCUSDT", "BTC/USDT"))])
    return pro


def _known(pro):
    from tradewarden.gateway.stream import UserDataStream

    return lambda market_id: UserDataStream._spot_symbol(pro, market_id)     # what the stream passes


@pytest.mark.parametrize("case", sorted(_REPORTS))
def test_execution_report_reads_as_ccxt_reads_it(spot_pro, case):
    from tradewarden.gateway.translate import order_from_execution_report

    report = {**_REPORT, **_REPORTS[case]}
    report = {k: v for k, v in report.items() if v is not None or k == "N"}
    ours = order_from_execution_report(report, _known(spot_pro))
    assert ours is not None
    # equal, and printed alike (Decimal("0.00400000") == Decimal("0.004"), but status shows the text)
    assert repr(ours) == repr(order_from_ccxt(spot_pro.parse_ws_order(dict(report))))


def test_execution_reports_only_ccxt_reads_right_fall_back(spot_pro, static_cases):
    from tradewarden.gateway.translate import order_from_execution_report

    ws = json.loads(STATIC.with_name("ws-binance.json").read_text())["methods"]
    captured = [m["event"] for case in ws["watchOrders"] for m in case["messages"]
                if isinstance(m, dict) and isinstance(m.get("event"), dict) and m["event"].get("e") == "executionReport"]
    assert captured and all(r["o"] == "MARKET" for r in captured)
    for r in captured:   # ccxt reports a MARKET order's price as its average fill
        assert order_from_execution_report(r, _known(spot_pro)) is None
    assert order_from_execution_report({**_REPORT, "s": "NOPEBTC"}, _known(spot_pro)) is None
    assert order_from_execution_report({**_REPORT, "X": "SOMETHING_NEW"}, _known(spot_pro)) is None
    assert order_from_execution_report({**_REPORT, "ps": "BOTH"}, _known(spot_pro)) is None

@pytest.mark.parametrize("waited, url, body, want", [
    (0.0, "http://x/api/v3/account?timestamp=1&signature=ab", None, False),       # no wait: as signed
    (3.0, "http://x/api/v3/account?timestamp=1&signature=ab", None, True),        # waited, signed in the URL
    (3.0, "http://x/api/v3/order", "symbol=BTCUSDT&timestamp=1&signature=ab", True),   # signed in the body
    (3.0, "http://x/api/v3/exchangeInfo", None, False),                           # public: nothing to renew
])
def test_resign_after_wait(waited, url, body, want):
    from tradewarden.gateway.exchanges import resign_after_wait
    assert resign_after_wait(waited, url, body) is want


@pytest.mark.parametrize("instance, agent, back", [
    ("replica-0-3fa2c1", "tradewarden (replica-0-3fa2c1)", "replica-0-3fa2c1"),
    (None, "tradewarden", None),                                   # unnamed: the product alone
    ("", "tradewarden", None),
    ("pod 1/(x)\r\nX-Evil: y", "tradewarden (pod1xX-Evily)", "pod1xX-Evily"),   # nothing a header may not carry
])
def test_user_agent_names_the_instance(instance, agent, back):
    from tradewarden.gateway.identity import instance_of, user_agent
    assert user_agent(instance) == agent
    assert instance_of(agent) == back


def test_instance_of_ignores_other_clients():
    from tradewarden.gateway.identity import instance_of
    assert instance_of("Python/3.11 aiohttp/3.9.5") is None and instance_of(None) is None


async def test_within_does_not_count_the_wait_for_the_budget():
    """A start that queued 50 s for the IP's weight (credited by the budget, slept here for 0.3 s) is no
    hang; a coroutine that hangs still times out, and wait_for would have timed the first one out too."""
    import asyncio
    from tradewarden.gateway.budget import within

    budget = RateBudget(key="h/api", limit=100, safety=1.0, max_wait_s=120.0, clock=lambda: 30.0)

    async def nap(_delay: float) -> None:
        budget._window, budget._used, budget._own = budget.window(), 0, 0   # the window rolled
        await asyncio.sleep(0.3)
    budget.sleep = nap

    async def start() -> str:
        budget._roll()
        budget._used = budget._own = 100       # the window is spent: the next request waits (30 s)
        await budget.acquire(20)
        return "started"

    assert await within(start(), 0.1) == "started"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(start(), 0.1)
    with pytest.raises(asyncio.TimeoutError):
        await within(asyncio.sleep(10), 0.1)
    with pytest.raises(ValueError):
        await within(_raise(), 1.0)


async def _raise() -> None:
    raise ValueError("the work's own error passes through")
