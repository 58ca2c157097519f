"""Telemetry: real Prometheus scrape over HTTP, forgetting series, spans, OTLP export to a local receiver."""
from __future__ import annotations

import re
import urllib.request

import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tradewarden import telemetry as tm
from tradewarden.core import MonitoringState, RunReport
from tradewarden.core.config import Discrepancy, Outcome


def run(mon: MonitoringState, t_ms: int, ok: bool = True, kinds: dict | None = None, stale: bool = False) -> None:
    """One run recorded by the monitor (what the core's runner does), ``kinds`` as discrepancy counts."""
    r = RunReport(trigger="stale-cleanup" if stale else "timer", started_ms=t_ms - 100, finished_ms=t_ms,
                  error=None if ok else "boom")
    for kind, n in (kinds or {}).items():
        r.discrepancies += [Discrepancy(kind, f"e{i}", "1", "2", "x", Outcome.CORRECTED) for i in range(n)]
    mon.record_stale(r) if stale else mon.record_run(r)


def scrape(t: tm.Telemetry) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{t.metrics_port}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def value(text: str, metric: str, **labels: str) -> float | None:
    """The sample of ``metric`` whose labels include ``labels`` (None if absent)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != metric:
            continue
        got = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


@pytest.fixture(scope="module")
def telemetry():
    t = tm.setup(metrics_port=0, host="127.0.0.1", otlp=False)
    assert t.metrics_port and t.metrics_port > 0
    return t


def test_setup_is_idempotent(telemetry):
    assert tm.setup(metrics_port=0, host="127.0.0.1") is telemetry
    assert tm.setup(metrics_port=None) is telemetry
    assert tm.current() is telemetry


def test_scrape_shows_account_metrics(telemetry):
    a = telemetry.account("ns-scrape", "acct-1", "binance")
    mon = MonitoringState(since_ms=1_699_999_000_000)
    a.attach(mon)
    run(mon, 1_700_000_000_000, True, {"balance": 2, "fill": 1, "orphan": 1, "stale": 0})
    run(mon, 1_700_000_060_000, False, {"missing": 1})
    run(mon, 1_700_000_070_000, True, stale=True)      # a stale-order check: no health effect
    run(mon, 1_700_000_120_000, False, {})
    for d in (0.3, 1.7, 0.2):
        a.observe_run(d)
    a.set_open_orders(5)
    mon.stale_cancelled = 3
    a.set_stream_connected(False)
    a.stream_reconnected()
    a.stream_reconnected()
    a.emergency_stop()
    telemetry.exchange_weight_used("binance", "api.binance.com", 37, limit=6000)
    telemetry.rate_limit_wait("binanceusdm", 0)          # the counter exists from the first figures, at 0
    telemetry.rate_limit_wait("binance", 1.5)
    telemetry.rate_limit_wait("binance", 0.25)

    text = scrape(telemetry)
    lb = {"namespace": "ns-scrape", "name": "acct-1", "exchange": "binance"}
    assert value(text, "tradewarden_reconciliation_runs_total", **lb) == 3
    assert value(text, "tradewarden_reconciliation_failures_total", **lb) == 2
    assert value(text, "tradewarden_consecutive_failures", **lb) == 2
    assert value(text, "tradewarden_balance_mismatches_total", **lb) == 2
    assert value(text, "tradewarden_order_mismatches_total", **lb) == 3  # fill + orphan + missing
    assert value(text, "tradewarden_discrepancies_total", kind="balance", **lb) == 2
    assert value(text, "tradewarden_discrepancies_total", kind="missing", **lb) == 1
    assert value(text, "tradewarden_discrepancies_total", kind="stale", **lb) is None  # zero counts skipped
    assert value(text, "tradewarden_reconciliation_duration_seconds_count", **lb) == 3
    assert value(text, "tradewarden_reconciliation_duration_seconds_sum", **lb) == pytest.approx(2.2)
    assert value(text, "tradewarden_reconciliation_duration_seconds_bucket", le="0.25", **lb) == 1
    assert value(text, "tradewarden_reconciliation_duration_seconds_bucket", le="+Inf", **lb) == 3
    assert value(text, "tradewarden_open_orders", **lb) == 5
    assert value(text, "tradewarden_stale_orders_cancelled_total", **lb) == 3
    assert value(text, "tradewarden_stream_connected", **lb) == 0
    assert value(text, "tradewarden_stream_reconnects_total", **lb) == 2
    assert value(text, "tradewarden_emergency_stops_total", **lb) == 1
    assert value(text, "tradewarden_emergency_stop_active", **lb) == 1
    assert value(text, "tradewarden_exchange_weight_used", exchange="binance", host="api.binance.com") == 37
    assert value(text, "tradewarden_exchange_weight_limit", exchange="binance", host="api.binance.com") == 6000
    assert value(text, "tradewarden_rate_limit_wait_seconds_total", exchange="binanceusdm") == 0
    assert value(text, "tradewarden_rate_limit_wait_seconds_total", exchange="binance") == 1.75
    # the first run was the last success: the stale check in between moved nothing
    assert value(text, "tradewarden_last_success_timestamp_seconds", **lb) == 1_700_000_000
    assert value(text, "tradewarden_monitored_since_timestamp_seconds", **lb) == 1_699_999_000
    assert value(text, "tradewarden_stale_order_checks_total", **lb) == 1
    assert value(text, "tradewarden_last_run_balance_mismatches", **lb) == 0

    run(mon, 1_700_000_180_000, True, {"balance": 1})
    a.set_stream_connected(True)
    a.set_emergency_stop_active(False)
    text = scrape(telemetry)
    assert value(text, "tradewarden_consecutive_failures", **lb) == 0
    assert value(text, "tradewarden_last_run_balance_mismatches", **lb) == 1
    assert value(text, "tradewarden_stream_connected", **lb) == 1
    assert value(text, "tradewarden_emergency_stop_active", **lb) == 0
    assert value(text, "tradewarden_last_success_timestamp_seconds", **lb) == 1_700_000_180
    assert value(text, "tradewarden_reconciliation_runs_total", **lb) == 4
    # the monitor is the only copy: what it says is what the scrape says
    mon.consecutive_failures = 7
    assert value(telemetry.render(), "tradewarden_consecutive_failures", **lb) == 7


def test_unset_gauges_are_absent(telemetry):
    a = telemetry.account("ns-fresh", "new", "binanceusdm")
    a.set_emergency_stop_active(False)
    lb = {"namespace": "ns-fresh", "name": "new"}
    assert value(telemetry.render(), "tradewarden_consecutive_failures", **lb) is None   # no monitor yet
    a.attach(MonitoringState())
    text = telemetry.render()
    assert value(text, "tradewarden_consecutive_failures", **lb) == 0
    assert value(text, "tradewarden_reconciliation_runs_total", **lb) == 0
    assert value(text, "tradewarden_last_success_timestamp_seconds", **lb) is None
    assert value(text, "tradewarden_open_orders", **lb) is None
    assert value(text, "tradewarden_stream_connected", **lb) is None
    a.forget()


def test_forget_drops_every_series(telemetry):
    keep = telemetry.account("ns-forget", "keep", "binance")
    gone = telemetry.account("ns-forget", "gone", "binance")
    for acct in (keep, gone):
        acct.attach(MonitoringState())
        run(acct.monitor, 1_700_000_000_000, False, {"balance": 1})
        acct.observe_run(0.5)
        acct.set_open_orders(1)
    assert telemetry.account("ns-forget", "gone", "binance") is gone
    text = scrape(telemetry)
    assert value(text, "tradewarden_consecutive_failures", name="gone") == 1
    assert value(text, "tradewarden_reconciliation_duration_seconds_count", name="gone") == 1
    gone.forget()
    text = scrape(telemetry)
    assert 'name="gone"' not in text
    assert value(text, "tradewarden_consecutive_failures", name="keep") == 1
    assert value(text, "tradewarden_reconciliation_duration_seconds_count", name="keep") == 1
    # a new resource with the same name starts from zero
    again = telemetry.account("ns-forget", "gone", "binance")
    again.attach(MonitoringState())
    run(again.monitor, 1_700_000_000_000)
    again.observe_run(0.1)
    text = telemetry.render()
    assert value(text, "tradewarden_reconciliation_runs_total", name="gone") == 1
    assert value(text, "tradewarden_reconciliation_duration_seconds_count", name="gone") == 1
    again.forget()
    keep.forget()


def test_exchange_change_replaces_series(telemetry):
    a = telemetry.account("ns-ex", "acct", "binance")
    a.set_open_orders(2)
    b = telemetry.account("ns-ex", "acct", "binanceusdm")
    assert b is not a
    b.set_open_orders(4)
    text = telemetry.render()
    assert value(text, "tradewarden_open_orders", name="acct", exchange="binance") is None
    assert value(text, "tradewarden_open_orders", name="acct", exchange="binanceusdm") == 4
    b.forget()


def test_no_secret_in_metrics_or_spans(telemetry):
    exporter = InMemorySpanExporter()
    telemetry.add_span_exporter(exporter)
    with pytest.raises(ValueError, match="credentials"):
        with telemetry.span("run", api_key="AKIAxxxx"):
            pass
    with pytest.raises(ValueError):
        with telemetry.span("run", **{"exchange.secret": "s3cr3t"}):
            pass
    assert all("AKIAxxxx" not in str(s.attributes) for s in exporter.get_finished_spans())


def test_span_per_run_with_child_per_call(telemetry):
    exporter = InMemorySpanExporter()
    tm.setup(metrics_port=None, span_exporter=exporter)
    with telemetry.span("reconcile", namespace="ns", name="a", exchange="binance", trigger="timer"):
        with telemetry.span("exchange.fetch_balance", symbol=None):
            pass
        with pytest.raises(RuntimeError):
            with telemetry.span("exchange.fetch_open_orders", symbol="BTC/USDT"):
                raise RuntimeError("boom")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run = spans["reconcile"]
    assert run.attributes["trigger"] == "timer"
    for child in ("exchange.fetch_balance", "exchange.fetch_open_orders"):
        assert spans[child].parent.span_id == run.context.span_id
        assert spans[child].context.trace_id == run.context.trace_id
    failed = spans["exchange.fetch_open_orders"]
    assert failed.status.status_code.name == "ERROR"
    assert failed.events[0].name == "exception"
    assert "symbol" not in spans["exchange.fetch_balance"].attributes
    assert run.status.status_code.name == "UNSET"


async def test_otlp_only_when_env_asks(monkeypatch):
    """OTLP http/protobuf goes to the endpoint named by OTEL_EXPORTER_OTLP_ENDPOINT, and nowhere without it."""
    received: list[tuple[str, str, int]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((request.path, request.headers.get("Content-Type", ""), len(body)))
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/metrics", handler)
    app.router.add_post("/v1/traces", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
            monkeypatch.delenv(var, raising=False)
        quiet = tm.Telemetry()
        assert not quiet.otlp_metrics and not quiet.otlp_traces
        quiet.shutdown()

        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")
        t = tm.Telemetry()
        assert t.otlp_metrics and t.otlp_traces
        t.account("ns", "otlp", "binance").observe_run(0.2)
        with t.span("reconcile", exchange="binance"):
            pass
        import asyncio
        ok = await asyncio.to_thread(lambda: (t.meter_provider.force_flush(10_000),
                                              t.tracer_provider.force_flush(10_000)))
        assert ok == (True, True)
        await asyncio.to_thread(t.shutdown)
        paths = {p for p, _, _ in received}
        assert {"/v1/metrics", "/v1/traces"} <= paths
        assert all(ct == "application/x-protobuf" and n > 0 for _, ct, n in received)

        received.clear()
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
        only_metrics = tm.Telemetry()
        assert only_metrics.otlp_metrics and not only_metrics.otlp_traces
        await asyncio.to_thread(only_metrics.shutdown)
    finally:
        await runner.cleanup()


async def test_traced_gateway_spans_each_exchange_call(telemetry):
    """Pure-logic check of the proxy (the real gateway is exercised by the gateway's own tests)."""
    class Fake:
        name = "fake"

        async def snapshot(self, symbols):
            return {"symbols": list(symbols)}

        async def cancel_order(self, symbol, exchange_order_id="", client_order_id=""):
            raise LookupError("gone")

        def stream(self, symbols):
            return iter(())

    exporter = InMemorySpanExporter()
    telemetry.add_span_exporter(exporter)
    gw = telemetry.traced(Fake(), exchange="binance")
    with telemetry.span("reconcile", trigger="timer"):
        assert await gw.snapshot(["BTC/USDT"]) == {"symbols": ["BTC/USDT"]}
        with pytest.raises(LookupError):
            await gw.cancel_order("BTC/USDT", client_order_id="tw-1")
    assert gw.name == "fake" and list(gw.stream([])) == []
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run = spans["reconcile"]
    assert spans["exchange.snapshot"].parent.span_id == run.context.span_id
    assert spans["exchange.cancel_order"].attributes["symbol"] == "BTC/USDT"
    assert spans["exchange.cancel_order"].attributes["exchange"] == "binance"
    assert spans["exchange.cancel_order"].status.status_code.name == "ERROR"
