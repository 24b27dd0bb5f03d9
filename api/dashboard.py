"""The live swarm dashboard on the gateway: ``GET /dashboard`` (the page) and ``/dashboard/state.json``.

The page is static HTML + JS + CSS shipped in this package (no CDN) and polls the JSON every ~1.5 s. It
renders node-supplied data with textContent only, and the page is served with a strict
Content-Security-Policy (no inline script, nothing from other origins) as a second line of defence.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Any

import aiohttp
from aiohttp import web

from veriswarm.client import AsyncClient

from .swarm_view import DashboardSources, collect

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
#: A snapshot probes every node; polls arriving faster than this share one (bounds the load any number
#: of open pages put on the nodes, the chain and the ledger).
MIN_REFRESH_S = 1.0


class DashboardState:
    def __init__(self, client: AsyncClient, sources: DashboardSources) -> None:
        self.client = client
        self.sources = sources
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._snapshot: dict[str, Any] | None = None
        self._taken = 0.0

    async def snapshot(self) -> dict[str, Any]:
        async with self._lock:
            if self._snapshot is None or time.monotonic() - self._taken >= MIN_REFRESH_S:
                if self._http is None:
                    self._http = aiohttp.ClientSession()
                self._snapshot = await collect(self.client, self.sources, self._http)
                self._taken = time.monotonic()
            return self._snapshot

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


STATE = web.AppKey("dashboard", DashboardState)


def _asset(name: str) -> bytes:
    return (resources.files("veriswarm.api") / "static" / name).read_bytes()


async def page(request: web.Request) -> web.Response:
    return web.Response(body=_asset("dashboard.html"), content_type="text/html", charset="utf-8",
                        headers=SECURITY_HEADERS)


async def to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard")  # the page's asset paths are absolute; one canonical address


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:  # a fixed list: no path from the request ever reaches the filesystem
        raise web.HTTPNotFound()
    return web.Response(body=_asset(name), content_type=_STATIC[name], charset="utf-8", headers=SECURITY_HEADERS)


async def state(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STATE].snapshot(), headers=SECURITY_HEADERS)


def add_dashboard(app: web.Application, client: AsyncClient, sources: DashboardSources) -> None:
    app[STATE] = DashboardState(client, sources)
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/", to_page)
    app.router.add_get("/dashboard/state.json", state)
    app.router.add_get("/dashboard/static/{name}", static)

    async def close(app: web.Application) -> None:
        await app[STATE].close()

    app.on_cleanup.append(close)
