"""The user-data consumer of one account: domain events in socket order, connection transitions,
reconnection by itself.

How it works, and which ccxt 4.5.90 defects it designs around:

- Every connection uses a **fresh ccxt.pro instance** (markets and clock offset copied from the REST
  one, so no extra request). A recreated instance has no cached listenKey (``options[type]
  ['lastAuthenticatedTime']`` starts at 0, so a key the venue expired is never redialled), no
  half-deleted subscription state after a rejected subscribe (the ``KeyError('spot')`` defect, after
  which watches on the old instance hang), and no pending futures that ``eventStreamTerminated``
  forgot to reject. The old instance is closed (sockets, session, keepalive timers).
- ``watch_orders``, ``watch_balance`` and (USD-M) ``watch_positions`` run as the connection's
  watchers: they keep ccxt subscribed and are how a dropped socket surfaces (their futures are
  rejected with a NetworkError). On Binance the *events* are taken from the payloads themselves, tapped
  in socket order before ccxt's handlers run: ccxt resolves a watch future only if one is pending, so
  two payloads handled back to back (one socket read) would otherwise lose the first balance update,
  and three watchers would interleave. The account events so translated never reach ccxt's handlers
  (their parse would be thrown away; ``_CONSUMED``), so on Binance the watchers never return and only
  surface a dropped socket. Other exchanges yield what the watchers return.
- Payloads ccxt ignores or mishandles end the connection at once: ``listenKeyExpired``,
  ``eventStreamTerminated`` and ``serverShutdown``; a connection older than ``max_age_s`` (the venue
  drops them at 24 h) is rotated before the venue does it.
- A connect attempt that does not complete in ``connect_timeout_s`` is abandoned (ccxt can hang).
- Between attempts: capped exponential backoff with jitter. The first success is CONNECTED, every
  later one RECONNECTED (events may have been lost in the gap: reconcile now); each loss is
  DISCONNECTED with a scrubbed reason.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Sequence

from ..domain import (BalanceEvent, ConnectionEvent, ConnectionState, OrderEvent, PositionEvent, StreamEvent)
from .budget import backoff_delay, within
from .errors import scrub
from .translate import (Malformed, balances_from_account_position, balances_from_ccxt,
                        balances_from_futures_account_update, fill_from_execution, order_from_ccxt,
                        order_from_execution_report, positions_from_ccxt, positions_from_futures_account_update)

log = logging.getLogger("tradewarden.gateway.stream")

_END = object()
# account events the payload tap translates by itself: ccxt's handler never sees them (_on_payload)
_CONSUMED = frozenset({"executionReport", "ORDER_TRADE_UPDATE", "ALGO_UPDATE", "outboundAccountPosition",
                       "ACCOUNT_UPDATE", "balanceUpdate", "externalLockUpdate"})
_RECONNECT_EVENTS = {
    "listenKeyExpired": "listen key expired",
    "eventStreamTerminated": "event stream terminated",
    "serverShutdown": "server shutdown",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Connection:
    """Per-connection state: the pro instance, whether it was announced, why it must end."""

    def __init__(self, pro: Any):
        self.pro = pro
        self.announced = False
        self.rejected_code = None
        self.end = asyncio.get_running_loop().create_future()

    def finish(self, reason: str) -> None:
        if not self.end.done():
            self.end.set_result(reason)


class UserDataStream:
    """Async iterator of StreamEvents for one account; ``aclose()`` stops every task and socket."""

    def __init__(self, gateway: Any, symbols: Sequence[str] = (), *, backoff_base_s: float = 0.5,
                 backoff_cap_s: float = 30.0, connect_timeout_s: float = 15.0, max_age_s: float = 23.5 * 3600,
                 max_queue: int = 100_000):
        self.gw = gateway
        self.symbols = set(symbols)
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.connect_timeout_s, self.max_age_s, self.max_queue = connect_timeout_s, max_age_s, max_queue
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._conn: _Connection | None = None
        self._ever_connected = False
        self._closed = False
        self._side_tasks: set[asyncio.Task] = set()
        self.connects = 0          # successful connections (telemetry)
        self.attempts = 0          # connect attempts

    # ---- iteration ---------------------------------------------------------------------------------

    def __aiter__(self) -> "UserDataStream":
        return self

    async def __anext__(self) -> StreamEvent:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="tw-user-data")
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in list(self._side_tasks):
            t.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._queue.put_nowait(_END)
        self.gw._stream_closed(self)

    # ---- the supervisor ----------------------------------------------------------------------------

    def _emit(self, item: StreamEvent) -> None:
        if self._queue.qsize() >= self.max_queue:
            if self._conn is not None:
                self._conn.finish("consumer too slow: events dropped")
            return
        self._queue.put_nowait(item)

    def _announce(self, conn: _Connection) -> None:
        """CONNECTED / RECONNECTED, exactly once per connection and before its first event."""
        if conn.announced:
            return
        conn.announced = True
        state = ConnectionState.RECONNECTED if self._ever_connected else ConnectionState.CONNECTED
        self._ever_connected = True
        self.connects += 1
        self._emit(ConnectionEvent(state, "", _now_ms()))

    async def _supervise(self) -> None:
        attempt = 0
        reported_down = False
        while not self._closed:
            self.attempts += 1
            try:
                conn = _Connection(self.gw.new_pro())
            except Exception as exc:  # noqa: BLE001 - never a silent death of the supervisor
                reason = scrub(f"{type(exc).__name__}: {exc}", self.gw._secrets)
                if not reported_down:
                    self._emit(ConnectionEvent(ConnectionState.DISCONNECTED, reason, _now_ms()))
                    reported_down = True
                log.warning("user-data stream of %s cannot open a connection (%s)", self.gw.exchange_id, reason)
                await asyncio.sleep(backoff_delay(attempt, base=self.backoff_base_s, cap=self.backoff_cap_s))
                attempt += 1
                continue
            self._conn = conn
            conn.pro.tw_sink = (lambda client, message, conn=conn: self._on_payload(conn, client, message)) \
                if self.gw.binance else None
            reason = "closed"
            watchers: list[asyncio.Task] = []
            try:
                watchers = await within(self._connect(conn), self.connect_timeout_s)    # budget waits excluded
                self._announce(conn)
                reported_down = False
                attempt = 0
                reason = await self._hold(conn, watchers)
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                reason = "connect timed out"
            except Exception as exc:  # whatever ccxt raises: a reason, never a crash of the stream
                reason = scrub(f"{type(exc).__name__}: {exc}", self.gw._secrets)
            finally:
                conn.pro.tw_sink = None
                for t in watchers:
                    t.cancel()
                if watchers:
                    await asyncio.gather(*watchers, return_exceptions=True)
                try:
                    await asyncio.wait_for(conn.pro.close(), 5.0)
                except (Exception, asyncio.CancelledError) as exc:
                    if isinstance(exc, asyncio.CancelledError) and self._closed is False:
                        raise
                self._conn = None
            if self._closed:
                return
            if conn.rejected_code == -1021 or "InvalidNonce" in reason:
                # our clock drifted from the venue's: measure the offset again before the next attempt
                await self.gw.resync_clock()
            if conn.announced or not reported_down:
                self._emit(ConnectionEvent(ConnectionState.DISCONNECTED, reason, _now_ms()))
                reported_down = True
            log.info("user-data stream of %s down (%s); reconnecting", self.gw.exchange_id, reason)
            await asyncio.sleep(backoff_delay(attempt, base=self.backoff_base_s, cap=self.backoff_cap_s))
            attempt += 1

    async def _connect(self, conn: _Connection) -> list[asyncio.Task]:
        """Authenticate/subscribe and start the watchers; returns once the connection is up."""
        pro = conn.pro
        loop = asyncio.get_running_loop()
        if self.gw.binance:
            if self.gw.futures:
                await pro.authenticate({"type": "linear"})
                url = pro.get_private_ws_url("linear", pro.options["linear"]["listenKey"])
            else:
                # ws-api userDataStream.subscribe.signature (weight 2 of the spot REST allowance), acked
                await self.gw.budgets.for_url(pro.urls["api"]["public"]).acquire(2)
                await pro.authenticate({"type": "spot"})
                url = pro.urls["api"]["ws"]["ws-api"]["spot"]
        else:
            url = None
        watchers = [loop.create_task(self._watch(conn, "orders"), name="tw-watch-orders"),
                    loop.create_task(self._watch(conn, "balance"), name="tw-watch-balance")]
        if self.gw.futures:
            watchers.append(loop.create_task(self._watch(conn, "positions"), name="tw-watch-positions"))
        if url is not None:
            client = pro.clients.get(url) if pro.clients else None
            while client is None:
                await asyncio.sleep(0.01)
                client = pro.clients.get(url) if pro.clients else None
                for t in watchers:
                    if t.done():
                        t.result()  # a watcher failed before the socket was opened: raise its error
            await client.connected
        else:
            await asyncio.sleep(0)
        return watchers

    async def _hold(self, conn: _Connection, watchers: list[asyncio.Task]) -> str:
        """Until the connection ends: a watcher fails, a payload says so, or it is too old."""
        loop = asyncio.get_running_loop()
        age = loop.call_later(self.max_age_s, conn.finish, "connection rotated before the venue's 24 h limit")
        try:
            done, _ = await asyncio.wait([conn.end, *watchers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            age.cancel()
        if conn.end.done():
            return conn.end.result()
        for t in done:
            exc = t.exception() if not t.cancelled() else None
            if exc is not None:
                return scrub(f"{type(exc).__name__}: {exc}", self.gw._secrets)
        return "watcher ended"

    async def _watch(self, conn: _Connection, what: str) -> None:
        pro = conn.pro
        while True:
            if what == "orders":
                result = await pro.watch_orders()
            elif what == "balance":
                result = await pro.watch_balance()
            else:
                result = await pro.watch_positions()
            if not self.gw.binance:  # no payload tap: translate what the watcher returns
                self._from_result(conn, what, result)

    # ---- translation -------------------------------------------------------------------------------

    def _from_result(self, conn: _Connection, what: str, result: Any) -> None:
        self._announce(conn)
        now = _now_ms()
        if what == "orders":
            for o in result or []:
                order = order_from_ccxt(o)
                if not self.symbols or order.symbol in self.symbols:
                    self._emit(OrderEvent(order, order.updated_ms or now))
        elif what == "balance":
            bal = balances_from_ccxt(result or {})
            if bal:
                self._emit(BalanceEvent(bal, int(result.get("timestamp") or now)))
        else:
            pos = positions_from_ccxt(result or [], self.symbols or None)
            if pos:
                self._emit(PositionEvent(pos, now))

    @staticmethod
    def _spot_symbol(pro: Any, market_id: str) -> str | None:
        """The spot market of a Binance market id (the linear one may share it); None when unknown (a
        market listed since the markets were loaded: ccxt's parser reads it)."""
        for market in (pro.markets_by_id or {}).get(market_id) or ():
            if isinstance(market, dict) and market.get("spot"):
                return str(market["symbol"])
        return None

    def _on_payload(self, conn: _Connection, client: Any, message: Any) -> bool:
        """Every Binance user-data payload, in socket order, before ccxt handles it. True: the payload
        is an account event translated here (or deliberately ignored), and ccxt's own handler is skipped:
        it would parse each order again (ISO dates, Precise arithmetic) only to fill caches nothing here
        reads; 1,000 cancels of an emergency stop cost ~40% of the operator's CPU there. Subscription
        answers, errors and the events that end a connection still reach ccxt."""
        if conn is not self._conn or not isinstance(message, dict):
            return False
        inner = message.get("event") if isinstance(message.get("event"), dict) else message
        if isinstance(inner.get("data"), dict):
            inner = inner["data"]
        event = inner.get("e")
        if event is None:
            error = inner.get("error")
            if isinstance(error, dict) and error.get("code") is not None:
                conn.rejected_code = error.get("code")   # e.g. a rejected subscribe (-1021, -1022, -2015)
            return False  # request acks, pongs
        if event in _RECONNECT_EVENTS:
            conn.finish(_RECONNECT_EVENTS[event])
            return False
        pro = conn.pro
        at = int(inner.get("E") or inner.get("T") or _now_ms())
        if event in ("executionReport", "ORDER_TRADE_UPDATE", "ALGO_UPDATE"):
            payload = inner
            algo = event == "ALGO_UPDATE"
            if event != "executionReport":
                payload = dict(inner.get("o") or {})
                payload.setdefault("T", inner.get("T"))
                payload.setdefault("E", inner.get("E"))
            order = None
            if event == "executionReport":     # spot: Binance's own fields, unless only ccxt reads it right
                order = order_from_execution_report(payload, lambda m: self._spot_symbol(pro, m))
            if order is None:
                parsed = pro.parse_ws_order(payload)
                parsed.setdefault("info", payload)
                order = order_from_ccxt(parsed, algo=algo)
            if self.symbols and order.symbol not in self.symbols:
                return True
            fill = None
            if not algo:
                try:
                    fill = fill_from_execution(payload, order.symbol, pro.safe_currency_code)
                except Malformed as exc:   # the order's state still applies; trade history supplies the fill
                    log.warning("trade of order %s not recorded from the stream: %s", order.exchange_order_id, exc)
            self._announce(conn)
            self._emit(OrderEvent(order, at, fill))
        elif event == "outboundAccountPosition":
            balances = balances_from_account_position(inner, pro.safe_currency_code)
            if balances:
                self._announce(conn)
                self._emit(BalanceEvent(balances, at))
        elif event == "ACCOUNT_UPDATE":
            balances = balances_from_futures_account_update(inner, pro.safe_currency_code)
            positions = positions_from_futures_account_update(
                inner, lambda market_id: pro.safe_symbol(market_id, None, None, "swap"))
            if self.symbols:
                positions = [p for p in positions if p.symbol in self.symbols]
            self._announce(conn)
            if balances:
                self._emit(BalanceEvent(balances, at))
            if positions:
                self._emit(PositionEvent(positions, at))
        elif event == "ACCOUNT_CONFIG_UPDATE" and self.gw.futures:
            # leverage or multi-assets mode changed (usdm-facts.md F7): read the position mode again
            task = asyncio.get_running_loop().create_task(self.gw.read_position_mode())
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)
            return False
        # balanceUpdate (a deposit's delta) is always followed by outboundAccountPosition with absolute
        # values; externalLockUpdate likewise: nothing to emit from the delta itself.
        return event in _CONSUMED
