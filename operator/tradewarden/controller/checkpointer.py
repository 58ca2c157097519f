"""The restart checkpoint's executor: the I/O around the pure rules of ``checkpoint.py``.

One per account supervisor. It reads the checkpoint once, before the first runner exists, and writes it on
its own cadence: after a change, at most every ``interval_s``, beside the account's loop (one write at a time,
so a slow API server never holds up a run), and once more on a graceful stop. What it says goes to
``status.checkpoint`` (``status``); a checkpoint RBAC forbids is one Warning Event, and the account is served
from a fresh sync.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping

from . import checkpoint as ckpt
from . import status as st
from .kube import Forbidden


class Checkpointer:
    def __init__(self, namespace: str, name: str, kube: Any, *, interval_s: float, clock: Callable[[], float],
                 log: logging.LoggerAdapter | logging.Logger, post: Callable[[str, str, str], None],
                 changed_status: Callable[[], None], written: Callable[[], None],
                 previous: Callable[[], Mapping[str, Any] | None], legacy: Any = None) -> None:
        self.namespace, self.name, self.kube, self.interval_s = namespace, name, kube, interval_s
        self._clock, self.log, self._post = clock, log, post
        self._changed_status = changed_status      # status.checkpoint changed: the supervisor marks status
        self._written = written                    # a write landed: the supervisor wakes to flush status
        self._previous = previous                  # status.checkpoint as last written
        self._legacy = legacy                      # the ledger versions before this one kept in status
        self.saved: dict[str, Any] | None = None   # the dump to resume from (taken once, by the first runner)
        self.resume = False                        # a checkpoint was found: the initial sync resumes it
        self.loaded = False
        self.changed = False                       # the ledger changed since the last checkpoint
        self.at = 0.0                              # when the last one was written (or tried)
        self.status: dict[str, Any] | None = None  # status.checkpoint (None: keep the previous)
        self._digest = ""
        self._forbidden_posted = False
        self._task: asyncio.Future | None = None   # the write in flight

    @property
    def object_name(self) -> str:
        return ckpt.name_for(self.name)

    def summary(self, enc: ckpt.Encoded | None = None, when_ms: int | None = None, error: str = "") -> dict[str, Any]:
        prev = self._previous() or {}
        if enc is None and when_ms is None and prev:      # an error: what was last written stays shown
            return {**prev, "configMap": self.object_name, "error": error}
        return ckpt.summary(self.object_name, enc, st.rfc3339(when_ms) if when_ms else None, error)

    def _say(self, error: str) -> None:
        self.status = self.summary(error=st.clip(error, 512))
        self._changed_status()

    def due_at(self, now: float) -> float | None:
        """When the next write is due, if the ledger changed."""
        return max(now, self.at + self.interval_s) if self.changed else None

    def not_restored(self, why: str) -> None:
        self.resume = False
        self.status = self.summary(error=st.clip(f"not restored: {why}", 512))

    def take_saved(self) -> dict[str, Any] | None:
        saved, self.saved = self.saved, None         # a 10,000-order dict is not kept once loaded
        return saved

    # ---- reading ------------------------------------------------------------------------------------------

    async def load(self, uid: str) -> bool:
        """Read the checkpoint once, before the first runner exists. False: try again later (the API server
        did not answer); a checkpoint RBAC forbids or that cannot be read is said, and the account starts
        from a fresh sync (its orders adopted, nothing reported)."""
        try:
            cm = await self.kube.get_configmap(self.namespace, self.object_name)
        except asyncio.CancelledError:
            raise
        except Forbidden as exc:
            self.loaded = True
            self.forbidden(str(exc))
            return True
        except Exception as exc:  # noqa: BLE001 - retried with the build's backoff
            self.log.warning("reading the checkpoint failed: %s: %s", type(exc).__name__, exc)
            self._say(f"read failed: {type(exc).__name__}")
            return False
        self.loaded = True
        if cm is not None and uid and not ckpt.owned_by(cm, uid):
            self.log.info("checkpoint %s belongs to an earlier account of this name: not restored", self.object_name)
            cm = None
        try:
            payload = ckpt.payload_of(cm)
            self.saved = ckpt.decode(payload) if payload is not None else None
        except ckpt.CheckpointError as exc:
            self.log.warning("checkpoint not restored (%s): starting from a fresh sync", exc)
            self._say(f"not restored: {exc}")
        if self.saved is None and isinstance(self._legacy, dict) and self._legacy:
            self.saved = dict(self._legacy)      # written by a version that kept it in status
        self._legacy = None
        if self.saved is not None:
            self.resume = True
            self.log.info("resuming from the checkpoint (%s orders)", len(self.saved.get("o") or ()))
        return True

    def forbidden(self, message: str) -> None:
        self.log.warning("checkpoint: %s (grant configmaps get/create/update in this namespace)", message)
        if not self._forbidden_posted:
            self._post("Warning", "CheckpointForbidden",
                       f"{message}: a restart cannot resume from a checkpoint (orders are adopted, changes made "
                       "while the operator was down are not reported); grant configmaps get/create/update")
            self._forbidden_posted = True
        self._say(message)

    # ---- writing ------------------------------------------------------------------------------------------

    async def write(self, ledger: Any, uid: str, now: float, final: bool = False) -> None:
        """Write when due: after a change, at most every ``interval_s`` (on a graceful stop, whatever the
        interval). ``ledger``: None unless it knows the account's orders (a fresh one would replace a good
        checkpoint with nothing). The final write is awaited."""
        if self._task is not None and not self._task.done():
            if not final:
                return
            await asyncio.wait([self._task])
        if ledger is None or not uid:
            return
        if not (self.changed if final else ckpt.due(now, self.at, self.changed, self.interval_s)):
            return
        self.changed, self.at = False, now
        if final:
            await self._write(ledger, uid)
        else:
            self._task = asyncio.ensure_future(self._write(ledger, uid))

    async def settled(self) -> None:
        """Until the write in flight (if any) is done (tests, and the final checkpoint)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _write(self, ledger: Any, uid: str) -> None:
        try:
            await self._write_once(ledger, uid)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug here must not go unseen, nor stop the account's supervision
            self.log.exception("checkpoint write failed")
            self.changed = True

    async def _write_once(self, ledger: Any, uid: str) -> None:
        try:
            enc = await self._encode(ledger)
        except ckpt.CheckpointError as exc:      # over the bound without a single order: said, never fatal
            self.log.warning("checkpoint not written: %s", exc)
            self._say(str(exc))
            return
        if enc.digest == self._digest:
            return
        when_ms = int(self._clock() * 1000)
        try:
            await self.kube.put_configmap(ckpt.body(self.namespace, self.name, uid, enc, st.rfc3339(when_ms)))
        except asyncio.CancelledError:
            raise
        except Forbidden as exc:
            self.forbidden(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - tried again after the interval; the ledger is in memory
            self.log.warning("writing the checkpoint failed: %s: %s", type(exc).__name__, exc)
            self.changed = True
            self._say(f"write failed: {type(exc).__name__}")
            return
        if enc.left_out and not self._digest:
            self.log.warning("checkpoint holds %s orders, %s left out (over %s bytes compressed): a restart reads "
                             "history for them", enc.orders, enc.left_out, ckpt.MAX_PAYLOAD_BYTES)
        self._digest = enc.digest
        self.status = self.summary(enc, when_ms)
        self._changed_status()
        self._written()                 # status says so at the next flush

    @staticmethod
    async def _encode(ledger: Any) -> ckpt.Encoded:
        """The ledger dumped here (the event loop is its one writer), compressed in a worker thread (10,000
        orders: ~0.15 s of JSON and zlib); a dump over the bound is asked again for fewer orders."""
        loop = asyncio.get_running_loop()
        total, limit = len(ledger.orders), None
        while True:
            result = await loop.run_in_executor(None, ckpt.compress, ledger.dump(limit), total)
            if isinstance(result, ckpt.Encoded):
                return result
            limit = result
