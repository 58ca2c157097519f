"""Time to fire of each alert against its configured threshold, in a real Prometheus.

The operator (`tradewarden run`) watches one account on the simulator; Prometheus (Debian's package)
scrapes it every second and evaluates the chart's rendered rules every second. Unlike the test tier
(which triggers runs by annotation), runs here come from the account's own timer (intervalSeconds 30),
as in production. Causes: a venue outage (every REST call 503), a balance drift with its stream event
lost, a dead stream (connection cut, handshakes refused), an emergency stop.

Rule values: consecutiveFailures 3 (the default), staleAfterSeconds 60 (the schema's floor), streamDownFor
10s. What each alert should take:
- ReconciliationFailing: the 4th failed timer run after the outage began: 3 to 4 intervals (90-120 s);
- ReconciliationStale: staleAfterSeconds after the last successful run (measured from that run);
- BalanceMismatch: the next timer run after the drift (at most one interval);
- StreamDown: streamDownFor after the stream went down;
- EmergencyStopActive: at once.
Each figure also includes up to one scrape plus one evaluation (2 s here; 30 s + 30 s with the chart's
ServiceMonitor default interval).

    .venv/bin/python benchmarks/bench_alerts.py        (./tw bench runs it with the others)
"""
from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_controller import kubeconfig, sh  # noqa: E402

from tests.monitoring import prom as pm  # noqa: E402
from tests.monitoring.scenario import active, running, wait_state  # noqa: E402
from tests.packaging.conftest import _find_helm  # noqa: E402

INTERVAL_S = 30
FAILING_AFTER = 3
STALE_AFTER_S = 60
STREAM_DOWN_FOR_S = 10
RULE_VALUES = (f"prometheusRule.consecutiveFailures={FAILING_AFTER}",
               f"prometheusRule.staleAfterSeconds={STALE_AFTER_S}",
               f"prometheusRule.streamDownFor={STREAM_DOWN_FOR_S}s")


def main() -> int:
    if pm.prometheus_binary() is None:
        print("bench_alerts: prometheus not installed (apt-get install prometheus); skipped")
        return 0
    helm_bin = _find_helm()
    if helm_bin is None:
        print("bench_alerts: helm not found (./tw test sets it up); skipped")
        return 0
    kc = kubeconfig()
    sh(kc, "apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    work = pathlib.Path(tempfile.mkdtemp(prefix="tw-bench-alerts-"))
    rows: list[tuple[str, str, float, float, str]] = []
    with running(kc, helm_bin, work, RULE_VALUES, interval_s=INTERVAL_S, prefix="tw-bench-alerts-") as (acct, prom):
        lb = acct.labels
        # let the first timer run (20 s after the sync) pass, so the outage starts from steady state
        time.sleep(25)
        assert active(prom, lb) == {}, active(prom, lb)

        def fired(alert: str, since: float, for_s: float = 0.0, timeout: float = 120) -> float:
            """Seconds from ``since`` (Unix time of the cause) to the alert's firing, as Prometheus has it."""
            wait_state(prom, alert, "firing", lb, timeout=timeout)
            return prom.fired_at(alert, for_s, **lb) - since

        # 1. venue outage, runs from the timer only
        t0 = time.time()
        acct.venue_outage()
        took = fired("TradewardenReconciliationFailing", t0, timeout=6 * INTERVAL_S)
        rows.append(("ReconciliationFailing", f"{FAILING_AFTER + 1} failed runs x {INTERVAL_S}s", took,
                     (FAILING_AFTER + 1) * INTERVAL_S, "from the outage's start"))
        wait_state(prom, "TradewardenReconciliationStale", "firing", lb, timeout=3 * STALE_AFTER_S)
        (last,) = prom.query(f'tradewarden_last_success_timestamp_seconds{{name="{acct.name}"}}')
        took = fired("TradewardenReconciliationStale", float(last["value"][1]))
        rows.append(("ReconciliationStale", f"staleAfterSeconds {STALE_AFTER_S}", took, STALE_AFTER_S,
                     "from the last successful run"))
        t1 = time.monotonic()
        acct.clear_faults()
        resolved = wait_state(prom, "TradewardenReconciliationFailing", "inactive", lb, timeout=2 * INTERVAL_S)
        wait_state(prom, "TradewardenReconciliationStale", "inactive", lb, timeout=2 * INTERVAL_S)
        rows.append(("  resolved after recovery", f"next timer run (<= {INTERVAL_S}s)", resolved - t1, INTERVAL_S,
                     "from the venue's recovery (seen by polling)"))

        # 2. balance drift, found by the next timer run
        t0 = time.time()
        acct.balance_drift()
        took = fired("TradewardenBalanceMismatch", t0, timeout=2 * INTERVAL_S)
        rows.append(("BalanceMismatch", f"next timer run (<= {INTERVAL_S}s)", took, INTERVAL_S, "from the drift"))
        wait_state(prom, "TradewardenBalanceMismatch", "inactive", lb, timeout=2 * INTERVAL_S)

        # 3. dead stream
        t0 = time.time()
        acct.stream_dies()
        took = fired("TradewardenStreamDown", t0, for_s=STREAM_DOWN_FOR_S, timeout=6 * STREAM_DOWN_FOR_S)
        rows.append(("StreamDown", f"streamDownFor {STREAM_DOWN_FOR_S}s", took, STREAM_DOWN_FOR_S, "from the cut"))
        acct.clear_faults()
        wait_state(prom, "TradewardenStreamDown", "inactive", lb, timeout=120)

        # 4. emergency stop
        t0 = time.time()
        acct.emergency_stop()
        took = fired("TradewardenEmergencyStopActive", t0, timeout=60)
        rows.append(("EmergencyStopActive", "at once", took, 0, "from the annotation"))
        acct.release()
        wait_state(prom, "TradewardenEmergencyStopActive", "inactive", lb, timeout=60)

    print("alert time to fire (real Prometheus: scrape 1s, evaluation 1s; account interval "
          f"{INTERVAL_S}s, runs from the timer)")
    print(f"  {'alert':28} {'threshold':28} {'fired after':>12} {'threshold s':>12} {'ratio':>7}  measured")
    for name, threshold, took, bound, since in rows:
        ratio = f"{took / bound:.2f}" if bound else "-"
        print(f"  {name:28} {threshold:28} {took:10.1f} s {bound:10.0f} s {ratio:>7}  {since}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(exc.stderr, file=sys.stderr)
        raise
