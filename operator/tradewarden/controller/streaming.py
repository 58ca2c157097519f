"""The consumer of one account's user-data stream: a task that feeds the gateway's events to the
supervisor, restarts a stream that failed, and keeps the stream's state as status shows it."""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Callable, Protocol, Sequence

from .. import domain
from . import schedule
from .vocabulary import StreamState

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0


class StreamOwner(Protocol):
    """What the consumer tells its supervisor."""
    log: Any

    def stream_running(self, running: bool) -> None: ...
    def stream_state_changed(self, state: StreamState) -> None: ...
    def stream_reconnected(self, counted: bool) -> None: ...
    async def stream_event(self, event: domain.StreamEvent) -> None: ...
    def wake(self) -> None: ...


class StreamConsumer:
    def __init__(self, owner: StreamOwner, clock: Callable[[], float], rng: random.Random,
                 reconnects: int = 0) -> None:
        self.owner = owner
        self.clock = clock
        self.rng = rng
        self.state = StreamState.DISCONNECTED
        self.since_ms: int | None = None
        self.reconnects = reconnects              # carried over from status across restarts
        self.last_event_ms: int | None = None
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, gateway: domain.Gateway, symbols: Sequence[str], name: str) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._consume(gateway, list(symbols)), name=name)
            self.owner.stream_running(True)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.owner.stream_running(False)
        task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(task, return_exceptions=True)),
                                   timeout=CLOSE_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        self._set(StreamState.DISCONNECTED)

    def _set(self, state: StreamState) -> None:
        if state != self.state:
            self.state = state
            self.since_ms = int(self.clock() * 1000)
            self.owner.stream_state_changed(state)

    async def _consume(self, gateway: domain.Gateway, symbols: list[str]) -> None:
        failures = 0
        while True:
            stream = gateway.stream(symbols)
            try:
                async for event in stream:
                    await self._on_event(event)
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the stream restarts, the account is reconciled
                self.owner.log.warning("user-data stream failed: %s: %s", type(exc).__name__, exc)
            finally:
                # `async for` never closes its iterator: without this a failed consumer would leave the
                # old connection (its socket, its supervisor task) running beside the next one
                try:
                    await stream.aclose()       # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001
                    self.owner.log.debug("closing the user-data stream failed", exc_info=True)
            failures += 1
            self._set(StreamState.RECONNECTING)
            self.owner.stream_reconnected(counted=False)
            await asyncio.sleep(schedule.backoff_s(failures, self.rng) / 5)

    async def _on_event(self, event: domain.StreamEvent) -> None:
        if isinstance(event, domain.ConnectionEvent):
            if event.state is domain.ConnectionState.CONNECTED:
                self._set(StreamState.CONNECTED)
            elif event.state is domain.ConnectionState.DISCONNECTED:
                self._set(StreamState.RECONNECTING)
            elif event.state is domain.ConnectionState.RECONNECTED:
                self._set(StreamState.CONNECTED)
                self.reconnects += 1
                self.owner.log.info("stream reconnected: reconciling now")
                self.owner.stream_reconnected(counted=True)
            self.owner.wake()
            return
        await self.owner.stream_event(event)
