"""Markets are the same for every account of one exchange and endpoint: load them once per process.

exchangeInfo costs weight 20 on Binance spot (against a budget every account behind the egress shares)
and several megabytes of parsed markets per ccxt instance on the real venue. The cache keeps one
read-only copy per (exchange id, endpoint), shared by every account's gateway and stream, reloaded after
a TTL or when a symbol is not found (a new listing).
"""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

MARKET_ATTRS = ("markets", "markets_by_id", "symbols", "ids", "currencies", "currencies_by_id",
                "baseCurrencies", "quoteCurrencies", "codes")
DEFAULT_TTL_S = 3600.0


class MarketsCache:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.clock = clock
        self.loads = 0                       # loads that reached the exchange (for tests and figures)
        self._entries: dict[tuple[str, str], SimpleNamespace] = {}
        self._pending: dict[tuple[str, str], tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}

    @staticmethod
    def key(exchange_id: str, endpoint: str | None) -> tuple[str, str]:
        return exchange_id, (endpoint or "").rstrip("/")

    def fresh(self, key: tuple[str, str]) -> SimpleNamespace | None:
        entry = self._entries.get(key)
        if entry is not None and self.clock() - entry.loaded_at < self.ttl_s:
            return entry
        return None

    async def get(self, key: tuple[str, str], load: Callable[[], Awaitable[Any]], *,
                  reload: bool = False) -> SimpleNamespace:
        """The shared markets; ``load`` (an exchange's own ``load_markets``, returning the loaded
        exchange) runs at most once at a time per key, concurrent callers wait for it."""
        if not reload and (entry := self.fresh(key)) is not None:
            return entry
        loop = asyncio.get_running_loop()
        pending = self._pending.get(key)
        if pending is None or pending[0] is not loop or pending[1].done():
            task = loop.create_task(self._load(key, load))
            self._pending[key] = (loop, task)
            pending = (loop, task)
        return await asyncio.shield(pending[1])

    async def _load(self, key: tuple[str, str], load: Callable[[], Awaitable[Any]]) -> SimpleNamespace:
        try:
            exchange = await load()
            self.loads += 1
            # ccxt measures the venue's clock offset while fetching Binance markets: it is the
            # same for every account of the endpoint, so it is shared with the markets
            options = getattr(exchange, "options", None) or {}
            helpers = list(options.get("marketHelperProps") or [])   # market-derived options ccxt copies too
            entry = SimpleNamespace(id=exchange.id, loaded_at=self.clock(),
                                    time_difference=options.get("timeDifference"),
                                    options={"marketHelperProps": helpers, **{h: options.get(h) for h in helpers}},
                                    **{a: getattr(exchange, a, None) for a in MARKET_ATTRS})
            self._entries[key] = entry
            return entry
        finally:
            if self._pending.get(key, (None, None))[1] is asyncio.current_task():
                del self._pending[key]

    def clear(self) -> None:
        self._entries.clear()


_DEFAULT = MarketsCache()


def default_markets() -> MarketsCache:
    return _DEFAULT
