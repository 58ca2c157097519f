"""The service layer: the I/O around the pure core. ``AccountRunner`` drives one account's ledger
through a ``domain.Gateway`` (snapshot -> core.reconcile -> targeted queries and cancels)."""
from .runner import AccountRunner

__all__ = ["AccountRunner"]
