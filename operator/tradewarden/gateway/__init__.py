"""The one layer that talks to exchanges (ccxt.async_support for REST, ccxt.pro for streams).

Out: domain types and the domain error vocabulary only, never ccxt dicts or ccxt exceptions.

    gw = create_gateway("binance", key, secret, endpoint=None, budgets=default_budgets())
    await gw.start(["BTC/USDT"])            # markets, symbols, credentials
    snap = await gw.snapshot(["BTC/USDT"])  # balances / open orders / positions, each its own Section
    async for event in gw.stream(["BTC/USDT"]): ...
    await gw.close()
"""
from .budget import (RateBudget, RateBudgets, backoff_delay, cheapest_open_orders_weight, default_budgets,
                     jittered_offset, per_symbol_is_cheaper, request_weight)
from .markets import MarketsCache, default_markets

# What needs ccxt is imported when first used: an operator with no account yet (or a process that
# only needs the budgets) does not load ccxt at all.
_LAZY = {"CcxtGateway": "ccxt_gateway", "create_gateway": "ccxt_gateway", "map_error": "errors", "scrub": "errors",
         "exchange_ids": "exchanges"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

__all__ = ["CcxtGateway", "RateBudget", "RateBudgets", "backoff_delay", "cheapest_open_orders_weight",
           "MarketsCache", "create_gateway", "default_budgets", "exchange_ids", "default_markets", "jittered_offset", "map_error", "per_symbol_is_cheaper",
           "request_weight", "scrub"]
