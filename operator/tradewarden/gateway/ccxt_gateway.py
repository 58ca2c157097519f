"""The gateway: one account on one exchange, over ccxt, speaking only domain types and errors."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from .ccxt_import import install as _lazy_ccxt

_lazy_ccxt()       # before the first import of ccxt: only the exchanges in use are loaded

import ccxt

from ..domain import (AccountListing, Fill, GatewayError, Invalid, MarginSummary, Order, OrderNotFound, Position,
                      Section, Snapshot, SymbolNotListed, SymbolsResult, Temporary, Unsupported)
from .budget import RateBudgets, default_budgets, family_of, per_symbol_is_cheaper
from .errors import map_error, scrub
from .exchanges import forget_secrets, new_exchange, scrubbing_logger
from .markets import MarketsCache, default_markets
from .translate import (Malformed, balances_from_ccxt, fill_from_ccxt, futures_balances, order_from_binance_rest,
                        order_from_ccxt, position_risks_from_ccxt, positions_from_ccxt)

log = logging.getLogger("tradewarden.gateway")
T = TypeVar("T")

# what tradewarden needs from an exchange, as ccxt's `has` names them
REQUIRED_REST = ("fetchBalance", "fetchOpenOrders", "fetchOrder", "cancelOrder")
REQUIRED_STREAM = ("watchOrders", "watchBalance")
BINANCE_IDS = ("binance", "binanceusdm")


class CcxtGateway:
    """domain.Gateway over ccxt.async_support (REST) and ccxt.pro (user-data stream)."""

    def __init__(self, exchange_id: str, api_key: str, secret: str, endpoint: str | None = None, *,
                 budgets: RateBudgets | None = None,
                 concurrency: int = 8, stream_options: dict | None = None, markets: MarketsCache | None = None):
        if not api_key or not secret:
            raise Invalid("api key and secret are required")
        self.exchange_id = exchange_id
        self.endpoint = endpoint
        self.budgets = budgets if budgets is not None else default_budgets()
        self.markets_cache = markets if markets is not None else default_markets()
        self._secrets = (api_key, secret)
        self._logger = scrubbing_logger(self._secrets)
        try:
            self._rest = new_exchange(exchange_id, api_key, secret, endpoint, self.budgets, pro=False,
                                      logger=self._logger)
            self.futures = exchange_id == "binanceusdm" or \
                str(self._rest.options.get("defaultType", "spot")) in ("swap", "future", "linear")
            self.binance = exchange_id in BINANCE_IDS
            self._check_capabilities()
        except BaseException:
            forget_secrets(self._secrets)        # no gateway: nothing of it is left registered
            raise
        self._sem = asyncio.Semaphore(concurrency)
        self._clock_lock = asyncio.Lock()
        self._clock_generation = 0     # bumped by every offset measurement
        self._streams: set = set()
        self._stream_options = dict(stream_options or {})
        self._closed = False
        self.hedge_mode: bool | None = None     # USD-M position mode (None: not read yet / unreadable)

    def __repr__(self) -> str:
        return f"CcxtGateway(exchange={self.exchange_id!r}, endpoint={self.endpoint!r})"

    __str__ = __repr__

    # ---- construction ------------------------------------------------------------------------------

    def _check_capabilities(self) -> None:
        has = self._rest.has
        for cap in REQUIRED_REST:
            if not has.get(cap):
                raise Unsupported(f"unsupported: {cap}")
        if self.futures and not has.get("fetchPositions"):
            raise Unsupported("unsupported: fetchPositions")
        import ccxt.pro as pro
        pro_cls = getattr(pro, self.exchange_id, None)
        if pro_cls is None:
            raise Unsupported("unsupported: watchOrders")
        pro_has = pro_cls().has if not self.binance else {"watchOrders": True, "watchBalance": True}
        for cap in REQUIRED_STREAM:
            if not pro_has.get(cap):
                raise Unsupported(f"unsupported: {cap}")

    def new_pro(self) -> Any:
        """A fresh ccxt.pro instance sharing this gateway's markets, clock offset and budget."""
        pro = new_exchange(self.exchange_id, *self._secrets, self.endpoint, self.budgets, pro=True,
                           logger=self._logger)
        if self._rest.markets:
            pro.set_markets_from_exchange(self._rest)
        if "timeDifference" in self._rest.options:
            pro.options["timeDifference"] = self._rest.options["timeDifference"]
        return pro

    @property
    def rest_family(self) -> str:
        return "fapi" if self.futures else "api"

    def map_error(self, exc: BaseException, *, write: bool = False, what: str = "") -> GatewayError:
        return map_error(exc, write=write, secrets=self._secrets,
                         retry_after=getattr(exc, "tw_retry_after", None), what=what)

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]], *, write: bool = False) -> T:
        if self._closed:
            raise Invalid("gateway is closed")
        retried = False
        while True:
            clock = self._clock_generation
            try:
                async with self._sem:
                    return await fn()
            except GatewayError:
                raise
            except asyncio.CancelledError:
                raise
            except ccxt.InvalidNonce as exc:
                # -1021: our clock is off the venue's and the venue refused the request before
                # processing it (a write too), so re-measuring the offset and sending it once more
                # is safe; a second refusal is reported
                if not retried and await self.resync_clock(since=clock):
                    retried = True
                    continue
                raise self.map_error(exc, write=write, what=what) from None
            except Exception as exc:
                raise self.map_error(exc, write=write, what=what) from None

    async def resync_clock(self, since: int | None = None) -> bool:
        """Measure the venue's clock offset again (for REST and the next stream connection). ``since``:
        the measurement the refused request was signed with; when a concurrent caller has measured
        after it, that measurement is used. False when it could not be taken."""
        async with self._clock_lock:
            if since is not None and self._clock_generation != since:
                return True
            try:
                await self._rest.load_time_difference()
            except Exception as exc:   # noqa: BLE001 - the request's own error is what gets reported
                log.info("could not measure the venue's clock offset: %s", type(exc).__name__)
                return False
            self._clock_generation += 1
            return True

    async def start(self, symbols: Sequence[str] = ()) -> None:
        """Load markets (shared by every account of this exchange and endpoint), check every symbol
        is listed (reloading once: it may be a new listing) and the credentials work."""
        await self._load_markets()
        if any(s not in self._rest.markets for s in symbols):
            await self._load_markets(reload=True)
        self._check_symbols(symbols)
        await self._call("check credentials", lambda: self._rest.fetch_balance())
        if self.futures and self.binance:
            await self.read_position_mode()

    async def read_position_mode(self) -> bool | None:
        """USD-M position mode (``GET /fapi/v1/positionSide/dual``, weight 30, usdm-facts.md B1): read at
        start and on every ACCOUNT_CONFIG_UPDATE. None (and the last known value kept) when unreadable."""
        try:
            raw = await self._call("position mode", lambda: self._rest.fapiPrivateGetPositionSideDual())
        except GatewayError as exc:
            log.info("position mode not read: %s", exc)
            return self.hedge_mode
        value = raw.get("dualSidePosition") if isinstance(raw, dict) else None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            log.warning("position mode answer without a boolean dualSidePosition: kept %s", self.hedge_mode)
            return self.hedge_mode
        self.hedge_mode = value
        return value

    async def _load_markets(self, reload: bool = False) -> None:
        async def own() -> Any:
            await self._rest.load_markets(reload=True)
            return self._rest

        key = self.markets_cache.key(self.exchange_id, self.endpoint)
        shared = await self._call("load markets", lambda: self.markets_cache.get(key, own, reload=reload))
        if self._rest.markets is not shared.markets:
            self._rest.set_markets_from_exchange(shared)
            if shared.time_difference is not None:
                self._rest.options["timeDifference"] = shared.time_difference

    async def _ensure_markets(self) -> None:
        if not self._rest.markets:
            await self._load_markets()

    def _check_symbols(self, symbols: Sequence[str]) -> None:
        unknown = [s for s in symbols if s not in self._rest.markets]
        if unknown:
            raise SymbolNotListed("unknown symbol: " + ", ".join(unknown))

    # ---- snapshot ----------------------------------------------------------------------------------

    async def snapshot(self, symbols: Sequence[str]) -> Snapshot:
        """Balances, open orders and positions, fetched concurrently, each with its own outcome."""
        await self._ensure_markets()
        self._check_symbols(symbols)
        started_ms = int(time.time() * 1000)
        futures_binance = self.futures and self.binance
        account, orders, positions = await asyncio.gather(
            self._section(self._fetch_account()),
            self._section(self.fetch_open_orders(symbols)),
            self._section(self._fetch_positions(symbols)) if self.futures else _empty_list(),
        )
        # on the venue's clock, like the timestamps it is compared with, by the offset as measured now
        # (a -1021 during the snapshot measured it again); ccxt's timeDifference is ours minus the venue's
        taken_ms = started_ms - int(self._rest.options.get("timeDifference") or 0)
        balances = Section(value=account.value[0]) if account.ok else Section(error=account.error)
        margin = None
        if futures_binance and account.ok and account.value[1] is not None:
            risks = positions.value[1] if positions.ok else ()
            margin = replace(account.value[1], positions=tuple(risks), hedge_mode=self.hedge_mode)
        positions = Section(value=positions.value[0]) if positions.ok and self.futures else positions
        return Snapshot(taken_ms=taken_ms, balances=balances, open_orders=orders, positions=positions, margin=margin)

    @staticmethod
    async def _section(coro: Awaitable[T]) -> Section[T]:
        try:
            return Section(value=await coro)
        except GatewayError as exc:
            return Section(error=exc)

    async def fetch_balances(self) -> dict:
        return (await self._fetch_account())[0]

    async def _fetch_account(self) -> tuple[dict, MarginSummary | None]:
        """Balances (USD-M: the wallet balance, the quantity the stream's ``wb`` carries) and, on USD-M,
        the margin figures of the same answer."""
        raw = await self._call("balances", lambda: self._rest.fetch_balance())
        with _malformed("balances"):
            info = raw.get("info") if isinstance(raw, dict) else None
            if self.binance and self.futures:
                return futures_balances(info)
            if self.binance:   # ccxt parses an answer without the balance list as "no balances": refuse
                if not isinstance(info, dict) or not isinstance(info.get("balances"), list):
                    raise Malformed("no balances list in the account answer")
            return balances_from_ccxt(raw), None

    async def fetch_open_orders(self, symbols: Sequence[str]) -> list[Order]:
        """Every open order of ``symbols`` (USD-M: conditional algo orders included), listed the cheaper
        way: one query per symbol, or one for all symbols filtered here. All or nothing: a partial
        list would make orders look vanished."""
        if not symbols:
            return []
        wanted = set(symbols)
        per_symbol = per_symbol_is_cheaper(len(symbols), self.rest_family)

        async def listing(params: dict, algo: bool) -> list[Order]:
            if per_symbol:
                parts = await asyncio.gather(*(
                    self._call(f"open orders {s}", lambda s=s: self._rest.fetch_open_orders(s, None, None, dict(params)))
                    for s in symbols))
                raw = [o for part in parts for o in part]
            else:
                raw = await self._call("open orders", lambda: self._rest.fetch_open_orders(None, None, None, dict(params)))
            with _malformed("open orders"):
                if not isinstance(raw, list) or not all(isinstance(o, dict) for o in raw):
                    raise Malformed("the open orders answer is not a list of orders")
                return [order_from_ccxt(o, algo=algo) for o in raw if o.get("symbol") in wanted]

        if self.futures and self.binance:
            plain, algo = await asyncio.gather(listing({}, False), listing({"trigger": True}, True))
            return plain + algo
        return await listing({}, False)

    async def fetch_positions(self, symbols: Sequence[str] | None) -> list:
        return (await self._fetch_positions(symbols))[0]

    async def _fetch_positions(self, symbols: Sequence[str] | None) -> tuple[list, list]:
        """Positions by (symbol, side) and (Binance) their mark / liquidation prices, from one query."""
        raw = await self._call("positions", lambda: self._rest.fetch_positions())
        with _malformed("positions"):
            if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
                raise Malformed("the positions answer is not a list of positions")
            positions = positions_from_ccxt(raw, symbols, binance=self.binance)
            return positions, (position_risks_from_ccxt(raw, symbols) if self.binance else [])

    # ---- single orders -----------------------------------------------------------------------------

    @staticmethod
    def _ids(exchange_order_id: str, client_order_id: str) -> tuple[str | None, dict]:
        if not exchange_order_id and not client_order_id:
            raise Invalid("an exchange order id or a client order id is required")
        if exchange_order_id:
            return exchange_order_id, {}
        return None, {"clientOrderId": client_order_id}

    async def fetch_order(self, symbol: str, exchange_order_id: str = "", client_order_id: str = "",
                          *, algo: bool = False) -> Order:
        """The venue's current state of one order (OrderNotFound when it does not know it).
        ``algo``: a USD-M conditional order, kept by the Algo Service (``Order.algo``)."""
        await self._ensure_markets()
        self._check_symbols([symbol])
        oid, params = self._ids(exchange_order_id, client_order_id)
        if algo:
            params = {"trigger": True} if oid else {"trigger": True, "clientAlgoId": client_order_id}
        raw = await self._call("fetch order", lambda: self._rest.fetch_order(oid, symbol, params))
        with _malformed("fetch order"):
            if not isinstance(raw, dict):
                raise Malformed("the order answer is not an order")
            return order_from_ccxt(raw, algo=algo)

    async def cancel_order(self, symbol: str, exchange_order_id: str = "", client_order_id: str = "",
                           *, algo: bool = False) -> Order | None:
        """Cancel one order. OrderNotFound when the venue does not know it (or it is already final);
        UnknownOutcome when the answer is lost (5xx, timeout): query it, never assume."""
        await self._ensure_markets()
        self._check_symbols([symbol])
        oid, params = self._ids(exchange_order_id, client_order_id)
        if algo:
            params = {**params, "trigger": True}
            if not oid:
                params = {"trigger": True, "clientAlgoId": client_order_id}
        raw = await self._call("cancel order", lambda: self._rest.cancel_order(oid, symbol, params), write=True)
        if not isinstance(raw, dict) or (raw.get("id") is None and not raw.get("clientOrderId")):
            return None
        try:
            return order_from_ccxt(raw, algo=algo)
        except Malformed:
            return None     # the cancel was accepted; its echo is unreadable: the caller queries the order

    # ---- the emergency stop: the whole account ----------------------------------------------------

    async def order_history(self, symbol: str, *, since_ms: int = 0, until_ms: int = 0, from_order_id: str = "",
                            limit: int = 1000) -> list[Order]:
        """One page of allOrders (spot rest-api.md "All orders (USER_DATA)", weight 20; USD-M usdm-facts.md C1,
        weight 5): ``orderId`` returns orders >= it, else orders created in [startTime, endTime]."""
        await self._ensure_markets()
        self._check_symbols([symbol])
        params: dict[str, Any] = {}
        if from_order_id:
            params["orderId"] = from_order_id
        elif until_ms:
            params["endTime"] = until_ms
        raw = await self._call("order history", lambda: self._rest.fetch_orders(
            symbol, None if from_order_id else (since_ms or None), limit, params))
        with _malformed("order history"):
            if not isinstance(raw, list):
                raise Malformed("the order history is not a list")
            return sorted((order_from_ccxt(o) for o in raw), key=lambda o: _num(o.exchange_order_id))

    async def trade_history(self, symbol: str, *, since_ms: int = 0, until_ms: int = 0, from_trade_id: str = "",
                            limit: int = 1000) -> list[Fill]:
        """One page of myTrades (spot rest-api.md "Account trade list (USER_DATA)", weight 20 without orderId)
        or userTrades (USD-M usdm-facts.md E, weight 5). ``fromId`` cannot be combined with a time range."""
        await self._ensure_markets()
        self._check_symbols([symbol])
        params: dict[str, Any] = {}
        if from_trade_id:
            params["fromId"] = from_trade_id
        elif until_ms:
            params["endTime"] = until_ms
        raw = await self._call("trade history", lambda: self._rest.fetch_my_trades(
            symbol, None if from_trade_id else (since_ms or None), limit, params))
        with _malformed("trade history"):
            if not isinstance(raw, list):
                raise Malformed("the trade history is not a list")
            return sorted((fill_from_ccxt(t) for t in raw), key=lambda f: _num(f.trade_id))

    async def list_account(self, positions: bool = False) -> AccountListing:
        """Every open order of the whole account, on every symbol (listed in spec or not), in one query
        without a symbol: spot ``GET /api/v3/openOrders`` (weight 80, "orders for all symbols will be
        returned"); USD-M ``GET /fapi/v1/openOrders`` (40) plus ``GET /fapi/v1/openAlgoOrders`` (40),
        and with ``positions`` the account's positions (``positionRisk``, 5). All or nothing: any
        failed part raises (a partial listing must never verify anything)."""
        await self._ensure_markets()

        async def listing(params: dict, algo: bool) -> list[Order]:
            if self.binance:       # Binance's own answer, translated here (ccxt's parser: ~0.2 s per 1,000)
                fetch = (self._rest.fapiPrivateGetOpenAlgoOrders if algo else self._rest.fapiPrivateGetOpenOrders) \
                    if self.futures else self._rest.privateGetOpenOrders
                raw = await self._call("open orders (whole account)", lambda: fetch({}))
                with _malformed("open orders (whole account)"):
                    if not isinstance(raw, list):
                        raise Malformed("the open orders answer is not a list of orders")
                    return [order_from_binance_rest(o, self._symbol_of, algo=algo) for o in raw]
            raw = await self._call("open orders (whole account)",
                                   lambda: self._rest.fetch_open_orders(None, None, None, dict(params)))
            with _malformed("open orders (whole account)"):
                if not isinstance(raw, list) or not all(isinstance(o, dict) for o in raw):
                    raise Malformed("the open orders answer is not a list of orders")
                return [order_from_ccxt(o, algo=algo) for o in raw]

        jobs: list[Awaitable[Any]] = [listing({}, False)]
        if self.futures and self.binance:
            jobs.append(listing({"trigger": True}, True))
        if positions and self.futures:
            jobs.append(self.fetch_positions(None))
        parts = await asyncio.gather(*jobs)
        orders = [o for part in parts[:2 if self.futures and self.binance else 1] for o in part]
        held = parts[-1] if positions and self.futures else []
        return AccountListing(orders=orders, positions=held)

    def _symbol_of(self, market_id: str) -> str:
        """The unified symbol of a Binance market id of this gateway's venue (an unknown id: Malformed)."""
        market = self._rest.markets_by_id.get(market_id) if self._rest.markets_by_id else None
        if not market:
            raise Malformed(f"order on unknown market {market_id[:40]!r}")
        entry = market[0] if isinstance(market, list) else market
        return str(entry["symbol"])

    async def cancel_symbols(self, symbols: Sequence[str], algo_symbols: Sequence[str] = (),
                             listed: Sequence[Order] = ()) -> SymbolsResult:
        """Cancel every open order of each symbol (spot ``DELETE /api/v3/openOrders``, weight 1, answers
        with the cancelled orders; USD-M ``DELETE /fapi/v1/allOpenOrders`` and, for ``algo_symbols``,
        ``DELETE /fapi/v1/algoOpenOrders``, weight 1 each, answer only "done"), concurrently within the
        shared budget. ``done``: the cancelled orders (USD-M: the ``listed`` orders of the symbol, the
        venue's answer naming none). Every failure is kept with its symbol."""
        await self._ensure_markets()
        errors: dict[str, str] = {}
        retry_after = 0.0
        by_symbol: dict[tuple[str, bool], list[Order]] = {}
        for o in listed:
            by_symbol.setdefault((o.symbol, o.algo), []).append(o)

        async def one(symbol: str, algo: bool) -> list[Order]:
            nonlocal retry_after
            label = f"{symbol} (algo)" if algo else symbol
            params = {"trigger": True} if algo else {}
            spot_binance = self.binance and not self.futures
            try:
                if spot_binance:   # the raw answer: the cancelled orders, matched with what was listed
                    market_id = self._rest.market(symbol)["id"]
                    raw = await self._call(f"cancel all {label}",
                                           lambda: self._rest.privateDeleteOpenOrders({"symbol": market_id}),
                                           write=True)
                else:
                    raw = await self._call(f"cancel all {label}",
                                           lambda: self._rest.cancel_all_orders(symbol, dict(params)), write=True)
            except OrderNotFound:
                return []     # spot -2011: nothing open on the symbol any more
            except GatewayError as exc:
                errors[label] = f"{type(exc).__name__}: {exc}"
                retry_after = max(retry_after, float(getattr(exc, "retry_after", 0.0) or 0.0))
                return []
            if self.futures and self.binance:
                return list(by_symbol.get((symbol, algo), []))
            if spot_binance:
                known = {o.exchange_order_id: o for o in by_symbol.get((symbol, False), [])}
                out = []
                with _malformed(f"cancel all {label}"):
                    for row in raw if isinstance(raw, list) else []:
                        if isinstance(row, dict) and row.get("orderId") is not None:
                            out.append(known.get(str(row["orderId"])) or
                                       order_from_binance_rest(row, self._symbol_of))
                return out
            out: list[Order] = []
            for o in raw if isinstance(raw, list) else []:
                if isinstance(o, dict) and o.get("id") is not None:
                    try:
                        out.append(order_from_ccxt(o))
                    except Malformed:
                        continue
            return out

        jobs = [one(s, False) for s in symbols] + [one(s, True) for s in algo_symbols]
        parts = await asyncio.gather(*jobs)
        return SymbolsResult(done=[o for part in parts for o in part], errors=errors, retry_after_s=retry_after)

    async def close_positions(self, positions: Sequence[Position]) -> SymbolsResult:
        """USD-M: close each position with a reduce-only MARKET order of its size, opposite side
        (``POST /fapi/v1/order``, ``reduceOnly=true``: it can only shrink the position, never open or
        flip one). Spot has no positions: Unsupported."""
        if not self.futures:
            raise Unsupported("unsupported: positions on a spot account (nothing to flatten)")
        await self._ensure_markets()
        errors: dict[str, str] = {}
        retry_after = 0.0

        async def one(p: Position) -> Position | None:
            nonlocal retry_after
            side = "sell" if p.amount > 0 else "buy"
            try:
                await self._call(f"close position {p.symbol}", lambda: self._rest.create_order(
                    p.symbol, "market", side, str(abs(p.amount)), None, {"reduceOnly": True}), write=True)
            except GatewayError as exc:
                errors[p.symbol] = f"{type(exc).__name__}: {exc}"
                retry_after = max(retry_after, float(getattr(exc, "retry_after", 0.0) or 0.0))
                return None
            return p

        done = [p for p in await asyncio.gather(*(one(p) for p in positions)) if p is not None]
        return SymbolsResult(done=done, errors=errors, retry_after_s=retry_after)

    # ---- user-data stream --------------------------------------------------------------------------

    def stream(self, symbols: Sequence[str] = ()):
        """User-data events in order, with ConnectionEvent transitions; reconnects by itself.
        Close it with ``await it.aclose()`` (or ``gateway.close()``)."""
        from .stream import UserDataStream
        s = UserDataStream(self, symbols, **self._stream_options)
        self._streams.add(s)
        return s

    def _stream_closed(self, s) -> None:
        self._streams.discard(s)

    def budget_snapshot(self) -> list[dict]:
        return self.budgets.snapshot()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for s in list(self._streams):
            await s.aclose()
        try:
            await self._rest.close()
        finally:
            forget_secrets(self._secrets)

    async def __aenter__(self) -> "CcxtGateway":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


@contextlib.contextmanager
def _malformed(what: str):
    """A venue answer that cannot be trusted -> Temporary (the section stays stale, nothing guessed)."""
    try:
        yield
    except Malformed as exc:
        raise Temporary(f"{what}: malformed answer from the exchange: {exc}") from None


async def _empty_list() -> Section:
    return Section(value=[])


def create_gateway(exchange: str, api_key: str, secret: str, endpoint: str | None = None, *,
                   budgets: RateBudgets | None = None, **kwargs: Any) -> CcxtGateway:
    """The gateway of one account (see module doc). ``endpoint`` rewrites every REST and WS URL."""
    return CcxtGateway(exchange, api_key, secret, endpoint, budgets=budgets, **kwargs)


__all__ = ["CcxtGateway", "create_gateway", "scrub", "family_of"]


def _num(text: str) -> int:
    """Binance ids are integers; a non-numeric one sorts first (never raises)."""
    return int(text) if text.isdigit() else -1
