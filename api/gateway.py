"""An OpenAI-compatible HTTP gateway in front of the swarm (``veriswarm api serve``).

``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` — streaming (server-sent
events ending with ``data: [DONE]``) and not. Every response also says what served it: the manifest hash,
the chain of node addresses, and the ids of the checked receipts (the ``veriswarm`` field, and the
``X-Veriswarm-Manifest`` / ``X-Veriswarm-Route`` headers), so an app can look up verification verdicts.
``GET /dashboard`` is a live view of the swarm (api/dashboard.py).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from veriswarm.client import AsyncClient, Generation, SamplingParams
from veriswarm.errors import ConfigError, ReceiptError, RemoteError

from .dashboard import add_dashboard
from .openai_types import ApiError, ChatRequest, CompletionRequest, parse
from .swarm_view import DashboardSources, RequestLog

log = logging.getLogger("veriswarm.api")


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    requests_per_minute: int = 120
    burst: int = 20
    max_body_bytes: int = 1024 * 1024
    default_max_tokens: int = 256
    model_id: str = ""  # default: the manifest's model name
    dashboard: bool = True  # GET /dashboard: public, read only (no API key), like /health

    def check(self) -> None:
        if not self.api_keys and not _is_loopback(self.host):
            raise ConfigError(f"refusing to serve on {self.host} without API keys: pass --api-key or bind to 127.0.0.1")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class RateLimiter:
    """Token bucket per API key (or per client address when keys are off)."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate, self.burst = per_minute / 60.0, float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, who: str) -> bool:
        now = time.monotonic()
        b = self._buckets.setdefault(who, _Bucket(self.burst, now))
        b.tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
        b.updated = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        return False


CLIENT = web.AppKey("client", AsyncClient)
CONFIG = web.AppKey("config", GatewayConfig)
LIMITER = web.AppKey("limiter", RateLimiter)
REQUESTS = web.AppKey("requests", RequestLog)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    try:
        if request.path.startswith("/v1/"):
            who = request.remote or "?"
            if cfg.api_keys:
                auth = request.headers.get("Authorization", "")
                key = auth[7:] if auth.startswith("Bearer ") else ""
                if not any(secrets.compare_digest(key, k) for k in cfg.api_keys):
                    raise ApiError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                                   code="invalid_api_key")
                who = key
            if not request.app[LIMITER].allow(who):
                raise ApiError(429, "rate limit exceeded; slow down", type_="rate_limit_error",
                               code="rate_limit_exceeded")
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPRequestEntityTooLarge:
        return web.json_response(ApiError(413, f"request body exceeds {cfg.max_body_bytes} bytes").body(), status=413)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return web.json_response(ApiError(exc.status, exc.reason or "error").body(), status=exc.status)
        raise
    except (RemoteError, ReceiptError) as exc:
        log.warning("swarm error: %s", exc)
        return web.json_response(ApiError(503, f"the swarm could not serve this request: {exc}", type_="server_error",
                                          code="swarm_unavailable").body(), status=503)
    except Exception:
        log.exception("internal error on %s", request.path)
        return web.json_response(ApiError(500, "internal error", type_="server_error").body(), status=500)


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None


def _check_model(request: web.Request, model: str) -> None:
    expected = request.app[CONFIG].model_id
    if model != expected:
        raise ApiError(404, f"model {model!r} does not exist; this gateway serves {expected!r}", param="model",
                       code="model_not_found")


def _budget(request: web.Request, prompt_len: int, asked: int | None) -> int:
    client = request.app[CLIENT]
    context = client.manifest.config.max_position_embeddings
    max_tokens = asked if asked is not None else min(request.app[CONFIG].default_max_tokens, context - prompt_len)
    if prompt_len + max_tokens > context:
        raise ApiError(400, f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                       f"of {context}", param="max_tokens", code="context_length_exceeded")
    if max_tokens < 1:
        raise ApiError(400, "no room left in the context for a completion", code="context_length_exceeded")
    return max_tokens


def _extension(client: AsyncClient, gen: Generation) -> dict[str, Any]:
    by_url = {r.node_url: r.node_address for r in gen.records}
    return {"manifest_hash": client.manifest_hash,
            "route": [{"shard": i, "url": url, "address": by_url.get(url, "")} for i, url in enumerate(gen.route)],
            "receipt_ids": [r.receipt.receipt_id() for r in gen.records],
            "failovers": [{"shard": f.shard, "from": f.from_url, "to": f.to_url} for f in gen.failovers]}


def _headers(client: AsyncClient, gen: Generation | None = None) -> dict[str, str]:
    h = {"X-Veriswarm-Manifest": client.manifest_hash}
    if gen is not None and gen.records:
        h["X-Veriswarm-Route"] = ",".join(dict.fromkeys(r.node_address for r in gen.records))
    return h


def _usage(gen: Generation) -> dict[str, int]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": len(gen.token_ids),
            "total_tokens": gen.prompt_tokens + len(gen.token_ids)}


async def _run(request: web.Request, ids: list[int], body: ChatRequest | CompletionRequest, max_tokens: int,
               chat: bool) -> web.StreamResponse:
    client = request.app[CLIENT]
    started = time.perf_counter()
    params = SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=body.seed)
    gen = Generation("", [], len(ids), "length", [])
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    events: AsyncIterator[Any] = client.stream_ids(ids, max_new_tokens=max_tokens, params=params, stop=body.stops(),
                                                   into=gen)
    if not body.stream:
        async for _ in events:
            pass
        request.app[REQUESTS].record(len(gen.token_ids), time.perf_counter() - started)
        choice: dict[str, Any] = {"index": 0, "finish_reason": gen.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": gen.text}
        else:
            choice["text"] = (body.text() if isinstance(body, CompletionRequest) and body.echo else "") + gen.text
            choice["logprobs"] = None
        return web.json_response({"id": rid, "object": obj, "created": created, "model": body.model,
                                  "choices": [choice], "usage": _usage(gen), "veriswarm": _extension(client, gen)},
                                 headers=_headers(client, gen))

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       **_headers(client)})
    await resp.prepare(request)
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, finish: str | None = None, **extra: Any) -> bytes:
        if chat:
            d: dict[str, Any] = {} if delta is None else {"content": delta}
            c: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish}
        else:
            c = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        payload = {"id": rid, "object": chunk_obj, "created": created, "model": body.model, "choices": [c], **extra}
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    try:
        if chat:
            first = {"id": rid, "object": chunk_obj, "created": created, "model": body.model,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            await resp.write(b"data: " + json.dumps(first).encode() + b"\n\n")
        async for event in events:
            if event.text:
                await resp.write(chunk(event.text))
        request.app[REQUESTS].record(len(gen.token_ids), time.perf_counter() - started)
        await resp.write(chunk(None, gen.finish_reason, veriswarm=_extension(client, gen)))
        if body.stream_options and body.stream_options.include_usage:
            await resp.write(b"data: " + json.dumps({"id": rid, "object": chunk_obj, "created": created,
                                                     "model": body.model, "choices": [],
                                                     "usage": _usage(gen)}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
    except (ConnectionResetError, ConnectionError):
        log.info("client went away mid-stream; releasing the node sessions")
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # closes the chain: node sessions are released
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body: ChatRequest = parse(ChatRequest, await _json(request))
    _check_model(request, body.model)
    client = request.app[CLIENT]
    ids = client.encode_chat([m.model_dump(include={"role", "content"}) for m in body.messages])
    max_tokens = _budget(request, len(ids), body.max_completion_tokens or body.max_tokens)
    return await _run(request, ids, body, max_tokens, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    body: CompletionRequest = parse(CompletionRequest, await _json(request))
    _check_model(request, body.model)
    client = request.app[CLIENT]
    ids = client.encode(body.text())
    if not ids:
        raise ApiError(400, "prompt is empty", param="prompt")
    return await _run(request, ids, body, _budget(request, len(ids), body.max_tokens), chat=False)


async def models(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    return web.json_response({"object": "list", "data": [{
        "id": request.app[CONFIG].model_id, "object": "model", "created": 0, "owned_by": "veriswarm",
        "veriswarm": {"manifest_hash": client.manifest_hash, "shards": len(client.manifest.shards)}}]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(*, client: AsyncClient, config: GatewayConfig, dashboard: DashboardSources | None = None) -> web.Application:
    config.check()
    if not config.model_id:
        config.model_id = client.manifest.model_name
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[openai_errors])
    app[CLIENT] = client
    app[CONFIG] = config
    app[LIMITER] = RateLimiter(config.requests_per_minute, config.burst)
    sources = dashboard or DashboardSources()
    app[REQUESTS] = sources.requests
    if config.dashboard:
        add_dashboard(app, client, sources)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)

    async def close_client(app: web.Application) -> None:
        await app[CLIENT].close()

    app.on_cleanup.append(close_client)
    return app


def serve(client_factory: Any, config: GatewayConfig, dashboard: DashboardSources | None = None) -> None:
    """Run the gateway until interrupted (the client is built inside the server's event loop)."""
    config.check()

    async def build() -> web.Application:
        return make_app(client=client_factory(), config=config, dashboard=dashboard)

    print(f"veriswarm api ready: http://{config.host}:{config.port}/v1", flush=True)
    if config.dashboard:
        print(f"veriswarm dashboard: http://{config.host}:{config.port}/dashboard", flush=True)
    web.run_app(build(), host=config.host, port=config.port, print=None)
