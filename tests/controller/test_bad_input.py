"""Bad input and faults: each gets a False condition with a clear reason, no secret anywhere, and
the operator keeps serving the healthy account next to them."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import kubectl
from tests.controller.conftest import account, apply, cond, get_ta, secret, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.sim, pytest.mark.timeout(240)]


def test_bad_inputs_get_conditions(crd_installed, namespace, tsim, operator_factory):
    kc, ns = crd_installed, namespace
    sim = tsim.sim
    api_key, api_secret = "tw-key-" + uuid.uuid4().hex, "tw-secret-" + uuid.uuid4().hex
    tsim.call(sim.add_account, api_key, api_secret, balances={"USDT": "1000"})
    apply(kc, secret(ns, "good", {"apiKey": api_key, "secret": api_secret}))
    apply(kc, secret(ns, "nokey", {"apiKey": api_key}))
    apply(kc, secret(ns, "wrong", {"apiKey": api_key, "secret": "tw-wrong-" + uuid.uuid4().hex}))
    url = tsim.url
    cases = {
        # name: (spec overrides, condition, reason)
        "missing-secret": (dict(secret_name="absent"), "CredentialsValid", "SecretNotFound"),
        "missing-key": (dict(secret_name="nokey"), "CredentialsValid", "SecretKeyMissing"),
        "wrong-creds": (dict(secret_name="wrong"), "CredentialsValid", "AuthenticationFailed"),
        "unknown-exchange": (dict(secret_name="good", exchange="nosuchexchange"), "Ready", "UnknownExchange"),
        "unlisted-symbol": (dict(secret_name="good", symbols=["BTC/USDT", "FOO/USDT"]), "Synced", "SymbolNotListed"),
        "unreachable": (dict(secret_name="good", endpoint="http://127.0.0.1:9"), "Ready", "EndpointUnreachable"),
    }
    for name, (over, _, _) in cases.items():
        kw = dict(endpoint=url, symbols=["BTC/USDT"], secret_name="good")
        kw.update(over)
        apply(kc, account(ns, name, **kw))
    apply(kc, account(ns, "healthy", endpoint=url, symbols=["BTC/USDT"], secret_name="good"))
    op = operator_factory(ns)

    for name, (_, ctype, reason) in cases.items():
        obj = wait_for(f"{name}: {ctype}={reason}", lambda: (o := get_ta(kc, ns, name))
                       and cond(o, ctype).get("reason") == reason and o, timeout=90, operator=op)
        c = cond(obj, ctype)
        assert c["status"] == "False" and c["message"], c
        assert cond(obj, "Ready")["status"] == "False"
        assert obj["status"]["phase"] == "Error"
        text = json.dumps(obj)
        assert api_secret not in text and "tw-wrong-" not in text
    assert cond(get_ta(kc, ns, "healthy"), "Ready").get("status") == "True" or wait_for(
        "healthy Ready", lambda: cond(get_ta(kc, ns, "healthy"), "Ready").get("status") == "True", operator=op)

    # Fixing the input heals the account without a restart (retries with backoff).
    apply(kc, secret(ns, "absent", {"apiKey": api_key, "secret": api_secret}))
    wait_for("missing-secret healed", lambda: cond(get_ta(kc, ns, "missing-secret"), "Ready").get("status") == "True",
             timeout=90, operator=op)
    # Spec changes take effect without a restart: observedGeneration follows.
    kubectl(kc, "-n", ns, "patch", "ta", "unlisted-symbol", "--type=merge", "-p",
            json.dumps({"spec": {"symbols": ["BTC/USDT", "ETH/USDT"]}}))
    obj = wait_for("unlisted-symbol fixed", lambda: (o := get_ta(kc, ns, "unlisted-symbol"))
                   and cond(o, "Ready").get("status") == "True" and o, timeout=90, operator=op)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    events = kubectl(kc, "-n", ns, "get", "events", "-o", "json").stdout
    assert "SecretNotFound" in events and "AuthenticationFailed" in events
    assert api_secret not in events and api_secret not in op.log()
    # Deleting an account whose exchange cannot be reached is not blocked.
    kubectl(kc, "-n", ns, "delete", "ta", "unreachable", "--wait=true", "--timeout=30s")
