"""The chart's alert rules, checked and unit-tested by Prometheus's own promtool (Debian: `prometheus`)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from .conftest import find

PROMTOOL = shutil.which("promtool")
if PROMTOOL is None and os.environ.get("CI"):   # ./tw test installs it: in CI its absence is a failure
    raise RuntimeError("promtool not installed: ./tw test installs Debian's prometheus package")
pytestmark = [pytest.mark.cluster, pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian/Ubuntu: apt-get install --no-install-recommends prometheus)")]

LB = 'namespace="desk",name="main",exchange="binance"'
OTHER = 'namespace="desk",name="calm",exchange="binance"'
ALERT_LABELS = {"namespace": "desk", "name": "main", "exchange": "binance", "severity": None}

# One unit case (or more) per alert: it fires where it must and stays silent where it must not.
TESTS = [
    {"interval": "1m", "input_series": [
        {"series": f"tradewarden_consecutive_failures{{{LB}}}", "values": "0 1 2 3 4 4 0"},
        {"series": f"tradewarden_consecutive_failures{{{OTHER}}}", "values": "0x6"}],
     "alert_rule_test": [
        {"eval_time": "3m", "alertname": "TradewardenReconciliationFailing", "exp_alerts": []},
        {"eval_time": "4m", "alertname": "TradewardenReconciliationFailing",
         "exp_alerts": [{"exp_labels": {**ALERT_LABELS, "severity": "critical"}}]},
        {"eval_time": "6m", "alertname": "TradewardenReconciliationFailing", "exp_alerts": []}]},
    # the last run's balance mismatches (the monitor's gauge, the BalanceMismatch condition)
    {"interval": "1m", "input_series": [
        {"series": f"tradewarden_last_run_balance_mismatches{{{LB}}}", "values": "0x10 1x5 0x10"},
        {"series": f"tradewarden_last_run_balance_mismatches{{{OTHER}}}", "values": "0x25"}],
     "alert_rule_test": [
        {"eval_time": "5m", "alertname": "TradewardenBalanceMismatch", "exp_alerts": []},
        {"eval_time": "12m", "alertname": "TradewardenBalanceMismatch",
         "exp_alerts": [{"exp_labels": {**ALERT_LABELS, "severity": "critical"}}]},
        {"eval_time": "17m", "alertname": "TradewardenBalanceMismatch", "exp_alerts": []}]},
    # an emergency stop's own cancels release locked balances while the stream is closed: it pages, not this
    {"interval": "1m", "input_series": [
        {"series": f"tradewarden_last_run_balance_mismatches{{{LB}}}", "values": "0 1x5 0"},
        {"series": f"tradewarden_emergency_stop_active{{{LB}}}", "values": "0 1x6"}],
     "alert_rule_test": [
        {"eval_time": "3m", "alertname": "TradewardenBalanceMismatch", "exp_alerts": []}]},
    # last success at t=0 (unix 0 in promtool time), the other account keeps succeeding each minute
    {"interval": "1m", "input_series": [
        {"series": f"tradewarden_last_success_timestamp_seconds{{{LB}}}", "values": "0x20"},
        {"series": f"tradewarden_last_success_timestamp_seconds{{{OTHER}}}", "values": "0+60x20"}],
     "alert_rule_test": [
        {"eval_time": "9m", "alertname": "TradewardenReconciliationStale", "exp_alerts": []},
        {"eval_time": "11m", "alertname": "TradewardenReconciliationStale",
         "exp_alerts": [{"exp_labels": {**ALERT_LABELS, "severity": "critical"}}]}]},
    # no run ever succeeded: staleness counts from when monitoring started; an emergency stop silences it
    {"interval": "1m", "input_series": [
        {"series": f"tradewarden_monitored_since_timestamp_seconds{{{LB}}}", "values": "0x30"},
        {"series": f"tradewarden_emergency_stop_active{{{LB}}}", "values": "0x14 1x5 0x10"}],
     "alert_rule_test": [
        {"eval_time": "9m", "alertname": "TradewardenReconciliationStale", "exp_alerts": []},
        {"eval_time": "12m", "alertname": "TradewardenReconciliationStale",
         "exp_alerts": [{"exp_labels": {**ALERT_LABELS, "severity": "critical"}}]},
        {"eval_time": "17m", "alertname": "TradewardenReconciliationStale", "exp_alerts": []},
        {"eval_time": "22m", "alertname": "TradewardenReconciliationStale",
         "exp_alerts": [{"exp_labels": {**ALERT_LABELS, "severity": "critical"}}]}]},
    {"interval": "1m", "input_series": [
        {"series": f"tradewarden_stream_connected{{{LB}}}", "values": "1 1 0 0 0 0 0 0 0 1 1"},
        {"series": f"tradewarden_stream_connected{{{OTHER}}}", "values": "1 0 1 0 1 0 1 0 1 0 1"}],
     "alert_rule_test": [
        {"eval_time": "4m", "alertname": "TradewardenStreamDown", "exp_alerts": []},
        {"eval_time": "7m", "alertname": "TradewardenStreamDown",
         "exp_alerts": [{"exp_labels": {**ALERT_LABELS, "severity": "warning"}}]},
        {"eval_time": "10m", "alertname": "TradewardenStreamDown", "exp_alerts": []}]},
    # the emergency stop closes the stream on purpose: no StreamDown while it is in force
    {"interval": "1m", "input_series": [
        {"series": f"tradewarden_stream_connected{{{LB}}}", "values": "1 0x15"},
        {"series": f"tradewarden_emergency_stop_active{{{LB}}}", "values": "0 1x15"}],
     "alert_rule_test": [
        {"eval_time": "12m", "alertname": "TradewardenStreamDown", "exp_alerts": []}]},
    {"interval": "1m", "input_series": [
        {"series": f"tradewarden_emergency_stop_active{{{LB}}}", "values": "0 0 1 1 1 0"},
        {"series": f"tradewarden_emergency_stop_active{{{OTHER}}}", "values": "0x5"}],
     "alert_rule_test": [
        {"eval_time": "1m", "alertname": "TradewardenEmergencyStopActive", "exp_alerts": []},
        {"eval_time": "2m", "alertname": "TradewardenEmergencyStopActive",
         "exp_alerts": [{"exp_labels": {**ALERT_LABELS, "severity": "critical"}}]},
        {"eval_time": "5m", "alertname": "TradewardenEmergencyStopActive", "exp_alerts": []}]},
    # MarginAtRisk: the operator judges each account against its own spec.marginHealth thresholds and
    # exports the verdict; the rule fires after it held for marginAtRiskFor (1m)
    {"interval": "1m", "input_series": [
        {"series": f"tradewarden_margin_at_risk{{{LB}}}", "values": "0 0 1 1 1 0 0"},
        {"series": f"tradewarden_margin_at_risk{{{OTHER}}}", "values": "0 1 0 1 0 1 0"}],
     "alert_rule_test": [
        {"eval_time": "2m", "alertname": "TradewardenMarginAtRisk", "exp_alerts": []},
        {"eval_time": "3m", "alertname": "TradewardenMarginAtRisk",
         "exp_alerts": [{"exp_labels": {**ALERT_LABELS, "severity": "critical"}}]},
        {"eval_time": "6m", "alertname": "TradewardenMarginAtRisk", "exp_alerts": []}]},
]


@pytest.fixture(scope="module")
def rules_file(render, tmp_path_factory):
    (rule,) = find(render("prometheusRule.enabled=true"), "PrometheusRule")
    path = tmp_path_factory.mktemp("rules") / "tradewarden-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(rules_file):
    r = promtool("check", "rules", str(rules_file))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 6 rules found" in r.stdout + r.stderr


# The summaries as Prometheus renders them for the firing case ($value included).
SUMMARIES = {
    "TradewardenReconciliationFailing": "TradingAccount desk/main failed 4 reconciliations in a row",
    "TradewardenBalanceMismatch": "Balance mismatch on TradingAccount desk/main",
    "TradewardenReconciliationStale": "No successful reconciliation of desk/main for {}",
    "TradewardenStreamDown": "User-data stream of desk/main is down",
    "TradewardenEmergencyStopActive": "Emergency stop active on TradingAccount desk/main",
    "TradewardenMarginAtRisk": "Margin at risk on TradingAccount desk/main",
}


def expected_annotations(rules: dict, alert: str, eval_time: str) -> dict:
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == alert]
    text = rule["annotations"]["description"]
    for key in ("namespace", "name", "exchange"):
        text = text.replace("{{ $labels.%s }}" % key, ALERT_LABELS[key] if key != "exchange" else "binance")
    text = text.replace("{{ $value }}", "1")              # the firing cases' value (one mismatched balance)
    assert "{{" not in text
    minutes = int(eval_time.rstrip("m"))
    summary = SUMMARIES[alert].format(f"{minutes}m 0s")  # stale: the time since the reference (t=0)
    return {"summary": summary, "description": text, "runbook_url": rule["annotations"]["runbook_url"]}


def test_promtool_unit_tests_per_alert(rules_file):
    rules = yaml.safe_load(rules_file.read_text())
    tests = yaml.safe_load(yaml.safe_dump(TESTS))
    for case in tests:
        for t in case["alert_rule_test"]:
            for alert in t["exp_alerts"]:
                alert["exp_annotations"] = expected_annotations(rules, t["alertname"], t["eval_time"])
    covered = {t["alertname"] for c in tests for t in c["alert_rule_test"] if t["exp_alerts"]}
    assert covered == {"TradewardenReconciliationFailing", "TradewardenBalanceMismatch",
                       "TradewardenReconciliationStale", "TradewardenStreamDown", "TradewardenEmergencyStopActive",
                       "TradewardenMarginAtRisk"}
    spec = rules_file.parent / "tests.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": tests},
                                   sort_keys=False))
    r = promtool("test", "rules", str(spec))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_unit_tests_can_fail(rules_file):
    """The harness itself: a wrong expectation makes promtool fail."""
    wrong = yaml.safe_load(yaml.safe_dump(TESTS[0]))
    wrong["alert_rule_test"] = [{"eval_time": "1m", "alertname": "TradewardenReconciliationFailing",
                                 "exp_alerts": [{"exp_labels": {**ALERT_LABELS, "severity": "critical"}}]}]
    spec = rules_file.parent / "wrong.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules_file.name], "tests": [wrong]}, sort_keys=False))
    r = promtool("test", "rules", str(spec))
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr
