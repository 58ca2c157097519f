"""The emergency stop's pure state machine (core/estop.py), table-tested: no deadline turns into
success, Completed only on a successful whole-account listing that returned none, retries with capped
backoff and Retry-After, the breaker that keeps cancelling and reports each order."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tradewarden.core import estop as es
from tradewarden.domain import Order, OrderState, Position, Side

CFG = es.StopConfig(sweep_interval_ms=10_000, backoff_first_ms=1_000, backoff_cap_ms=15_000, max_rounds=3)
FLAT = es.StopConfig(flatten=True)


def order(cid: str, symbol: str = "BTC/USDT", *, algo: bool = False, state: OrderState = OrderState.OPEN) -> Order:
    return Order(cid, "1" + cid[-1:], symbol, Side.BUY, "limit", Decimal("100"), Decimal("1"), Decimal(0),
                 state, 0, 0, algo=algo)


def reasons(t: es.Transition) -> list[str]:
    return [e.reason.value for e in t.events]


def drive(state, steps, cfg=CFG):
    """Feed (now_ms, observation) pairs; return every transition."""
    out = []
    for now, obs in steps:
        t = es.step(state, obs, now, cfg)
        out.append(t)
        state = t.state
    return out


def opened(now=0, cfg=CFG):
    return es.open_stop("runaway", "kubectl", now, cfg)


# ---- opening ----------------------------------------------------------------------------------

def test_open_lists_the_whole_account_first_and_says_so():
    t = opened()
    assert t.state.phase is es.StopPhase.CANCELLING and t.state.remaining is None
    assert t.actions == (es.ListAccount(positions=False),)
    assert reasons(t) == ["EmergencyStop"] and "whole account" in t.events[0].message
    assert t.events[0].type is es.EventType.WARNING


def test_open_with_scale_down_and_flatten():
    t = es.open_stop("r", "me", 0, es.StopConfig(scale_down=True, flatten=True))
    assert t.actions == (es.ScaleDown(), es.ListAccount(positions=True))
    assert "every position" in t.events[0].message


# ---- the truth table ----------------------------------------------------------------------------

@pytest.mark.parametrize("observations, phase, completed", [
    # listing fails: never completed, whatever the time
    ([es.ListFailed("Temporary: 503")], es.StopPhase.INCOMPLETE, False),
    # listing shows orders: cancelling them, not completed
    ([es.Listed((order("a"),))], es.StopPhase.CANCELLING, False),
    # cancels fail: not completed
    ([es.Listed((order("a"),)), es.Cancelled((), {"BTC/USDT": "Temporary: 503"})], es.StopPhase.INCOMPLETE, False),
    # cancels succeed but the verifying listing fails: not completed (the seed's bug: "verified" with nothing verified)
    ([es.Listed((order("a"),)), es.Cancelled((order("a"),)), es.ListFailed("Temporary: 503")],
     es.StopPhase.INCOMPLETE, False),
    # cancels succeed and the verifying listing returns none: completed
    ([es.Listed((order("a"),)), es.Cancelled((order("a"),)), es.Listed(())], es.StopPhase.COMPLETED, True),
    # an empty account: completed at once
    ([es.Listed(())], es.StopPhase.COMPLETED, True),
])
def test_completed_only_after_a_listing_returned_none(observations, phase, completed):
    state = opened().state
    for i, obs in enumerate(observations):
        state = es.step(state, obs, 1000 * (i + 1), CFG).state
    assert state.phase is phase
    assert (state.completed_at_ms is not None) is completed
    assert state.verified is completed


def test_a_failing_venue_never_completes_however_long_and_completes_after_recovery_with_the_true_count():
    state = es.step(opened().state, es.Listed((order("a"), order("b", "ETH/USDT"))), 0, CFG).state
    state = es.step(state, es.Cancelled((), {"BTC/USDT": "Temporary: 503", "ETH/USDT": "Temporary: 503"}), 0, CFG).state
    now = 0
    waits = []
    for _ in range(200):                        # hours of failures: listings and cancels fail alternately
        now = state.next_sweep_ms
        t = es.step(state, es.Tick(), now, CFG)
        assert t.actions == (es.ListAccount(False),)
        t = es.step(t.state, es.ListFailed("Temporary: 503", retry_after_ms=0), now, CFG)
        state = t.state
        waits.append(state.next_sweep_ms - now)
        assert state.phase is es.StopPhase.INCOMPLETE and state.completed_at_ms is None
        assert all("verified" not in e.message or "NOT verified" in e.message for e in t.events)
    assert max(waits) == CFG.backoff_cap_ms and waits[0] < waits[3]     # capped exponential backoff
    assert state.remaining == 2                   # the last successful listing, kept
    # the venue recovers
    now = state.next_sweep_ms
    t = es.step(state, es.Tick(), now, CFG)
    t = es.step(t.state, es.Listed((order("a"), order("b", "ETH/USDT"))), now, CFG)
    assert t.actions == (es.CancelSymbols(("BTC/USDT", "ETH/USDT"), (), (order("a"), order("b", "ETH/USDT"))),)
    t = es.step(t.state, es.Cancelled((order("a"), order("b", "ETH/USDT"))), now, CFG)
    t = es.step(t.state, es.Listed(()), now + 5, CFG)
    assert t.state.phase is es.StopPhase.COMPLETED and t.state.cancelled == 2 and t.state.remaining == 0
    assert t.state.errors == () and t.state.failures == 0
    assert reasons(t) == ["EmergencyStopCompleted"] and "2 orders cancelled" in t.events[0].message


def test_retry_after_is_never_undercut():
    state = opened().state
    t = es.step(state, es.ListFailed("RateLimited", retry_after_ms=60_000), 5_000, CFG)
    assert t.state.next_sweep_ms == 65_000
    assert es.step(t.state, es.Tick(), 64_999, CFG).actions == ()
    assert es.step(t.state, es.Tick(), 65_000, CFG).actions == (es.ListAccount(False),)


def test_errors_are_kept_per_symbol_and_events_do_not_repeat_every_retry():
    state = es.step(opened().state, es.Listed((order("a"), order("b", "ETH/USDT"))), 0, CFG).state
    t = es.step(state, es.Cancelled((order("b", "ETH/USDT"),), {"BTC/USDT": "Temporary: 502"}), 0, CFG)
    assert t.state.errors == (("BTC/USDT", "Temporary: 502"),) and t.state.cancelled == 1
    assert reasons(t) == ["EmergencyStopIncomplete"] and "BTC/USDT: Temporary: 502" in t.events[0].message
    assert "NOT verified" in t.events[0].message
    # the same failure again: no new Event
    t2 = es.step(es.step(t.state, es.Tick(), t.state.next_sweep_ms, CFG).state,
                 es.Listed((order("a"),)), t.state.next_sweep_ms, CFG)
    t3 = es.step(t2.state, es.Cancelled((), {"BTC/USDT": "Temporary: 502"}), t.state.next_sweep_ms, CFG)
    assert t3.events == () and t3.state.failures == 2


def test_orders_that_keep_coming_back_stop_the_round_with_backoff():
    state = opened().state
    now = 0
    for _ in range(CFG.max_rounds):
        t = es.step(state, es.Listed((order("a"),)), now, CFG)
        assert isinstance(t.actions[0], es.CancelSymbols)
        t = es.step(t.state, es.Cancelled((order("a"),)), now, CFG)
        assert t.actions == (es.ListAccount(False),)
        state = t.state
    t = es.step(state, es.Listed((order("a"),)), now, CFG)
    assert t.actions == () and t.state.phase is es.StopPhase.INCOMPLETE and t.state.next_sweep_ms > now
    assert t.state.errors[0][0] == "remaining"


def test_usdm_algo_orders_are_cancelled_by_symbol_in_the_algo_service():
    t = es.step(opened().state, es.Listed((order("a", "BTC/USDT:USDT"), order("s", "ETH/USDT:USDT", algo=True))),
                0, CFG)
    assert t.actions[0].symbols == ("BTC/USDT:USDT",) and t.actions[0].algo_symbols == ("ETH/USDT:USDT",)


# ---- the breaker --------------------------------------------------------------------------------

def completed(cfg=CFG):
    t = es.step(opened(cfg=cfg).state, es.Listed(()), 1000, cfg)
    assert t.state.phase is es.StopPhase.COMPLETED
    return t.state


def test_the_breaker_sweeps_every_interval_and_cancels_what_it_finds():
    state = completed()
    assert es.next_wake_ms(state) == 11_000
    assert es.step(state, es.Tick(), 10_999, CFG).actions == ()
    t = es.step(state, es.Tick(), 11_000, CFG)
    assert t.actions == (es.ListAccount(False),) and es.next_wake_ms(t.state) is None   # in flight
    assert es.step(t.state, es.Tick(), 50_000, CFG).actions == ()                       # never two at once
    t = es.step(t.state, es.Listed((order("bot-1", "DOGE/USDT"),)), 11_100, CFG)
    assert t.state.phase is es.StopPhase.CANCELLING and reasons(t) == ["EmergencyStopBreakerFound"]
    t = es.step(t.state, es.Cancelled((order("bot-1", "DOGE/USDT"),)), 11_200, CFG)
    assert reasons(t) == ["EmergencyStopBreakerCancelled"] and "bot-1" in t.events[0].message
    assert "DOGE/USDT" in t.events[0].message
    t = es.step(t.state, es.Listed(()), 11_300, CFG)
    s = t.state
    assert s.phase is es.StopPhase.COMPLETED and s.breaker_cancelled == 1 and s.cancelled == 1
    assert s.completed_at_ms == 1000 and s.verified_at_ms == 11_300     # first completion kept
    assert reasons(t) == ["EmergencyStopCompleted"]


def test_the_stream_cancels_at_once_and_each_cancel_is_reported():
    state = completed()
    o = order("x-123", "ETH/USDT")
    t = es.step(state, es.StreamOrder(o), 2000, CFG)
    assert t.actions == (es.CancelOrder(o),) and t.state == state
    assert es.step(state, es.StreamOrder(order("f", state=OrderState.CANCELED)), 2000, CFG).actions == ()
    t = es.step(state, es.OrderCancelled(o, cancelled=True), 2001, CFG)
    assert t.state.breaker_cancelled == 1 and t.state.cancelled == 1
    assert reasons(t) == ["EmergencyStopBreakerCancelled"] and "x-123" in t.events[0].message
    # gone already (a sweep got it, or it filled): not counted twice, nothing to say
    assert es.step(state, es.OrderCancelled(o, gone=True), 2001, CFG) == es.Transition(state)
    # failed: the next sweep comes now
    t = es.step(state, es.OrderCancelled(o, error="Temporary: 503"), 2001, CFG)
    assert t.state.next_sweep_ms == 2001 and reasons(t) == ["EmergencyStopBreakerCancelFailed"]


def test_a_stream_gap_brings_the_next_sweep_forward():
    state = completed()
    t = es.step(state, es.StreamGap(), 5_000, CFG)
    assert t.state.next_sweep_ms == 5_000 and es.step(t.state, es.Tick(), 5_000, CFG).actions == (es.ListAccount(False),)
    assert es.step(state, es.StreamGap(), 20_000, CFG).state.next_sweep_ms == state.next_sweep_ms   # already due


def test_a_failed_sweep_after_completion_keeps_completed_and_reports_it():
    state = completed()
    t = es.step(es.step(state, es.Tick(), 11_000, CFG).state, es.ListFailed("Temporary: 503"), 11_000, CFG)
    assert t.state.phase is es.StopPhase.COMPLETED and t.state.errors == (("listing", "Temporary: 503"),)
    assert reasons(t) == ["EmergencyStopIncomplete"]


def test_orders_found_after_completion_count_as_breaker_cancels_even_after_a_failed_round():
    state = completed()
    t = es.step(es.step(state, es.Tick(), 11_000, CFG).state, es.Listed((order("late"),)), 11_000, CFG)
    t = es.step(t.state, es.Cancelled((), {"BTC/USDT": "Temporary: 503"}), 11_000, CFG)
    assert t.state.phase is es.StopPhase.INCOMPLETE
    now = t.state.next_sweep_ms
    t = es.step(es.step(t.state, es.Tick(), now, CFG).state, es.Listed((order("late"),)), now, CFG)
    t = es.step(t.state, es.Cancelled((order("late"),)), now, CFG)
    assert t.state.breaker_cancelled == 1 and reasons(t) == ["EmergencyStopBreakerCancelled"]


def test_many_breaker_cancels_are_named_in_bounded_events():
    state = completed()
    orders = tuple(order(f"b{i}", f"S{i}/USDT") for i in range(100))
    t = es.step(es.step(state, es.Tick(), 11_000, CFG).state, es.Listed(orders), 11_000, CFG)
    t = es.step(t.state, es.Cancelled(orders), 11_000, CFG)
    assert len(t.events) == es.MAX_BREAKER_EVENTS and t.state.breaker_cancelled == 100


# ---- positions ----------------------------------------------------------------------------------

def test_flatten_closes_positions_after_the_orders_and_verifies_them():
    pos = (Position("BTC/USDT:USDT", Decimal("0.5")), Position("ETH/USDT:USDT", Decimal(0)))
    t = es.step(opened(cfg=FLAT).state, es.Listed((), pos), 0, FLAT)
    assert t.actions == (es.ClosePositions((pos[0],)),) and t.state.phase is es.StopPhase.CANCELLING
    assert t.state.open_positions == 1
    t = es.step(t.state, es.Flattened((pos[0],)), 1, FLAT)
    assert t.actions == (es.ListAccount(positions=True),) and reasons(t) == ["EmergencyStopPositionsClosed"]
    t = es.step(t.state, es.Listed((), (Position("BTC/USDT:USDT", Decimal(0)),)), 2, FLAT)
    assert t.state.phase is es.StopPhase.COMPLETED and t.state.open_positions == 0
    assert "every position is 0" in t.events[0].message


def test_keep_ignores_positions():
    t = es.step(opened().state, es.Listed((), (Position("BTC/USDT:USDT", Decimal("1")),)), 0, CFG)
    assert t.state.phase is es.StopPhase.COMPLETED and t.state.open_positions is None


def test_flatten_failure_is_retried_not_completed():
    pos = (Position("BTC/USDT:USDT", Decimal("-2")),)
    t = es.step(opened(cfg=FLAT).state, es.Listed((), pos), 0, FLAT)
    t = es.step(t.state, es.Flattened((), {"BTC/USDT:USDT": "Invalid: -2022"}), 1, FLAT)
    assert t.state.phase is es.StopPhase.INCOMPLETE and t.state.next_sweep_ms > 1


# ---- restart and release ------------------------------------------------------------------------

def ms_text(ms):
    return str(ms)


def test_state_survives_a_restart_through_status_and_resumes_with_a_sweep():
    state = completed()
    state = es.step(state, es.OrderCancelled(order("z"), cancelled=True), 2000, CFG).state
    status = es.to_status(state, ms_text)
    assert status["state"] == "Completed" and status["remaining"] == 0 and status["breakerCancelled"] == 1
    back = es.from_status(status, int)
    assert back.phase is es.StopPhase.COMPLETED and back.cancelled == 1 and back.breaker_cancelled == 1
    assert back.completed_at_ms == 1000
    t = es.resume(back, 99_000, es.StopConfig(scale_down=True))
    assert t.actions == (es.ScaleDown(), es.ListAccount(False)) and t.state.in_flight


def test_status_never_shows_a_count_that_was_not_counted():
    t = es.step(opened().state, es.ListFailed("Temporary: 503"), 0, CFG)
    status = es.to_status(t.state, ms_text)
    assert "remaining" not in status and "completedAt" not in status and "verifiedAt" not in status
    assert status["state"] == "Incomplete" and status["errors"] == [{"symbol": "listing", "message": "Temporary: 503"}]
    assert es.from_status({"active": False}, int) is None


def test_release_restores_workloads_and_says_what_was_done():
    t = es.release(completed())
    assert t.actions == (es.RestoreWorkloads(),) and reasons(t) == ["EmergencyStopReleased"]
    assert t.events[0].type is es.EventType.NORMAL


def test_backoff_is_capped():
    assert [es.backoff_ms(n, CFG) for n in range(7)] == [0, 1000, 2000, 4000, 8000, 15000, 15000]
