"""No API key, secret or request signature anywhere: every log record at DEBUG (ccxt's request
logging included), exception texts, reprs, run reports, ledger dumps, stream reasons, budget
counters - across the fault scenarios, including a hostile venue that echoes the credentials back."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets as _secrets

import pytest

from tradewarden.core import AccountConfig
from tradewarden.service import AccountRunner
from tradewarden.domain import ConnectionState, GatewayError
from tradewarden.gateway import RateBudgets, create_gateway

from .conftest import SPOT, STREAM_OPTIONS
from .test_matrix import wait_for_state

pytestmark = [pytest.mark.sim, pytest.mark.timeout(60)]

HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")   # an HMAC-SHA256 signature


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))   # message, args and exc_info rendered


@pytest.fixture
def everything():
    root = logging.getLogger()
    handler, level = Everything(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in ("ccxt", "tradewarden", "aiohttp"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_no_secret_anywhere(sim, everything):
    key = "tw-KEY-" + "ZqX" * 20                      # distinctive, not hex
    secret = "SeCrEt-" + _secrets.token_urlsafe(40).replace("-", "x")
    sim.add_account(key, secret, balances={"USDT": "10000", "BTC": "1"})
    seen: list[str] = []

    def keep(*objs) -> None:
        seen.extend(repr(o) for o in objs)
        seen.extend(str(o) for o in objs)

    gw = create_gateway("binance", key, secret, sim.url, budgets=RateBudgets(), stream_options=STREAM_OPTIONS)
    keep(gw)
    # bad credentials first (the signature does not verify)
    bad = create_gateway("binance", key, "wrong-" + secret[::-1], sim.url, budgets=RateBudgets())
    with pytest.raises(GatewayError) as info:
        await bad.start(SPOT)
    keep(info.value, bad)
    await bad.close()

    await gw.start(SPOT)
    runner = AccountRunner(gw, AccountConfig(symbols=SPOT, missing_grace_s=0))
    it = gw.stream(SPOT)
    events: list = []

    async def pump():
        async for ev in it:
            events.append(ev)
            await runner.handle_event(ev)
    task = asyncio.get_running_loop().create_task(pump())
    await wait_for_state(type("H", (), {"events": events})(), ConnectionState.CONNECTED)
    sim.place_order(key, "spot", symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="40000",
                    time_in_force="GTC", client_order_id="tw-s")
    keep(await runner.initial_sync())

    # a hostile venue echoes the credentials back in its error messages
    sim.add_fault(method="GET", path="/api/v3/account", status=400, code=-1100,
                  msg=f"Illegal characters in apiKey={key} secret {secret}", count=1)
    sim.add_fault(method="GET", path="/api/v3/openOrders", status=503, count=2)
    keep(await runner.reconcile())
    # a cancel whose answer is lost, a 429, a timeout
    sim.add_fault(method="DELETE", path="/api/v3/order", status=503, processed=True, count=1)
    order = runner.ledger.order("tw-s")
    with pytest.raises(GatewayError) as info:
        await gw.cancel_order("BTC/USDT", order.exchange_order_id)
    keep(info.value)
    sim.add_fault(path="*", status=429, retry_after=1, count=2)
    keep(await runner.reconcile())
    sim.add_fault(method="GET", path="/api/v3/account", latency_ms=1200, count=1)
    gw._rest.timeout = 600
    keep(await runner.reconcile())
    gw._rest.timeout = 10000
    # a revoked key on a live instance (ccxt: -2015 after a first success)
    acct = sim.exchange.accounts.pop(key)
    with pytest.raises(GatewayError) as info:
        await runner.reconcile()
    keep(info.value)
    sim.exchange.accounts[key] = acct
    # the stream dropped and aborted, its key expired
    await sim.drop_streams(abort=True)
    await wait_for_state(type("H", (), {"events": events})(), ConnectionState.RECONNECTED)
    keep(await runner.reconcile(), runner.ledger, runner.monitor)
    keep(json.dumps(runner.ledger.dump()), gw.budget_snapshot(), *events)
    await it.aclose()
    task.cancel()
    await gw.close()
    keep(gw)

    assert any("Request:" in line or "GET http" in line for line in everything.lines), "ccxt's DEBUG was captured"
    assert any("Illegal characters" in s for s in seen + everything.lines), "the echo reached us"
    corpus = {"logs": "\n".join(everything.lines), "objects": "\n".join(seen)}
    for where, text in corpus.items():
        assert key not in text, f"the API key appeared in {where}"
        assert secret not in text, f"the secret appeared in {where}"
        assert not re.search(r"signature=(?!<redacted>)", text), f"a signature appeared in {where}"
        hexes = HEX64.findall(text)
        assert not hexes, f"a signature-like value appeared in {where}: {hexes[:2]}"
        assert not re.search(r"X-MBX-APIKEY['\"]?\s*[:=]\s*['\"]?(?!<redacted>)[A-Za-z0-9]", text), where
