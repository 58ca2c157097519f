"""The restart checkpoint's pure parts (controller/checkpoint.py) and the ledger rules a bounded one relies on."""
from __future__ import annotations

import base64
import json
import zlib
from decimal import Decimal

import pytest

from tradewarden import models
from tradewarden.controller import checkpoint as ckpt
from tradewarden.core import AccountConfig, Ledger
from tradewarden.core.history import resolve_history
from tradewarden.core.reconcile import reconcile
from tradewarden.domain import Order, OrderState, Section, Side, Snapshot

pytestmark = pytest.mark.unit

T0 = 1_790_000_000_000


def _order(i: int, state: OrderState = OrderState.OPEN, created: int | None = None, coid: str | None = None) -> Order:
    at = T0 + i * 1000 if created is None else created
    return Order(coid or f"tw-{i}", str(1000 + i), "BTC/USDT", Side.BUY, "limit", Decimal("100.5"), Decimal("1"),
                 Decimal("1") if state is OrderState.FILLED else Decimal("0"), state, at, at)


def _ledger(active: int, finished: int = 0) -> Ledger:
    led = Ledger("tw-")
    for i in range(active):
        led.put_order(_order(i), "rest", T0 + i * 1000)
    for i in range(active, active + finished):
        led.put_order(_order(i, OrderState.FILLED), "rest", T0 + i * 1000)
    led.orders_ms = led.synced_ms = T0 + (active + finished) * 1000
    return led


@pytest.mark.parametrize("account, expected", [
    ("grid", "grid-ledger"),
    ("a" * 246, "a" * 246 + "-ledger"),                 # 253: fits as it is
])
def test_name_is_the_account_and_a_suffix(account, expected):
    assert ckpt.name_for(account) == expected


def test_a_name_too_long_keeps_a_hash_and_stays_valid():
    a, b = "a" * 250 + "x", "a" * 250 + "y"
    assert len(ckpt.name_for(a)) <= 253 and ckpt.name_for(a).endswith("-ledger")
    assert ckpt.name_for(a) != ckpt.name_for(b)


@pytest.mark.parametrize("now, last, changed, interval, expected", [
    (100.0, 0.0, True, 30.0, True),        # never written, changed
    (100.0, 80.0, True, 30.0, False),      # changed, but written 20 s ago
    (110.0, 80.0, True, 30.0, True),       # the interval has passed
    (500.0, 80.0, False, 30.0, False),     # nothing changed: never
])
def test_due(now, last, changed, interval, expected):
    assert ckpt.due(now, last, changed, interval) is expected


@pytest.mark.parametrize("env, expected", [
    ({}, ckpt.DEFAULT_INTERVAL_S), ({ckpt.INTERVAL_ENV: "5"}, 5.0), ({ckpt.INTERVAL_ENV: "0"}, ckpt.DEFAULT_INTERVAL_S),
    ({ckpt.INTERVAL_ENV: "-3"}, ckpt.DEFAULT_INTERVAL_S), ({ckpt.INTERVAL_ENV: "soon"}, ckpt.DEFAULT_INTERVAL_S),
])
def test_interval_from_env(env, expected):
    assert ckpt.interval_from_env(env) == expected


def test_encode_decode_roundtrips_a_whole_ledger():
    led = _ledger(2000, 300)
    enc = ckpt.encode(led.dump, len(led.orders))
    assert enc.orders == 2300 and enc.left_out == 0 and len(enc.payload) < enc.raw_bytes / 3
    back = Ledger.load(ckpt.decode(enc.payload))
    assert back.dump(max_orders=None) == led.dump(max_orders=None)
    assert back.known_until_ms == 0 and back.truncated == 0


@pytest.mark.parametrize("active, finished, max_bytes", [
    (3000, 0, 20_000), (2000, 2000, 30_000), (500, 5000, 15_000),
])
def test_a_book_over_the_bound_keeps_what_matters_and_notes_where_history_starts(active, finished, max_bytes):
    led = _ledger(active, finished)
    enc = ckpt.encode(led.dump, len(led.orders), max_bytes=max_bytes)
    assert len(enc.payload) <= max_bytes and enc.left_out > 0 and enc.orders + enc.left_out == active + finished
    back = Ledger.load(ckpt.decode(enc.payload))
    kept = {o.client_order_id for o in (e.order for e in back.orders.values())}
    kept_active = [e.order for e in back.orders.values() if e.order.state.active]
    if enc.orders >= active:                                  # every active order fits: finished ones left out
        assert len(kept_active) == active and back.gap_since_ms == 0
    else:                                                     # active ones left out: the oldest ones
        newest_active = {f"tw-{i}" for i in range(active - enc.orders, active)}
        assert kept == newest_active
        assert back.gap_since_ms == T0 + 0                    # the oldest left out's creation
    assert back.known_until_ms == led.orders_ms and back.truncated == enc.left_out


def test_decode_refuses_what_is_not_a_checkpoint():
    for bad in (b"not zlib", zlib.compress(b"{not json"), zlib.compress(b"[1, 2]")):
        with pytest.raises(ckpt.CheckpointError):
            ckpt.decode(bad)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.payload_of({"binaryData": {ckpt.DATA_KEY: "***"}})
    assert ckpt.payload_of(None) is None and ckpt.payload_of({"data": {}}) is None


def test_the_configmap_is_owned_by_the_account_and_says_nothing_secret():
    led = _ledger(10)
    enc = ckpt.encode(led.dump, len(led.orders))
    body = ckpt.body("trading", "grid", "uid-1", enc, "2026-01-01T00:00:00Z")
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": models.API_VERSION, "kind": models.KIND,
                                                    "name": "grid", "uid": "uid-1", "controller": True}]
    assert ckpt.owned_by(body, "uid-1") and not ckpt.owned_by(body, "uid-2")
    assert ckpt.payload_of(json.loads(json.dumps(body))) == enc.payload
    assert base64.b64decode(body["binaryData"][ckpt.DATA_KEY]) == enc.payload
    assert body["metadata"]["annotations"][ckpt.ORDERS_ANNOTATION] == "10"
    summary = ckpt.summary("grid-ledger", enc, "2026-01-01T00:00:00Z")
    models.CheckpointStatus.model_validate(summary)
    assert summary["orders"] == 10 and summary["leftOut"] == 0 and summary["bytes"] == len(enc.payload)


def _restored_partly() -> tuple[Ledger, AccountConfig]:
    """A ledger restored from a checkpoint that left its oldest active orders (tw-0..tw-4) and every finished
    one out."""
    led = _ledger(10, 5)
    back = Ledger.load(led.dump(max_orders=5))
    cfg = AccountConfig(symbols=("BTC/USDT",), missing_grace_s=5)
    return back, cfg


def test_history_after_a_bounded_restore_reports_only_what_changed_after_it():
    led, cfg = _restored_partly()
    known = led.known_until_ms
    before = _order(11, OrderState.FILLED, created=T0 + 1500)    # finished before the restore point: left out
    left_out_filled = Order("tw-2", "1002", "BTC/USDT", Side.BUY, "limit", Decimal("100.5"), Decimal("1"),
                            Decimal("1"), OrderState.FILLED, T0 + 2000, known + 60_000)      # filled while down
    born = Order("tw-new", "5000", "BTC/USDT", Side.BUY, "limit", Decimal("1"), Decimal("1"), Decimal("1"),
                 OrderState.FILLED, known + 10_000, known + 20_000)                       # born and filled while down
    plan = resolve_history(led, "BTC/USDT", [before, left_out_filled, born], [], cfg, horizon_ms=known + 100_000)
    reported = sorted(d.entity for d in plan.discrepancies)
    assert reported == ["tw-2", "tw-new"]
    recorded = {c.key.order_id for c in plan.corrections if c.op == "order"}
    assert recorded == {"1011", "1002", "5000"}                 # all three recorded, the first silently


def test_history_without_a_bounded_restore_reports_every_unknown_finished_order():
    led = _ledger(3)
    cfg = AccountConfig(symbols=("BTC/USDT",), missing_grace_s=5)
    plan = resolve_history(led, "BTC/USDT", [_order(11, OrderState.FILLED)], [], cfg, horizon_ms=T0 + 10**9)
    assert [d.entity for d in plan.discrepancies] == ["tw-11"]


def test_listing_after_a_bounded_restore_adopts_the_left_out_and_reports_the_new():
    led, cfg = _restored_partly()
    known = led.known_until_ms
    listed = [_order(i) for i in range(10)] + [
        Order("manual-new", "6000", "BTC/USDT", Side.SELL, "limit", Decimal("1"), Decimal("1"), Decimal("0"),
              OrderState.OPEN, known + 30_000, known + 30_000)]
    snap = Snapshot(taken_ms=known + 120_000, balances=Section({}), open_orders=Section(listed),
                    positions=Section([]))
    plan = reconcile(led, snap, cfg, known + 120_000)
    assert sorted(o.client_order_id for o in plan.adopted) == [f"tw-{i}" for i in range(5)]
    assert [(d.kind, d.entity) for d in plan.discrepancies] == [("orphan", "manual-new")]
