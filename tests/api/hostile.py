"""A hostile 'node' for the dashboard tests: its /v1/info passes the gateway's checks (right manifest and
receipt domain) but every free-text field, its claimed address and its registered URL carry HTML that
would run script if a page inserted it as markup. It serves nothing else."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from veriswarm.protocol import PROTOCOL_VERSION
from veriswarm.receipts import ReceiptDomain

# Each payload sets a different global, so a test can tell which one (if any) ran.
SCRIPT = "<script>window.__pwned = 'script'</script>"
IMG = "<img src=x onerror=\"window.__pwned='img'\">"
URL_PATH = "/<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"


def hostile_info(manifest_hash: str, shard: int) -> dict[str, Any]:
    domain = ReceiptDomain()
    return {"protocol_version": PROTOCOL_VERSION, "software_version": IMG, "manifest_hash": manifest_hash,
            "model_name": SCRIPT, "shard_index": shard, "num_shards": 2, "layer_start": 2, "layer_end": 4,
            "address": SCRIPT + IMG, "wire_dtypes": ["float32"], "max_length": 256, "max_sessions": 4,
            "free_sessions": 4, "chain_id": domain.chain_id, "verifying_contract": domain.verifying_contract}


def hostile_app(manifest_hash: str, shard: int = 1) -> web.Application:
    async def info(request: web.Request) -> web.Response:
        # Slow on purpose: the router prefers the honest replica (it measures round trips), so a request
        # through the gateway is not routed here first.
        await asyncio.sleep(0.3)
        return web.json_response(hostile_info(manifest_hash, shard))

    app = web.Application()
    app.router.add_get("/{tail:.*}", info)  # any path: its registered URL carries a path full of markup
    return app


class ThreadServer:
    """An aiohttp app on its own event loop in a daemon thread (for a gateway in another process)."""

    def __init__(self, app: web.Application, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(port), self.loop).result(timeout=30)

    async def _start(self, port: int) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
