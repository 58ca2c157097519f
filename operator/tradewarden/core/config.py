"""Per-account settings of the core, and the reports it returns."""
from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Sequence

from tradewarden.domain import Order, Policy, dec

# unseen: an order born and finished inside a gap in the events, found in the venue's order history
KINDS = ("balance", "fill", "missing", "lost", "orphan", "position", "stale", "unseen")
SECTIONS = ("balances", "orders", "positions")
# Spot has no positions of its own: what a spot "position" would be (the base asset's holding) IS the
# balance, reconciled and reported once per asset (issue 19 item 5; docs/architecture.md "Spot positions").
SPOT_SECTIONS = ("balances", "orders")


class Trigger(enum.StrEnum):
    """What started a run (``status.lastReconciliation.trigger``, the Events' "(... run)")."""
    INITIAL = "initial"
    RESUME = "resume"                      # the initial sync of a ledger restored from status
    TIMER = "timer"
    ANNOTATION = "annotation"
    STREAM_RECONNECT = "stream-reconnect"
    EMERGENCY_STOP = "emergency-stop"
    STALE_CLEANUP = "stale-cleanup"        # the stale-order check


class Outcome(enum.StrEnum):
    """What was done about a discrepancy (``Discrepancy.action`` says it in words for humans)."""
    CORRECTED = "corrected"              # the ledger now holds the exchange's value
    ADOPTED = "adopted"                  # an order the ledger did not know is now in it
    DECLARED_LOST = "declared-lost"      # unknown to the exchange after bounded retries: kept, reported
    PENDING = "pending"                  # asked again next run (deferred, not found yet, query failed)
    CANCELLED = "cancelled"              # a stale owned order: the exchange confirmed the cancel
    CANCEL_ANSWERED = "cancel-answered"  # ... the cancel's answer was another final state (it filled first)
    CANCEL_UNKNOWN = "cancel-unknown"    # ... the cancel's outcome is unknown: re-checked next run
    CANCEL_FAILED = "cancel-failed"      # ... the cancel was refused: tried again next run
    REPORTED = "reported"                # ObserveOnly: what Correct would have done, not done

    @property
    def corrects_ledger(self) -> bool:
        return self in (Outcome.CORRECTED, Outcome.ADOPTED, Outcome.DECLARED_LOST)


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """What the core needs to know about one account (built from the TradingAccount spec).

    The first eleven fields are the shared contract; the rest are tuning knobs with safe
    defaults (not exposed in the resource)."""
    symbols: Sequence[str]
    policy: Policy = Policy.CORRECT
    balance_tolerance: Decimal = Decimal("0.0001")
    dust: Decimal = Decimal("1e-8")
    stale_timeout_s: int = 3600
    owned_prefix: str = "tw-"
    retention_s: int = 86400
    missing_retries: int = 3
    # ... and not before this long after the first not-found answer (answers can come seconds apart:
    # reconnect runs, annotation runs, stale re-checks).
    lost_after_s: float = 60.0
    interval_s: int = 300
    futures: bool = False
    # An active order with activity (creation, update, local change) this close to the
    # snapshot is not yet "missing": it may not have reached the venue's list.
    missing_grace_s: float = 5.0
    # Single-order queries and cancels per run (the rest wait for the next run).
    max_requests_per_run: int = 100
    # Finished orders kept at most, whatever the retention (memory bound).
    max_finished_orders: int = 20000
    # Stale cleanup also cancels protective orders (stop-loss / take-profit guarding a position).
    include_protective: bool = False
    # MarginAtRisk: the account's margin ratio (maintenance margin / margin balance) at or above this,
    # or a position's mark within this relative distance of its liquidation price.
    margin_ratio_threshold: Decimal = Decimal("0.8")
    liquidation_distance_threshold: Decimal = Decimal("0.05")
    # Set by the runner per run (not a setting): the user-data stream connected since (local ms), or None.
    stream_since_ms: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "symbols", tuple(self.symbols))
        set_(self, "policy", Policy(self.policy))
        set_(self, "balance_tolerance", dec(self.balance_tolerance))
        set_(self, "dust", dec(self.dust))
        set_(self, "margin_ratio_threshold", dec(self.margin_ratio_threshold))
        set_(self, "liquidation_distance_threshold", dec(self.liquidation_distance_threshold))
        if not self.symbols:
            raise ValueError("AccountConfig: at least one symbol is required")
        if self.balance_tolerance < 0 or self.dust < 0:
            raise ValueError("AccountConfig: balance_tolerance and dust must be >= 0")
        if self.lost_after_s < 0:
            raise ValueError("AccountConfig: lost_after_s must be >= 0")
        if self.missing_retries < 1:
            raise ValueError("AccountConfig: missing_retries must be >= 1")
        if self.stale_timeout_s < 1 or self.retention_s < 0 or self.interval_s < 1:
            raise ValueError("AccountConfig: stale_timeout_s >= 1, retention_s >= 0, interval_s >= 1")
        if self.max_requests_per_run < 1 or self.max_finished_orders < 0:
            raise ValueError("AccountConfig: max_requests_per_run >= 1, max_finished_orders >= 0")

    @property
    def sections(self) -> tuple[str, ...]:
        """The snapshot sections this account reconciles (spot: no positions section)."""
        return SECTIONS if self.futures else SPOT_SECTIONS

    @property
    def observe_only(self) -> bool:
        return self.policy is Policy.OBSERVE_ONLY

    @classmethod
    def from_spec(cls, spec: Any, *, futures: bool) -> "AccountConfig":
        """From a ``models.TradingAccountSpec``. Floats of the resource become Decimals as printed.
        ``futures``: the gateway's answer to "is this a derivatives account" (the one definition: it
        decides what the gateway fetches, so the core must agree with it)."""
        return cls(
            symbols=list(spec.symbols),
            policy=Policy(spec.policy),
            balance_tolerance=dec(spec.reconciliation.balanceTolerance),
            dust=dec(spec.reconciliation.dustThreshold),
            stale_timeout_s=spec.staleOrders.timeoutSeconds,
            owned_prefix=spec.staleOrders.ownedClientOrderIdPrefix,
            retention_s=spec.retention.finishedOrdersSeconds,
            missing_retries=spec.reconciliation.missingOrderRetries,
            lost_after_s=spec.reconciliation.lostAfterSeconds,
            interval_s=spec.reconciliation.intervalSeconds,
            futures=futures,
            include_protective=getattr(spec.staleOrders, "includeProtective", False),
            margin_ratio_threshold=dec(getattr(getattr(spec, "marginHealth", None), "marginRatioThreshold", "0.8")),
            liquidation_distance_threshold=dec(getattr(getattr(spec, "marginHealth", None),
                                                       "liquidationDistanceThreshold", "0.05")),
        )


def base_asset(symbol: str) -> str:
    """'BTC/USDT' -> 'BTC' (unified ccxt symbol)."""
    return symbol.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One difference between the ledger and the exchange, and what was done about it."""
    kind: str          # one of KINDS
    entity: str        # asset, client order id or symbol
    local: str
    exchange: str
    action: str        # what was done, in words
    outcome: Outcome   # what was done, as a type

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "entity": self.entity, "local": self.local,
                "exchange": self.exchange, "action": self.action, "outcome": str(self.outcome)}


@dataclass(slots=True)
class RunReport:
    """The summary of one run (reconciliation or stale cleanup)."""
    trigger: str
    started_ms: int
    finished_ms: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)
    stale_sections: list[str] = field(default_factory=list)
    error: str | None = None
    requests: int = 0      # single-order queries and cancels sent
    deferred: int = 0      # queries/cancels left for the next run (per-run request bound)
    purged: int = 0        # finished orders purged
    cancelled: int = 0     # stale owned orders the exchange confirmed cancelled
    released: int = 0      # orders on symbols no longer configured: asked once, out of tracking
    history_requests: int = 0   # order/trade history pages read to close a gap
    recent: int = 0        # changes too recent to judge (a live stream may still deliver them): judged next run
    # pre-existing orders taken into a ledger that had never listed orders (not discrepancies)
    adopted: list[Order] = field(default_factory=list)

    @property
    def duration_ms(self) -> int:
        return max(0, self.finished_ms - self.started_ms)

    @property
    def ok(self) -> bool:
        """A run is good when nothing failed: every section was reconciled."""
        return self.error is None and not self.stale_sections

    def counts_by_kind(self) -> dict[str, int]:
        return dict(Counter(d.kind for d in self.discrepancies))

    def to_dict(self, max_items: int = 50) -> dict[str, Any]:
        return {"trigger": self.trigger, "startedMs": self.started_ms, "finishedMs": self.finished_ms,
                "durationMs": self.duration_ms, "ok": self.ok, "error": self.error or "",
                "staleSections": list(self.stale_sections), "discrepancies": self.counts_by_kind(),
                "items": [d.to_dict() for d in self.discrepancies[:max_items]]}
