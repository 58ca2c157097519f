"""One supervisor per TradingAccount: the long-lived task that owns the account's gateway, the
core's AccountRunner and the stream consumer, and that writes the account's status.

Everything one account does goes through its supervisor's loop, one step at a time, so runs of one
account never overlap (the core's lock also serializes stream events against runs). The loop wakes
on: a change of the resource (kopf's watch pokes it), a stream reconnect, a timer, a retry.

The emergency stop is the one thing that does not wait its turn: a poke that sees a new stop
cancels the run in flight, and the loop then writes the stop into status before it talks to the
exchange.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Mapping

from pydantic import ValidationError

from .. import domain, models
from . import events as ev
from . import status as st
from .credentials import CredentialsError, read_credentials

log = logging.getLogger(__name__)

ESTOP = models.ANNOTATION_EMERGENCY_STOP
RECONCILE_AT = models.ANNOTATION_RECONCILE_REQUESTED_AT

BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 300.0
ESTOP_DEADLINE_S = 60.0
ESTOP_RETRY_S = 30.0
GATEWAY_START_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 5.0
STATUS_RETRY_S = 5.0
STALE_CHECK_S = 60.0            # re-evaluate the time-based ReconciliationStale condition
LEDGER_DUMP_ORDERS = 2000       # orders kept in status.ledger (active and chased first)
EVENTS_PER_RUN = 12             # hard cap on Events posted for one run
SETTLE_RUN_S = 20.0             # the first timer run after an initial sync (then every interval)
WRITE_BURST = 3                 # status writes allowed at once before coalescing sets in


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


def backoff_s(failures: int, rng: random.Random | None = None) -> float:
    base = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (2 ** max(0, failures - 1)))
    return jittered(base, 0.2, rng)


def requested_by(meta: Mapping[str, Any], annotation: str = ESTOP) -> str:
    """The field manager that last set ``annotation`` (from managedFields), or ''."""
    best: tuple[str, str] | None = None
    for entry in meta.get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get("f:metadata", {}).get("f:annotations", {})
        if f"f:{annotation}" in fields:
            when = str(entry.get("time") or "")
            if best is None or when >= best[0]:
                best = (when, str(entry.get("manager") or ""))
    return best[1] if best else ""


def gateway_problem(exc: BaseException, redact: Callable[[str], str]) -> st.Problem:
    """A gateway start failure as a condition reason and message."""
    text = redact(str(exc)) or type(exc).__name__
    if isinstance(exc, domain.AuthenticationFailed):
        return st.Problem("AuthenticationFailed", f"the exchange rejected the API credentials: {text}", True)
    if isinstance(exc, domain.Invalid):
        if "symbol" in text.lower():
            return st.Problem("SymbolNotListed", f"the exchange does not list a symbol of spec.symbols: {text}")
        return st.Problem("InvalidSpec", text)
    if isinstance(exc, domain.Unsupported):
        return st.Problem("UnsupportedExchange", text)
    if isinstance(exc, (domain.Temporary, asyncio.TimeoutError, OSError)):
        return st.Problem("EndpointUnreachable", f"the exchange could not be reached: {text}")
    return st.Problem("GatewayError", f"{type(exc).__name__}: {text}")


@dataclass
class Deps:
    """What every supervisor shares (one per operator process)."""
    kube: Any                                        # controller.kube.Kube (or a test double)
    post_event: Callable[[Any, str, str, str], None]  # (body, type, reason, message)
    gateway_factory: Callable[..., Any] | None = None
    budgets: Any = None
    telemetry: Any = None                            # tradewarden.telemetry.Telemetry or None
    clock: Callable[[], float] = time.time
    min_write_interval_s: float = 1.0
    rng: random.Random = field(default_factory=random.Random)


_published_waits: dict[str, float] = {}


def publish_budgets(telemetry: Any, budgets: Any, exchange: str, family: str) -> None:
    """The weight in use and the time spent waiting of the budgets this account's exchange spends
    from (its API family: ``api`` for spot, ``fapi`` for USD-M), labelled with that exchange."""
    if budgets is None or not family:
        return
    try:
        for b in budgets.snapshot():
            key = str(b.get("key"))
            if not key.endswith("/" + family):
                continue
            telemetry.exchange_weight_used(exchange, key, float(b.get("last_server_used") or b.get("used") or 0))
            waited = float(b.get("wait_seconds") or 0.0)
            telemetry.rate_limit_wait(exchange, waited - _published_waits.get(key, 0.0))
            _published_waits[key] = waited
    except Exception:  # noqa: BLE001 - metrics are never worth a failed run
        pass


class AccountSupervisor:
    def __init__(self, namespace: str, name: str, body: Mapping[str, Any], deps: Deps,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self.namespace = namespace
        self.name = name
        self._body = body                   # kopf's live body: always the latest seen
        self.deps = deps
        self.log = logger or logging.LoggerAdapter(log, {"account": f"{namespace}/{name}"})
        self._wake = asyncio.Event()
        self._stopping = False
        self._forget = False

        previous = dict(body.get("status") or {})
        self._last_written: dict[str, Any] = previous
        self._last_write_ms = 0.0           # last token-bucket refill
        self._write_tokens = float(WRITE_BURST)
        self._write_due: float | None = None
        self._dirty = True
        self._event_dirty = False
        self._last_stale_eval = 0.0

        # exchange side
        self._gw: Any = None
        self._runner: Any = None
        self._config: Any = None
        self._fingerprint: tuple | None = None
        self._stream_task: asyncio.Task | None = None
        self._current_run: asyncio.Task | None = None
        self._step_task: asyncio.Future | None = None
        self._tele: Any = None

        # what the status says
        self._generation: int | None = None
        self._seen_generation: int | None = None
        self._check_interval: int | None = None
        self._problem: st.Problem | None = None
        self._problem_posted: str = ""
        self._credentials_ok: bool | None = None
        self._synced = False
        self._report: Any = None
        self._last_run_ok: bool | None = None
        self._last_run_error = ""
        self._failures = 0
        self._retry_at = 0.0
        self._next_reconcile = 0.0
        self._next_stale = 0.0
        self._pending: set[str] = set()
        self._stream_state = "disconnected"
        self._stream_since_ms: int | None = None
        self._stream_reconnects = int((previous.get("stream") or {}).get("reconnects") or 0)
        self._stream_last_event_ms: int | None = None
        self._estop: dict[str, Any] = dict(previous.get("emergencyStop") or {})
        self._estop_retry_at = 0.0
        self._estop_settle_at: float | None = None
        self._last_handled = str(previous.get("lastHandledReconcileAt") or "")
        self._restored_success_ms = st.parse_rfc3339((previous.get("metrics") or {}).get("lastSuccessTime"))
        self._ledger_note = ""
        self._kept_ledger: Any = None
        self._kept_monitor: Any = None
        self._discard_saved_ledger = False

    # ---- signals from outside (sync, cheap) ---------------------------------------------------------

    def poke(self) -> None:
        """The resource changed (or something else happened): look at it now. A new emergency stop
        interrupts the run in flight."""
        if self._estop_pending() and self._current_run is not None and not self._current_run.done():
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

    # ---- helpers --------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.deps.clock()

    def _timer_slot(self, spec: models.TradingAccountSpec) -> float:
        """The next timer run on this account's phase grid, at least half an interval away (a run
        just made by a trigger makes an immediate timer run pointless)."""
        from ..gateway import jittered_offset
        interval = float(spec.reconciliation.intervalSeconds)
        phase = jittered_offset(f"{self.namespace}/{self.name}", interval)
        return next_slot(self._now(), interval, phase, min_gap_s=interval / 2)

    def _now_ms(self) -> int:
        return int(self._now() * 1000)

    def _meta(self) -> Mapping[str, Any]:
        return self._body.get("metadata") or {}

    def _annotations(self) -> Mapping[str, str]:
        return self._meta().get("annotations") or {}

    def _estop_pending(self) -> bool:
        value = self._annotations().get(ESTOP)
        return value is not None and not (self._estop.get("active") and self._estop.get("reason") == value)

    def _post(self, type_: str, reason: str, message: str) -> None:
        try:
            self.deps.post_event(self._body, type_, reason, st.clip(message))
        except Exception:  # noqa: BLE001 - an Event is never worth a failed step
            self.log.debug("posting an Event failed", exc_info=True)

    def _telemetry(self, exchange: str) -> Any:
        t = self.deps.telemetry
        if t is None:
            return None
        if self._tele is None or self._tele.attributes.get("exchange") != exchange:
            self._tele = t.account(self.namespace, self.name, exchange)
            if self._restored_success_ms:
                self._tele.set_last_success(self._restored_success_ms / 1000.0)
            self._tele.set_emergency_stop_active(bool(self._estop.get("active")))
        return self._tele

    def _set_problem(self, problem: st.Problem | None) -> None:
        if problem is not None and problem.reason != self._problem_posted:
            self._post("Warning", problem.reason, problem.message)
            self._problem_posted = problem.reason
        if problem is None:
            self._problem_posted = ""
        if problem != self._problem:
            self._dirty = True
        self._problem = problem

    def _schedule_retry(self) -> None:
        self._failures += 1
        self._retry_at = self._now() + backoff_s(self._failures, self.deps.rng)

    # ---- the loop --------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.log.info("supervising %s/%s", self.namespace, self.name)
        try:
            while not self._stopping:
                self._wake.clear()
                self._step_task = asyncio.ensure_future(self._step())
                try:
                    await self._step_task
                except asyncio.CancelledError:
                    if self._cancelling():
                        self._step_task.cancel()
                        raise
                except Exception as exc:  # noqa: BLE001 - a bug must not kill the account's supervision
                    self.log.exception("supervisor step failed")
                    self._set_problem(st.Problem("InternalError", f"{type(exc).__name__}: {exc}"))
                    await self._teardown()      # start over (a fresh build clears the problem)
                    self._schedule_retry()
                finally:
                    self._step_task = None
                if self._stopping:
                    break
                await self._flush()
                await self._sleep()
        finally:
            await self._teardown()
            if self._forget and self._tele is not None:
                self._tele.forget()
            self.log.info("stopped supervising %s/%s", self.namespace, self.name)

    @staticmethod
    def _cancelling() -> bool:
        task = asyncio.current_task()
        return bool(task and task.cancelling())

    def _deadline(self) -> float:
        now = self._now()
        candidates = [now + STALE_CHECK_S]
        if self._write_due is not None:
            candidates.append(self._write_due)
        if self._problem is not None or self._runner is None:
            if self._retry_at:
                candidates.append(self._retry_at)
        elif self._estop.get("active"):
            if self._estop.get("state") != "Completed" and self._estop_retry_at:
                candidates.append(self._estop_retry_at)
            if self._estop_settle_at is not None:
                candidates.append(self._estop_settle_at)
        else:
            if not self._synced and self._retry_at:
                candidates.append(self._retry_at)
            if self._synced:
                candidates += [self._next_reconcile, self._next_stale]
        return min(candidates)

    async def _sleep(self) -> None:
        delay = self._deadline() - self._now()
        if delay <= 0 or self._wake.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass

    async def _step(self) -> None:
        meta = self._meta()
        if meta.get("deletionTimestamp"):
            return
        annotations = self._annotations()
        estop_value = annotations.get(ESTOP)

        # 1. The emergency stop opens the breaker before anything else, status first.
        if estop_value is not None and self._estop_pending():
            await self._open_breaker(estop_value, meta)

        # 2. The spec.
        generation = meta.get("generation")
        try:
            spec = models.TradingAccountSpec.model_validate(dict(self._body.get("spec") or {}))
        except ValidationError as exc:
            self._generation = generation
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(p) for p in first.get("loc", ()))
            self._set_problem(st.Problem("InvalidSpec", f"spec.{where}: {first.get('msg', str(exc))}"))
            await self._teardown()
            return
        if spec.exchange not in _ccxt_exchanges():
            self._generation = generation
            self._set_problem(st.Problem("UnknownExchange", f"ccxt has no exchange {spec.exchange!r}"))
            await self._teardown()
            return

        fingerprint = (spec.exchange, spec.endpoint, tuple(spec.symbols), spec.credentialsSecretRef.name,
                       spec.credentialsSecretRef.apiKeyKey, spec.credentialsSecretRef.secretKey,
                       spec.staleOrders.ownedClientOrderIdPrefix, spec.stream.enabled)
        if self._fingerprint is not None and fingerprint != self._fingerprint:
            self.log.info("exchange, credentials, endpoint or symbols changed: rebuilding the gateway")
            await self._teardown()
            identity = lambda f: (f[0], f[1], f[3], f[4], f[5])  # noqa: E731 - exchange, endpoint, credentials
            if identity(fingerprint) != identity(self._fingerprint):
                # Possibly another account altogether: its state is not this one's.
                self._kept_ledger = self._kept_monitor = None
                self._discard_saved_ledger = True
        if generation != self._seen_generation:
            self._seen_generation = generation      # a new spec deserves a try now, not after a backoff
            self._failures = 0
            self._retry_at = 0.0
        self._fingerprint = fingerprint
        self._spec = spec

        # A completed stop stays in force without touching the exchange (but for one settling run,
        # below, when this process did the stop).
        if estop_value is not None and self._estop.get("state") == "Completed" and self._estop_settle_at is None:
            self._generation = generation
            await self._stop_stream()
            return

        # 3. The gateway and the runner.
        if self._gw is None:
            if self._now() < self._retry_at:
                return
            if not await self._build(spec):
                self._generation = generation
                return
        self._apply_config(spec)
        check = spec.staleOrders.checkIntervalSeconds
        if self._synced and self._check_interval is not None and check != self._check_interval:
            self._next_stale = min(self._next_stale, self._now() + jittered(check, 0.1, self.deps.rng))
        self._check_interval = check
        self._generation = generation

        # 4. Emergency stop (cancel and verify), or its release. The annotation is read again: it may
        # have appeared while the gateway was starting (the next step then opens the breaker first).
        if self._estop_pending():
            self._wake.set()
            return
        estop_value = self._annotations().get(ESTOP)
        if estop_value is not None:
            await self._emergency_stop()
            if self._estop_settle_at is not None and self._now() >= self._estop_settle_at:
                # Orders cancelled seconds after they were placed are still inside the core's grace
                # (an order may not be listed yet): one read-only run after it shows their final state.
                self._estop_settle_at = None
                await self._run("reconcile", "emergency-stop")
            return
        if self._estop.get("active"):
            self._release_breaker()

        # 5. Initial sync, then the stream.
        if not self._synced:
            if self._now() < self._retry_at:
                return
            report = await self._run("initial", "initial" if not self._last_written.get("ledger") else "resume")
            if report is None or not report.ok:
                self._schedule_retry()
                return
            self._synced = True
            self._failures = 0
            self._retry_at = 0.0
            now = self._now()
            # The first timer run comes early: orders the sync saw inside the core's grace window
            # (placed or changed seconds ago) get their final state without waiting a whole interval.
            first = min(spec.reconciliation.intervalSeconds, SETTLE_RUN_S)
            self._next_reconcile = now + jittered(first, 0.2, self.deps.rng)
            self._next_stale = now + jittered(spec.staleOrders.checkIntervalSeconds, 0.1, self.deps.rng)
            self._last_handled = annotations.get(RECONCILE_AT, self._last_handled) or ""
            self._pending.discard("stream-reconnect")
            self._start_stream(spec)
            return

        # 6. Triggers, most urgent first; one run per step (the loop comes straight back).
        requested = annotations.get(RECONCILE_AT)
        now = self._now()
        if "stream-reconnect" in self._pending:
            self._pending.discard("stream-reconnect")
            await self._run("reconcile", "stream-reconnect")
            self._next_reconcile = self._timer_slot(spec)
            self._wake.set()
        elif requested is not None and requested != self._last_handled:
            report = await self._run("reconcile", "annotation")
            if report is None and self._estop_pending():
                return                          # interrupted by an emergency stop: not handled yet
            self._last_handled = requested
            self._dirty = True
            self._next_reconcile = self._timer_slot(spec)
            self._wake.set()
        elif now >= self._next_reconcile:
            await self._run("reconcile", "timer")
            self._next_reconcile = self._timer_slot(spec)
            self._wake.set()
        elif now >= self._next_stale:
            await self._run("stale", "stale")
            self._next_stale = self._now() + jittered(spec.staleOrders.checkIntervalSeconds, 0.1, self.deps.rng)
            self._wake.set()
        if self._stream_task is None and spec.stream.enabled:
            self._start_stream(spec)

    # ---- building -----------------------------------------------------------------------------------

    async def _build(self, spec: models.TradingAccountSpec) -> bool:
        ref = spec.credentialsSecretRef.model_dump()
        try:
            creds = await read_credentials(self.deps.kube, self.namespace, ref)
        except CredentialsError as exc:
            self._credentials_ok = None
            self._set_problem(st.Problem(exc.reason, exc.message, credentials=True))
            self._schedule_retry()
            return False
        factory = self.deps.gateway_factory or _default_gateway_factory
        gw = None
        try:
            gw = factory(spec.exchange, creds.api_key, creds.secret, spec.endpoint, budgets=self.deps.budgets,
                         owned_prefix=spec.staleOrders.ownedClientOrderIdPrefix)
            await asyncio.wait_for(gw.start(list(spec.symbols)), timeout=GATEWAY_START_TIMEOUT_S)
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
        self._failures = 0
        self._retry_at = 0.0
        self._runner = None
        self._config = None
        self._synced = False
        self._telemetry(spec.exchange)
        return True

    def _apply_config(self, spec: models.TradingAccountSpec) -> None:
        from ..core import AccountConfig, AccountRunner, Ledger

        config = AccountConfig.from_spec(spec)
        if self._gw is not None and hasattr(self._gw, "futures"):
            # one answer to "is this a derivatives account": the gateway's, which decides what it fetches
            config = replace(config, futures=bool(self._gw.futures))
        if self._runner is not None and config == self._config:
            return
        if self._runner is not None:
            ledger = self._runner.ledger
            monitor = getattr(self._runner, "monitor", None)
            runner = AccountRunner(self._gateway_for_runner(), config, ledger=ledger, clock=self.deps.clock, monitor=monitor)
            self.log.info("spec changed: runner reconfigured (ledger kept)")
        else:
            ledger, monitor = self._kept_ledger, self._kept_monitor
            saved = None if self._discard_saved_ledger else self._last_written.get("ledger")
            if ledger is None and saved:
                try:
                    ledger = Ledger.load(saved, owned_prefix=config.owned_prefix)
                except ValueError as exc:
                    self.log.warning("status.ledger not restored (%s): starting from a fresh sync", exc)
            self._kept_ledger = self._kept_monitor = None
            runner = AccountRunner(self._gateway_for_runner(), config, ledger=ledger, clock=self.deps.clock, monitor=monitor)
        previous = self._config
        self._runner = runner
        self._config = config
        self._dirty = True
        if previous is not None and self._synced:
            # A shorter interval takes effect now, not after the old one has run out.
            now = self._now()
            if spec.reconciliation.intervalSeconds != previous.interval_s:
                self._next_reconcile = min(self._next_reconcile,
                                           now + jittered(spec.reconciliation.intervalSeconds, 0.1, self.deps.rng))
            self._next_stale = min(self._next_stale,
                                   now + jittered(spec.staleOrders.checkIntervalSeconds, 0.1, self.deps.rng))

    async def _teardown(self) -> None:
        await self._stop_stream()
        gw, self._gw = self._gw, None
        if self._runner is not None:        # a rebuild of the same account continues from here
            self._kept_ledger, self._kept_monitor = self._runner.ledger, self._runner.monitor
        self._runner = None
        self._config = None
        self._synced = False
        if gw is not None:
            await _close_quietly(gw)

    # ---- runs -------------------------------------------------------------------------------------

    async def _traced(self, coro: Awaitable[Any], kind: str, trigger: str) -> Any:
        """A span per run (the exchange calls inside are its children, see _gateway_for_runner);
        afterwards the shared rate budgets' figures go to the metrics."""
        t = self.deps.telemetry
        if t is None:
            return await coro
        exchange = str((self._body.get("spec") or {}).get("exchange") or "")
        try:
            with t.span(f"tradewarden.{kind}", namespace=self.namespace, name=self.name, exchange=exchange,
                        trigger=trigger):
                return await coro
        finally:
            publish_budgets(t, self.deps.budgets, exchange, str(getattr(self._gw, "rest_family", "") or ""))

    def _gateway_for_runner(self) -> Any:
        t = self.deps.telemetry
        if t is None or self._gw is None:
            return self._gw
        return t.traced(self._gw, exchange=str((self._body.get("spec") or {}).get("exchange") or ""))

    async def _run(self, kind: str, trigger: str) -> Any:
        runner = self._runner
        if kind == "initial":
            coro: Awaitable[Any] = runner.initial_sync()
        elif kind == "reconcile":
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
            if self._cancelling():
                task.cancel()
                raise
            self.log.info("%s run interrupted", trigger)
            return None
        except domain.AuthenticationFailed as exc:
            # Revoked or rotated credentials (the runner raises them after recording the run): rebuild
            # from the Secret, with backoff, instead of failing every run with keys the venue refuses.
            self._run_failed(tele, t0, f"authentication failed: {exc}")
            self._credentials_ok = False
            self._set_problem(st.Problem("AuthenticationFailed", f"the exchange rejected the API credentials: "
                                                                 f"{exc}", True))
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
        if kind != "stale":                 # lastReconciliation shows reconciliations, not stale checks
            self._report = report
        self._dirty = True
        counts = report.counts_by_kind()
        if tele is not None:
            tele.run_finished(report.duration_ms / 1000.0, bool(report.ok), counts)
            try:
                tele.set_open_orders(sum(1 for _ in self._runner.ledger.active_orders()))
                led = self._runner.ledger
                health = margin_inputs(self._runner, list(led.position_values().values()),
                                       list(led.active_orders())).get("margin_health")
                if health is not None:
                    tele.set_margin(health)
            except Exception:  # noqa: BLE001
                pass
            cancelled = report.cancelled     # confirmed by the exchange (not "cancel sent, order filled")
            if cancelled:
                tele.stale_cancelled(cancelled)
        observe = getattr(self._config, "observe_only", False)
        for spec in ev.run_events(report.discrepancies, trigger=trigger, observe_only=observe)[:EVENTS_PER_RUN]:
            self._post(spec.type, spec.reason, spec.message)
        if not report.ok:
            self.log.warning("%s run failed: %s", trigger, report.error)
        return report

    def _run_failed(self, tele: Any, t0: float, error: str) -> None:
        self._last_run_ok = False
        self._last_run_error = st.clip(error, 512)
        self._dirty = True
        if tele is not None:
            tele.run_finished(time.monotonic() - t0, False, {})

    # ---- stream ---------------------------------------------------------------------------------------

    def _start_stream(self, spec: models.TradingAccountSpec) -> None:
        if not spec.stream.enabled or self._gw is None or self._stream_task is not None:
            return
        self._stream_task = asyncio.create_task(self._consume(list(spec.symbols)),
                                                name=f"tw-stream-{self.namespace}/{self.name}")

    async def _stop_stream(self) -> None:
        task, self._stream_task = self._stream_task, None
        if task is not None:
            task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.gather(task, return_exceptions=True)),
                                       timeout=CLOSE_TIMEOUT_S)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                if self._cancelling():
                    raise
            self._set_stream_state("disconnected")

    def _set_stream_state(self, state: str) -> None:
        if state != self._stream_state:
            self._stream_state = state
            self._stream_since_ms = self._now_ms()
            self._dirty = True
            if self._tele is not None:
                self._tele.set_stream_connected(state == "connected")

    async def _consume(self, symbols: list[str]) -> None:
        failures = 0
        while True:
            gw = self._gw
            if gw is None:
                return
            stream = gw.stream(symbols)
            try:
                async for event in stream:
                    await self._on_stream_event(event)
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the stream restarts, the account is reconciled
                self.log.warning("user-data stream failed: %s: %s", type(exc).__name__, exc)
            finally:
                # `async for` never closes its iterator: without this a failed consumer would leave the
                # old connection (its socket, its supervisor task) running beside the next one
                try:
                    await stream.aclose()
                except Exception:  # noqa: BLE001
                    self.log.debug("closing the user-data stream failed", exc_info=True)
            failures += 1
            self._set_stream_state("reconnecting")
            self._pending.add("stream-reconnect")
            self._wake.set()
            await asyncio.sleep(backoff_s(failures, self.deps.rng) / 5)

    async def _on_stream_event(self, event: Any) -> None:
        if isinstance(event, domain.ConnectionEvent):
            if event.state is domain.ConnectionState.CONNECTED:
                self._set_stream_state("connected")
            elif event.state is domain.ConnectionState.DISCONNECTED:
                self._set_stream_state("reconnecting")
            elif event.state is domain.ConnectionState.RECONNECTED:
                self._set_stream_state("connected")
                self._stream_reconnects += 1
                if self._tele is not None:
                    self._tele.stream_reconnected()
                self._pending.add("stream-reconnect")
                self.log.info("stream reconnected: reconciling now")
            self._wake.set()
            return
        runner = self._runner
        if runner is None:
            return
        await runner.apply_event(event)
        self._stream_last_event_ms = self._now_ms()
        self._event_dirty = True     # coalesced: see _flush
        self._wake.set()

    # ---- emergency stop ----------------------------------------------------------------------------

    async def _open_breaker(self, value: str, meta: Mapping[str, Any]) -> None:
        """Record the stop in status before any exchange call."""
        who = requested_by(meta) or "unknown"
        self._estop = {"active": True, "reason": value, "requestedBy": who,
                       "requestedAt": st.rfc3339(self._now_ms()), "ordersCancelled": 0, "remaining": 0,
                       "state": "Cancelling"}
        self._estop_retry_at = 0.0
        self._estop_settle_at = None
        self._dirty = True
        self.log.warning("EMERGENCY STOP requested by %s: %s", who, value)
        await self._flush(force=True)     # readers see the stop before anything else happens
        if self.deps.telemetry is not None:
            tele = self._tele or self.deps.telemetry.account(self.namespace, self.name,
                                                             str((self._body.get("spec") or {}).get("exchange")))
            self._tele = tele
            tele.emergency_stop()
        symbols = (self._body.get("spec") or {}).get("symbols") or []
        self._post("Warning", "EmergencyStop",
                   f"emergency stop requested by {who} (reason: {value or 'none given'}): cancelling every open "
                   f"order on {len(symbols)} symbols")
        await self._stop_stream()

    async def _emergency_stop(self) -> None:
        if self._estop.get("state") == "Completed":
            return
        if self._now() < self._estop_retry_at:
            return
        await self._stop_stream()
        t0 = time.monotonic()
        try:
            report = await self._runner.emergency_stop(deadline_s=ESTOP_DEADLINE_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried; the breaker stays open
            self.log.error("emergency stop attempt failed: %s: %s", type(exc).__name__, exc)
            self._estop = {**self._estop, "state": "Incomplete"}
            self._estop_retry_at = self._now() + ESTOP_RETRY_S
            self._post("Warning", "EmergencyStopIncomplete", f"emergency stop attempt failed: {type(exc).__name__}: "
                                                             f"{exc}; retrying in {ESTOP_RETRY_S:.0f}s")
            self._dirty = True
            return
        remaining = list(report.remaining)
        cancelled = int(self._estop.get("ordersCancelled") or 0) + int(report.cancelled)
        done = not remaining
        self._estop = {**self._estop, "ordersCancelled": cancelled, "remaining": len(remaining),
                       "state": "Completed" if done else "Incomplete"}
        if done:
            self._estop["completedAt"] = st.rfc3339(self._now_ms())
            grace = float(getattr(self._config, "missing_grace_s", 5.0))
            self._estop_settle_at = self._now() + grace + 1.0
            self._post("Warning", "EmergencyStopCompleted",
                       f"emergency stop completed in {time.monotonic() - t0:.1f}s: {cancelled} orders cancelled, "
                       f"0 open orders remain (verified)")
        else:
            self._estop_retry_at = self._now() + ESTOP_RETRY_S
            sample = ", ".join(f"{o.symbol} {o.client_order_id}" for o in remaining[:5])
            self._post("Warning", "EmergencyStopIncomplete",
                       f"emergency stop: {cancelled} orders cancelled, {len(remaining)} still open ({sample}); "
                       f"retrying in {ESTOP_RETRY_S:.0f}s")
        self._dirty = True
        await self._flush(force=True)

    def _release_breaker(self) -> None:
        self.log.warning("emergency stop annotation removed: resuming (initial sync first)")
        self._estop = {**self._estop, "active": False}
        self._estop_settle_at = None
        self._synced = False
        self._retry_at = 0.0
        self._dirty = True
        if self._tele is not None:
            self._tele.set_emergency_stop_active(False)
        self._post("Normal", "EmergencyStopReleased", "emergency stop annotation removed: resuming with an initial sync")

    # ---- status ------------------------------------------------------------------------------------------

    def inputs(self) -> st.StatusInputs:
        runner = self._runner
        spec = getattr(self, "_spec", None)
        now_ms = self._now_ms()
        ledger_dump = None
        balances = orders = positions = monitor = None
        alerts: Mapping[str, bool] = {}
        last_success = self._restored_success_ms
        if runner is not None and (self._synced or self._estop.get("active")):
            ledger = runner.ledger
            balances = ledger.balance_values()
            orders = list(ledger.active_orders())
            positions = list(ledger.position_values().values())
            ledger_dump, self._ledger_note = _bounded_dump(ledger)
        if runner is not None:
            monitor = runner.monitor
            interval = spec.reconciliation.intervalSeconds if spec else 300
            try:
                alerts = monitor.alerts(now_ms, interval)
            except Exception:  # noqa: BLE001
                alerts = {}
            if getattr(monitor, "last_success_ms", None):
                last_success = monitor.last_success_ms
        return st.StatusInputs(
            generation=self._generation, problem=self._problem, credentials_ok=self._credentials_ok,
            synced=self._synced, report=self._report, last_run_ok=self._last_run_ok,
            last_run_error=self._last_run_error, balances=balances, orders=orders, positions=positions,
            owned_prefix=spec.staleOrders.ownedClientOrderIdPrefix if spec else "tw-",
            monitor=monitor, alerts=alerts, interval_s=spec.reconciliation.intervalSeconds if spec else 300,
            last_success_ms=last_success, stream_enabled=spec.stream.enabled if spec else True,
            stream_state=self._stream_state, stream_since_ms=self._stream_since_ms,
            stream_reconnects=self._stream_reconnects, stream_last_event_ms=self._stream_last_event_ms,
            estop=self._estop, last_handled_reconcile_at=self._last_handled, ledger=ledger_dump,
            ledger_note=self._ledger_note, **margin_inputs(runner, positions, orders))

    async def _flush(self, force: bool = False) -> None:
        now = self._now()
        due = self._write_due is not None and now >= self._write_due
        if not (force or self._dirty or self._event_dirty or due or now - self._last_stale_eval >= STALE_CHECK_S):
            return
        # Non-urgent writes (stream events, counters) go through a token bucket: a burst of a few
        # writes at once, then at most one per min_write_interval_s, coalescing what comes between.
        interval = self.deps.min_write_interval_s
        if interval > 0:
            self._write_tokens = min(WRITE_BURST, self._write_tokens + (now - self._last_write_ms) / interval)
            self._last_write_ms = now
        if not force and not self._dirty and self._event_dirty and interval > 0 and self._write_tokens < 1:
            # An event storm: do not even build the status (a ledger dump) until a write is allowed.
            self._write_due = now + (1 - self._write_tokens) * interval
            return
        self._last_stale_eval = now
        new = st.build_status(self.inputs(), self._last_written, self._now_ms())
        patch = st.merge_patch(self._last_written, new)
        self._dirty = False
        self._event_dirty = False
        if not patch:
            self._write_due = None
            return
        if not force and not st.urgent_change(self._last_written, new) and interval > 0 \
                and self._write_tokens < 1:
            self._write_due = now + (1 - self._write_tokens) * interval
            self._event_dirty = True
            return
        try:
            await self.deps.kube.patch_status(self.namespace, self.name, patch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried shortly; nothing is lost (state is in memory)
            detail = getattr(exc, "body", None) or str(exc)
            self.log.warning("status write failed: %s %s: %s", type(exc).__name__, getattr(exc, "status", ""),
                             str(detail)[:600])
            self._write_due = now + STATUS_RETRY_S
            self._dirty = True
            return
        self._last_written = new
        self._write_tokens = max(0.0, self._write_tokens - 1)
        self._write_due = None


def _bounded_dump(ledger: Any) -> tuple[dict | None, str]:
    limit = LEDGER_DUMP_ORDERS
    while True:
        dump = ledger.dump(max_orders=limit)
        kept, note = st.bounded_ledger(dump)
        if kept is not None or limit <= 50:
            return kept, note
        limit //= 2


async def _close_quietly(gw: Any) -> None:
    try:
        await asyncio.wait_for(gw.close(), timeout=CLOSE_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - never block a teardown on the exchange
        log.debug("gateway close failed", exc_info=True)


_EXCHANGES: frozenset[str] | None = None


def _ccxt_exchanges() -> frozenset[str]:
    global _EXCHANGES
    if _EXCHANGES is None:
        import ccxt

        _EXCHANGES = frozenset(ccxt.exchanges)
    return _EXCHANGES


def _default_gateway_factory(*args: Any, **kwargs: Any) -> Any:
    from ..gateway import create_gateway

    return create_gateway(*args, **kwargs)


def margin_inputs(runner: Any, positions: Any, orders: Any) -> dict[str, Any]:
    """USD-M margin health for status (issue 15): the last snapshot's figures, judged against the spec's
    thresholds with the ledger's positions and protective orders. Nothing for spot accounts."""
    from ..core.margin import margin_health
    if runner is None or not runner.config.futures:
        return {}
    margin = runner.last_margin
    if margin is None or positions is None:
        return {"futures": True}
    cfg = runner.config
    health = margin_health(margin, positions, orders or [], cfg.margin_ratio_threshold,
                           cfg.liquidation_distance_threshold)
    return {"futures": True, "margin": margin, "margin_health": health}

