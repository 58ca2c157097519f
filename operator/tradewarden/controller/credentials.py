"""Reading an account's API credentials from its Secret.

Errors carry a CamelCase reason and a message naming the Secret and the key, never a value.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..redact import scrub
from .vocabulary import ProblemReason


@dataclass(frozen=True)
class Credentials:
    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    resource_version: str = ""

    def __repr__(self) -> str:  # never the values
        return f"Credentials(resource_version={self.resource_version!r})"

    def redact(self, text: str) -> str:
        """``text`` with the key, the secret, signatures and query strings masked (``redact.scrub``)."""
        return scrub(text, (self.secret, self.api_key))


class CredentialsError(Exception):
    """A problem with the Secret itself (not with the exchange's opinion of its content)."""

    def __init__(self, reason: ProblemReason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_secret(secret: Mapping[str, Any] | None, *, name: str, api_key_key: str, secret_key: str) -> Credentials:
    """Credentials from a Secret as the API returns it (``data`` base64, or ``stringData``)."""
    if secret is None:
        raise CredentialsError(ProblemReason.SECRET_NOT_FOUND,
                               f"Secret {name!r} not found in the account's namespace")
    data = secret.get("data") or {}
    string_data = secret.get("stringData") or {}
    values: dict[str, str] = {}
    for key in (api_key_key, secret_key):
        if key in data and data[key] is not None:
            try:
                values[key] = base64.b64decode(data[key], validate=True).decode("utf-8").strip()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise CredentialsError(ProblemReason.SECRET_KEY_INVALID,
                                       f"Secret {name!r} key {key!r} is not valid base64-encoded UTF-8") from None
        elif key in string_data and string_data[key] is not None:
            values[key] = str(string_data[key]).strip()
    missing = [k for k in (api_key_key, secret_key) if k not in values]
    if missing:
        present = sorted(set(data) | set(string_data))
        raise CredentialsError(
            ProblemReason.SECRET_KEY_MISSING,
            f"Secret {name!r} has no key {', '.join(repr(k) for k in missing)} "
            f"(keys present: {', '.join(present) or 'none'}; see spec.credentialsSecretRef)")
    empty = [k for k in (api_key_key, secret_key) if not values[k]]
    if empty:
        raise CredentialsError(ProblemReason.SECRET_KEY_EMPTY,
                               f"Secret {name!r} key {', '.join(repr(k) for k in empty)} is empty")
    rv = str((secret.get("metadata") or {}).get("resourceVersion") or "")
    return Credentials(api_key=values[api_key_key], secret=values[secret_key], resource_version=rv)


async def read_credentials(kube: Any, namespace: str, ref: Mapping[str, Any]) -> Credentials:
    """Read and parse the Secret named by ``spec.credentialsSecretRef``."""
    name = ref.get("name", "")
    try:
        secret = await kube.get_secret(namespace, name)
    except CredentialsError:
        raise
    except Exception as exc:  # noqa: BLE001 - API trouble: a reason, retried with backoff
        status = getattr(exc, "status", None)
        if status == 403:
            raise CredentialsError(ProblemReason.SECRET_FORBIDDEN,
                                   f"the operator may not read Secret {name!r} (403 Forbidden: check RBAC)") from None
        raise CredentialsError(ProblemReason.SECRET_READ_FAILED,
                               f"reading Secret {name!r} failed: {type(exc).__name__} {status or ''}".strip()) from None
    return parse_secret(secret, name=name, api_key_key=ref.get("apiKeyKey", "apiKey"),
                        secret_key=ref.get("secretKey", "secret"))
