"""``tradewarden sim`` / ``python -m tradewarden.sim``: run the simulator from the shell.

Accounts file (YAML)::

    accounts:
      - apiKey: demo-key
        secret: demo-secret
        balances: {USDT: "10000", BTC: "1"}
        futuresBalances: {USDT: "10000"}
    prices: {BTCUSDT: "50000"}        # optional
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from .server import Simulator


def load_accounts(path: str) -> dict[str, Any]:
    import yaml
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if isinstance(data, list):
        data = {"accounts": data}
    if not isinstance(data, dict) or not isinstance(data.get("accounts", []), list):
        raise ValueError("accounts file must be a mapping with an 'accounts' list")
    for i, acct in enumerate(data.get("accounts", [])):
        if not isinstance(acct, dict) or not acct.get("apiKey") or not acct.get("secret"):
            raise ValueError(f"accounts[{i}]: apiKey and secret are required")
    return data


async def serve(host: str, port: int, control: bool, config: dict[str, Any], ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    sim = Simulator(control=control)
    for acct in config.get("accounts", []):
        sim.add_account(str(acct["apiKey"]), str(acct["secret"]), acct.get("balances") or {},
                        acct.get("futuresBalances") or {})
    for symbol, price in (config.get("prices") or {}).items():
        sim.set_price(str(symbol), str(price))
    await sim.start(host=host, port=port)
    print(f"tradewarden sim listening on {sim.url} (control API {'on' if control else 'off'}, "
          f"{len(config.get('accounts', []))} account(s))", flush=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tradewarden sim", description="Binance-compatible exchange simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--accounts", help="YAML file of accounts to create")
    p.add_argument("--no-control", action="store_true", help="disable the /sim/v1 control API")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_accounts(args.accounts) if args.accounts else {}
    except (OSError, ValueError) as e:
        print(f"tradewarden sim: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # yaml errors
        print(f"tradewarden sim: cannot read {args.accounts}: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args.host, args.port, not args.no_control, config))
    except OSError as e:
        print(f"tradewarden sim: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
