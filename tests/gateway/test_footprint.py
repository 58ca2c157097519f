"""Issue 18: the gateway's footprint: ccxt loaded with only the exchanges in use, one TLS context per
process instead of one per ccxt instance."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import json, sys
import tradewarden.gateway
assert "ccxt" not in sys.modules          # the package alone (budgets, markets) does not load ccxt
from tradewarden.gateway import create_gateway
import ccxt, ccxt.async_support as a, ccxt.pro as p
from ccxt.async_support import binanceusdm
from tradewarden.gateway.exchanges import exchange_class
before = sum(1 for m in sys.modules if m.split(".")[0] == "ccxt")
out = {
    "lazy": __import__("tradewarden.gateway.ccxt_import", fromlist=["x"]).installed(),
    "classes": [a.binance.__name__, p.binance.__name__, ccxt.binance.__name__, binanceusdm.__module__,
                p.binanceusdm.__module__, exchange_class("binance", True).__mro__[1].__module__],
    "pro_is_async_subclass": issubclass(p.binance, a.binance),
    "errors": ccxt.NetworkError.__module__, "n_exchanges": len(ccxt.exchanges),
    "kraken": a.kraken.__module__,
    "missing": hasattr(a, "no_such_exchange"),
    "ccxt_modules": sum(1 for m in sys.modules if m.split(".")[0] == "ccxt"),
}
print(json.dumps(out))
"""


def probe(mode: str) -> dict:
    env = dict(os.environ, TRADEWARDEN_CCXT_IMPORT=mode)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lazy_ccxt_names_the_same_classes_as_the_full_import_with_a_fraction_of_its_modules():
    lazy, full = probe("lazy"), probe("full")
    assert lazy["lazy"] is True and full["lazy"] is False
    for key in ("classes", "pro_is_async_subclass", "errors", "n_exchanges", "kraken", "missing"):
        assert lazy[key] == full[key], key
    assert lazy["classes"][0] == "binance" and lazy["pro_is_async_subclass"] is True
    assert lazy["n_exchanges"] > 100 and lazy["missing"] is False
    # binance, binanceusdm and kraken in three flavours at most, plus ccxt's base: not ~400 modules
    assert lazy["ccxt_modules"] < full["ccxt_modules"] / 4, (lazy["ccxt_modules"], full["ccxt_modules"])


def test_every_ccxt_instance_shares_one_tls_context():
    from tradewarden.gateway.budget import default_budgets
    from tradewarden.gateway.exchanges import new_exchange, shared_ssl_context
    import logging

    log = logging.getLogger("t")
    a = new_exchange("binance", "k1", "s1", None, default_budgets(), pro=False, logger=log)
    b = new_exchange("binanceusdm", "k2", "s2", None, default_budgets(), pro=True, logger=log)
    assert a.ssl_context is b.ssl_context is shared_ssl_context(a.cafile)
    assert a.ssl_context.verify_mode.name == "CERT_REQUIRED" and a.ssl_context.check_hostname


# ---- issue 18 part 3: a replica's share of the egress's weight ----

def test_a_replica_spends_at_most_its_share_and_the_ip_total_still_binds():
    from tradewarden.gateway.budget import RateBudget

    t = [600.0]
    b = RateBudget(key="h/api", limit=1000, safety=0.9, clock=lambda: t[0], share=0.5)
    assert b.usable == 900 and b.own_usable == 450
    assert b.try_spend(400) == 0 and b.try_spend(50) == 0
    assert b.try_spend(1) > 0                    # its half is spent: wait for the next window
    t[0] += 60
    assert b.try_spend(100) == 0                 # a new window
    # the venue's counter (all replicas behind the IP) says 850 used: the IP limit binds first
    b.observe(200, {"X-MBX-USED-WEIGHT-1M": "850"}, b.window())
    assert b.try_spend(100) > 0 and b.try_spend(50) == 0
    assert b.snapshot()["share"] == 0.5


def test_shares_of_replicas_behind_one_ip_sum_below_the_limit():
    from tradewarden.gateway.budget import RateBudget

    t = [600.0]
    replicas = [RateBudget(key="h/api", limit=6000, clock=lambda: t[0], share=1 / 3) for _ in range(3)]
    spent = 0
    for b in replicas:                            # each spends greedily, one weight-20 request at a time
        while b.try_spend(20) == 0:
            spent += 20
    assert spent <= 6000 * 0.9 and spent >= 6000 * 0.9 - 3 * 20


def test_rate_share_setting():
    import pytest
    from tradewarden.gateway.budget import RateBudgets, rate_share

    assert rate_share({}) == 1.0 and rate_share({"TRADEWARDEN_RATE_SHARE": "0.25"}) == 0.25
    for bad in ("0", "1.5", "-1"):
        with pytest.raises(ValueError):
            rate_share({"TRADEWARDEN_RATE_SHARE": bad})
    assert RateBudgets(share=0.5).for_url("https://api.binance.com/api/v3/account").share == 0.5


def test_definitions_are_shared_per_class_and_the_error_table_still_maps():
    import logging

    import ccxt
    from tradewarden.gateway.budget import default_budgets
    from tradewarden.gateway.exchanges import PRO_WS_OPTIONS, new_exchange

    log = logging.getLogger("t")
    a = new_exchange("binance", "k1", "s1", None, default_budgets(), pro=False, logger=log)
    b = new_exchange("binance", "k2", "s2", "http://127.0.0.1:1", default_budgets(), pro=False, logger=log)
    assert a.api is b.api and a.exceptions is b.exceptions and a.features is b.features
    assert a.urls is not b.urls and a.options is not b.options       # per account: never shared
    assert "http://127.0.0.1:1" in str(b.urls) and "127.0.0.1" not in str(a.urls)
    table = b.get_exceptions_by_url("http://127.0.0.1:1/api/v3/order", "exact")
    assert table["-1099"] is ccxt.AuthenticationError and table is a.exceptions["spot"]["exact"]
    pro = new_exchange("binance", "k3", "s3", None, default_budgets(), pro=True, logger=log)
    assert pro.options["ws"]["compress"] == PRO_WS_OPTIONS["ws"]["compress"] == 0
