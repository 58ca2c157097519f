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
