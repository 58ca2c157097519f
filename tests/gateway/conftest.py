"""Fixtures of the gateway tests: accounts on the simulator and gateways that are always closed."""
from __future__ import annotations

import secrets as _secrets

import pytest

from tradewarden.gateway import RateBudgets, create_gateway
from tests.conftest import new_key

STREAM_OPTIONS = {"backoff_base_s": 0.05, "backoff_cap_s": 0.5, "connect_timeout_s": 5.0}


@pytest.fixture
def account(sim):
    key, secret = new_key(), _secrets.token_hex(32)
    sim.add_account(key, secret, balances={"USDT": "10000", "BTC": "1", "ETH": "10"},
                    futures_balances={"USDT": "10000"})
    return key, secret


@pytest.fixture
async def gateways(sim):
    """make(exchange, key, secret, **kw) -> a gateway on the simulator, closed after the test."""
    made = []
    budgets = RateBudgets()

    def make(exchange: str, key: str, secret: str, **kw):
        kw.setdefault("budgets", budgets)
        kw.setdefault("stream_options", STREAM_OPTIONS)
        gw = create_gateway(exchange, key, secret, sim.url, **kw)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        await gw.close()
