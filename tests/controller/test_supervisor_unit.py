"""The supervisor (the executor of the lifecycle) driven step by step with everything it talks to faked
in memory: the exchange (tests/core/fakes.py), the API server (a recorder of status patches), the
clock. What it shows: each decision is carried out, status says what happened, in the right order."""
from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from tests.core.fakes import Clock, ConfigMaps, FakeExchange, order
from tradewarden.controller import status as st
from tradewarden.controller.deps import Deps
from tradewarden.controller.emergency import StopState
from tradewarden.controller.supervisor import AccountSupervisor
from tradewarden.domain import ConnectionEvent, ConnectionState, OrderState

pytestmark = pytest.mark.unit

ESTOP = "tradewarden.io/emergency-stop"


class Gateway(FakeExchange):
    """The in-memory exchange as the whole domain.Gateway: started, spot, a stream that connects."""

    futures = False
    rest_family = "api"

    def __init__(self, clock: Clock, log: list) -> None:
        super().__init__(clock)
        self.log = log
        self.started = 0

    async def start(self, symbols=()) -> None:
        self.started += 1

    async def list_account(self, positions=False):
        self.log.append("list_account")
        return await super().list_account(positions)

    def stream(self, symbols):
        async def events():
            yield ConnectionEvent(ConnectionState.CONNECTED, "", self.clock.ms())
            await asyncio.Event().wait()
        return events()


class Kube(ConfigMaps):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log
        self.status: dict = {}
        self.patches: list[dict] = []

    async def get_secret(self, namespace, name):
        return {"stringData": {"apiKey": "KEY-123456", "secret": "SECRET-654321"}} if name == "creds" else None

    async def patch_status(self, namespace, name, patch):
        self.patches.append(patch)
        self.status = st.apply_merge_patch(self.status, patch)
        if (patch.get("emergencyStop") or {}).get("active"):
            self.log.append("status: breaker open")
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def world():
    clock = Clock()
    log: list[str] = []
    gw = Gateway(clock, log)
    gw.balance("USDT", "1000")
    gw.put(order("tw-1", created_ms=clock.ms() - 60_000), order("manual-1", created_ms=clock.ms() - 60_000))
    kube = Kube(log)
    events: list[tuple[str, str, str]] = []
    body = {"metadata": {"namespace": "ns", "name": "a", "generation": 1, "annotations": {}},
            "spec": {"exchange": "binance", "symbols": ["BTC/USDT"], "credentialsSecretRef": {"name": "creds"}}}
    deps = Deps(kube=kube, post_event=lambda b, t, r, m: events.append((t, r, m)), gateway_factory=lambda *a, **k: gw,
                clock=clock, min_write_interval_s=0, rng=random.Random(7), exchanges=lambda: {"binance"})
    sup = AccountSupervisor("ns", "a", body, deps)
    return sup, gw, kube, body, events, log


def conditions(kube: Kube) -> dict[str, str]:
    return {c["type"]: c["status"] for c in kube.status.get("conditions", [])}


async def test_from_nothing_to_ready_then_stopped_then_resumed(world):
    sup, gw, kube, body, events, log = world
    try:
        await sup.settle()
        await asyncio.sleep(0)                  # the stream task delivers CONNECTED
        await sup.flush()
        assert gw.started == 1 and sup.state.synced and sup.state.stream_running
        assert conditions(kube)["Ready"] == "True" and kube.status["openOrders"]["count"] == 2
        assert ("Normal", "OrdersAdopted") in [(t, r) for t, r, _ in events]      # first sync: adoption (issue 19)
        assert kube.status["adoption"]["count"] == 2 and kube.status["lastReconciliation"]["discrepancyCount"] == 0

        # The stop: status shows the open breaker before the exchange is asked to cancel anything.
        body["metadata"]["annotations"][ESTOP] = "runaway bot"
        sup.poke()
        await sup.settle()
        assert log.index("status: breaker open") < log.index("list_account")
        assert gw.open_orders() == [] and sup.state.stream_running        # the stream stays up for the breaker
        es = kube.status["emergencyStop"]
        assert (es["state"], es["ordersCancelled"], es["remaining"]) == ("Completed", 2, 0)
        assert conditions(kube)["EmergencyStopped"] == "True" and kube.status["phase"] == "EmergencyStopped"
        assert [r for _, r, _ in events if r.startswith("EmergencyStop")] == ["EmergencyStop", "EmergencyStopCompleted"]

        # Completed: the breaker holds. Nothing due before the next sweep; a bot's order is found and cancelled.
        calls = len(gw.calls)
        await sup.settle()
        assert len(gw.calls) == calls and sup.state.stop.state is StopState.COMPLETED
        gw.put(order("bot-late", symbol="DOGE/USDT", created_ms=gw.clock.ms()))
        gw.clock.t += 11                                           # the default sweepIntervalSeconds: 10
        await sup.settle()
        await sup.flush()
        assert gw.open_orders() == [] and kube.status["emergencyStop"]["breakerCancelled"] == 1
        assert any(r == "EmergencyStopBreakerCancelled" and "bot-late" in m for _, r, m in events)
        assert sup.state.stop.state is StopState.COMPLETED

        # Release: an initial sync, the stream again, Ready.
        del body["metadata"]["annotations"][ESTOP]
        await sup.settle()
        await asyncio.sleep(0)
        await sup.flush()
        assert ("Normal", "EmergencyStopReleased") in [(t, r) for t, r, _ in events]
        assert sup.state.synced and sup.state.stream_running and not sup.state.stop.active
        assert conditions(kube)["Ready"] == "True" and kube.status["emergencyStop"]["active"] is False
    finally:
        await sup.close()


async def test_a_missing_secret_is_a_condition_and_retried_with_backoff(world):
    sup, gw, kube, body, events, log = world
    body["spec"]["credentialsSecretRef"]["name"] = "nope"
    try:
        await sup.settle()
        await sup.flush()
        assert gw.started == 0 and sup.state.retry_at > gw.clock()
        assert conditions(kube)["CredentialsValid"] == "False" and kube.status["phase"] == "Error"
        assert [r for t, r, _ in events if t == "Warning"] == ["SecretNotFound"]
        await sup.settle()                      # inside the backoff: nothing tried again
        assert sup.state.failures == 1
        body["spec"]["credentialsSecretRef"]["name"] = "creds"
        body["metadata"]["generation"] = 2      # a new spec is tried at once, not after the backoff
        await sup.settle()
        await sup.flush()
        assert gw.started == 1 and conditions(kube)["CredentialsValid"] == "True"
        assert "SECRET-654321" not in repr(kube.patches) + repr(events)
    finally:
        await sup.close()


async def test_a_stale_owned_order_is_cancelled_on_the_timer_and_reported(world):
    sup, gw, kube, body, events, log = world
    body["spec"]["staleOrders"] = {"timeoutSeconds": 30, "checkIntervalSeconds": 5}
    try:
        await sup.settle()
        del events[:]
        gw.clock.t = sup.state.next_stale
        await sup.settle()
        assert gw.orders["tw-1"].state is OrderState.CANCELED
        assert gw.orders["manual-1"].state is OrderState.OPEN          # never a foreign order
        assert [r for _, r, _ in events] == ["StaleOrder", "StaleOrderCancelled"]
        assert "(stale-cleanup run)" in events[0][2]
    finally:
        await sup.close()


async def test_a_status_write_the_api_server_refused_is_not_counted_as_written(world):
    """After an API server restart the status subresource may answer 404 for a moment: that write did
    not happen, and what it carried must reach status with the next one (writes carry only changes)."""
    sup, gw, kube, body, events, log = world
    refused = []
    real = kube.patch_status

    async def patch_status(namespace, name, patch):
        if not refused:
            refused.append(patch)
            return False                        # Kube.patch_status: 404
        return await real(namespace, name, patch)

    kube.patch_status = patch_status
    try:
        await sup.settle()
        await sup.flush()
        assert refused and kube.patches == []
        assert sup.writer.throttle.due is not None      # the loop comes back for it
        gw.clock.t += 5
        await sup.flush()
        assert kube.status["openOrders"]["count"] == 2 and conditions(kube)["Ready"] == "True"
        assert set(refused[0]) <= set(kube.patches[0])  # everything the refused write carried
    finally:
        await sup.close()


async def test_the_checkpoint_is_written_on_its_cadence_and_a_restart_resumes_from_it(world):
    """Issue 19 item 7: the ledger lives in a ConfigMap owned by the account, not in status; written after a
    change at most every deps.checkpoint_interval_s (not on every status write); a new supervisor resumes
    from it: nothing adopted again, a fill made while it was down found."""
    sup, gw, kube, body, events, log = world
    body["metadata"]["uid"] = "uid-a"
    sup.deps.checkpoint_interval_s = 30
    try:
        await sup.settle()
        await sup.flush()
        assert "ledger" not in kube.status and kube.configmaps == {}
        await sup._write_checkpoint()
        await sup.checkpoint_settled()                       # after the initial sync: due at once
        cm = kube.configmaps[("ns", "a-ledger")]
        assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-a"
        await sup.flush()
        assert kube.status["checkpoint"]["configMap"] == "a-ledger" and kube.status["checkpoint"]["orders"] == 2

        # a run changes the ledger: not written again before the interval, written after it
        gw.clock.t += 5
        sup.state.next_reconcile = 0
        await sup.settle()
        await sup._write_checkpoint()
        await sup.checkpoint_settled()
        assert len(kube.configmap_writes) == 1
        gw.clock.t += 31
        await sup._write_checkpoint()
        await sup.checkpoint_settled()
        assert len(kube.configmap_writes) == 2
        gw.clock.t += 31
        await sup._write_checkpoint()
        await sup.checkpoint_settled()                       # nothing changed since: not written
        assert len(kube.configmap_writes) == 2
    finally:
        await sup.close()

    # down: tw-1 is filled on the venue (its event never seen)
    tw1 = next(o for o in gw.open_orders() if o.client_order_id == "tw-1")
    gw.clock.t += 60
    gw.put(replace(tw1, filled=tw1.amount, state=OrderState.FILLED, updated_ms=gw.clock.ms()))
    gw.clock.t += 60
    events.clear()
    sup2 = AccountSupervisor("ns", "a", body, sup.deps)
    try:
        await sup2.settle()
        await sup2.flush()
        last = kube.status["lastReconciliation"]
        assert last["trigger"] == "resume" and last["adoptedOrders"] == 0, last
        assert last["discrepancies"] == {"missing": 1}, last      # not listed, queried: filled
        assert ("Normal", "OrdersAdopted") not in [(t, r) for t, r, _ in events]
    finally:
        await sup2.close()


async def test_a_checkpoint_rbac_forbids_is_said_once_and_the_account_still_served(world):
    """Configmaps not granted (a chart older than the operator): a Warning Event once, status.checkpoint.error,
    and the account synced and reconciled as without a checkpoint (never blocked on it)."""
    from tradewarden.controller.kube import Forbidden

    sup, gw, kube, body, events, log = world
    body["metadata"]["uid"] = "uid-a"

    async def forbidden(*_a, **_k):
        raise Forbidden("ConfigMap ns/a-ledger: forbidden by RBAC")
    kube.get_configmap = kube.put_configmap = forbidden
    try:
        await sup.settle()
        await sup._write_checkpoint()
        await sup.checkpoint_settled()
        gw.clock.t += 31
        sup.state.next_reconcile = 0
        await sup.settle()
        await sup._write_checkpoint()
        await sup.checkpoint_settled()
        await sup.flush()
        assert sup.state.synced and conditions(kube)["Ready"] == "True"
        assert [r for _, r, _ in events].count("CheckpointForbidden") == 1
        assert "forbidden" in kube.status["checkpoint"]["error"]
    finally:
        await sup.close()
