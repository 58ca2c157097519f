"""Run history and health of one account: the ONE definition of "failing", "stale" and "balance
mismatch". Status conditions (controller/status.py) and metrics (telemetry.py) both read it; neither
keeps a copy of a rule.

Only reconciliation runs (initial sync, timer, annotation, stream reconnect, the emergency stop's
follow-up) count for health. Stale-order checks are not reconciliations: they do not compare the
account with the exchange, so they neither reset the failure count nor move the last success
(``record_stale`` only counts what they found and cancelled).

Pure: every method takes the time. ``to_dict``/``from_dict`` let the controller keep it in the
resource status across restarts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .config import RunReport

ORDER_KINDS = frozenset({"fill", "missing", "lost", "orphan", "unseen"})
BALANCE_KIND = "balance"
FAILING_AFTER = 3                 # consecutive failed runs above this -> "failing"
STALE_AFTER_MS = 10 * 60 * 1000   # no successful run for 10 minutes (or two intervals if longer)
STALE_INTERVALS = 2


def stale_after_ms(interval_s: float) -> int:
    """How long without a successful run before the account is stale."""
    return max(STALE_AFTER_MS, int(STALE_INTERVALS * float(interval_s) * 1000))


@dataclass(frozen=True, slots=True)
class Health:
    """The account's health at one instant (what the status conditions and the alerts say)."""
    consecutive_failures: int
    failing: bool                   # more than FAILING_AFTER reconciliation runs in a row failed
    last_success_ms: int            # 0: no successful run known
    stale: bool                     # no successful run for stale_after_ms
    stale_after_ms: int
    last_balance_mismatches: int    # balance discrepancies the last reconciliation run found
    balance_mismatch: bool

    def alerts(self) -> dict[str, bool]:
        return {"failing": self.failing, "balance_mismatch": self.balance_mismatch, "stale": self.stale}


@dataclass(slots=True)
class MonitoringState:
    last_run_ms: int = 0            # when the last reconciliation run finished (good or not)
    last_duration_ms: int = 0
    runs: int = 0                   # reconciliation runs finished
    failures: int = 0               # runs with an error or a stale section
    discrepancies_total: int = 0    # found by reconciliation runs and stale-order checks
    balance_mismatches: int = 0
    order_mismatches: int = 0       # fill, missing, lost, orphan
    stale_cancelled: int = 0        # stale owned orders the exchange confirmed cancelled
    stale_checks: int = 0           # stale-order checks finished (not reconciliations)
    consecutive_failures: int = 0
    last_success_ms: int = 0        # when the last fully successful reconciliation run finished
    last_balance_mismatches: int = 0
    since_ms: int = 0               # when monitoring started (the "no run" alert counts from here)
    by_kind: dict[str, int] = field(default_factory=dict)   # discrepancies found, by kind

    def _count(self, report: RunReport) -> dict[str, int]:
        counts = report.counts_by_kind()
        self.discrepancies_total += len(report.discrepancies)
        for kind, n in counts.items():
            self.by_kind[kind] = self.by_kind.get(kind, 0) + n
        self.balance_mismatches += counts.get(BALANCE_KIND, 0)
        self.order_mismatches += sum(n for k, n in counts.items() if k in ORDER_KINDS)
        return counts

    def record_run(self, report: RunReport) -> None:
        """A reconciliation run finished (good or not): the only thing that moves health."""
        self.runs += 1
        self.last_run_ms = report.finished_ms
        self.last_duration_ms = report.duration_ms
        counts = self._count(report)
        self.last_balance_mismatches = counts.get(BALANCE_KIND, 0)
        if report.ok:
            self.consecutive_failures = 0
            self.last_success_ms = report.finished_ms
        else:
            self.failures += 1
            self.consecutive_failures += 1

    def record_stale(self, report: RunReport) -> None:
        """A stale-order check finished: its findings and cancels are counted; health does not move."""
        self.stale_checks += 1
        self._count(report)
        self.stale_cancelled += max(0, int(report.cancelled))

    def restore_last_success(self, ms: int | None) -> None:
        """The last success known from before a restart (status.metrics.lastSuccessTime)."""
        if ms and ms > self.last_success_ms:
            self.last_success_ms = int(ms)

    def health(self, now_ms: int, interval_s: float) -> Health:
        """failing: more than FAILING_AFTER failed runs in a row; balance_mismatch: the last run found
        one; stale: no successful run for 10 minutes, or two intervals if that is longer (counted from
        the start of monitoring when no run has succeeded yet)."""
        window = stale_after_ms(interval_s)
        reference = self.last_success_ms or self.since_ms
        return Health(
            consecutive_failures=self.consecutive_failures,
            failing=self.consecutive_failures > FAILING_AFTER,
            last_success_ms=self.last_success_ms,
            stale=now_ms - reference > window,
            stale_after_ms=window,
            last_balance_mismatches=self.last_balance_mismatches,
            balance_mismatch=self.last_balance_mismatches > 0,
        )

    def alerts(self, now_ms: int, interval_s: float) -> dict[str, bool]:
        return self.health(now_ms, interval_s).alerts()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "MonitoringState":
        if not isinstance(data, dict):
            return cls()
        names = {f.name for f in fields(cls)} - {"by_kind"}
        state = cls(**{k: int(v) for k, v in data.items() if k in names and isinstance(v, (int, float))})
        kinds = data.get("by_kind")
        if isinstance(kinds, dict):
            state.by_kind = {str(k): int(v) for k, v in kinds.items() if isinstance(v, (int, float))}
        return state
