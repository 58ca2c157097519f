"""ccxt's unified structures (and Binance's raw stream payloads) -> tradewarden's domain types.

Nothing ccxt-shaped leaves the gateway: these functions are the only place that knows ccxt's keys.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Mapping

from ..domain import (ZERO, AssetMargin, Balance, Fill, MarginSummary, Order, OrderState, Position, PositionRisk,
                      PositionSide, Side, dec)

# Binance's order status (REST "status", stream "X") -> domain state
BINANCE_STATUS = {
    "NEW": OrderState.OPEN,
    "PENDING_NEW": OrderState.OPEN,
    "PARTIALLY_FILLED": OrderState.PARTIALLY_FILLED,
    "FILLED": OrderState.FILLED,
    "CANCELED": OrderState.CANCELED,
    "PENDING_CANCEL": OrderState.OPEN,
    "REJECTED": OrderState.REJECTED,
    "EXPIRED": OrderState.EXPIRED,
    "EXPIRED_IN_MATCH": OrderState.EXPIRED,
}
# USD-M Algo Service statuses (usdm-facts.md D4). FINISHED is resolved by the child's executed
# quantity (``aq`` / ``actualQty``): all of it -> FILLED, less -> CANCELED (with what did fill).
ALGO_STATUS = {
    "NEW": OrderState.OPEN,
    "TRIGGERING": OrderState.OPEN,            # condition met, being forwarded to the matching engine
    "TRIGGERED": OrderState.TRIGGERED,        # placed in the matching engine: the child order exists
    "CANCELED": OrderState.CANCELED,
    "REJECTED": OrderState.REJECTED,
    "EXPIRED": OrderState.EXPIRED,
    "FINISHED": OrderState.FILLED,
}
CONDITIONAL_TYPES = ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")
# ccxt's unified status -> domain state (for exchanges other than Binance)
CCXT_STATUS = {
    "open": OrderState.OPEN,
    "closed": OrderState.FILLED,
    "canceled": OrderState.CANCELED,
    "cancelled": OrderState.CANCELED,
    "expired": OrderState.EXPIRED,
    "rejected": OrderState.REJECTED,
}


def _d(value: Any) -> Decimal:
    try:
        return dec(value)
    except (InvalidOperation, ValueError, TypeError):
        return ZERO


class Malformed(ValueError):
    """A venue answer (or stream payload) tradewarden cannot trust: a missing id, a quantity that
    is not a number, an unknown status. Never guessed into a zero or a default: a garbage answer
    that became "balance 0" or "order open, amount 0" would be "corrected" into the ledger."""


MAX_ASSET_LEN = 32


def _strict(value: Any, what: str, *, required: bool = False) -> Decimal:
    """A finite Decimal from a venue value; None/"" -> 0 unless ``required``; anything else -> Malformed."""
    if value is None or value == "":
        if required:
            raise Malformed(f"{what} missing")
        return ZERO
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise Malformed(f"{what} is not a number ({type(value).__name__})")
    try:
        d = dec(value)
    except (InvalidOperation, ValueError, TypeError):
        raise Malformed(f"{what} is not a number ({str(value)[:40]!r})") from None
    if not d.is_finite():
        raise Malformed(f"{what} is not finite ({str(value)[:40]!r})")
    return d


def _asset(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ASSET_LEN or not value.isprintable():
        raise Malformed(f"asset code {str(value)[:40]!r} is not valid")
    return value


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _algo_info(info: Mapping[str, Any]) -> tuple[str, str, Decimal] | None:
    """(status, child order id, child executed qty) of an algo order's REST row or ALGO_UPDATE ``o``;
    None when ``info`` is not an algo order."""
    if "algoStatus" in info or "algoId" in info:
        raw, child, executed = info.get("algoStatus"), info.get("actualOrderId"), info.get("actualQty")
    elif "aid" in info:
        raw, child, executed = info.get("X"), info.get("ai"), info.get("aq")
    else:
        return None
    if not isinstance(raw, str) or not raw:
        raise Malformed("algo order without its status (algoStatus / X)")
    if raw.upper() not in ALGO_STATUS:
        raise Malformed(f"unknown algo order status {raw[:40]!r}")
    return raw.upper(), "" if child in (None, "", 0, "0") else str(child), _strict(executed, "algo executed quantity")


def position_side(value: Any, *, required: bool = True) -> PositionSide:
    """BOTH / LONG / SHORT (usdm-facts.md B2); anything else is malformed, never guessed."""
    if value is None and not required:
        return PositionSide.BOTH
    try:
        return PositionSide(str(value).upper()) if isinstance(value, str) else PositionSide(value)
    except ValueError:
        raise Malformed(f"unknown position side {str(value)[:40]!r}") from None


def order_state(order: Mapping[str, Any]) -> OrderState:
    info = order.get("info") or {}
    algo = _algo_info(info) if isinstance(info, Mapping) else None
    if algo is not None:
        raw, _, executed = algo
        state = ALGO_STATUS[raw]
        if raw == "FINISHED":
            amount = _strict(order.get("amount") if order.get("amount") is not None else
                             info.get("quantity", info.get("q")), "order quantity", required=True)
            state = OrderState.FILLED if executed >= amount > 0 else OrderState.CANCELED
        return state
    raw = None
    if isinstance(info, Mapping):
        raw = info.get("status") or info.get("X") or info.get("algoStatus")
        if raw is None and isinstance(info.get("o"), Mapping):
            raw = info["o"].get("X")
    state = BINANCE_STATUS.get(str(raw).upper()) if raw is not None else None
    if state is None:
        state = CCXT_STATUS.get(str(order.get("status") or "").lower())
    if state is None:
        raise Malformed(f"unknown order status {str(raw if raw is not None else order.get('status'))[:40]!r}")
    filled = _strict(order.get("filled"), "order filled quantity")
    if state == OrderState.OPEN and filled > 0:
        state = OrderState.PARTIALLY_FILLED
    return state


def order_from_ccxt(order: Mapping[str, Any], *, algo: bool = False) -> Order:
    """A ccxt unified order -> domain Order."""
    info = order.get("info") if isinstance(order.get("info"), Mapping) else {}
    created = _int(order.get("timestamp")) or _int(info.get("time")) or _int(info.get("createTime")) \
        or _int(info.get("O"))
    updated = _int(order.get("lastUpdateTimestamp")) or _int(info.get("updateTime")) \
        or _int(info.get("E")) or _int(info.get("T")) or created
    side = str(order.get("side") or info.get("side") or "buy").lower()
    price = order.get("price")
    if price is None:
        price = info.get("price") or info.get("p")
    raw_type = info.get("type") or info.get("orderType") or (info.get("o") if isinstance(info.get("o"), str) else None)
    otype = raw_type or order.get("type") or ""   # the venue's own type: LIMIT_MAKER stays limit_maker
    is_algo = algo or bool(info.get("algoId") or info.get("aid"))
    algo_fields = _algo_info(info) if is_algo else None
    filled = _strict(order.get("filled"), "order filled quantity")
    child_id = ""
    if algo_fields is not None:
        _, child_id, filled = algo_fields          # the child's executed quantity is the parent's fill
    reduce_only = info.get("reduceOnly", info.get("R"))
    close_position = info.get("closePosition", info.get("cp"))
    pside = position_side(info.get("positionSide", info.get("ps")), required=False)
    venue_type = str(raw_type or "").upper()
    protective = (reduce_only is True or str(reduce_only).lower() == "true"
                  or close_position is True or str(close_position).lower() == "true"
                  or (is_algo and venue_type in CONDITIONAL_TYPES)
                  or (pside is PositionSide.LONG and side == "sell") or (pside is PositionSide.SHORT and side == "buy"))
    exchange_id = order.get("id")
    if exchange_id is None:
        exchange_id = info.get("orderId") or info.get("algoId") or ""
    # A Binance cancel answers with the cancel request's own clientOrderId; the order's is origClientOrderId.
    client_id = info.get("origClientOrderId") or order.get("clientOrderId") or info.get("clientOrderId") \
        or info.get("clientAlgoId") or ""
    if not exchange_id and not client_id:
        raise Malformed("order without an id")
    if not order.get("symbol"):
        raise Malformed(f"order {str(exchange_id or client_id)[:40]} without a known symbol")
    return Order(
        client_order_id=str(client_id),
        exchange_order_id=str(exchange_id),
        symbol=str(order.get("symbol") or ""),
        side=Side.SELL if side == "sell" else Side.BUY,
        type=str(otype).lower(),
        price=_strict(price, "order price"),
        amount=_strict(order.get("amount"), "order quantity", required=True),
        filled=filled,
        state=order_state(order),
        created_ms=created,
        updated_ms=max(updated, created),
        algo=is_algo,
        child_id=child_id,
        protective=protective,
        position_side=pside,
    )


def fill_from_ccxt(trade: Mapping[str, Any]) -> Fill:
    """A ccxt unified trade (spot myTrades, USD-M userTrades) -> domain Fill."""
    info = trade.get("info") if isinstance(trade.get("info"), Mapping) else {}
    trade_id = trade.get("id") if trade.get("id") is not None else info.get("id")
    order_id = trade.get("order") if trade.get("order") is not None else info.get("orderId")
    if trade_id is None or order_id is None:
        raise Malformed("trade without a trade id or an order id")
    if not trade.get("symbol"):
        raise Malformed(f"trade {str(trade_id)[:40]} without a known symbol")
    fee = trade.get("fee") if isinstance(trade.get("fee"), Mapping) else {}
    fee_cost = fee.get("cost") if fee.get("cost") is not None else info.get("commission")
    return Fill(
        trade_id=str(trade_id), exchange_order_id=str(order_id), symbol=str(trade["symbol"]),
        price=_strict(trade.get("price"), "trade price", required=True),
        amount=_strict(trade.get("amount"), "trade quantity", required=True),
        fee=_strict(fee_cost, "trade fee"),
        fee_asset=str(fee.get("currency") or info.get("commissionAsset") or ""),
        time_ms=_int(trade.get("timestamp")) or _int(info.get("time")),
    )
def fill_from_execution(payload: Mapping[str, Any], symbol: str,
                        currency_code: Callable[[str], str] = str) -> Fill | None:
    """The trade an execution event carries, or None when it carries none. Spot ``executionReport``
    (user-data-stream.md "Order Update") and USD-M ``ORDER_TRADE_UPDATE``'s ``o`` (usdm-facts.md F4) name it
    alike: execution type ``x`` TRADE, trade id ``t``, order id ``i``, last executed price ``L`` and quantity
    ``l``, commission ``n`` in asset ``N`` (USD-M: may be absent when there is no commission), trade time
    ``T``. The same trade read later from trade history has the same id: recorded once."""
    if payload.get("x") != "TRADE":
        return None
    trade_id, order_id = payload.get("t"), payload.get("i")
    if trade_id in (None, "", -1, 0, "-1", "0") or order_id in (None, ""):
        raise Malformed("trade event without a trade id or an order id")
    asset = payload.get("N")
    return Fill(
        trade_id=str(trade_id), exchange_order_id=str(order_id), symbol=symbol,
        price=_strict(payload.get("L"), "trade price", required=True),
        amount=_strict(payload.get("l"), "trade quantity", required=True),
        fee=_strict(payload.get("n"), "trade fee"),
        fee_asset=currency_code(str(asset)) if asset else "",
        time_ms=_int(payload.get("T")),
    )


def order_from_binance_rest(row: Mapping[str, Any], symbol_of, *, algo: bool = False) -> Order:
    """One row of Binance's own open-order answers, untouched by ccxt (the emergency stop lists the whole
    account: 1,000 orders cost ~0.2 s in ccxt's parser, a few ms here). Spot ``GET /api/v3/openOrders``
    and USD-M ``GET /fapi/v1/openOrders`` (rest-api.md "Current open orders", usdm-facts.md C2: orderId,
    clientOrderId, price, origQty, executedQty, status, type, side, time, updateTime); USD-M
    ``GET /fapi/v1/openAlgoOrders`` with ``algo`` (usdm-facts.md D3: algoId, clientAlgoId, orderType,
    quantity, algoStatus, createTime, updateTime)."""
    if not isinstance(row, Mapping):
        raise Malformed("an open order is not an object")
    market_id = row.get("symbol")
    if not isinstance(market_id, str) or not market_id:
        raise Malformed("order without a symbol")
    if algo:
        oid, cid, qty, status = row.get("algoId"), row.get("clientAlgoId"), row.get("quantity"), row.get("algoStatus")
        otype, created = row.get("orderType"), _int(row.get("createTime"))
        filled: Any = 0
    else:
        oid, cid, qty, status = row.get("orderId"), row.get("clientOrderId"), row.get("origQty"), row.get("status")
        otype, created, filled = row.get("type"), _int(row.get("time")), row.get("executedQty")
    if oid in (None, "") and not cid:
        raise Malformed("order without an id")
    state = BINANCE_STATUS.get(str(status).upper())
    if state is None:
        raise Malformed(f"unknown order status {str(status)[:40]!r}")
    amount, done = _strict(qty, "order quantity", required=True), _strict(filled, "order filled quantity")
    if state is OrderState.OPEN and done > 0:
        state = OrderState.PARTIALLY_FILLED
    updated = _int(row.get("updateTime")) or created
    return Order(client_order_id=str(cid or ""), exchange_order_id=str(oid if oid is not None else ""),
                 symbol=str(symbol_of(market_id)), side=Side.SELL if str(row.get("side")).upper() == "SELL" else Side.BUY,
                 type=str(otype or "").lower(), price=_strict(row.get("price"), "order price"), amount=amount,
                 filled=done, state=state, created_ms=created, updated_ms=max(updated, created), algo=algo)


def balances_from_ccxt(balance: Mapping[str, Any]) -> dict[str, Balance]:
    """A ccxt balance structure -> {asset: Balance}; zero balances are kept only if the venue lists them."""
    info = balance.get("info") if isinstance(balance.get("info"), Mapping) else {}
    account_ms = _int(balance.get("timestamp")) or _int(info.get("updateTime"))
    per_asset_ms: dict[str, int] = {}
    for entry in info.get("assets") or []:          # USD-M: per-asset update times
        if isinstance(entry, Mapping) and entry.get("asset"):
            per_asset_ms[str(entry["asset"])] = _int(entry.get("updateTime"))
    free = balance.get("free") or {}
    used = balance.get("used") or {}
    total = balance.get("total") or {}
    out: dict[str, Balance] = {}
    for asset in set(free) | set(used) | set(total):
        f, u = free.get(asset), used.get(asset)
        if f is None and u is None:
            f = total.get(asset)
        fd, ud = _strict(f, f"{str(asset)[:40]} free"), _strict(u, f"{str(asset)[:40]} locked")
        out[_asset(asset)] = Balance(asset=asset, free=fd, locked=ud,
                             updated_ms=per_asset_ms.get(asset) or account_ms)
    return out


def positions_from_ccxt(positions: Iterable[Mapping[str, Any]], symbols: Iterable[str] | None = None, *,
                        binance: bool = False) -> list[Position]:
    """ccxt positions -> signed positions keyed by (symbol, side) (only non-zero ones, optionally of given
    symbols). ``binance``: the row's ``positionSide`` is a documented field and required (B2)."""
    wanted = set(symbols) if symbols is not None else None
    out: list[Position] = []
    for p in positions:
        info = p.get("info") if isinstance(p.get("info"), Mapping) else {}
        side = position_side(info.get("positionSide"), required=binance)
        raw_amt = info.get("positionAmt")
        if raw_amt is None:
            raw_amt = info.get("pa")
        if raw_amt is not None:
            amount = _strict(raw_amt, "position amount")
        else:
            amount = _d(p.get("contracts")) * _d(p.get("contractSize") or 1)
            if str(p.get("side") or "").lower() == "short":
                amount = -amount
        if amount == 0:
            continue
        symbol = str(p.get("symbol") or "")
        if wanted is not None and symbol not in wanted:
            continue
        out.append(Position(symbol=symbol, amount=amount,
                            entry_price=_d(p.get("entryPrice") if p.get("entryPrice") is not None else info.get("entryPrice")),
                            updated_ms=_int(p.get("timestamp")) or _int(info.get("updateTime")), side=side))
    return out


def position_risks_from_ccxt(positions: Iterable[Mapping[str, Any]], symbols: Iterable[str] | None = None
                             ) -> list[PositionRisk]:
    """Binance positionRisk rows (usdm-facts.md B2) -> mark / liquidation price per (symbol, side)."""
    wanted = set(symbols) if symbols is not None else None
    out: list[PositionRisk] = []
    for p in positions:
        info = p.get("info") if isinstance(p.get("info"), Mapping) else {}
        amount = _strict(info.get("positionAmt"), "position amount", required=True)
        symbol = str(p.get("symbol") or "")
        if amount == 0 or (wanted is not None and symbol not in wanted):
            continue
        out.append(PositionRisk(symbol, position_side(info.get("positionSide")), amount,
                                _strict(info.get("markPrice"), "position mark price", required=True),
                                _strict(info.get("liquidationPrice"), "position liquidation price", required=True),
                                _strict(info.get("unRealizedProfit"), "position unrealised PnL", required=True)))
    return out


def futures_balances(info: Any) -> tuple[dict[str, Balance], MarginSummary]:
    """Binance USD-M account (``GET /fapi/v3/account``, usdm-facts.md A3-A6) -> the wallet balance per
    asset (the quantity ACCOUNT_UPDATE's ``wb`` reports: no unrealised PnL) and the reported margin
    figures. ccxt's own ``total`` is the margin balance (wallet + unrealised PnL, A6): comparing it with
    ``wb`` would report every price move as a balance mismatch."""
    if not isinstance(info, Mapping) or not isinstance(info.get("assets"), list):
        raise Malformed("no assets list in the account answer")
    balances: dict[str, Balance] = {}
    margins: dict[str, AssetMargin] = {}
    for entry in _entries(info.get("assets"), "assets"):
        asset = _asset(entry.get("asset"))
        wallet = _strict(entry.get("walletBalance"), f"{asset} walletBalance", required=True)
        margins[asset] = AssetMargin(
            asset, wallet, _strict(entry.get("marginBalance"), f"{asset} marginBalance", required=True),
            _strict(entry.get("unrealizedProfit"), f"{asset} unrealizedProfit", required=True),
            _strict(entry.get("availableBalance"), f"{asset} availableBalance", required=True),
            _strict(entry.get("maintMargin"), f"{asset} maintMargin", required=True))
        if wallet != 0:
            balances[asset] = Balance(asset, wallet, ZERO, _int(entry.get("updateTime")))
    summary = MarginSummary(
        margins, _strict(info.get("totalMaintMargin"), "totalMaintMargin", required=True),
        _strict(info.get("totalMarginBalance"), "totalMarginBalance", required=True))
    return balances, summary


# ---- raw Binance user-data payloads -------------------------------------------------------------

def _entries(value: Any, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
        raise Malformed(f"{what} is not a list of objects")
    return value


def balances_from_account_position(message: Mapping[str, Any], currency_code) -> dict[str, Balance]:
    """Spot ``outboundAccountPosition``: absolute free/locked of the assets it carries."""
    at = _int(message.get("u")) or _int(message.get("E"))
    out = {}
    for entry in _entries(message.get("B"), "balances"):
        asset = _asset(currency_code(entry.get("a")))
        out[asset] = Balance(asset=asset, free=_strict(entry.get("f"), f"{asset} free", required=True),
                             locked=_strict(entry.get("l"), f"{asset} locked", required=True), updated_ms=at)
    return out


def balances_from_futures_account_update(message: Mapping[str, Any], currency_code) -> dict[str, Balance]:
    """USD-M ``ACCOUNT_UPDATE``: the wallet balance of the assets it carries (the stream has no
    free/locked split, so the wallet balance is reported as free and locked as zero)."""
    data = message.get("a") or {}
    if not isinstance(data, Mapping):
        raise Malformed("account update is not an object")
    at = _int(message.get("T")) or _int(message.get("E"))
    out = {}
    for entry in _entries(data.get("B"), "balances"):
        asset = _asset(currency_code(entry.get("a")))
        out[asset] = Balance(asset=asset, free=_strict(entry.get("wb"), f"{asset} wallet balance", required=True),
                             locked=ZERO, updated_ms=at)
    return out


def positions_from_futures_account_update(message: Mapping[str, Any], symbol_of) -> list[Position]:
    """USD-M ``ACCOUNT_UPDATE``: positions it carries (zero amounts included: a closed position)."""
    data = message.get("a") or {}
    if not isinstance(data, Mapping):
        raise Malformed("account update is not an object")
    at = _int(message.get("T")) or _int(message.get("E"))
    out = []
    for entry in _entries(data.get("P"), "positions"):
        if not isinstance(entry.get("s"), str):
            raise Malformed("position entry without a symbol")
        side = position_side(entry.get("ps"))      # BOTH, or a hedge-mode leg (F5): never dropped, never netted
        out.append(Position(symbol=symbol_of(entry.get("s")), amount=_strict(entry.get("pa"), "position amount",
                                                                             required=True),
                            entry_price=_d(entry.get("ep")), updated_ms=at, side=side))
    return out
