"""Point real ccxt (REST and ccxt.pro WebSocket) at a local Binance-compatible base URL.

``point_ccxt_at(exchange, base_url)`` is the stable helper: it rewrites every URL under
``exchange.urls['api']`` (REST entries and the nested ``ws`` / ``ws['ws-api']`` dicts) to ``base_url``
while keeping each URL's path, e.g. ``https://fapi.binance.com/fapi/v1`` -> ``http://127.0.0.1:P/fapi/v1``
and ``wss://ws-api.binance.com:443/ws-api/v3`` -> ``ws://127.0.0.1:P/ws-api/v3``.
"""
from __future__ import annotations

from typing import Any

from ..endpoints import point_at as point_ccxt_at, rewrite_url   # one definition, shared with the gateway

__all__ = ["point_ccxt_at", "rewrite_url", "sim_ccxt", "CCXT_OPTIONS"]


# ccxt options that keep ccxt on endpoints a spot / USD-M venue serves (see docs/simulator.md).
CCXT_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {
        "fetchCurrencies": False,
        "fetchMargins": False,
        "fetchMarkets": {"types": ["spot"]},
        "fetchOpenOrders": {"warnWithoutSymbol": False},
    },
    "binanceusdm": {
        "fetchCurrencies": False,
        "fetchMargins": False,
        "fetchOpenOrders": {"warnWithoutSymbol": False},
        "watchPositions": {"fetchPositionsSnapshot": False},
    },
}


def sim_ccxt(exchange_id: str, base_url: str, api_key: str | None = None, secret: str | None = None,
             pro: bool = False, **options: Any) -> Any:
    """A ccxt.async_support (or ccxt.pro when ``pro``) exchange pointed at ``base_url``.

    The caller must ``await ex.close()``. Extra keyword args are merged into ccxt ``options``.
    """
    if pro:
        import ccxt.pro as lib
    else:
        import ccxt.async_support as lib
    opts = {k: (dict(v) if isinstance(v, dict) else v) for k, v in CCXT_OPTIONS.get(exchange_id, {}).items()}
    opts.update(options)
    config: dict[str, Any] = {"enableRateLimit": False, "options": opts}
    if api_key is not None:
        config["apiKey"] = api_key
    if secret is not None:
        config["secret"] = secret
    ex = getattr(lib, exchange_id)(config)
    return point_ccxt_at(ex, base_url)
