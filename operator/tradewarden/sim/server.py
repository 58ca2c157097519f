"""The simulator's aiohttp server: Binance spot + USD-M REST, user-data WebSockets and the /sim/v1 control API.

Spot and USD-M live side by side on one port, on Binance's own paths (``/api/v3/...``, ``/fapi/v1...``,
``/ws-api/v3``, ``/private/ws?listenKey=``, ``/ws/<listenKey>``). Weights and limits are counted per client
IP and venue like Binance; faults, clock offset, dropped/suppressed streams and listen-key expiry are under
the control API (``docs/simulator.md``).
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from . import auth, control as control_api, faults as fault_mod, handlers
from .engine import SPOT, USDM, VENUES, Account, Exchange, Order, SimError, unknown_order
from .faults import Fault
from .limits import (SPOT_ORDERS_10S, SPOT_WEIGHT_LIMIT, USDM_ORDERS_1M, USDM_WEIGHT_LIMIT, RateLimiter,
                     RateState)
from .listen_keys import LISTEN_KEY_TTL_MS, ListenKeys
from .wire import Request, Route, error_response, json_response

log = logging.getLogger("tradewarden.sim")

__all__ = ["Simulator", "Fault", "Route", "Request", "LISTEN_KEY_TTL_MS", "RateState"]


@dataclass(eq=False)
class StreamConn:
    """One user-data WebSocket: events for its account(s) are queued and written in order."""
    kind: str                           # "ws-api" | "listenKey"
    ws: web.WebSocketResponse
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    subscriptions: dict[int, Account] = field(default_factory=dict)   # ws-api: subscriptionId -> account
    listen_key: str | None = None
    account: Account | None = None
    dead: bool = False                  # listen key expired: the socket stays up but gets nothing
    writer: asyncio.Task | None = None


_json = json_response
_err = error_response


class Simulator:
    """A Binance-compatible exchange on 127.0.0.1 (spot + USD-M) with a control API for tests."""

    def __init__(self, control: bool = False, *, spot_weight_limit: int = SPOT_WEIGHT_LIMIT,
                 futures_weight_limit: int = USDM_WEIGHT_LIMIT, spot_orders_10s: int = SPOT_ORDERS_10S,
                 futures_orders_1m: int = USDM_ORDERS_1M, ban_s: int = 120, max_num_orders: int = 200,
                 ws_ping_interval_s: float = 20.0, ws_lifetime_s: float = 86_400.0, request_log_size: int = 10_000):
        self.control = control
        self.clock_offset_ms = 0
        self.exchange = Exchange(clock=self.now_ms, max_num_orders=max_num_orders)
        self.exchange.listeners.append(self._on_event)
        self.rate_limiter = RateLimiter(spot_weight_limit, futures_weight_limit, spot_orders_10s,
                                        futures_orders_1m, ban_s)
        self.ws_ping_interval_s = ws_ping_interval_s
        self.ws_lifetime_s = ws_lifetime_s
        self.faults: list[Fault] = []
        self._fault_ids = 0
        self.request_log: collections.deque = collections.deque(maxlen=request_log_size)
        self.listen_keys = ListenKeys()                 # listenKey -> {"account": Account, "expires": ms}
        self.streams: set[StreamConn] = set()
        self._ws_api_sub_ids = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._expiry_task: asyncio.Task | None = None
        self.url = ""
        self.host = ""
        self.port = 0
        self.routes: dict[tuple[str, str], Route] = {}
        handlers.register(self)
        self._control_routes = control_api.routes(self) if control else {}

    # ---- lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "Simulator":
        app = web.Application(middlewares=[self._middleware], client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        sockets = self._site._server.sockets  # type: ignore[union-attr]
        self.host, self.port = sockets[0].getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._expiry_task = asyncio.create_task(self._expire_loop())
        return self

    async def stop(self) -> None:
        if self._expiry_task:
            self._expiry_task.cancel()
            self._expiry_task = None
        for conn in list(self.streams):
            if conn.kind == "ws-api":
                self._send(conn, {"event": {"e": "serverShutdown", "E": self.now_ms()}})
        await self.drop_streams(abort=False)
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "Simulator":
        if not self.url:
            await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ---- Python API (the same operations as the control API)
    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def add_account(self, api_key: str, secret: str, balances: dict[str, Any] | None = None,
                    futures_balances: dict[str, Any] | None = None) -> Account:
        return self.exchange.add_account(api_key, secret, balances, futures_balances)

    def add_market(self, symbol: str, **kw: Any) -> None:
        self.exchange.add_market(symbol, **kw)

    def account(self, api_key: str) -> Account:
        acct = self.exchange.account(api_key)
        if acct is None:
            raise KeyError("unknown account")
        return acct

    def set_price(self, symbol: str, price: Any, quantity: Any = None, venue: str | None = None) -> list[Order]:
        return self.exchange.set_price(symbol, price, quantity, venues=[venue] if venue else VENUES)

    def place_order(self, api_key: str, venue: str = SPOT, **kw: Any) -> Order:
        return self.exchange.place_order(self.account(api_key), venue, **kw)

    def cancel_order(self, api_key: str, order_id: int, venue: str | None = None) -> Order:
        acct = self.account(api_key)
        for v in ([venue] if venue else VENUES):
            o = acct.orders[v].get(int(order_id))
            if o is not None:
                return self.exchange.cancel_order(acct, v, o.symbol, order_id=o.order_id)
        raise unknown_order(cancel=True)

    def fill(self, api_key: str, order_id: int, quantity: Any = None, price: Any = None) -> Order:
        return self.exchange.fill(self.account(api_key), None, order_id, quantity, price)

    def adjust_balance(self, api_key: str, asset: str, delta: Any, venue: str = SPOT) -> None:
        self.exchange.adjust_balance(self.account(api_key), asset, delta, venue)

    def set_deliver(self, api_key: str, deliver: bool) -> None:
        self.account(api_key).deliver = bool(deliver)

    def set_clock_offset(self, offset_ms: int) -> None:
        self.clock_offset_ms = int(offset_ms)

    def add_fault(self, *, method: str | None = None, path: str = "*", status: int | None = None,
                  code: int | None = None, msg: str | None = None, latency_ms: int = 0,
                  retry_after: int | None = None, count: int | None = None, processed: bool = False,
                  body: Any = None) -> Fault:
        self._fault_ids += 1
        f = Fault(method, path, status, code, msg, int(latency_ms), retry_after, count, processed, self._fault_ids,
                  body)
        self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        self.faults.clear()

    # the limits live in the RateLimiter; these names stay the Simulator's public API
    @property
    def limits(self) -> dict[str, int]:
        return self.rate_limiter.limits

    @property
    def order_limits(self) -> dict[str, int]:
        return self.rate_limiter.order_limits

    @property
    def ban_s(self) -> int:
        return self.rate_limiter.ban_s

    def set_limits(self, spot_weight: int | None = None, futures_weight: int | None = None,
                   spot_orders_10s: int | None = None, futures_orders_1m: int | None = None,
                   ban_s: int | None = None) -> None:
        self.rate_limiter.set(spot_weight, futures_weight, spot_orders_10s, futures_orders_1m, ban_s)

    async def drop_streams(self, abort: bool = False) -> int:
        """Close every user-data socket (``abort``: a TCP drop without a close frame)."""
        conns = list(self.streams)
        for conn in conns:
            self.streams.discard(conn)
            conn.queue.put_nowait(None)
            if not abort and conn.writer is not None:   # flush what is queued (e.g. serverShutdown) first
                await asyncio.wait([conn.writer], timeout=1.0)
            try:
                if abort:
                    transport = conn.ws._req.transport if conn.ws._req is not None else None  # noqa: SLF001
                    if transport is not None:
                        transport.abort()
                else:
                    await conn.ws.close(code=1000, message=b"")
            except Exception:  # noqa: BLE001 - a socket already gone is fine
                pass
        return len(conns)

    def expire_listen_keys(self, api_key: str | None = None) -> int:
        """Expire listen keys now (all, or one account's): ``listenKeyExpired`` goes to their sockets."""
        n = 0
        for key, info in list(self.listen_keys.items()):
            if api_key is None or info["account"].api_key == api_key:
                self._expire_key(key)
                n += 1
        return n

    async def reset(self) -> None:
        await self.drop_streams()
        self.exchange.reset()
        self.listen_keys.clear()
        self.faults.clear()
        self.request_log.clear()
        self.rate_limiter.reset()
        self.clock_offset_ms = 0

    def requests(self) -> list[dict]:
        return list(self.request_log)

    # ---- listen keys
    def _listen_key_for(self, acct: Account) -> str:
        return self.listen_keys.for_account(acct, self.now_ms())

    def _expire_key(self, key: str) -> None:
        info = self.listen_keys.pop(key, None)
        if info is None:
            return
        ev = {"e": "listenKeyExpired", "E": self.now_ms(), "listenKey": key}
        for conn in list(self.streams):
            if conn.kind == "listenKey" and conn.listen_key == key and not conn.dead:
                self._send(conn, ev)
                conn.dead = True

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.exchange.run_countdowns()
            for key in self.listen_keys.due(self.now_ms()):
                self._expire_key(key)

    # ---- events -> sockets
    def _on_event(self, acct: Account, venue: str, event: dict) -> None:
        if not acct.deliver:
            return
        for conn in list(self.streams):
            if conn.dead:
                continue
            if venue == SPOT and conn.kind == "ws-api":
                for sub_id, sub_acct in conn.subscriptions.items():
                    if sub_acct is acct:
                        self._send(conn, {"subscriptionId": sub_id, "event": event})
            elif venue == USDM and conn.kind == "listenKey" and conn.account is acct:
                self._send(conn, event)

    @staticmethod
    def _send(conn: StreamConn, payload: dict) -> None:
        conn.queue.put_nowait(json.dumps(payload, separators=(",", ":")))

    async def _writer(self, conn: StreamConn) -> None:
        while True:
            text = await conn.queue.get()
            if text is None or conn.ws.closed:
                return
            try:
                await conn.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    # ---- HTTP plumbing
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status == 404:
                return _json({"code": -1000, "msg": f"Unknown path: {request.method} {request.path}"}, status=404)
            if e.status == 405:
                return _json({"code": -1000, "msg": f"Method {request.method} is not allowed on {request.path}"},
                             status=405)
            if e.status == 413:
                return _json({"code": -1101, "msg": "Too many parameters sent for this endpoint."}, status=400)
            raise
        except SimError as e:
            return _err(e)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:  # noqa: BLE001 - never a stack trace or a bare 500 on the wire
            log.exception("simulator internal error on %s %s", request.method, request.path)
            return _json({"code": -1000, "msg": "An unknown error occurred while processing the request."},
                         status=400)

    def _venue_of(self, path: str) -> str | None:
        if path.startswith("/api/"):
            return SPOT
        if path.startswith("/fapi/"):
            return USDM
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        ws_path = path == "/ws-api/v3" or path == "/private/ws" or path.startswith("/ws/") or path == "/ws" \
            or path.startswith("/private/ws/")
        if ws_path:
            resp = await fault_mod.apply_ws(self.faults, path)
            if resp is not None:
                return resp
        if path == "/ws-api/v3":
            return await self._ws_api(request)
        if path == "/private/ws" or path.startswith("/ws/") or path == "/ws" or path.startswith("/private/ws/"):
            return await self._ws_listen_key(request)
        if path.startswith("/sim/v1/") or path == "/sim/v1":
            return await control_api.dispatch(self, request)
        return await self._rest(request)

    async def _params(self, request: web.Request) -> tuple[dict[str, str], str, str]:
        query = request.query_string
        body = ""
        if request.method in ("POST", "PUT", "DELETE") and request.can_read_body:
            raw = await request.read()
            try:
                body = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SimError(-1100, "Illegal characters found in a parameter.") from None
            ctype = request.content_type
            if body and ctype == "application/json":
                raise SimError(-1102, "Mandatory parameter 'body' was not sent, was empty/null, or malformed.")
        params: dict[str, str] = {}
        for part in (query, body):
            if not part:
                continue
            try:
                pairs = parse_qsl(part, keep_blank_values=True, strict_parsing=True)
            except ValueError:
                raise SimError(-1100, "Illegal characters found in a parameter.") from None
            for k, v in pairs:
                if k in params:
                    raise SimError(-1101, "Duplicate values for a parameter detected.")
                params[k] = v
        return params, query, body

    def _log(self, entry: dict) -> None:
        self.request_log.append(entry)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        t0 = self.now_ms()
        method, path = request.method, request.path
        ip = request.remote or "?"
        venue = self._venue_of(path)
        route = self.routes.get((method, path))
        entry: dict[str, Any] = {"time": t0, "wall": int(time.time() * 1000), "method": method, "path": path,
                                 "ip": ip, "key": None, "weight": 0, "status": 0, "venue": venue, "params": {},
                                 "agent": request.headers.get("User-Agent", "")}
        try:
            if route is None:
                known = any(p == path for (_, p) in self.routes)
                if known:
                    raise SimError(-1000, f"Method {method} is not allowed on {path}", status=405)
                raise SimError(-1000, f"Unknown path: {method} {path}", status=404)
            params, query, body = await self._params(request)
            entry["params"] = {k: v for k, v in params.items() if k != "signature"}
            key = request.headers.get("X-MBX-APIKEY")
            entry["key"] = key if key and self.exchange.account(key) else None
            fault, fault_resp = await fault_mod.apply_rest(self.faults, method, path)
            if fault_resp is not None and not fault.processed:
                entry["status"] = fault_resp.status
                entry["fault"] = fault.id
                return fault_resp
            weight = route.weight(params) if callable(route.weight) else route.weight
            entry["weight"] = weight
            st, rate_err = self.rate_limiter.check_rate(ip, route.venue, weight, self.now_ms())
            headers = {"X-MBX-USED-WEIGHT-1M": str(st.weight)}
            if route.venue == SPOT:
                headers["X-MBX-USED-WEIGHT"] = str(st.weight)
            if rate_err is not None:
                rate_err.headers.update(headers)
                raise rate_err
            try:
                acct = auth.rest_account(self.exchange, route.security, request.headers.get("X-MBX-APIKEY"),
                                         params, query, body, self.now_ms())
                if route.order and acct is not None:
                    order_headers, order_err = self.rate_limiter.count_order(acct.api_key, route.venue,
                                                                             self.now_ms())
                    headers.update(order_headers)
                    if order_err is not None:
                        raise order_err
                result = await route.handler(Request(self, route.venue, params, acct, ip, request))
            except SimError as e:
                e.headers = {**headers, **e.headers}
                raise
            if fault_resp is not None:   # processed, then the answer lost: outcome unknown to the client
                entry["status"] = fault_resp.status
                entry["fault"] = fault.id
                return fault_resp
            resp = _json(result, headers=headers)
            entry["status"] = 200
            return resp
        except SimError as e:
            entry["status"] = e.status
            entry["code"] = e.code
            return _err(e)
        finally:
            self._log(entry)

    # ---- WebSockets
    async def _ws_api(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=self.ws_ping_interval_s, autoping=True)
        await ws.prepare(request)
        conn = StreamConn("ws-api", ws)
        self.streams.add(conn)
        writer = conn.writer = asyncio.create_task(self._writer(conn))
        lifetime = asyncio.create_task(self._lifetime(conn))
        ip = request.remote or "?"
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    self._ws_api_message(conn, msg.data, ip)
                except Exception:  # noqa: BLE001 - answer, never kill the session with a trace
                    log.exception("simulator internal error on a WebSocket API request")
                    self._send(conn, {"id": None, "status": 400, "error": {
                        "code": -1000, "msg": "An unknown error occurred while processing the request."}})
        finally:
            lifetime.cancel()
            self.streams.discard(conn)
            conn.queue.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)
        return ws

    async def _lifetime(self, conn: StreamConn) -> None:
        """WS-API connections live at most ``ws_lifetime_s`` (24 h on Binance): serverShutdown, then close."""
        warning = min(10.0, self.ws_lifetime_s / 2)
        await asyncio.sleep(self.ws_lifetime_s - warning)
        self._send(conn, {"event": {"e": "serverShutdown", "E": self.now_ms()}})
        await asyncio.sleep(warning)
        self.streams.discard(conn)
        conn.queue.put_nowait(None)
        if conn.writer is not None:
            await asyncio.wait([conn.writer], timeout=1.0)
        await conn.ws.close(code=1000, message=b"")

    def _ws_api_message(self, conn: StreamConn, data: str, ip: str) -> None:
        try:
            req = json.loads(data)
            if not isinstance(req, dict):
                raise ValueError
        except ValueError:
            self._send(conn, {"id": None, "status": 400,
                              "error": {"code": -1100, "msg": "Illegal characters found in a parameter."}})
            return
        rid = req.get("id")
        method = req.get("method")
        params = req.get("params") or {}
        st = self.rate_limiter.state(ip, SPOT)
        rate_limits = lambda: [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,  # noqa: E731
                                "limit": self.limits[SPOT], "count": st.weight}]
        try:
            if not isinstance(params, dict):
                raise SimError(-1102, "Mandatory parameter 'params' was not sent, was empty/null, or malformed.")
            if method == "userDataStream.subscribe.signature":
                _, err = self.rate_limiter.check_rate(ip, SPOT, 2, self.now_ms())
                if err is not None:
                    raise err
                acct = auth.ws_account(self.exchange, params, self.now_ms())
                if any(a is acct for a in conn.subscriptions.values()):
                    raise SimError(-2010, "User Data Stream subscription already active.")
                sub_id = self._ws_api_sub_ids
                self._ws_api_sub_ids += 1
                conn.subscriptions[sub_id] = acct
                self._send(conn, {"id": rid, "status": 200, "result": {"subscriptionId": sub_id},
                                  "rateLimits": rate_limits()})
            elif method == "userDataStream.unsubscribe":
                sub = params.get("subscriptionId")
                ids = list(conn.subscriptions) if sub is None else [int(sub)]
                if sub is not None and int(sub) not in conn.subscriptions:
                    raise SimError(-2010, "Invalid subscription ID.")
                self._send(conn, {"id": rid, "status": 200, "result": {}, "rateLimits": rate_limits()})
                for sid in ids:
                    conn.subscriptions.pop(sid, None)
                    self._send(conn, {"subscriptionId": sid,
                                      "event": {"e": "eventStreamTerminated", "E": self.now_ms()}})
            elif method == "session.subscriptions":
                self._send(conn, {"id": rid, "status": 200,
                                  "result": [{"subscriptionId": s} for s in conn.subscriptions],
                                  "rateLimits": rate_limits()})
            elif method == "ping":
                self._send(conn, {"id": rid, "status": 200, "result": {}, "rateLimits": rate_limits()})
            elif method == "time":
                self._send(conn, {"id": rid, "status": 200, "result": {"serverTime": self.now_ms()},
                                  "rateLimits": rate_limits()})
            else:
                raise SimError(-1020, "This operation is not supported.")
        except SimError as e:
            status = 401 if e.code in (-2014, -2015) else e.status
            self._send(conn, {"id": rid, "status": status, "error": e.body(), "rateLimits": rate_limits()})
        except (TypeError, ValueError):
            self._send(conn, {"id": rid, "status": 400, "error": {"code": -1100, "msg": "Illegal characters found "
                                                                                       "in a parameter."}})

    async def _ws_listen_key(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/ws/"):
            key = request.path[len("/ws/"):]
        else:
            key = request.query.get("listenKey", "")
        acct = self.listen_keys.live(key, self.now_ms())
        if acct is None:
            return _json({"code": -1125, "msg": "This listenKey does not exist."}, status=400)
        ws = web.WebSocketResponse(heartbeat=self.ws_ping_interval_s * 9, autoping=True)  # fstream: 3 min
        await ws.prepare(request)
        conn = StreamConn("listenKey", ws, listen_key=key, account=acct)
        self.streams.add(conn)
        writer = conn.writer = asyncio.create_task(self._writer(conn))
        try:
            async for _ in ws:
                pass   # clients send nothing meaningful on user-data streams
        finally:
            self.streams.discard(conn)
            conn.queue.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)
        return ws

