"""Pure tests of the status builders, events aggregation, credentials parsing and helpers."""
from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest

from tradewarden import domain, models
from tradewarden.controller import events as ev
from tradewarden.controller import status as st
from tradewarden.controller.lifecycle import requested_by
from tradewarden.controller.schedule import backoff_s
from tradewarden.core import estop as es
from tradewarden.controller.emergency import EmergencyStop, StopState
from tradewarden.controller.vocabulary import Problem, StreamState, gateway_problem
from tradewarden.controller.credentials import CredentialsError, parse_secret
from tradewarden.redact import REDACTED
from tradewarden.core import Discrepancy, MonitoringState, Outcome, RunReport

T0 = 1_764_000_000_000


def order(i: int, *, coid: str | None = None, state=domain.OrderState.OPEN, symbol="BTC/USDT") -> domain.Order:
    return domain.Order(coid or f"tw-{i}", str(1000 + i), symbol, domain.Side.BUY, "limit", Decimal("100.50"),
                        Decimal("1.0"), Decimal("0"), state, T0 + i, T0 + i)


def report(discrepancies=(), error=None, trigger="timer") -> RunReport:
    r = RunReport(trigger=trigger, started_ms=T0, finished_ms=T0 + 250, error=error)
    r.discrepancies.extend(discrepancies)
    return r


def healthy(now_ms: int = T0 + 1000, interval_s: int = 300, **monitor) -> dict:
    """The monitor and its health at ``now_ms`` (status reads health; it never decides it)."""
    mon = MonitoringState(**{"runs": 1, "last_success_ms": T0, "since_ms": T0, **monitor})
    return {"monitor": mon, "health": mon.health(now_ms, interval_s)}


def ready_inputs(**kw) -> st.StatusInputs:
    base = dict(generation=3, credentials_ok=True, synced=True, report=report(), last_run_ok=True,
                balances={"USDT": domain.Balance("USDT", Decimal("10000"), Decimal("0")),
                          "BTC": domain.Balance("BTC", Decimal("1.50000000"), Decimal("0.5")),
                          "ETH": domain.Balance("ETH", Decimal("0"), Decimal("0"))},
                orders=[order(1), order(2, coid="manual-1")], positions=[], **healthy(),
                stream_state=StreamState.CONNECTED, estop=EmergencyStop())
    base.update(kw)
    return st.StatusInputs(**base)


def test_ready_status_lists_and_conditions():
    s = st.build_status(ready_inputs(), {}, T0 + 1000)
    assert s["phase"] == "Ready"
    assert s["observedGeneration"] == 3
    conds = {c["type"]: c for c in s["conditions"]}
    assert set(conds) == set(st.CONDITION_TYPES) - {st.WORKLOADS_SCALED_DOWN, st.MARGIN_AT_RISK}   # spot: no margin
    assert conds["Ready"]["status"] == "True" and conds["Synced"]["status"] == "True"
    assert conds["StreamConnected"]["status"] == "True"
    assert conds["EmergencyStopped"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in s["conditions"])
    assert s["balances"] == [{"asset": "BTC", "free": "1.5", "locked": "0.5"},
                             {"asset": "USDT", "free": "10000", "locked": "0"}]   # zero ETH left out
    assert s["openOrders"]["count"] == 2 and s["openOrders"]["owned"] == 1
    assert s["openOrders"]["items"][0]["price"] == "100.5"
    assert s["stream"]["tradingSafe"] is True
    # Valid against the CRD's models.
    models.TradingAccountStatus.model_validate(s)


def test_last_transition_time_changes_only_on_flip():
    first = st.build_status(ready_inputs(), {}, T0)
    later = st.build_status(ready_inputs(), first, T0 + 60_000)
    assert first["conditions"] == later["conditions"]
    assert st.merge_patch(first, later) == {}            # nothing changed: nothing to write
    down = st.build_status(ready_inputs(stream_state=StreamState.RECONNECTING), later, T0 + 120_000)
    c = {x["type"]: x for x in down["conditions"]}
    assert c["StreamConnected"]["status"] == "False"
    assert c["StreamConnected"]["lastTransitionTime"] == st.rfc3339(T0 + 120_000)
    assert c["Ready"]["lastTransitionTime"] == st.rfc3339(T0)      # Ready did not flip
    assert down["stream"]["tradingSafe"] is False and down["phase"] == "Degraded"
    assert st.urgent_change(later, down)


def test_bounded_lists_for_a_large_account():
    orders = [order(i) for i in range(5000)]
    balances = {f"A{i}": domain.Balance(f"A{i}", Decimal(i + 1), Decimal(0)) for i in range(1000)}
    s = st.build_status(ready_inputs(orders=orders, balances=balances), {}, T0)
    assert s["openOrders"]["count"] == 5000 and s["openOrders"]["truncated"] is True
    assert len(s["openOrders"]["items"]) == models.MAX_STATUS_OPEN_ORDERS
    assert s["openOrders"]["items"][0]["clientOrderId"] == "tw-0"          # oldest first
    assert len(s["balances"]) == models.MAX_STATUS_BALANCES
    assert len(json.dumps(s)) < 100_000


@pytest.mark.parametrize("open_orders", [0, 1_000, 10_000, 50_000])
def test_status_stays_under_64_KiB_for_any_book_size(open_orders):
    """Issue 19 item 7: the ledger is not in status (it lives in the checkpoint ConfigMap); status is a
    bounded summary. Worst case around the book: every list at its bound with long values, the longest
    client order ids Binance accepts (36 characters), conditions with messages at their clip."""
    coid = lambda i: f"tw-{i:033d}"  # noqa: E731 - 36 characters
    orders = [domain.Order(coid(i), str(10**12 + i), "BTC/USDT", domain.Side.BUY, "limit",
                           Decimal("123456.12345678"), Decimal("1234.12345678"), Decimal("0.12345678"),
                           domain.OrderState.PARTIALLY_FILLED, T0 + i, T0 + i) for i in range(open_orders)]
    balances = {f"ASSET{i:05d}": domain.Balance(f"ASSET{i:05d}", Decimal("123456789.12345678"),
                                                 Decimal("123456789.12345678")) for i in range(500)}
    long_error = "x" * 5000
    s = st.build_status(ready_inputs(orders=orders, balances=balances, last_run_error=long_error,
                                     last_run_ok=False, report=report(error=long_error),
                                     checkpoint={"configMap": "a" * 253 + "-ledger", "time": "2026-01-01T00:00:00Z",
                                                 "orders": open_orders, "leftOut": 0, "bytes": 900 * 1024,
                                                 "error": long_error}), {}, T0)
    size = len(json.dumps(s, separators=(",", ":")))
    assert "ledger" not in s and s["openOrders"]["count"] == open_orders
    assert len(s["openOrders"]["items"]) == min(open_orders, models.MAX_STATUS_OPEN_ORDERS)
    print(f"status bytes with {open_orders} open orders: {size}")
    assert size < st.MAX_STATUS_BYTES, size
    models.TradingAccountStatus.model_validate(s)


def test_problem_sets_error_phase_and_credentials_condition():
    s = st.build_status(st.StatusInputs(generation=1, problem=Problem("SecretNotFound", "Secret 'x' not found",
                                                                         credentials=True)), {}, T0)
    c = {x["type"]: x for x in s["conditions"]}
    assert s["phase"] == "Error"
    assert c["CredentialsValid"]["status"] == "False" and c["CredentialsValid"]["reason"] == "SecretNotFound"
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "SecretNotFound"
    s2 = st.build_status(st.StatusInputs(generation=1, problem=Problem("SymbolNotListed", "unknown symbol: X/Y")),
                         {}, T0)
    c2 = {x["type"]: x for x in s2["conditions"]}
    assert c2["CredentialsValid"]["status"] == "Unknown" and c2["Synced"]["reason"] == "SymbolNotListed"


def test_emergency_stop_and_alerts():
    machine = es.StopState(StopState.COMPLETED, reason="runaway bot", requested_by="kubectl-annotate",
                           requested_at_ms=T0, completed_at_ms=T0, verified_at_ms=T0, cancelled=7, remaining=0)
    estop = EmergencyStop(active=True, machine=machine)
    bal = Discrepancy("balance", "USDT", "10000", "10500", "ledger set to the exchange's value", Outcome.CORRECTED)
    health = healthy(T0, runs=9, consecutive_failures=4, last_balance_mismatches=1)
    s = st.build_status(ready_inputs(estop=estop, report=report([bal]), **health), {}, T0)
    c = {x["type"]: x for x in s["conditions"]}
    assert s["phase"] == "EmergencyStopped"
    assert c["EmergencyStopped"]["status"] == "True" and "kubectl-annotate" in c["EmergencyStopped"]["message"]
    assert c["Ready"]["status"] == "False"
    assert c["BalanceMismatch"]["status"] == "True" and "USDT" in c["BalanceMismatch"]["message"]
    assert c["ReconciliationFailing"]["status"] == "True"
    # the breaker keeps the stream up during a stop (issue 14): status shows it as it is; never safe to trade
    assert s["stream"]["state"] == "connected" and s["stream"]["tradingSafe"] is False
    assert c["StreamConnected"]["status"] == "True"
    assert s["lastReconciliation"]["discrepancies"] == {"balance": 1}
    assert "WorkloadsScaledDown" not in c


def test_emergency_stop_says_what_it_does_not_know():
    machine = es.StopState(StopState.INCOMPLETE, reason="r", requested_by="me", requested_at_ms=T0,
                           errors=(("listing", "Temporary: 503"),), failures=3, next_sweep_ms=T0 + 4000)
    estop = EmergencyStop(active=True, machine=machine,
                          scale=("ScaleForbidden", "scale Deployment/bot: forbidden by RBAC"))
    s = st.build_status(ready_inputs(estop=estop), {}, T0)
    c = {x["type"]: x for x in s["conditions"]}
    msg = c["EmergencyStopped"]["message"]
    assert c["EmergencyStopped"]["reason"] == "EmergencyStopIncomplete"
    assert "open orders unknown" in msg and "listing: Temporary: 503" in msg and "verified" not in msg
    assert c["WorkloadsScaledDown"]["status"] == "False" and c["WorkloadsScaledDown"]["reason"] == "ScaleForbidden"
    assert "remaining" not in s["emergencyStop"] and "completedAt" not in s["emergencyStop"]
    models.TradingAccountStatus.model_validate(s)


def test_stale_condition_after_two_intervals():
    s = st.build_status(ready_inputs(**healthy(T0 + 1_199_000, 600)), {}, T0 + 1_199_000)
    assert {x["type"]: x["status"] for x in s["conditions"]}["ReconciliationStale"] == "False"
    s = st.build_status(ready_inputs(**healthy(T0 + 1_201_000, 600)), {}, T0 + 1_201_000)
    conds = {x["type"]: x for x in s["conditions"]}
    assert conds["ReconciliationStale"]["status"] == "True" and "stale after 1200s" in conds["ReconciliationStale"]["message"]


def test_status_reads_health_and_never_decides_it():
    """One rule: a report with a balance discrepancy but a monitor saying none, or 9 failures in the
    monitor's counters but a health that says not failing, show what health says."""
    bal = Discrepancy("balance", "USDT", "1", "2", "ledger set to the exchange's value", Outcome.CORRECTED)
    mon = MonitoringState(runs=9, consecutive_failures=2, last_success_ms=T0, since_ms=T0)
    s = st.build_status(ready_inputs(report=report([bal]), monitor=mon, health=mon.health(T0, 300)), {}, T0)
    c = {x["type"]: x["status"] for x in s["conditions"]}
    assert c["BalanceMismatch"] == "False" and c["ReconciliationFailing"] == "False"
    mon.consecutive_failures = 4
    s = st.build_status(ready_inputs(monitor=mon, health=mon.health(T0, 300)), {}, T0)
    c = {x["type"]: x for x in s["conditions"]}
    assert c["ReconciliationFailing"]["status"] == "True" and c["Ready"]["reason"] == "ReconciliationFailing"


def test_merge_patch_roundtrip():
    old = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}
    new = {"a": 1, "b": {"c": 5}, "l": [1], "e": "x"}
    patch = st.merge_patch(old, new)
    assert patch == {"b": {"c": 5, "d": None}, "l": [1], "e": "x"}
    assert st.apply_merge_patch(old, patch) == new


def test_events_are_aggregated_and_bounded():
    ds = [Discrepancy("balance", f"A{i}", "1", "2", "ledger set to the exchange's value", Outcome.CORRECTED) for i in range(1000)]
    ds += [Discrepancy("fill", "tw-9", "open 0/1", "filled 1/1", "ledger set to the exchange's order",
                       Outcome.CORRECTED)]
    ds += [Discrepancy("stale", "tw-3", "open", "canceled", "cancelled (stale); exchange says canceled",
                       Outcome.CANCELLED)]
    out = ev.run_events(ds, trigger="annotation")
    reasons = [e.reason for e in out]
    assert reasons == ["BalanceMismatch", "MissedFill", "StaleOrder", "StaleOrderCancelled", "Corrected"]
    bal = out[0]
    assert bal.type == "Warning" and "1000 balance discrepancies" in bal.message and "(+995 more)" in bal.message
    assert "A0 local=1 exchange=2" in bal.message and len(bal.message) <= ev.MAX_MESSAGE
    assert "1001 local entries corrected" in out[-1].message
    observe = ev.run_events([Discrepancy("stale", "tw-3", "o", "open for 99s", "reported only (policy ObserveOnly)",
                                             Outcome.REPORTED)])
    assert [e.reason for e in observe] == ["StaleOrder"]


def _secret(**data: str) -> dict:
    return {"metadata": {"resourceVersion": "7"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_credentials_parse_and_never_leak():
    c = parse_secret(_secret(apiKey="KEY123456", secret="SECRET987654"), name="s", api_key_key="apiKey",
                     secret_key="secret")
    assert (c.api_key, c.secret) == ("KEY123456", "SECRET987654")
    assert "SECRET" not in repr(c) and "KEY123" not in repr(c)
    assert c.redact("bad key KEY123456 sig SECRET987654") == f"bad key {REDACTED} sig {REDACTED}"
    with pytest.raises(CredentialsError) as e:
        parse_secret(None, name="s", api_key_key="apiKey", secret_key="secret")
    assert e.value.reason == "SecretNotFound"
    with pytest.raises(CredentialsError) as e:
        parse_secret(_secret(apiKey="KEY123456", other="SECRET987654"), name="s", api_key_key="apiKey",
                     secret_key="secret")
    assert e.value.reason == "SecretKeyMissing" and "'secret'" in e.value.message
    assert "SECRET987654" not in e.value.message and "KEY123456" not in e.value.message
    with pytest.raises(CredentialsError) as e:
        parse_secret({"data": {"apiKey": "!!notbase64", "secret": "eA=="}}, name="s", api_key_key="apiKey",
                     secret_key="secret")
    assert e.value.reason == "SecretKeyInvalid"


def test_requested_by_from_managed_fields():
    meta = {"managedFields": [
        {"manager": "kubectl-client-side-apply", "time": "2026-01-01T00:00:00Z",
         "fieldsV1": {"f:spec": {}}},
        {"manager": "kubectl-annotate", "time": "2026-01-01T00:01:00Z",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:tradewarden.io/emergency-stop": {}}}}}]}
    assert requested_by(meta) == "kubectl-annotate"
    assert requested_by({}) == ""


def test_gateway_problems_and_backoff():
    redact = lambda t: t.replace("SECRETVALUE", "***")  # noqa: E731
    p = gateway_problem(domain.AuthenticationFailed("invalid key SECRETVALUE"), redact)
    assert p.reason == "AuthenticationFailed" and p.credentials and "SECRETVALUE" not in p.message
    assert gateway_problem(domain.SymbolNotListed("unknown symbol: FOO/USDT"), redact).reason == "SymbolNotListed"
    # by type, never by the words of the message
    assert gateway_problem(domain.Invalid("bad symbol parameter"), redact).reason == "InvalidSpec"
    assert gateway_problem(domain.Temporary("connection refused"), redact).reason == "EndpointUnreachable"
    assert gateway_problem(domain.Unsupported("unsupported: fetchOpenOrders"), redact).reason == "UnsupportedExchange"
    delays = [backoff_s(n) for n in range(1, 12)]
    assert delays[0] < 7 and max(delays) <= 300 * 1.2 and delays[4] > delays[0]


def test_a_cancel_answered_filled_is_not_counted_as_a_cancel():
    from tradewarden.controller import events as ev
    done = Discrepancy("stale", "tw-1", "open", "canceled", "cancelled (stale); exchange says canceled",
                       Outcome.CANCELLED)
    raced = Discrepancy("stale", "tw-2", "open", "filled", "cancelled (stale); exchange says filled",
                        Outcome.CANCEL_ANSWERED)
    assert ev.is_cancel(done) and not ev.is_cancel(raced)
    specs = ev.run_events([done, raced], trigger="stale")
    (cancel_event,) = [e for e in specs if e.reason == "StaleOrderCancelled"]
    assert cancel_event.message.startswith("1 stale owned orders cancelled") and "tw-2" not in cancel_event.message


def test_status_is_built_through_the_model_and_survives_a_foreign_previous():
    """The writer goes through the status model the CRD is generated from: a part carried over from a
    status another version wrote, which no longer fits the model, is replaced, never written back."""
    previous = {"metrics": {"runs": 3, "noSuchField": 1}, "stream": {"state": "connected", "since": "t"},
                "lastReconciliation": {"time": "2026-01-01T00:00:00Z", "trigger": "timer"}}
    s = st.build_status(st.StatusInputs(generation=1, stream_enabled=True), previous, T0)
    assert s["metrics"] == {} and s["lastReconciliation"] == previous["lastReconciliation"]
    assert s["stream"]["since"] == "t" and s["stream"]["state"] == "disconnected"
    models.TradingAccountStatus.model_validate(s)
    with pytest.raises(Exception):
        models.TradingAccountStatus.model_validate({"metrics": {"noSuchField": 1}})


# ---- USD-M margin health (issue 15) ----------------------------------------------------------------

def _futures_inputs(mark: str, liq: str, maint: str, protective: bool):
    from tradewarden.core.margin import margin_health
    sym = "BTC/USDT:USDT"
    positions = [domain.Position(sym, Decimal("2"), Decimal("50000"), T0, domain.PositionSide.LONG),
                 domain.Position(sym, Decimal("-0.5"), Decimal("51000"), T0, domain.PositionSide.SHORT)]
    stop = domain.Order("tw-sl", "9", sym, domain.Side.SELL, "stop_market", Decimal(0), Decimal(2), Decimal(0),
                        domain.OrderState.OPEN, T0, T0, algo=True, protective=protective,
                        position_side=domain.PositionSide.LONG)
    risks = tuple(domain.PositionRisk(sym, p.side, p.amount, Decimal(mark), Decimal(liq), Decimal(0)) for p in positions)
    margin = domain.MarginSummary({"USDT": domain.AssetMargin("USDT", Decimal("10000"), Decimal("9800"),
                                                              Decimal("-200"), Decimal("4000"), Decimal(maint))},
                                  Decimal(maint), Decimal("9800"), risks, hedge_mode=True)
    health = margin_health(margin, positions, [stop], Decimal("0.8"), Decimal("0.05"))
    return ready_inputs(positions=positions, orders=[stop], futures=True, margin=margin, margin_health=health)


def test_futures_status_shows_legs_protection_margin_and_margin_at_risk():
    s = st.build_status(_futures_inputs("50000", "30000", "100", True), {}, T0 + 1000)
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["MarginAtRisk"]["status"] == "False"
    rows = {(p["symbol"], p.get("side")): p for p in s["positions"]}
    long_, short = rows[("BTC/USDT:USDT", "LONG")], rows[("BTC/USDT:USDT", "SHORT")]
    assert long_["protected"] is True and short["protected"] is False     # the stop closes the long leg only
    assert long_["liquidationPrice"] == "30000" and long_["liquidationDistance"] == "0.4"
    assert s["margin"]["hedgeMode"] is True and s["margin"]["marginRatio"] == "0.0102"
    assert s["margin"]["assets"] == [{"asset": "USDT", "walletBalance": "10000", "marginBalance": "9800",
                                      "unrealizedProfit": "-200", "availableBalance": "4000"}]
    models.TradingAccountStatus.model_validate(s)        # the writer cannot drift from the CRD's model

    near = st.build_status(_futures_inputs("50000", "48000", "100", False), {}, T0 + 1000)
    cond = {c["type"]: c for c in near["conditions"]}["MarginAtRisk"]
    assert cond["status"] == "True" and "BTC/USDT:USDT LONG" in cond["message"] and near["margin"]["atRisk"]
    ratio = st.build_status(_futures_inputs("50000", "30000", "9000", True), {}, T0 + 1000)
    cond = {c["type"]: c for c in ratio["conditions"]}["MarginAtRisk"]
    assert cond["status"] == "True" and "margin ratio" in cond["message"]
