"""The TradingAccount resource: CRD generated from the models, samples, and the real API server."""
from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pydantic
import pytest
import yaml

from tradewarden import models
from tradewarden.crd import crd, crd_yaml

from ..conftest import ROOT, kubectl, parse_table

SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


def _docs(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_committed_crd_matches_the_models():
    committed = (ROOT / "manifests" / "crd.yaml").read_text()
    assert committed == crd_yaml(), "manifests/crd.yaml drifted: run `tradewarden crd > manifests/crd.yaml`"


def test_cli_prints_the_crd():
    out = subprocess.run([sys.executable, "-m", "tradewarden.cli", "crd"], capture_output=True, text=True, check=True)
    assert yaml.safe_load(out.stdout) == crd()


def test_no_top_level_package_shadows_the_standard_library():
    import operator
    assert operator.__file__ and "site-packages" not in operator.__file__
    assert pathlib.Path(operator.__file__).parent != ROOT / "operator"
    assert importlib.util.find_spec("tradewarden").origin.startswith(str(ROOT / "operator" / "tradewarden"))


def test_every_field_has_a_description():
    def walk(schema: dict, path: str):
        for name, sub in schema.get("properties", {}).items():
            if path in ("", ) and name in ("metadata",):
                continue
            assert sub.get("description"), f"{path}.{name} has no description"
            walk(sub, f"{path}.{name}")
        if "items" in schema:
            walk(schema["items"], path + "[]")

    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    walk(root["properties"]["spec"], "spec")
    walk(root["properties"]["status"], "status")


def test_spec_defaults_are_what_users_expect():
    spec = models.TradingAccountSpec(exchange="binance", credentialsSecretRef={"name": "creds"}, symbols=["BTC/USDT"])
    assert spec.reconciliation.intervalSeconds == 300
    assert spec.reconciliation.balanceTolerance == 0.0001
    assert spec.staleOrders.checkIntervalSeconds == 60
    assert spec.retention.finishedOrdersSeconds == 86400
    assert spec.stream.enabled is True
    assert spec.policy == "Correct"
    assert spec.credentialsSecretRef.apiKeyKey == "apiKey" and spec.credentialsSecretRef.secretKey == "secret"


@pytest.mark.parametrize("patch, field", [
    ({"reconciliation": {"intervalSeconds": 5}}, "intervalSeconds"),
    ({"symbols": []}, "symbols"),
    ({"policy": "Sometimes"}, "policy"),
    ({"symbols": ["btcusdt"]}, "symbols"),
    ({"staleOrders": {"ownedClientOrderIdPrefix": "has space"}}, "ownedClientOrderIdPrefix"),
])
def test_models_reject_invalid_specs(patch, field):
    base = {"exchange": "binance", "credentialsSecretRef": {"name": "creds"}, "symbols": ["BTC/USDT"]}
    with pytest.raises(pydantic.ValidationError) as e:
        models.TradingAccountSpec.model_validate({**base, **patch})
    assert field in str(e.value)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_validate_against_the_models(path):
    docs = _docs(path)
    assert docs
    for doc in docs:
        if doc["kind"] == "TradingAccount":
            ta = models.TradingAccount.model_validate(doc)
            assert ta.spec.symbols
        else:
            assert doc["kind"] == "Secret"


# ---- against the real API server -------------------------------------------------------------

pytestmark_cluster = pytest.mark.cluster


def _ta(name: str, **spec) -> str:
    body = {"apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": name},
            "spec": {"exchange": "binance", "credentialsSecretRef": {"name": "creds"},
                     "symbols": ["BTC/USDT"], **spec}}
    return json.dumps(body)


@pytest.mark.cluster
def test_crd_is_established_and_sample_is_listed_with_columns(crd_installed, namespace):
    kc = crd_installed
    for path in SAMPLES:
        kubectl(kc, "-n", namespace, "apply", "-f", str(path))
    out = kubectl(kc, "-n", namespace, "get", "ta").stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "EXCHANGE", "PHASE", "READY", "ORDERS", "DISCREPANCIES", "RECONCILED", "AGE"]
    assert out.splitlines()[1].split()[:2] == ["demo", "binance"]
    # the API server applied the schema's defaults
    obj = json.loads(kubectl(kc, "-n", namespace, "get", "ta", "demo", "-o", "json").stdout)
    assert obj["spec"]["retention"]["finishedOrdersSeconds"] == 86400
    # the status subresource: a status write does not touch the spec, and shows in the columns
    kubectl(kc, "-n", namespace, "patch", "ta", "demo", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Ready", "openOrders": {"count": 7},
                                         "lastReconciliation": {"discrepancyCount": 2}}}))
    row = parse_table(kubectl(kc, "-n", namespace, "get", "tradingaccounts.tradewarden.io", "demo").stdout)[0]
    assert (row["PHASE"], row["ORDERS"], row["DISCREPANCIES"], row["READY"]) == ("Ready", "7", "2", "")
    # the category works too
    assert "demo" in kubectl(kc, "-n", namespace, "get", "tradewarden").stdout


@pytest.mark.cluster
def test_kubectl_explain_teaches_the_resource(crd_installed):
    out = kubectl(crd_installed, "explain", "ta.spec.reconciliation").stdout
    assert "intervalSeconds" in out and "rate limit" in out
    out = kubectl(crd_installed, "explain", "ta.spec.policy").stdout
    assert "ObserveOnly" in out


@pytest.mark.cluster
@pytest.mark.parametrize("name, spec, needle", [
    ("short-interval", {"reconciliation": {"intervalSeconds": 5}}, "intervalSeconds"),
    ("no-symbols", {"symbols": []}, "symbols"),
    ("bad-policy", {"policy": "Sometimes"}, "policy"),
    ("bad-symbol", {"symbols": ["BTC-USDT"]}, "symbols"),
    ("bad-endpoint", {"endpoint": "ftp://example"}, "endpoint"),
])
def test_api_server_rejects_invalid_resources(crd_installed, namespace, name, spec, needle):
    r = kubectl(crd_installed, "-n", namespace, "create", "-f", "-", input=_ta(name, **spec), check=False)
    assert r.returncode != 0, r.stdout
    assert "is invalid" in r.stderr and needle in r.stderr


@pytest.mark.cluster
def test_api_server_rejects_a_resource_without_credentials(crd_installed, namespace):
    body = json.loads(_ta("no-creds"))
    del body["spec"]["credentialsSecretRef"]
    r = kubectl(crd_installed, "-n", namespace, "create", "-f", "-", input=json.dumps(body), check=False)
    assert r.returncode != 0 and "credentialsSecretRef" in r.stderr


def test_reference_doc_is_current():
    from tradewarden.reference import reference_markdown
    committed = (ROOT / "docs" / "trading-account.md").read_text()
    assert committed == reference_markdown(), "docs/trading-account.md drifted: regenerate it (see its first line)"
    assert "spec.reconciliation.intervalSeconds" in committed and "status.conditions[].lastTransitionTime" in committed
