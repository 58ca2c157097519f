"""The per-account runner: drives the pure core through a ``domain.Gateway`` (the service layer: the
I/O around the core's pure decisions).

It fetches the snapshot, hands it to ``reconcile``, applies the corrections, sends the
planned targeted queries and cancels, and feeds the answers back to the pure core. One
``asyncio.Lock`` per account serializes runs and stream events, so the ledger is changed by
one thing at a time; network calls of a run happen under the lock (events queue meanwhile and
are applied after, newest-wins by exchange update time).

Policies: under ObserveOnly the runner never sends a cancel (stale orders are reported) and
the ledger still mirrors the exchange (see ``reconcile``'s module doc for why). The emergency
stop (core/estop.py, executed by controller/breaker.py over the gateway, outside this runner's
lock) is the one write ObserveOnly allows: a human asked for it; it cancels foreign orders too.
Once it verified the account empty, ``confirm_stopped`` asks each formerly open order's final state.

Request bounds: at most ``config.max_requests_per_run`` single-order queries / cancels per run
(the gateway's shared rate budget paces them); the rest wait for the next run and are reported.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Callable, Awaitable, Iterable, Sequence

from tradewarden.domain import (AuthenticationFailed, BalanceEvent, ConnectionEvent, ConnectionState, Gateway, Order,
                                OrderEvent, OrderState, PositionEvent, Snapshot, StreamEvent, is_owned)

from ..core.config import AccountConfig, RunReport, Trigger
from ..core import history
from ..core.ledger import SOURCE_STREAM, Ledger
from ..core.monitor import MonitoringState
from ..core.reconcile import Plan, apply_corrections, reconcile, resolve_fetches, resolve_unscoped, same_order
from ..core.stale import needs_query, plan_stale, purge, report_only, resolve_cancel

log = logging.getLogger("tradewarden.service")

EMERGENCY_FOLLOWUP_REQUESTS = 1000


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AccountRunner:
    def __init__(self, gateway: Gateway, config: AccountConfig, ledger: Ledger | None = None,
                 clock: Callable[[], float] = time.time, *, monitor: MonitoringState | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, concurrency: int = 4) -> None:
        self.gateway = gateway
        self.config = config
        self.ledger = ledger if ledger is not None else Ledger(config.owned_prefix)
        self.ledger.owned_prefix = config.owned_prefix
        self._clock = clock
        self._sleep = sleep
        self._concurrency = max(1, concurrency)
        # One run (reconciliation, stale cleanup, the stop's confirmation) at a time. Nothing holds the ledger
        # across a network call: every change to it is made in a synchronous stretch (atomic on the event
        # loop), and whatever a run asked the venue is resolved against the ledger as it is when the answer
        # comes (``supersedes``: newest wins). So stream events keep applying while a run waits for the
        # venue or the weight window, and the run judges against a ledger as new as the stream allows.
        self.run_lock = asyncio.Lock()
        self.monitor = monitor if monitor is not None else MonitoringState(since_ms=self.now_ms())
        self.last_report: RunReport | None = None
        self.last_margin = None            # USD-M: the last snapshot's MarginSummary (reported, never compared)
        if not config.futures:
            self.ledger.positions.clear()   # spot has none (a ledger saved by an older version may hold some)
        if self.ledger.knows_orders:
            # a ledger from before (a restart): events since it was saved may have been missed
            self.ledger.note_gap(max(self.ledger.synced_ms, self.ledger.orders_ms))
        self.last_event_ms = 0          # local time of the last stream event applied (a gap's start)
        self._stream_live = False       # a user-data stream is connected (its events may be in flight)
        self.live_since_ms = 0          # local time the current connection came up (events after it can be late)
        self._gaps_noted = 0            # stream gaps noted so far (one may open while a run reads history)

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def stream_live(self) -> bool:
        return self._stream_live

    @stream_live.setter
    def stream_live(self, live: bool) -> None:
        if live and not self._stream_live:
            self.live_since_ms = self.now_ms()
        self._stream_live = live

    # ---- reconciliation ----------------------------------------------------------------------

    async def initial_sync(self) -> RunReport:
        """Balances, open orders (unknown ones adopted as orphans), positions, and every order a
        restored ledger believed open that the exchange no longer lists, queried for its final
        state."""
        return await self.reconcile(trigger=Trigger.INITIAL)

    async def reconcile(self, trigger: str = Trigger.TIMER) -> RunReport:
        async with self.run_lock:
            return await self._reconcile_locked(trigger)

    async def _reconcile_recorded(self, report: RunReport, body: Callable[[RunReport], Awaitable[RunReport]]
                                  ) -> RunReport:
        """``body(report)``; a run that ends in an unexpected exception is still a failed run for the
        monitor (health must not look better because a bug escaped), then the exception goes on."""
        try:
            return await body(report)
        except asyncio.CancelledError:
            raise                                # interrupted (emergency stop, shutdown): not a run
        except Exception as exc:
            if self.last_report is not report:      # not recorded yet
                report.error = report.error or describe(exc)
                report.stale_sections = list(self.config.sections)
                self._finish_run(report)
            raise

    async def _reconcile_locked(self, trigger: str, max_requests: int | None = None,
                                expected: frozenset[OrderState] = frozenset(), raise_auth: bool = True,
                                grace_s: float | None = None) -> RunReport:
        report = RunReport(trigger=trigger, started_ms=self.now_ms())
        return await self._reconcile_recorded(
            report, lambda r: self._reconcile_body(r, max_requests, expected, raise_auth, grace_s))

    async def _reconcile_body(self, report: RunReport, max_requests: int | None, expected: frozenset[OrderState],
                              raise_auth: bool, grace_s: float | None) -> RunReport:
        config = self.config
        if max_requests is not None:
            config = replace(config, max_requests_per_run=max_requests)
        if grace_s is not None:
            config = replace(config, missing_grace_s=grace_s)
        try:
            snapshot = await self.gateway.snapshot(config.symbols)
        except Exception as exc:     # the whole snapshot failed: every section keeps its local state
            report.error = describe(exc)
            report.stale_sections = list(config.sections)
            self._finish_run(report)
            if raise_auth and isinstance(exc, AuthenticationFailed):
                raise
            return report
        # Rejected credentials (a revoked or rotated key) are not a passing outage: the caller must
        # know (CredentialsValid False, re-read the Secret), so after recording the run they are raised.
        auth = next((s.error for s in (snapshot.balances, snapshot.open_orders, snapshot.positions)
                     if isinstance(s.error, AuthenticationFailed)), None)
        if auth is not None and raise_auth:
            report.error = describe(auth)
            report.stale_sections = list(config.sections)
            self._finish_run(report)
            raise auth
        return await self._judge(report, snapshot, config, expected)

    async def _judge(self, report: RunReport, snapshot: Snapshot, config: AccountConfig,
                     expected: frozenset[OrderState]) -> RunReport:
        now = self.now_ms()
        previous_sync = self.ledger.synced_ms
        # a human's annotation and the emergency stop ask for the exchange's word now: no deferral
        judge_later = self.stream_live and report.trigger not in (Trigger.ANNOTATION, Trigger.EMERGENCY_STOP)
        if snapshot.margin is not None:
            self.last_margin = snapshot.margin
        plan = reconcile(self.ledger, snapshot, config, now, stream_live=judge_later,
                         own_cancels=OrderState.CANCELED in expected)
        report.recent += plan.recent
        apply_corrections(self.ledger, plan.corrections, now)
        report.discrepancies.extend(plan.discrepancies)
        report.stale_sections = list(plan.stale_sections)
        if plan.stale_sections:
            report.error = "; ".join(f"{s}: {plan.errors.get(s, '')}" for s in plan.stale_sections)
        if plan.fetches:
            results = await self._query(plan.fetches)
            report.requests += len(plan.fetches)
            recent = snapshot.taken_ms - int(config.missing_grace_s * 1000) if judge_later else None
            resolved = resolve_fetches(self.ledger, results, config, expected=expected, now_ms=self.now_ms(),
                                       recent_after_ms=recent)
            report.recent += resolved.recent
            self._apply(resolved, report)
        if plan.unscoped:
            results = await self._query(plan.unscoped)
            report.requests += len(plan.unscoped)
            report.released = len(plan.unscoped)
            self._apply(resolve_unscoped(self.ledger, results), report)
            log.info("%s orders on symbols no longer configured asked once and released from tracking",
                     len(plan.unscoped))
        if report.trigger == Trigger.STREAM_RECONNECT:
            self.ledger.note_gap(self.last_event_ms or previous_sync)
        if any(d.kind == "balance" for d in plan.discrepancies) and previous_sync and self.ledger.knows_orders:
            self.ledger.note_gap(previous_sync)      # a balance moved with no event to explain it
        if self.ledger.gap_since_ms and "orders" not in plan.stale_sections and self.ledger.knows_orders:
            await self._close_gap(config, report, self.live_since_ms if judge_later else None)
        report.deferred = len(plan.deferred)
        report.adopted.extend(plan.adopted)
        if "orders" not in plan.stale_sections:
            self.ledger.truncated = 0
            self.ledger.orders_ms = now
        if plan.complete:
            self.ledger.synced_ms = now
        report.purged = purge(self.ledger, config, self.now_ms())
        return self._finish_run(report)

    async def _close_gap(self, config: AccountConfig, report: RunReport, live_since_ms: int | None) -> None:
        """Read order (and, when executions are unexplained, trade) history from the gap's start on every
        configured symbol (core/history.py has the venue's rules); the gap is closed only when every symbol
        was read."""
        grace_ms = int(config.missing_grace_s * 1000)
        since = max(0, self.ledger.gap_since_ms - grace_ms)
        until = self.now_ms()
        gaps_before = self._gaps_noted
        closed = True
        reopen_at = 0                       # deferred (too recent) orders: the gap stays open from them
        for symbol in config.symbols:
            try:
                orders: list[Order] = []
                for window in history.windows(since, until, config.futures):
                    page = list(await self.gateway.order_history(symbol, since_ms=window.since_ms,
                                                                 until_ms=window.until_ms, limit=history.PAGE))
                    report.history_requests += 1
                    orders += page
                    cursor = history.next_order_page(page)
                    if not cursor:
                        continue
                    while cursor:                       # a full page: on by order id, to the newest order
                        page = list(await self.gateway.order_history(symbol, from_order_id=cursor,
                                                                     limit=history.PAGE))
                        report.history_requests += 1
                        orders += page
                        cursor = history.next_order_page(page)
                    break                               # ... which covers the later windows too
                fills: list = []
                if history.needs_trades(self.ledger, orders):
                    start = self.ledger.trade_cursors.get(symbol, "")
                    cursor = str(int(start) + 1) if start.isdigit() else ""
                    if not cursor:
                        for window in history.windows(since, until, config.futures):
                            page = list(await self.gateway.trade_history(symbol, since_ms=window.since_ms,
                                                                         until_ms=window.until_ms,
                                                                         limit=history.PAGE))
                            report.history_requests += 1
                            fills += page
                            cursor = history.next_trade_page(page)
                            if cursor:
                                break
                    while cursor:
                        page = list(await self.gateway.trade_history(symbol, from_trade_id=cursor,
                                                                     limit=history.PAGE))
                        report.history_requests += 1
                        fills += page
                        cursor = history.next_trade_page(page)
            except Exception as exc:  # noqa: BLE001 - the gap stays open: read again next run
                closed = False
                log.info("history of %s not read (%s): the gap stays open", symbol, describe(exc))
                continue
            plan = history.resolve_history(self.ledger, symbol, orders, fills, config, horizon_ms=until - grace_ms,
                                           live_since_ms=live_since_ms)
            self._apply(plan, report)
            report.recent += len(plan.deferred)
            for o in plan.deferred:
                start = o.created_ms or o.updated_ms
                reopen_at = min(reopen_at, start) if reopen_at else start
        if closed:
            # a gap the stream opened while history was read is not closed by it: unread from ``until`` on
            after = until if self._gaps_noted != gaps_before else 0
            self.ledger.gap_since_ms = min(t for t in (reopen_at, after) if t) if reopen_at or after else 0

    def _finish_run(self, report: RunReport) -> RunReport:
        report.finished_ms = self.now_ms()
        self.monitor.record_run(report)
        self.last_report = report
        if report.discrepancies or not report.ok:
            log.info("reconciliation %s: %s discrepancies %s, stale sections %s, error %s", report.trigger,
                     len(report.discrepancies), report.counts_by_kind(), report.stale_sections, report.error)
        return report

    def _apply(self, plan: Plan, report: RunReport) -> None:
        apply_corrections(self.ledger, plan.corrections, self.now_ms())
        report.discrepancies.extend(plan.discrepancies)

    async def _query(self, orders: Iterable[Order]) -> dict[str, Order | Exception]:
        sem = asyncio.Semaphore(self._concurrency)

        async def one(order: Order) -> tuple[str, Order | Exception]:
            async with sem:
                try:
                    return Ledger.order_id(order), await self.gateway.fetch_order(
                        order.symbol, order.exchange_order_id, order.client_order_id, algo=order.algo)
                except Exception as exc:   # kept pending: nothing is inferred from a failed query
                    return Ledger.order_id(order), exc

        return dict(await asyncio.gather(*(one(o) for o in orders)))

    async def _cancel(self, orders: Sequence[Order]) -> list[Order | Exception | None]:
        sem = asyncio.Semaphore(self._concurrency)
        prefix = self.config.owned_prefix

        async def one(order: Order) -> Order | Exception | None:
            if not (is_owned(order.client_order_id, prefix) or self.ledger.owns(order)):   # defence in depth
                raise AssertionError(f"refusing to cancel foreign order {order.client_order_id!r}")
            async with sem:
                try:
                    return await self.gateway.cancel_order(order.symbol, order.exchange_order_id,
                                                           order.client_order_id, algo=order.algo)
                except Exception as exc:
                    return exc

        return list(await asyncio.gather(*(one(o) for o in orders)))

    # ---- stale cleanup ---------------------------------------------------------------------------

    async def stale_cleanup(self) -> RunReport:
        """Cancel owned active orders older than the stale timeout (Correct) or report them
        (ObserveOnly); re-check cancels whose outcome was unknown; purge finished orders."""
        async with self.run_lock:
            report = RunReport(trigger=Trigger.STALE_CLEANUP, started_ms=self.now_ms())
            plan = plan_stale(self.ledger, self.config, self.now_ms())
            report.deferred = plan.deferred
            if plan.rechecks:
                results = await self._query(plan.rechecks)
                report.requests += len(plan.rechecks)
                self._apply(resolve_fetches(self.ledger, results, self.config, context="stale",
                                                    now_ms=self.now_ms()), report)
            cancelled = 0
            if self.config.observe_only:
                report.discrepancies.extend(report_only(plan.stale, self.now_ms()))
            elif plan.stale:
                outcomes = await self._cancel(plan.stale)
                report.requests += len(plan.stale)
                to_query: list[Order] = []
                for order, outcome in zip(plan.stale, outcomes):
                    if isinstance(outcome, Order) and same_order(outcome, order) is None:
                        outcome = None           # an answer about another order: ask for this one
                    self._apply(resolve_cancel(self.ledger, order, outcome), report)
                    if isinstance(outcome, Order) and outcome.state is OrderState.CANCELED:
                        cancelled += 1       # a cancel answered "filled" cancelled nothing
                    if needs_query(outcome):
                        to_query.append(order)
                if to_query:       # "not found" on a cancel: ask for the final state, never assume
                    results = await self._query(to_query)
                    report.requests += len(to_query)
                    # an algo cancel answers {"code": "200", "msg": "success"} without a status (usdm-facts
                    # D2): the query that follows is what shows it cancelled
                    cancelled += sum(1 for o in to_query if o.algo and isinstance(results.get(Ledger.order_id(o)), Order)
                                     and results[Ledger.order_id(o)].state is OrderState.CANCELED)
                    self._apply(resolve_fetches(self.ledger, results, self.config, context="stale",
                                                    now_ms=self.now_ms()), report)
            report.purged = purge(self.ledger, self.config, self.now_ms())
            report.finished_ms = self.now_ms()
            report.cancelled = cancelled
            self.monitor.record_stale(report)      # counted, but not a reconciliation: health does not move
            return report

    # ---- emergency stop --------------------------------------------------------------------------

    async def confirm_stopped(self) -> RunReport:
        """After the emergency stop verified the whole account empty (core/estop.py): the ledger learns each
        formerly open order's final state. Asked for, not assumed (a "cancelled" order may have filled
        first); orders found cancelled are what was asked for: applied, not reported as discrepancies."""
        async with self.run_lock:
            return await self._reconcile_locked(Trigger.EMERGENCY_STOP, max_requests=EMERGENCY_FOLLOWUP_REQUESTS,
                                                expected=frozenset({OrderState.CANCELED}), raise_auth=False,
                                                grace_s=0.0)   # ask about every order now

    # ---- stream events ---------------------------------------------------------------------------

    async def apply_event(self, event: StreamEvent) -> bool:
        """Apply one user-data event to the ledger (newest-wins by exchange update time).
        Returns True when the caller should reconcile now (the stream reconnected after a gap,
        so events may have been lost); ConnectionEvents never touch the ledger."""
        if isinstance(event, ConnectionEvent):
            self.stream_live = event.state is not ConnectionState.DISCONNECTED
            if event.state is ConnectionState.RECONNECTED:
                self.live_since_ms = self.now_ms()   # what the gap lost is not on its way: history tells it
            if event.state is not ConnectionState.CONNECTED:
                self.ledger.note_gap(self.last_event_ms or self.ledger.synced_ms)
                self._gaps_noted += 1
            return event.state is ConnectionState.RECONNECTED
        now = self.now_ms()                  # no await below: applied at once, even while a run is in flight
        self.last_event_ms = now
        if isinstance(event, OrderEvent):
            order = event.order
            if order.algo and order.child_id:
                self._link_existing_child(order, now)
            self.ledger.upsert_order(self.ledger.link_child(order), SOURCE_STREAM, now)
            if event.fill is not None:
                self.ledger.add_fill(event.fill)     # a gap's history then needs no trade read for it
        elif isinstance(event, BalanceEvent):
            for asset, balance in event.balances.items():
                if not balance.updated_ms:
                    balance = replace(balance, updated_ms=event.event_ms)
                if balance.asset != asset:
                    balance = replace(balance, asset=asset)
                self.ledger.upsert_balance(balance, SOURCE_STREAM, now)
        elif isinstance(event, PositionEvent):
            for position in event.positions:
                if not position.updated_ms:
                    position = replace(position, updated_ms=event.event_ms)
                self.ledger.upsert_position(position, SOURCE_STREAM, now)
        return False

    async def handle_event(self, event: StreamEvent) -> RunReport | None:
        """apply_event, and on a reconnect the reconciliation it calls for."""
        if await self.apply_event(event):
            return await self.reconcile(trigger=Trigger.STREAM_RECONNECT)
        return None

    def _link_existing_child(self, parent: Order, now: int) -> None:
        """A TRIGGERED algo event names its child; a child seen before it (the venue's order of events is
        not guaranteed, usdm-facts.md D5) gets the link now."""
        for key, entry in self.ledger.orders.items():
            o = entry.order
            if not o.algo and o.symbol == parent.symbol and o.exchange_order_id == parent.child_id \
                    and not o.parent_id:
                self.ledger.put_order(replace(o, parent_id=parent.exchange_order_id), entry.source, now,
                                      misses=entry.misses, recheck=entry.recheck, key=key)
                return
