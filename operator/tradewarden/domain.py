"""The domain vocabulary shared by every layer of tradewarden.

Plain, immutable data: no kopf, no ccxt, no clock. Quantities are ``Decimal`` (never float:
a reconciler that rounds is a reconciler that invents discrepancies). Times are integer
milliseconds since the epoch, as exchanges report them.

Layers:
- ``tradewarden.gateway`` translates an exchange (through ccxt) into these types and the
  error vocabulary below;
- ``tradewarden.core`` is pure: (ledger, snapshot, policy, now) -> discrepancies and actions;
- ``tradewarden.controller`` (kopf) parses the resource, drives the core, writes status.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import AsyncIterator, Generic, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

ZERO = Decimal(0)


def dec(value: object) -> Decimal:
    """Decimal from an exchange value (str, int, float, Decimal or None -> 0), exactly as printed."""
    if value is None or value == "":
        return ZERO
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


class OrderState(str, enum.Enum):
    OPEN = "open"                      # accepted, nothing filled
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"              # may carry fills (partially filled, then cancelled)
    EXPIRED = "expired"
    REJECTED = "rejected"
    LOST = "lost"                      # neither we nor the exchange can find it after bounded retries
    # A USD-M algo (conditional) order the Algo Service has placed in the matching engine: its child, a
    # regular order (``Order.child_id``), now carries the quantity; the parent itself is no longer open
    # (usdm-facts.md D4: TRIGGERED = "successfully placed in the matching engine").
    TRIGGERED = "triggered"

    @property
    def active(self) -> bool:
        return self in (OrderState.OPEN, OrderState.PARTIALLY_FILLED)

    @property
    def finished(self) -> bool:
        return not self.active


class Side(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"


def is_owned(client_order_id: str, prefix: str) -> bool:
    """Ownership, the one rule: an order is tradewarden's (a candidate for a stale cancel) when its
    client order id starts with the account's owned prefix; every other order is foreign."""
    return bool(prefix) and client_order_id.startswith(prefix)


class PositionSide(str, enum.Enum):
    """Binance's position side: BOTH in one-way mode, LONG / SHORT legs in hedge mode (usdm-facts.md B2)."""
    BOTH = "BOTH"
    LONG = "LONG"
    SHORT = "SHORT"


def position_key(symbol: str, side: "PositionSide | str" = "BOTH") -> str:
    """The one key of a position: (symbol, side). One-way positions keep the bare symbol."""
    side = PositionSide(side)
    return symbol if side is PositionSide.BOTH else f"{symbol} {side.value}"


class Policy(str, enum.Enum):
    CORRECT = "Correct"          # correct local state and act on the exchange (stale cancels)
    OBSERVE_ONLY = "ObserveOnly"  # detect and report; never write to the exchange


@dataclass(frozen=True, slots=True)
class Order:
    """One order as the exchange (or the ledger) knows it."""
    client_order_id: str
    exchange_order_id: str
    symbol: str                  # unified ccxt symbol, e.g. "BTC/USDT" or "BTC/USDT:USDT"
    side: Side
    type: str                    # "limit", "market", "limit_maker", "stop", ...
    price: Decimal
    amount: Decimal              # original quantity
    filled: Decimal
    state: OrderState
    created_ms: int
    updated_ms: int              # the exchange's last update time of this order
    algo: bool = False           # USD-M conditional order living in the Algo Service
    # USD-M: an algo parent, once triggered, names its child regular order (ALGO_UPDATE ``ai`` / REST
    # ``actualOrderId``); a child names its parent's algo id once the link is known (usdm-facts.md D5)
    child_id: str = ""
    parent_id: str = ""
    # a stop-loss / take-profit that guards a position: a conditional order, reduce-only, close-position,
    # or a hedge-mode order that closes its leg (LONG+SELL, SHORT+BUY) (usdm-facts.md C3, D2)
    protective: bool = False
    position_side: PositionSide = PositionSide.BOTH

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled


@dataclass(frozen=True, slots=True)
class Fill:
    """One trade (execution) of an order, from the venue's trade history (spot myTrades, USD-M userTrades)."""
    trade_id: str
    exchange_order_id: str
    symbol: str
    price: Decimal
    amount: Decimal
    fee: Decimal
    fee_asset: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class Balance:
    asset: str
    free: Decimal
    locked: Decimal
    updated_ms: int = 0

    @property
    def total(self) -> Decimal:
        return self.free + self.locked


@dataclass(frozen=True, slots=True)
class Position:
    """A position. Spot positions are derived from base-asset holdings by the core; USD-M positions
    come from the venue: one-way mode one signed BOTH row per symbol, hedge mode a LONG and a SHORT leg
    (usdm-facts.md B2), so a position is keyed by (symbol, side)."""
    symbol: str
    amount: Decimal              # signed: > 0 long, < 0 short
    entry_price: Decimal = ZERO
    updated_ms: int = 0
    side: PositionSide = PositionSide.BOTH

    @property
    def key(self) -> str:
        return position_key(self.symbol, self.side)


@dataclass(frozen=True, slots=True)
class AssetMargin:
    """One USD-M margin asset's figures (usdm-facts.md A4/A6). Only ``wallet`` is compared with the
    stream (it is ACCOUNT_UPDATE's ``wb``); the others include unrealised PnL and are reported."""
    asset: str
    wallet: Decimal
    margin_balance: Decimal       # wallet + unrealised PnL
    unrealized_pnl: Decimal
    available: Decimal
    maint_margin: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class PositionRisk:
    """One USD-M position's risk figures from positionRisk (usdm-facts.md B2)."""
    symbol: str
    side: PositionSide
    amount: Decimal
    mark_price: Decimal
    liquidation_price: Decimal    # 0 when the venue computes none
    unrealized_pnl: Decimal

    @property
    def key(self) -> str:
        return position_key(self.symbol, self.side)

    @property
    def liquidation_distance(self) -> Decimal | None:
        """|mark - liquidation| / mark; None when there is no liquidation price (or no mark)."""
        if self.liquidation_price <= 0 or self.mark_price <= 0:
            return None
        return abs(self.mark_price - self.liquidation_price) / self.mark_price


@dataclass(frozen=True, slots=True)
class MarginSummary:
    """USD-M account margin, from the snapshot's own queries (account + positionRisk)."""
    assets: Mapping[str, AssetMargin]
    total_maint_margin: Decimal
    total_margin_balance: Decimal
    positions: Sequence[PositionRisk] = ()
    hedge_mode: bool | None = None   # None: not known (the position-mode query failed)

    @property
    def margin_ratio(self) -> Decimal | None:
        """Binance's account margin ratio: maintenance margin / margin balance (liquidation at 100%)."""
        if self.total_margin_balance <= 0:
            return None if self.total_maint_margin <= 0 else Decimal("Infinity")
        return self.total_maint_margin / self.total_margin_balance


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Section(Generic[T]):
    """One section of a snapshot: its value, or the error that kept it from us.
    A failed section never discards the others."""
    value: T | None = None
    error: "GatewayError | None" = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the exchange says, fetched concurrently, section by section."""
    taken_ms: int       # when, on the venue's clock (our clock corrected by the measured offset)
    balances: Section[Mapping[str, Balance]]
    open_orders: Section[Sequence[Order]]
    positions: Section[Sequence[Position]]   # USD-M: the venue's; spot: empty list (derived by the core)
    margin: "MarginSummary | None" = None    # USD-M: reported figures (never compared)


# ---- stream events -------------------------------------------------------------------------

class ConnectionState(str, enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTED = "reconnected"      # after a gap: events may have been lost, reconcile now


@dataclass(frozen=True, slots=True)
class OrderEvent:
    order: Order
    event_ms: int
    fill: "Fill | None" = None       # the trade an execution event carries (execution type TRADE)


@dataclass(frozen=True, slots=True)
class BalanceEvent:
    balances: Mapping[str, Balance]  # only the assets the event carries
    event_ms: int


@dataclass(frozen=True, slots=True)
class PositionEvent:
    positions: Sequence[Position]
    event_ms: int


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    state: ConnectionState
    reason: str = ""
    event_ms: int = 0


StreamEvent = OrderEvent | BalanceEvent | PositionEvent | ConnectionEvent


# ---- the gateway's error vocabulary ---------------------------------------------------------

class GatewayError(Exception):
    """Base of the small error vocabulary the core acts on. Messages never carry secrets."""
    retryable = False


class Temporary(GatewayError):
    """Network trouble, a 5xx on a read, a timeout: try again later."""
    retryable = True


class RateLimited(Temporary):
    """429/418 or our own budget: nothing may be sent before ``retry_after`` seconds."""
    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class AuthenticationFailed(GatewayError):
    pass


class OrderNotFound(GatewayError):
    pass


class UnknownOutcome(GatewayError):
    """A write whose result is not known (5xx or timeout on a cancel): query, never assume."""
    retryable = True


class Invalid(GatewayError):
    """Bad symbol, bad parameters: retrying the same request will not help."""


class SymbolNotListed(Invalid):
    """A symbol of the account that the exchange does not list ("unknown symbol: X/Y")."""


class Unsupported(GatewayError):
    """The exchange lacks a capability tradewarden needs ("unsupported: <capability>")."""


# ---- what the core needs from an exchange ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class AccountListing:
    """Every open order of the whole account, whatever its symbol (USD-M: algo orders too), and the
    account's non-zero positions when asked for (USD-M; spot has none). Only ever built from a
    listing that succeeded in full."""
    orders: Sequence[Order]
    positions: Sequence[Position] = ()


@dataclass(frozen=True, slots=True)
class SymbolsResult:
    """The outcome of a write per symbol (cancels, position closes): what the exchange confirmed,
    and per symbol the error of each request that failed (never silently dropped)."""
    done: Sequence = ()                                   # Orders cancelled / Positions closed
    errors: Mapping[str, str] = field(default_factory=dict)
    retry_after_s: float = 0.0                            # the longest Retry-After among the errors


@runtime_checkable
class Gateway(Protocol):
    """The one layer that talks to an exchange (implemented over ccxt in tradewarden.gateway): every
    call the service and the controller make on it, and nothing else (no ``hasattr`` past it)."""

    exchange_id: str
    futures: bool          # a derivatives (USD-M) account: what it fetches, and the core's config, depend on it
    rest_family: str       # its REST API's rate-budget family ("api" spot, "fapi" USD-M)

    async def start(self, symbols: Sequence[str] = ()) -> None:
        """Load markets, check every symbol is listed (SymbolNotListed) and the credentials work."""

    async def snapshot(self, symbols: Sequence[str]) -> Snapshot: ...

    async def fetch_order(self, symbol: str, exchange_order_id: str = "", client_order_id: str = "", *,
                          algo: bool = False) -> Order:
        """The exchange's current state of one order (``algo``: a USD-M conditional order, which lives in
        the Algo Service); raises OrderNotFound when it does not know it."""

    async def cancel_order(self, symbol: str, exchange_order_id: str = "", client_order_id: str = "", *,
                           algo: bool = False) -> Order | None:
        """Cancel one order. Raises OrderNotFound, UnknownOutcome, ..."""

    # the emergency stop (core/estop.py): the whole account, whatever spec.symbols says
    async def list_account(self, positions: bool = False) -> AccountListing:
        """Every open order of the account on every symbol (and its positions); raises on any failure."""

    async def cancel_symbols(self, symbols: Sequence[str], algo_symbols: Sequence[str] = (),
                             listed: Sequence[Order] = ()) -> SymbolsResult:
        """Cancel every open order of each symbol; per-symbol errors in the result."""

    async def close_positions(self, positions: Sequence[Position]) -> SymbolsResult:
        """Close each position with a reduce-only market order (USD-M)."""

    def stream(self, symbols: Sequence[str]) -> AsyncIterator[StreamEvent]:
        """User-data events in order, with ConnectionEvent transitions; reconnects by itself."""

    async def order_history(self, symbol: str, *, since_ms: int = 0, until_ms: int = 0, from_order_id: str = "",
                            limit: int = 1000) -> Sequence[Order]:
        """One page of the symbol's order history (spot/USD-M allOrders), oldest first: orders created in
        [since_ms, until_ms], or with exchange order id >= ``from_order_id`` (the next page's cursor)."""

    async def trade_history(self, symbol: str, *, since_ms: int = 0, until_ms: int = 0, from_trade_id: str = "",
                            limit: int = 1000) -> Sequence[Fill]:
        """One page of the symbol's trades (spot myTrades, USD-M userTrades), oldest first: in
        [since_ms, until_ms], or with trade id >= ``from_trade_id`` (never both: the venue refuses it)."""

    async def close(self) -> None: ...
