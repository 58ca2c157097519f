"""The issue's proof: the chart installed by helm on the real API server, the operator started with the
rendered Deployment's arguments under the chart's ServiceAccount token (so its RBAC is what runs), an
account reconciled against the simulator, and /metrics scraped with the expected series."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import yaml

from tests.conftest import kubectl
from tests.controller.conftest import ThreadSim, account, apply, cond, get_ta, secret, wait_for

from .conftest import CHART, ROOT, helm
from .test_chart_cluster import NOT_RUN
from .test_telemetry import value

pytestmark = [pytest.mark.cluster, pytest.mark.sim]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sa_kubeconfig(admin_kubeconfig: str, namespace: str, sa: str, path) -> str:
    token = kubectl(admin_kubeconfig, "-n", namespace, "create", "token", sa, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(open(admin_kubeconfig))
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": sa, "namespace": namespace}}],
        "current-context": "sa"}))
    path.chmod(0o600)
    return str(path)


class TraceReceiver:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that keeps (name, span id, parent span id)."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        got = self._got = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            got.append((sp.name, sp.span_id.hex(), sp.parent_span_id.hex()))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[str, str, str]]:
        return list(self._got)


def series(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_chart_installed_operator_reconciles_and_exports_metrics(crd_installed, helm_bin, namespace, tmp_path):
    kc, ns = crd_installed, namespace
    release = "tw" + uuid.uuid4().hex[:8]
    peering = "peering-" + release
    tsim = ThreadSim()
    proc = None
    log_path = tmp_path / "operator.log"
    try:
        helm(helm_bin, "install", release, str(CHART), "--namespace", ns, "--set", f"watchNamespaces={{{ns}}}",
             "--set", f"peering.name={peering}", *NOT_RUN, kubeconfig=kc)
        dep = json.loads(kubectl(kc, "-n", ns, "get", "deployment", f"{release}-tradewarden", "-o", "json").stdout)
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = container["args"]
        assert args[:3] == ["run", f"--namespace={ns}", f"--peering={peering}"]
        # the rendered settings, with the two listen addresses moved to free ports on 127.0.0.1
        metrics_port, health_port, ready_port = free_port(), free_port(), free_port()
        run_args = []
        for a in args:
            if a.startswith("--metrics-port="):
                assert a == "--metrics-port=9464"
                a = f"--metrics-port={metrics_port}"
            elif a.startswith("--liveness="):
                assert a == "--liveness=http://0.0.0.0:8080/healthz"
                a = f"--liveness=http://127.0.0.1:{health_port}/healthz"
            elif a.startswith("--readiness="):
                assert a == "--readiness=http://0.0.0.0:8081/readyz"
                a = f"--readiness=http://127.0.0.1:{ready_port}/readyz"
            run_args.append(a)
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env.update(os.environ)
        env.update(POD_ID=f"{release}-pod", TRADEWARDEN_METRICS_HOST="127.0.0.1",
                   KUBECONFIG=sa_kubeconfig(kc, ns, pod["serviceAccountName"], tmp_path / "sa.kubeconfig"))
        for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            env.pop(var, None)
        # traces over OTLP to a local receiver: a span per run, a child per exchange call
        receiver = TraceReceiver()
        env.update(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{receiver.port}/v1/traces",
                   OTEL_BSP_SCHEDULE_DELAY="200")

        api_key, api_secret = "tw-proof-" + uuid.uuid4().hex, uuid.uuid4().hex
        sim = tsim.sim
        tsim.call(sim.set_price, "BTCUSDT", "50000")
        tsim.call(sim.add_account, api_key, api_secret, balances={"USDT": "10000", "BTC": "1"})
        tsim.call(sim.place_order, api_key, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                  price="40000", time_in_force="GTC", client_order_id="tw-proof-1")
        apply(kc, secret(ns, "creds", {"apiKey": api_key, "secret": api_secret}))
        apply(kc, account(ns, "main", endpoint=tsim.url, symbols=["BTC/USDT"], secret_name="creds",
                          reconciliation={"intervalSeconds": 3600}))

        log = open(log_path, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "tradewarden.cli", *run_args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

        class Op:
            def log(self):
                return log_path.read_text(errors="replace")

        obj = wait_for("Ready", lambda: (o := get_ta(kc, ns, "main")) and cond(o, "Ready").get("status") == "True"
                       and o, timeout=90, operator=Op())
        assert obj["status"]["openOrders"]["count"] == 1

        lb = {"namespace": ns, "name": "main", "exchange": "binance"}

        def metrics_ready():
            text = scrape(metrics_port)
            return (value(text, "tradewarden_reconciliation_runs_total", **lb) or 0) >= 1 and text
        text = wait_for("metrics", metrics_ready, timeout=30, operator=Op())
        assert value(text, "tradewarden_reconciliation_failures_total", **lb) == 0
        assert value(text, "tradewarden_consecutive_failures", **lb) == 0
        assert value(text, "tradewarden_open_orders", **lb) == 1
        assert value(text, "tradewarden_last_success_timestamp_seconds", **lb) > time.time() - 300
        assert value(text, "tradewarden_reconciliation_duration_seconds_count", **lb) >= 1
        assert value(text, "tradewarden_emergency_stop_active", **lb) == 0
        assert api_key not in text and api_secret not in text
        # the shared rate budget's weight in use, as the exchange reported it
        assert max(v for (n, lbl), v in series(text).items()
                   if n == "tradewarden_exchange_weight_used" and dict(lbl).get("exchange") == "binance") > 0
        spans = wait_for("run spans over OTLP", lambda: (sp := receiver.spans()) and
                         any(n.startswith("exchange.") for n, _, _ in sp) and sp, timeout=30, operator=Op())
        runs = {sid: n for n, sid, _ in spans if n.startswith("tradewarden.")}
        children = [(n, parent) for n, _, parent in spans if n.startswith("exchange.")]
        assert "tradewarden.initial" in runs.values()
        assert any(n == "exchange.snapshot" and parent in runs for n, parent in children), (runs, children)
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5) as r:
            assert r.status == 200
        # ready: serving, with the chart's RBAC (the readiness check lists accounts as the operator)
        with urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/readyz", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["ready"] is True

        # the emergency brake shows up in the metrics the alert reads
        kubectl(kc, "-n", ns, "annotate", "ta", "main", "tradewarden.io/emergency-stop=proof")
        text = wait_for("emergency stop metric", lambda: (t := scrape(metrics_port)) and
                        value(t, "tradewarden_emergency_stop_active", **lb) == 1 and t, timeout=60, operator=Op())
        assert value(text, "tradewarden_emergency_stops_total", **lb) == 1
        # the breaker (and its metric) opens before the cancels go out: the book empties just after
        wait_for("the emergency stop's cancels", lambda: tsim.open_orders(api_key) == [], timeout=60, operator=Op())
        assert "Forbidden" not in log_path.read_text(errors="replace"), log_path.read_text()[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        kubectl(kc, "-n", ns, "delete", "ta", "main", "--wait=false", check=False)
        helm(helm_bin, "uninstall", release, "--namespace", ns, check=False, kubeconfig=kc)
        tsim.stop()
