"""When an account's next runs are due (pure: the time and the random source are passed in)."""
from __future__ import annotations

import math
import random

from ..gateway.budget import jittered_offset
from ..retry import backoff_delay

BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 300.0
SETTLE_RUN_S = 20.0      # the first timer run after an initial sync (then every interval)


def jittered(interval_s: float, fraction: float = 0.1, rng: random.Random | None = None) -> float:
    """``interval_s`` spread by +-``fraction`` so many accounts do not hit the exchange together."""
    r = rng or random
    return max(0.0, interval_s * (1.0 + r.uniform(-fraction, fraction)))


def next_slot(now: float, interval_s: float, phase_s: float, min_gap_s: float = 0.0) -> float:
    """The account's next timer run: the first time >= now + min_gap on its own grid
    ``phase + k * interval``. Phases are spread evenly by a hash of the account (the gateway's
    jittered_offset), so many accounts created together do not all hit the exchange at once, and an
    account keeps its slot across restarts (wall-clock based)."""
    if interval_s <= 0:
        return now + min_gap_s
    t = now + min_gap_s
    return phase_s + math.ceil((t - phase_s) / interval_s) * interval_s


def timer_slot(account: str, now: float, interval_s: float) -> float:
    """The next timer run on the account's phase grid, at least half an interval away (a run just
    made by a trigger makes an immediate timer run pointless)."""
    return next_slot(now, interval_s, jittered_offset(account, interval_s), min_gap_s=interval_s / 2)


def backoff_s(failures: int, rng: random.Random | None = None) -> float:
    """The wait before the next try after ``failures`` failures in a row: 5 s doubling up to 300 s,
    jittered (tradewarden.retry, the one backoff)."""
    return backoff_delay(failures - 1, base=BACKOFF_FIRST_S, cap=BACKOFF_MAX_S, rng=(rng or random).random)


def first_runs(now: float, interval_s: float, check_interval_s: float,
               rng: random.Random | None = None, *, settle: bool = True, account: str = "") -> tuple[float, float]:
    """(next reconciliation, next stale check) after an initial sync. When the sync left something to
    settle (``settle_needed``) the first timer run comes early: orders the sync saw inside the core's
    grace window (placed or changed seconds ago) get their final state without waiting a whole
    interval. Otherwise the account goes straight to its slot on its phase grid (``timer_slot``): a
    thousand accounts starting together do not each spend a second full run twenty seconds later."""
    first = now + jittered(min(interval_s, SETTLE_RUN_S), 0.2, rng) if settle else timer_slot(account, now, interval_s)
    return first, now + jittered(check_interval_s, 0.1, rng)


def settle_needed(recent: int, deferred: int, newest_active_ms: int, synced_ms: int, grace_ms: int) -> bool:
    """Whether an initial sync needs the early run: it left changes too recent to judge (``recent``) or
    queries for later (``deferred``), or an open order was placed or changed within the grace window
    before the sync (its listing or its events may still be on their way)."""
    return recent > 0 or deferred > 0 or newest_active_ms > synced_ms - grace_ms


def after(now: float, interval_s: float, rng: random.Random | None = None) -> float:
    """About one interval from now (+-10%): the next stale check, or a run after an interval change."""
    return now + jittered(interval_s, 0.1, rng)
