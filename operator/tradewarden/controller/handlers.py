"""The kopf handlers: thin. One daemon per TradingAccount runs its AccountSupervisor; every watch
event pokes the supervisor so that annotations and spec changes are acted on at once.

Entry point for ``kopf run -m tradewarden.controller.handlers`` and ``tradewarden run``.
"""
from __future__ import annotations

import logging
from typing import Any

import kopf

from .. import models
from . import settings as tw_settings
from .controller import Controller

log = logging.getLogger(__name__)


class _QuietPokes(logging.Filter):
    """The watch-event poke runs on every change of every account (our own status writes too):
    its success line would drown the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith("Handler 'poke' succeeded"))


logging.getLogger("kopf.objects").addFilter(_QuietPokes())


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    tw_settings.configure(settings)
    if getattr(memo, "controller", None) is None:
        memo.controller = Controller.create(metrics_port=getattr(memo, "metrics_port", None),
                                            metrics_host=getattr(memo, "metrics_host", "0.0.0.0"))
        shard_settings = getattr(memo, "shard_settings", None)
        from ..gateway.identity import set_instance
        set_instance(shard_settings.identity if shard_settings is not None else tw_settings.reporting_instance())
        if shard_settings is not None:
            from .sharding import LeaseApi, Sharder
            memo.controller.sharder = Sharder(shard_settings, LeaseApi(shard_settings.namespace))
            memo.controller.sharder.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    controller = getattr(memo, "controller", None)
    if controller is not None:
        await controller.close()


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
def poke(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller = getattr(memo, "controller", None)
    if controller is not None:
        controller.poke(body)


# kopf puts its finalizer on accounts for this daemon; on deletion (or a peering pause, or exit) the
# supervisor abandons whatever it waits for and closes the gateway within seconds, never calling the
# exchange: kopf signals it, waits up to 5 s, then cancels it (10 s more at most).
@kopf.daemon(models.GROUP, models.VERSION, models.PLURAL, id="account",
             cancellation_backoff=5.0, cancellation_timeout=10.0)
async def account(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                  logger: logging.Logger, **_: Any) -> None:
    await memo.controller.serve(body, stopped, logger)
