"""point_ccxt_at / sim_ccxt: every ccxt URL (REST and WebSocket, nested ws-api) goes to the base URL, path kept."""
from __future__ import annotations

import ccxt.pro
import pytest

from tradewarden.sim import point_ccxt_at, sim_ccxt
from tradewarden.sim.client import rewrite_url

pytestmark = pytest.mark.sim


def _urls(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _urls(v)


@pytest.mark.parametrize("exchange_id", ["binance", "binanceusdm"])
async def test_every_url_rewritten_paths_kept(exchange_id):
    ex = getattr(ccxt.pro, exchange_id)()
    before = ex.urls["api"]
    point_ccxt_at(ex, "http://127.0.0.1:9999")
    try:
        urls = list(_urls(ex.urls["api"]))
        assert urls and all(u.startswith(("http://127.0.0.1:9999/", "ws://127.0.0.1:9999/")) for u in urls)
        assert ex.urls["api"]["fapiPrivate"] == "http://127.0.0.1:9999/fapi/v1"
        assert ex.urls["api"]["ws"]["ws-api"]["spot"] == "ws://127.0.0.1:9999/ws-api/v3"
        assert ex.urls["api"]["ws"]["linear"] == "ws://127.0.0.1:9999/ws"
        assert len(urls) == len(list(_urls(before)))
    finally:
        await ex.close()


def test_rewrite_url_schemes():
    assert rewrite_url("wss://fstream.binance.com/private/ws", "https://sim.local/base") == \
        "wss://sim.local/base/private/ws"
    assert rewrite_url("https://api.binance.com/api/v3", "http://127.0.0.1:1/") == "http://127.0.0.1:1/api/v3"


async def test_sim_ccxt_options(sim, creds):
    ex = sim_ccxt("binance", sim.url, *creds)
    try:
        assert ex.options["fetchCurrencies"] is False and ex.options["fetchMarkets"]["types"] == ["spot"]
        await ex.load_markets()
        assert {r["path"] for r in sim.requests()} == {"/api/v3/exchangeInfo"}   # nothing else was called
    finally:
        await ex.close()
