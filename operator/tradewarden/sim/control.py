"""The ``/sim/v1`` control API: a stable JSON contract for tests, demos and users (see docs/simulator.md)."""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from .engine import SPOT, USDM, VENUES, AlgoOrder, Account, Order, SimError, fplain
from .wire import json_response

if TYPE_CHECKING:
    from .server import Simulator

ControlHandler = Callable[["Simulator", web.Request, dict, dict], Awaitable[Any]]


def _json(data: Any, status: int = 200) -> web.Response:
    return json_response(data, status=status)


def order_json(o: Order) -> dict[str, Any]:
    return {"venue": o.venue, "symbol": o.symbol, "orderId": o.order_id, "clientOrderId": o.client_order_id,
            "origClientOrderId": o.orig_client_order_id, "side": o.side, "type": o.type,
            "timeInForce": o.time_in_force, "price": fplain(o.price),
            "origQty": fplain(o.orig_qty), "executedQty": fplain(o.executed_qty),
            "cumQuote": fplain(o.cum_quote), "status": o.status, "reduceOnly": o.reduce_only,
            "time": o.time, "updateTime": o.update_time}


def algo_json(a: AlgoOrder) -> dict[str, Any]:
    return {"venue": USDM, "symbol": a.symbol, "algoId": a.algo_id, "clientAlgoId": a.client_algo_id,
            "side": a.side, "type": a.order_type, "quantity": fplain(a.quantity),
            "triggerPrice": fplain(a.trigger_price), "price": fplain(a.price), "status": a.status,
            "reduceOnly": a.reduce_only, "closePosition": a.close_position, "positionSide": a.position_side,
            "actualOrderId": str(a.order_id) if a.order_id else "", "time": a.create_time,
            "updateTime": a.update_time}


def account_json(sim: "Simulator", a: Account) -> dict[str, Any]:
    fig = sim.exchange.usdm_figures(a)
    positions = []
    for p in a.open_positions():
        mark = sim.exchange.markets[USDM][p.symbol].price
        positions.append({"symbol": p.symbol, "positionSide": p.side, "positionAmt": fplain(p.amount),
                          "entryPrice": fplain(p.entry_price), "markPrice": fplain(mark),
                          "unrealizedProfit": fplain(p.amount * (mark - p.entry_price)),
                          "liquidationPrice": fplain(sim.exchange.liquidation_price(a, p.symbol)),
                          "leverage": a.lev(p.symbol)})
    return {
        "apiKey": a.api_key,
        "balances": {asset: {"free": fplain(b[0]), "locked": fplain(b[1])} for asset, b in a.spot.items()},
        "futuresBalances": {asset: {"walletBalance": fplain(w),
                                    "availableBalance": fplain(fig["available"] if asset == "USDT" else w)}
                            for asset, w in a.wallet.items()},
        "openOrders": [order_json(o) for v in VENUES for o in a.open_orders(v)],
        "openAlgoOrders": [algo_json(x) for book in a.algo_open.values() for x in book.values()],
        "positions": positions,
        "dualSidePosition": a.dual_side,
        "deliver": a.deliver,
    }


def _need(body: dict, name: str, kind: type | tuple = str) -> Any:
    v = body.get(name)
    if v is None or (isinstance(v, str) and not v):
        raise SimError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    if not isinstance(v, kind):
        raise SimError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return v


def _client_id(body: dict) -> str | None:
    """``clientOrderId`` (or Binance's own name, ``newClientOrderId``)."""
    v = body.get("clientOrderId", body.get("newClientOrderId"))
    return None if v is None else str(v)


def _acct(sim: "Simulator", key: str) -> Account:
    a = sim.exchange.account(key)
    if a is None:
        raise SimError(-2015, "Invalid API-key, IP, or permissions for action.", status=404)
    return a


def _venue(body: dict) -> str | None:
    v = body.get("venue")
    if v is None:
        return None
    if v not in VENUES:
        raise SimError(-1130, "Data sent for parameter 'venue' is not valid (spot or usdm).")
    return v


def _str_amounts(d: Any, name: str) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
        raise SimError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return d


async def create_account(sim, request, m, body):
    key = _need(body, "apiKey")
    secret = _need(body, "secret")
    if sim.exchange.account(key) is not None:
        raise SimError(-1130, "An account with this apiKey already exists.", status=409)
    a = sim.add_account(key, secret, _str_amounts(body.get("balances"), "balances"),
                        _str_amounts(body.get("futuresBalances"), "futuresBalances"))
    return account_json(sim, a), 201


async def get_account(sim, request, m, body):
    return account_json(sim, _acct(sim, m["key"]))


async def set_price(sim, request, m, body):
    venue = _venue(body)
    touched = sim.set_price(m["symbol"].upper(), _need(body, "price", (str, int, float)),
                            body.get("quantity"), venue=venue)
    return {"symbol": m["symbol"].upper(), "price": str(body["price"]), "filled": [order_json(o) for o in touched]}


async def place_order(sim, request, m, body):
    a = _acct(sim, m["key"])
    venue = _venue(body) or SPOT
    otype = str(body.get("type") or "LIMIT").upper()
    if venue == USDM and otype in ("STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT"):
        a = sim.exchange.place_algo(a, symbol=str(_need(body, "symbol")).upper(), side=body.get("side"),
                                    order_type=otype, quantity=body.get("quantity"),
                                    trigger_price=body.get("triggerPrice"), price=body.get("price"),
                                    time_in_force=body.get("timeInForce"), client_algo_id=_client_id(body),
                                    reduce_only=bool(body.get("reduceOnly", False)),
                                    position_side=body.get("positionSide"),
                                    close_position=bool(body.get("closePosition", False)))
        return algo_json(a), 201
    tif = body.get("timeInForce") or ("GTC" if otype == "LIMIT" else None)
    created = body.get("time")
    if created is not None and (isinstance(created, bool) or not isinstance(created, int) or created < 0):
        raise SimError(-1130, "Data sent for parameter 'time' is not valid.")
    o = sim.exchange.place_order(a, venue, symbol=str(_need(body, "symbol")).upper(), side=body.get("side"),
                                 type=otype, quantity=body.get("quantity"), price=body.get("price"),
                                 time_in_force=tif, client_order_id=_client_id(body),
                                 reduce_only=bool(body.get("reduceOnly", False)), created_ms=created,
                                 position_side=body.get("positionSide") if venue == USDM else None)
    return order_json(o), 201


async def list_orders(sim, request, m, body):
    """Every order of the account (open and finished), oldest first; ``?venue=spot|usdm`` filters."""
    a = _acct(sim, m["key"])
    venue = _venue(dict(request.query))
    return [order_json(o) for v in ([venue] if venue else VENUES) for o in a.orders[v].values()]


def _order(a: Account, order_id: str, venue: str | None) -> Order:
    try:
        oid = int(order_id)
    except ValueError:
        raise SimError(-1100, "Illegal characters found in parameter 'orderId'.") from None
    for v in ([venue] if venue else VENUES):
        o = a.orders[v].get(oid)
        if o is not None:
            return o
    raise SimError(-2013, "Order does not exist.", status=404)


async def cancel_order(sim, request, m, body):
    a = _acct(sim, m["key"])
    algo = a.algo.get(int(m["orderId"])) if m["orderId"].isdigit() else None
    if algo is not None:
        sim.exchange.cancel_algo(algo)
        return algo_json(algo)
    o = _order(a, m["orderId"], _venue(body))
    if not o.is_open:
        raise SimError(-2011, "Unknown order sent.")
    sim.exchange._cancel(o)
    return order_json(o)


async def fill_order(sim, request, m, body):
    a = _acct(sim, m["key"])
    o = _order(a, m["orderId"], _venue(body))
    sim.exchange.fill(a, o.venue, o.order_id, body.get("quantity"), body.get("price"))
    return order_json(o)


async def balances(sim, request, m, body):
    a = _acct(sim, m["key"])
    venue = _venue(body) or SPOT
    sim.exchange.adjust_balance(a, str(_need(body, "asset")), _need(body, "delta", (str, int, float)), venue)
    return account_json(sim, a)


async def stream(sim, request, m, body):
    a = _acct(sim, m["key"])
    deliver = body.get("deliver")
    if not isinstance(deliver, bool):
        raise SimError(-1102, "Mandatory parameter 'deliver' was not sent, was empty/null, or malformed.")
    a.deliver = deliver
    return {"apiKey": a.api_key, "deliver": a.deliver}


async def drop(sim, request, m, body):
    n = await sim.drop_streams(abort=bool(body.get("abort", False)))
    return {"dropped": n}


async def expire(sim, request, m, body):
    key = body.get("apiKey")
    return {"expired": sim.expire_listen_keys(key if isinstance(key, str) else None)}


async def add_fault(sim, request, m, body):
    def opt_int(name: str) -> int | None:
        v = body.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise SimError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        return v
    status = opt_int("status")
    if status is not None and not 100 <= status <= 599:
        raise SimError(-1130, "Data sent for parameter 'status' is not valid.")
    f = sim.add_fault(method=body.get("method"), path=str(body.get("path") or "*"), status=status,
                      code=opt_int("code"), msg=body.get("msg"), latency_ms=opt_int("latencyMs") or 0,
                      retry_after=opt_int("retryAfter"), count=opt_int("count"),
                      processed=bool(body.get("processed", False)), body=body.get("body"))
    return f.to_json(), 201


async def list_faults(sim, request, m, body):
    return [f.to_json() for f in sim.faults]


async def clear_faults(sim, request, m, body):
    n = len(sim.faults)
    sim.clear_faults()
    return {"cleared": n}


async def clock(sim, request, m, body):
    off = body.get("offsetMs")
    if isinstance(off, bool) or not isinstance(off, int):
        raise SimError(-1102, "Mandatory parameter 'offsetMs' was not sent, was empty/null, or malformed.")
    sim.set_clock_offset(off)
    return {"offsetMs": sim.clock_offset_ms, "serverTime": sim.now_ms()}


async def limits(sim, request, m, body):
    for name in ("spotWeight", "futuresWeight", "spotOrders10s", "futuresOrders1m", "banSeconds"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise SimError(-1130, f"Data sent for parameter '{name}' is not valid.")
    sim.set_limits(body.get("spotWeight"), body.get("futuresWeight"), body.get("spotOrders10s"),
                   body.get("futuresOrders1m"), body.get("banSeconds"))
    return {"spotWeight": sim.limits[SPOT], "futuresWeight": sim.limits[USDM],
            "spotOrders10s": sim.order_limits[SPOT], "futuresOrders1m": sim.order_limits[USDM],
            "banSeconds": sim.ban_s}


async def requests_log(sim, request, m, body):
    rows = sim.requests()
    q = request.query
    if q.get("key"):
        rows = [r for r in rows if r.get("key") == q["key"]]
    if q.get("path"):
        rows = [r for r in rows if r["path"] == q["path"]]
    if q.get("since"):
        try:
            since = int(q["since"])
        except ValueError:
            raise SimError(-1100, "Illegal characters found in parameter 'since'.") from None
        rows = [r for r in rows if r["time"] >= since]
    return rows


async def drain_requests(sim, request, m, body):
    """The request log, emptied in the same step (no row is seen twice or missed between a read and a clear)."""
    rows = sim.requests()
    sim.request_log.clear()
    return rows


async def reset(sim, request, m, body):
    await sim.reset()
    return {"reset": True}


async def markets(sim, request, m, body):
    return {v: {s: {"price": fplain(mk.price), "base": mk.base, "quote": mk.quote}
                for s, mk in sim.exchange.markets[v].items()} for v in VENUES}


async def add_market(sim, request, m, body):
    symbol = str(_need(body, "symbol")).upper()
    kw = {k: body[k] for k in ("base", "quote", "price", "tick", "step") if k in body}
    if "futuresStep" in body:
        kw["futures_step"] = body["futuresStep"]
    try:
        sim.add_market(symbol, **kw)
    except ValueError as e:
        raise SimError(-1130, str(e)) from None
    return {"symbol": symbol}, 201


def routes(sim: "Simulator") -> list[tuple[str, re.Pattern, ControlHandler]]:
    table = [
        ("POST", r"/sim/v1/accounts", create_account),
        ("GET", r"/sim/v1/accounts/(?P<key>[^/]+)", get_account),
        ("POST", r"/sim/v1/accounts/(?P<key>[^/]+)/orders", place_order),
        ("GET", r"/sim/v1/accounts/(?P<key>[^/]+)/orders", list_orders),
        ("POST", r"/sim/v1/accounts/(?P<key>[^/]+)/orders/(?P<orderId>[^/]+)/cancel", cancel_order),
        ("POST", r"/sim/v1/accounts/(?P<key>[^/]+)/orders/(?P<orderId>[^/]+)/fill", fill_order),
        ("POST", r"/sim/v1/accounts/(?P<key>[^/]+)/balances", balances),
        ("POST", r"/sim/v1/accounts/(?P<key>[^/]+)/stream", stream),
        ("GET", r"/sim/v1/markets", markets),
        ("POST", r"/sim/v1/markets", add_market),
        ("POST", r"/sim/v1/markets/(?P<symbol>[^/]+)/price", set_price),
        ("POST", r"/sim/v1/streams/drop", drop),
        ("POST", r"/sim/v1/listen-keys/expire", expire),
        ("POST", r"/sim/v1/faults", add_fault),
        ("GET", r"/sim/v1/faults", list_faults),
        ("DELETE", r"/sim/v1/faults", clear_faults),
        ("POST", r"/sim/v1/clock", clock),
        ("POST", r"/sim/v1/limits", limits),
        ("GET", r"/sim/v1/requests", requests_log),
        ("DELETE", r"/sim/v1/requests", drain_requests),
        ("POST", r"/sim/v1/reset", reset),
    ]
    return [(method, re.compile(pattern + r"/?$"), handler) for method, pattern, handler in table]


async def dispatch(sim: "Simulator", request: web.Request) -> web.StreamResponse:
    if not sim.control:
        return _json({"code": -1000, "msg": f"Unknown path: {request.method} {request.path}"}, status=404)
    path_matched = False
    for method, pattern, handler in sim._control_routes:
        m = pattern.match(request.path)
        if m is None:
            continue
        path_matched = True
        if method != request.method:
            continue
        body: dict = {}
        if request.method in ("POST", "PUT", "DELETE") and request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    return _json({"code": -1102, "msg": "Request body must be a JSON object."}, status=400)
                if not isinstance(body, dict):
                    return _json({"code": -1102, "msg": "Request body must be a JSON object."}, status=400)
        try:
            result = await handler(sim, request, m.groupdict(), body)
        except SimError as e:
            return _json(e.body(), status=e.status)
        except (KeyError, ValueError) as e:
            return _json({"code": -1130, "msg": f"Invalid data: {e}"}, status=400)
        if isinstance(result, tuple):
            return _json(result[0], status=result[1])
        return _json(result)
    if path_matched:
        return _json({"code": -1000, "msg": f"Method {request.method} is not allowed on {request.path}"}, status=405)
    return _json({"code": -1000, "msg": f"Unknown path: {request.method} {request.path}"}, status=404)
