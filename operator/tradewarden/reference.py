"""The TradingAccount reference (docs/trading-account.md), generated from the models' schema."""
from __future__ import annotations

from typing import Any

from . import models as m
from .crd import PRINTER_COLUMNS, crd


def _type(schema: dict[str, Any]) -> str:
    t = schema.get("type", "object")
    if t == "array":
        return f"[]{_type(schema.get('items', {}))}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    return t


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    for key, label in (("minimum", "min"), ("maximum", "max"), ("minLength", "min length"),
                       ("maxLength", "max length"), ("minItems", "min items"), ("maxItems", "max items")):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    items = schema.get("items", {})
    if "pattern" in items:
        parts.append(f"each matches `{items['pattern']}`")
    return ", ".join(parts)


def _rows(schema: dict[str, Any], path: str, required: set[str]) -> list[str]:
    rows = []
    for name, sub in schema.get("properties", {}).items():
        full = f"{path}.{name}"
        default = f"`{sub['default']}`" if "default" in sub and not isinstance(sub["default"], dict) else ""
        req = "yes" if name in required else ""
        desc = sub.get("description", "").replace("\n", " ").replace("|", "\\|")
        cons = _constraints(sub).replace("|", "\\|")
        rows.append(f"| `{full}` | {_type(sub)} | {req} | {default} | {cons} | {desc} |")
        target = sub.get("items", sub) if sub.get("type") == "array" else sub
        if target.get("properties"):
            rows += _rows(target, full + ("[]" if sub.get("type") == "array" else ""), set(target.get("required", [])))
    return rows


def reference_markdown() -> str:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec, status = schema["properties"]["spec"], schema["properties"]["status"]
    head = "| field | type | required | default | constraints | description |\n|---|---|---|---|---|---|"
    out = [
        "<!-- Generated from operator/tradewarden/models.py by tradewarden.reference; a test keeps it current. -->",
        f"# TradingAccount reference (`{m.API_VERSION}`)",
        "",
        m.DESCRIPTION,
        "",
        f"Kind `{m.KIND}`, plural `{m.PLURAL}`, short name `{', '.join(m.SHORT_NAMES)}`, category "
        f"`{', '.join(m.CATEGORIES)}`, namespaced, with a status subresource.",
        "",
        "## Annotations",
        "",
        "| annotation | value | effect |",
        "|---|---|---|",
        f"| `{m.ANNOTATION_EMERGENCY_STOP}` | the reason | Opens the circuit breaker: status first, then every open "
        "order on every symbol is cancelled and verified gone; streams stop; timers stop correcting. Idempotent, "
        "completes after an operator restart, applies in ObserveOnly too, never blocks deletion. Remove it to "
        "resume (initial sync, then Ready). |",
        f"| `{m.ANNOTATION_RECONCILE_REQUESTED_AT}` | any new value (e.g. a timestamp) | Runs a reconciliation now; "
        "the handled value is recorded in `status.lastHandledReconcileAt`. |",
        "",
        "## Spec",
        "",
        head,
        *_rows(spec, "spec", set(spec.get("required", []))),
        "",
        "Validation the API server enforces: the types, enums, bounds and patterns above. The operator "
        "validates the rest (exchange supported, symbols listed by the exchange, Secret present with both keys, "
        "credentials accepted) and reports it through conditions.",
        "",
        "## Status",
        "",
        head,
        *_rows(status, "status", set()),
        "",
        "## Columns of `kubectl get ta`",
        "",
        "| column | from | shown |",
        "|---|---|---|",
        *[f"| {c['name']} | `{c['jsonPath']}` | {'with -o wide' if c.get('priority') else 'always'} |"
          for c in PRINTER_COLUMNS],
        "",
    ]
    return "\n".join(out)
