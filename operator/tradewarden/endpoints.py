"""Pointing an exchange at another base URL (the simulator, a testnet), keeping every path.

``point_at(exchange, base_url)`` rewrites every URL under a ccxt ``exchange.urls['api']`` (REST entries
and the nested ``ws`` / ``ws['ws-api']`` dicts) to ``base_url`` while keeping each URL's path, e.g.
``https://fapi.binance.com/fapi/v1`` -> ``http://127.0.0.1:P/fapi/v1`` and
``wss://ws-api.binance.com:443/ws-api/v3`` -> ``ws://127.0.0.1:P/ws-api/v3``. Pure: no ccxt import, no
I/O; the gateway (spec.endpoint) and the simulator's client helpers share it.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["point_at", "rewrite_url"]


def rewrite_url(url: str, base_url: str) -> str:
    """``url`` with scheme and host taken from ``base_url`` (ws/wss for WebSocket URLs), path kept."""
    src = urlsplit(url)
    dst = urlsplit(base_url.rstrip("/"))
    secure = dst.scheme in ("https", "wss")
    if src.scheme in ("ws", "wss"):
        scheme = "wss" if secure else "ws"
    else:
        scheme = "https" if secure else "http"
    path = dst.path.rstrip("/") + src.path
    return urlunsplit((scheme, dst.netloc, path, src.query, src.fragment))


def _rewrite(node: Any, base_url: str) -> Any:
    if isinstance(node, str):
        return rewrite_url(node, base_url) if "://" in node else node
    if isinstance(node, dict):
        return {k: _rewrite(v, base_url) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, base_url) for v in node]
    return node


def point_at(exchange: Any, base_url: str) -> Any:
    """Rewrite every URL in ``exchange.urls['api']`` to ``base_url`` keeping paths; returns ``exchange``."""
    exchange.urls["api"] = _rewrite(exchange.urls["api"], base_url)
    return exchange
