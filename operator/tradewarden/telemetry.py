"""OpenTelemetry metrics and traces for the operator.

One :class:`Telemetry` per process (``setup()`` is idempotent). Metrics are exported for Prometheus on
``/metrics`` (default port 9464) and over OTLP (http/protobuf) only when the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables ask for it.

Per-account state lives in plain Python objects (:class:`AccountTelemetry`) and is published through
observable instruments, so ``forget()`` makes every series of a deleted account disappear from the
next scrape (a stale ``tradewarden_consecutive_failures`` of a deleted account must not page anyone).
The run-duration histogram is the one synchronous instrument; its series are dropped too (see
``_drop_histogram_series``).

Attributes are only ``namespace``, ``name``, ``exchange`` (and ``kind`` / ``host`` where stated):
never credentials. Span attributes whose key looks like a credential are refused.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

__all__ = ["Telemetry", "AccountTelemetry", "TracedGateway", "setup", "current", "METRIC_NAMES"]

log = logging.getLogger(__name__)

PREFIX = "tradewarden_"
# Buckets for a reconciliation run: a few REST calls normally, up to a minute when rate limited.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SECRET_WORDS = ("secret", "apikey", "api_key", "signature", "password", "token", "credential")

METRIC_NAMES = (
    "tradewarden_reconciliation_runs_total",
    "tradewarden_reconciliation_failures_total",
    "tradewarden_reconciliation_duration_seconds",
    "tradewarden_discrepancies_total",
    "tradewarden_balance_mismatches_total",
    "tradewarden_order_mismatches_total",
    "tradewarden_stale_orders_cancelled_total",
    "tradewarden_consecutive_failures",
    "tradewarden_last_success_timestamp_seconds",
    "tradewarden_monitored_since_timestamp_seconds",
    "tradewarden_last_run_balance_mismatches",
    "tradewarden_stale_order_checks_total",
    "tradewarden_open_orders",
    "tradewarden_stream_connected",
    "tradewarden_stream_reconnects_total",
    "tradewarden_emergency_stops_total",
    "tradewarden_emergency_stop_active",
    "tradewarden_breaker_cancels_total",
    "tradewarden_exchange_weight_used",
    "tradewarden_exchange_weight_limit",
    "tradewarden_rate_limit_wait_seconds_total",
)


@dataclass
class _AccountState:
    """What the supervisor tells telemetry directly (no health rule here: that is the monitor's)."""
    open_orders: int | None = None
    stream_connected: bool | None = None
    stream_reconnects: int = 0
    emergency_stops: int = 0
    emergency_stop_active: bool = False
    breaker_cancels: int = 0
    # USD-M margin health (issue 15): account ratio and at-risk flag; per (symbol, side) position rows
    margin_ratio: float | None = None
    margin_at_risk: bool | None = None
    positions: dict[tuple[str, str], tuple[float, float | None]] = field(default_factory=dict)


class AccountTelemetry:
    """The metrics of one TradingAccount. Cheap; all methods are thread-safe and never raise.

    Run history and health (runs, failures, consecutive failures, last success, discrepancies) are read
    at scrape time from the account's :class:`tradewarden.core.monitor.MonitoringState` given to
    :meth:`attach`: the one place those rules live. Until a monitor is attached those series are absent."""

    def __init__(self, telemetry: Telemetry, namespace: str, name: str, exchange: str) -> None:
        self._t = telemetry
        self.attributes: dict[str, str] = {"namespace": str(namespace), "name": str(name), "exchange": str(exchange)}
        self._key = (self.attributes["namespace"], self.attributes["name"])
        self._state = _AccountState()
        self._monitor: Any = None

    def __repr__(self) -> str:
        return f"AccountTelemetry({self.attributes['namespace']}/{self.attributes['name']}, {self.attributes['exchange']})"

    # -- reconciliation -------------------------------------------------------------------------
    def attach(self, monitor: Any) -> None:
        """Publish this monitoring state (core.MonitoringState) as the account's run and health series."""
        with self._t._lock:
            self._monitor = monitor
            self._t._register(self)

    @property
    def monitor(self) -> Any:
        return self._monitor

    def observe_run(self, duration_s: float) -> None:
        """One reconciliation run's duration, for the histogram (its outcome is the monitor's)."""
        with self._t._lock:
            self._t._register(self)
        self._t._duration.record(max(0.0, float(duration_s)), self.attributes)

    def set_margin(self, health: Any) -> None:
        """USD-M margin health (core.margin.MarginHealth) after a run."""
        with self._t._lock:
            s = self._state
            ratio = health.margin_ratio
            s.margin_ratio = float(ratio) if ratio is not None and ratio.is_finite() else None
            s.margin_at_risk = bool(health.at_risk)
            s.positions = {(p.symbol, p.side.value): (float(p.amount), None if p.distance is None else float(p.distance))
                           for p in health.positions}
            self._t._register(self)

    def set_open_orders(self, n: int) -> None:
        with self._t._lock:
            self._state.open_orders = max(0, int(n))
            self._t._register(self)

    # -- user-data stream ---------------------------------------------------------------------
    def set_stream_connected(self, connected: bool) -> None:
        with self._t._lock:
            self._state.stream_connected = bool(connected)
            self._t._register(self)

    def stream_reconnected(self) -> None:
        with self._t._lock:
            self._state.stream_reconnects += 1
            self._t._register(self)

    # -- emergency stop -----------------------------------------------------------------------
    def emergency_stop(self) -> None:
        """The emergency stop was pulled: counts it and marks it active until ``set_emergency_stop_active(False)``."""
        with self._t._lock:
            self._state.emergency_stops += 1
            self._state.emergency_stop_active = True
            self._t._register(self)

    def set_emergency_stop_active(self, active: bool) -> None:
        """Restore the active flag (after a restart) or clear it (annotation removed)."""
        with self._t._lock:
            self._state.emergency_stop_active = bool(active)
            self._t._register(self)

    def breaker_cancelled(self, n: int = 1) -> None:
        """Orders the emergency-stop breaker cancelled (placed while the stop stands; the exchange
        confirmed the cancel)."""
        if n <= 0:
            return
        with self._t._lock:
            self._state.breaker_cancels += int(n)
            self._t._register(self)

    # -- lifecycle ----------------------------------------------------------------------------
    def forget(self) -> None:
        """The resource is gone: its series vanish from the next scrape."""
        self._t._forget(self)


class Telemetry:
    """Meter and tracer providers plus the Prometheus endpoint of this process."""

    def __init__(self, *, otlp: bool | None = None, clock=None) -> None:
        import time

        self._clock = clock or time.time
        self._lock = threading.RLock()
        self._accounts: dict[tuple[str, str], AccountTelemetry] = {}
        self._weights: dict[tuple[str, str], float] = {}
        self._limits: dict[tuple[str, str], float] = {}
        self._waits: dict[str, float] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics_port: int | None = None
        self.metrics_host: str | None = None
        self._server = None
        self._span_exporters: list[SpanExporter] = []

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tradewarden")})
        readers: list[MetricReader] = [
            PrometheusMetricReader(registry=self.registry, scope_info_enabled=False, disable_target_info=True)]
        self.tracer_provider = TracerProvider(resource=resource)
        self.otlp_metrics = False
        self.otlp_traces = False
        if otlp is not False:
            readers += self._otlp_metric_readers()
            self._otlp_span_processors()
        self.meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        self.meter = self.meter_provider.get_meter("tradewarden")
        self.tracer = self.tracer_provider.get_tracer("tradewarden")
        self._instruments()

    # -- exporters ------------------------------------------------------------------------------
    @staticmethod
    def _wants(kind: str) -> bool:
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        if os.environ.get(f"OTEL_{kind.upper()}_EXPORTER", "").strip().lower() == "none":
            return False
        return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or
                    os.environ.get(f"OTEL_EXPORTER_OTLP_{kind.upper()}_ENDPOINT"))

    def _otlp_metric_readers(self) -> list[MetricReader]:
        if not self._wants("metrics"):
            return []
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        except ImportError:  # the `otlp` extra is not installed
            log.warning("OTLP metrics requested by OTEL_EXPORTER_OTLP_* but opentelemetry-exporter-otlp-proto-http "
                        "is not installed (pip install 'tradewarden[otlp]')")
            return []
        self.otlp_metrics = True
        return [PeriodicExportingMetricReader(OTLPMetricExporter())]

    def _otlp_span_processors(self) -> None:
        if not self._wants("traces"):
            return
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTLP traces requested by OTEL_EXPORTER_OTLP_* but opentelemetry-exporter-otlp-proto-http "
                        "is not installed (pip install 'tradewarden[otlp]')")
            return
        self.otlp_traces = True
        self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))

    def add_span_exporter(self, exporter: SpanExporter) -> None:
        """Send spans to ``exporter`` synchronously as well (tests: ``InMemorySpanExporter``)."""
        with self._lock:
            if any(e is exporter for e in self._span_exporters):
                return
            self._span_exporters.append(exporter)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the Prometheus ``/metrics`` endpoint (once per process). Port 0 picks a free port.
        Returns the bound port."""
        with self._lock:
            if self._server is not None:
                if port not in (0, self.metrics_port) or host != self.metrics_host:
                    log.warning("metrics endpoint already on %s:%s; ignoring %s:%s",
                                self.metrics_host, self.metrics_port, host, port)
                return self.metrics_port
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
            self._server = server
            self.metrics_port = server.server_port
            self.metrics_host = host
            log.info("metrics on http://%s:%s/metrics", host, self.metrics_port)
            return self.metrics_port

    def render(self) -> str:
        """The Prometheus text exposition, as a scrape would return it."""
        return generate_latest(self.registry).decode()

    def shutdown(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
                self.metrics_port = None
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()

    # -- instruments ------------------------------------------------------------------------------
    def _instruments(self) -> None:
        m = self.meter

        def per_account(getter, only_set: bool = False):
            def callback(_options: CallbackOptions):
                with self._lock:
                    rows = [(a.attributes, getter(a._state)) for a in self._accounts.values()]
                return [Observation(float(v), attrs) for attrs, v in rows if not (only_set and v is None)]
            return callback

        def from_monitor(getter):
            """A series read from each attached monitor (absent for accounts without one)."""
            def callback(_options: CallbackOptions):
                with self._lock:
                    rows = [(a.attributes, a._monitor) for a in self._accounts.values() if a._monitor is not None]
                out = []
                for attrs, mon in rows:
                    v = getter(mon)
                    if v is not None:
                        out.append(Observation(float(v), attrs))
                return out
            return callback

        def counter(name: str, description: str, callback, unit: str = "1") -> None:
            m.create_observable_counter(PREFIX + name, callbacks=[callback], unit=unit, description=description)

        def gauge(name: str, description: str, callback, unit: str = "1") -> None:
            m.create_observable_gauge(PREFIX + name, callbacks=[callback], unit=unit, description=description)

        counter("reconciliation_runs_total", "Reconciliation runs (initial sync, timer, annotation, stream reconnect; "
                "not stale-order checks)", from_monitor(lambda mon: mon.runs))
        counter("reconciliation_failures_total", "Reconciliation runs that failed",
                from_monitor(lambda mon: mon.failures))
        counter("balance_mismatches_total", "Balance discrepancies found (local vs exchange beyond tolerance)",
                from_monitor(lambda mon: mon.balance_mismatches))
        counter("order_mismatches_total", "Order discrepancies found (fill, missing, lost, orphan)",
                from_monitor(lambda mon: mon.order_mismatches))
        counter("stale_orders_cancelled_total", "Stale owned orders cancelled (confirmed by the exchange)",
                from_monitor(lambda mon: mon.stale_cancelled))
        counter("stale_order_checks_total", "Stale-order checks (not reconciliations: they do not move health)",
                from_monitor(lambda mon: mon.stale_checks))
        counter("stream_reconnects_total", "User-data stream reconnects", per_account(lambda s: s.stream_reconnects))
        counter("emergency_stops_total", "Emergency stops executed", per_account(lambda s: s.emergency_stops))
        counter("breaker_cancels_total", "Orders the emergency-stop breaker cancelled while the stop stood "
                "(confirmed by the exchange)", per_account(lambda s: s.breaker_cancels))

        def discrepancies(_options: CallbackOptions):
            with self._lock:
                rows = [(a.attributes, dict(a._monitor.by_kind)) for a in self._accounts.values()
                        if a._monitor is not None]
            return [Observation(n, {**attrs, "kind": kind}) for attrs, d in rows for kind, n in sorted(d.items())
                    if n > 0]

        m.create_observable_counter(PREFIX + "discrepancies_total", callbacks=[discrepancies], unit="1",
                                    description="Discrepancies found, by kind")

        gauge("consecutive_failures", "Failed reconciliation runs since the last successful one",
              from_monitor(lambda mon: mon.consecutive_failures))
        gauge("last_success_timestamp_seconds", "Unix time of the last successful reconciliation",
              from_monitor(lambda mon: mon.last_success_ms / 1000.0 if mon.last_success_ms else None), unit="s")
        gauge("monitored_since_timestamp_seconds", "Unix time monitoring of the account started (staleness "
              "counts from here while no run has succeeded)",
              from_monitor(lambda mon: mon.since_ms / 1000.0 if mon.since_ms else None), unit="s")
        gauge("last_run_balance_mismatches", "Balance discrepancies found by the last reconciliation run",
              from_monitor(lambda mon: mon.last_balance_mismatches))
        gauge("open_orders", "Open orders on the exchange at the last run",
              per_account(lambda s: s.open_orders, only_set=True))
        gauge("stream_connected", "1 if the user-data stream is connected",
              per_account(lambda s: None if s.stream_connected is None else int(s.stream_connected), only_set=True))
        gauge("emergency_stop_active", "1 while the emergency stop is in force",
              per_account(lambda s: int(s.emergency_stop_active)))
        gauge("margin_ratio", "USD-M maintenance margin / margin balance (liquidation at 1)",
              per_account(lambda s: s.margin_ratio, only_set=True))
        gauge("margin_at_risk", "1 while the MarginAtRisk condition is True (the account's own thresholds)",
              per_account(lambda s: None if s.margin_at_risk is None else int(s.margin_at_risk),
                          only_set=True))

        def position_rows(index: int):
            def callback(_options: CallbackOptions):
                with self._lock:
                    rows = [(a.attributes, dict(a._state.positions)) for a in self._accounts.values()]
                return [Observation(v[index], {**attrs, "symbol": sym, "side": side})
                        for attrs, ps in rows for (sym, side), v in sorted(ps.items()) if v[index] is not None]
            return callback

        m.create_observable_gauge(PREFIX + "position_amount", callbacks=[position_rows(0)], unit="1",
                                  description="USD-M position amount by symbol and side (BOTH, LONG, SHORT)")
        m.create_observable_gauge(PREFIX + "position_liquidation_distance", callbacks=[position_rows(1)], unit="1",
                                  description="USD-M |mark - liquidation| / mark by symbol and side")

        self._duration = m.create_histogram(
            PREFIX + "reconciliation_duration_seconds", unit="s", description="Duration of reconciliation runs",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))

        def weights(_options: CallbackOptions):
            with self._lock:
                rows = list(self._weights.items())
            return [Observation(w, {"exchange": ex, "host": host}) for (ex, host), w in rows]

        def limits(_options: CallbackOptions):
            with self._lock:
                rows = list(self._limits.items())
            return [Observation(w, {"exchange": ex, "host": host}) for (ex, host), w in rows]

        def waits(_options: CallbackOptions):
            with self._lock:
                rows = list(self._waits.items())
            return [Observation(s, {"exchange": ex}) for ex, s in rows]

        m.create_observable_gauge(PREFIX + "exchange_weight_used", callbacks=[weights], unit="1",
                                  description="Request weight used in the exchange's current window, per host")
        m.create_observable_gauge(PREFIX + "exchange_weight_limit", callbacks=[limits], unit="1",
                                  description="Request weight allowed per window by the exchange, per host")
        m.create_observable_counter(PREFIX + "rate_limit_wait_seconds_total", callbacks=[waits], unit="s",
                                    description="Seconds spent waiting for the exchange rate budget")

    # -- accounts -----------------------------------------------------------------------------------
    def account(self, namespace: str, name: str, exchange: str) -> AccountTelemetry:
        """The account's metrics (the same object for the same namespace/name while not forgotten;
        a changed exchange replaces the series)."""
        with self._lock:
            key = (str(namespace), str(name))
            existing = self._accounts.get(key)
            if existing is not None and existing.attributes["exchange"] == str(exchange):
                return existing
            if existing is not None:
                self._forget(existing)
            acct = AccountTelemetry(self, namespace, name, exchange)
            self._accounts[key] = acct
            return acct

    def _register(self, acct: AccountTelemetry) -> None:
        # An AccountTelemetry used after forget() (a late callback) comes back rather than vanishing silently.
        self._accounts.setdefault(acct._key, acct)

    def _forget(self, acct: AccountTelemetry) -> None:
        with self._lock:
            if self._accounts.get(acct._key) is acct:
                del self._accounts[acct._key]
            acct._state = _AccountState()
            acct._monitor = None
            self._drop_histogram_series(acct.attributes)

    def _drop_histogram_series(self, attributes: Mapping[str, str]) -> None:
        """Remove one attribute set from the duration histogram. The SDK has no public API for this; this
        reaches into sdk 1.45's storage (pinned exactly in pyproject) and a test proves it works."""
        try:
            consumer = self.meter_provider._measurement_consumer
            for storage in consumer._reader_storages.values():
                for match in storage._instrument_view_instrument_matches.get(self._duration, []):
                    with match._lock:
                        for key, agg in list(match._attributes_aggregation.items()):
                            if getattr(agg, "_attributes", None) == dict(attributes):
                                del match._attributes_aggregation[key]
        except Exception:  # noqa: BLE001 - never break the operator over a stale histogram series
            log.debug("could not drop histogram series", exc_info=True)

    # -- process-wide ---------------------------------------------------------------------------------
    def exchange_weight_used(self, exchange: str, host: str, weight: float, limit: float | None = None) -> None:
        """The weight used in the current window and, when known, the window's limit (per host)."""
        with self._lock:
            self._weights[(str(exchange), str(host))] = float(weight)
            if limit:
                self._limits[(str(exchange), str(host))] = float(limit)

    def rate_limit_wait(self, exchange: str, seconds: float) -> None:
        """Add ``seconds`` waited for the exchange's budget (0 makes the series exist: a counter at 0)."""
        if seconds < 0:
            return
        with self._lock:
            self._waits[str(exchange)] = self._waits.get(str(exchange), 0.0) + float(seconds)

    # -- traces ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def span(self, span_name: str, /, **attrs: Any) -> Iterator[trace.Span]:
        """A span (child of the current one); exceptions are recorded and re-raised. Attribute values that
        are None are dropped; keys that look like credentials are refused."""
        clean: dict[str, Any] = {}
        for key, value in attrs.items():
            if value is None:
                continue
            if any(w in key.lower().replace("-", "_").replace(".", "_") for w in _SECRET_WORDS):
                raise ValueError(f"refusing span attribute {key!r}: credentials never go into traces")
            clean[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
        with self.tracer.start_as_current_span(span_name, attributes=clean, record_exception=False,
                                               set_status_on_exception=False) as sp:
            try:
                yield sp
            except BaseException as exc:
                sp.record_exception(exc)
                sp.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def traced(self, gateway: Any, **attrs: Any) -> "TracedGateway":
        """Wrap a domain.Gateway so each exchange call (snapshot, fetch_order, cancel_order, list_account, cancel_symbols, close_positions,
        start, close) is a child span ``exchange.<method>`` of the current span (the run's)."""
        return TracedGateway(gateway, self, attrs)


class TracedGateway:
    """A transparent proxy over a Gateway: coroutine methods run inside a span; everything else passes."""

    _TRACED = frozenset({"snapshot", "fetch_order", "cancel_order", "list_account", "cancel_symbols", "close_positions", "start", "close"})

    def __init__(self, gateway: Any, telemetry: Telemetry, attrs: Mapping[str, Any]) -> None:
        self._gateway = gateway
        self._telemetry = telemetry
        self._attrs = dict(attrs)

    def __repr__(self) -> str:
        return f"TracedGateway({self._gateway!r})"

    def __getattr__(self, item: str) -> Any:
        target = getattr(self._gateway, item)
        if item not in self._TRACED or not callable(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            extra = {k: kwargs[k] for k in ("symbol",) if isinstance(kwargs.get(k), str)}
            if args and isinstance(args[0], str) and item in ("fetch_order", "cancel_order"):
                extra["symbol"] = args[0]
            with self._telemetry.span(f"exchange.{item}", **self._attrs, **extra):
                return await target(*args, **kwargs)

        call.__name__ = item
        return call


_current: Telemetry | None = None
_current_lock = threading.Lock()


def setup(metrics_port: int | None = 9464, host: str = "0.0.0.0", *, span_exporter: SpanExporter | None = None,
          otlp: bool | None = None) -> Telemetry:
    """The process's Telemetry, created on the first call (later calls return the same instance).
    ``metrics_port`` None: no HTTP endpoint; 0: a free port (``telemetry.metrics_port`` tells which).
    ``span_exporter``: also export spans to it (tests). ``otlp=False`` ignores the OTEL_* variables.
    ``TRADEWARDEN_METRICS_HOST``, when set, is the bind address whatever ``host`` says."""
    global _current
    # An explicit bind address from the environment wins (e.g. 127.0.0.1 on a laptop or in tests).
    host = os.environ.get("TRADEWARDEN_METRICS_HOST") or host
    with _current_lock:
        if _current is None:
            _current = Telemetry(otlp=otlp)
        t = _current
    if metrics_port is not None:
        t.serve(metrics_port, host)
    if span_exporter is not None:
        t.add_span_exporter(span_exporter)
    return t


def current() -> Telemetry | None:
    """The Telemetry set up in this process, if any."""
    return _current
