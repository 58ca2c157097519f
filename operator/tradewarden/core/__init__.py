"""The reconciliation core: a pure ledger and pure reconciliation functions (no kopf, no ccxt,
no clock, no I/O), driven per account by ``tradewarden.service.AccountRunner`` through a
``domain.Gateway``."""
from .config import AccountConfig, Discrepancy, EmergencyStopReport, Outcome, RunReport, Trigger
from .ledger import Ledger, LedgerFormatError
from .monitor import MonitoringState
from .reconcile import Plan, reconcile, resolve_fetches

__all__ = ["AccountConfig", "Ledger", "RunReport", "Discrepancy", "EmergencyStopReport",
           "LedgerFormatError", "MonitoringState", "Outcome", "Plan", "Trigger", "reconcile", "resolve_fetches"]
