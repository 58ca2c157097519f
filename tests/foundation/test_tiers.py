"""The unit tier stays hermetic: a unit test that reaches beyond the loopback or starts an outside tool
fails at once (tests/conftest.py), instead of quietly needing a network or a cluster."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_a_unit_test_cannot_connect_beyond_the_loopback():
    with pytest.raises(AssertionError, match="mark it"):
        socket.create_connection(("192.0.2.1", 9), timeout=1)     # TEST-NET-1: never routed


def test_a_unit_test_cannot_start_the_outside_tools():
    for argv in (["helm", "version"], ["kubectl", "version"], [sys.executable, "-m", "pip", "install", "x"]):
        with pytest.raises(AssertionError, match="mark it cluster"):
            subprocess.run(argv, capture_output=True)


def test_a_unit_test_may_run_python_and_use_the_loopback():
    out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "42"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.create_connection(server.getsockname(), timeout=5):
        pass
    server.close()
