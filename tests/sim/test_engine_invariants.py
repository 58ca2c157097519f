"""Property test of the matching engine (pure, in memory): whatever sequence of orders, cancels, price moves,
out-of-band fills and deposits happens, the books stay honest."""
from __future__ import annotations

from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradewarden.sim.engine import SPOT, USDM, ZERO, Exchange, SimError

D = Decimal
SYMBOLS = ["BTCUSDT", "ETHUSDT"]

ops = st.lists(st.one_of(
    st.tuples(st.just("order"), st.sampled_from([SPOT, USDM]), st.sampled_from(SYMBOLS),
              st.sampled_from(["BUY", "SELL"]), st.sampled_from(["LIMIT", "MARKET", "LIMIT_MAKER"]),
              st.integers(1, 50), st.integers(-10, 10), st.sampled_from(["GTC", "IOC"])),
    st.tuples(st.just("price"), st.sampled_from(SYMBOLS), st.integers(-10, 10), st.none() | st.integers(1, 30)),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("cancel_all"), st.sampled_from([SPOT, USDM]), st.sampled_from(SYMBOLS)),
    st.tuples(st.just("fill"), st.integers(0, 40), st.integers(1, 50)),
    st.tuples(st.just("deposit"), st.sampled_from(["USDT", "BTC"]), st.integers(-100, 100)),
), min_size=5, max_size=40)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_books_stay_honest(sequence):
    ex = Exchange(clock=lambda: 1_700_000_000_000)
    events = []
    ex.listeners.append(lambda acct, venue, ev: events.append((venue, ev)))
    acct = ex.add_account("k", "s", balances={"USDT": "100000", "BTC": "2", "ETH": "20"},
                          futures_balances={"USDT": "50000"})
    base_price = {"BTCUSDT": D(50000), "ETHUSDT": D(3000)}
    placed = []
    for op in sequence:
        try:
            if op[0] == "order":
                _, venue, sym, side, otype, lots, ticks, tif = op
                if venue == USDM and otype == "LIMIT_MAKER":
                    otype = "LIMIT"
                step = ex.markets[venue][sym].step
                price = base_price[sym] * (1 + D(ticks) / 100)
                o = ex.place_order(acct, venue, symbol=sym, side=side, type=otype, quantity=step * lots * 100,
                                   price=None if otype == "MARKET" else price,
                                   time_in_force=tif if otype == "LIMIT" else None)
                placed.append(o)
            elif op[0] == "price":
                _, sym, ticks, qty = op
                ex.set_price(sym, base_price[sym] * (1 + D(ticks) / 100),
                             None if qty is None else ex.markets[SPOT][sym].step * qty)
            elif op[0] == "cancel" and placed:
                o = placed[op[1] % len(placed)]
                ex.cancel_order(acct, o.venue, o.symbol, order_id=o.order_id)
            elif op[0] == "cancel_all":
                ex.cancel_all(acct, op[1], op[2])
            elif op[0] == "fill" and placed:
                o = placed[op[1] % len(placed)]
                ex.fill(acct, o.venue, o.order_id, min(o.remaining, ex.markets[o.venue][o.symbol].step * op[2]))
            elif op[0] == "deposit":
                ex.adjust_balance(acct, op[1], D(op[2]) / 10)
        except SimError:
            pass   # a rejected request changes nothing (checked below through the invariants)

        # spot: locked equals what open orders reserve; nothing negative
        locked = {}
        for o in acct.open_orders(SPOT):
            assert o.is_open and o.remaining > 0
            locked[o.lock_asset] = locked.get(o.lock_asset, ZERO) + o.locked
        for asset, (free, lck) in acct.spot.items():
            assert free >= 0 and lck >= 0, (asset, free, lck)
            assert lck == locked.get(asset, ZERO), (asset, lck, locked)
        # every order: executed within bounds, cum quote consistent with its trades
        for venue in (SPOT, USDM):
            for o in acct.orders[venue].values():
                assert ZERO <= o.executed_qty <= o.orig_qty
                assert o.executed_qty == sum((t.qty for t in o.fills), ZERO)
                assert (o.status == "FILLED") == (o.executed_qty == o.orig_qty)
                assert o.is_open == (o.order_id in acct.open[venue].get(o.symbol, {}))
        # USD-M: position = signed sum of trades; wallet = start + realized - commissions
        for sym in SYMBOLS:
            trades = [t for t in acct.trades[USDM] if t.symbol == sym]
            signed = sum(((t.qty if t.side == "BUY" else -t.qty) for t in trades), ZERO)
            pos = acct.positions.get((sym, "BOTH"))   # one-way mode: the BOTH row (usdm-facts.md B2)
            assert (pos.amount if pos else ZERO) == signed
        realized = sum((t.realized_pnl - t.commission for t in acct.trades[USDM]), ZERO)
        assert acct.wallet["USDT"] == D(50000) + realized
    # spot conservation per asset: start + deposits + trade flows - commissions
    flows = {"USDT": D(100000), "BTC": D(2), "ETH": D(20)}
    for venue, ev in events:
        if venue == SPOT and ev["e"] == "balanceUpdate":
            flows[ev["a"]] = flows.get(ev["a"], ZERO) + D(ev["d"])
    for t in acct.trades[SPOT]:
        m = ex.markets[SPOT][t.symbol]
        sign = 1 if t.side == "BUY" else -1
        flows[m.base] += sign * t.qty
        flows[m.quote] -= sign * t.quote_qty
        flows[t.commission_asset] -= t.commission
    for asset, expected in flows.items():
        free, lck = acct.spot.get(asset, [ZERO, ZERO])
        assert free + lck == expected, (asset, free + lck, expected)
