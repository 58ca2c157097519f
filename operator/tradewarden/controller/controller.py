"""The process-wide part of the operator: shared services and the registry of supervisors."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .deps import Deps
from .supervisor import AccountSupervisor

log = logging.getLogger(__name__)


def _kopf_post(body: Any, type_: str, reason: str, message: str) -> None:
    """An Event through kopf's poster, honouring settings.posting.level (TRADEWARDEN_EVENT_LEVEL)."""
    if type_ == "Warning":
        kopf.warn(body, reason=reason, message=message)
    else:
        kopf.info(body, reason=reason, message=message)


class Controller:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.supervisors: dict[tuple[str, str], AccountSupervisor] = {}
        self.sharder: Any = None            # sharding.Sharder when accounts are split across replicas

    @classmethod
    def create(cls, *, metrics_port: int | None = None, metrics_host: str = "0.0.0.0",
               kube: Any = None) -> "Controller":
        from .kube import Kube

        try:
            from .. import telemetry
            tele = telemetry.setup(metrics_port=metrics_port, host=metrics_host)
        except ImportError:  # telemetry is optional for the controller to work
            tele = None
        try:
            from ..gateway import default_budgets
            budgets = default_budgets()
        except ImportError:
            budgets = None
        from .checkpoint import interval_from_env

        return cls(Deps(kube=kube or Kube(), post_event=_kopf_post, budgets=budgets, telemetry=tele,
                        checkpoint_interval_s=interval_from_env()))

    def poke(self, body: Any) -> None:
        meta = body.get("metadata") or {}
        sup = self.supervisors.get((meta.get("namespace"), meta.get("name")))
        if sup is not None:
            sup.poke()

    async def serve(self, body: Any, stopped: Any, logger: Any) -> None:
        if self.sharder is None:
            return await self._serve(body, stopped, logger)
        # sharded: serve the account while this replica holds its shard, wait while another does
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace"), meta.get("name")

        async def stop_requested() -> None:
            await stopped.wait()
        while await self.sharder.wait_owned(ns, name, stop_requested):
            with self.sharder.serving(ns, name) as lost:
                await self._serve(body, stopped, logger, lost=lost)

    async def _serve(self, body: Any, stopped: Any, logger: Any, lost: asyncio.Event | None = None) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        sup = AccountSupervisor(key[0], key[1], body, self.deps, logger)
        self.supervisors[key] = sup

        async def relay() -> None:
            async def stop_requested() -> None:
                await stopped.wait()
            waits = [asyncio.ensure_future(stop_requested())]
            if lost is not None:
                waits.append(asyncio.ensure_future(lost.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            reason = stopped.reason
            deleted = bool(reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in reason)
            if not stopped and lost is not None and lost.is_set():
                logger.info("account's shard moved to another replica: handing it over")
            sup.request_stop(forget=deleted)

        relay_task = asyncio.create_task(relay())
        try:
            await sup.run()
        finally:
            relay_task.cancel()
            if self.supervisors.get(key) is sup:
                del self.supervisors[key]

    async def close(self) -> None:
        for sup in list(self.supervisors.values()):
            sup.request_stop()
        if self.sharder is not None:
            await self.sharder.close()      # after its supervisors stopped: release the shards
        try:
            self.deps.kube.close()
        except Exception:  # noqa: BLE001
            pass
