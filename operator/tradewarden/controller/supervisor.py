"""One supervisor per TradingAccount: the executor of its lifecycle.

The loop: observe the resource, ask ``lifecycle.decide`` what to do, do it (the only place with I/O:
the Secret, the gateway, the runner, the stream, Events, status), write status if it changed, and
sleep until the decision's wake-up time or a poke. Runs of one account never overlap (one step at a
time; the runner's ledger lock serializes stream events against each run's judgement, not against its
snapshot read, so events keep applying while a run waits for the venue). The loop wakes on: a change of the
resource (kopf's watch pokes it), a stream reconnect, a timer, a retry.

The emergency stop is the one thing that does not wait its turn: a poke that sees a new stop cancels
the run in flight, and the next decision opens the breaker (status first) before anything talks to
the exchange. Its own machine (``emergency.py``) decides while the annotation stands; its actions are
executed in :meth:`AccountSupervisor._execute_stop`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Mapping

from dataclasses import replace

from .. import domain, models
from ..core import estop as es
from ..core.config import AccountConfig, Trigger
from ..core.margin import margin_health
from .checkpointer import Checkpointer
from . import emergency, lifecycle
from .breaker import StopExecutor
from . import events as ev
from . import schedule
from . import workloads as wl
from . import status as st
from .deps import Deps
from .credentials import CredentialsError, read_credentials
from .lifecycle import (AcceptSpec, Action, Build, Configure, Idle, OpenBreaker, Reject, ReleaseBreaker, Run,
                        StartStream, State, Stop)
from .streaming import StreamConsumer
from .throttle import StatusWriter
from ..gateway.budget import within
from .vocabulary import Problem, ProblemReason, RunKind, StreamState, gateway_problem

log = logging.getLogger(__name__)

GATEWAY_START_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 5.0
EVENTS_PER_RUN = 12             # hard cap on Events posted for one run
EARLY_EVENTS_MAX = 50_000       # stream events held while the initial sync runs (beyond: history closes it)


class AccountSupervisor:
    def __init__(self, namespace: str, name: str, body: Mapping[str, Any], deps: Deps,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self.namespace = namespace
        self.name = name
        self.key = f"{namespace}/{name}"
        self._body = body                   # kopf's live body: always the latest seen
        self.deps = deps
        self.log = logger or logging.LoggerAdapter(log, {"account": self.key})
        self._wake = asyncio.Event()
        self._stopping = False
        self._forget = False

        previous = dict(body.get("status") or {})
        self.state = State(stop=emergency.EmergencyStop.from_status(previous.get("emergencyStop")),
                           last_handled=str(previous.get("lastHandledReconcileAt") or ""))
        self.writer = StatusWriter(self._patch_status, previous, deps.min_write_interval_s, self.log)

        # what the executor holds
        self._spec: models.TradingAccountSpec | None = None
        self._gw: Any = None
        self._runner: Any = None
        self._stream = StreamConsumer(self, deps.clock, deps.rng,
                                      reconnects=int((previous.get("stream") or {}).get("reconnects") or 0))
        self._current_run: asyncio.Task | None = None
        self._step_task: asyncio.Future | None = None
        self._tele: Any = None
        self._breaker: StopExecutor | None = None     # the emergency stop's executor while one stands

        # what only status shows
        self._generation: int | None = None
        self._problem_posted = ""
        self._credentials_ok: bool | None = None
        self._report: Any = None
        self._last_run_ok: bool | None = None
        self._last_run_error = ""
        self._restored_success_ms = st.parse_rfc3339((previous.get("metrics") or {}).get("lastSuccessTime"))
        # the restart checkpoint (controller/checkpointer.py): read once, written on its own cadence; the
        # ledger versions before it kept in status is resumed from if no checkpoint exists
        self.ckpt = Checkpointer(namespace, name, deps.kube, interval_s=deps.checkpoint_interval_s,
                                 clock=self._now, log=self.log, post=self._post, changed_status=self._mark,
                                 written=self._wake.set, previous=lambda: self.writer.last_written.get("checkpoint"),
                                 legacy=previous.get("ledger"))
        self._adoption: dict[str, Any] | None = None     # status.adoption (None: keep the previous)
        self._early: list[domain.StreamEvent] = []      # stream events before the initial sync (subscribe first)
        self._early_overflow = False
        self._delay: tuple[int, str] = (0, "")       # the last timer run's wait for a quiet moment (ms, why)
        self._kept_ledger: Any = None
        self._kept_monitor: Any = None
        self._discard_saved_ledger = False

    # ---- signals from outside (sync, cheap) ---------------------------------------------------------

    def poke(self) -> None:
        """The resource changed (or something else happened): look at it now. A new emergency stop
        interrupts the run in flight."""
        if emergency.pending(self._annotations().get(lifecycle.ESTOP), self.state.stop) \
                and self._current_run is not None and not self._current_run.done():
            self.log.info("emergency stop requested: interrupting the run in flight")
            self._current_run.cancel()
        self._wake.set()

    def request_stop(self, forget: bool = False) -> None:
        self._stopping = True
        self._forget = self._forget or forget
        # Whatever the step is waiting for (a run, a gateway start, an emergency stop against a slow
        # exchange) is abandoned: stopping and deletion never wait on the exchange.
        if self._step_task is not None and not self._step_task.done():
            self._step_task.cancel()
        self._wake.set()

    async def close(self) -> None:
        """Stop the stream and close the gateway (what the loop does when it ends)."""
        await self._teardown()

    # ---- the loop --------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.log.info("supervising %s", self.key)
        try:
            while not self._stopping:
                self._wake.clear()
                self._step_task = asyncio.ensure_future(self.step())
                wake: float | None = None
                try:
                    wake = await self._step_task
                except asyncio.CancelledError:
                    if _cancelling():
                        self._step_task.cancel()
                        raise
                except Exception as exc:  # noqa: BLE001 - a bug must not kill the account's supervision
                    self.log.exception("supervisor step failed")
                    self._set_problem(Problem(ProblemReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"))
                    await self._teardown()      # start over (a fresh build clears the problem)
                    self._schedule_retry()
                    wake = self.state.retry_at
                finally:
                    self._step_task = None
                if self._stopping:
                    break
                await self.flush()
                await self._write_checkpoint()
                await self._sleep(wake)
        finally:
            if not self._forget:        # a graceful stop leaves an exact checkpoint (a deleted account none)
                await self._final_checkpoint()
            else:
                self.ckpt.cancel()
            await self._teardown()
            if self._forget:
                self._left_at_zero()
            if self._forget and self._tele is not None:
                self._tele.forget()
            self.log.info("stopped supervising %s", self.key)

    def _left_at_zero(self) -> None:
        """The account is deleted while its stop holds workloads at 0: they stay there (a deletion is not a
        release), and the user is told which and what to scale them back to."""
        stop = self.state.stop
        if stop.active and stop.held:
            message = wl.left_at_zero(stop.held)
            self.log.warning("%s", message)
            self._post("Warning", wl.ScaleEvent.LEFT_AT_ZERO.value, message)

    def observe(self) -> lifecycle.Observed:
        gw = self._gw
        return lifecycle.observe(self._body, known_exchanges=self.deps.exchanges(),
                                 futures=gw.futures if gw is not None else None,
                                 saved_ledger=self.ckpt.resume)

    async def step(self) -> float | None:
        """One decision, executed. Returns when to come back (None: when poked), or now when more is due."""
        observed = self.observe()
        if observed.spec is not None:
            self._spec = observed.spec
        now = self._now()
        action = lifecycle.decide(observed, self.state, now)
        if not observed.deleting:
            self._generation = observed.generation
        await self.execute(action, observed)
        return lifecycle.wake_at(action) if lifecycle.waits(action) else now

    async def settle(self, max_steps: int = 20) -> None:
        """Steps until the lifecycle has nothing more to do now (tests, and nothing else)."""
        for _ in range(max_steps):
            action = lifecycle.decide(self.observe(), self.state, self._now())
            if lifecycle.waits(action):
                await self.execute(action, self.observe())
                return
            await self.step()
        raise AssertionError(f"{self.key}: still busy after {max_steps} steps")

    async def execute(self, action: Action, o: lifecycle.Observed) -> None:
        s = self.state
        match action:
            case Idle():
                pass
            case Reject(problem=problem):
                self._set_problem(problem)
                await self._teardown()
            case AcceptSpec():
                if action.rebuild:
                    self.log.info("exchange, credentials, endpoint or symbols changed: rebuilding the gateway")
                    await self._teardown()
                if action.forget:
                    self._kept_ledger = self._kept_monitor = None
                    self._discard_saved_ledger = True
                    self.ckpt.resume = False
                if action.retry_now:
                    s.failures, s.retry_at = 0, 0.0
                s.seen_generation, s.identity = action.generation, action.identity
            case OpenBreaker():
                await self._open_breaker(action.reason, action.requested_by)
            case Build():
                if await self._build(o):
                    self._configure(o)
            case Configure():
                self._configure(o)
            case Stop(action=stop_action):
                await self._execute_stop(stop_action)
            case ReleaseBreaker():
                await self._release_breaker()
            case Run(kind=RunKind.INITIAL):
                await self._initial_sync(action, o)
            case Run():
                await self._triggered_run(action, o)
            case StartStream():
                self._start_stream()

    def _now(self) -> float:
        return self.deps.clock()

    def _now_ms(self) -> int:
        return int(self._now() * 1000)

    async def _sleep(self, wake: float | None) -> None:
        now = self._now()
        deadline = self.writer.deadline(now) if wake is None else min(wake, self.writer.deadline(now))
        due = self.ckpt.due_at(now) if self._runner is not None and self.state.synced else None
        if due is not None:
            deadline = min(deadline, due)
        delay = deadline - now
        if delay <= 0 or self._wake.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass

    # ---- small helpers ------------------------------------------------------------------------------

    def _annotations(self) -> Mapping[str, str]:
        return (self._body.get("metadata") or {}).get("annotations") or {}

    def _mark(self) -> None:
        """Something readers must see changed: the next flush writes it."""
        self.writer.dirty = True

    def _post(self, type_: str, reason: str, message: str) -> None:
        try:
            self.deps.post_event(self._body, type_, reason, st.clip(message))
        except Exception:  # noqa: BLE001 - an Event is never worth a failed step
            self.log.debug("posting an Event failed", exc_info=True)

    def _post_all(self, events: list[ev.EventSpec]) -> None:
        for e in events:
            self._post(e.type, e.reason, e.message)

    def _exchange(self) -> str:
        return str((self._body.get("spec") or {}).get("exchange") or "")

    def _telemetry(self, exchange: str) -> Any:
        t = self.deps.telemetry
        if t is None:
            return None
        if self._tele is None or self._tele.attributes.get("exchange") != exchange:
            self._tele = t.account(self.namespace, self.name, exchange)
            self._tele.set_emergency_stop_active(self.state.stop.active)
        if self._runner is not None and self._tele.monitor is not self._runner.monitor:
            self._tele.attach(self._runner.monitor)     # run history and health: the monitor's, read at scrape
        return self._tele

    def _set_problem(self, problem: Problem | None) -> None:
        if problem is not None and problem.reason != self._problem_posted:
            self._post("Warning", problem.reason, problem.message)
            self._problem_posted = problem.reason
        if problem is None:
            self._problem_posted = ""
        if problem != self.state.problem:
            self._mark()
        self.state.problem = problem

    def _schedule_retry(self) -> None:
        self.state.failures += 1
        self.state.retry_at = self._now() + schedule.backoff_s(self.state.failures, self.deps.rng)

    # ---- building -----------------------------------------------------------------------------------

    async def _build(self, o: lifecycle.Observed) -> bool:
        spec = o.spec
        assert spec is not None
        if not self.ckpt.loaded and not await self.ckpt.load(self._uid()):
            self._schedule_retry()
            return False
        try:
            creds = await read_credentials(self.deps.kube, self.namespace, spec.credentialsSecretRef.model_dump())
        except CredentialsError as exc:
            self._credentials_ok = None
            self._set_problem(Problem(exc.reason, exc.message, credentials=True))
            self._schedule_retry()
            return False
        gw = None
        try:
            gw = self.deps.gateway_factory(spec.exchange, creds.api_key, creds.secret, spec.endpoint,
                                           budgets=self.deps.budgets)
            await within(gw.start(list(spec.symbols)), GATEWAY_START_TIMEOUT_S)   # budget waits excluded
        except asyncio.CancelledError:
            if gw is not None:
                await _close_quietly(gw)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is a condition, never a crash
            if gw is not None:
                await _close_quietly(gw)
            problem = gateway_problem(exc, creds.redact)
            self._credentials_ok = False if problem.credentials else None
            self._set_problem(problem)
            self._schedule_retry()
            self.log.warning("account not served: %s: %s", problem.reason, problem.message)
            return False
        self._gw = gw
        self._credentials_ok = True
        self._set_problem(None)
        s = self.state
        s.failures, s.retry_at = 0, 0.0
        s.built, s.synced, s.config = True, False, None
        self._runner = None
        self._telemetry(spec.exchange)
        return True

    def _configure(self, o: lifecycle.Observed) -> None:
        """The runner for the observed config (a reconfigured runner keeps the ledger and the monitor)."""
        from ..service.runner import AccountRunner
        from ..core import Ledger

        s, spec = self.state, o.spec
        assert spec is not None
        config = AccountConfig.from_spec(spec, futures=self._gw.futures)
        previous, previous_check = s.config, s.check_interval_s
        s.check_interval_s = o.check_interval_s
        if self._runner is not None and config == previous:
            if s.synced and previous_check is not None and o.check_interval_s != previous_check:
                s.next_stale = min(s.next_stale, schedule.after(self._now(), o.check_interval_s, self.deps.rng))
            return
        if self._runner is not None:
            ledger, monitor = self._runner.ledger, self._runner.monitor
            self.log.info("spec changed: runner reconfigured (ledger kept)")
        else:
            ledger, monitor = self._kept_ledger, self._kept_monitor
            saved = self.ckpt.take_saved()
            saved = None if self._discard_saved_ledger else saved
            if ledger is None and saved:
                try:
                    ledger = Ledger.load(saved, owned_prefix=config.owned_prefix)
                except ValueError as exc:
                    self.log.warning("checkpoint not restored (%s): starting from a fresh sync", exc)
                    self.ckpt.not_restored(str(exc))
            self._kept_ledger = self._kept_monitor = None
        self._runner = AccountRunner(self._traced_gateway(), config, ledger=ledger, clock=self.deps.clock,
                                     monitor=monitor)
        self._runner.stream_live = self._stream.state is StreamState.CONNECTED
        if monitor is None:
            self._runner.monitor.restore_last_success(self._restored_success_ms)
        if self._tele is not None:
            self._telemetry(self._tele.attributes["exchange"])
        s.config = config
        self._mark()
        if previous is not None and s.synced:
            # A shorter interval takes effect now, not after the old one has run out.
            now = self._now()
            if config.interval_s != previous.interval_s:
                s.next_reconcile = min(s.next_reconcile, schedule.after(now, config.interval_s, self.deps.rng))
            s.next_stale = min(s.next_stale, schedule.after(now, o.check_interval_s, self.deps.rng))

    async def _teardown(self) -> None:
        await self._stream.stop()
        gw, self._gw = self._gw, None
        if self._runner is not None:        # a rebuild of the same account continues from here
            self._kept_ledger, self._kept_monitor = self._runner.ledger, self._runner.monitor
        self._runner = None
        s = self.state
        s.built, s.synced, s.config = False, False, None
        if gw is not None:
            await _close_quietly(gw)

    # ---- runs -------------------------------------------------------------------------------------

    def _traced_gateway(self) -> Any:
        t = self.deps.telemetry
        if t is None or self._gw is None:
            return self._gw
        return t.traced(self._gw, exchange=self._exchange())

    async def _traced(self, coro: Awaitable[Any], kind: RunKind, trigger: Trigger) -> Any:
        """A span per run (the exchange calls inside are its children, see _traced_gateway);
        afterwards the shared rate budgets' figures go to the metrics."""
        t = self.deps.telemetry
        if t is None:
            return await coro
        exchange = self._exchange()
        try:
            with t.span(f"tradewarden.{kind}", namespace=self.namespace, name=self.name, exchange=exchange,
                        trigger=str(trigger)):
                return await coro
        finally:
            self.deps.budget_publisher.publish(t, self.deps.budgets, exchange,
                                               self._gw.rest_family if self._gw is not None else "")

    async def _initial_sync(self, action: Run, o: lifecycle.Observed) -> None:
        s = self.state
        report = await self._run(action.kind, action.trigger)
        if report is None or not report.ok:
            self._schedule_retry()
            return
        s.synced, s.failures, s.retry_at = True, 0, 0.0
        runner = self._runner
        settle = runner is None or schedule.settle_needed(
            report.recent, report.deferred,
            max((max(x.created_ms, x.updated_ms) for x in runner.ledger.active_orders()), default=0),
            report.started_ms, int(runner.config.missing_grace_s * 1000))
        s.next_reconcile, s.next_stale = schedule.first_runs(
            self._now(), o.config.interval_s if o.config else 300, o.check_interval_s, self.deps.rng,
            settle=settle, account=self.key)
        s.last_handled = o.reconcile_requested or s.last_handled or ""
        s.reconnect_pending = False
        await self._drain_early_events()

    async def _triggered_run(self, action: Run, o: lifecycle.Observed) -> None:
        s = self.state
        if action.trigger is Trigger.STREAM_RECONNECT:
            s.reconnect_pending = False
        if action.trigger is Trigger.TIMER:
            late = self._now() - s.next_reconcile
            self._delay = (int(late * 1000), lifecycle.delay_reason(o, s, self._now())) if late >= 0.5 else (0, "")
        report = await self._run(action.kind, action.trigger)
        if action.kind is RunKind.STALE:
            s.next_stale = schedule.after(self._now(), o.check_interval_s, self.deps.rng)
            return
        if action.handles is not None:
            if report is None and emergency.pending(self._annotations().get(lifecycle.ESTOP), s.stop):
                return                          # interrupted by an emergency stop: not handled yet
            s.last_handled = action.handles
            self._mark()
        if self._runner is not None:
            s.next_reconcile = schedule.timer_slot(self.key, self._now(), float(self._runner.config.interval_s))
            if report is not None and getattr(report, "recent", 0):
                # changes too recent to judge were left for the next run: it comes once their events had time
                s.next_reconcile = min(s.next_reconcile,
                                       self._now() + float(self._runner.config.missing_grace_s) + 1.0)

    async def _run(self, kind: RunKind, trigger: Trigger) -> Any:
        runner = self._runner
        if kind is RunKind.INITIAL:
            coro: Awaitable[Any] = runner.initial_sync(trigger)     # initial, or resume (from the checkpoint)
        elif kind is RunKind.RECONCILE:
            coro = runner.reconcile(trigger=trigger)
        else:
            coro = runner.stale_cleanup()
        task = asyncio.ensure_future(self._traced(coro, kind, trigger))
        self._current_run = task
        t0 = time.monotonic()
        tele = self._tele
        try:
            report = await task
        except asyncio.CancelledError:
            if _cancelling():
                task.cancel()
                raise
            self.log.info("%s run interrupted", trigger)
            return None
        except domain.AuthenticationFailed as exc:
            # Revoked or rotated credentials (the runner raises them after recording the run): rebuild
            # from the Secret, with backoff, instead of failing every run with keys the venue refuses.
            self._run_failed(tele, t0, f"authentication failed: {exc}")
            self._credentials_ok = False
            self._set_problem(Problem(ProblemReason.AUTHENTICATION_FAILED,
                                      f"the exchange rejected the API credentials: {exc}", True))
            await self._teardown()
            self._schedule_retry()
            return None
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, never fatal
            self.log.warning("%s run failed: %s: %s", trigger, type(exc).__name__, exc)
            self._run_failed(tele, t0, f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self._current_run = None
        self._last_run_ok = bool(report.ok)
        self._last_run_error = st.clip(report.error or "", 512)
        self.ckpt.changed = True
        if kind is not RunKind.STALE:       # lastReconciliation shows reconciliations, not stale checks
            self._report = report
        self._mark()
        if tele is not None:
            if kind is not RunKind.STALE:    # outcomes and counts are the monitor's (runner.monitor)
                tele.observe_run(report.duration_ms / 1000.0)
            tele.set_open_orders(sum(1 for _ in runner.ledger.active_orders()))
            health = margin_inputs(runner, list(runner.ledger.position_values().values()),
                                   list(runner.ledger.active_orders())).get("margin_health")
            if health is not None:
                tele.set_margin(health)
        observe_only = runner.config.observe_only
        for spec in ev.run_events(report.discrepancies, trigger=trigger, observe_only=observe_only)[:EVENTS_PER_RUN]:
            self._post(spec.type, spec.reason, spec.message)
        adopted = getattr(report, "adopted", None)
        if adopted:
            prefix = runner.config.owned_prefix
            self._adoption = st.adoption_status(adopted, prefix, report.finished_ms)
            spec = ev.adoption_event(adopted, prefix, trigger=str(trigger))
            if spec is not None:
                self._post(spec.type, spec.reason, spec.message)
        if not report.ok:
            self.log.warning("%s run failed: %s", trigger, report.error)
        return report

    def _run_failed(self, tele: Any, t0: float, error: str) -> None:
        self._last_run_ok = False
        self._last_run_error = st.clip(error, 512)
        self._mark()
        if tele is not None:       # the failure itself was recorded by the runner's monitor
            tele.observe_run(time.monotonic() - t0)

    # ---- stream (StreamConsumer calls back here) ------------------------------------------------------

    def _start_stream(self) -> None:
        """The user-data stream of the whole account (one connection shows every symbol): the runner sees
        the spec's symbols (``_in_spec``), the emergency stop's breaker every order. One stream for both, so
        a stop neither restarts it nor waits for it."""
        if self._spec is not None and self._spec.stream.enabled and self._gw is not None:
            self._stream.start(self._gw, [], f"tw-stream-{self.key}")

    def stream_running(self, running: bool) -> None:
        self.state.stream_running = running

    def stream_state_changed(self, state: StreamState) -> None:
        if self._runner is not None:
            self._runner.stream_live = state is StreamState.CONNECTED
        self._mark()
        if self._tele is not None:
            self._tele.set_stream_connected(state is StreamState.CONNECTED)

    def stream_reconnected(self, counted: bool) -> None:
        """Events may have been lost in the gap: reconcile now."""
        if counted and self._tele is not None:
            self._tele.stream_reconnected()
        self.state.reconnect_pending = True
        if self.state.stop.active and self._breaker is not None:
            self._breaker.stream_gap()          # the breaker did not see what was placed in the gap: sweep now
        self._wake.set()

    async def stream_event(self, event: domain.StreamEvent) -> None:
        if self.state.stop.active and self._breaker is not None and isinstance(event, domain.OrderEvent):
            await self._breaker.on_stream_order(event.order)     # cancelled at once, whatever it is
        seen = self._in_spec(event)
        if seen is None:
            return
        event = seen
        runner = self._runner
        self.state.last_event_at = self._now()
        if runner is not None and not self.state.synced:
            # subscribed before the initial sync: held until its snapshot is applied, then applied newest-wins
            if len(self._early) < EARLY_EVENTS_MAX:
                self._early.append(event)
            else:                          # too many to hold: history from the first one closes the window
                self._early_overflow = True
            self._stream.last_event_ms = self._now_ms()
            self._wake.set()
            return
        if runner is not None:
            await runner.apply_event(event)
            self._stream.last_event_ms = self._now_ms()
            self.writer.event_dirty = True     # coalesced: see StatusWriter.flush
            self.ckpt.changed = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def _drain_early_events(self) -> None:
        """Apply the events buffered while the initial sync ran (the order-book pattern: snapshot, then the
        buffered events newer than it; the ledger's newest-wins rules drop the older ones)."""
        early, self._early = self._early, []
        runner = self._runner
        if runner is None:
            return
        if self._early_overflow:
            self._early_overflow = False
            runner.ledger.note_gap(runner.ledger.orders_ms)
            self.state.reconnect_pending = True      # a run soon reads history over the window
        for event in early:
            await runner.apply_event(event)
        if early:
            self.writer.event_dirty = True
            self.ckpt.changed = True

    # ---- emergency stop (issue 14: the machine is core/estop.py, its executor controller/breaker.py) ----

    def _breaker_config(self) -> es.StopConfig:
        spec = self._spec
        if spec is None:
            return es.StopConfig()
        futures = bool(self._gw.futures) if self._gw is not None else True   # settled by the gateway below
        return es.StopConfig(sweep_interval_ms=spec.emergencyStop.sweepIntervalSeconds * 1000,
                             flatten=spec.emergencyStop.positions == models.StopPositions.FLATTEN.value and futures,
                             scale_down=spec.emergencyStop.scaleDown is not None)

    def _new_breaker(self) -> StopExecutor:
        spec = self._spec
        selector = spec.emergencyStop.scaleDown.model_dump() if spec and spec.emergencyStop.scaleDown else None
        return StopExecutor(namespace=self.namespace, gateway=lambda: self._gw, kube=self.deps.kube, post=self._post,
                            telemetry=lambda: self._tele, cfg=self._breaker_config(), selector=selector,
                            futures=bool(self._gw.futures) if self._gw is not None else False,
                            clock=self.deps.clock, on_change=self._breaker_changed,
                            persist=lambda: self.flush(force=True))

    def _breaker_changed(self) -> None:
        if self._breaker is not None:
            self.state.stop = self._breaker.snapshot()
            self._mark()

    async def _open_breaker(self, reason: str, who: str) -> None:
        """Record the stop in status before any exchange call; the machine's first actions (scale the
        bots down, list the whole account) run at the next step."""
        held = self.state.stop.held if self.state.stop.active else ()   # a new reason: the bots stay held
        self._breaker = self._new_breaker()
        self._breaker.open(reason, who or "unknown")
        if held:
            self._breaker.held = list(held)
            self._breaker_changed()
        self.log.warning("EMERGENCY STOP requested by %s: %s", who or "unknown", reason)
        await self.flush(force=True)     # readers see the stop before anything else happens
        if self.deps.telemetry is not None:
            self._tele = self._tele or self.deps.telemetry.account(self.namespace, self.name, self._exchange())
            self._tele.emergency_stop()
        self._wake.set()

    async def _execute_stop(self, action: emergency.StopAction) -> None:
        """The one place where the emergency-stop machine's actions are carried out."""
        s = self.state
        if self._breaker is None:        # a stop a previous process left in status: its breaker holds from here
            self._breaker = self._new_breaker()
            if s.stop.machine is not None:
                self._breaker.adopt(s.stop)
            else:
                self._breaker.open(s.stop.reason, s.stop.requested_by)
        spec = self._spec
        selector = spec.emergencyStop.scaleDown.model_dump() if spec and spec.emergencyStop.scaleDown else None
        self._breaker.configure(self._breaker_config(), selector, bool(self._gw.futures) if self._gw else False)
        self._start_stream()             # stays up (reconnecting by itself) while the stop stands
        match action:
            case emergency.Wait():
                pass
            case emergency.Sweep():
                before = s.stop.state
                await self._breaker.work()
                after = self._breaker.state.phase if self._breaker.state is not None else None
                if after is es.StopPhase.COMPLETED and before is not es.StopPhase.COMPLETED \
                        and self._runner is not None:
                    await self.flush(force=True)
                    # the ledger learns each formerly open order's final state (a cancel may have lost to a
                    # fill): asked for, not assumed; the cancelled ones are what was asked for
                    await self._settle_after_stop()

    async def _settle_after_stop(self) -> None:
        try:
            await self._runner.confirm_stopped()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the ledger catches up at the next run
            self.log.warning("settling the ledger after the stop failed: %s: %s", type(exc).__name__, exc)
        self.ckpt.changed = True
        self._mark()

    async def _release_breaker(self) -> None:
        self.log.warning("emergency stop annotation removed: resuming (initial sync first)")
        s = self.state
        if self._breaker is None and s.stop.machine is not None:
            self._breaker = self._new_breaker()
            self._breaker.held = list(s.stop.held)
            self._breaker.state = s.stop.machine
        if self._breaker is not None:
            await self._breaker.release()
            s.stop = self._breaker.snapshot(active=False)
        self._breaker = None
        s.synced, s.retry_at = False, 0.0
        if self._tele is not None:
            self._tele.set_emergency_stop_active(False)
        self._mark()

    def _in_spec(self, event: domain.StreamEvent) -> domain.StreamEvent | None:
        """What of a whole-account stream event the runner may see (only the spec's symbols)."""
        symbols = set(self._spec.symbols) if self._spec is not None else set()
        if isinstance(event, domain.OrderEvent):
            return event if event.order.symbol in symbols else None
        if isinstance(event, domain.PositionEvent):
            kept = [p for p in event.positions if p.symbol in symbols]
            return replace(event, positions=kept) if kept else None
        return event

    # ---- the restart checkpoint (controller/checkpointer.py) ------------------------------------------------

    def _uid(self) -> str:
        return str((self._body.get("metadata") or {}).get("uid") or "")

    async def _write_checkpoint(self, final: bool = False) -> None:
        """Only a ledger that knows the account's orders is written (a fresh one would replace a good
        checkpoint with nothing)."""
        runner = self._runner
        known = runner is not None and self.state.synced and runner.ledger.knows_orders
        await self.ckpt.write(runner.ledger if known else None, self._uid(), self._now(), final=final)

    async def checkpoint_settled(self) -> None:
        await self.ckpt.settled()

    async def _final_checkpoint(self) -> None:
        try:
            await asyncio.wait_for(self._write_checkpoint(final=True), timeout=CLOSE_TIMEOUT_S * 2)
        except asyncio.CancelledError:
            if _cancelling():
                raise
        except Exception as exc:  # noqa: BLE001 - never block a stop on it
            self.log.warning("the final checkpoint was not written: %s: %s", type(exc).__name__, exc)

    # ---- status ------------------------------------------------------------------------------------------

    async def _patch_status(self, patch: Mapping[str, Any]) -> Any:
        return await self.deps.kube.patch_status(self.namespace, self.name, patch)

    async def flush(self, force: bool = False) -> None:
        await self.writer.flush(self.inputs, self._now(), self._now_ms(), force=force)

    def inputs(self) -> st.StatusInputs:
        s, runner, spec = self.state, self._runner, self._spec
        now_ms = self._now_ms()
        balances = orders = positions = monitor = health = None
        interval = spec.reconciliation.intervalSeconds if spec else 300
        if runner is not None and (s.synced or s.stop.active):
            ledger = runner.ledger
            balances = ledger.balance_values()
            orders = list(ledger.active_orders())
            positions = list(ledger.position_values().values())
        if runner is not None:
            monitor = runner.monitor
            health = monitor.health(now_ms, interval)
        return st.StatusInputs(
            generation=self._generation, problem=s.problem, credentials_ok=self._credentials_ok,
            synced=s.synced, report=self._report, last_run_ok=self._last_run_ok,
            last_run_error=self._last_run_error, balances=balances, orders=orders, positions=positions,
            owned_prefix=spec.staleOrders.ownedClientOrderIdPrefix if spec else "tw-",
            monitor=monitor, health=health, restored_success_ms=self._restored_success_ms,
            stream_enabled=spec.stream.enabled if spec else True,
            stream_state=self._stream.state, stream_since_ms=self._stream.since_ms,
            stream_reconnects=self._stream.reconnects, stream_last_event_ms=self._stream.last_event_ms,
            estop=s.stop, last_handled_reconcile_at=s.last_handled, checkpoint=self.ckpt.status,
            adoption=self._adoption, delay=self._delay,
            **margin_inputs(runner, positions, orders))


def _cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task and task.cancelling())


async def _close_quietly(gw: Any) -> None:
    try:
        await asyncio.wait_for(gw.close(), timeout=CLOSE_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - never block a teardown on the exchange
        log.debug("gateway close failed", exc_info=True)


def margin_inputs(runner: Any, positions: Any, orders: Any) -> dict[str, Any]:
    """USD-M margin health for status and metrics (issue 15): the last snapshot's figures, judged against
    the spec's thresholds with the ledger's positions and protective orders. Nothing for spot accounts."""
    if runner is None or not runner.config.futures:
        return {}
    margin = runner.last_margin
    if margin is None or positions is None:
        return {"futures": True}
    cfg = runner.config
    health = margin_health(margin, positions, orders or [], cfg.margin_ratio_threshold,
                           cfg.liquidation_distance_threshold)
    return {"futures": True, "margin": margin, "margin_health": health}

