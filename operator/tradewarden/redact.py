"""Secret redaction, the one definition: every text that may reach a log line, a status field, an
Event or an exception goes through :func:`scrub` (no ccxt, no I/O: the controller uses it too).

ccxt puts the full request URL (query string with ``signature=`` and ``timestamp=``) into the text of
HTTP-status and network errors, and WebSocket URLs carry listen keys; the account's own key and
secret are masked wherever they appear.
"""
from __future__ import annotations

import re
from typing import Iterable

_URL_QUERY = re.compile(r"((?:https?|wss?)://[^\s?\"'<>]+)\?[^\s\"'<>]*")
_SIG = re.compile(r"(signature|listenKey|apiKey|X-MBX-APIKEY)([\"']?\s*[=:]\s*[\"']?)[A-Za-z0-9%+/=_\-]+",
                  re.IGNORECASE)
_LISTENKEY_PATH = re.compile(r"(/ws/)[A-Za-z0-9]{20,}")
REDACTED = "<redacted>"


def scrub(text: object, secrets: Iterable[str] = ()) -> str:
    """``text`` without query strings, signatures, listen keys and the given secrets."""
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, REDACTED)
    out = _URL_QUERY.sub(lambda m: m.group(1) + "?" + REDACTED, out)
    out = _SIG.sub(lambda m: m.group(1) + m.group(2) + REDACTED, out)
    out = _LISTENKEY_PATH.sub(lambda m: m.group(1) + REDACTED, out)
    if len(out) > 500:
        out = out[:500] + "..."
    return out
