"""The per-account supervisor driven step by step against the simulator with real ccxt; the
Kubernetes side is an in-memory recorder of status patches (what is written, and when)."""
from __future__ import annotations

import base64

from tests.conftest import new_key
from tradewarden.controller import status as st
from tradewarden.controller.deps import Deps
from tradewarden.controller.supervisor import AccountSupervisor


class RecordingKube:
    def __init__(self, secrets: dict[str, dict]) -> None:
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
        assert set(kube.patches[-1]) <= {"lastReconciliation", "metrics", "ledger", "conditions"}, kube.patches[-1]
        assert "balances" not in kube.patches[-1] and "openOrders" not in kube.patches[-1]

        # A balance changed out of band: found by the next run, reported by kind, one Event per kind.
        assert ("Normal", "OrphanOrderAdopted") in [(t, r) for t, r, _ in events]    # the sync adopted tw-1
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
