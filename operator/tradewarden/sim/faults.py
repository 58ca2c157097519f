"""Injected faults: latency, error answers, custom (malformed) bodies, answers lost after processing.
A leaf: imports ``wire``."""
from __future__ import annotations

import asyncio
import fnmatch
import http
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .wire import json_response


@dataclass
class Fault:
    method: str | None
    path: str
    status: int | None
    code: int | None
    msg: str | None
    latency_ms: int
    retry_after: int | None
    count: int | None
    processed: bool
    id: int = 0
    body: Any = None   # a custom answer (JSON value, or raw text): a hostile or malformed venue

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() not in ("*", method):
            return False
        return self.path in ("", "*") or path == self.path or fnmatch.fnmatchcase(path, self.path)

    def to_json(self) -> dict:
        return {"id": self.id, "method": self.method, "path": self.path, "status": self.status, "code": self.code,
                "msg": self.msg, "latencyMs": self.latency_ms, "retryAfter": self.retry_after, "count": self.count,
                "processed": self.processed, "body": self.body}


def reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _use(faults: list[Fault], f: Fault) -> None:
    if f.count is not None:
        f.count -= 1
        if f.count <= 0 and f in faults:
            faults.remove(f)


async def apply_rest(faults: list[Fault], method: str, path: str) -> tuple[Fault | None, web.Response | None]:
    """The first fault matching a REST request: (fault, the answer to send instead or None)."""
    for f in list(faults):
        if not f.matches(method, path):
            continue
        _use(faults, f)
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        headers = {"Retry-After": str(f.retry_after)} if f.retry_after is not None else None
        if f.body is not None:   # a custom answer, as is (default status 200)
            text = f.body if isinstance(f.body, str) else json.dumps(f.body)
            return f, web.Response(text=text, status=f.status or 200, content_type="application/json",
                                   headers=headers)
        if f.status is None:
            return f, None
        if f.code is None and f.msg is None:   # a bare proxy/gateway answer: the client has only the status
            return f, web.Response(text=f"<html><body><h1>{f.status} {reason(f.status)}</h1></body></html>",
                                   status=f.status, content_type="text/html", headers=headers)
        body: dict[str, Any] = {"code": f.code if f.code is not None else -1000,
                                "msg": f.msg if f.msg is not None else "Injected fault."}
        return f, json_response(body, status=f.status, headers=headers)
    return None, None


async def apply_ws(faults: list[Fault], path: str) -> web.Response | None:
    """Faults on a WebSocket handshake: only faults naming a WS path ("/ws-api/v3", "/ws/*"); a wildcard
    REST fault ("*") never touches the streams. Latency delays the handshake; a status refuses it."""
    for f in list(faults):
        if f.path in ("", "*") or not f.matches("GET", path):
            continue
        _use(faults, f)
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        if f.status is None:
            return None
        headers = {"Retry-After": str(f.retry_after)} if f.retry_after is not None else None
        return web.Response(text=f"{f.status} {reason(f.status)}", status=f.status, headers=headers)
    return None
