"""Ledger persistence, bounds and configuration."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tradewarden.core import AccountConfig, Ledger, LedgerFormatError
from tradewarden.service import AccountRunner
from tradewarden.domain import Balance, OrderState, Policy
from tradewarden.models import TradingAccountSpec

from .fakes import Clock, FakeExchange, order


def test_dump_is_compact_json_and_roundtrips():
    led = Ledger("tw-")
    led.put_order(order("tw-1", price="0.00000123", filled="0.5", state=OrderState.PARTIALLY_FILLED,
                        created_ms=5), "stream", 7, misses=2, recheck=True)
    led.put_balance(Balance("BTC", Decimal("1.000000001"), Decimal("0")), "BTC", "rest", 9)
    data = json.loads(json.dumps(led.dump()))
    back = Ledger.load(data)
    assert back.entry("tw-1") == led.entry("tw-1") and back.balance("BTC") == led.balance("BTC")
    assert back.dump() == led.dump()
    assert Ledger.load(data, owned_prefix="bot-").owned_prefix == "bot-"


@pytest.mark.parametrize("bad, message", [
    ([], "expected a mapping"),
    ({"v": 99}, "unsupported format version"),
    ({"v": 1, "o": [["tw-1"]]}, "bad order #0"),
    ({"v": 1, "o": [["a", "1", "BTC/USDT", "x", "limit", "1", "1", "0", "open", 0, 0, "rest", 0, 0, 0, 0]]},
     "unknown side"),
    ({"v": 1, "b": {"BTC": ["NaN", "0", 0, "rest", 0]}}, "bad balance 'BTC'"),
    ({"v": 1, "b": {"BTC": [1.5, "0", 0, "rest", 0]}}, "decimal string"),
])
def test_bad_dump_is_a_clear_error(bad, message):
    with pytest.raises(LedgerFormatError, match=message):
        Ledger.load(bad)


def test_dump_is_bounded_and_keeps_what_matters_on_restart():
    led = Ledger("tw-")
    for i in range(50):
        led.put_order(order(f"tw-done-{i}", state=OrderState.FILLED, filled="1", created_ms=i), "rest", i)
    led.put_order(order("m-open", created_ms=1), "rest", 1)
    led.put_order(order("tw-open", created_ms=1), "rest", 1)
    led.put_order(order("tw-chased", created_ms=1), "rest", 1, misses=1)
    data = led.dump(max_orders=4)
    assert data["truncated"] == 49
    assert [row[0] for row in data["o"]] == ["tw-chased", "tw-open", "m-open", "tw-done-49"]


async def test_restore_from_truncated_dump_adopts_unknown_orders_silently_once():
    clock = Clock()
    ex = FakeExchange(clock)
    ex.put(order("tw-a", created_ms=clock.ms() - 10_000_000), order("tw-b", created_ms=clock.ms() - 10_000_000))
    led = Ledger("tw-")
    led.put_order(ex.orders["tw-a"], "rest", clock.ms())
    led.put_order(ex.orders["tw-b"], "rest", clock.ms())
    led.synced_ms = clock.ms()
    restored = Ledger.load(led.dump(max_orders=1))
    assert restored.truncated == 1 and len(restored.orders) == 1
    runner = AccountRunner(ex, AccountConfig(symbols=["BTC/USDT"]), ledger=restored, clock=clock)
    report = await runner.initial_sync()
    assert report.discrepancies == [] and {e.order.client_order_id for e in runner.ledger.orders.values()} == {"tw-a", "tw-b"}
    assert runner.ledger.truncated == 0
    ex.put(order("tw-c", created_ms=clock.ms() - 10_000_000))
    assert [d.kind for d in (await runner.reconcile()).discrepancies] == ["orphan"]


def test_config_from_spec_and_validation():
    spec = TradingAccountSpec.model_validate({
        "exchange": "binanceusdm", "credentialsSecretRef": {"name": "creds"}, "symbols": ["BTC/USDT:USDT"],
        "policy": "ObserveOnly", "reconciliation": {"balanceTolerance": 0.001, "dustThreshold": 1e-6,
                                                     "missingOrderRetries": 5, "intervalSeconds": 60},
        "staleOrders": {"timeoutSeconds": 120, "ownedClientOrderIdPrefix": "bot1-"},
        "retention": {"finishedOrdersSeconds": 600}})
    cfg = AccountConfig.from_spec(spec, futures=True)     # the gateway's answer
    assert cfg.futures and cfg.observe_only and cfg.policy is Policy.OBSERVE_ONLY
    assert cfg.balance_tolerance == Decimal("0.001") and cfg.dust == Decimal("0.000001")
    assert (cfg.missing_retries, cfg.interval_s, cfg.stale_timeout_s, cfg.owned_prefix, cfg.retention_s) == \
        (5, 60, 120, "bot1-", 600)
    assert cfg.symbols == ("BTC/USDT:USDT",)
    with pytest.raises(ValueError, match="at least one symbol"):
        AccountConfig(symbols=[])
    with pytest.raises(ValueError, match="missing_retries"):
        AccountConfig(symbols=["BTC/USDT"], missing_retries=0)
    with pytest.raises(ValueError):
        AccountConfig(symbols=["BTC/USDT"], policy="Sometimes")


def test_hedge_legs_and_algo_links_survive_a_dump():
    """Positions by (symbol, side); an algo parent's child id, a child's parent id and the protective flag."""
    from tradewarden.domain import Order, Position, PositionSide, Side
    led = Ledger()
    sym = "BTC/USDT:USDT"
    led.put_position(Position(sym, Decimal("2"), Decimal("50000"), 5, PositionSide.LONG), f"{sym} LONG", "rest", 6)
    led.put_position(Position(sym, Decimal("-1"), Decimal("51000"), 5, PositionSide.SHORT), f"{sym} SHORT", "rest", 6)
    led.put_position(Position("ETH/USDT:USDT", Decimal("3")), "ETH/USDT:USDT", "rest", 6)
    parent = Order("tw-sl", "9", sym, Side.SELL, "stop", Decimal(0), Decimal(1), Decimal(0), OrderState.TRIGGERED,
                   1, 2, algo=True, child_id="55", protective=True, position_side=PositionSide.LONG)
    child = Order("x-1", "55", sym, Side.SELL, "limit", Decimal(48500), Decimal(1), Decimal(0), OrderState.OPEN,
                  2, 2, parent_id="9", protective=True, position_side=PositionSide.LONG)
    led.upsert_order(parent, "stream", 3)
    led.upsert_order(child, "stream", 3)
    back = Ledger.load(json.loads(json.dumps(led.dump())))
    assert back.position(sym, "LONG").amount == 2 and back.position(sym, PositionSide.SHORT).amount == -1
    assert back.position(sym) is None and back.position("ETH/USDT:USDT").amount == 3
    assert back.order("tw-sl") == parent and back.order("x-1") == child
    assert back.owns(child) and back.algo_parent_of(child) == parent
