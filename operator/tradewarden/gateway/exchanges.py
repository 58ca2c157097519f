"""ccxt exchange classes with tradewarden's hooks, and their per-account construction.

One mixin is put in front of any ccxt ``async_support`` / ``pro`` exchange class:

- ``fetch``: every REST request first spends its documented weight from the shared egress budget
  (waiting, or refusing with RateLimited while a Retry-After is running), and its exception text is
  scrubbed of the signed query string at the source; a signed request that had to wait for the
  budget is signed again (``sign`` keeps its arguments): ccxt signs before ``fetch``, and a wait for
  the next weight window (up to a minute) would otherwise send a timestamp outside ``recvWindow``
  (Binance answers -1021; at 100 accounts on one egress this failed a third of the requests);
- ``on_rest_response``: feeds ``X-MBX-USED-WEIGHT-1M`` and 429/418 ``Retry-After`` into the budget
  (ccxt's REST layer itself ignores Retry-After);
- ``get_exceptions_by_url``: Binance's spot / futures error table chosen from the URL *path*, so a
  local endpoint maps errors exactly as production does (ccxt picks it from the host name);
- ``delay`` / ``spawn``: ccxt's background timers (the USD-M listenKey keepalive) and tasks are
  tracked, so closing the exchange cancels them instead of letting them reopen a session later;
- ``handle_message`` (ccxt.pro): every user-data payload is handed, in socket order, to a sink
  before ccxt's own handlers run.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import ssl
from collections import Counter
from typing import Any, Callable
from urllib.parse import urlsplit

from .ccxt_import import install as _lazy_ccxt

_lazy_ccxt()       # before the first import of ccxt: only the exchanges in use are loaded

import ccxt
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
from ccxt.async_support.base.ws.future import Future as CcxtFuture

from ..domain import Invalid, Unsupported
from ..endpoints import point_at
from .budget import RateBudgets, _strip_prefix, family_of, request_weight
from .errors import ScrubFilter, scrub
from .identity import current_user_agent

log = logging.getLogger("tradewarden.gateway")

_SENT = contextvars.ContextVar("tw_sent", default=None)
_SIGNED = contextvars.ContextVar("tw_signed", default=None)      # (url, sign's arguments) of this task's last sign


def resign_after_wait(waited_s: float, url: str, body: Any) -> bool:
    """A request must be signed again when it waited for the budget and carries a signature (its
    timestamp was taken before the wait; the venue checks it against ``recvWindow``)."""
    if waited_s <= 0:
        return False
    return "signature=" in url or (isinstance(body, str) and "signature=" in body)

# path family -> Binance market type of ccxt's error tables
_ERROR_TABLE_BY_FAMILY = {"api": "spot", "sapi": "spot", "fapi": "linear", "dapi": "inverse",
                          "eapi": "option", "papi": "portfolioMargin"}

# tradewarden reads Binance's user-data payloads from the socket (stream.py's tap), not from ccxt.pro's
# caches, which by default keep the last 1,000 parsed orders and trades (with their raw payloads) per
# connection: about 5 MiB per account on a connection that lives for hours (bench_stream_memory.py).
PRO_CACHE_LIMITS = {"ordersLimit": 20, "tradesLimit": 20}

# No permessage-deflate on Binance's user-data socket: ccxt offers it by default, and a negotiated
# extension keeps a zlib compressor and decompressor per connection, about 0.4 MiB per account
# (bench_controller.py --only anatomy) for a socket that carries a few small JSON events a minute.
# Binance serves uncompressed frames to clients that do not offer it (RFC 7692: an offer is optional).
PRO_WS_OPTIONS = {"ws": {"compress": 0}}

# options that keep ccxt off endpoints a spot / USD-M account does not need (see binance-and-ccxt notes)
BINANCE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {
        "defaultType": "spot",
        "fetchCurrencies": False,
        "fetchMargins": False,
        "fetchMarkets": {"types": ["spot"]},
        "fetchOpenOrders": {"warnWithoutSymbol": False},
        "adjustForTimeDifference": True,
    },
    "binanceusdm": {
        "fetchCurrencies": False,
        "fetchMargins": False,
        "fetchMarkets": {"types": ["linear"]},
        "fetchOpenOrders": {"warnWithoutSymbol": False},
        "watchPositions": {"fetchPositionsSnapshot": False},
        "watchBalance": {"fetchBalanceSnapshot": False},
        "adjustForTimeDifference": True,
    },
}


class TradewardenExchangeMixin:
    tw_budgets: RateBudgets
    tw_secrets: tuple[str, ...] = ()
    tw_sink: Callable[[Any, Any], bool | None] | None = None   # True: consumed, ccxt's handler skipped

    # -- REST: rate budget and scrubbing --
    def sign(self, path, api=["public"], method="GET", params={}):  # noqa: B006 - ccxt's signature
        def copy():
            return (path, api, method, dict(params) if isinstance(params, dict) else params)
        request = super().sign(*copy())
        _SIGNED.set((request["url"], copy()))
        return request

    async def fetch(self, url, method="GET", headers=None, body=None):
        budget = self.tw_budgets.for_url(url)
        waited = await budget.acquire(request_weight(method, url, body if isinstance(body, str) else None))
        signed = _SIGNED.get()
        if resign_after_wait(waited, url, body) and signed is not None and signed[0] == url:
            request = super().sign(*signed[1])          # a fresh timestamp and signature, same request
            url, method, headers, body = request["url"], request["method"], request["headers"], request["body"]
        token = _SENT.set((budget, budget.window()))
        try:
            result = await super().fetch(url, method, headers, body)
        except ccxt.BaseError as exc:
            if isinstance(exc, ccxt.DDoSProtection):
                exc.tw_retry_after = max(budget.blocked_for(), 0.0)
            exc.args = (scrub(str(exc), self.tw_secrets),)
            raise
        finally:
            _SENT.reset(token)
        if isinstance(result, dict) and "rateLimits" in result:
            budget.apply_rate_limits(result.get("rateLimits"))
        if not isinstance(result, (dict, list)) and family_of(_strip_prefix(urlsplit(url).path)) in _ERROR_TABLE_BY_FAMILY:
            # a 200 whose body is not JSON (a proxy's page, a truncated answer): ccxt would parse it as
            # "nothing" (no balances, no open orders); it is a bad answer, never an empty one
            raise ccxt.BadResponse(f"{method} {urlsplit(url).path}: the exchange's answer is not JSON")
        return result

    def on_rest_response(self, code, reason, url, method, response_headers, response_body,
                         request_headers, request_body):
        sent = _SENT.get()
        budget, window = sent if sent else (self.tw_budgets.for_url(url), None)
        budget.observe(int(code or 0), response_headers or {}, window)
        return super().on_rest_response(code, reason, url, method, response_headers, response_body,
                                        request_headers, request_body)

    # -- Binance: error table by path --
    def get_exceptions_by_url(self, url, exactOrBroad):
        if url is None:
            return {}
        market_type = _ERROR_TABLE_BY_FAMILY.get(family_of(_strip_prefix(urlsplit(url).path)))
        if market_type is None:
            return {}
        table = self.safe_dict(self.exceptions, market_type, {})
        return self.safe_dict(table, exactOrBroad, {})

    # -- background work that must die with the exchange --
    def delay(self, timeout, method, *args):
        handle = super().delay(timeout, method, *args)
        self.__dict__.setdefault("tw_timers", []).append(handle)
        return handle

    def spawn(self, method, *args):
        future = CcxtFuture()
        task = self.asyncio_loop.create_task(method(*args))
        tasks = self.__dict__.setdefault("tw_tasks", set())
        tasks.add(task)

        def done(t: asyncio.Task) -> None:
            tasks.discard(t)
            if t.cancelled():
                if not future.done():
                    future.cancel()
                return
            exc = t.exception()
            if exc is None:
                future.resolve(t.result())
            else:
                future.reject(exc)
        task.add_done_callback(done)
        return future

    async def close(self, *args, **kwargs):
        for handle in self.__dict__.pop("tw_timers", []):
            handle.cancel()
        tasks = list(self.__dict__.pop("tw_tasks", set()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.tw_sink = None
        return await super().close(*args, **kwargs)

    # -- ccxt.pro: tap every payload in socket order --
    def handle_message(self, client, message):
        sink = self.tw_sink
        if sink is None:
            return super().handle_message(client, message)
        if not isinstance(message, dict):
            # a frame that is not a JSON object (garbage, "[]", "null"): ccxt's Binance handler would
            # raise inside its receive loop and the socket would go silent, open but unread
            log.warning("user-data payload dropped: not a JSON object (%s)", type(message).__name__)
            return None
        try:
            consumed = sink(client, message)
        except Exception as exc:  # never let a translation error break ccxt's receive loop
            # a malformed user-data event is dropped here (ccxt's own handlers may crash on it);
            # the next reconciliation corrects whatever it would have told us
            log.warning("user-data payload dropped, not translated: %s", scrub(repr(exc)[:300], self.tw_secrets))
            return None
        if consumed is True:
            # the tap translated it and ccxt's handler would only parse it again into caches nobody reads
            return None
        try:
            return super().handle_message(client, message)
        except Exception as exc:
            # ccxt choked on a payload: end this connection visibly (the stream reconnects and a
            # reconciliation follows) instead of leaving a socket nobody reads
            log.warning("user-data payload broke ccxt's handler: %s", scrub(repr(exc)[:300], self.tw_secrets))
            client.reset(ccxt.NetworkError("malformed user-data payload"))
            return None


_CLASSES: dict[tuple[str, bool], type] = {}


@functools.cache
def exchange_ids() -> frozenset[str]:
    """Every exchange id ccxt knows (a spec naming another is rejected before any gateway is built)."""
    return frozenset(ccxt.exchanges)


def exchange_class(exchange_id: str, pro: bool) -> type:
    key = (exchange_id, pro)
    cls = _CLASSES.get(key)
    if cls is None:
        lib = ccxt_pro if pro else ccxt_async
        base = getattr(lib, exchange_id, None)
        if base is None:
            if pro:
                raise Unsupported(f"unsupported: watchOrders (ccxt.pro has no {exchange_id})")
            raise Invalid(f"unknown exchange: {exchange_id}")
        cls = type(f"Tw{base.__name__}{'Pro' if pro else ''}", (TradewardenExchangeMixin, base), {})
        _CLASSES[key] = cls
    return cls


_SSL_CONTEXTS: dict[str, ssl.SSLContext] = {}
# TRADEWARDEN_CCXT_SHARING=off: ccxt's defaults (a TLS context and a copy of the definitions per
# instance, compressed sockets): the benchmarks' baseline
CCXT_SHARING = os.environ.get("TRADEWARDEN_CCXT_SHARING", "on") != "off"


def shared_ssl_context(cafile: str) -> ssl.SSLContext:
    """One TLS client context per CA bundle for the whole process.

    ccxt's async base builds ``ssl.create_default_context(cafile=certifi)`` in every instance's
    session: about 0.7 MiB of OpenSSL memory each (the parsed CA store, invisible to tracemalloc),
    two instances per account (REST and stream), which was most of an account's footprint. The
    context carries no per-connection or per-account state (no client certificate): verification
    and hostname checking are the same as ccxt's own."""
    ctx = _SSL_CONTEXTS.get(cafile)
    if ctx is None:
        ctx = _SSL_CONTEXTS[cafile] = ssl.create_default_context(cafile=cafile)
    return ctx


# ccxt deep-copies its exchange's description into every instance. The endpoint map ("api": read
# only while ccxt builds the class, its implicit methods are generated statically in ccxt.abstract),
# the error tables and the feature list are definitions nothing changes afterwards: one copy per
# class instead of one per instance (two instances per account).
SHARED_DEFINITIONS = ("api", "exceptions", "features")
_DEFINITIONS: dict[tuple[type, str], Any] = {}


def share_definitions(exchange: Any) -> None:
    cls = type(exchange)
    for attr in SHARED_DEFINITIONS:
        value = exchange.__dict__.get(attr)
        if isinstance(value, dict):
            exchange.__dict__[attr] = _DEFINITIONS.setdefault((cls, attr), value)


def rewrite_urls(exchange: Any, endpoint: str) -> None:
    """Point every REST and WebSocket URL of ``exchange`` at ``endpoint`` keeping each path."""
    point_at(exchange, endpoint)


def new_exchange(exchange_id: str, api_key: str, secret: str, endpoint: str | None, budgets: RateBudgets,
                 *, pro: bool, logger: logging.Logger) -> Any:
    cls = exchange_class(exchange_id, pro)
    options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BINANCE_OPTIONS.get(exchange_id, {}).items()}
    if pro and exchange_id in BINANCE_OPTIONS:
        options.update(PRO_CACHE_LIMITS)
        if CCXT_SHARING:
            options.update({k: dict(v) for k, v in PRO_WS_OPTIONS.items()})
    config = {
        "apiKey": api_key,
        "secret": secret,
        # our shared egress budget replaces ccxt's per-instance throttle (which knows nothing of
        # other accounts behind the same IP)
        "enableRateLimit": False,
        "options": options,
        "logger": logger,
        "timeout": 10000,
        "userAgent": current_user_agent(),      # which replica sent a request (gateway/identity.py)
    }
    ex = cls(config)
    if CCXT_SHARING and getattr(ex, "verify", False) is True and getattr(ex, "ssl_context", None) is None and \
            not ex.safe_bool(ex.options, "include_OS_certificates", False):
        ex.ssl_context = shared_ssl_context(ex.cafile)     # before ccxt opens its session
    if CCXT_SHARING:
        share_definitions(ex)
    ex.tw_budgets = budgets
    ex.tw_secrets = tuple(s for s in (api_key, secret) if s)
    if endpoint:
        rewrite_urls(ex, endpoint)
    return ex


_CCXT_LOGGER = "tradewarden.gateway.ccxt"
_FILTER = ScrubFilter()
# How many live gateways use each secret: two accounts may share one Secret, and closing one of them
# must not stop the other's credentials from being scrubbed.
_SECRET_USERS: Counter[str] = Counter()


def scrubbing_logger(secrets: tuple[str, ...]) -> logging.Logger:
    """The logger given to every ccxt instance: its records carry no signed URL, header key or secret."""
    logger = logging.getLogger(_CCXT_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    _SECRET_USERS.update(s for s in secrets if s)
    _FILTER.secrets = tuple(_SECRET_USERS)
    return logger


def forget_secrets(secrets: tuple[str, ...]) -> None:
    """The gateway that registered ``secrets`` is gone (call once per scrubbing_logger call)."""
    _SECRET_USERS.subtract(s for s in secrets if s)
    for s in [s for s, n in _SECRET_USERS.items() if n <= 0]:
        del _SECRET_USERS[s]
    _FILTER.secrets = tuple(_SECRET_USERS)


__all__ = ["BINANCE_OPTIONS", "TradewardenExchangeMixin", "exchange_class", "exchange_ids", "new_exchange", "rewrite_urls",
           "scrubbing_logger", "shared_ssl_context", "share_definitions", "forget_secrets"]
