"""Wire types of the simulator: routes, requests, JSON answers. A leaf: imports only ``engine``.

Import direction inside ``tradewarden.sim`` (one way, no cycle)::

    engine  <-  wire, auth, limits, faults, listen_keys  <-  handlers, control  <-  server
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from .engine import Account, SimError

if TYPE_CHECKING:   # the Simulator is only a type here: handlers receive it inside a Request
    from .server import Simulator

Handler = Callable[["Request"], Awaitable[Any]]


class RawJSON(str):
    """An already-serialized JSON body (the server sends it as is)."""


def dump(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    text = data if isinstance(data, RawJSON) else dump(data)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def error_response(e: SimError) -> web.Response:
    return json_response(e.body(), status=e.status, headers=e.headers)


@dataclass
class Route:
    venue: str
    method: str
    path: str
    handler: Handler
    weight: int | Callable[[dict], int]
    security: str = "NONE"      # NONE | USER_STREAM (key only) | SIGNED
    order: bool = False          # counts toward order rate limits


@dataclass
class Request:
    sim: "Simulator"
    venue: str
    params: dict[str, str]
    account: Account | None
    ip: str
    http: web.Request
