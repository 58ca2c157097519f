"""The chart's alerts, proven in a real Prometheus: each fires under its real cause and resolves after
recovery, while the operator runs against the simulator and a real kube-apiserver.

Prometheus (Debian's package) scrapes `tradewarden run` every second and evaluates the chart's rendered
PrometheusRule every second. Thresholds are the test's VALUES of the rules (the defaults stay as they are):
staleAfterSeconds 60 (the schema's floor; the account reconciles every 30 s), streamDownFor 3s; consecutiveFailures keeps its
default, 3. Between the failing runs of the outage the test waits for a stale-order check: those checks
used to count as successful runs and kept this alert from ever firing.

Also here, on the same running operator: Events name tradewarden (reporting component and instance), status
writes carry the field manager `tradewarden`, and every panel of the Grafana dashboard has data.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid

import pytest

from tests.conftest import kubectl
from tests.controller.conftest import cond, events_of, wait_for
from tests.monitoring import prom as pm
from tests.monitoring.scenario import ALERTS, active, running, wait_state

pytestmark = [pytest.mark.cluster, pytest.mark.sim, pytest.mark.timeout(600)]

if pm.prometheus_binary() is None and os.environ.get("CI"):
    raise RuntimeError("prometheus not installed: ./tw test installs Debian's prometheus package")
needs_prometheus = pytest.mark.skipif(pm.prometheus_binary() is None,
                                      reason="prometheus not installed (apt-get install prometheus)")

INTERVAL_S = 30
RULE_VALUES = ("prometheusRule.staleAfterSeconds=60", "prometheusRule.streamDownFor=3s")
POD = "tradewarden-7d9f-" + uuid.uuid4().hex[:5]


@pytest.fixture(scope="module")
def stack(crd_installed, helm_bin, tmp_path_factory):
    with running(crd_installed, helm_bin, tmp_path_factory.mktemp("monitoring"), RULE_VALUES,
                 interval_s=INTERVAL_S, env={"POD_ID": POD}) as (acct, prom):
        yield acct, prom


@needs_prometheus
def test_events_and_status_writes_name_tradewarden(stack):
    acct, _ = stack
    events = wait_for("an Event", lambda: events_of(acct.kc, acct.ns, acct.name), operator=acct.operator)
    for e in events:
        assert e["reportingComponent"] == "tradewarden", e
        assert e["source"]["component"] == "tradewarden", e       # kubectl describe's "From" column
        assert e["reportingInstance"] == POD, e
    out = kubectl(acct.kc, "-n", acct.ns, "get", "ta", acct.name, "-o", "json", "--show-managed-fields").stdout
    managed = json.loads(out)["metadata"]["managedFields"]
    status_writers = {m["manager"] for m in managed if "f:status" in (m.get("fieldsV1") or {})}
    assert status_writers == {"tradewarden"}, managed


@needs_prometheus
def test_alerts_fire_under_their_real_cause_and_resolve(stack):
    acct, prom = stack
    lb = acct.labels
    fired: dict[str, float] = {}

    # Prometheus has the rules and scrapes the operator
    # every rule of the chart is loaded; MarginAtRisk is USD-M only (this scenario is spot): its firing and
    # resolving are proven by the promtool cases in tests/packaging/test_alerts.py
    assert {r["name"] for r in prom.rules()} == set(ALERTS) | {"TradewardenMarginAtRisk"}
    wait_for("the operator scraped", lambda: prom.query(f'tradewarden_consecutive_failures{{name="{acct.name}"}}'),
             timeout=30)
    assert prom.targets_up()

    # 0. Normal trading: stale-order checks and timer runs come and go, nothing is pending or firing.
    checks = acct.metric("tradewarden_stale_order_checks_total") or 0
    wait_for("two stale-order checks", lambda: (acct.metric("tradewarden_stale_order_checks_total") or 0)
             >= checks + 2, timeout=30, operator=acct.operator)
    for _ in range(10):
        assert active(prom, lb) == {}, "an alert on a healthy account"
        time.sleep(0.5)

    # 1. Venue outage: every REST call answers 503. Runs fail; stale-order checks go on between them
    #    (and must not hide the failures): ReconciliationFailing, then ReconciliationStale.
    t0 = time.monotonic()
    acct.venue_outage()
    for n in range(1, 9):
        obj = acct.run()
        assert cond(obj, "Synced")["status"] == "False"
        checks = acct.metric("tradewarden_stale_order_checks_total")
        wait_for("a stale-order check between two failing runs",
                 lambda: acct.metric("tradewarden_stale_order_checks_total") > checks, timeout=20,
                 operator=acct.operator)
        if prom.state("TradewardenReconciliationFailing", **lb) == "firing":
            break
    fired["TradewardenReconciliationFailing"] = wait_state(prom, "TradewardenReconciliationFailing", "firing", lb,
                                                           timeout=15) - t0
    assert acct.metric("tradewarden_consecutive_failures") > 3
    assert cond(acct.obj(), "ReconciliationFailing")["status"] == "True"    # status and alert: one rule
    fired["TradewardenReconciliationStale"] = wait_state(prom, "TradewardenReconciliationStale", "firing", lb,
                                                         timeout=90) - t0
    assert prom.state("TradewardenReconciliationFailing", **lb) == "firing"

    acct.clear_faults()
    obj = acct.run()
    assert cond(obj, "ReconciliationFailing")["status"] == "False"
    wait_state(prom, "TradewardenReconciliationFailing", "inactive", lb, timeout=15)
    wait_state(prom, "TradewardenReconciliationStale", "inactive", lb, timeout=15)

    # 2. Balance drift: the next run finds it (BalanceMismatch), the one after finds none.
    t0 = time.monotonic()
    acct.balance_drift()
    obj = acct.run()
    assert cond(obj, "BalanceMismatch")["status"] == "True"
    fired["TradewardenBalanceMismatch"] = wait_state(prom, "TradewardenBalanceMismatch", "firing", lb,
                                                     timeout=15) - t0
    obj = acct.run()
    assert cond(obj, "BalanceMismatch")["status"] == "False"
    wait_state(prom, "TradewardenBalanceMismatch", "inactive", lb, timeout=15)

    # 3. Dead stream: the connection is cut and every reconnect refused (StreamDown after its `for`).
    t0 = time.monotonic()
    acct.stream_dies()
    fired["TradewardenStreamDown"] = wait_state(prom, "TradewardenStreamDown", "firing", lb, timeout=60) - t0
    assert cond(acct.obj(), "StreamConnected")["status"] == "False"
    acct.clear_faults()
    wait_state(prom, "TradewardenStreamDown", "inactive", lb, timeout=90)
    acct.wait_ready()

    # 4. Emergency stop: EmergencyStopActive; the runs it pauses page no one. The stream stays up for the
    #    stop's breaker (issue 14), which cancels what a bot still places: counted in its metric.
    t0 = time.monotonic()
    acct.emergency_stop()
    fired["TradewardenEmergencyStopActive"] = wait_state(prom, "TradewardenEmergencyStopActive", "firing", lb,
                                                         timeout=30) - t0
    wait_for("stop completed", lambda: (acct.obj()["status"].get("emergencyStop") or {}).get("state") == "Completed",
             timeout=30, operator=acct.operator)
    acct.tsim.call(acct.tsim.sim.place_order, acct.api_key, symbol="BTCUSDT", side="BUY", type="LIMIT",
                   quantity="0.01", price="40000", time_in_force="GTC", client_order_id="bot-after-stop")
    wait_for("the breaker cancelled it", lambda: acct.metric("tradewarden_breaker_cancels_total") == 1, timeout=30,
             operator=acct.operator)
    assert acct.metric("tradewarden_stream_connected") == 1
    for _ in range(16):                          # longer than streamDownFor: StreamDown would be firing
        assert set(active(prom, lb)) == {"TradewardenEmergencyStopActive"}, active(prom, lb)
        time.sleep(0.5)
    acct.release()
    wait_state(prom, "TradewardenEmergencyStopActive", "inactive", lb, timeout=30)
    acct.wait_ready()
    for _ in range(6):
        assert active(prom, lb) == {}, active(prom, lb)
        time.sleep(0.5)

    print("\ntime to fire (s, from the cause):", json.dumps({k: round(v, 1) for k, v in fired.items()}))
    assert set(fired) == set(ALERTS)


@needs_prometheus
def test_every_dashboard_panel_has_data(stack):
    """Every query of every panel of the dashboard, evaluated by the real Prometheus, returns data (after
    the scenario above: an outage, a drift, a dead stream and an emergency stop happened)."""
    acct, prom = stack
    dashboard = json.loads(pm.DASHBOARD.read_text())
    queries = [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    assert len(queries) >= 12
    empty = []
    wait_for("a rate() window of samples", lambda: prom.query("count_over_time(up[1m]) > 20"), timeout=60)
    for title, expr in queries:
        resolved = expr.replace("$namespace", ".*").replace("$account", ".*").replace("$exchange", ".*") \
            .replace("$__rate_interval", "1m").replace("$__range", "5m")
        assert "$" not in resolved, (title, expr)
        if not prom.query(resolved):
            empty.append((title, resolved))
    assert empty == [], empty      # the breaker's cancels too: the scenario's stop cancelled a bot order


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p.get("type") != "row"]


def test_dashboard_queries_only_name_exported_metrics():
    """A query naming a metric nobody exports would show "No data" forever."""
    from tradewarden import telemetry

    dashboard = json.loads(pm.DASHBOARD.read_text())
    exported = set(telemetry.METRIC_NAMES)
    for p in panels(dashboard):
        for t in p.get("targets", []):
            for name in re.findall(r"\b(tradewarden_[a-z_]+)", t["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert base in exported, (p["title"], name)
