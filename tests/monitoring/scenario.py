"""Real causes for the alerts: one account on the simulator, the operator (`tradewarden run`) with its
/metrics on 127.0.0.1, and a real Prometheus loaded with the chart's rules scraping it.

Each cause is what happens in production: the venue's REST API answers 503 (an outage), a balance
changes out of band with its stream event lost (drift), the user-data stream's handshake is refused
after a drop (a dead stream), a human sets the emergency-stop annotation. Shared by
tests/monitoring/test_alerts_fire.py and benchmarks/bench_alerts.py.
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from tests.conftest import kubectl
from tests.controller.conftest import Operator, ThreadSim, account, apply, cond, get_ta, secret, wait_for
from tests.monitoring import prom as pm

ALERTS = ("TradewardenReconciliationFailing", "TradewardenReconciliationStale", "TradewardenBalanceMismatch",
          "TradewardenStreamDown", "TradewardenEmergencyStopActive")
# The venue's REST endpoints a reconciliation reads (spot): an outage refuses them all.
OUTAGE_PATHS = ("/api/v3/*",)
STREAM_PATHS = ("/ws-api/v3", "/ws/*", "/private/ws*")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text: str, metric: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@dataclass
class Account:
    kc: str
    ns: str
    tsim: Any
    metrics_port: int
    name: str = "acct"
    api_key: str = field(default_factory=lambda: "tw-prom-" + uuid.uuid4().hex)
    api_secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    operator: Any = None
    _seq: int = 0

    @property
    def labels(self) -> dict[str, str]:
        return {"namespace": self.ns, "name": self.name, "exchange": "binance"}

    def create(self, interval_s: int, check_interval_s: int = 5) -> None:
        sim = self.tsim.sim
        self.tsim.call(sim.set_price, "BTCUSDT", "50000")
        self.tsim.call(sim.add_account, self.api_key, self.api_secret, balances={"USDT": "100000", "BTC": "2"})
        self.tsim.call(sim.place_order, self.api_key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                       price="40000", time_in_force="GTC", client_order_id="tw-resting-1")
        apply(self.kc, secret(self.ns, "creds", {"apiKey": self.api_key, "secret": self.api_secret}))
        apply(self.kc, account(self.ns, self.name, endpoint=self.tsim.url, symbols=["BTC/USDT"], secret_name="creds",
                               reconciliation={"intervalSeconds": interval_s},
                               staleOrders={"timeoutSeconds": 86400, "checkIntervalSeconds": check_interval_s}))

    def obj(self) -> dict | None:
        return get_ta(self.kc, self.ns, self.name)

    def wait_ready(self, timeout: float = 90) -> dict:
        return wait_for("Ready and stream connected", lambda: (o := self.obj())
                        and cond(o, "Ready").get("status") == "True"
                        and cond(o, "StreamConnected").get("status") == "True" and o,
                        timeout=timeout, operator=self.operator)

    def metric(self, name: str) -> float | None:
        return sample(scrape(self.metrics_port), name, **self.labels)

    def run(self, timeout: float = 30) -> dict:
        """One reconciliation now (the reconcile annotation); returns the resource once handled."""
        self._seq += 1
        value = f"prom-{self._seq}-{uuid.uuid4().hex[:6]}"
        kubectl(self.kc, "-n", self.ns, "annotate", "ta", self.name,
                f"tradewarden.io/reconcile-requested-at={value}", "--overwrite")
        return wait_for(f"run {value} handled", lambda: (o := self.obj())
                        and (o.get("status") or {}).get("lastHandledReconcileAt") == value and o,
                        timeout=timeout, operator=self.operator)

    # ---- causes ------------------------------------------------------------------------------------
    def venue_outage(self) -> None:
        for path in OUTAGE_PATHS:
            self.tsim.call(self.tsim.sim.add_fault, method="GET", path=path, status=503)

    def clear_faults(self) -> None:
        self.tsim.call(self.tsim.sim.clear_faults)

    def balance_drift(self, delta: str = "250") -> None:
        """A balance changes on the venue and its stream event is lost: only a reconciliation sees it."""
        sim = self.tsim.sim
        self.tsim.call(sim.set_deliver, self.api_key, False)
        self.tsim.call(sim.adjust_balance, self.api_key, "USDT", delta)
        self.tsim.call(sim.set_deliver, self.api_key, True)

    def stream_dies(self) -> None:
        """The handshake is refused from now on, and the live connection is cut."""
        for path in STREAM_PATHS:
            self.tsim.call(self.tsim.sim.add_fault, method="GET", path=path, status=503)
        self.tsim.call_async(self.tsim.sim.drop_streams(abort=True))

    def emergency_stop(self, value: str = "alert-drill") -> None:
        kubectl(self.kc, "-n", self.ns, "annotate", "ta", self.name, f"tradewarden.io/emergency-stop={value}",
                "--overwrite")

    def release(self) -> None:
        kubectl(self.kc, "-n", self.ns, "annotate", "ta", self.name, "tradewarden.io/emergency-stop-")


def wait_state(prom: Any, alert: str, state: str, labels: dict[str, str], timeout: float,
               on_poll: Callable[[], None] | None = None, poll_s: float = 0.25) -> float:
    """Poll Prometheus until ``alert`` on the account is in ``state`` ('firing' / 'inactive');
    returns the monotonic time it was first seen so."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = prom.state(alert, **labels)
        if last == state:
            return time.monotonic()
        if on_poll is not None:
            on_poll()
        time.sleep(poll_s)
    raise AssertionError(f"{alert} not {state} after {timeout:.0f}s (last: {last}); active alerts: "
                         f"{json.dumps(prom.alerts(), indent=1)[:3000]}")


def active(prom: Any, labels: dict[str, str]) -> dict[str, str]:
    """alertname -> state of every pending or firing alert on the account."""
    return {a["labels"]["alertname"]: a["state"] for a in prom.alerts(**labels)}


@contextlib.contextmanager
def running(kc: str, helm_bin: str, workdir: pathlib.Path, rule_values: tuple[str, ...], *, interval_s: int,
            env: dict[str, str] | None = None, prefix: str = "tw-prom-"):
    """A namespace with one Ready account on a fresh simulator, its operator (metrics on 127.0.0.1) and a
    Prometheus with the chart's rules (rendered with ``rule_values``) scraping it; all removed after."""
    ns = prefix + uuid.uuid4().hex[:8]
    kubectl(kc, "create", "namespace", ns)
    tsim = ThreadSim()
    port = pm.free_port()
    op = prom = None
    try:
        acct = Account(kc, ns, tsim, port)
        acct.create(interval_s=interval_s)
        op = Operator(kc, ns, workdir / "operator.log", env={"TRADEWARDEN_METRICS_HOST": "127.0.0.1", **(env or {})},
                      args=["--metrics-port", str(port)])
        op.start()
        acct.operator = op
        acct.wait_ready()
        prom = pm.Prometheus(workdir / "prometheus", [f"127.0.0.1:{port}"], pm.rendered_rules(helm_bin, *rule_values))
        yield acct, prom
    finally:
        if prom is not None:
            prom.stop()
        kubectl(kc, "-n", ns, "delete", "ta", "--all", "--wait=false", check=False)
        if op is not None:
            time.sleep(1)       # the operator releases its finalizer while it still runs
            op.stop()
        kubectl(kc, "-n", ns, "patch", "ta", "acct", "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                check=False)
        kubectl(kc, "delete", "namespace", ns, "--wait=false", check=False)
        tsim.stop()
