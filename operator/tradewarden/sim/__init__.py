"""tradewarden's Binance-compatible exchange simulator (spot + USD-M, REST + user-data WebSockets)."""
from .client import point_ccxt_at, sim_ccxt
from .engine import SPOT, USDM, Account, Exchange, Order, SimError
from .server import Simulator

__all__ = ["Simulator", "point_ccxt_at", "sim_ccxt", "Account", "Exchange", "Order", "SimError", "SPOT", "USDM"]
