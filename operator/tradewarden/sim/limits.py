"""Request-weight and order-count limits, per client IP and venue like Binance (429, then 418 bans that
double with each offence). A leaf: imports ``engine``."""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from .engine import SPOT, USDM, SimError

SPOT_WEIGHT_LIMIT = 6000
USDM_WEIGHT_LIMIT = 2400
SPOT_ORDERS_10S = 100
SPOT_ORDERS_1D = 200_000
USDM_ORDERS_1M = 1200
USDM_ORDERS_10S = 300


@dataclass
class RateState:
    window: int = -1           # the current minute
    weight: int = 0
    backoff_until_ms: int = 0  # after a 429: requests before this earn a ban
    banned_until_ms: int = 0
    bans: int = 0


def _banned(st: RateState, now: int) -> SimError:
    retry = max(1, math.ceil((st.banned_until_ms - now) / 1000))
    return SimError(-1003, f"Way too much request weight used; IP banned until {st.banned_until_ms}. "
                           "Please use WebSocket Streams for live updates to avoid bans.",
                    status=418, headers={"Retry-After": str(retry)})


class RateLimiter:
    def __init__(self, spot_weight: int, futures_weight: int, spot_orders_10s: int, futures_orders_1m: int,
                 ban_s: int):
        self.limits = {SPOT: spot_weight, USDM: futures_weight}
        self.order_limits = {SPOT: spot_orders_10s, USDM: futures_orders_1m}
        self.ban_s = ban_s
        self._initial = (dict(self.limits), dict(self.order_limits), ban_s)
        self.rate: dict[tuple[str, str], RateState] = {}
        self._order_times: dict[tuple[str, str], collections.deque] = {}
        self._order_days: dict[tuple[str, str], tuple[int, int]] = {}

    def set(self, spot_weight: int | None = None, futures_weight: int | None = None,
            spot_orders_10s: int | None = None, futures_orders_1m: int | None = None,
            ban_s: int | None = None) -> None:
        if spot_weight is not None:
            self.limits[SPOT] = int(spot_weight)
        if futures_weight is not None:
            self.limits[USDM] = int(futures_weight)
        if spot_orders_10s is not None:
            self.order_limits[SPOT] = int(spot_orders_10s)
        if futures_orders_1m is not None:
            self.order_limits[USDM] = int(futures_orders_1m)
        if ban_s is not None:
            self.ban_s = int(ban_s)
        self.clear()          # also lifts 429 back-offs and 418 bans

    def clear(self) -> None:
        self.rate.clear()
        self._order_times.clear()

    def reset(self) -> None:
        self.clear()
        limits, order_limits, self.ban_s = self._initial
        self.limits, self.order_limits = dict(limits), dict(order_limits)

    def state(self, ip: str, venue: str) -> RateState:
        return self.rate.setdefault((ip, venue), RateState())

    def check_rate(self, ip: str, venue: str, weight: int, now: int) -> tuple[RateState, SimError | None]:
        st = self.state(ip, venue)
        minute = now // 60_000
        if st.window != minute:
            st.window = minute
            st.weight = 0
        if st.banned_until_ms > now:
            return st, _banned(st, now)
        if st.backoff_until_ms > now:
            # kept going after a 429: ban, doubling with each offence
            st.bans += 1
            st.banned_until_ms = now + self.ban_s * 1000 * (2 ** (st.bans - 1))
            return st, _banned(st, now)
        st.weight += weight
        if st.weight > self.limits[venue]:
            end = (minute + 1) * 60_000
            st.backoff_until_ms = end
            retry = max(1, math.ceil((end - now) / 1000))
            return st, SimError(-1003, f"Too much request weight used; current limit is {self.limits[venue]} request "
                                       "weight per 1 MINUTE. Please use WebSocket Streams for live updates to "
                                       "avoid polling the API.", status=429, headers={"Retry-After": str(retry)})
        return st, None

    def count_order(self, api_key: str, venue: str, now: int) -> tuple[dict[str, str], SimError | None]:
        dq = self._order_times.setdefault((api_key, venue), collections.deque())
        span = 10_000 if venue == SPOT else 60_000
        while dq and dq[0] <= now - span:
            dq.popleft()
        dq.append(now)
        day = now // 86_400_000
        d = self._order_days.get((api_key, venue))
        count_1d = d[1] + 1 if d and d[0] == day else 1
        self._order_days[(api_key, venue)] = (day, count_1d)
        if venue == SPOT:
            headers = {"X-MBX-ORDER-COUNT-10S": str(len(dq)), "X-MBX-ORDER-COUNT-1D": str(count_1d)}
            if len(dq) > self.order_limits[SPOT]:
                return headers, SimError(-1015, f"Too many new orders; current limit is {self.order_limits[SPOT]} "
                                                "orders per 10 SECOND.", status=429)
        else:
            headers = {"X-MBX-ORDER-COUNT-1M": str(len(dq))}
            if len(dq) > self.order_limits[USDM]:
                return headers, SimError(-1015, f"Too many new orders; current limit is {self.order_limits[USDM]} "
                                                "orders per 1 MINUTE.", status=429)
        return headers, None
