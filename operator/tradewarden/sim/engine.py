"""The simulator's exchange state and matching: markets, accounts, orders, trades, positions.

Pure and synchronous (no I/O): the HTTP/WebSocket layer in ``server.py`` calls into an ``Exchange`` and
receives every account event (``executionReport`` / ``ORDER_TRADE_UPDATE`` ...) through ``Exchange.listeners``.
Money is ``Decimal`` throughout. Open orders are indexed per account, venue and symbol so that listing and
cancel-all on a symbol cost O(orders on that symbol), not O(all orders).
"""
from __future__ import annotations

import itertools
import secrets
import string
import time
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Callable, Iterable

SPOT = "spot"
USDM = "usdm"
VENUES = (SPOT, USDM)
ZERO = Decimal(0)

SPOT_MAKER_FEE = Decimal("0.001")
SPOT_TAKER_FEE = Decimal("0.001")
USDM_MAKER_FEE = Decimal("0.0002")
USDM_TAKER_FEE = Decimal("0.0005")
DEFAULT_LEVERAGE = 20
MAINT_MARGIN_RATE = Decimal("0.004")

DEFAULT_MARKETS: dict[str, tuple[str, str, str, str]] = {
    # base: (price, tickSize, stepSize, futures quantity step)
    "BTC": ("50000", "0.01", "0.00001", "0.001"),
    "ETH": ("3000", "0.01", "0.0001", "0.001"),
    "BNB": ("600", "0.01", "0.001", "0.01"),
    "SOL": ("150", "0.01", "0.001", "1"),
    "XRP": ("0.5", "0.0001", "0.1", "0.1"),
    "ADA": ("0.4", "0.0001", "0.1", "1"),
    "DOGE": ("0.1", "0.00001", "1", "1"),
    "LTC": ("80", "0.01", "0.001", "0.001"),
}


class SimError(Exception):
    """A Binance error answer: HTTP status plus ``{"code": code, "msg": msg}``."""

    def __init__(self, code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def unknown_order(cancel: bool = False) -> SimError:
    if cancel:
        return SimError(-2011, "Unknown order sent.")
    return SimError(-2013, "Order does not exist.")


def now_ms() -> int:
    return int(time.time() * 1000)


def dec(value: Any, name: str = "value") -> Decimal:
    """Parse a decimal parameter like Binance: plain numbers only (no NaN/Infinity/exponent abuse)."""
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, bool) or value is None:
        raise SimError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    elif isinstance(value, (int, float)):
        d = Decimal(str(value))
    else:
        text = str(value).strip()
        if not text:
            raise SimError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        try:
            d = Decimal(text)
        except (InvalidOperation, ValueError):
            raise SimError(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                                  f"'^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'.") from None
    if not d.is_finite() or abs(d) > Decimal("1e20"):
        raise SimError(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                              f"'^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'.")
    return d


def f8(d: Decimal) -> str:
    """Spot formatting: 8 decimals, like Binance spot."""
    return format(d.quantize(Decimal("0.00000001"), rounding=ROUND_DOWN), "f")


def fplain(d: Decimal, places: int | None = None) -> str:
    """USD-M formatting: fixed number of places (market precision) or the shortest plain form."""
    if places is not None:
        return format(d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN), "f")
    if d == 0:
        return "0"
    text = format(d.normalize(), "f")
    return text


def places_of(step: Decimal) -> int:
    return max(0, -step.normalize().as_tuple().exponent)


@dataclass(slots=True)
class Market:
    venue: str
    symbol: str
    base: str
    quote: str
    tick: Decimal
    step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    min_price: Decimal
    max_price: Decimal
    price: Decimal
    max_num_orders: int = 200

    @property
    def price_places(self) -> int:
        return places_of(self.tick)

    @property
    def qty_places(self) -> int:
        return places_of(self.step)


@dataclass(slots=True)
class Order:
    venue: str
    account: "Account"
    symbol: str
    order_id: int
    client_order_id: str
    side: str
    type: str
    time_in_force: str
    price: Decimal
    orig_qty: Decimal
    time: int
    update_time: int
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    status: str = "NEW"
    reduce_only: bool = False
    stop_price: Decimal = ZERO
    orig_quote_qty: Decimal = ZERO
    position_side: str = "BOTH"      # USD-M: BOTH (one-way) or LONG / SHORT (hedge mode)
    parent_algo: "AlgoOrder | None" = None   # USD-M: the algo order this order is the triggered child of
    working_time: int = -1
    # spot: what is locked for this order and in which asset
    lock_asset: str = ""
    locked: Decimal = ZERO
    orig_client_order_id: str = ""   # set on cancel (the cancel request's own id goes to client_order_id)
    cancel_client_id: str = ""
    fills: list = field(default_factory=list)
    cache: str | None = None         # serialized GET shape while unchanged (listing 10k orders stays cheap)

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    @property
    def avg_price(self) -> Decimal:
        return self.cum_quote / self.executed_qty if self.executed_qty else ZERO


@dataclass(slots=True)
class AlgoOrder:
    """A USD-M conditional order (Algo Service since 2025-12-09): rests until the price reaches the trigger."""
    account: "Account"
    symbol: str
    algo_id: int
    client_algo_id: str
    side: str
    order_type: str            # STOP_MARKET | TAKE_PROFIT_MARKET | STOP | TAKE_PROFIT
    quantity: Decimal
    trigger_price: Decimal
    price: Decimal
    time_in_force: str
    reduce_only: bool
    create_time: int
    update_time: int
    # usdm-facts.md D4: NEW -> TRIGGERING -> TRIGGERED (child placed) -> FINISHED (child finished);
    # CANCELED, REJECTED (matching engine refused the child), EXPIRED (cancelled by the system)
    status: str = "NEW"
    trigger_time: int = 0
    order_id: int = 0          # the child regular order, once triggered
    position_side: str = "BOTH"
    close_position: bool = False
    reason: str = ""           # ALGO_UPDATE "rm": why the child was refused
    child: "Order | None" = None

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "TRIGGERING")

    def fires(self, last: Decimal, price: Decimal) -> bool:
        """STOP buys / TAKE_PROFIT sells fire on a rise to the trigger; the mirror cases on a fall."""
        rising = (self.side == "BUY") == self.order_type.startswith("STOP")
        return price >= self.trigger_price if rising else price <= self.trigger_price


@dataclass(slots=True)
class Trade:
    venue: str
    symbol: str
    trade_id: int
    order_id: int
    side: str
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    maker: bool
    realized_pnl: Decimal = ZERO


@dataclass(slots=True)
class Position:
    """One USD-M position row: (symbol, BOTH) in one-way mode, (symbol, LONG) / (symbol, SHORT) legs in
    hedge mode (usdm-facts.md B2). ``amount`` is signed (a SHORT leg is negative)."""
    symbol: str
    side: str = "BOTH"
    amount: Decimal = ZERO
    entry_price: Decimal = ZERO
    update_time: int = 0
    realized: Decimal = ZERO   # ACCOUNT_UPDATE "cr": accumulated realised PnL


class Account:
    """One API key: spot balances, USD-M wallet and positions, orders and trades on both venues."""

    def __init__(self, api_key: str, secret: str, uid: int):
        self.api_key = api_key
        self.secret = secret
        self.uid = uid
        self.spot: dict[str, list[Decimal]] = {}        # asset -> [free, locked]
        self.wallet: dict[str, Decimal] = {}            # USD-M asset -> wallet balance
        self.positions: dict[tuple[str, str], Position] = {}   # USD-M (symbol, side) -> position
        self.leverage: dict[str, int] = {}              # USD-M symbol -> leverage (both legs share it)
        self.dual_side = False                          # USD-M position mode: hedge (True) / one-way
        self.countdowns: dict[str, int] = {}            # USD-M symbol -> auto-cancel deadline (ms)
        self.wallet_time: dict[str, int] = {}           # USD-M asset -> last wallet change (assets[].updateTime)
        # venue -> symbol -> orderId -> open order (insertion order = time priority)
        self.open: dict[str, dict[str, dict[int, Order]]] = {SPOT: {}, USDM: {}}
        self.orders: dict[str, dict[int, Order]] = {SPOT: {}, USDM: {}}   # every order by id
        self.client_ids: dict[str, dict[tuple[str, str], int]] = {SPOT: {}, USDM: {}}
        self.trades: dict[str, list[Trade]] = {SPOT: [], USDM: []}
        self.algo_open: dict[str, dict[int, AlgoOrder]] = {}     # symbol -> algoId -> open algo order
        self.algo: dict[int, AlgoOrder] = {}
        self.deliver = True
        self.update_time = 0

    def __repr__(self) -> str:  # never show key or secret
        return f"Account(uid={self.uid})"

    # ---- views
    def open_orders(self, venue: str, symbol: str | None = None) -> list[Order]:
        book = self.open[venue]
        if symbol is not None:
            return list(book.get(symbol, {}).values())
        return [o for orders in book.values() for o in orders.values()]

    def open_count(self, venue: str, symbol: str | None = None) -> int:
        book = self.open[venue]
        if symbol is not None:
            return len(book.get(symbol, ()))
        return sum(len(v) for v in book.values())

    def lev(self, symbol: str) -> int:
        return self.leverage.get(symbol, DEFAULT_LEVERAGE)

    def open_positions(self) -> list[Position]:
        return [p for p in self.positions.values() if p.amount]

    def balance(self, asset: str) -> list[Decimal]:
        b = self.spot.get(asset)
        if b is None:
            b = self.spot[asset] = [ZERO, ZERO]
        return b

    def find(self, venue: str, symbol: str, order_id: int | None = None,
             client_order_id: str | None = None) -> Order | None:
        if order_id is not None:
            o = self.orders[venue].get(order_id)
            return o if o is not None and o.symbol == symbol else None
        if client_order_id is not None:
            oid = self.client_ids[venue].get((symbol, client_order_id))
            return self.orders[venue].get(oid) if oid is not None else None
        return None


Listener = Callable[[Account, str, dict], None]


def _client_id(prefix: str = "") -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(22 - len(prefix)))


class Exchange:
    """All markets and accounts; every state change notifies ``listeners(account, venue, event)``."""

    def __init__(self, clock: Callable[[], int] | None = None, max_num_orders: int = 200):
        self.clock = clock or now_ms
        self.max_num_orders = max_num_orders
        self.markets: dict[str, dict[str, Market]] = {SPOT: {}, USDM: {}}
        self.accounts: dict[str, Account] = {}
        self.listeners: list[Listener] = []
        self._order_ids = {SPOT: itertools.count(1_000_001), USDM: itertools.count(5_000_000_001)}
        self._trade_ids = {SPOT: itertools.count(300_000_001), USDM: itertools.count(700_000_001)}
        self._exec_ids = itertools.count(1)
        self._algo_ids = itertools.count(9_000_001)
        self._uids = itertools.count(350_000_001)
        # symbol -> {(api_key, orderId): order}, for crossing on price moves
        self._resting: dict[str, dict[str, dict[tuple[str, int], Order]]] = {SPOT: {}, USDM: {}}
        for base, (price, tick, step, fstep) in DEFAULT_MARKETS.items():
            self.add_market(base + "USDT", price=price, tick=tick, step=step, futures_step=fstep)

    # ---- markets
    def add_market(self, symbol: str, *, base: str | None = None, quote: str = "USDT", price: Any = "100",
                   tick: Any = "0.01", step: Any = "0.001", futures_step: Any | None = None,
                   min_notional: Any = "5", futures_min_notional: Any = "5",
                   venues: Iterable[str] = VENUES) -> None:
        symbol = symbol.upper()
        if base is None:
            if not symbol.endswith(quote):
                raise ValueError(f"cannot infer base asset of {symbol}; pass base=")
            base = symbol[: -len(quote)]
        for venue in venues:
            st = dec(futures_step if (venue == USDM and futures_step is not None) else step)
            self.markets[venue][symbol] = Market(
                venue=venue, symbol=symbol, base=base, quote=quote, tick=dec(tick), step=st, min_qty=st,
                max_qty=Decimal("9000000"), min_notional=dec(min_notional if venue == SPOT else futures_min_notional),
                min_price=dec(tick), max_price=Decimal("10000000"), price=dec(price),
                max_num_orders=self.max_num_orders)

    def market(self, venue: str, symbol: Any) -> Market:
        if not isinstance(symbol, str) or not symbol:
            raise SimError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        m = self.markets[venue].get(symbol)
        if m is None:
            raise SimError(-1121, "Invalid symbol.")
        return m

    # ---- accounts
    def add_account(self, api_key: str, secret: str, balances: dict[str, Any] | None = None,
                    futures_balances: dict[str, Any] | None = None) -> Account:
        if not api_key or not secret:
            raise ValueError("api_key and secret are required")
        if api_key in self.accounts:
            raise ValueError("an account with this API key already exists")
        acct = Account(api_key, secret, next(self._uids))
        for asset, amount in (balances or {}).items():
            acct.balance(asset.upper())[0] = dec(amount, asset)
        acct.update_time = self.clock()
        for asset, amount in (futures_balances or {}).items():
            acct.wallet[asset.upper()] = dec(amount, asset)
            acct.wallet_time[asset.upper()] = acct.update_time
        self.accounts[api_key] = acct
        return acct

    def account(self, api_key: str) -> Account | None:
        return self.accounts.get(api_key)

    def reset(self) -> None:
        self.accounts.clear()
        for venue in VENUES:
            self._resting[venue].clear()

    def _emit(self, acct: Account, venue: str, event: dict) -> None:
        for listener in list(self.listeners):
            listener(acct, venue, event)

    # ---- balances (deposits / withdrawals)
    def adjust_balance(self, acct: Account, asset: str, delta: Any, venue: str = SPOT) -> None:
        asset = asset.upper()
        d = dec(delta, "delta")
        t = self.clock()
        if venue == SPOT:
            b = acct.balance(asset)
            if b[0] + d < 0:
                raise SimError(-2010, "Account has insufficient balance for requested action.")
            b[0] += d
            acct.update_time = t
            self._emit(acct, SPOT, {"e": "balanceUpdate", "E": t, "a": asset, "d": f8(d), "T": t})
            self._emit_spot_position(acct, [asset], t)
        else:
            w = acct.wallet.get(asset, ZERO)
            if w + d < 0:
                raise SimError(-2019, "Margin is insufficient.")
            acct.wallet[asset] = w + d
            acct.wallet_time[asset] = t
            self._emit_account_update(acct, "DEPOSIT" if d >= 0 else "WITHDRAW", [asset], [], t, balance_change=d)

    # ---- order placement
    def place_order(self, acct: Account, venue: str, *, symbol: str, side: Any, type: Any, quantity: Any = None,
                    price: Any = None, time_in_force: Any = None, client_order_id: str | None = None,
                    reduce_only: bool = False, quote_order_qty: Any = None, created_ms: int | None = None,
                    position_side: Any = None, on_accepted: Callable[[Order], None] | None = None) -> Order:
        """Place an order as the exchange would; ``created_ms`` backdates it (out-of-band placement only);
        ``on_accepted`` runs once the order has its id, before its first event (an algo child: TRIGGERED
        names the child before the child's own events, usdm-facts.md D5)."""
        m = self.market(venue, symbol)
        pside = "BOTH"
        if venue == USDM:
            pside = self._position_side(acct, position_side, reduce_only)
        side = str(side or "").upper()
        if side not in ("BUY", "SELL"):
            raise SimError(-1117, "Invalid side.") if side else SimError(
                -1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        otype = str(type or "").upper()
        allowed = ("LIMIT", "MARKET", "LIMIT_MAKER") if venue == SPOT else ("LIMIT", "MARKET")
        if otype not in allowed:
            if not otype:
                raise SimError(-1102, "Mandatory parameter 'type' was not sent, was empty/null, or malformed.")
            raise SimError(-1116, "Invalid orderType.")
        tif = str(time_in_force).upper() if time_in_force else ""
        if otype == "LIMIT":
            if not tif:
                raise SimError(-1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.")
            if tif not in (("GTC", "IOC", "FOK") if venue == SPOT else ("GTC", "IOC", "FOK", "GTX")):
                raise SimError(-1115, "Invalid timeInForce.")
        else:
            if tif and (otype == "LIMIT_MAKER" or venue == SPOT):
                raise SimError(-1106, "Parameter 'timeInForce' sent when not required.")
            tif = "GTC"   # what Binance reports for LIMIT_MAKER and MARKET orders

        last = m.price
        if otype == "MARKET" and quote_order_qty not in (None, "") and venue == SPOT:
            qq = dec(quote_order_qty, "quoteOrderQty")
            if qq <= 0:
                raise SimError(-1013, "Filter failure: NOTIONAL")
            qty = (qq / last).quantize(m.step, rounding=ROUND_DOWN)
        else:
            if quantity in (None, ""):
                raise SimError(-1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
            qty = dec(quantity, "quantity")
            qq = ZERO
        if otype in ("LIMIT", "LIMIT_MAKER"):
            if price in (None, ""):
                raise SimError(-1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed.")
            px = dec(price, "price")
        else:
            if price not in (None, "") and venue == SPOT:
                raise SimError(-1106, "Parameter 'price' sent when not required.")
            px = ZERO
        self._check_filters(m, otype, qty, px)

        if client_order_id is not None:
            client_order_id = str(client_order_id)
            if not client_order_id or len(client_order_id) > 36 or not all(
                    c.isalnum() or c in "-_.:/" for c in client_order_id):
                raise SimError(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is "
                                      "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
            existing = acct.find(venue, m.symbol, client_order_id=client_order_id)
            if existing is not None and existing.is_open:
                if venue == SPOT:
                    raise SimError(-2010, "Duplicate order sent.")
                raise SimError(-4116, "ClientOrderId is duplicated.")
        else:
            client_order_id = _client_id("" if venue == SPOT else "web_")

        if acct.open_count(venue, m.symbol) >= m.max_num_orders:
            if venue == SPOT:
                raise SimError(-2010, "Account has too many open orders on the symbol.")
            raise SimError(-2025, "Reach max open order limit.")

        crosses = otype == "MARKET" or (side == "BUY" and px >= last) or (side == "SELL" and px <= last)
        if otype == "LIMIT_MAKER" and crosses:
            raise SimError(-2010, "Order would immediately match and take.")
        if venue == USDM and tif == "GTX" and crosses:
            raise SimError(-5022, "Due to the order could not be executed as maker, the Post Only order will be "
                                  "rejected. The order will not be recorded in the order history")

        t = self.clock()
        born = int(created_ms) if created_ms is not None else t
        order = Order(venue=venue, account=acct, symbol=m.symbol, order_id=0, client_order_id=client_order_id,
                      side=side, type=otype, time_in_force=tif, price=px, orig_qty=qty, time=born,
                      update_time=born, reduce_only=bool(reduce_only), orig_quote_qty=qq, working_time=born,
                      position_side=pside)

        if venue == SPOT:
            self._spot_reserve(acct, m, order, crosses)
        else:
            self._usdm_check(acct, m, order, crosses)

        order.order_id = next(self._order_ids[venue])
        acct.orders[venue][order.order_id] = order
        acct.client_ids[venue][(m.symbol, client_order_id)] = order.order_id
        if on_accepted is not None:
            on_accepted(order)

        if venue == SPOT:
            self._emit(acct, SPOT, self._execution_report(order, "NEW", t))
        else:
            self._emit(acct, USDM, self._order_trade_update(order, "NEW", t))

        if crosses:
            self._execute(order, order.remaining, last, maker=False, t=t)
        if order.is_open:
            if tif in ("IOC", "FOK"):
                self._finish(order, "EXPIRED", t)
            else:
                acct.open[venue].setdefault(m.symbol, {})[order.order_id] = order
                self._resting[venue].setdefault(m.symbol, {})[(acct.api_key, order.order_id)] = order
                if venue == SPOT:
                    self._emit_spot_position(acct, [order.lock_asset], t)
        return order

    def _check_filters(self, m: Market, otype: str, qty: Decimal, px: Decimal) -> None:
        if qty <= 0:
            raise SimError(-1013, "Filter failure: LOT_SIZE") if m.venue == SPOT else SimError(
                -4003, "Quantity less than or equal to zero.")
        if qty < m.min_qty or qty > m.max_qty or (qty % m.step) != 0:
            if m.venue == SPOT:
                raise SimError(-1013, "Filter failure: LOT_SIZE")
            if (qty % m.step) != 0:
                raise SimError(-1111, "Precision is over the maximum defined for this asset.")
            raise SimError(-4005, "Quantity greater than max quantity.")
        if otype != "MARKET":
            if px <= 0 or px < m.min_price or px > m.max_price or (px % m.tick) != 0:
                if m.venue == SPOT:
                    raise SimError(-1013, "Filter failure: PRICE_FILTER")
                if (px % m.tick) != 0:
                    raise SimError(-1111, "Precision is over the maximum defined for this asset.")
                raise SimError(-4014, "Price not increased by tick size.")
        notional = qty * (px if otype != "MARKET" else m.price)
        if notional < m.min_notional:
            if m.venue == SPOT:
                raise SimError(-1013, "Filter failure: NOTIONAL")
            raise SimError(-4164, f"Order's notional must be no smaller than {fplain(m.min_notional)} "
                                  f"(unless you choose reduce only).")

    # ---- spot balances
    def _spot_reserve(self, acct: Account, m: Market, order: Order, crosses: bool) -> None:
        if order.side == "BUY":
            asset = m.quote
            need = order.orig_qty * (order.price if order.type != "MARKET" else m.price)
        else:
            asset = m.base
            need = order.orig_qty
        b = acct.balance(asset)
        if b[0] < need:
            raise SimError(-2010, "Account has insufficient balance for requested action.")
        b[0] -= need
        b[1] += need
        order.lock_asset = asset
        order.locked = need

    def _release(self, order: Order) -> None:
        if order.venue != SPOT or not order.locked:
            return
        b = order.account.balance(order.lock_asset)
        b[1] -= order.locked
        b[0] += order.locked
        order.locked = ZERO

    # ---- USD-M margin
    def _position(self, acct: Account, symbol: str, side: str = "BOTH") -> Position:
        p = acct.positions.get((symbol, side))
        if p is None:
            p = acct.positions[(symbol, side)] = Position(symbol, side)
        return p

    @staticmethod
    def _position_side(acct: Account, given: Any, reduce_only: bool) -> str:
        """positionSide per the account's mode (usdm-facts.md B1, C3): one-way accepts only BOTH (the
        default); hedge mode requires LONG or SHORT and refuses reduceOnly ("cannot be sent in Hedge Mode")."""
        side = str(given).upper() if given not in (None, "") else ("" if acct.dual_side else "BOTH")
        if side not in ("BOTH", "LONG", "SHORT", ""):
            raise SimError(-1130, "Data sent for parameter 'positionSide' is not valid.")
        if acct.dual_side:
            if side not in ("LONG", "SHORT"):
                raise SimError(-4061, "Order's position side does not match user's setting.")
            if reduce_only:
                raise SimError(-1106, "Parameter 'reduceonly' sent when not required.")
        elif side != "BOTH":
            raise SimError(-4061, "Order's position side does not match user's setting.")
        return side

    def usdm_figures(self, acct: Account) -> dict[str, Decimal]:
        """usdm-facts.md A6: wallet excludes unrealised PnL; margin balance = wallet + UPnL; initial margin
        = position IM (at the mark price) + open-order IM; available = max(0, cross wallet + cross UPnL - IM)."""
        upnl = ZERO
        pos_margin = ZERO
        maint = ZERO
        for p in acct.open_positions():
            mark = self.markets[USDM][p.symbol].price
            upnl += p.amount * (mark - p.entry_price)
            notional = abs(p.amount) * mark
            pos_margin += notional / acct.lev(p.symbol)
            maint += notional * MAINT_MARGIN_RATE
        order_margin = ZERO
        for orders in acct.open[USDM].values():
            for o in orders.values():
                if not self._reduces(o):
                    order_margin += o.remaining * o.price / acct.lev(o.symbol)
        wallet = acct.wallet.get("USDT", ZERO)
        available = max(ZERO, wallet + upnl - pos_margin - order_margin)
        return {"wallet": wallet, "upnl": upnl, "position_margin": pos_margin, "order_margin": order_margin,
                "maint": maint, "available": available, "margin_balance": wallet + upnl}

    @staticmethod
    def _reduces(o: Order) -> bool:
        """usdm-facts.md C3 (general-info): reduce-only BOTH, LONG+SELL and SHORT+BUY reduce exposure."""
        return o.reduce_only or (o.position_side == "LONG" and o.side == "SELL") or \
            (o.position_side == "SHORT" and o.side == "BUY")

    def liquidation_price(self, acct: Account, symbol: str) -> Decimal:
        """Cross margin: the mark price of ``symbol`` (everything else fixed) at which the margin balance
        meets the maintenance margin (usdm-facts.md A6, liquidation when marginBalance <= maint. margin).
        One price for both hedge legs of a symbol; 0 when there is none (flat, or no positive solution)."""
        legs = [p for p in acct.open_positions() if p.symbol == symbol]
        if not legs:
            return ZERO
        others_upnl = others_maint = ZERO
        for p in acct.open_positions():
            if p.symbol != symbol:
                mark = self.markets[USDM][p.symbol].price
                others_upnl += p.amount * (mark - p.entry_price)
                others_maint += abs(p.amount) * mark * MAINT_MARGIN_RATE
        net = sum((p.amount for p in legs), ZERO)
        gross = sum((abs(p.amount) for p in legs), ZERO)
        denom = net - MAINT_MARGIN_RATE * gross
        if denom == 0:
            return ZERO
        wallet = acct.wallet.get("USDT", ZERO)
        lp = (others_maint - others_upnl - wallet + sum((p.amount * p.entry_price for p in legs), ZERO)) / denom
        return lp if lp > 0 else ZERO

    def _usdm_check(self, acct: Account, m: Market, order: Order, crosses: bool) -> None:
        p = acct.positions.get((m.symbol, order.position_side))
        amt = p.amount if p else ZERO
        signed = order.orig_qty if order.side == "BUY" else -order.orig_qty
        if order.reduce_only or self._reduces(order):
            if amt == 0 or (amt > 0) == (signed > 0) or abs(signed) > abs(amt):
                raise SimError(-2022, "ReduceOnly Order is rejected.")
            return
        # margin for the part that increases exposure
        increase = order.orig_qty
        if amt and (amt > 0) != (signed > 0):
            increase = max(ZERO, order.orig_qty - abs(amt))
        if increase == 0:
            return
        lev = acct.lev(m.symbol)
        px = order.price if order.type != "MARKET" else m.price
        need = increase * px / lev + order.orig_qty * px * USDM_TAKER_FEE
        if self.usdm_figures(acct)["available"] < need:
            raise SimError(-2019, "Margin is insufficient.")

    # ---- cancel
    def cancel_order(self, acct: Account, venue: str, symbol: str, order_id: Any = None,
                     client_order_id: str | None = None, new_client_order_id: str | None = None) -> Order:
        m = self.market(venue, symbol)
        oid = self._parse_order_id(order_id)
        if oid is None and not client_order_id:
            if venue == SPOT:
                raise SimError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
            raise SimError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        order = acct.find(venue, m.symbol, oid, client_order_id)
        if order is None or not order.is_open:
            raise unknown_order(cancel=True)
        self._cancel(order, new_client_order_id)
        return order

    @staticmethod
    def _parse_order_id(order_id: Any) -> int | None:
        if order_id in (None, ""):
            return None
        try:
            oid = int(str(order_id))
        except ValueError:
            raise SimError(-1100, "Illegal characters found in parameter 'orderId'; legal range is '^[0-9]{1,20}$'.") \
                from None
        if oid < 0 or oid >= 2**63:
            raise SimError(-1100, "Illegal characters found in parameter 'orderId'; legal range is '^[0-9]{1,20}$'.")
        return oid

    def _cancel(self, order: Order, new_client_order_id: str | None = None, t: int | None = None) -> None:
        t = t if t is not None else self.clock()
        order.orig_client_order_id = order.client_order_id
        order.cancel_client_id = new_client_order_id or _client_id()
        self._finish(order, "CANCELED", t)

    def cancel_all(self, acct: Account, venue: str, symbol: str) -> list[Order]:
        m = self.market(venue, symbol)
        book = acct.open[venue].get(m.symbol)
        if not book:
            return []
        orders = list(book.values())
        t = self.clock()
        for o in orders:
            self._cancel(o, None, t)
        return orders

    def _finish(self, order: Order, status: str, t: int) -> None:
        """Take an order off the book (CANCELED / EXPIRED / FILLED) and emit its events."""
        acct = order.account
        order.status = status
        order.update_time = t
        order.cache = None
        book = acct.open[order.venue].get(order.symbol)
        if book is not None:
            book.pop(order.order_id, None)
            if not book:
                del acct.open[order.venue][order.symbol]
        resting = self._resting[order.venue].get(order.symbol)
        if resting is not None:
            resting.pop((acct.api_key, order.order_id), None)
        if order.parent_algo is not None and not order.is_open:
            self._child_finished(order, t, emit_child=status != "FILLED")
            return
        if status == "FILLED":
            return  # the TRADE event already reported it
        if order.venue == SPOT:
            asset = order.lock_asset
            self._release(order)
            self._emit(acct, SPOT, self._execution_report(order, status, t))
            if asset:
                self._emit_spot_position(acct, [asset], t)
        else:
            self._emit(acct, USDM, self._order_trade_update(order, status, t))

    # ---- matching
    def set_price(self, symbol: str, price: Any, quantity: Any = None, venues: Iterable[str] = VENUES) -> list[Order]:
        """Move the market; resting orders the new price crosses fill at their limit price (maker).

        ``quantity`` bounds the total quantity filled by this move (partial fills); None = unlimited.
        """
        symbol = symbol.upper()
        px = dec(price, "price")
        if px <= 0:
            raise SimError(-1013, "Filter failure: PRICE_FILTER")
        venues = [v for v in venues if symbol in self.markets[v]]
        if not venues:
            raise SimError(-1121, "Invalid symbol.")
        budget = dec(quantity, "quantity") if quantity not in (None, "") else None
        touched: list[Order] = []
        t = self.clock()
        for venue in venues:
            self.markets[venue][symbol].price = px
            if venue == USDM:
                self._trigger_algos(symbol, px, t)
            resting = self._resting[venue].get(symbol)
            if not resting:
                continue
            crossed = [o for o in resting.values()
                       if (o.side == "BUY" and o.price >= px) or (o.side == "SELL" and o.price <= px)]
            # price-time priority: best price first, then oldest
            crossed.sort(key=lambda o: (-o.price if o.side == "BUY" else o.price, o.time, o.order_id))
            for o in crossed:
                if budget is not None and budget <= 0:
                    break
                q = o.remaining if budget is None else min(o.remaining, budget)
                q = q.quantize(self.markets[venue][symbol].step, rounding=ROUND_DOWN)
                if q <= 0:
                    break
                self._execute(o, q, o.price, maker=True, t=t)
                if budget is not None:
                    budget -= q
                touched.append(o)
        return touched

    def fill(self, acct: Account, venue: str | None, order_id: Any, quantity: Any = None,
             price: Any = None) -> Order:
        """Fill an open order out of band (a counterparty took it), fully or by ``quantity``."""
        oid = self._parse_order_id(order_id)
        order = None
        for v in ([venue] if venue else VENUES):
            o = acct.orders[v].get(oid) if oid is not None else None
            if o is not None:
                order = o
                break
        if order is None or not order.is_open:
            raise unknown_order()
        q = order.remaining if quantity in (None, "") else dec(quantity, "quantity")
        if q <= 0 or q > order.remaining:
            raise SimError(-1013, "Filter failure: LOT_SIZE")
        px = dec(price, "price") if price not in (None, "") else order.price
        if order.type != "MARKET" and ((order.side == "BUY" and px > order.price) or
                                       (order.side == "SELL" and px < order.price) or px <= 0):
            raise SimError(-1013, "Filter failure: PRICE_FILTER")   # a limit order never fills beyond its price
        self._execute(order, q, px, maker=True, t=self.clock())
        return order

    def _execute(self, order: Order, qty: Decimal, px: Decimal, maker: bool, t: int) -> None:
        acct = order.account
        m = self.markets[order.venue][order.symbol]
        quote = qty * px
        order.executed_qty += qty
        order.cum_quote += quote
        order.update_time = t
        order.cache = None
        order.status = "FILLED" if order.executed_qty >= order.orig_qty else "PARTIALLY_FILLED"
        tid = next(self._trade_ids[order.venue])
        if order.venue == SPOT:
            rate = SPOT_MAKER_FEE if maker else SPOT_TAKER_FEE
            if order.side == "BUY":
                fee_asset = m.base
                fee = (qty * rate).quantize(Decimal("0.00000001"))
                reserved = qty * (order.price if order.type != "MARKET" else m.price)
                reserved = min(reserved, order.locked)
                qb = acct.balance(m.quote)
                qb[1] -= reserved
                qb[0] += reserved - quote
                order.locked -= reserved
                acct.balance(m.base)[0] += qty - fee
            else:
                fee_asset = m.quote
                fee = (quote * rate).quantize(Decimal("0.00000001"))
                bb = acct.balance(m.base)
                bb[1] -= qty
                order.locked -= qty
                acct.balance(m.quote)[0] += quote - fee
            if not order.is_open and order.locked:
                self._release(order)
            trade = Trade(SPOT, order.symbol, tid, order.order_id, order.side, px, qty, quote, fee, fee_asset, t, maker)
            acct.trades[SPOT].append(trade)
            order.fills.append(trade)
            acct.update_time = t
            self._emit(acct, SPOT, self._execution_report(order, "TRADE", t, trade))
            self._emit_spot_position(acct, [m.base, m.quote], t)
        else:
            rate = USDM_MAKER_FEE if maker else USDM_TAKER_FEE
            fee = (quote * rate).quantize(Decimal("0.00000001"))
            p = self._position(acct, order.symbol, order.position_side)
            signed = qty if order.side == "BUY" else -qty
            realized = ZERO
            if p.amount == 0 or (p.amount > 0) == (signed > 0):
                total = abs(p.amount) + qty
                p.entry_price = (abs(p.amount) * p.entry_price + qty * px) / total
                p.amount += signed
            else:
                closed = min(qty, abs(p.amount))
                direction = 1 if p.amount > 0 else -1
                realized = closed * (px - p.entry_price) * direction
                p.amount += signed
                if p.amount == 0:
                    p.entry_price = ZERO
                elif (p.amount > 0) != (direction > 0):
                    p.entry_price = px  # flipped
            p.entry_price = p.entry_price.quantize(Decimal("0.00000001")) if p.amount else ZERO
            p.update_time = t
            p.realized += realized
            # wallet balance = transfers + realised PnL - commissions (usdm-facts.md A6); unrealised PnL never
            acct.wallet["USDT"] = acct.wallet.get("USDT", ZERO) + realized - fee
            acct.wallet_time["USDT"] = t
            trade = Trade(USDM, order.symbol, tid, order.order_id, order.side, px, qty, quote, fee, "USDT", t, maker,
                          realized_pnl=realized)
            acct.trades[USDM].append(trade)
            order.fills.append(trade)
            self._emit(acct, USDM, self._order_trade_update(order, "TRADE", t, trade))
            self._emit_account_update(acct, "ORDER", ["USDT"], [(order.symbol, order.position_side)], t,
                                      balance_change=ZERO)
        if not order.is_open:
            self._finish(order, "FILLED", t)

    # ---- events
    def _execution_report(self, o: Order, exec_type: str, t: int, trade: Trade | None = None) -> dict:
        canceled = o.status == "CANCELED" and exec_type == "CANCELED"
        ev = {
            "e": "executionReport", "E": t, "s": o.symbol,
            "c": (o.cancel_client_id or o.client_order_id) if canceled else o.client_order_id,
            "S": o.side, "o": o.type, "f": o.time_in_force, "q": f8(o.orig_qty), "p": f8(o.price),
            "P": "0.00000000", "F": "0.00000000", "g": -1, "C": o.orig_client_order_id if canceled else "",
            "x": exec_type, "X": o.status, "r": "NONE", "i": o.order_id,
            "l": f8(trade.qty) if trade else "0.00000000", "z": f8(o.executed_qty),
            "L": f8(trade.price) if trade else "0.00000000",
            "n": f8(trade.commission) if trade else "0", "N": trade.commission_asset if trade else None,
            "T": t, "t": trade.trade_id if trade else -1, "I": next(self._exec_ids),
            "w": o.is_open, "m": bool(trade.maker) if trade else False, "M": trade is not None, "O": o.time,
            "Z": f8(o.cum_quote), "Y": f8(trade.quote_qty) if trade else "0.00000000",
            "Q": f8(o.orig_quote_qty), "W": o.working_time, "V": "EXPIRE_MAKER",
        }
        return ev

    def _emit_spot_position(self, acct: Account, assets: Iterable[str], t: int) -> None:
        seen = []
        for a in assets:
            if a and a not in seen:
                seen.append(a)
        if not seen:
            return
        # every balance change (locks of a placed order, releases of a cancel too) is an account
        # update: REST account.updateTime must not lag the stream's "u", or a reconciler that
        # trusts the newer of the two keeps the stream's older value forever
        acct.update_time = max(acct.update_time, t)
        self._emit(acct, SPOT, {"e": "outboundAccountPosition", "E": t, "u": t,
                                "B": [{"a": a, "f": f8(acct.balance(a)[0]), "l": f8(acct.balance(a)[1])}
                                      for a in seen]})

    def _order_trade_update(self, o: Order, exec_type: str, t: int, trade: Trade | None = None) -> dict:
        m = self.markets[USDM][o.symbol]
        pp, qp = m.price_places, m.qty_places
        return {"e": "ORDER_TRADE_UPDATE", "E": t, "T": t, "o": {
            "s": o.symbol, "c": o.client_order_id, "S": o.side, "o": o.type, "f": o.time_in_force,
            "q": fplain(o.orig_qty, qp), "p": fplain(o.price, pp), "ap": fplain(o.avg_price, 5),
            "sp": "0", "x": exec_type, "X": o.status, "i": o.order_id,
            "l": fplain(trade.qty, qp) if trade else "0", "z": fplain(o.executed_qty, qp),
            "L": fplain(trade.price, pp) if trade else "0", "N": "USDT",
            "n": fplain(trade.commission, 8) if trade else "0", "T": t,
            "t": trade.trade_id if trade else 0, "b": "0", "a": "0", "m": bool(trade.maker) if trade else False,
            "R": o.reduce_only, "wt": "CONTRACT_PRICE", "ot": o.type, "ps": o.position_side, "cp": False,
            "pP": False, "si": 0, "ss": 0, "rp": fplain(trade.realized_pnl, 8) if trade else "0",
            "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0, "er": "0"}}

    def _emit_account_update(self, acct: Account, reason: str, assets: list[str], legs: list[tuple[str, str]],
                             t: int, balance_change: Decimal) -> None:
        """usdm-facts.md F5: only changed assets and positions; a position change pushes the symbol's BOTH
        row and the changed LONG / SHORT row; ``bc`` = balance change except PnL and commission. Keys as
        the doc example (``examples/ws_ACCOUNT_UPDATE.json``): no undocumented ``ma``."""
        balances = []
        for a in assets:
            w = acct.wallet.get(a, ZERO)
            balances.append({"a": a, "wb": fplain(w, 8), "cw": fplain(w, 8), "bc": fplain(balance_change, 8)})
        rows: list[tuple[str, str]] = []
        for s, side in legs:
            for key in ([(s, "BOTH"), (s, side)] if side != "BOTH" else [(s, "BOTH")]):
                if key not in rows:
                    rows.append(key)
        positions = []
        for s, side in rows:
            p = acct.positions.get((s, side)) or Position(s, side)
            m = self.markets[USDM][s]
            positions.append({"s": s, "pa": fplain(p.amount, m.qty_places), "ep": fplain(p.entry_price, 8),
                              "bep": fplain(p.entry_price, 8), "cr": fplain(p.realized, 8),
                              "up": fplain(p.amount * (m.price - p.entry_price), 8), "mt": "cross",
                              "iw": "0.00000000", "ps": side})
        self._emit(acct, USDM, {"e": "ACCOUNT_UPDATE", "E": t, "T": t,
                                "a": {"m": reason, "B": balances, "P": positions}})

    # ---- USD-M position mode, countdown cancel
    def set_dual_side(self, acct: Account, dual: bool) -> None:
        """usdm-facts.md B1: -4059 no change needed; refused with open orders (-4067) or a position (-4068)."""
        if acct.dual_side == dual:
            raise SimError(-4059, "No need to change position side.")
        if acct.open_count(USDM) or any(a.is_open for a in acct.algo.values()):
            raise SimError(-4067, "Position side cannot be changed if there exists open orders.")
        if acct.open_positions():
            raise SimError(-4068, "Position side cannot be changed if there exists position.")
        acct.dual_side = dual

    def set_countdown(self, acct: Account, symbol: str, countdown_ms: int) -> None:
        """usdm-facts.md C4: each call replaces the symbol's countdown; 0 stops it."""
        m = self.market(USDM, symbol)
        if countdown_ms == 0:
            acct.countdowns.pop(m.symbol, None)
        else:
            acct.countdowns[m.symbol] = self.clock() + countdown_ms

    def run_countdowns(self) -> int:
        """Cancel the open orders of every symbol whose countdown expired. Regular orders only: whether the
        countdown covers algo orders is not documented (usdm-facts.md C4, I-11); the doc says "open orders"."""
        now = self.clock()
        n = 0
        for acct in self.accounts.values():
            for symbol, deadline in list(acct.countdowns.items()):
                if deadline <= now:
                    del acct.countdowns[symbol]
                    n += len(self.cancel_all(acct, USDM, symbol))
        return n

    # ---- USD-M algo (conditional) orders
    def place_algo(self, acct: Account, *, symbol: str, side: Any, order_type: Any, quantity: Any,
                   trigger_price: Any, price: Any = None, time_in_force: Any = None,
                   client_algo_id: str | None = None, reduce_only: bool = False, position_side: Any = None,
                   close_position: bool = False) -> AlgoOrder:
        m = self.market(USDM, symbol)
        side = str(side or "").upper()
        if side not in ("BUY", "SELL"):
            raise SimError(-1117, "Invalid side.")
        otype = str(order_type or "").upper()
        if otype not in ("STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT"):
            raise SimError(-1116, "Invalid orderType.")
        pside = self._position_side(acct, position_side, reduce_only)
        if close_position:
            # usdm-facts.md C3: closePosition not with quantity or reduceOnly; hedge: not BUY+LONG / SELL+SHORT
            if quantity not in (None, "", "0"):
                raise SimError(-4137, "Quantity must be zero with closePosition equals true.")
            if reduce_only:
                raise SimError(-4138, "Reduce only must be true with closePosition equals true.")
            if (pside, side) in (("LONG", "BUY"), ("SHORT", "SELL")):
                raise SimError(-4061, "Order's position side does not match user's setting.")
            if not otype.endswith("_MARKET"):
                raise SimError(-1116, "Invalid orderType.")
            qty = ZERO
        else:
            qty = dec(quantity, "quantity")
            if qty <= 0 or (qty % m.step) != 0:
                raise SimError(-1111, "Precision is over the maximum defined for this asset.")
        trig = dec(trigger_price, "triggerPrice")
        if trig <= 0 or (trig % m.tick) != 0:
            raise SimError(-1111, "Precision is over the maximum defined for this asset.")
        px = ZERO
        if otype in ("STOP", "TAKE_PROFIT"):
            px = dec(price, "price")
            if px <= 0 or (px % m.tick) != 0:
                raise SimError(-1111, "Precision is over the maximum defined for this asset.")
        t = self.clock()
        algo = AlgoOrder(acct, m.symbol, next(self._algo_ids), str(client_algo_id or _client_id()), side, otype, qty,
                         trig, px, str(time_in_force or "GTC").upper(), bool(reduce_only), t, t,
                         position_side=pside, close_position=bool(close_position))
        if algo.fires(m.price, m.price):
            raise SimError(-2021, "Order would immediately trigger.")
        acct.algo[algo.algo_id] = algo
        acct.algo_open.setdefault(m.symbol, {})[algo.algo_id] = algo
        self._emit(acct, USDM, self._algo_update(algo, t))
        return algo

    def find_algo(self, acct: Account, algo_id: Any = None, client_algo_id: str | None = None) -> AlgoOrder | None:
        aid = self._parse_order_id(algo_id)
        if aid is not None:
            return acct.algo.get(aid)
        if client_algo_id:
            for a in acct.algo.values():
                if a.client_algo_id == client_algo_id:
                    return a
        return None

    def _algo_status(self, algo: AlgoOrder, status: str, t: int) -> None:
        """Move an algo order to ``status`` and emit its ALGO_UPDATE; it leaves the open book once it is no
        longer waiting for its trigger (openAlgoOrders lists NEW / TRIGGERING ones)."""
        algo.status = status
        algo.update_time = t
        if not algo.is_open:
            book = algo.account.algo_open.get(algo.symbol)
            if book is not None:
                book.pop(algo.algo_id, None)
                if not book:
                    del algo.account.algo_open[algo.symbol]
        self._emit(algo.account, USDM, self._algo_update(algo, t))

    _close_algo = _algo_status

    def cancel_algo(self, algo: AlgoOrder) -> None:
        if not algo.is_open:
            raise unknown_order(cancel=True)
        self._close_algo(algo, "CANCELED", self.clock())

    def cancel_all_algo(self, acct: Account, symbol: str) -> list[AlgoOrder]:
        m = self.market(USDM, symbol)
        algos = list(acct.algo_open.get(m.symbol, {}).values())
        t = self.clock()
        for a in algos:
            self._close_algo(a, "CANCELED", t)
        return algos

    def _trigger_algos(self, symbol: str, px: Decimal, t: int) -> None:
        for acct in self.accounts.values():
            book = acct.algo_open.get(symbol)
            if not book:
                continue
            for algo in [a for a in book.values() if a.status == "NEW" and a.fires(px, px)]:
                self.trigger_algo(algo, t)

    def trigger_algo(self, algo: AlgoOrder, t: int | None = None) -> None:
        """usdm-facts.md D4/D5: TRIGGERING (``ai`` "", no ap/aq/act), then the matching engine gets a NEW
        regular order with its own id: TRIGGERED names it (``ai``) before the child's own
        ORDER_TRADE_UPDATEs; FINISHED follows when the child is filled or cancelled. A child the matching
        engine refuses makes the algo REJECTED with the reason in ``rm``. The child's client order id is
        not documented (usdm-facts.md I-11): the simulator gives it a fresh one."""
        t = self.clock() if t is None else t
        acct = algo.account
        algo.trigger_time = t
        self._algo_status(algo, "TRIGGERING", t)
        market = algo.order_type.endswith("MARKET")
        qty: Decimal = algo.quantity
        reduce_only = algo.reduce_only or algo.close_position
        if algo.close_position:
            p = acct.positions.get((algo.symbol, algo.position_side))
            qty = abs(p.amount) if p is not None else ZERO
            if algo.position_side != "BOTH":
                reduce_only = False          # hedge mode: the leg and side say it closes (C3)

        def accepted(child: Order) -> None:
            child.parent_algo = algo
            algo.child = child
            algo.order_id = child.order_id
            self._algo_status(algo, "TRIGGERED", t)

        try:
            if qty <= 0:
                raise SimError(-2022, "ReduceOnly Order is rejected.")
            child = self.place_order(acct, USDM, symbol=algo.symbol, side=algo.side,
                                     type="MARKET" if market else "LIMIT", quantity=qty,
                                     price=None if market else algo.price,
                                     time_in_force=None if market else algo.time_in_force,
                                     reduce_only=reduce_only and algo.position_side == "BOTH",
                                     position_side=algo.position_side, on_accepted=accepted)
        except SimError as e:
            algo.reason = "Reduce Only reject" if e.code == -2022 else e.msg
            self._algo_status(algo, "REJECTED", t)
            return
        if not child.is_open and algo.status == "TRIGGERED":
            self._child_finished(child, t, emit_child=False)

    def _child_finished(self, child: Order, t: int, emit_child: bool) -> None:
        algo = child.parent_algo
        if emit_child:
            self._emit(child.account, USDM, self._order_trade_update(child, child.status, t))
        if algo is not None and algo.status == "TRIGGERED":
            self._algo_status(algo, "FINISHED", t)

    def _algo_update(self, a: AlgoOrder, t: int) -> dict:
        """Keys as ``examples/ws_ALGO_UPDATE.json``; while TRIGGERING no ap/aq/act (captured fixture);
        ``T`` transaction time, ``E`` event time (usdm-facts.md I-1: the later reading, T <= E)."""
        m = self.markets[USDM][a.symbol]
        o: dict[str, Any] = {
            "caid": a.client_algo_id, "aid": a.algo_id, "at": "CONDITIONAL", "o": a.order_type, "s": a.symbol,
            "S": a.side, "ps": a.position_side, "f": a.time_in_force, "q": fplain(a.quantity, m.qty_places),
            "X": a.status, "ai": str(a.order_id or "")}
        if a.status != "TRIGGERING":
            child = a.child
            o["ap"] = fplain(child.avg_price if child else ZERO, 5)
            o["aq"] = fplain(child.executed_qty if child else ZERO, m.qty_places)
            o["act"] = child.type if child else "0"
        o.update({"tp": fplain(a.trigger_price, m.price_places), "p": fplain(a.price, m.price_places),
                  "V": "EXPIRE_MAKER", "wt": "CONTRACT_PRICE", "pm": "NONE", "cp": a.close_position, "pP": False,
                  "R": a.reduce_only, "tt": a.trigger_time, "gtd": 0})
        if a.reason:
            o["rm"] = a.reason
        return {"e": "ALGO_UPDATE", "T": t, "E": t, "o": o}
