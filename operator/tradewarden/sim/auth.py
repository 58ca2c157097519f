"""Binance request authentication, the one definition for REST and the WebSocket API (HMAC-SHA256 over
the payload with the account's secret, then the timestamp / recvWindow rule). A leaf: imports ``engine``."""
from __future__ import annotations

import hashlib
import hmac
from decimal import Decimal
from typing import Any, Mapping

from .engine import Account, Exchange, SimError

MAX_RECV_WINDOW = 60_000


def signature(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def verify(acct: Account, payload: str, sig: Any) -> None:
    """-1102 without a signature, -1022 when it does not match."""
    if not sig or not isinstance(sig, str):
        raise SimError(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
    if not hmac.compare_digest(signature(acct.secret, payload), sig.lower()):
        raise SimError(-1022, "Signature for this request is not valid.")


def check_timestamp(params: Mapping[str, str], server_ms: int) -> None:
    """Rejected unless timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow (-1021)."""
    ts_raw = params.get("timestamp")
    if ts_raw in (None, ""):
        raise SimError(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
    try:
        ts = int(ts_raw)
    except ValueError:
        raise SimError(-1100, "Illegal characters found in parameter 'timestamp'; legal range is "
                              "'^[0-9]{1,20}$'.") from None
    rw_raw = params.get("recvWindow", "5000")
    try:
        rw = int(Decimal(rw_raw))
    except Exception:  # noqa: BLE001
        raise SimError(-1100, "Illegal characters found in parameter 'recvWindow'; legal range is "
                              "'^[0-9]{1,20}$'.") from None
    if rw <= 0 or rw > MAX_RECV_WINDOW:
        raise SimError(-1131, "recvWindow must be less than 60000")
    if ts >= server_ms + 1000:
        raise SimError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
    if server_ms - ts > rw:
        raise SimError(-1021, "Timestamp for this request is outside of the recvWindow.")


def api_key_account(exchange: Exchange, key: Any) -> Account:
    """The account of an API key (-2014 malformed / missing, -2015 unknown)."""
    if not key or not isinstance(key, str):
        raise SimError(-2014, "API-key format invalid.", status=401)
    acct = exchange.account(key)
    if acct is None:
        if len(key) > 100 or not key.isprintable():
            raise SimError(-2014, "API-key format invalid.", status=401)
        raise SimError(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
    return acct


def strip_signature(raw: str) -> str:
    if "signature=" not in raw:
        return raw
    return "&".join(p for p in raw.split("&") if not p.startswith("signature="))


def rest_account(exchange: Exchange, security: str, key: str | None, params: Mapping[str, str], query: str,
                 body: str, server_ms: int) -> Account | None:
    """REST: NONE -> no account; USER_STREAM -> the key's account; SIGNED -> also the query string plus
    body (signature removed) signed, and the timestamp rule."""
    if security == "NONE":
        return None
    acct = api_key_account(exchange, key)
    if security == "USER_STREAM":
        return acct
    verify(acct, strip_signature(query) + strip_signature(body), params.get("signature"))
    check_timestamp(params, server_ms)
    return acct


def ws_account(exchange: Exchange, params: Mapping[str, Any], server_ms: int) -> Account:
    """WebSocket API: the params, sorted by name, joined as a query string, signed."""
    acct = api_key_account(exchange, params.get("apiKey"))
    payload = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "signature")
    verify(acct, payload, params.get("signature"))
    check_timestamp({k: str(v) for k, v in params.items()}, server_ms)
    return acct
