"""The TradingAccount resource (tradewarden.io/v1alpha1): the single source of truth.

The CRD in ``manifests/crd.yaml`` and the chart is generated from these models
(``tradewarden crd``); a test fails when the committed copy drifts. Every field has a
description so that ``kubectl explain ta.spec`` teaches the resource.

Only what Kubernetes 1.20 can enforce goes into the schema (types, enums, bounds, patterns,
required); the rest (e.g. symbols the exchange does not list) is validated by the operator
and reported as a condition.
"""
from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .domain import Policy

GROUP = "tradewarden.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TradingAccount"
PLURAL = "tradingaccounts"
SINGULAR = "tradingaccount"
SHORT_NAMES = ["ta"]
CATEGORIES = ["tradewarden"]

ANNOTATION_EMERGENCY_STOP = f"{GROUP}/emergency-stop"
ANNOTATION_RECONCILE_REQUESTED_AT = f"{GROUP}/reconcile-requested-at"

# Bounds that keep status well under the 1.5 MiB object limit however large the account.
MAX_STATUS_OPEN_ORDERS = 50
MAX_STATUS_BALANCES = 100
MAX_STATUS_POSITIONS = 100

DESCRIPTION = (
    "A TradingAccount declares one exchange account that tradewarden keeps honest: it syncs "
    "balances, open orders and positions, reconciles them periodically against the exchange, "
    "cancels its own stale orders and reports every discrepancy. Annotations: "
    f"'{ANNOTATION_EMERGENCY_STOP}' (value: the reason) opens the circuit breaker: every open order of "
    f"the whole account (every symbol, listed in spec or not) is cancelled and verified gone, and while it "
    f"stands every new order is cancelled (see spec.emergencyStop); remove it to resume. "
    f"'{ANNOTATION_RECONCILE_REQUESTED_AT}' (any new value) asks for a reconciliation now."
)


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", use_enum_values=True)


class CredentialsSecretRef(_Model):
    """Where the API credentials live."""
    name: Annotated[str, Field(
        description="Name of a Secret in the account's namespace holding the API key and secret.",
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
    apiKeyKey: Annotated[str, Field(
        description="Key in the Secret's data holding the API key.", min_length=1, max_length=253)] = "apiKey"
    secretKey: Annotated[str, Field(
        description="Key in the Secret's data holding the API secret.", min_length=1, max_length=253)] = "secret"


class ReconciliationSpec(_Model):
    """Periodic REST reconciliation of balances, orders and positions."""
    intervalSeconds: Annotated[int, Field(
        description="Seconds between reconciliation runs (minimum 30: reconciling more often burns "
                    "the exchange's rate limit). Runs of many accounts are spread with jitter.",
        ge=30, le=86400)] = 300
    balanceTolerance: Annotated[float, Field(
        description="Relative tolerance for balance and position comparisons (0.0001 = 0.01%).",
        ge=0, le=1)] = 0.0001
    dustThreshold: Annotated[float, Field(
        description="Absolute floor below which a balance or position difference is dust and ignored.",
        ge=0)] = 1e-8
    missingOrderRetries: Annotated[int, Field(
        description="Runs in which an active local order may be unknown to the exchange before it is "
                    "declared lost (reported, never silently dropped).",
        ge=1, le=100)] = 3
    quietSeconds: Annotated[float, Field(
        description="A timer run waits for a quiet moment: no user-data event for this many seconds (0: never "
                    "waits). Runs asked for by a reconnect, the annotation or an emergency stop never wait.",
        ge=0, le=600)] = 2
    maxDelaySeconds: Annotated[int, Field(
        description="... for at most this long after its slot, then runs anyway.", ge=0, le=3600)] = 30
    lostAfterSeconds: Annotated[int, Field(
        description="An order is declared lost only when, besides missingOrderRetries not-found runs, at least "
                    "this many seconds passed since the first not-found answer.",
        ge=0, le=86400)] = 60


class StaleOrdersSpec(_Model):
    """Cancellation of tradewarden-owned orders left open too long."""
    timeoutSeconds: Annotated[int, Field(
        description="An owned order open longer than this is cancelled (policy Correct) or reported.",
        ge=1, le=31536000)] = 3600
    checkIntervalSeconds: Annotated[int, Field(
        description="Seconds between stale-order checks.", ge=5, le=86400)] = 60
    ownedClientOrderIdPrefix: Annotated[str, Field(
        description="Only orders whose client order id starts with this prefix are owned and ever "
                    "cancelled as stale; all others are foreign and never cancelled.",
        min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._:-]+$")] = "tw-"
    includeProtective: Annotated[bool, Field(
        description="Also cancel owned protective orders (USD-M stop-loss / take-profit: conditional, "
                    "reduce-only or close-position orders). Off by default: cancelling one leaves a live "
                    "position unprotected.")] = False


class MarginHealthSpec(_Model):
    """USD-M margin health: when the MarginAtRisk condition (and alert) fires."""
    marginRatioThreshold: Annotated[float, Field(
        description="MarginAtRisk when the account's margin ratio (maintenance margin / margin balance; "
                    "Binance liquidates at 1.0) is at or above this.", ge=0.01, le=1)] = 0.8
    liquidationDistanceThreshold: Annotated[float, Field(
        description="MarginAtRisk when a position's mark price is within this fraction of its liquidation "
                    "price (0.05 = 5%).", ge=0, le=1)] = 0.05


class RetentionSpec(_Model):
    """How long finished orders are kept in the ledger."""
    finishedOrdersSeconds: Annotated[int, Field(
        description="Finished orders (filled, cancelled, expired, rejected, lost) older than this are "
                    "purged so memory stays bounded.",
        ge=0, le=31536000)] = 86400


class StreamSpec(_Model):
    """The exchange's user-data stream, which keeps state live between runs."""
    enabled: Annotated[bool, Field(
        description="Consume the user-data stream; every reconnect triggers a reconciliation.")] = True


class StopPositions(str, enum.Enum):
    KEEP = "Keep"
    FLATTEN = "Flatten"


class LabelSelectorRequirement(_Model):
    """A metav1.LabelSelectorRequirement."""
    key: Annotated[str, Field(description="The label key.", min_length=1, max_length=317)]
    operator: Annotated[Literal["In", "NotIn", "Exists", "DoesNotExist"], Field(
        description="In, NotIn, Exists or DoesNotExist.")]
    values: Annotated[list[Annotated[str, Field(max_length=63)]], Field(
        description="Values for In and NotIn (non-empty); empty for Exists and DoesNotExist.",
        max_length=100)] = []


class LabelSelector(_Model):
    """A metav1.LabelSelector (matchLabels and matchExpressions are ANDed)."""
    matchLabels: Annotated[dict[str, str], Field(description="Labels every selected workload carries.")] = {}
    matchExpressions: Annotated[list[LabelSelectorRequirement], Field(
        description="Label requirements every selected workload meets.", max_length=20)] = []


class EmergencyStopSpec(_Model):
    """What the emergency stop does beyond cancelling every open order of the whole account."""
    sweepIntervalSeconds: Annotated[int, Field(
        description="While the stop stands, the breaker lists every open order of the whole account this "
                    "often (and cancels what it finds), backing up the user-data stream, which cancels new "
                    "orders at once. Each sweep costs request weight from the shared budget (spot 80, "
                    "USD-M 80, +5 with Flatten).", ge=5, le=3600)] = 10
    scaleDown: Annotated[LabelSelector | None, Field(
        description="Deployments and StatefulSets of the account's namespace matching this label selector are "
                    "scaled to 0 through their scale subresource when the stop opens (and again at each sweep "
                    "while it stands) and restored to their previous replicas when it is released. The previous "
                    "replicas are kept in status.emergencyStop.scaledDown (the operator may write only the scale "
                    "subresource of a workload, never the workload itself). A selector that matches nothing, "
                    "or a workload the operator may not scale, is reported in the WorkloadsScaledDown "
                    "condition; the stop itself goes on.")] = None
    positions: Annotated[StopPositions, Field(
        description="'Keep' (default): only orders are cancelled. 'Flatten' (USD-M): after the cancels, every "
                    "position of the account is closed with reduce-only market orders and verified to be 0. "
                    "Spot accounts have no positions to flatten (holdings are balances, left untouched): "
                    "'Flatten' changes nothing there.")] = StopPositions.KEEP


class TradingAccountSpec(_Model):
    """The desired state: which account, and how tradewarden keeps it honest."""
    exchange: Annotated[str, Field(
        description="ccxt exchange id. Supported first: 'binance' (spot) and 'binanceusdm' (USD-M "
                    "futures); others work where ccxt declares the capabilities tradewarden needs.",
        min_length=1, max_length=64, pattern=r"^[a-z0-9]+$")]
    credentialsSecretRef: Annotated[CredentialsSecretRef, Field(
        description="The Secret with the account's API credentials.")]
    endpoint: Annotated[str | None, Field(
        description="Optional base URL replacing the exchange's REST and WebSocket hosts (keeping each "
                    "path), e.g. the tradewarden simulator or a testnet.",
        max_length=2048, pattern=r"^(https?|wss?)://[^\s]+$")] = None
    symbols: Annotated[list[Annotated[str, Field(
        pattern=r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}(:[A-Z0-9]{1,20})?$", max_length=64)]], Field(
        description="Unified ccxt symbols the account trades, e.g. 'BTC/USDT' (spot) or "
                    "'BTC/USDT:USDT' (USD-M).",
        min_length=1, max_length=500)]
    policy: Annotated[Policy, Field(
        description="'Correct' acts on the exchange: stale owned orders are cancelled. 'ObserveOnly' "
                    "detects and reports, and never writes to the exchange (an emergency stop still "
                    "applies: a human asked for it). Under both, the local ledger follows the exchange "
                    "after each run, so every difference is reported once.")] = Policy.CORRECT
    reconciliation: Annotated[ReconciliationSpec, Field(
        description="Periodic reconciliation settings.")] = ReconciliationSpec()
    staleOrders: Annotated[StaleOrdersSpec, Field(
        description="Stale-order cleanup settings.")] = StaleOrdersSpec()
    retention: Annotated[RetentionSpec, Field(
        description="Retention of finished orders.")] = RetentionSpec()
    stream: Annotated[StreamSpec, Field(
        description="User-data stream settings.")] = StreamSpec()
    emergencyStop: Annotated[EmergencyStopSpec, Field(
        description=f"What the '{ANNOTATION_EMERGENCY_STOP}' annotation does: the breaker's sweep interval, "
                    "the bots to scale to zero, the positions to close.")] = EmergencyStopSpec()
    marginHealth: Annotated[MarginHealthSpec, Field(
        description="USD-M margin health thresholds (MarginAtRisk).")] = MarginHealthSpec()


# ---- status ---------------------------------------------------------------------------------

class Condition(_Model):
    """A metav1.Condition: lastTransitionTime changes only when status flips."""
    type: Annotated[str, Field(description="Condition type, e.g. Ready.", max_length=316)]
    status: Annotated[Literal["True", "False", "Unknown"], Field(description="True, False or Unknown.")]
    reason: Annotated[str, Field(description="CamelCase reason.", max_length=1024)] = ""
    message: Annotated[str, Field(description="Human-readable detail.", max_length=32768)] = ""
    lastTransitionTime: Annotated[str | None, Field(
        description="When status last flipped (RFC 3339).")] = None
    observedGeneration: Annotated[int | None, Field(
        description="The spec generation the condition was computed for.")] = None


class BalanceStatus(_Model):
    """One asset's balance as last reconciled."""
    asset: Annotated[str, Field(description="Asset code, e.g. USDT.")]
    free: Annotated[str, Field(description="Free amount (decimal string).")]
    locked: Annotated[str, Field(description="Locked amount (decimal string).")]


class OrderStatus(_Model):
    """One open order."""
    clientOrderId: Annotated[str, Field(description="Client order id.")]
    orderId: Annotated[str, Field(description="The exchange's order id.")] = ""
    symbol: Annotated[str, Field(description="Unified symbol.")]
    side: Annotated[str, Field(description="buy or sell.")]
    price: Annotated[str, Field(description="Limit price (decimal string).")] = "0"
    amount: Annotated[str, Field(description="Original quantity (decimal string).")]
    filled: Annotated[str, Field(description="Executed quantity (decimal string).")]
    owned: Annotated[bool, Field(description="True when the client order id carries the owned prefix.")]
    createdAt: Annotated[str | None, Field(description="Creation time (RFC 3339).")] = None


class OpenOrdersStatus(_Model):
    """Open orders: the full count and a bounded list."""
    count: Annotated[int, Field(description="Number of open orders.")] = 0
    owned: Annotated[int, Field(description="Number of open orders owned by tradewarden.")] = 0
    truncated: Annotated[bool, Field(description="True when 'items' lists only the oldest orders.")] = False
    items: Annotated[list[OrderStatus], Field(
        description=f"Up to {MAX_STATUS_OPEN_ORDERS} open orders.")] = []


class PositionStatus(_Model):
    """A USD-M position (the venue's, signed; hedge mode: one per leg). Spot accounts have none: a spot holding is its balance."""
    symbol: Annotated[str, Field(description="Unified symbol.")]
    side: Annotated[str, Field(
        description="USD-M position side: BOTH (one-way mode) or the hedge-mode leg, LONG or SHORT.")] = "BOTH"
    amount: Annotated[str, Field(description="Signed amount (decimal string).")]
    entryPrice: Annotated[str, Field(description="Entry price (decimal string).")] = "0"
    protected: Annotated[bool | None, Field(
        description="USD-M: whether an open protective order (stop-loss / take-profit, reduce-only, "
                    "close-position) would close this position.")] = None
    markPrice: Annotated[str, Field(description="USD-M: mark price at the last reconciliation.")] = ""
    liquidationPrice: Annotated[str, Field(
        description="USD-M: liquidation price at the last reconciliation (absent when there is none).")] = ""
    liquidationDistance: Annotated[str, Field(
        description="USD-M: |mark - liquidation| / mark (0.05 = 5% from liquidation).")] = ""


class MarginAssetStatus(_Model):
    """One USD-M margin asset (reported, not compared: only the wallet balance is reconciled)."""
    asset: Annotated[str, Field(description="Margin asset, e.g. USDT.")]
    walletBalance: Annotated[str, Field(description="Wallet balance: transfers + realised PnL - fees.")]
    marginBalance: Annotated[str, Field(description="Wallet balance + unrealised PnL.")]
    unrealizedProfit: Annotated[str, Field(description="Unrealised PnL.")]
    availableBalance: Annotated[str, Field(description="Available for new orders.")]


class MarginStatus(_Model):
    """USD-M margin health at the last reconciliation."""
    marginRatio: Annotated[str, Field(
        description="Maintenance margin / margin balance (Binance liquidates at 1.0); absent when unknown.")] = ""
    marginRatioThreshold: Annotated[str, Field(description="MarginAtRisk threshold of the ratio.")] = ""
    liquidationDistanceThreshold: Annotated[str, Field(
        description="MarginAtRisk threshold of a position's distance to liquidation.")] = ""
    hedgeMode: Annotated[bool | None, Field(description="Position mode: true = hedge, false = one-way.")] = None
    atRisk: Annotated[bool, Field(description="True while MarginAtRisk is True.")] = False
    assets: Annotated[list[MarginAssetStatus], Field(description="Margin assets.")] = []


class LastReconciliation(_Model):
    """The last completed reconciliation run."""
    time: Annotated[str | None, Field(description="When the run finished (RFC 3339).")] = None
    durationMs: Annotated[int, Field(description="How long the run took, in milliseconds.")] = 0
    trigger: Annotated[str, Field(
        description="What started it: initial, timer, stream-reconnect, annotation, resume.")] = ""
    discrepancyCount: Annotated[int, Field(description="Discrepancies found in the run.")] = 0
    discrepancies: Annotated[dict[str, int], Field(
        description="Discrepancies by kind: balance, fill, missing, lost, orphan, position, stale.")] = {}
    delayedMs: Annotated[int, Field(
        description="How long a timer run waited for a quiet moment (no user-data event) after its slot.")] = 0
    delayReason: Annotated[str, Field(
        description="Why it ran then: quiet (a quiet moment came) or max-delay (the stream never paused).")] = ""
    adoptedOrders: Annotated[int, Field(
        description="Pre-existing open orders adopted by the run (first listing of a ledger that had none): "
                    "not discrepancies.")] = 0
    staleSections: Annotated[list[str], Field(
        description="Snapshot sections whose query failed (their local state was kept).")] = []
    error: Annotated[str, Field(description="Why the run failed, when it did.")] = ""


class AdoptionStatus(_Model):
    """The orders found open when the ledger first listed the account's orders (a new account, or no
    saved ledger): adopted into the ledger, reported here and by an OrdersAdopted Event, never as
    discrepancies (nothing believed differed)."""
    count: Annotated[int, Field(description="Orders adopted.")] = 0
    owned: Annotated[int, Field(description="Of which owned (client order id prefix).")] = 0
    time: Annotated[str | None, Field(description="When (RFC 3339).")] = None


class MetricsStatus(_Model):
    """Monitoring counters (also exported as OpenTelemetry metrics)."""
    runs: Annotated[int, Field(description="Completed reconciliation runs.")] = 0
    failures: Annotated[int, Field(description="Failed reconciliation runs.")] = 0
    discrepanciesTotal: Annotated[int, Field(description="Discrepancies found, all runs.")] = 0
    balanceMismatches: Annotated[int, Field(description="Balance mismatches found, all runs.")] = 0
    orderMismatches: Annotated[int, Field(description="Order mismatches (fill, missing, lost, orphan).")] = 0
    staleOrdersCancelled: Annotated[int, Field(description="Stale owned orders cancelled.")] = 0
    consecutiveFailures: Annotated[int, Field(description="Failed runs in a row.")] = 0
    lastSuccessTime: Annotated[str | None, Field(description="Last successful run (RFC 3339).")] = None


class StreamStatus(_Model):
    """The user-data stream."""
    state: Annotated[str, Field(description="connected, disconnected, reconnecting or disabled.")] = "disabled"
    since: Annotated[str | None, Field(description="When the state last changed (RFC 3339).")] = None
    reconnects: Annotated[int, Field(description="Reconnections since the operator started.")] = 0
    tradingSafe: Annotated[bool, Field(
        description="False while the stream is down: local state may lag the exchange, bots should pause.")] = False
    lastEventTime: Annotated[str | None, Field(description="Time of the last event received (RFC 3339).")] = None


class SymbolError(_Model):
    """Why something could not be done or verified on one symbol."""
    symbol: Annotated[str, Field(description="Unified symbol, 'listing' or 'remaining'.")]
    message: Annotated[str, Field(description="The error.")]


class ScaledWorkload(_Model):
    """A workload the emergency stop scaled to zero."""
    kind: Annotated[str, Field(description="Deployment or StatefulSet.")]
    name: Annotated[str, Field(description="Its name.")]
    replicas: Annotated[int, Field(description="Replicas before the stop (restored on release).")] = 0


class ScaleDownStatus(_Model):
    """The outcome of the last scaleDown (or restore) of the emergency stop."""
    problem: Annotated[str, Field(
        description="'' when every selected workload is at 0; else NoWorkloadMatched, ScaleForbidden or ScaleFailed.")] = ""
    message: Annotated[str, Field(description="What was scaled, or what went wrong.")] = ""


class EmergencyStopStatus(_Model):
    """The circuit breaker opened by the emergency-stop annotation."""
    active: Annotated[bool, Field(description="True while the annotation is set.")] = False
    reason: Annotated[str, Field(description="The annotation's value.")] = ""
    requestedBy: Annotated[str, Field(
        description="Who set the annotation, where the API tells (managedFields manager).")] = ""
    requestedAt: Annotated[str | None, Field(description="When the stop was first seen (RFC 3339).")] = None
    completedAt: Annotated[str | None, Field(
        description="When a listing of every open order of the whole account first returned none (RFC 3339).")] = None
    verifiedAt: Annotated[str | None, Field(
        description="The last time a whole-account listing returned none (the breaker's last good sweep).")] = None
    ordersCancelled: Annotated[int, Field(description="Orders the exchange reported cancelled by the stop.")] = 0
    breakerCancelled: Annotated[int, Field(
        description="Of them, orders placed while the stop stood, cancelled by the breaker (stream or sweep).")] = 0
    remaining: Annotated[int | None, Field(
        description="Open orders at the last successful whole-account listing; absent until one succeeded.")] = None
    openPositions: Annotated[int | None, Field(
        description="positions: Flatten: non-zero positions at the last successful listing.")] = None
    errors: Annotated[list[SymbolError], Field(
        description="What failed in the last attempt, per symbol (cancels, listing, position closes).")] = []
    failures: Annotated[int, Field(description="Failed attempts in a row (retried with capped backoff).")] = 0
    nextAttemptAt: Annotated[str | None, Field(description="When the next attempt or sweep is due.")] = None
    scaledDown: Annotated[list[ScaledWorkload], Field(
        description="Workloads of spec.emergencyStop.scaleDown scaled to 0 by the stop.")] = []
    scaleDown: Annotated[ScaleDownStatus | None, Field(
        description="How spec.emergencyStop.scaleDown went (also the WorkloadsScaledDown condition).")] = None
    state: Annotated[str, Field(
        description="Cancelling, Incomplete (retrying: see errors) or Completed (verified; the breaker holds).")] = ""


class CheckpointStatus(_Model):
    """Where the operator keeps what a restart needs (its ledger: active and chased orders, recent finished
    ones, fills, history cursors): a ConfigMap owned by this TradingAccount, written on its own cadence."""
    configMap: Annotated[str, Field(description="The ConfigMap's name (same namespace).")] = ""
    time: Annotated[str | None, Field(description="When it was last written (RFC 3339).")] = None
    orders: Annotated[int, Field(description="Orders it holds.")] = 0
    leftOut: Annotated[int, Field(
        description="Orders left out to stay under the API server's object size limit (a restart reads "
                    "the venue's history from the oldest of them instead).")] = 0
    bytes: Annotated[int, Field(description="Its compressed size.")] = 0
    error: Annotated[str, Field(description="Why the last write or read failed, when it did.")] = ""


class TradingAccountStatus(_Model):
    """The observed state, written by the operator."""
    model_config = ConfigDict(populate_by_name=True, extra="allow", use_enum_values=True)

    phase: Annotated[str, Field(
        description="Pending, Syncing, Ready, Degraded, Error or EmergencyStopped.")] = "Pending"
    observedGeneration: Annotated[int | None, Field(
        description="The spec generation last acted on.")] = None
    conditions: Annotated[list[Condition], Field(description="Standard conditions.")] = []
    balances: Annotated[list[BalanceStatus], Field(
        description=f"Non-zero balances (up to {MAX_STATUS_BALANCES}).")] = []
    openOrders: Annotated[OpenOrdersStatus, Field(description="Open orders.")] = OpenOrdersStatus()
    positions: Annotated[list[PositionStatus], Field(
        description=f"USD-M net positions (up to {MAX_STATUS_POSITIONS}); spot accounts have none (see balances).")] = []
    margin: Annotated[MarginStatus | None, Field(description="USD-M margin health.")] = None
    lastReconciliation: Annotated[LastReconciliation, Field(
        description="The last reconciliation run.")] = LastReconciliation()
    adoption: Annotated[AdoptionStatus, Field(
        description="Pre-existing orders adopted at the first sync.")] = AdoptionStatus()
    lastHandledReconcileAt: Annotated[str, Field(
        description=f"The last value of the {ANNOTATION_RECONCILE_REQUESTED_AT} annotation handled.")] = ""
    metrics: Annotated[MetricsStatus, Field(description="Monitoring counters.")] = MetricsStatus()
    stream: Annotated[StreamStatus, Field(description="The user-data stream.")] = StreamStatus()
    emergencyStop: Annotated[EmergencyStopStatus, Field(
        description="The emergency stop.")] = EmergencyStopStatus()
    checkpoint: Annotated[CheckpointStatus, Field(
        description="The restart checkpoint (the ledger, kept in a ConfigMap of its own, not here).")] = \
        CheckpointStatus()


class TradingAccount(_Model):
    """A whole TradingAccount object (metadata kept as a plain mapping)."""
    model_config = ConfigDict(populate_by_name=True, extra="ignore", use_enum_values=True)
    apiVersion: Literal["tradewarden.io/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["TradingAccount"] = KIND  # type: ignore[assignment]
    metadata: dict[str, Any] = {}
    spec: TradingAccountSpec
    status: TradingAccountStatus | None = None
