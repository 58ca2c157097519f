"""Generate the TradingAccount CustomResourceDefinition from the pydantic models."""
from __future__ import annotations

from typing import Any

import yaml

from . import models as m

PRINTER_COLUMNS = [
    {"name": "Exchange", "type": "string", "jsonPath": ".spec.exchange"},
    {"name": "Policy", "type": "string", "jsonPath": ".spec.policy", "priority": 1},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Orders", "type": "integer", "jsonPath": ".status.openOrders.count",
     "description": "Open orders on the exchange"},
    {"name": "Discrepancies", "type": "integer", "jsonPath": ".status.lastReconciliation.discrepancyCount",
     "description": "Discrepancies found by the last run"},
    {"name": "Reconciled", "type": "date", "jsonPath": ".status.lastReconciliation.time",
     "description": "When the last run finished"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "$defs", "discriminator"}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn a pydantic JSON schema into a Kubernetes structural schema: refs inlined,
    Optional unions collapsed, titles dropped, defaults kept."""
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) == 1:
            merged = {**options[0], **rest}
            if merged.get("default", 0) is None:
                merged.pop("default")
            return _structural(merged, defs)
        raise ValueError(f"unsupported union in CRD schema: {schema}")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = _structural(value, defs)
        elif key == "default" and isinstance(value, dict):
            out[key] = _no_nulls(value)        # an absent optional field, not a null the API server rejects
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out.setdefault("type", "object")
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    # defaults must be given explicitly at every level; object defaults from pydantic are fine
    return out


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    return value


def _schema_of(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(mode="serialization", ref_template="#/$defs/{model}")
    return _structural(raw, raw.get("$defs", {}))


def _without_defaults(schema: Any) -> Any:
    """Status is written by the operator alone: defaults there would only make the API server
    invent values (and 1.20 rejects empty-string defaults)."""
    if isinstance(schema, dict):
        return {k: _without_defaults(v) for k, v in schema.items() if k != "default"}
    if isinstance(schema, list):
        return [_without_defaults(v) for v in schema]
    return schema


def crd() -> dict[str, Any]:
    spec_schema = _schema_of(m.TradingAccountSpec)
    status_schema = _without_defaults(_schema_of(m.TradingAccountStatus))
    status_schema.pop("required", None)
    status_schema.pop("additionalProperties", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{m.PLURAL}.{m.GROUP}", "labels": {"app.kubernetes.io/name": "tradewarden"}},
        "spec": {
            "group": m.GROUP,
            "scope": "Namespaced",
            "names": {"kind": m.KIND, "plural": m.PLURAL, "singular": m.SINGULAR,
                      "shortNames": m.SHORT_NAMES, "categories": m.CATEGORIES, "listKind": f"{m.KIND}List"},
            "versions": [{
                "name": m.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": m.DESCRIPTION,
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string", "description": "APIVersion of this object."},
                        "kind": {"type": "string", "description": "Kind of this object."},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                }},
            }],
        },
    }


def crd_yaml() -> str:
    header = "# Generated from operator/tradewarden/models.py by `tradewarden crd`. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
