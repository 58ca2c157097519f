"""Monitoring state of one account (the seed's ReconciliationMetrics) and its alert conditions.

Pure: every method takes the time. ``to_dict``/``from_dict`` let the controller keep it in the
resource status across restarts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .config import RunReport

ORDER_KINDS = frozenset({"fill", "missing", "lost", "orphan", "unseen"})
FAILING_AFTER = 3                 # consecutive failed runs above this -> "failing"
STALE_AFTER_MS = 10 * 60 * 1000   # no completed run for 10 minutes (or two intervals if longer)


@dataclass(slots=True)
class MonitoringState:
    last_run_ms: int = 0            # when the last reconciliation run finished (good or not)
    last_duration_ms: int = 0
    runs: int = 0                   # reconciliation runs finished
    failures: int = 0               # runs with an error or a stale section
    discrepancies_total: int = 0
    balance_mismatches: int = 0
    order_mismatches: int = 0       # fill, missing, lost, orphan
    stale_cancelled: int = 0        # stale owned orders the exchange confirmed cancelled
    consecutive_failures: int = 0
    last_success_ms: int = 0        # when the last fully successful run finished
    last_balance_mismatches: int = 0
    since_ms: int = 0               # when monitoring started (the "no run" alert counts from here)

    def record_run(self, report: RunReport) -> None:
        self.runs += 1
        self.last_run_ms = report.finished_ms
        self.last_duration_ms = report.duration_ms
        counts = report.counts_by_kind()
        self.discrepancies_total += len(report.discrepancies)
        self.last_balance_mismatches = counts.get("balance", 0)
        self.balance_mismatches += self.last_balance_mismatches
        self.order_mismatches += sum(n for k, n in counts.items() if k in ORDER_KINDS)
        if report.ok:
            self.consecutive_failures = 0
            self.last_success_ms = report.finished_ms
        else:
            self.failures += 1
            self.consecutive_failures += 1

    def record_stale(self, cancelled: int) -> None:
        self.stale_cancelled += cancelled

    def alerts(self, now_ms: int, interval_s: float) -> dict[str, bool]:
        """failing: more than 3 failed runs in a row; balance_mismatch: the last run found one;
        stale: no successful run for 10 minutes, or two intervals if that is longer (counted from
        the start of monitoring when no run has succeeded yet)."""
        window = max(STALE_AFTER_MS, int(2 * interval_s * 1000))
        reference = self.last_success_ms or self.since_ms
        return {
            "failing": self.consecutive_failures > FAILING_AFTER,
            "balance_mismatch": self.last_balance_mismatches > 0,
            "stale": now_ms - reference > window,
        }

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "MonitoringState":
        if not isinstance(data, dict):
            return cls()
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in names and isinstance(v, (int, float))})
