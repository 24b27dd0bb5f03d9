"""The verifier's HTTP service: hops in (``POST /v1/hops``), verdicts out (``GET /v1/verdicts``).

Audits run in a worker thread off the event loop; the service keeps answering while one runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.typedefs import Handler

from veriswarm.errors import HTTP_STATUS, ErrorCode, ProtocolError, ReceiptError
from veriswarm.frames import DTYPE_NAMES, decode_tensor
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER, decode_submission
from veriswarm.receipts import Receipt
from veriswarm.sinks import HopRecord

from .core import Verifier, VerifierError

log = logging.getLogger("veriswarm.verifier")
VERIFIER = web.AppKey("verifier", Verifier)
MAX_BODY = 64 * 1024 * 1024


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.method == "POST" and request.headers.get(VERSION_HEADER) != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.PROTOCOL_VERSION, f"send {VERSION_HEADER}: {PROTOCOL_VERSION}")
        return await handler(request)
    except ProtocolError as exc:
        return _error(HTTP_STATUS[exc.code], exc.code.value, exc.message)
    except (VerifierError, ReceiptError) as exc:
        status = 409 if "already submitted" in str(exc) else 422
        return _error(status, "rejected", str(exc))
    except web.HTTPRequestEntityTooLarge:
        return _error(413, ErrorCode.TOO_LARGE.value, f"body exceeds {MAX_BODY} bytes")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("internal error on %s", request.path)
        return _error(500, ErrorCode.INTERNAL.value, "internal error (see the verifier's log)")


async def submit_hop(request: web.Request) -> web.Response:
    sub, inp, out = decode_submission(await request.read())
    for frame in (inp, out):
        decode_tensor(frame, max_bytes=MAX_BODY, dtypes=frozenset(DTYPE_NAMES.values()))  # well-formed frames only
    record = HopRecord(Receipt.from_json(sub.receipt), sub.node_url, sub.node_address, inp, out)
    request.app[VERIFIER].submit(record)
    return web.json_response({"accepted": record.receipt.receipt_id()}, status=202)


async def verdicts(request: web.Request) -> web.Response:
    v = request.app[VERIFIER]
    return web.json_response({"verdicts": list(v.verdicts)[-200:], "stats": v.stats})


async def info(request: web.Request) -> web.Response:
    v = request.app[VERIFIER]
    return web.json_response({"address": v.config.address, "manifest_hash": v.manifest.hash,
                              "beacon_commitment": v.beacon.commitment, "protocol_version": PROTOCOL_VERSION})


async def audit_now(request: web.Request) -> web.Response:
    """Audit every pending session now (operators and tests; the loop does it on idle anyway)."""
    v = request.app[VERIFIER]
    done = await asyncio.get_running_loop().run_in_executor(request.app[EXECUTOR], lambda: v.audit_due(force=True))
    return web.json_response({"audited": [d.summary() for d in done]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)


async def _background(app: web.Application) -> AsyncIterator[None]:
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verifier-audit")
    v = app[VERIFIER]

    async def loop() -> None:
        while True:
            await asyncio.sleep(min(1.0, v.config.idle_s / 2))
            try:
                await asyncio.get_running_loop().run_in_executor(app[EXECUTOR], v.audit_due)
                v.drop_stale()
            except Exception:
                log.exception("audit loop error")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    app[EXECUTOR].shutdown(wait=True, cancel_futures=True)


def make_app(*, verifier: Verifier) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors])
    app[VERIFIER] = verifier
    app.router.add_post("/v1/hops", submit_hop)
    app.router.add_post("/v1/audit", audit_now)
    app.router.add_get("/v1/verdicts", verdicts)
    app.router.add_get("/v1/info", info)
    app.router.add_get("/health", health)
    app.cleanup_ctx.append(_background)
    return app
