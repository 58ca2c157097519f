"""The soak scripts for a couple of minutes, as CI runs them (hours by hand: docs/reliability.md).

Random faults on accounts that bots keep trading on; what must hold is the soak's invariants: no owned
order lost, no wrong cancel, nothing inside a Retry-After, every account back to a clean run and its
ledger equal to the exchange. Memory is not judged here: a run of minutes on a shared CI machine says
nothing about a slope (the hours-long runs do).
"""
from __future__ import annotations

import asyncio
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import soak  # noqa: E402
import soak_usdm  # noqa: E402


def check(result: dict, accounts: int) -> None:
    assert result["faults"] >= 10 and result["fault_kinds"] >= 5, result
    assert result["runs"] > accounts and result["discrepancies"] > 0, result
    assert (result["lost"], result["wrong_cancels"], result["inside_retry_after"], result["unequal"]) == (0, 0, 0, 0), result
    assert result["recovered"] == result["accounts"] == accounts, result


@pytest.mark.soak
@pytest.mark.sim
@pytest.mark.timeout(300)
def test_soak_gateway_and_core():
    args = soak.build_parser().parse_args(["--minutes", "1.5", "--accounts", "3", "--seed", "3",
                                           "--retention", "30", "--sample", "10"])
    run = soak.Soak(args)
    asyncio.run(run.run())
    check(run.result, 3)


@pytest.mark.soak
@pytest.mark.sim
@pytest.mark.timeout(300)
def test_soak_usdm_positions_while_prices_move():
    """Issue 15: USD-M accounts (one-way and hedge) with positions, stops triggering as prices move, the
    stream on: no false discrepancy, every injected loss (a margin transfer, a trade) reported."""
    args = soak_usdm.build_parser().parse_args(["--minutes", "1", "--accounts", "4", "--seed", "5"])
    run = soak_usdm.Soak(args)
    asyncio.run(run.run())
    r = run.result
    assert r["runs"] > 100 and r["injected"] >= 5 and r["max_move"] > 0.01, r
    assert (r["false"], r["missed"]) == (0, 0) and r["found"] == r["injected"], (r["detail"], r)


@pytest.mark.soak
@pytest.mark.cluster
@pytest.mark.timeout(420)
def test_soak_through_the_operator(crd_installed, monkeypatch):
    import soak_operator

    monkeypatch.setenv("KUBECONFIG", crd_installed)
    args = soak_operator.build_parser().parse_args(["--minutes", "2", "--accounts", "3", "--seed", "4",
                                                    "--retention", "60", "--sample", "15",
                                                    "--stale-check-s", "5"])
    run = soak_operator.OperatorSoak(args)
    asyncio.run(run.run())
    check(run.result, 3)
