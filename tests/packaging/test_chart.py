"""The Helm chart: lint, render (default, namespaced, monitoring on), schema, CRD copy, plain manifests."""
from __future__ import annotations

import json

import pytest
import yaml

from .conftest import CHART, ROOT, find, helm

ACCOUNT_RULES = [
    {"apiGroups": ["tradewarden.io"], "resources": ["tradingaccounts"],
     "verbs": ["get", "list", "watch", "patch", "update"]},
    {"apiGroups": ["tradewarden.io"], "resources": ["tradingaccounts/status"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # the restart checkpoint: a ConfigMap per account, owned by it (controller/checkpoint.py)
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
]
ALERTS = {"TradewardenReconciliationFailing", "TradewardenBalanceMismatch", "TradewardenReconciliationStale",
          "TradewardenStreamDown", "TradewardenEmergencyStopActive", "TradewardenMarginAtRisk"}


def test_crd_in_chart_is_the_generated_one():
    assert (CHART / "files" / "crds" / "tradingaccounts.yaml").read_bytes() == \
        (ROOT / "manifests" / "crd.yaml").read_bytes(), \
        "copy manifests/crd.yaml to charts/tradewarden/files/crds/tradingaccounts.yaml"


def test_crd_is_a_template_kept_on_uninstall(render):
    """The TradingAccount CRD is rendered from the generated file with its spec intact (so `helm upgrade`
    applies new fields), labelled as the release's and kept on uninstall; switches turn both off."""
    generated = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
    (crd,) = find(render(), "CustomResourceDefinition")
    assert crd["spec"] == generated["spec"] and crd["metadata"]["name"] == generated["metadata"]["name"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    (crd,) = find(render("crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]
    assert not find(render("crds.enabled=false"), "CustomResourceDefinition")


def test_uninstall_hook(render):
    """A post-delete Job releases the operator's finalizer in the operator's scope, with its own
    ServiceAccount that may only get, list and patch TradingAccounts."""
    hooks = [o for o in render(hooks=True) if "helm.sh/hook" in o["metadata"].get("annotations", {})]
    assert {o["kind"] for o in hooks} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job"}
    for o in hooks:
        assert o["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
        assert o["metadata"]["name"] == "tradewarden-uninstall"
    (job,) = find(hooks, "Job")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["release-finalizers", "--all-namespaces"] and pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "tradewarden-uninstall"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"] is True
    (role,) = find(hooks, "ClusterRole")
    assert role["rules"] == [{"apiGroups": ["tradewarden.io"], "resources": ["tradingaccounts"],
                              "verbs": ["get", "list", "patch"]}]
    # hooks run in weight order: the account first, the Job last
    weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hooks}
    assert weights["ServiceAccount"] < weights["ClusterRoleBinding"] < weights["Job"]
    namespaced = render("watchNamespaces={a,b}", hooks=True)
    (job,) = find(namespaced, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "release-finalizers", "--namespace=a", "--namespace=b"]
    assert {o["metadata"]["namespace"] for o in find(namespaced, "Role")} == {"a", "b"}
    assert not find(render("uninstallHook.enabled=false", hooks=True), "Job")
    from tradewarden.cli import build_parser
    args = build_parser().parse_args(c["args"])
    assert args.command == "release-finalizers" and args.all_namespaces is True


def test_chart_versions_match_package():
    import tomllib
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_helm_lint_strict(helm_bin):
    for sets in ([], ["--set", "watchNamespaces={a,b}", "--set", "serviceMonitor.enabled=true",
                      "--set", "prometheusRule.enabled=true", "--set", "otel.endpoint=http://otel:4318",
                      "--set", "grafanaDashboard.enabled=true"]):
        r = helm(helm_bin, "lint", "--strict", str(CHART), *sets)
        assert "0 chart(s) failed" in r.stdout


def test_default_render(render):
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
                            "ClusterRoleBinding", "Service", "Deployment", "ClusterKopfPeering",
                            "CustomResourceDefinition"])
    (dep,) = find(objs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["run", "--all-namespaces", "--peering=tradewarden", "--metrics-port=9464",
                         "--liveness=http://0.0.0.0:8080/healthz", "--readiness=http://0.0.0.0:8081/readyz"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ready"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9464, "health": 8080, "ready": 8081}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["image"] == "localhost/tradewarden:0.1.0"   # what `./tw image build` and the README's build tag
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert pod["serviceAccountName"] == "tradewarden"
    (svc,) = find(objs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    # RBAC: exactly what the operator does, bound to its ServiceAccount
    (role,) = find(objs, "ClusterRole", "tradewarden")
    assert role["rules"] == ACCOUNT_RULES
    (disc,) = find(objs, "ClusterRole", "tradewarden-discovery")
    assert disc["rules"] == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["get", "list", "watch", "patch"]},
    ]
    for b in find(objs, "ClusterRoleBinding"):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "tradewarden", "namespace": "tradewarden"}]
        assert b["roleRef"]["name"] != "tradewarden-scale"      # scaling is never granted cluster-wide
    (scale,) = find(objs, "ClusterRole", "tradewarden-scale")
    assert scale["rules"] == SCALE_RULES
    assert not find(objs, "RoleBinding")                        # ... nor anywhere by default
    assert find(objs, "ClusterKopfPeering", "tradewarden")
    no_wildcards(objs)


# issue 14: spec.emergencyStop.scaleDown writes only the scale subresource, namespaced
SCALE_RULES = [
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["get", "list"]},
    {"apiGroups": ["apps"], "resources": ["deployments/scale", "statefulsets/scale"], "verbs": ["get", "patch", "update"]},
]


def test_scale_down_namespaces_get_a_role_binding_to_the_scale_role_only(render):
    objs = render("rbac.scaleDownNamespaces={trading}", release="tw", namespace="ops")
    (binding,) = find(objs, "RoleBinding", namespace="trading")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "tw-tradewarden-scale"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tw-tradewarden", "namespace": "ops"}]
    for o in objs:
        for rule in o.get("rules", []):
            if "apps" in rule["apiGroups"]:
                assert o["metadata"]["name"] == "tw-tradewarden-scale" and rule in SCALE_RULES


def no_wildcards(objs):
    for o in objs:
        for rule in o.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert not {"delete", "deletecollection"} & set(rule["verbs"]), rule
            # creates: Events, and the checkpoint ConfigMaps (deleted by the garbage collector with their account)
            assert "create" not in rule["verbs"] or rule["resources"] in (["events"], ["configmaps"]), rule


def test_namespaced_render(render):
    objs = render("watchNamespaces={team-a,team-b}", "peering.name=tw", release="prod", namespace="ops")
    (dep,) = find(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"][:4] == ["run", "--namespace=team-a", "--namespace=team-b", "--peering=tw"]
    assert "--all-namespaces" not in c["args"]
    # no cluster-wide access to secrets or accounts (the scale role is bound per namespace only)
    (cluster_role,) = [r for r in find(objs, "ClusterRole") if not r["metadata"]["name"].endswith("-scale")]
    assert cluster_role["rules"] == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]
    for ns in ("team-a", "team-b"):
        (role,) = find(objs, "Role", namespace=ns)
        assert role["rules"] == ACCOUNT_RULES + [
            {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": ["get", "list", "watch", "patch"]}]
        (binding,) = [b for b in find(objs, "RoleBinding", namespace=ns) if b["roleRef"]["kind"] == "Role"]
        (scale,) = [b for b in find(objs, "RoleBinding", namespace=ns) if b["roleRef"]["kind"] == "ClusterRole"]
        assert scale["roleRef"]["name"] == "prod-tradewarden-scale"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prod-tradewarden", "namespace": "ops"}]
        assert find(objs, "KopfPeering", "tw", namespace=ns)
    assert not find(objs, "ClusterKopfPeering")
    no_wildcards(objs)


def test_standalone_and_otel(render):
    objs = render("peering.enabled=false", "otel.endpoint=http://collector:4318", "metrics.port=9100",
                  "image.digest=sha256:" + "a" * 64, "verbose=true")
    (dep,) = find(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--standalone" in c["args"] and not any(a.startswith("--peering") for a in c["args"])
    assert "--metrics-port=9100" in c["args"] and "--verbose" in c["args"]
    assert c["image"] == "localhost/tradewarden@sha256:" + "a" * 64
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert not find(objs, "ClusterKopfPeering")


def test_monitoring_objects(render):
    objs = render("serviceMonitor.enabled=true", "serviceMonitor.labels.release=kps",
                  "prometheusRule.enabled=true", "prometheusRule.additionalAlertLabels.team=trading")
    (sm,) = find(objs, "ServiceMonitor")
    (svc,) = find(objs, "Service")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["honorLabels"] is True
    (rule,) = find(objs, "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    by = {r["alert"]: r for r in rules}
    assert by["TradewardenReconciliationFailing"]["expr"] == "tradewarden_consecutive_failures > 3"
    assert by["TradewardenReconciliationStale"]["expr"] == (
        "(time() - (tradewarden_last_success_timestamp_seconds or tradewarden_monitored_since_timestamp_seconds) > 600)"
        " unless on(namespace, name, exchange) (tradewarden_emergency_stop_active == 1)")
    assert by["TradewardenBalanceMismatch"]["expr"] == (
        "(tradewarden_last_run_balance_mismatches > 0) unless on(namespace, name, exchange)"
        " (tradewarden_emergency_stop_active == 1)")
    for r in rules:
        assert r["labels"]["team"] == "trading" and r["labels"]["severity"]
        assert r["annotations"]["runbook_url"].endswith("#" + r["alert"].lower())
        assert "{{ $labels.name }}" in r["annotations"]["summary"]
    # each alert has a runbook section
    runbooks = (ROOT / "docs" / "runbooks.md").read_text().lower()
    for alert in ALERTS:
        assert f"## {alert.lower()}" in runbooks
    assert objs == render("serviceMonitor.enabled=true", "serviceMonitor.labels.release=kps",
                          "prometheusRule.enabled=true", "prometheusRule.additionalAlertLabels.team=trading")


def test_monitoring_off_by_default(render):
    objs = render()
    assert not find(objs, "ServiceMonitor") and not find(objs, "PrometheusRule")
    assert not [o for o in find(objs, "ConfigMap") if "grafana_dashboard" in o["metadata"].get("labels", {})]


def test_alert_thresholds_default_to_the_core_health_rule():
    """The chart's defaults are the core's numbers (one health rule: tradewarden.core.monitor)."""
    from tradewarden.core import monitor

    values = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]
    assert values["consecutiveFailures"] == monitor.FAILING_AFTER
    assert values["staleAfterSeconds"] * 1000 == monitor.STALE_AFTER_MS


def test_grafana_dashboard_configmap(render):
    objs = render("grafanaDashboard.enabled=true", "grafanaDashboard.annotations.grafana_folder=Trading",
                  "grafanaDashboard.namespace=monitoring")
    (cm,) = [o for o in find(objs, "ConfigMap") if o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Trading"}
    shipped = json.loads(cm["data"]["tradewarden.json"])
    assert shipped == json.loads((CHART / "dashboards" / "tradewarden.json").read_text())
    assert shipped["uid"] == "tradewarden" and len(shipped["panels"]) >= 12


@pytest.mark.parametrize("bad, message", [
    ("replicaCount=-1", "replicaCount"),
    ("watchNamespaces={Bad_NS}", "watchNamespaces"),
    ("metrics.port=70000", "port"),
    ("unknownTopLevel=1", "unknownTopLevel"),
    ("serviceMonitor.interval=often", "interval"),
])
def test_schema_rejects_bad_values(helm_bin, bad, message):
    r = helm(helm_bin, "template", "t", str(CHART), "--set", bad, check=False)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_schema_is_valid_json_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_crds_in_chart(render):
    objs = render(include_crds=True)
    crds = {o["metadata"]["name"] for o in find(objs, "CustomResourceDefinition")}
    assert crds == {"tradingaccounts.tradewarden.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_notes_tell_how_to_create_and_stop(helm_bin):
    r = helm(helm_bin, "install", "tw", str(CHART), "--dry-run=client", "--namespace", "ops")
    notes = r.stdout.split("NOTES:", 1)[1]
    assert "kind: TradingAccount" in notes and "credentialsSecretRef" in notes
    assert 'annotate ta main tradewarden.io/emergency-stop="<reason>"' in notes
    # the default image exists only where it was built: the notes say so, and how to load it
    assert "is not published" in notes and "kind load docker-image localhost/tradewarden:0.1.0" in notes
    r = helm(helm_bin, "install", "tw", str(CHART), "--dry-run=client", "--namespace", "ops",
             "--set", "image.repository=registry.example.com/tradewarden")
    assert "is not published" not in r.stdout


def _manifest(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "manifests" / name).read_text()) if d]


def test_plain_manifests_agree_with_chart(render):
    chart = render()
    plain = _manifest("rbac.yaml") + _manifest("operator.yaml")
    for kind in ("ClusterRole",):
        assert {o["metadata"]["name"]: o["rules"] for o in find(plain, kind)} == \
               {o["metadata"]["name"]: o["rules"] for o in find(chart, kind)}
    for kind in ("ClusterRoleBinding",):
        assert {o["metadata"]["name"]: (o["roleRef"], o["subjects"]) for o in find(plain, kind)} == \
               {o["metadata"]["name"]: (o["roleRef"], o["subjects"]) for o in find(chart, kind)}
    (pdep,), (cdep,) = find(plain, "Deployment"), find(chart, "Deployment")
    ppod, cpod = pdep["spec"]["template"]["spec"], cdep["spec"]["template"]["spec"]
    assert pdep["spec"]["replicas"] == 1 and pdep["spec"]["strategy"] == {"type": "Recreate"}
    assert ppod["securityContext"] == cpod["securityContext"]
    (pc,), (cc,) = ppod["containers"], cpod["containers"]
    for key in ("args", "securityContext", "ports", "livenessProbe", "readinessProbe", "volumeMounts", "resources",
                "image"):
        assert pc[key] == cc[key], key
    assert ppod["serviceAccountName"] == cpod["serviceAccountName"]
    assert find(plain, "ServiceAccount", "tradewarden", "tradewarden")
    assert find(_manifest("namespace.yaml"), "Namespace", "tradewarden")
    assert not find(plain, "Namespace")


def test_sharding_render(render):
    """Issue 18: sharding sets --shards, the pod identity, the Lease RBAC and the rate share."""
    objs = render("sharding.enabled=true", "replicaCount=3", "sharding.leaseSeconds=20")
    (dep,) = find(objs, "Deployment")
    assert dep["spec"]["replicas"] == 3
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--shards=32" in c["args"] and not any(a.startswith("--peering") for a in c["args"])
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["TRADEWARDEN_SHARD_LEASE_SECONDS"]["value"] == "20"
    assert float(env["TRADEWARDEN_RATE_SHARE"]["value"]) == pytest.approx(1 / 3, abs=1e-3)
    (role,) = find(objs, "Role", "tradewarden-leases")
    assert role["metadata"]["namespace"] == "tradewarden"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "list", "create", "update", "delete"]}]
    (binding,) = find(objs, "RoleBinding", "tradewarden-leases")
    assert binding["roleRef"]["name"] == "tradewarden-leases"
    # an explicit share wins; the default (no sharding) has none of it
    objs = render("sharding.enabled=true", "replicaCount=2", "sharding.rateShare=0.4")
    (c,) = find(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in c["env"]}["TRADEWARDEN_RATE_SHARE"] == "0.4"
    default = render()
    (c,) = find(default, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "TRADEWARDEN_RATE_SHARE" not in {e["name"] for e in c["env"]} and "--peering=tradewarden" in c["args"]
    assert not find(default, "Role", "tradewarden-leases")
