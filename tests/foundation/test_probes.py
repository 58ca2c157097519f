"""The readiness endpoint: 503 while starting, failing to reach the TradingAccount API, or stopping;
200 once kopf is ready and the API answers; the API answer cached; its HTTP surface."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tradewarden.probes import Readiness, ReadinessServer


class Check:
    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None

    def __call__(self) -> None:
        self.calls += 1
        if self.error:
            raise self.error


def test_states():
    check = Check()
    r = Readiness(check, ttl=0)
    ready, reason = r.state()
    assert not ready and "starting" in reason and check.calls == 0
    r.started.set()
    assert r.state() == (True, "serving") and check.calls == 1

    class Forbidden(Exception):
        status = 403
    check.error = Forbidden("secret detail")
    ready, reason = r.state()
    assert not ready and reason == "the TradingAccount API did not answer: Forbidden (HTTP 403)"
    assert "secret detail" not in reason
    check.error = None
    assert r.state()[0] is True
    r.stopping.set()
    assert r.state() == (False, "the operator is stopping")


def test_api_answer_is_cached():
    check = Check()
    r = Readiness(check, ttl=60)
    r.started.set()
    for _ in range(5):
        assert r.state()[0]
    assert check.calls == 1


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}") if exc.code != 404 else {}


def test_server():
    r = Readiness(Check(), ttl=0)
    server = ReadinessServer("http://127.0.0.1:0/readyz", r).start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert get(url + "/readyz") == (503, {"ready": False,
                                              "reason": "the operator is starting (startup handlers, watches)"})
        r.started.set()
        assert get(url + "/readyz") == (200, {"ready": True, "reason": "serving"})
        assert get(url + "/other")[0] == 404
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["https://0.0.0.0:8081/readyz", "http://0.0.0.0/readyz"])
def test_bad_endpoint(url):
    with pytest.raises(ValueError):
        ReadinessServer(url, Readiness(Check()))
