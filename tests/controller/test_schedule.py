"""Timer runs sit on a per-account grid, spread over the interval by a stable hash."""
from __future__ import annotations

import pytest

from tradewarden.controller.schedule import next_slot
from tradewarden.gateway import jittered_offset


def test_next_slot_is_on_the_grid_and_respects_the_gap():
    assert next_slot(1000.0, 300, 10) == 1210.0
    assert next_slot(1210.0, 300, 10) == 1210.0                 # exactly on a slot
    assert next_slot(1000.0, 300, 10, min_gap_s=150) == 1210.0  # 1150 -> the 1210 slot
    assert next_slot(1100.0, 300, 10, min_gap_s=150) == 1510.0  # 1250 -> the next slot
    for now in (0.0, 123.4, 99999.9):
        t = next_slot(now, 60, 7, min_gap_s=30)
        assert t >= now + 30 and (t - 7) % 60 == pytest.approx(0)


def test_accounts_created_together_spread_over_the_interval():
    """100 accounts whose timers are set at the same instant land in every tenth of the interval,
    never more than a quarter of them in one tenth (a random-free spread)."""
    interval, now = 300.0, 1_700_000_000.0
    slots = [next_slot(now, interval, jittered_offset(f"ns/acct-{i}", interval), interval / 2) for i in range(100)]
    assert all(now + interval / 2 <= t < now + interval * 1.5 for t in slots)
    buckets = [0] * 10
    for t in slots:
        buckets[int(((t - now - interval / 2) / interval) * 10)] += 1
    assert min(buckets) >= 1 and max(buckets) <= 25, buckets
    # stable: the same account gets the same phase in another process
    assert jittered_offset("ns/acct-1", interval) == jittered_offset("ns/acct-1", interval)


def test_budget_metrics_are_labelled_with_the_exchange_that_spends_them():
    from tradewarden.controller.deps import BudgetPublisher
    from tradewarden.gateway import RateBudgets

    class Tele:
        def __init__(self):
            self.weights, self.limits, self.waits = {}, {}, []

        def exchange_weight_used(self, exchange, host, weight, limit=None):
            self.weights[(exchange, host)] = weight
            self.limits[(exchange, host)] = limit

        def rate_limit_wait(self, exchange, seconds):
            self.waits.append((exchange, seconds))

    budgets = RateBudgets()
    budgets.for_url("http://127.0.0.1:9/api/v3/account").counters.last_server_used = 20
    budgets.for_url("http://127.0.0.1:9/fapi/v2/account").counters.last_server_used = 5
    tele = Tele()
    publisher = BudgetPublisher()
    publisher.publish(tele, budgets, "binance", "api")
    publisher.publish(tele, budgets, "binanceusdm", "fapi")
    assert tele.weights == {("binance", "127.0.0.1:9/api"): 20.0, ("binanceusdm", "127.0.0.1:9/fapi"): 5.0}
    assert all(limit and limit > 0 for limit in tele.limits.values()), tele.limits     # the budget's window limit


@pytest.mark.parametrize("recent, deferred, newest_active_ms, want", [
    (0, 0, 0, False),                    # nothing open, nothing left: straight to the account's slot
    (0, 0, 94_000, False),               # an open order last changed 6 s before the sync (grace 5 s)
    (0, 0, 96_000, True),                # ... 4 s before: its events may still be on their way
    (1, 0, 0, True),                     # a change too recent to judge was left for the next run
    (0, 2, 0, True),                     # queries over the per-run bound were left for the next run
])
def test_settle_run_only_when_the_initial_sync_left_something(recent, deferred, newest_active_ms, want):
    from tradewarden.controller.schedule import settle_needed
    assert settle_needed(recent, deferred, newest_active_ms, synced_ms=100_000, grace_ms=5_000) is want


def test_first_runs_settle_early_or_go_to_the_accounts_slot():
    import random
    from tradewarden.controller.schedule import SETTLE_RUN_S, first_runs, timer_slot
    now, rng = 1_700_000_000.0, random.Random(1)
    early, stale = first_runs(now, 600, 300, rng, settle=True, account="ns/a")
    assert now + SETTLE_RUN_S * 0.8 <= early <= now + SETTLE_RUN_S * 1.2 and now + 270 <= stale <= now + 330
    slot, _ = first_runs(now, 600, 300, rng, settle=False, account="ns/a")
    assert slot == timer_slot("ns/a", now, 600) and slot >= now + 300
