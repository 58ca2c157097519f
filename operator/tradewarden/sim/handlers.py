"""Binance REST endpoints (spot ``/api/v3`` and USD-M ``/fapi``): shapes as the real exchange answers them."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .wire import RawJSON, Route
from .engine import (MAINT_MARGIN_RATE, AlgoOrder, SPOT, USDM, ZERO, Account, Market, Order, SimError, Trade, f8, fplain,
                     unknown_order)

if TYPE_CHECKING:
    from .server import Simulator
    from .wire import Request


# ---- formatting -------------------------------------------------------------------------------


def _dump(row: dict) -> str:
    return json.dumps(row, separators=(",", ":"))


def cached_list(orders: list[Order], shape: Any) -> RawJSON:
    parts = []
    for o in orders:
        text = o.cache
        if text is None:
            text = o.cache = _dump(shape(o))
        parts.append(text)
    return RawJSON("[" + ",".join(parts) + "]")


def spot_order(o: Order) -> dict[str, Any]:
    return {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1, "clientOrderId": o.client_order_id,
            "price": f8(o.price), "origQty": f8(o.orig_qty), "executedQty": f8(o.executed_qty),
            "cummulativeQuoteQty": f8(o.cum_quote), "status": o.status, "timeInForce": o.time_in_force,
            "type": o.type, "side": o.side, "stopPrice": "0.00000000", "icebergQty": "0.00000000",
            "time": o.time, "updateTime": o.update_time, "isWorking": True, "workingTime": o.working_time,
            "origQuoteOrderQty": f8(o.orig_quote_qty), "selfTradePreventionMode": "EXPIRE_MAKER"}


def spot_new_order(o: Order, resp_type: str) -> dict[str, Any]:
    out: dict[str, Any] = {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1,
                           "clientOrderId": o.client_order_id, "transactTime": o.time}
    if resp_type == "ACK":
        return out
    out.update({"price": f8(o.price), "origQty": f8(o.orig_qty), "executedQty": f8(o.executed_qty),
                "origQuoteOrderQty": f8(o.orig_quote_qty), "cummulativeQuoteQty": f8(o.cum_quote),
                "status": o.status, "timeInForce": o.time_in_force, "type": o.type, "side": o.side,
                "workingTime": o.working_time, "selfTradePreventionMode": "EXPIRE_MAKER"})
    if resp_type == "FULL":
        out["fills"] = [{"price": f8(t.price), "qty": f8(t.qty), "commission": f8(t.commission),
                         "commissionAsset": t.commission_asset, "tradeId": t.trade_id} for t in o.fills]
    return out


def spot_cancelled(o: Order) -> dict[str, Any]:
    return {"symbol": o.symbol, "origClientOrderId": o.orig_client_order_id or o.client_order_id,
            "orderId": o.order_id, "orderListId": -1, "clientOrderId": o.cancel_client_id or o.client_order_id,
            "transactTime": o.update_time, "price": f8(o.price), "origQty": f8(o.orig_qty),
            "executedQty": f8(o.executed_qty), "origQuoteOrderQty": f8(o.orig_quote_qty),
            "cummulativeQuoteQty": f8(o.cum_quote), "status": o.status, "timeInForce": o.time_in_force,
            "type": o.type, "side": o.side, "selfTradePreventionMode": "EXPIRE_MAKER"}


def spot_trade(t: Trade) -> dict[str, Any]:
    return {"symbol": t.symbol, "id": t.trade_id, "orderId": t.order_id, "orderListId": -1, "price": f8(t.price),
            "qty": f8(t.qty), "quoteQty": f8(t.quote_qty), "commission": f8(t.commission),
            "commissionAsset": t.commission_asset, "time": t.time, "isBuyer": t.side == "BUY", "isMaker": t.maker,
            "isBestMatch": True}


def usdm_order(o: Order, m: Market, with_time: bool = True) -> dict[str, Any]:
    pp, qp = m.price_places, m.qty_places
    out = {"orderId": o.order_id, "symbol": o.symbol, "status": o.status, "clientOrderId": o.client_order_id,
           "price": fplain(o.price, pp), "avgPrice": fplain(o.avg_price, 5), "origQty": fplain(o.orig_qty, qp),
           "executedQty": fplain(o.executed_qty, qp), "cumQty": fplain(o.executed_qty, qp),
           "cumQuote": fplain(o.cum_quote, 5), "timeInForce": o.time_in_force, "type": o.type,
           "reduceOnly": o.reduce_only, "closePosition": False, "side": o.side, "positionSide": o.position_side,
           "stopPrice": fplain(ZERO, pp), "workingType": "CONTRACT_PRICE", "priceProtect": False,
           "origType": o.type, "priceMatch": "NONE", "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0}
    if with_time:   # GET shapes (order, openOrder, openOrders) carry time and no cumQty
        del out["cumQty"]
        out["time"] = o.time
    out["updateTime"] = o.update_time
    return out


def usdm_trade(t: Trade, m: Market, position_side: str = "BOTH") -> dict[str, Any]:
    """Keys as ``examples/GET_fapi_v1_userTrades.sdk-2026-08.json`` (the 2026-08 shape: baseQty, pair)."""
    return {"buyer": t.side == "BUY", "commission": fplain(t.commission, 8), "commissionAsset": t.commission_asset,
            "id": t.trade_id, "maker": t.maker, "orderId": t.order_id, "price": fplain(t.price, m.price_places),
            "qty": fplain(t.qty, m.qty_places), "quoteQty": fplain(t.quote_qty, 5),
            "baseQty": fplain(t.qty, m.qty_places), "marginAsset": "USDT", "realizedPnl": fplain(t.realized_pnl, 8),
            "side": t.side, "positionSide": position_side, "symbol": t.symbol, "pair": t.symbol, "time": t.time}


# ---- parameters -------------------------------------------------------------------------------

def _int_param(params: dict, name: str, default: int | None = None, lo: int = 0, hi: int = 2**63 - 1) -> int | None:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        v = int(raw)
    except ValueError:
        raise SimError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.") \
            from None
    if v < lo or v > hi:
        raise SimError(-1130, f"Data sent for parameter '{name}' is not valid.")
    return v


def _symbol(req: "Request", required: bool = True) -> Market | None:
    s = req.params.get("symbol")
    if not s:
        if required:
            raise SimError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        return None
    return req.sim.exchange.market(req.venue, s)


def _find(req: "Request", m: Market, cancel: bool = False) -> Order:
    acct = req.account
    assert acct is not None
    oid = req.sim.exchange._parse_order_id(req.params.get("orderId"))
    cid = req.params.get("origClientOrderId")
    if oid is None and not cid:
        raise SimError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
    o = acct.find(req.venue, m.symbol, oid, cid)
    if o is None:
        raise unknown_order(cancel)
    return o


# ---- exchangeInfo -----------------------------------------------------------------------------

def spot_symbol_info(m: Market) -> dict[str, Any]:
    return {
        "symbol": m.symbol, "status": "TRADING", "baseAsset": m.base, "baseAssetPrecision": 8,
        "quoteAsset": m.quote, "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
                       "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True, "cancelReplaceAllowed": True, "amendAllowed": True, "pegInstructionsAllowed": True,
        "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": f8(m.min_price), "maxPrice": f8(m.max_price),
             "tickSize": f8(m.tick)},
            {"filterType": "LOT_SIZE", "minQty": f8(m.min_qty), "maxQty": f8(m.max_qty), "stepSize": f8(m.step)},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": f8(m.max_qty / 100),
             "stepSize": "0.00000000"},
            {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
             "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
            {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
             "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
            {"filterType": "NOTIONAL", "minNotional": f8(m.min_notional), "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": m.max_num_orders},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [], "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT"],
    }


def usdm_symbol_info(m: Market) -> dict[str, Any]:
    return {
        "symbol": m.symbol, "pair": m.symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000", "baseAsset": m.base, "quoteAsset": m.quote, "marginAsset": m.quote,
        "pricePrecision": m.price_places, "quantityPrecision": m.qty_places, "baseAssetPrecision": 8,
        "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [], "triggerProtect": "0.0500",
        "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": fplain(m.min_price), "maxPrice": fplain(m.max_price),
             "tickSize": fplain(m.tick)},
            {"filterType": "LOT_SIZE", "stepSize": fplain(m.step), "maxQty": fplain(m.max_qty),
             "minQty": fplain(m.min_qty)},
            {"filterType": "MARKET_LOT_SIZE", "stepSize": fplain(m.step), "maxQty": fplain(m.max_qty / 10),
             "minQty": fplain(m.min_qty)},
            {"filterType": "MAX_NUM_ORDERS", "limit": m.max_num_orders},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": fplain(m.min_notional)},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
             "multiplierDecimal": "4"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                       "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"], "permissionSets": ["GRID", "COPY"],
    }


# ---- spot handlers ----------------------------------------------------------------------------

async def ping(req: "Request") -> Any:
    return {}


async def server_time(req: "Request") -> Any:
    return {"serverTime": req.sim.now_ms()}


async def spot_exchange_info(req: "Request") -> Any:
    markets = req.sim.exchange.markets[SPOT]
    wanted = _wanted_symbols(req, markets)
    sim = req.sim
    return {"timezone": "UTC", "serverTime": sim.now_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": sim.limits[SPOT]},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
                 "limit": sim.order_limits[SPOT]},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000}],
            "exchangeFilters": [],
            "symbols": [spot_symbol_info(markets[s]) for s in wanted]}


def _wanted_symbols(req: "Request", markets: dict[str, Market]) -> list[str]:
    import json as _json
    one = req.params.get("symbol")
    many = req.params.get("symbols")
    if one:
        if one not in markets:
            raise SimError(-1121, "Invalid symbol.")
        return [one]
    if many:
        try:
            names = _json.loads(many)
            assert isinstance(names, list) and all(isinstance(n, str) for n in names)
        except Exception:  # noqa: BLE001
            raise SimError(-1100, "Illegal characters found in parameter 'symbols'.") from None
        for n in names:
            if n not in markets:
                raise SimError(-1121, "Invalid symbol.")
        return names
    return list(markets)


async def spot_account(req: "Request") -> Any:
    a = req.account
    assert a is not None
    omit_zero = str(req.params.get("omitZeroBalances", "false")).lower() == "true"
    balances = [{"asset": asset, "free": f8(b[0]), "locked": f8(b[1])} for asset, b in a.spot.items()
                if not (omit_zero and b[0] == 0 and b[1] == 0)]
    return {"makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": "0.00100000", "taker": "0.00100000", "buyer": "0.00000000",
                                "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False, "updateTime": a.update_time,
            "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"], "uid": a.uid}


async def spot_new_order_h(req: "Request") -> Any:
    p = req.params
    m = _symbol(req)
    assert m is not None and req.account is not None
    resp_type = str(p.get("newOrderRespType") or "FULL").upper()
    if resp_type not in ("ACK", "RESULT", "FULL"):
        raise SimError(-1130, "Data sent for parameter 'newOrderRespType' is not valid.")
    o = req.sim.exchange.place_order(req.account, SPOT, symbol=m.symbol, side=p.get("side"), type=p.get("type"),
                                     quantity=p.get("quantity"), price=p.get("price"),
                                     time_in_force=p.get("timeInForce"), client_order_id=p.get("newClientOrderId"),
                                     quote_order_qty=p.get("quoteOrderQty"))
    return spot_new_order(o, resp_type)


async def spot_test_order(req: "Request") -> Any:
    return {}


async def spot_get_order(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None
    return spot_order(_find(req, m))


async def spot_cancel_order(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None and req.account is not None
    o = _find(req, m, cancel=True)
    if not o.is_open:
        raise unknown_order(cancel=True)
    req.sim.exchange._cancel(o, req.params.get("newClientOrderId"))
    return spot_cancelled(o)


async def spot_open_orders(req: "Request") -> Any:
    m = _symbol(req, required=False)
    assert req.account is not None
    orders = req.account.open_orders(SPOT, m.symbol if m else None)
    return cached_list(orders, spot_order)


async def spot_cancel_all(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None and req.account is not None
    orders = req.sim.exchange.cancel_all(req.account, SPOT, m.symbol)
    if not orders:
        raise unknown_order(cancel=True)
    return [spot_cancelled(o) for o in orders]


def _trades(req: "Request", venue: str, m: Market) -> list[Trade]:
    assert req.account is not None
    limit = _int_param(req.params, "limit", 500, 1, 1000)
    oid = _int_param(req.params, "orderId")
    start = _int_param(req.params, "startTime")
    end = _int_param(req.params, "endTime")
    from_id = _int_param(req.params, "fromId")
    out = [t for t in req.account.trades[venue] if t.symbol == m.symbol
           and (oid is None or t.order_id == oid) and (start is None or t.time >= start)
           and (end is None or t.time <= end) and (from_id is None or t.trade_id >= from_id)]
    if from_id is not None or start is not None:
        return out[:limit]
    return out[-limit:] if limit else out


def _all_orders(req: "Request", venue: str, m: Market) -> list[Order]:
    """allOrders: spot rest-api.md "All orders (USER_DATA)" ("If orderId is set, it will get orders >= that
    orderId. Otherwise most recent orders are returned"; "The time between startTime and endTime can't be
    longer than 24 hours"); USD-M usdm-facts.md C1 (the same cursor, a window under 7 days)."""
    assert req.account is not None
    limit = _int_param(req.params, "limit", 500, 1, 1000)
    oid = _int_param(req.params, "orderId")
    start = _int_param(req.params, "startTime")
    end = _int_param(req.params, "endTime")
    span = 24 * 3600 * 1000 if venue == SPOT else 7 * 24 * 3600 * 1000
    if start is not None and end is not None and end - start > span:
        raise SimError(-1127, "More than 24 hours between startTime and endTime." if venue == SPOT
                       else "More than 7 days between startTime and endTime.")
    out = sorted((o for o in req.account.orders[venue].values() if o.symbol == m.symbol
                  and (oid is None or o.order_id >= oid) and (start is None or o.time >= start)
                  and (end is None or o.time <= end)), key=lambda o: o.order_id)
    if oid is not None or start is not None:
        return out[:limit]
    return out[-limit:]


async def spot_all_orders(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None
    return [spot_order(o) for o in _all_orders(req, SPOT, m)]


async def usdm_all_orders(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None
    return [usdm_order(o, m) for o in _all_orders(req, USDM, m)]


async def spot_my_trades(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None
    return [spot_trade(t) for t in _trades(req, SPOT, m)]


async def spot_ticker_price(req: "Request") -> Any:
    markets = req.sim.exchange.markets[req.venue]
    if req.params.get("symbol"):
        m = req.sim.exchange.market(req.venue, req.params["symbol"])
        return {"symbol": m.symbol, "price": f8(m.price) if req.venue == SPOT else fplain(m.price, m.price_places)}
    return [{"symbol": m.symbol, "price": f8(m.price) if req.venue == SPOT else fplain(m.price, m.price_places)}
            for m in markets.values()]


# ---- USD-M handlers ---------------------------------------------------------------------------

async def usdm_exchange_info(req: "Request") -> Any:
    sim = req.sim
    markets = sim.exchange.markets[USDM]
    return {"timezone": "UTC", "serverTime": sim.now_ms(), "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": sim.limits[USDM]},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": sim.order_limits[USDM]},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300}],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [usdm_symbol_info(m) for m in markets.values()]}


def _usdm_assets(req: "Request", a: Account, v2: bool) -> list[dict]:
    ex = req.sim.exchange
    fig = ex.usdm_figures(a)
    assets = []
    names = list(a.wallet) or ["USDT"]
    for asset in names:
        wallet = a.wallet.get(asset, ZERO)
        usdt = asset == "USDT"
        upnl = fig["upnl"] if usdt else ZERO
        pos_m = fig["position_margin"] if usdt else ZERO
        ord_m = fig["order_margin"] if usdt else ZERO
        avail = fig["available"] if usdt else wallet
        row = {"asset": asset, "walletBalance": fplain(wallet, 8), "unrealizedProfit": fplain(upnl, 8),
               "marginBalance": fplain(wallet + upnl, 8), "maintMargin": fplain(fig["maint"] if usdt else ZERO, 8),
               "initialMargin": fplain(pos_m + ord_m, 8), "positionInitialMargin": fplain(pos_m, 8),
               "openOrderInitialMargin": fplain(ord_m, 8), "crossWalletBalance": fplain(wallet, 8),
               "crossUnPnl": fplain(upnl, 8), "availableBalance": fplain(avail, 8),
               "maxWithdrawAmount": fplain(max(ZERO, min(avail, wallet)), 8)}
        if v2:
            row["marginAvailable"] = True
        row["updateTime"] = a.wallet_time.get(asset, a.update_time)
        assets.append(row)
    return assets


def _usdm_totals(req: "Request", a: Account) -> dict[str, Any]:
    fig = req.sim.exchange.usdm_figures(a)
    return {"totalInitialMargin": fplain(fig["position_margin"] + fig["order_margin"], 8),
            "totalMaintMargin": fplain(fig["maint"], 8), "totalWalletBalance": fplain(fig["wallet"], 8),
            "totalUnrealizedProfit": fplain(fig["upnl"], 8), "totalMarginBalance": fplain(fig["margin_balance"], 8),
            "totalPositionInitialMargin": fplain(fig["position_margin"], 8),
            "totalOpenOrderInitialMargin": fplain(fig["order_margin"], 8),
            "totalCrossWalletBalance": fplain(fig["wallet"], 8), "totalCrossUnPnl": fplain(fig["upnl"], 8),
            "availableBalance": fplain(fig["available"], 8),
            "maxWithdrawAmount": fplain(max(ZERO, min(fig["available"], fig["wallet"])), 8)}


def _position_row(req: "Request", a: Account, symbol: str, side: str, risk: bool) -> dict[str, Any]:
    """One positionRisk (v3, ``risk``) or account ``positions[]`` (v3) row, keys as the doc examples
    (``GET_fapi_v3_positionRisk.*.json``, ``GET_fapi_v3_account.*.json``); usdm-facts.md B2/A2."""
    ex = req.sim.exchange
    m = ex.markets[USDM][symbol]
    p = a.positions.get((symbol, side))
    amt = p.amount if p else ZERO
    entry = p.entry_price if p else ZERO
    lev = a.lev(symbol)
    mark = m.price
    upnl = amt * (mark - entry) if amt else ZERO
    notional = amt * mark
    margin = abs(notional) / lev
    open_margin = sum((o.remaining * o.price / lev for o in a.open_orders(USDM, symbol)
                       if o.position_side == side and not ex._reduces(o)), ZERO)
    qp = m.qty_places
    maint = abs(notional) * MAINT_MARGIN_RATE
    if risk:
        return {"symbol": symbol, "positionSide": side, "positionAmt": fplain(amt, qp),
                "entryPrice": fplain(entry), "breakEvenPrice": fplain(entry), "markPrice": fplain(mark, 8),
                "unRealizedProfit": fplain(upnl, 8),
                "liquidationPrice": fplain(ex.liquidation_price(a, symbol) if amt else ZERO, 8),
                "isolatedMargin": "0", "notional": fplain(notional, 8), "marginAsset": "USDT", "isolatedWallet": "0",
                "initialMargin": fplain(margin + open_margin, 8), "maintMargin": fplain(maint, 8),
                "positionInitialMargin": fplain(margin, 8), "openOrderInitialMargin": fplain(open_margin, 8),
                "adl": 0, "bidNotional": "0", "askNotional": "0", "updateTime": p.update_time if p else 0}
    return {"symbol": symbol, "positionSide": side, "positionAmt": fplain(amt, qp),
            "unrealizedProfit": fplain(upnl, 8), "isolatedMargin": "0", "notional": fplain(notional, 8),
            "isolatedWallet": "0", "initialMargin": fplain(margin + open_margin, 8),
            "maintMargin": fplain(maint, 8), "updateTime": p.update_time if p else 0}


def _sides(a: Account) -> tuple[str, ...]:
    """One-way mode returns only BOTH rows, hedge mode only LONG / SHORT rows (usdm-facts.md A2, B2)."""
    return ("LONG", "SHORT") if a.dual_side else ("BOTH",)


def _active_symbols(a: Account) -> list[str]:
    """v3: "only symbols that the user has positions or open orders in" (usdm-facts.md A2, B1)."""
    syms = [p.symbol for p in a.open_positions()]
    for s in list(a.open[USDM]) + list(a.algo_open):
        if s not in syms:
            syms.append(s)
    return list(dict.fromkeys(syms))


async def usdm_account_v2(req: "Request") -> Any:
    a = req.account
    assert a is not None
    out = {"feeTier": 0, "feeBurn": False, "canTrade": True, "canDeposit": True, "canWithdraw": True,
           "updateTime": 0, "multiAssetsMargin": False, "tradeGroupId": -1}
    out.update(_usdm_totals(req, a))
    out["assets"] = _usdm_assets(req, a, v2=True)
    positions = []
    for s in req.sim.exchange.markets[USDM]:
        for side in _sides(a):
            r = _position_row(req, a, s, side, risk=True)
            p = a.positions.get((s, side))
            # v2 rows (usdm-facts.md A2, examples/GET_fapi_v2_account.*.json): no notional / isolated wallet
            positions.append({"symbol": s, "initialMargin": r["initialMargin"], "maintMargin": r["maintMargin"],
                              "unrealizedProfit": r["unRealizedProfit"],
                              "positionInitialMargin": r["positionInitialMargin"],
                              "openOrderInitialMargin": r["openOrderInitialMargin"], "leverage": str(a.lev(s)),
                              "isolated": False, "entryPrice": fplain(p.entry_price) if p and p.amount else "0.0",
                              "maxNotional": "1000000", "bidNotional": "0", "askNotional": "0",
                              "positionSide": side, "positionAmt": r["positionAmt"], "updateTime": r["updateTime"]})
    out["positions"] = positions
    return out


async def usdm_account_v3(req: "Request") -> Any:
    a = req.account
    assert a is not None
    out = _usdm_totals(req, a)
    out["assets"] = _usdm_assets(req, a, v2=False)
    out["positions"] = [_position_row(req, a, s, side, risk=False) for s in _active_symbols(a) for side in _sides(a)]
    return out


async def usdm_balance(req: "Request") -> Any:
    a = req.account
    assert a is not None
    fig = req.sim.exchange.usdm_figures(a)
    rows = []
    for asset in (list(a.wallet) or ["USDT"]):
        wallet = a.wallet.get(asset, ZERO)
        usdt = asset == "USDT"
        avail = fig["available"] if usdt else wallet
        rows.append({"accountAlias": "SgsR", "asset": asset, "balance": fplain(wallet, 8),
                     "crossWalletBalance": fplain(wallet, 8), "crossUnPnl": fplain(fig["upnl"] if usdt else ZERO, 8),
                     "availableBalance": fplain(avail, 8), "maxWithdrawAmount": fplain(max(ZERO, avail), 8),
                     "marginAvailable": True, "updateTime": a.wallet_time.get(asset, a.update_time)})
    return rows


async def usdm_position_risk_v3(req: "Request") -> Any:
    a = req.account
    assert a is not None
    m = _symbol(req, required=False)
    syms = _active_symbols(a)
    if m is not None:
        syms = [s for s in syms if s == m.symbol]
    return [_position_row(req, a, s, side, risk=True) for s in syms for side in _sides(a)]


async def usdm_position_risk_v2(req: "Request") -> Any:
    a = req.account
    assert a is not None
    m = _symbol(req, required=False)
    syms = [m.symbol] if m else list(req.sim.exchange.markets[USDM])
    out = []
    for s in syms:
        for side in _sides(a):
            row = _position_row(req, a, s, side, risk=True)
            out.append({"symbol": s, "positionAmt": row["positionAmt"], "entryPrice": row["entryPrice"],
                        "breakEvenPrice": row["breakEvenPrice"], "markPrice": row["markPrice"],
                        "unRealizedProfit": row["unRealizedProfit"], "liquidationPrice": row["liquidationPrice"],
                        "leverage": str(a.lev(s)), "maxNotionalValue": "1000000",
                        "marginType": "cross", "isolatedMargin": "0.00000000", "isAutoAddMargin": "false",
                        "positionSide": side, "notional": row["notional"], "isolatedWallet": "0",
                        "updateTime": row["updateTime"]})
    return out


async def usdm_leverage_bracket(req: "Request") -> Any:
    m = _symbol(req, required=False)
    syms = [m.symbol] if m else list(req.sim.exchange.markets[USDM])
    brackets = [
        {"bracket": 1, "initialLeverage": 125, "notionalCap": 50000, "notionalFloor": 0, "maintMarginRatio": 0.004,
         "cum": 0.0},
        {"bracket": 2, "initialLeverage": 100, "notionalCap": 600000, "notionalFloor": 50000,
         "maintMarginRatio": 0.005, "cum": 50.0},
        {"bracket": 3, "initialLeverage": 50, "notionalCap": 3000000, "notionalFloor": 600000,
         "maintMarginRatio": 0.01, "cum": 3050.0},
        {"bracket": 4, "initialLeverage": 20, "notionalCap": 12000000, "notionalFloor": 3000000,
         "maintMarginRatio": 0.025, "cum": 48050.0},
    ]
    rows = [{"symbol": s, "notionalCoef": 1.0, "brackets": brackets} for s in syms]
    return rows[0] if m else rows


async def usdm_set_leverage(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None and req.account is not None
    lev = _int_param(req.params, "leverage", None, 1, 125)
    if lev is None:
        raise SimError(-1102, "Mandatory parameter 'leverage' was not sent, was empty/null, or malformed.")
    req.account.leverage[m.symbol] = lev
    return {"leverage": lev, "maxNotionalValue": "1000000", "symbol": m.symbol}


async def usdm_dual_side(req: "Request") -> Any:
    assert req.account is not None
    return {"dualSidePosition": req.account.dual_side}


async def usdm_set_dual_side(req: "Request") -> Any:
    assert req.account is not None
    raw = str(req.params.get("dualSidePosition", "")).lower()
    if raw not in ("true", "false"):
        raise SimError(-1102, "Mandatory parameter 'dualSidePosition' was not sent, was empty/null, or malformed.")
    req.sim.exchange.set_dual_side(req.account, raw == "true")
    return {"code": 200, "msg": "success"}


async def usdm_countdown_cancel_all(req: "Request") -> Any:
    """usdm-facts.md C4: reply ``{"symbol", "countdownTime"}`` with the time as a string."""
    m = _symbol(req)
    assert m is not None and req.account is not None
    ms = _int_param(req.params, "countdownTime")
    if ms is None:
        raise SimError(-1102, "Mandatory parameter 'countdownTime' was not sent, was empty/null, or malformed.")
    req.sim.exchange.set_countdown(req.account, m.symbol, ms)
    return {"symbol": m.symbol, "countdownTime": str(ms)}


async def usdm_new_order(req: "Request") -> Any:
    p = req.params
    m = _symbol(req)
    assert m is not None and req.account is not None
    otype = str(p.get("type") or "").upper()
    if otype in ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"):
        raise SimError(-4120, "Order type not supported for this endpoint. Please use the Algo Order API endpoints "
                              "instead.")
    o = req.sim.exchange.place_order(req.account, USDM, symbol=m.symbol, side=p.get("side"), type=p.get("type"),
                                     quantity=p.get("quantity"), price=p.get("price"),
                                     time_in_force=p.get("timeInForce"), client_order_id=p.get("newClientOrderId"),
                                     reduce_only=str(p.get("reduceOnly", "false")).lower() == "true",
                                     position_side=p.get("positionSide"))
    return usdm_order(o, m, with_time=False)


async def usdm_get_order(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None
    return usdm_order(_find(req, m), m)


async def usdm_cancel_order(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None
    o = _find(req, m, cancel=True)
    if not o.is_open:
        raise unknown_order(cancel=True)
    req.sim.exchange._cancel(o)
    return usdm_order(o, m, with_time=False)


async def usdm_open_orders(req: "Request") -> Any:
    m = _symbol(req, required=False)
    assert req.account is not None
    markets = req.sim.exchange.markets[USDM]
    return cached_list(req.account.open_orders(USDM, m.symbol if m else None),
                       lambda o: usdm_order(o, markets[o.symbol]))


async def usdm_open_order(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None
    o = _find(req, m)
    if not o.is_open:
        raise SimError(-2013, "Order does not exist.")
    return usdm_order(o, m)


async def usdm_cancel_all(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None and req.account is not None
    req.sim.exchange.cancel_all(req.account, USDM, m.symbol)
    return {"code": 200, "msg": "The operation of cancel all open order is done."}


async def usdm_user_trades(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None
    orders = req.account.orders[USDM] if req.account is not None else {}
    return [usdm_trade(t, m, orders[t.order_id].position_side if t.order_id in orders else "BOTH")
            for t in _trades(req, USDM, m)]


def algo_json(a: AlgoOrder, m: Market, shape: str = "query") -> dict[str, Any]:
    """An algo order as the Algo Service answers (usdm-facts.md D3), keys per shape:
    ``new`` = POST (examples/POST_fapi_v1_algoOrder.json: activatePrice, callbackRate, no actual*);
    ``list`` = openAlgoOrders / allAlgoOrders (actualOrderId, actualPrice, tp/sl fields);
    ``query`` = GET algoOrder, the 2026-08 shape (actualType only once triggered, actualQty only once
    something filled; no tp/sl trigger prices)."""
    pp, qp = m.price_places, m.qty_places
    child = a.child
    out: dict[str, Any] = {
        "algoId": a.algo_id, "clientAlgoId": a.client_algo_id, "algoType": "CONDITIONAL",
        "orderType": a.order_type, "symbol": a.symbol, "side": a.side, "positionSide": a.position_side,
        "timeInForce": a.time_in_force, "quantity": fplain(a.quantity, qp), "algoStatus": a.status}
    if shape != "new":
        out["actualOrderId"] = str(a.order_id) if a.order_id else ""
        out["actualPrice"] = fplain(child.avg_price if child else ZERO, 5)
        if shape == "query":
            if child is not None:
                out["actualType"] = child.type
            if child is not None and child.executed_qty > 0:
                out["actualQty"] = fplain(child.executed_qty, qp)
    out.update({"triggerPrice": fplain(a.trigger_price, pp), "price": fplain(a.price, pp), "icebergQuantity": None})
    if shape == "list":
        out.update({"tpTriggerPrice": fplain(ZERO, pp), "tpPrice": fplain(ZERO, pp),
                    "slTriggerPrice": fplain(ZERO, pp), "slPrice": fplain(ZERO, pp)})
    if shape != "new":
        out["tpOrderType"] = ""
    out.update({"selfTradePreventionMode": "EXPIRE_MAKER", "workingType": "CONTRACT_PRICE", "priceMatch": "NONE",
                "closePosition": a.close_position, "priceProtect": False, "reduceOnly": a.reduce_only})
    if shape == "new":
        out.update({"activatePrice": "", "callbackRate": ""})
    out.update({"createTime": a.create_time, "updateTime": a.update_time, "triggerTime": a.trigger_time,
                "goodTillDate": 0})
    return out


async def usdm_new_algo_order(req: "Request") -> Any:
    p = req.params
    m = _symbol(req)
    assert m is not None and req.account is not None
    if str(p.get("algoType", "")).upper() != "CONDITIONAL":
        raise SimError(-1102, "Mandatory parameter 'algoType' was not sent, was empty/null, or malformed.")
    a = req.sim.exchange.place_algo(req.account, symbol=m.symbol, side=p.get("side"), order_type=p.get("type"),
                                    quantity=p.get("quantity"), trigger_price=p.get("triggerPrice"),
                                    price=p.get("price"), time_in_force=p.get("timeInForce"),
                                    client_algo_id=p.get("clientAlgoId"),
                                    reduce_only=str(p.get("reduceOnly", "false")).lower() == "true",
                                    position_side=p.get("positionSide"),
                                    close_position=str(p.get("closePosition", "false")).lower() == "true")
    return algo_json(a, m, "new")


def _find_algo(req: "Request", cancel: bool = False) -> AlgoOrder:
    assert req.account is not None
    aid, cid = req.params.get("algoId"), req.params.get("clientAlgoId")
    if not aid and not cid:
        raise SimError(-1102, "Param 'algoId' or 'clientAlgoId' must be sent, but both were empty/null!")
    a = req.sim.exchange.find_algo(req.account, aid, cid)
    if a is None:
        raise unknown_order(cancel)
    return a


async def usdm_get_algo_order(req: "Request") -> Any:
    a = _find_algo(req)
    return algo_json(a, req.sim.exchange.markets[USDM][a.symbol])


async def usdm_cancel_algo_order(req: "Request") -> Any:
    a = _find_algo(req, cancel=True)
    req.sim.exchange.cancel_algo(a)
    return {"algoId": a.algo_id, "clientAlgoId": a.client_algo_id, "code": "200", "msg": "success"}


async def usdm_open_algo_orders(req: "Request") -> Any:
    m = _symbol(req, required=False)
    assert req.account is not None
    markets = req.sim.exchange.markets[USDM]
    books = [req.account.algo_open.get(m.symbol, {})] if m else list(req.account.algo_open.values())
    return [algo_json(a, markets[a.symbol], "list") for book in books for a in book.values()]


async def usdm_all_algo_orders(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None and req.account is not None
    limit = _int_param(req.params, "limit", 500, 1, 1000) or 500
    rows = [a for a in req.account.algo.values() if a.symbol == m.symbol]
    return [algo_json(a, m, "list") for a in rows[-limit:]]


async def usdm_cancel_algo_all(req: "Request") -> Any:
    m = _symbol(req)
    assert m is not None and req.account is not None
    req.sim.exchange.cancel_all_algo(req.account, m.symbol)
    return {"code": 200, "msg": "The operation of cancel all open order is done."}


async def listen_key_new(req: "Request") -> Any:
    assert req.account is not None
    return {"listenKey": req.sim._listen_key_for(req.account)}


async def listen_key_keepalive(req: "Request") -> Any:
    assert req.account is not None
    return {"listenKey": req.sim.listen_keys.keepalive(req.account, req.params.get("listenKey"), req.sim.now_ms())}


async def listen_key_close(req: "Request") -> Any:
    assert req.account is not None
    req.sim.listen_keys.close(req.account)
    return {}


# ---- registration -----------------------------------------------------------------------------

def register(sim: "Simulator") -> None:
    def add(venue: str, method: str, path: str, handler: Any, weight: Any, security: str = "NONE",
            order: bool = False) -> None:
        sim.routes[(method, path)] = Route(venue, method, path, handler, weight, security, order)

    def by_symbol(with_symbol: int, without: int):
        return lambda params: with_symbol if params.get("symbol") else without

    # spot
    add(SPOT, "GET", "/api/v3/ping", ping, 1)
    add(SPOT, "GET", "/api/v3/time", server_time, 1)
    add(SPOT, "GET", "/api/v3/exchangeInfo", spot_exchange_info, 20)
    add(SPOT, "GET", "/api/v3/ticker/price", spot_ticker_price, by_symbol(2, 4))
    add(SPOT, "GET", "/api/v3/account", spot_account, 20, "SIGNED")
    add(SPOT, "POST", "/api/v3/order", spot_new_order_h, 1, "SIGNED", order=True)
    add(SPOT, "POST", "/api/v3/order/test", spot_test_order, 1, "SIGNED")
    add(SPOT, "GET", "/api/v3/order", spot_get_order, 4, "SIGNED")
    add(SPOT, "DELETE", "/api/v3/order", spot_cancel_order, 1, "SIGNED")
    add(SPOT, "GET", "/api/v3/openOrders", spot_open_orders, by_symbol(6, 80), "SIGNED")
    add(SPOT, "DELETE", "/api/v3/openOrders", spot_cancel_all, 1, "SIGNED")
    add(SPOT, "GET", "/api/v3/myTrades", spot_my_trades, lambda p: 5 if p.get("orderId") else 20, "SIGNED")
    add(SPOT, "GET", "/api/v3/allOrders", spot_all_orders, 20, "SIGNED")
    # USD-M
    add(USDM, "GET", "/fapi/v1/ping", ping, 1)
    add(USDM, "GET", "/fapi/v1/time", server_time, 1)
    add(USDM, "GET", "/fapi/v1/exchangeInfo", usdm_exchange_info, 1)
    add(USDM, "GET", "/fapi/v1/ticker/price", spot_ticker_price, by_symbol(1, 2))
    add(USDM, "GET", "/fapi/v2/ticker/price", spot_ticker_price, by_symbol(1, 2))
    add(USDM, "GET", "/fapi/v2/account", usdm_account_v2, 5, "SIGNED")
    add(USDM, "GET", "/fapi/v3/account", usdm_account_v3, 5, "SIGNED")
    add(USDM, "GET", "/fapi/v2/balance", usdm_balance, 5, "SIGNED")
    add(USDM, "GET", "/fapi/v3/balance", usdm_balance, 5, "SIGNED")
    add(USDM, "GET", "/fapi/v2/positionRisk", usdm_position_risk_v2, 5, "SIGNED")
    add(USDM, "GET", "/fapi/v3/positionRisk", usdm_position_risk_v3, 5, "SIGNED")
    add(USDM, "GET", "/fapi/v1/leverageBracket", usdm_leverage_bracket, 1, "SIGNED")
    add(USDM, "POST", "/fapi/v1/leverage", usdm_set_leverage, 1, "SIGNED")
    add(USDM, "GET", "/fapi/v1/positionSide/dual", usdm_dual_side, 30, "SIGNED")
    add(USDM, "POST", "/fapi/v1/positionSide/dual", usdm_set_dual_side, 1, "SIGNED")
    add(USDM, "POST", "/fapi/v1/countdownCancelAll", usdm_countdown_cancel_all, 10, "SIGNED")
    add(USDM, "GET", "/fapi/v1/allAlgoOrders", usdm_all_algo_orders, 5, "SIGNED")
    add(USDM, "POST", "/fapi/v1/order", usdm_new_order, 0, "SIGNED", order=True)
    add(USDM, "GET", "/fapi/v1/order", usdm_get_order, 1, "SIGNED")
    add(USDM, "DELETE", "/fapi/v1/order", usdm_cancel_order, 1, "SIGNED")
    add(USDM, "GET", "/fapi/v1/openOrders", usdm_open_orders, by_symbol(1, 40), "SIGNED")
    add(USDM, "GET", "/fapi/v1/openOrder", usdm_open_order, 1, "SIGNED")
    add(USDM, "DELETE", "/fapi/v1/allOpenOrders", usdm_cancel_all, 1, "SIGNED")
    add(USDM, "GET", "/fapi/v1/userTrades", usdm_user_trades, 5, "SIGNED")
    add(USDM, "GET", "/fapi/v1/allOrders", usdm_all_orders, 5, "SIGNED")
    add(USDM, "GET", "/fapi/v1/openAlgoOrders", usdm_open_algo_orders, by_symbol(1, 40), "SIGNED")
    add(USDM, "DELETE", "/fapi/v1/algoOpenOrders", usdm_cancel_algo_all, 1, "SIGNED")
    add(USDM, "POST", "/fapi/v1/algoOrder", usdm_new_algo_order, 0, "SIGNED", order=True)
    add(USDM, "GET", "/fapi/v1/algoOrder", usdm_get_algo_order, 1, "SIGNED")
    add(USDM, "DELETE", "/fapi/v1/algoOrder", usdm_cancel_algo_order, 1, "SIGNED")
    add(USDM, "POST", "/fapi/v1/listenKey", listen_key_new, 1, "USER_STREAM")
    add(USDM, "PUT", "/fapi/v1/listenKey", listen_key_keepalive, 1, "USER_STREAM")
    add(USDM, "DELETE", "/fapi/v1/listenKey", listen_key_close, 1, "USER_STREAM")
