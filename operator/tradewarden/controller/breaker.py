"""The emergency stop's executor: carries out what the pure machine (core/estop.py) decides, against the
gateway (whole-account listing, cancels, position closes) and the API server (workload scaling), and feeds
the outcomes back. The supervisor owns one while the annotation stands and calls:

    open(reason, who) / resume(status)   when the annotation appears / after a restart
    work()                               from its loop whenever ``wake_at()`` is due (sweeps, retries)
    on_stream_order(order)               for every order the stream shows while the stop stands
    release()                            when the annotation is removed

Nothing here decides anything: which call to make, when to retry, what is "Completed" and what every
Event says are the machine's.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable, Mapping

from ..core import estop as es
from ..domain import GatewayError, Order, OrderNotFound, RateLimited
from ..service.runner import describe
from . import workloads as wl

log = logging.getLogger(__name__)


def _retry_after_ms(exc: BaseException) -> int:
    return int(float(getattr(exc, "retry_after", 0.0) or 0.0) * 1000) if isinstance(exc, RateLimited) else 0


BREAKER_EVENT_BURST = 10        # breaker Events posted at once ...
BREAKER_EVENT_PER_S = 0.5       # ... then one every 2 s; the rest are aggregated


class StopExecutor:
    def __init__(self, *, namespace: str, gateway: Callable[[], Any], kube: Any,
                 post: Callable[[str, str, str], None], telemetry: Callable[[], Any],
                 cfg: es.StopConfig, selector: Mapping[str, Any] | None, futures: bool,
                 clock: Callable[[], float] = time.time, on_change: Callable[[], None] = lambda: None,
                 persist: Callable[[], Awaitable[None]] | None = None) -> None:
        self.namespace = namespace
        self._gateway = gateway
        self._kube = kube
        self._post = post
        self._telemetry = telemetry
        self.cfg = cfg
        self.selector = dict(selector) if selector else None
        self.futures = futures
        self._clock = clock
        self._on_change = on_change
        self._persist = persist          # write status now (the workloads to be held, before they are scaled)
        self.state: es.StopState | None = None
        self.held: list[wl.Held] = []
        self.scale: dict[str, str] | None = None     # {"problem", "message"} of the last scale call
        self._pending: deque[es.Action] = deque()
        self._lock = asyncio.Lock()                  # one sweep at a time (stream cancels run beside it)
        # A runaway bot placing hundreds of orders a second must not become hundreds of Events a second on the
        # API server: breaker Events go through a token bucket; what it holds back is posted as one Event at
        # the next sweep (every order is still counted in status and in the metric).
        self._event_tokens = float(BREAKER_EVENT_BURST)
        self._event_refill_at = clock()
        self._held_back: list[str] = []

    # ---- helpers --------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _apply(self, t: es.Transition) -> None:
        changed = t.state != self.state or bool(t.events)
        self.state = t.state
        for e in t.events:
            self._post_event(e)
        self._pending.extend(a for a in t.actions if not isinstance(a, es.CancelOrder))
        if changed:
            self._on_change()       # status is written only when the stop's state (or its Events) changed

    def _refill(self) -> None:
        now = self._clock()
        self._event_tokens = min(float(BREAKER_EVENT_BURST),
                                 self._event_tokens + (now - self._event_refill_at) * BREAKER_EVENT_PER_S)
        self._event_refill_at = now

    def _post_event(self, e: es.StopEvent) -> None:
        if e.reason is es.StopReason.BREAKER_CANCELLED:
            self._refill()
            if self._event_tokens < 1:
                self._held_back.append(e.message)
                return
            self._event_tokens -= 1
        self._post(e.type.value, e.reason.value, e.message)

    def _post_held_back(self) -> None:
        self._refill()
        if not self._held_back or self._event_tokens < 1:
            return
        held, self._held_back = self._held_back, []
        self._event_tokens -= 1
        shown = "; ".join(held[:es.MAX_NAMED]) + (f"; and {len(held) - es.MAX_NAMED} more" if len(held) > es.MAX_NAMED
                                                 else "")
        self._post(es.EventType.WARNING.value, es.StopReason.BREAKER_CANCELLED.value,
                   f"{len(held)} breaker Events held back (Event rate limit; every order is counted in "
                   f"status.emergencyStop.breakerCancelled): {shown}")

    def configure(self, cfg: es.StopConfig, selector: Mapping[str, Any] | None, futures: bool) -> None:
        """The spec changed while the stop stands (e.g. another sweep interval)."""
        self.cfg, self.selector, self.futures = cfg, (dict(selector) if selector else None), futures

    def snapshot(self, active: bool = True) -> Any:
        """The frozen view the lifecycle and status read (controller/emergency.py)."""
        from .emergency import EmergencyStop

        scale = (self.scale["problem"], self.scale["message"]) if self.scale is not None else None
        return EmergencyStop(active=active and self.state is not None, machine=self.state, held=tuple(self.held),
                             scale=scale)

    def wake_at(self) -> float | None:
        """When ``work()`` has something to do (seconds, epoch); None: nothing scheduled."""
        if self.state is None:
            return None
        if self._pending:
            return 0.0
        ms = es.next_wake_ms(self.state)
        return None if ms is None else ms / 1000.0

    # ---- entry points -----------------------------------------------------------------------------

    def open(self, reason: str, requested_by: str) -> None:
        self._pending.clear()
        self.held, self.scale = [], None
        self._apply(es.open_stop(reason, requested_by, self._now_ms(), self.cfg))

    def adopt(self, stop: Any) -> None:
        """Pick up a stop a previous process left in status (``emergency.EmergencyStop``): the machine
        looks at the whole account at once, and a completed stop's breaker holds from here."""
        self.held = list(stop.held)
        self._pending.clear()
        self._apply(es.resume(stop.machine, self._now_ms(), self.cfg))

    async def release(self) -> None:
        if self.state is None:
            return
        t = es.release(self.state)
        for e in t.events:
            self._post(e.type.value, e.reason.value, e.message)
        self._pending.clear()
        for action in t.actions:
            await self._execute(action)
        self._on_change()

    async def work(self) -> None:
        """Run what is due: a Tick when idle, then every queued action and the actions that follow from
        their outcomes, until the machine waits (for a timer or nothing)."""
        if self.state is None:
            return
        self._post_held_back()
        async with self._lock:
            if not self._pending and self.state.in_flight:
                # what was in flight was abandoned (the step was cancelled): start the sweep again
                self._apply(es.resume(self.state, self._now_ms(), self.cfg))
            elif not self._pending:
                self._apply(es.step(self.state, es.Tick(), self._now_ms(), self.cfg))
            while self._pending and self.state is not None:
                action = self._pending.popleft()
                obs = await self._execute(action)
                if obs is not None and self.state is not None:
                    self._apply(es.step(self.state, obs, self._now_ms(), self.cfg))

    def stream_gap(self) -> None:
        """The stream reconnected after a gap: the next sweep is due now."""
        if self.state is not None:
            self._apply(es.step(self.state, es.StreamGap(), self._now_ms(), self.cfg))

    async def on_stream_order(self, order: Order) -> None:
        """An order the stream showed while the stop stands: cancelled at once (whatever its client
        order id or symbol), beside any sweep in progress."""
        if self.state is None or not order.state.active:
            return                  # a cancel, a fill: nothing for the breaker to do
        t = es.step(self.state, es.StreamOrder(order), self._now_ms(), self.cfg)
        self._apply(t)
        for action in t.actions:
            if isinstance(action, es.CancelOrder):
                obs = await self._cancel_one(action.order)
                if self.state is not None:
                    self._apply(es.step(self.state, obs, self._now_ms(), self.cfg))
                    if isinstance(obs, es.OrderCancelled) and obs.cancelled:
                        self._count_breaker(1)

    # ---- execution ----------------------------------------------------------------------------------

    def _count_breaker(self, n: int) -> None:
        tele = self._telemetry()
        if tele is not None and n:
            tele.breaker_cancelled(n)

    async def _execute(self, action: es.Action) -> es.Observation | None:
        gw = self._gateway()
        if isinstance(action, es.ListAccount):
            if gw is None:
                return es.ListFailed("the exchange gateway is not available (see the Synced condition)")
            try:
                listing = await gw.list_account(positions=action.positions and self.futures)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is the machine's to retry
                return es.ListFailed(describe(exc), _retry_after_ms(exc))
            return es.Listed(tuple(listing.orders), tuple(listing.positions))
        if isinstance(action, es.CancelSymbols):
            if gw is None:
                return es.Cancelled((), {"*": "the exchange gateway is not available"})
            before = self.state.breaker_round if self.state is not None else False
            try:
                result = await gw.cancel_symbols(action.symbols, action.algo_symbols, action.orders)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                return es.Cancelled((), {"*": describe(exc)}, _retry_after_ms(exc))
            if before:
                self._count_breaker(len(result.done))
            return es.Cancelled(tuple(result.done), dict(result.errors), int(result.retry_after_s * 1000))
        if isinstance(action, es.ClosePositions):
            if gw is None:
                return es.Flattened((), {"*": "the exchange gateway is not available"})
            try:
                result = await gw.close_positions(action.positions)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                return es.Flattened((), {"*": describe(exc)}, _retry_after_ms(exc))
            return es.Flattened(tuple(result.done), dict(result.errors), int(result.retry_after_s * 1000))
        if isinstance(action, es.ScaleDown):
            await self._scale_down()
            return None
        if isinstance(action, es.RestoreWorkloads):
            await self._restore()
            return None
        raise TypeError(f"not an action: {action!r}")

    async def _cancel_one(self, order: Order) -> es.OrderCancelled:
        gw = self._gateway()
        if gw is None:
            return es.OrderCancelled(order, error="the exchange gateway is not available")
        try:
            await gw.cancel_order(order.symbol, order.exchange_order_id, order.client_order_id, algo=order.algo)
        except OrderNotFound:
            return es.OrderCancelled(order, gone=True)
        except asyncio.CancelledError:
            raise
        except (GatewayError, Exception) as exc:  # noqa: BLE001
            return es.OrderCancelled(order, error=describe(exc))
        return es.OrderCancelled(order, cancelled=True)

    async def _scale_down(self) -> None:
        if not self.selector or self._kube is None:
            return
        async def record(held: list[wl.Held]) -> None:
            self.held = held
            self._on_change()
            if self._persist is not None:
                await self._persist()    # best effort: a failed write is retried; the bots are stopped anyway

        report = await wl.scale_down(self._kube, self.namespace, self.selector, self.held, record)
        self.held = report.held
        if report.changed:
            self._post("Warning", wl.ScaleEvent.SCALED_DOWN.value,
                       f"emergency stop: scaled to 0: {wl.describe(report.changed, 'down')}")
        scale = {"problem": report.problem.value if report.problem else "",
                 "message": report.message or (f"held at 0: {', '.join(f'{h.kind}/{h.name}' for h in self.held)}"
                                               if self.held else "no selected workload had replicas")}
        if report.problem is not None and (self.scale or {}).get("problem") != scale["problem"]:
            self._post("Warning", f"EmergencyStop{report.problem.value}", report.message)
        self.scale = scale
        self._on_change()

    async def _restore(self) -> None:
        if not self.held or self._kube is None:
            return
        report = await wl.restore(self._kube, self.namespace, self.held)
        self.held = report.held
        if report.changed:
            self._post("Normal", wl.ScaleEvent.SCALED_UP.value,
                       f"emergency stop released: restored {wl.describe(report.changed, 'up')}")
        if report.problem is not None:
            self._post("Warning", f"EmergencyStop{report.problem.value}", report.message)
