"""A real Prometheus server (Debian's `prometheus` package) for the monitoring tier.

It is started on 127.0.0.1 on a free port with the chart's rendered PrometheusRule (helm template, with
the test's values: short thresholds, never changed defaults) and scrapes a running operator's
/metrics. Used by tests/monitoring and benchmarks/bench_alerts.py.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tradewarden"
DASHBOARD = ROOT / "charts" / "tradewarden" / "dashboards" / "tradewarden.json"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendered_rules(helm_bin: str, *sets: str) -> dict:
    """The chart's PrometheusRule spec (``groups``) rendered by helm with ``sets``."""
    from tests.packaging.conftest import helm

    args = ["template", "tw", str(CHART), "--namespace", "tradewarden", "--set", "prometheusRule.enabled=true"]
    for s in sets:
        args += ["--set", s]
    docs = [d for d in yaml.safe_load_all(helm(helm_bin, *args).stdout) if d]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


class Prometheus:
    """``prometheus`` as a subprocess: 1 s scrape and evaluation (the tier stays seconds-scale)."""

    def __init__(self, workdir: pathlib.Path, targets: list[str], rules: dict, *,
                 scrape_interval: str = "1s", evaluation_interval: str = "1s") -> None:
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("prometheus not installed: ./tw test installs Debian's prometheus package")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval,
                       "scrape_timeout": "1s" if scrape_interval == "1s" else "5s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": [{"job_name": "tradewarden", "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--web.enable-lifecycle"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(workdir))
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    # ---- HTTP API --------------------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's vector (``[{metric, value}]``)."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [data]

    def rules(self) -> list[dict]:
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def alerts(self, **labels: str) -> list[dict]:
        """Active alerts (pending or firing) whose labels include ``labels``."""
        return [a for a in self.api("alerts")["alerts"]
                if all(a["labels"].get(k) == v for k, v in labels.items())]

    def state(self, alertname: str, **labels: str) -> str:
        """'firing', 'pending' or 'inactive' for the alert on the account named by ``labels``."""
        states = {a["state"] for a in self.alerts(alertname=alertname, **labels)}
        return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"

    def fired_at(self, alertname: str, for_s: float = 0.0, **labels: str) -> float:
        """Unix time the alert started firing: its activeAt (when the expression first held) plus its
        ``for`` (Prometheus reports only activeAt)."""
        (alert,) = [a for a in self.alerts(alertname=alertname, **labels) if a["state"] == "firing"]
        return parse_time(alert["activeAt"]) + for_s

    def targets_up(self) -> bool:
        return all(t["health"] == "up" for t in self.api("targets")["activeTargets"]) and \
            bool(self.api("targets")["activeTargets"])



def parse_time(text: str) -> float:
    """Prometheus's RFC 3339 time (nanoseconds, 'Z') as Unix seconds."""
    import datetime as dt
    import re

    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base = dt.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float("0" + m.group(2)) if m.group(2) else 0.0)
