"""The reconciliation core: a pure ledger and pure reconciliation functions (no kopf, no ccxt,
no clock), driven per account by ``AccountRunner`` through a ``domain.Gateway``."""
from .config import AccountConfig, Discrepancy, EmergencyStopReport, RunReport
from .ledger import Ledger, LedgerFormatError
from .monitor import MonitoringState
from .reconcile import Plan, reconcile, resolve_fetches
from .runner import AccountRunner

__all__ = ["AccountConfig", "Ledger", "AccountRunner", "RunReport", "Discrepancy", "EmergencyStopReport",
           "LedgerFormatError", "MonitoringState", "Plan", "reconcile", "resolve_fetches"]
