"""USD-M listen keys (usdm-facts.md F1): one active key per account, POST returns the same key and
extends it, valid 60 min after creation / keepalive, unknown key -> -1125. A leaf: imports ``engine``."""
from __future__ import annotations

import secrets

from .engine import Account, SimError

LISTEN_KEY_TTL_MS = 60 * 60 * 1000


class ListenKeys(dict):
    """listenKey -> {"account": Account, "expires": ms}."""

    def for_account(self, acct: Account, now: int) -> str:
        """POST: the account's active key (extended), else a new one."""
        for key, info in self.items():
            if info["account"] is acct:
                info["expires"] = now + LISTEN_KEY_TTL_MS
                return key
        key = secrets.token_urlsafe(48)[:64]
        self[key] = {"account": acct, "expires": now + LISTEN_KEY_TTL_MS}
        return key

    def keepalive(self, acct: Account, given: str | None, now: int) -> str:
        """PUT: extend the account's live key (the given one, when named); -1125 when there is none."""
        for key, info in self.items():
            if info["account"] is acct and info["expires"] > now:
                if given and given != key:
                    break
                info["expires"] = now + LISTEN_KEY_TTL_MS
                return key
        raise SimError(-1125, "This listenKey does not exist.")

    def close(self, acct: Account) -> None:
        for key, info in list(self.items()):
            if info["account"] is acct:
                self.pop(key, None)

    def live(self, key: str, now: int) -> Account | None:
        info = self.get(key)
        return info["account"] if info is not None and info["expires"] > now else None

    def due(self, now: int) -> list[str]:
        return [k for k, info in self.items() if info["expires"] <= now]
