"""Opening a session: the WebSockets to every hop's first choice are opened side by side, and a first choice
that cannot be reached that way is banned and the next replica of its shard used, as when it refuses the
session itself. Real node processes; the unreachable first choice is a server that answers /v1/info as a
real node does but refuses the WebSocket."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from veriswarm.client import AsyncClient
from veriswarm.deploy.local import LocalSwarm

PROMPT = [31, 32, 33, 34]


async def test_a_first_choice_that_refuses_the_websocket_is_banned_and_the_next_used(
        tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    real = next(n.url for n in tiny_swarm.nodes if n.shard == 0)
    async with aiohttp.ClientSession() as http, http.get(real + "/v1/info") as resp:
        info = await resp.json()

    async def node_info(_: web.Request) -> web.Response:
        return web.json_response(info)

    async def no_websocket(_: web.Request) -> web.Response:
        return web.Response(status=503, text="not today")

    app = web.Application()
    app.router.add_get("/v1/info", node_info)
    app.router.add_get("/v1/ws", no_websocket)
    async with TestServer(app) as server:
        fake = str(server.make_url("")).rstrip("/")
        async with AsyncClient(tiny_dir, [fake, *tiny_swarm.urls]) as client:
            async with aiohttp.ClientSession() as http:
                await client.router.refresh(http)
            for url, stats in client.router.peers.items():
                stats.rtt_s = 0.0 if url == fake else 5.0  # the refusing server ranks first for shard 0
            assert client.router.candidates(0)[0].url == fake
            gen = await client.generate_ids(PROMPT, max_new_tokens=4, ignore_eos=True)
            assert len(gen.token_ids) == 4 and gen.route[0] == real
            assert client.router.peers[fake].strikes == 1
            assert any("unreachable" in e and fake in e for e in client.router.stats.events)
