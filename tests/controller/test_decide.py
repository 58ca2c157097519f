"""Table tests of the account's lifecycle decision and of the emergency stop's machine (pure: no
exchange, no API server, no clock)."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from tradewarden.controller import emergency, lifecycle
from tradewarden.controller.emergency import EmergencyStop, StopState
from tradewarden.controller.lifecycle import (AcceptSpec, Build, Configure, Idle, OpenBreaker, Reject,
                                              ReleaseBreaker, Run, StartStream, State, Stop, decide, observe)
from tradewarden.controller.vocabulary import Problem, RunKind
from tradewarden.core import Trigger

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
EXCHANGES = frozenset({"binance", "binanceusdm"})
ESTOP = "tradewarden.io/emergency-stop"
RECONCILE_AT = "tradewarden.io/reconcile-requested-at"


def body(*, generation=1, annotations=None, deleting=False, **spec):
    s = {"exchange": "binance", "symbols": ["BTC/USDT"], "credentialsSecretRef": {"name": "creds"}}
    s.update(spec)
    meta = {"namespace": "ns", "name": "a", "generation": generation, "annotations": dict(annotations or {}),
            "managedFields": [{"manager": "kubectl-annotate", "time": "2026-01-01T00:00:00Z",
                               "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{ESTOP}": {}}}}}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": s}


def obs(**kw) -> lifecycle.Observed:
    """The resource observed by a supervisor whose gateway says: spot."""
    return observe(body(**kw), known_exchanges=EXCHANGES, futures=False)


def seen(o: lifecycle.Observed, **kw) -> State:
    """The state of a supervisor that has accepted, built, configured and synced ``o``."""
    base = dict(built=True, identity=o.identity, seen_generation=o.generation, config=o.config,
                check_interval_s=o.check_interval_s, synced=True, stream_running=True,
                next_reconcile=NOW + 100, next_stale=NOW + 50)
    base.update(kw)
    return State(**base)


O = obs()
STOPPING = obs(annotations={ESTOP: "runaway"})
OPEN = EmergencyStop(active=True, reason="runaway", requested_by="kubectl-annotate", state=StopState.CANCELLING)
DONE = replace(OPEN, state=StopState.COMPLETED)


CASES = [
    # (name, observed, state, expected action)
    ("deleting: nothing", obs(deleting=True), State(), Idle()),
    ("first sight: accept the spec", O, State(),
     AcceptSpec(1, O.identity, rebuild=False, forget=False, retry_now=True)),
    ("accepted: build", O, State(identity=O.identity, seen_generation=1), Build()),
    ("build failed: wait for the backoff", O, State(identity=O.identity, seen_generation=1, retry_at=NOW + 5),
     Idle(NOW + 5)),
    ("built: the stream subscribes first (issue 19 item 1)", O, seen(O, synced=False, stream_running=False),
     StartStream()),
    ("subscribed: the initial sync", O, seen(O, synced=False), Run(RunKind.INITIAL, Trigger.INITIAL)),
    ("a saved ledger: resume", replace(O, saved_ledger=True), seen(O, synced=False),
     Run(RunKind.INITIAL, Trigger.RESUME)),
    ("sync failed: wait for the backoff", O, seen(O, synced=False, retry_at=NOW + 9), Idle(NOW + 9)),
    ("synced: the stream starts", O, seen(O, stream_running=False), StartStream()),
    ("nothing due: sleep until the first timer", O, seen(O), Idle(NOW + 50)),
    ("timer due", O, seen(O, next_reconcile=NOW), Run(RunKind.RECONCILE, Trigger.TIMER)),
    ("stale check due", O, seen(O, next_stale=NOW - 1), Run(RunKind.STALE, Trigger.STALE_CLEANUP)),
    # low-activity timing (issue 19 item 8): quietSeconds 2, maxDelaySeconds 30 by default
    ("timer due, events flowing: wait for a quiet moment", O, seen(O, next_reconcile=NOW, last_event_at=NOW - 0.5),
     Idle(NOW + 1.5)),
    ("timer due, quiet for quietSeconds: run", O, seen(O, next_reconcile=NOW, last_event_at=NOW - 2),
     Run(RunKind.RECONCILE, Trigger.TIMER)),
    ("a stream that never pauses: run at the maximum delay", O,
     seen(O, next_reconcile=NOW - 30, last_event_at=NOW - 0.1), Run(RunKind.RECONCILE, Trigger.TIMER)),
    ("waiting wakes at the maximum delay when it comes first", O,
     seen(O, next_reconcile=NOW - 29, last_event_at=NOW - 0.1), Idle(NOW + 1)),
    ("a waiting timer run does not hold the stale check", O,
     seen(O, next_reconcile=NOW, last_event_at=NOW, next_stale=NOW), Run(RunKind.STALE, Trigger.STALE_CLEANUP)),
    ("a reconnect never waits", O, seen(O, next_reconcile=NOW, last_event_at=NOW, reconnect_pending=True),
     Run(RunKind.RECONCILE, Trigger.STREAM_RECONNECT)),
    ("the annotation never waits", replace(O, reconcile_requested="t2"),
     seen(O, next_reconcile=NOW, last_event_at=NOW, last_handled="t1"),
     Run(RunKind.RECONCILE, Trigger.ANNOTATION, handles="t2")),
    ("quietSeconds 0: never waits", obs(reconciliation={"quietSeconds": 0}),
     seen(obs(reconciliation={"quietSeconds": 0}), next_reconcile=NOW, last_event_at=NOW),
     Run(RunKind.RECONCILE, Trigger.TIMER)),
    ("reconnect before timer", O, seen(O, next_reconcile=NOW, reconnect_pending=True),
     Run(RunKind.RECONCILE, Trigger.STREAM_RECONNECT)),
    ("annotation before timer", replace(O, reconcile_requested="t1"), seen(O, next_reconcile=NOW, last_handled="t0"),
     Run(RunKind.RECONCILE, Trigger.ANNOTATION, handles="t1")),
    ("annotation already handled", replace(O, reconcile_requested="t1"), seen(O, last_handled="t1"), Idle(NOW + 50)),
    ("new generation: accepted, retried now", replace(O, generation=2), seen(O, retry_at=NOW + 99),
     AcceptSpec(2, O.identity, rebuild=False, forget=False, retry_now=True)),
    ("symbols changed: rebuild, same account",
     obs(symbols=["BTC/USDT", "ETH/USDT"]), seen(O),
     AcceptSpec(1, obs(symbols=["BTC/USDT", "ETH/USDT"]).identity,
                rebuild=True, forget=False, retry_now=False)),
    ("secret changed: rebuild, forget the ledger",
     obs(credentialsSecretRef={"name": "other"}), seen(O),
     AcceptSpec(1, obs(credentialsSecretRef={"name": "other"}).identity,
                rebuild=True, forget=True, retry_now=False)),
    ("tolerance changed: reconfigure", obs(reconciliation={"balanceTolerance": 0.01}), seen(O), Configure()),
    ("check interval changed: reconfigure", obs(staleOrders={"checkIntervalSeconds": 5}), seen(O), Configure()),
    ("invalid spec: reject", obs(symbols=[]), seen(O),
     Reject(obs(symbols=[]).problem)),
    ("unknown exchange: reject", obs(exchange="nosuch"), State(),
     Reject(Problem("UnknownExchange", "ccxt has no exchange 'nosuch'"))),
    ("rejected already: nothing", obs(exchange="nosuch"),
     State(problem=Problem("UnknownExchange", "ccxt has no exchange 'nosuch'")), Idle()),
    # the emergency stop
    ("stop requested: open the breaker first", STOPPING, State(), OpenBreaker("runaway", "kubectl-annotate")),
    ("stop requested mid-run state: breaker before anything", STOPPING, seen(O, next_reconcile=NOW),
     OpenBreaker("runaway", "kubectl-annotate")),
    ("a new reason re-opens", replace(STOPPING, estop="other"), seen(STOPPING, stop=DONE),
     OpenBreaker("other", "kubectl-annotate")),
    ("breaker open, invalid spec: still rejected", obs(symbols=[], annotations={ESTOP: "runaway"}), seen(O, stop=OPEN),
     Reject(obs(symbols=[]).problem)),
    ("breaker open, no gateway: build it", STOPPING, State(identity=O.identity, seen_generation=1, stop=OPEN), Build()),
    ("breaker open, built: attempt", STOPPING, seen(O, stop=OPEN), Stop(emergency.Attempt())),
    ("completed stop holds without a gateway", STOPPING, State(identity=O.identity, seen_generation=1, stop=DONE),
     Stop(emergency.Hold())),
    ("completed stop holds", STOPPING, seen(O, stop=DONE), Stop(emergency.Hold())),
    ("incomplete: wait for the retry", STOPPING,
     seen(O, stop=replace(OPEN, state=StopState.INCOMPLETE, retry_at=NOW + 30)), Stop(emergency.Wait(NOW + 30))),
    ("completed here: settling run when due", STOPPING, seen(O, stop=replace(DONE, settle_at=NOW - 1)),
     Stop(emergency.SettleRun())),
    ("completed here: wait for the settling run", STOPPING, seen(O, stop=replace(DONE, settle_at=NOW + 6)),
     Stop(emergency.Wait(NOW + 6))),
    ("annotation removed: release", O, seen(O, stop=DONE), ReleaseBreaker()),
    ("released: initial sync again", O, seen(O, stop=replace(DONE, active=False), synced=False),
     Run(RunKind.INITIAL, Trigger.INITIAL)),
]


@pytest.mark.parametrize("name,observed,state,expected", CASES, ids=[c[0] for c in CASES])
def test_decide(name, observed, state, expected):
    assert decide(observed, state, NOW) == expected


def test_decide_is_pure():
    state = seen(O, next_reconcile=NOW)
    before = replace(state)
    assert decide(O, state, NOW) == decide(O, state, NOW)
    assert state == before


def test_observe_reads_the_resource():
    o = observe(body(annotations={ESTOP: "why", RECONCILE_AT: "t9"}, exchange="binanceusdm",
                     symbols=["BTC/USDT:USDT"], stream={"enabled": False}), known_exchanges=EXCHANGES, futures=True)
    assert (o.estop, o.estop_requested_by, o.reconcile_requested) == ("why", "kubectl-annotate", "t9")
    assert o.config.futures and not o.stream_enabled and o.problem is None
    bad = obs(symbols=["btc-usdt"])
    assert bad.problem.reason == "InvalidSpec" and bad.problem.message.startswith("spec.symbols")
    # the gateway's answer overrides the spec's guess
    assert observe(body(), known_exchanges=EXCHANGES, futures=True).config.futures


def test_waiting_actions_carry_their_wake_up():
    assert lifecycle.waits(Idle(5.0)) and lifecycle.wake_at(Idle(5.0)) == 5.0
    assert lifecycle.waits(Stop(emergency.Hold())) and lifecycle.wake_at(Stop(emergency.Hold())) is None
    assert lifecycle.wake_at(Stop(emergency.Wait(7.0))) == 7.0
    assert not lifecycle.waits(Stop(emergency.Attempt())) and not lifecycle.waits(Build())


# ---- the emergency stop's machine ------------------------------------------------------------------

def test_stop_opens_completes_and_releases():
    stop, events = emergency.open_breaker("runaway", "", "2026-01-01T00:00:00Z", ["BTC/USDT", "ETH/USDT"])
    assert stop.active and stop.state is StopState.CANCELLING and stop.requested_by == "unknown"
    assert [e.reason for e in events] == ["EmergencyStop"] and "2 symbols" in events[0].message
    assert stop.to_status()["state"] == "Cancelling" and "completedAt" not in stop.to_status()

    failing, events = emergency.attempt_failed(stop, "Temporary: 503", NOW)
    assert failing.state is StopState.INCOMPLETE and failing.retry_at == NOW + emergency.ESTOP_RETRY_S
    assert events[0].reason == "EmergencyStopIncomplete"
    assert emergency.decide(failing, NOW + 1, gateway_ready=True) == emergency.Wait(failing.retry_at)
    assert emergency.decide(failing, failing.retry_at, gateway_ready=True) == emergency.Attempt()

    order = SimpleNamespace(symbol="BTC/USDT", client_order_id="tw-1")
    partial, events = emergency.attempt_finished(failing, SimpleNamespace(cancelled=3, remaining=[order]), NOW,
                                                 now_text="t", grace_s=5, elapsed_s=1)
    assert (partial.orders_cancelled, partial.remaining, partial.state) == (3, 1, StopState.INCOMPLETE)
    assert "BTC/USDT tw-1" in events[0].message

    done, events = emergency.attempt_finished(partial, SimpleNamespace(cancelled=1, remaining=[]), NOW,
                                              now_text="t2", grace_s=5, elapsed_s=1)
    assert (done.orders_cancelled, done.remaining, done.state, done.completed_at) == (4, 0, StopState.COMPLETED, "t2")
    assert done.settle_at == NOW + 5 + emergency.SETTLE_EXTRA_S
    assert events[0].reason == "EmergencyStopCompleted"
    assert emergency.decide(done, NOW, gateway_ready=False) is None          # the settling run needs the gateway
    assert emergency.decide(emergency.settled(done), NOW, gateway_ready=False) == emergency.Hold()

    released, events = emergency.release(done)
    assert not released.active and released.state is StopState.COMPLETED and events[0].reason == "EmergencyStopReleased"
    assert released.to_status()["active"] is False and released.to_status()["ordersCancelled"] == 4


def test_stop_status_round_trip():
    assert EmergencyStop().to_status() == {"active": False}
    assert EmergencyStop.from_status({"active": False}) == EmergencyStop()
    done = EmergencyStop(active=True, reason="r", requested_by="me", requested_at="t0", completed_at="t1",
                         orders_cancelled=7, remaining=0, state=StopState.COMPLETED)
    assert EmergencyStop.from_status(done.to_status()) == done
    assert not emergency.pending(None, done) and not emergency.pending("r", done) and emergency.pending("s", done)
