"""Status writes: written only when something changed, and non-urgent changes coalesced.

:class:`WriteThrottle` is the pure token bucket (a burst of a few writes at once, then at most one
per ``interval_s``); :class:`StatusWriter` builds the status, diffs it against the last write and
patches the API server through it.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from . import status as st

WRITE_BURST = 3          # status writes allowed at once before coalescing sets in
STATUS_RETRY_S = 5.0     # after a failed write
STALE_CHECK_S = 60.0     # re-evaluate the time-based conditions (ReconciliationStale) at least this often


@dataclass
class WriteThrottle:
    interval_s: float
    burst: int = WRITE_BURST
    tokens: float = float(WRITE_BURST)
    refilled_at: float = 0.0
    due: float | None = None          # a deferred write is due then

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def refill(self, now: float) -> None:
        if self.enabled:
            self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) / self.interval_s)
            self.refilled_at = now

    def allows(self) -> bool:
        return not self.enabled or self.tokens >= 1

    def defer(self, now: float) -> None:
        self.due = now + (1 - self.tokens) * self.interval_s

    def spend(self) -> None:
        self.tokens = max(0.0, self.tokens - 1)
        self.due = None


class StatusWriter:
    """The one writer of an account's status."""

    def __init__(self, patch: Callable[[Mapping[str, Any]], Awaitable[Any]], previous: Mapping[str, Any],
                 min_write_interval_s: float, log: logging.Logger | logging.LoggerAdapter) -> None:
        self._patch = patch
        self.last_written: dict[str, Any] = dict(previous)
        self.throttle = WriteThrottle(min_write_interval_s)
        self.dirty = True            # something readers must see (a run, a condition, the stop)
        self.event_dirty = False     # stream events changed the ledger (coalesced)
        self._evaluated_at = 0.0
        self.log = log

    def deadline(self, now: float) -> float:
        """When the writer wants to run again at the latest."""
        due = self.throttle.due
        return min(now + STALE_CHECK_S, due) if due is not None else now + STALE_CHECK_S

    async def flush(self, inputs: Callable[[], st.StatusInputs], now: float, now_ms: int,
                    force: bool = False) -> None:
        thr = self.throttle
        due = thr.due is not None and now >= thr.due
        if not (force or self.dirty or self.event_dirty or due or now - self._evaluated_at >= STALE_CHECK_S):
            return
        thr.refill(now)
        if not force and not self.dirty and self.event_dirty and not thr.allows():
            # An event storm: do not even build the status (a ledger dump) until a write is allowed.
            thr.defer(now)
            return
        self._evaluated_at = now
        new = st.build_status(inputs(), self.last_written, now_ms)
        patch = st.merge_patch(self.last_written, new)
        self.dirty = self.event_dirty = False
        if not patch:
            thr.due = None
            return
        if not force and not st.urgent_change(self.last_written, new) and not thr.allows():
            thr.defer(now)
            self.event_dirty = True
            return
        try:
            written = await self._patch(patch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried shortly; nothing is lost (state is in memory)
            detail = getattr(exc, "body", None) or str(exc)
            self.log.warning("status write failed: %s %s: %s", type(exc).__name__, getattr(exc, "status", ""),
                             str(detail)[:600])
            thr.due = now + STATUS_RETRY_S
            self.dirty = True
            return
        if written is False:
            # 404: the object (or, right after an API server restart, its CRD) is not there. The write did
            # not happen: counting it as written would leave status without it for good (later writes
            # carry only what changed since), so it is tried again.
            self.log.info("status write not applied (not found); retrying in %.0fs", STATUS_RETRY_S)
            thr.due = now + STATUS_RETRY_S
            self.dirty = True
            return
        self.last_written = new
        thr.spend()
