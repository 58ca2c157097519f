"""The per-account supervisor driven step by step against the simulator with real ccxt; the
Kubernetes side is an in-memory recorder of status patches (what is written, and when)."""
from __future__ import annotations

import base64
import time

from tests.conftest import new_key
from tests.core.fakes import ConfigMaps
from tradewarden.controller import status as st
from tradewarden.controller.deps import Deps
from tradewarden.controller.supervisor import AccountSupervisor


class RecordingKube(ConfigMaps):
    def __init__(self, secrets: dict[str, dict]) -> None:
        super().__init__()
        self.secrets = secrets
        self.patches: list[dict] = []
        self.status: dict = {}

    async def get_secret(self, namespace: str, name: str):
        return self.secrets.get(name)

    async def patch_status(self, namespace: str, name: str, patch: dict, timeout: float = 30.0) -> bool:
        self.patches.append(patch)
        self.status = st.apply_merge_patch(self.status, patch)
        return True

    def close(self) -> None:
        pass


def _b64(v: str) -> str:
    return base64.b64encode(v.encode()).decode()


async def test_status_is_written_only_when_something_changed(sim):
    key, secret = new_key(), new_key()
    sim.add_account(key, secret, balances={"USDT": "5000", "BTC": "1"})
    sim.set_price("BTCUSDT", "50000")
    sim.place_order(key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="40000",
                    time_in_force="GTC", client_order_id="tw-1")
    kube = RecordingKube({"creds": {"data": {"apiKey": _b64(key), "secret": _b64(secret)}}})
    events: list[tuple[str, str, str]] = []
    body = {"metadata": {"namespace": "ns", "name": "a", "generation": 1, "annotations": {}},
            "spec": {"exchange": "binance", "endpoint": sim.url, "symbols": ["BTC/USDT"],
                     "credentialsSecretRef": {"name": "creds"}, "stream": {"enabled": False}}}
    sup = AccountSupervisor("ns", "a", body, Deps(kube=kube, post_event=lambda b, t, r, m: events.append((t, r, m)),
                                                  min_write_interval_s=0))
    try:
        await sup.settle()                     # accept the spec, build the gateway and the runner, initial sync
        assert sup.state.built and sup.state.synced
        await sup.flush()
        conds = {c["type"]: c for c in kube.status["conditions"]}
        assert conds["Ready"]["status"] == "True", conds["Ready"]
        assert kube.status["openOrders"]["count"] == 1
        writes = len(kube.patches)

        # A stale check that finds nothing and a flush with nothing new: no write.
        sup.state.next_stale = 0
        await sup.settle()
        await sup.flush()
        await sup.flush(force=True)
        assert len(kube.patches) == writes

        # A reconciliation run: one write, carrying the run (not the whole status again).
        sup.state.next_reconcile = 0
        await sup.settle()
        await sup.flush()
        assert len(kube.patches) == writes + 1
        assert set(kube.patches[-1]) <= {"lastReconciliation", "metrics", "conditions"}, kube.patches[-1]
        assert "balances" not in kube.patches[-1] and "openOrders" not in kube.patches[-1]

        # A balance changed out of band: found by the next run, reported by kind, one Event per kind.
        assert ("Normal", "OrdersAdopted") in [(t, r) for t, r, _ in events]    # the sync adopted tw-1
        assert kube.status["adoption"]["count"] == 1 and "OrphanOrderAdopted" not in [r for _, r, _ in events]
        del events[:]
        sim.adjust_balance(key, "USDT", "250")
        body["metadata"]["annotations"]["tradewarden.io/reconcile-requested-at"] = "now"
        await sup.settle()
        await sup.flush()
        assert kube.status["lastReconciliation"]["discrepancies"] == {"balance": 1}
        assert kube.status["lastHandledReconcileAt"] == "now"
        assert [r for _, r, _ in events] == ["BalanceMismatch", "Corrected"]
        assert "USDT" in events[0][2] and "exchange=free=4850" in events[0][2]
        assert secret not in repr(kube.patches) and secret not in repr(events)
    finally:
        sup.request_stop()
        await sup.close()


async def test_subscribed_before_the_initial_sync_nothing_between_snapshot_and_stream_is_missed(sim):
    """Issue 19 item 1: the stream is subscribed before the initial sync; events that arrive while it runs
    are buffered and applied after its snapshot (newest wins). An order placed and filled, and a fill of a
    pre-existing order, right after the snapshot are known from their events alone: no discrepancy later,
    no history read. (With the stream started after the sync, their events were never delivered.)"""
    import asyncio

    from tradewarden.gateway import create_gateway

    key, secret = new_key(), new_key()
    sim.add_account(key, secret, balances={"USDT": "50000", "BTC": "1"})
    sim.set_price("BTCUSDT", "50000")
    pre = sim.place_order(key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="40000",
                          time_in_force="GTC", client_order_id="tw-pre")
    during: dict = {}

    def factory(*args, **kwargs):
        gw = create_gateway(*args, **kwargs)
        real = gw.snapshot

        async def snapshot_then_trading(symbols):
            snap = await real(symbols)
            if not during:
                for _ in range(200):                       # the subscription is up before the sync runs
                    if sup._stream.state.value == "connected":
                        break
                    await asyncio.sleep(0.05)
                assert sup._stream.state.value == "connected", "the stream was not subscribed before the sync"
                during["new"] = o = sim.place_order(key, symbol="BTCUSDT", side="BUY", type="LIMIT",
                                                    quantity="0.01", price="41000", time_in_force="GTC",
                                                    client_order_id="tw-during")
                sim.fill(key, o.order_id)
                sim.fill(key, pre.order_id, "0.004")
                await asyncio.sleep(0.5)                   # their events arrive while the sync still runs
            return snap

        gw.snapshot = snapshot_then_trading
        return gw

    kube = RecordingKube({"creds": {"data": {"apiKey": _b64(key), "secret": _b64(secret)}}})
    events: list = []
    body = {"metadata": {"namespace": "ns", "name": "early", "generation": 1, "annotations": {}},
            "spec": {"exchange": "binance", "endpoint": sim.url, "symbols": ["BTC/USDT"],
                     "credentialsSecretRef": {"name": "creds"}}}
    sup = AccountSupervisor("ns", "early", body, Deps(kube=kube, post_event=lambda b, t, r, m: events.append(r),
                                                      min_write_interval_s=0, gateway_factory=factory))
    try:
        await sup.settle()
        assert sup.state.synced and sup.state.stream_running and during
        led = sup._runner.ledger
        assert led.order("tw-during").state.value == "filled"              # known from its buffered events
        assert str(led.order("tw-pre").filled) == "0.004"
        await asyncio.sleep(0.3)
        sup.state.next_reconcile = 0
        await sup.settle()
        await sup.flush(force=True)
        last = kube.status["lastReconciliation"]
        assert last["trigger"] == "timer" and last.get("discrepancies", {}) == {}, last
        history = [r["path"] for r in sim.requests() if r["key"] == key and r["path"] in
                   ("/api/v3/allOrders", "/api/v3/myTrades")]
        assert history == []
    finally:
        sup.request_stop()
        await sup.close()


async def _trading(sim, key, until_s: float, tag: str, every_s: float = 0.25) -> float:
    """A bot placing orders (each one a user-data event) until ``until_s`` (loop time); returns when it placed
    its last one."""
    import asyncio
    loop = asyncio.get_running_loop()
    i, last = 0, 0.0
    while loop.time() < until_s:
        sim.place_order(key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.001",
                        price=str(30000 + i), time_in_force="GTC", client_order_id=f"bot-{tag}-{i}")
        last = time.time()
        i += 1
        await asyncio.sleep(every_s)
    return last


async def test_a_timer_run_waits_for_a_quiet_moment_and_never_longer_than_the_maximum_delay(sim):
    """Issue 19 item 8 (the seed's "run reconciliation during low-activity periods"): under a steady stream
    of events a due timer run waits for the first quiet moment (quietSeconds without an event); under a
    stream that never pauses it runs at maxDelaySeconds; status says when and why."""
    import asyncio

    key, secret = new_key(), new_key()
    sim.add_account(key, secret, balances={"USDT": "1000000", "BTC": "1"})
    sim.set_price("BTCUSDT", "50000")
    kube = RecordingKube({"creds": {"data": {"apiKey": _b64(key), "secret": _b64(secret)}}})
    body = {"metadata": {"namespace": "ns", "name": "quiet", "generation": 1, "annotations": {}},
            "spec": {"exchange": "binance", "endpoint": sim.url, "symbols": ["BTC/USDT"],
                     "credentialsSecretRef": {"name": "creds"},
                     "reconciliation": {"intervalSeconds": 3600, "quietSeconds": 1, "maxDelaySeconds": 4}}}
    sup = AccountSupervisor("ns", "quiet", body, Deps(kube=kube, post_event=lambda *a: None, min_write_interval_s=0))
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(sup.run())

    async def timer_run_after(due_at: float):
        for _ in range(400):
            rep = sup._report
            if rep is not None and str(rep.trigger) == "timer" and rep.started_ms >= due_at * 1000:
                return rep
            await asyncio.sleep(0.05)
        raise AssertionError("no timer run")

    try:
        for _ in range(200):
            if sup.state.synced and sup._stream.state.value == "connected":
                break
            await asyncio.sleep(0.05)
        assert sup.state.synced
        # 1. a burst of 2.5 s, the run due 0.5 s into it: it waits for the first quiet second after the burst
        bot = asyncio.create_task(_trading(sim, key, loop.time() + 2.5, "burst"))
        await asyncio.sleep(0.5)
        due = time.time()
        sup.state.next_reconcile = sup._now()
        sup.wake()
        burst_end = await bot
        rep = await timer_run_after(due)
        assert rep.started_ms / 1000 >= burst_end + 0.95, (rep.started_ms / 1000 - burst_end)
        assert rep.started_ms / 1000 < burst_end + 3.0                  # ... the first quiet moment, not later
        await sup.flush(force=True)
        last = kube.status["lastReconciliation"]
        assert last["delayReason"] == "quiet" and last["delayedMs"] >= 2500, last
        # 2. a stream that never pauses: it runs at the maximum delay, while events still flow
        bot = asyncio.create_task(_trading(sim, key, loop.time() + 8, "steady"))
        await asyncio.sleep(0.3)
        due = time.time()
        sup.state.next_reconcile = sup._now()
        sup.wake()
        rep = await timer_run_after(due)
        assert 3.9 <= rep.started_ms / 1000 - due < 5.5, rep.started_ms / 1000 - due
        assert not bot.done()                                            # the bot was still trading
        await sup.flush(force=True)
        last = kube.status["lastReconciliation"]
        assert last["delayReason"] == "max-delay" and last["delayedMs"] >= 3900, last
        await bot
    finally:
        sup.request_stop()
        await asyncio.wait_for(task, 30)
