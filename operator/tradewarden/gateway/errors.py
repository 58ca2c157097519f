"""ccxt exceptions -> tradewarden's error vocabulary, with every secret scrubbed.

ccxt puts the full request URL (query string with ``signature=`` and ``timestamp=``) into the text
of HTTP-status and network errors, the body of the venue's answer into the rest, and logs request
headers (``X-MBX-APIKEY``) at DEBUG. Nothing of that may reach a log line, a status field or an
exception message, so every text that leaves this package goes through :func:`scrub`.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable

from .ccxt_import import install as _lazy_ccxt

_lazy_ccxt()       # before the first import of ccxt: only the exchanges in use are loaded

import ccxt

from ..redact import REDACTED, scrub  # noqa: F401 - re-exported: the gateway's texts are scrubbed here
from ..domain import (AuthenticationFailed, GatewayError, Invalid, OrderNotFound, RateLimited, Temporary,
                      UnknownOutcome, Unsupported)

_INVALID_KEY = re.compile(r'"code"\s*:\s*-201[45]\b')


class ScrubFilter(logging.Filter):
    """Rewrites a record's message so it carries no secret; attached to the loggers ccxt writes to."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep only its format string
            message = str(record.msg)
        record.msg = scrub(message, self.secrets)
        record.args = None
        return True


def _http_status(exc: BaseException) -> int | None:
    m = re.search(r"\b(5\d\d|429|418|403|404)\b", str(exc))
    return int(m.group(1)) if m else None


def map_error(exc: BaseException, *, write: bool = False, secrets: Iterable[str] = (),
              retry_after: float | None = None, what: str = "") -> GatewayError:
    """The domain error for a ccxt (or network) exception.

    ``write``: the request may have changed state at the venue (a cancel): a 5xx or timeout then
    means the outcome is unknown, never "it failed".
    """
    if isinstance(exc, GatewayError):
        return exc
    prefix = f"{what}: " if what else ""
    text = prefix + scrub(f"{type(exc).__name__}: {exc}", secrets)
    if _INVALID_KEY.search(str(exc)):
        # -2014/-2015 "Invalid API-key, IP, or permissions": ccxt turns -2015 into DDoSProtection once an
        # instance has authenticated once (its guess: a temporary ban). For an operator it is what a
        # revoked or rotated key looks like: a credentials problem, never a rate limit to wait out.
        return AuthenticationFailed(text)
    if isinstance(exc, ccxt.DDoSProtection) or isinstance(exc, ccxt.RateLimitExceeded):
        return RateLimited(text, retry_after if retry_after is not None else 60.0)
    if isinstance(exc, ccxt.AuthenticationError) or isinstance(exc, ccxt.PermissionDenied) \
            or isinstance(exc, ccxt.AccountSuspended):
        return AuthenticationFailed(text)
    if isinstance(exc, ccxt.OrderNotFound):
        return OrderNotFound(text)
    if isinstance(exc, ccxt.InvalidNonce):
        # clock skew outside recvWindow: the request was rejected before it was processed
        return Temporary(text)
    if isinstance(exc, ccxt.NotSupported):
        return Unsupported(text)
    if isinstance(exc, (ccxt.BadSymbol, ccxt.BadRequest, ccxt.InvalidOrder, ccxt.ArgumentsRequired,
                        ccxt.InsufficientFunds)):
        return Invalid(text)
    if isinstance(exc, (ccxt.NetworkError, TimeoutError, OSError)):
        # ExchangeNotAvailable (5xx, 403, connection refused), RequestTimeout (504, client timeout)
        return UnknownOutcome(text) if write else Temporary(text)
    if isinstance(exc, ccxt.OperationFailed):
        return UnknownOutcome(text) if write else Temporary(text)
    if isinstance(exc, ccxt.ExchangeError):
        status = _http_status(exc)
        if status is not None and status >= 500:
            return UnknownOutcome(text) if write else Temporary(text)
        return Invalid(text)
    return UnknownOutcome(text) if write else Temporary(text)
