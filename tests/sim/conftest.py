"""Fixtures for the simulator tests: funded accounts and real ccxt clients pointed at the simulator."""
from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from urllib.parse import urlencode

import aiohttp
import pytest

from tradewarden.sim import sim_ccxt

pytestmark = pytest.mark.sim


@pytest.fixture
def creds(sim):
    """(api_key, secret) of a fresh funded account on both venues."""
    key, secret = "tw-test-" + uuid.uuid4().hex, uuid.uuid4().hex
    sim.add_account(key, secret, balances={"USDT": "10000", "BTC": "1", "ETH": "10"},
                    futures_balances={"USDT": "10000"})
    return key, secret


@pytest.fixture
async def spot(sim, creds):
    ex = sim_ccxt("binance", sim.url, *creds)
    await ex.load_markets()
    yield ex
    await ex.close()


@pytest.fixture
async def usdm(sim, creds):
    ex = sim_ccxt("binanceusdm", sim.url, *creds)
    await ex.load_markets()
    yield ex
    await ex.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def signed_query(secret: str, params: dict | None = None, ts: int | None = None) -> str:
    """A Binance-signed query string (timestamp + HMAC-SHA256 signature)."""
    p = dict(params or {})
    p["timestamp"] = ts if ts is not None else int(time.time() * 1000)
    q = urlencode(p)
    sig = hmac.new(secret.encode(), q.encode(), hashlib.sha256).hexdigest()
    return q + "&signature=" + sig
