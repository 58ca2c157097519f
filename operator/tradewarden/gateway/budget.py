"""One request-weight budget per egress, shared by every account in the process.

Binance counts request weight per IP and per minute (``X-MBX-USED-WEIGHT-1M``); every account behind
one egress address draws from the same allowance. A :class:`RateBudget` therefore belongs to an
exchange host (and API family: ``/api`` and ``/fapi`` are limited separately), not to an account:

- weight is spent *before* a request is sent, from a table of documented per-endpoint weights;
- the venue's own counter (``X-MBX-USED-WEIGHT-1M``, which also counts other clients on the same
  IP) raises the local count whenever it is higher;
- the limit comes from ``rateLimits`` in exchangeInfo (``REQUEST_WEIGHT``), with a safety margin;
- a request that would exceed the limit waits for the next window instead of being sent;
- after a 429 or 418 nothing is sent to that egress before ``Retry-After`` has passed: a caller that
  would have to wait longer than ``max_wait_s`` gets :class:`~tradewarden.domain.RateLimited`
  without anything being sent.

Replicas behind one egress (sharding, docs/sharding.md): each process spends at most ``share`` of the
usable limit itself (``TRADEWARDEN_RATE_SHARE``, the chart's ``sharding.rateShare``; default 1.0, one
replica), AND never lets the venue's own counter for the IP (which includes the other replicas)
exceed the usable limit. With shares summing to at most 1 the replicas together stay below the
limit, so none of them reaches a 429 and its Retry-After window in normal operation; should one
happen anyway (another client on the IP), the replica that got it stops until Retry-After, and the
others stop at their own first 429 (Binance answers every client of the IP with it).
"""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import parse_qsl, urlsplit

from ..domain import RateLimited
from ..retry import backoff_delay  # noqa: F401 - re-exported (gateway.backoff_delay)

# ---- documented request weights ---------------------------------------------------------------
# (method, path) -> weight, or (with symbol, without symbol). Spot: binance-spot-api-docs/rest-api.md;
# USD-M: Binance derivatives docs (openOrders 1/40, account 5, ...). Unknown endpoints cost 1.

Weight = int | tuple[int, int]

WEIGHTS: dict[tuple[str, str], Weight] = {
    # spot
    ("GET", "/api/v3/ping"): 1,
    ("GET", "/api/v3/time"): 1,
    ("GET", "/api/v3/exchangeInfo"): 20,
    ("GET", "/api/v3/account"): 20,
    ("GET", "/api/v3/openOrders"): (6, 80),
    ("DELETE", "/api/v3/openOrders"): 1,
    ("GET", "/api/v3/order"): 4,
    ("POST", "/api/v3/order"): 1,
    ("DELETE", "/api/v3/order"): 1,
    ("GET", "/api/v3/allOrders"): 20,
    ("GET", "/api/v3/myTrades"): 20,
    # USD-M futures
    ("GET", "/fapi/v1/ping"): 1,
    ("GET", "/fapi/v1/time"): 1,
    ("GET", "/fapi/v1/exchangeInfo"): 1,
    ("GET", "/fapi/v2/account"): 5,
    ("GET", "/fapi/v3/account"): 5,
    ("GET", "/fapi/v2/balance"): 5,
    ("GET", "/fapi/v3/balance"): 5,
    ("GET", "/fapi/v2/positionRisk"): 5,
    ("GET", "/fapi/v3/positionRisk"): 5,
    ("GET", "/fapi/v1/leverageBracket"): 1,
    ("GET", "/fapi/v1/openOrders"): (1, 40),
    ("GET", "/fapi/v1/openAlgoOrders"): (1, 40),
    ("GET", "/fapi/v1/order"): 1,
    ("POST", "/fapi/v1/order"): 0,
    ("DELETE", "/fapi/v1/order"): 1,
    ("GET", "/fapi/v1/algoOrder"): 1,
    ("DELETE", "/fapi/v1/algoOrder"): 1,
    ("DELETE", "/fapi/v1/allOpenOrders"): 1,
    ("DELETE", "/fapi/v1/algoOpenOrders"): 1,
    ("GET", "/fapi/v1/allOrders"): 5,        # usdm-facts.md C1
    ("GET", "/fapi/v1/userTrades"): 5,
    ("POST", "/fapi/v1/listenKey"): 1,
    ("PUT", "/fapi/v1/listenKey"): 1,
    ("DELETE", "/fapi/v1/listenKey"): 1,
}

# default REQUEST_WEIGHT per minute when exchangeInfo has not been read yet
DEFAULT_LIMITS = {"api": 6000, "fapi": 2400, "dapi": 2400, "sapi": 12000}
USED_WEIGHT_HEADER = "x-mbx-used-weight-1m"
WINDOW_S = 60.0


def family_of(path: str) -> str:
    """The API family of a request path: ``/api/v3/order`` -> ``api``, ``/fapi/v1/order`` -> ``fapi``."""
    for part in path.split("/"):
        if part:
            return part
    return ""


def _strip_prefix(path: str) -> str:
    """Path from the API family on, so a base URL with a path prefix still matches the table."""
    for fam in ("/api/", "/fapi/", "/dapi/", "/sapi/", "/papi/", "/eapi/"):
        i = path.find(fam)
        if i >= 0:
            return path[i:]
    return path


def request_weight(method: str, url: str, body: str | None = None) -> int:
    """The documented weight of one REST request."""
    parts = urlsplit(url)
    path = _strip_prefix(parts.path)
    w = WEIGHTS.get((method.upper(), path), 1)
    if isinstance(w, tuple):
        params = dict(parse_qsl(parts.query))
        if body:
            params.update(parse_qsl(body))
        return w[0] if params.get("symbol") else w[1]
    return w


# ---- choosing the cheaper request shape -------------------------------------------------------

def open_orders_weights(family: str) -> tuple[int, int]:
    """(weight per symbol, weight for all symbols) of the open-orders query of an API family."""
    w = WEIGHTS[("GET", "/fapi/v1/openOrders" if family == "fapi" else "/api/v3/openOrders")]
    assert isinstance(w, tuple)
    return w


def per_symbol_is_cheaper(n_symbols: int, family: str) -> bool:
    """True when ``n_symbols`` per-symbol queries cost less than (or the same as) one all-symbols query."""
    per, everything = open_orders_weights(family)
    return n_symbols > 0 and n_symbols * per <= everything


def cheapest_open_orders_weight(n_symbols: int, family: str) -> int:
    per, everything = open_orders_weights(family)
    return min(n_symbols * per, everything) if n_symbols else 0


# ---- spreading many accounts over an interval --------------------------------------------------

def jittered_offset(account_key: str, interval_s: float) -> float:
    """A stable offset in [0, interval_s) for an account: many accounts' periodic runs spread evenly
    over the interval instead of firing together (stable across restarts: a hash, not a random draw)."""
    if interval_s <= 0:
        return 0.0
    digest = hashlib.sha256(account_key.encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    return fraction * interval_s


# ---- timeouts that measure the exchange, not the queue for the budget ----------------------------

class WaitClock:
    """Seconds the requests of one task (and of the tasks it starts) were told to wait for a budget."""

    def __init__(self) -> None:
        self.seconds = 0.0


_WAITS: contextvars.ContextVar[WaitClock | None] = contextvars.ContextVar("tw_budget_waits", default=None)


async def within(aw: "asyncio.Future | object", timeout_s: float) -> object:
    """``asyncio.wait_for(aw, timeout_s)``, except that the time its requests spend waiting for the shared
    weight budget does not count: a timeout guards against an exchange (or ccxt) that hangs, and when a
    thousand accounts start together most of a start is the queue for the IP's weight, which is no hang
    (found at 1,000 accounts: gateway starts and stream connects timed out by the hundred and went into
    backoff while the budget was simply busy). Raises asyncio.TimeoutError as wait_for does."""
    loop = asyncio.get_running_loop()
    waits = WaitClock()
    ctx = contextvars.copy_context()
    ctx.run(_WAITS.set, waits)
    task = loop.create_task(aw, context=ctx)  # type: ignore[arg-type]
    start = loop.time()
    try:
        while True:
            remaining = start + timeout_s + waits.seconds - loop.time()
            if remaining <= 0:
                break
            done, _ = await asyncio.wait({task}, timeout=remaining)
            if done:
                return task.result()
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)      # as wait_for: the inner work has ended
        raise
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise asyncio.TimeoutError()


# ---- the budget ---------------------------------------------------------------------------------

@dataclass
class BudgetCounters:
    requests: int = 0
    weight_spent: int = 0            # weight we charged before sending
    waits: int = 0                   # requests that had to wait for the window or a Retry-After
    wait_seconds: float = 0.0
    rejected: int = 0                # requests refused locally (RateLimited) without being sent
    rate_limited_responses: int = 0  # 429 / 418 seen
    last_server_used: int = 0        # the last X-MBX-USED-WEIGHT-1M


@dataclass
class RateBudget:
    """The weight allowance of one egress (host + API family)."""
    key: str
    limit: int = 6000
    safety: float = 0.9              # keep this fraction of the limit as the usable budget
    max_wait_s: float = 65.0         # longer waits raise RateLimited instead of blocking
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], "asyncio.Future"] = asyncio.sleep
    counters: BudgetCounters = field(default_factory=BudgetCounters)
    share: float = 1.0               # of the usable limit this process may spend itself (replicas)
    _window: int = -1
    _used: int = 0                   # the IP's weight this window: ours, raised by the venue's counter
    _own: int = 0                    # what this process spent this window
    _blocked_until: float = 0.0

    # -- state --
    def window(self) -> int:
        return int(self.clock() // WINDOW_S)

    def _roll(self) -> None:
        w = self.window()
        if w != self._window:
            self._window, self._used, self._own = w, 0, 0

    @property
    def usable(self) -> int:
        return max(1, int(self.limit * self.safety))

    @property
    def own_usable(self) -> int:
        """This process's part of the usable limit."""
        return max(1, int(self.usable * min(1.0, max(0.0, self.share))))

    @property
    def used(self) -> int:
        self._roll()
        return self._used

    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self.clock())

    # -- spending --
    def try_spend(self, weight: int) -> float:
        """Spend ``weight`` now and return 0, or spend nothing and return the seconds to wait."""
        now = self.clock()
        if now < self._blocked_until:
            return self._blocked_until - now
        self._roll()
        if (self._used + weight > self.usable and self._used > 0) or \
                (self._own + weight > self.own_usable and self._own > 0):
            return (self._window + 1) * WINDOW_S - now + 0.05
        self._used += weight
        self._own += weight
        self.counters.requests += 1
        self.counters.weight_spent += weight
        return 0.0

    async def acquire(self, weight: int) -> float:
        """Spend ``weight``, waiting for the window or a Retry-After if need be (never exceeding).
        Returns the seconds waited (0.0: spent at once)."""
        waited = False
        total = 0.0
        while True:
            delay = self.try_spend(weight)
            if delay <= 0:
                return total
            if delay > self.max_wait_s:
                self.counters.rejected += 1
                raise RateLimited(f"rate budget {self.key}: nothing may be sent for {delay:.1f}s", delay)
            if not waited:
                self.counters.waits += 1
                waited = True
            self.counters.wait_seconds += delay
            total += delay
            waits = _WAITS.get()
            if waits is not None:
                waits.seconds += delay
            await self.sleep(delay)

    # -- what the venue tells us --
    def observe(self, status: int, headers: Mapping[str, str], sent_window: int | None = None) -> float | None:
        """Account for a response; returns the Retry-After (seconds) of a 429/418, else None."""
        lower = {str(k).lower(): v for k, v in headers.items()}
        used = lower.get(USED_WEIGHT_HEADER)
        if used is not None:
            try:
                server_used = int(str(used).split(",")[0].strip())
            except ValueError:
                server_used = None
            if server_used is not None:
                self.counters.last_server_used = server_used
                self._roll()
                if sent_window is None or sent_window == self._window:
                    self._used = max(self._used, server_used)
        if status in (429, 418):
            self.counters.rate_limited_responses += 1
            retry_after = _retry_after(lower.get("retry-after"), status)
            self.block(retry_after)
            return retry_after
        return None

    def block(self, seconds: float) -> None:
        self._blocked_until = max(self._blocked_until, self.clock() + seconds)

    def apply_rate_limits(self, rate_limits: object) -> None:
        """Read ``REQUEST_WEIGHT`` from exchangeInfo's ``rateLimits`` (per-minute equivalent)."""
        if not isinstance(rate_limits, list):
            return
        for entry in rate_limits:
            if not isinstance(entry, dict) or entry.get("rateLimitType") != "REQUEST_WEIGHT":
                continue
            interval = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}.get(str(entry.get("interval")), 0)
            span = interval * int(entry.get("intervalNum") or 1)
            if span == 60 and int(entry.get("limit") or 0) > 0:
                self.limit = int(entry["limit"])

    def snapshot(self) -> dict:
        """Figures for telemetry."""
        return {"key": self.key, "limit": self.limit, "used": self.used, "blocked_for_s": self.blocked_for(),
                "share": self.share,
                **self.counters.__dict__}


def _retry_after(value: str | None, status: int) -> float:
    if value is not None:
        try:
            return max(0.0, float(str(value).strip()))
        except ValueError:
            pass
    return 120.0 if status == 418 else 60.0


class RateBudgets:
    """Registry of budgets, one per egress; pass one instance to every gateway of the process."""

    def __init__(self, *, safety: float = 0.9, max_wait_s: float = 65.0,
                 clock: Callable[[], float] = time.time, share: float = 1.0):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"rate share must be in (0, 1], got {share}")
        self.safety, self.max_wait_s, self.clock, self.share = safety, max_wait_s, clock, share
        self._budgets: dict[str, RateBudget] = {}

    @staticmethod
    def key_for(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme in ('https', 'wss') else 80)}" \
               f"/{family_of(_strip_prefix(parts.path))}"

    def for_url(self, url: str) -> RateBudget:
        key = self.key_for(url)
        budget = self._budgets.get(key)
        if budget is None:
            family = key.rsplit("/", 1)[-1]
            budget = RateBudget(key=key, limit=DEFAULT_LIMITS.get(family, 1200), safety=self.safety,
                                max_wait_s=self.max_wait_s, clock=self.clock, share=self.share)
            self._budgets[key] = budget
        return budget

    def all(self) -> list[RateBudget]:
        return list(self._budgets.values())

    def snapshot(self) -> list[dict]:
        return [b.snapshot() for b in self._budgets.values()]


_DEFAULT: RateBudgets | None = None


def default_budgets() -> RateBudgets:
    """The process-wide registry (one budget per egress for every account of this process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RateBudgets(share=rate_share())
    return _DEFAULT


def rate_share(env: Mapping[str, str] | None = None) -> float:
    """TRADEWARDEN_RATE_SHARE: this replica's share of each egress's usable weight (default 1.0)."""
    import os

    value = (env if env is not None else os.environ).get("TRADEWARDEN_RATE_SHARE", "").strip()
    if not value:
        return 1.0
    share = float(value)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"TRADEWARDEN_RATE_SHARE must be in (0, 1], got {value}")
    return share

