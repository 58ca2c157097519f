"""The controller's small typed vocabulary: what its layers say to each other (never English
sentences). Values are the strings status and metrics show, so a member prints as before."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

from .. import domain


class StreamState(enum.StrEnum):
    """``status.stream.state``."""
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    DISABLED = "disabled"          # spec.stream.enabled is false
    STOPPED = "stopped"            # stopped by the emergency stop


class RunKind(enum.StrEnum):
    """What the runner is asked to do."""
    INITIAL = "initial"            # the initial sync (or the resume of a saved ledger)
    RECONCILE = "reconcile"
    STALE = "stale"                # the stale-order check


class ProblemReason(enum.StrEnum):
    """Why an account cannot be served (the reason of Ready/Synced/CredentialsValid)."""
    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_EXCHANGE = "UnknownExchange"
    SYMBOL_NOT_LISTED = "SymbolNotListed"
    UNSUPPORTED_EXCHANGE = "UnsupportedExchange"
    ENDPOINT_UNREACHABLE = "EndpointUnreachable"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    GATEWAY_ERROR = "GatewayError"
    INTERNAL_ERROR = "InternalError"
    # the Secret's (controller.credentials.CredentialsError.reason)
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    SECRET_KEY_EMPTY = "SecretKeyEmpty"
    SECRET_KEY_INVALID = "SecretKeyInvalid"
    SECRET_FORBIDDEN = "SecretForbidden"
    SECRET_READ_FAILED = "SecretReadFailed"


@dataclass(frozen=True)
class Problem:
    """Why the account cannot be served right now (shown on Ready and the matching condition)."""
    reason: str                 # a ProblemReason
    message: str
    credentials: bool = False   # a credentials problem: CredentialsValid=False


def gateway_problem(exc: BaseException, redact: Callable[[str], str]) -> Problem:
    """A gateway start failure as a condition reason and message, by the error's type."""
    text = redact(str(exc)) or type(exc).__name__
    if isinstance(exc, domain.AuthenticationFailed):
        return Problem(ProblemReason.AUTHENTICATION_FAILED, f"the exchange rejected the API credentials: {text}", True)
    if isinstance(exc, domain.SymbolNotListed):
        return Problem(ProblemReason.SYMBOL_NOT_LISTED, f"the exchange does not list a symbol of spec.symbols: {text}")
    if isinstance(exc, domain.Invalid):
        return Problem(ProblemReason.INVALID_SPEC, text)
    if isinstance(exc, domain.Unsupported):
        return Problem(ProblemReason.UNSUPPORTED_EXCHANGE, text)
    if isinstance(exc, (domain.Temporary, TimeoutError, OSError)):
        return Problem(ProblemReason.ENDPOINT_UNREACHABLE, f"the exchange could not be reached: {text}")
    return Problem(ProblemReason.GATEWAY_ERROR, f"{type(exc).__name__}: {text}")
