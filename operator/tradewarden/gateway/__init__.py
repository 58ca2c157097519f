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
from .ccxt_gateway import CcxtGateway, create_gateway
from .errors import map_error, scrub
from .exchanges import exchange_ids
from .markets import MarketsCache, default_markets

__all__ = ["CcxtGateway", "RateBudget", "RateBudgets", "backoff_delay", "cheapest_open_orders_weight",
           "MarketsCache", "create_gateway", "default_budgets", "exchange_ids", "default_markets", "jittered_offset", "map_error", "per_symbol_is_cheaper",
           "request_weight", "scrub"]
