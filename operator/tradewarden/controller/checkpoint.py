"""The restart checkpoint: the ledger kept off the status (issue 19 item 7).

What a restart needs (active and chased orders, recent finished ones, fills, history cursors, the open
gap; ``Ledger.dump``'s format) lives in a ConfigMap of its own, ``<account>-ledger`` in the account's
namespace, owned by the TradingAccount (garbage-collected with it). The payload is the dump as JSON,
zlib-compressed, under ``binaryData`` (docs/status.md says why a ConfigMap and not a Secret).

It is written on its own cadence (:func:`due`: after something changed, at most every
``interval_s``; once more on a graceful stop), never on every status write, and never larger than
``MAX_PAYLOAD_BYTES``: with more orders than fit, :func:`encode` keeps the ones that matter most
(``Ledger.dump``'s ranking) and the dump records where history must start so that the orders left out
cannot change unseen after a restart.

Everything here is pure (bytes in, bytes out; bodies as dicts); the supervisor does the I/O through
``controller.kube.Kube`` (its thread pool).
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .. import models

# etcd refuses objects above 1.5 MiB and the API server ConfigMaps above 1 MiB of data: the compressed
# payload stays well under both, with room for metadata.
MAX_PAYLOAD_BYTES = 900 * 1024
DATA_KEY = "ledger.json.zz"             # binaryData key: zlib(JSON of Ledger.dump)
FORMAT_ANNOTATION = f"{models.GROUP}/checkpoint-format"
FORMAT = "ledger-dump-v1+json+zlib"
ORDERS_ANNOTATION = f"{models.GROUP}/checkpoint-orders"
LEFT_OUT_ANNOTATION = f"{models.GROUP}/checkpoint-left-out"
TIME_ANNOTATION = f"{models.GROUP}/checkpoint-time"
SUFFIX = "-ledger"
MAX_NAME = 253
DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "TRADEWARDEN_CHECKPOINT_INTERVAL"
COMPRESSION_LEVEL = 6


class CheckpointError(ValueError):
    """A checkpoint that cannot be read back (the caller starts from a fresh sync and says so)."""


@dataclass(frozen=True)
class Encoded:
    payload: bytes          # what goes under binaryData[DATA_KEY]
    orders: int             # orders kept
    left_out: int           # orders left out to stay under the bound (history closes the gap on restore)
    raw_bytes: int          # the JSON before compression
    digest: str             # sha256 of the payload: an unchanged ledger is not written again


def interval_from_env(env: Mapping[str, str] | None = None) -> float:
    """TRADEWARDEN_CHECKPOINT_INTERVAL (seconds, > 0), else the default."""
    raw = (env if env is not None else os.environ).get(INTERVAL_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def name_for(account: str) -> str:
    """The ConfigMap's name: ``<account>-ledger``; a name too long for that keeps a hash of the whole."""
    name = account + SUFFIX
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(account.encode()).hexdigest()[:10]
    return f"{account[:MAX_NAME - len(SUFFIX) - 11]}-{digest}{SUFFIX}"


def _compress(dump: Mapping[str, Any]) -> tuple[bytes, int]:
    raw = json.dumps(dump, separators=(",", ":"), default=str).encode()
    return zlib.compress(raw, COMPRESSION_LEVEL), len(raw)


def compress(data: Mapping[str, Any], total_orders: int, max_bytes: int = MAX_PAYLOAD_BYTES) -> Encoded | int:
    """One dump compressed: the Encoded when it fits in ``max_bytes``, else how many orders to ask the next
    dump for (estimated from the bytes per order seen, always fewer). CPU only: safe in a worker thread."""
    payload, raw = _compress(data)
    kept = len(data.get("o") or ())
    if len(payload) <= max_bytes:
        return Encoded(payload, kept, total_orders - kept, raw, hashlib.sha256(payload).hexdigest())
    if kept == 0:
        raise CheckpointError(f"a checkpoint without orders is {len(payload)} bytes, over {max_bytes}")
    return max(0, min(int(kept * max_bytes / len(payload) * 0.95), kept - 1))


def encode(dump: Callable[[int | None], Mapping[str, Any]], total_orders: int,
           max_bytes: int = MAX_PAYLOAD_BYTES) -> Encoded:
    """The compressed dump, bounded: ``dump(max_orders)`` (``Ledger.dump``) is asked for every order first;
    when that is over ``max_bytes`` compressed, for fewer (:func:`compress`) until it fits."""
    limit: int | None = None
    while True:
        result = compress(dump(limit), total_orders, max_bytes)
        if isinstance(result, Encoded):
            return result
        limit = result


def decode(payload: bytes) -> dict[str, Any]:
    """The dump back (``Ledger.load`` validates its content); CheckpointError on anything unreadable."""
    try:
        data = json.loads(zlib.decompress(payload))
    except (zlib.error, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint unreadable: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint: expected a mapping, got {type(data).__name__}")
    return data


def payload_of(configmap: Mapping[str, Any] | None) -> bytes | None:
    """The compressed payload of a ConfigMap as the API returns it (binaryData is base64), or None."""
    import base64
    import binascii

    if not configmap:
        return None
    raw = (configmap.get("binaryData") or {}).get(DATA_KEY)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError(f"checkpoint: binaryData is not base64: {exc}") from None


def owned_by(configmap: Mapping[str, Any], uid: str) -> bool:
    """The ConfigMap belongs to this very TradingAccount (a same-named account deleted and recreated has
    a new uid: its predecessor's checkpoint, if the garbage collector has not removed it yet, is not its)."""
    refs = (configmap.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("kind") == models.KIND for r in refs)


def body(namespace: str, account: str, uid: str, enc: Encoded, written_at: str) -> dict[str, Any]:
    """The ConfigMap, owned by the TradingAccount (deleted with it by the garbage collector)."""
    import base64

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name_for(account),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "tradewarden",
                       "app.kubernetes.io/component": "checkpoint",
                       f"{models.GROUP}/account": account if len(account) <= 63 else account[:63].rstrip("-_.")},
            "annotations": {FORMAT_ANNOTATION: FORMAT, ORDERS_ANNOTATION: str(enc.orders),
                            LEFT_OUT_ANNOTATION: str(enc.left_out), TIME_ANNOTATION: written_at},
            "ownerReferences": [{"apiVersion": models.API_VERSION, "kind": models.KIND, "name": account,
                                 "uid": uid, "controller": True}],
        },
        "binaryData": {DATA_KEY: base64.b64encode(enc.payload).decode()},
    }


def due(now: float, last_at: float, changed: bool, interval_s: float) -> bool:
    """Write now: something changed since the last checkpoint and the interval has passed since it."""
    return changed and now - last_at >= interval_s


def summary(name: str, enc: Encoded | None, written_at: str | None, error: str = "") -> dict[str, Any]:
    """status.checkpoint: where the checkpoint is and what it holds (never its content)."""
    out: dict[str, Any] = {"configMap": name, "time": written_at, "error": error}
    if enc is not None:
        out.update(orders=enc.orders, leftOut=enc.left_out, bytes=len(enc.payload))
    return out
