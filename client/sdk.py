"""The application developer's SDK: embeddings and LM head run here; nodes only see hidden states."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import torch

from veriswarm.errors import ConfigError
from veriswarm.manifest import ModelDir
from veriswarm.receipts import ReceiptDomain
from veriswarm.sinks import HopRecord, MemorySink, NullSink, ReceiptSink
from veriswarm.split.artifacts import load_head

from .chain import ChainSession, Failover
from .registry import Registry, StaticRegistry
from .routing import Router
from .sampling import SamplingParams, sample
from .transport import ResolvedPeer

T = TypeVar("T")


@dataclass
class TokenEvent:
    token_id: int
    text: str  # the new text this token completed (may be "" for a partial multi-byte character)
    logits: torch.Tensor | None = None


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    route: list[str]  # node URLs, shard order
    records: list[HopRecord] = field(default_factory=list)
    step_logits: list[torch.Tensor] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    #: steps that went node to node (server-to-server relay) rather than through the client
    relayed_steps: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0


class _Tee:
    """Sends each checked hop to the user's sink and keeps it for the Generation."""

    def __init__(self, sink: ReceiptSink) -> None:
        self.sink, self.mine = sink, MemorySink()

    def submit(self, record: HopRecord) -> None:
        self.mine.submit(record)
        self.sink.submit(record)


class AsyncClient:
    def __init__(self, model_dir: str | Path, registry: Registry | str | list[str], *,
                 sink: ReceiptSink | None = None, domain: ReceiptDomain | None = None,
                 wire_dtype: str = "float32", timeout_s: float = 30.0, relay: bool = True,
                 reputation: Callable[[str], float] | None = None) -> None:
        self.model_dir = ModelDir.open(model_dir)
        self.manifest = self.model_dir.manifest
        self.registry = registry if not isinstance(registry, (str, list)) else StaticRegistry.from_urls(registry)
        self.sink = sink or NullSink()
        self.domain = domain or ReceiptDomain()
        self.wire_dtype = wire_dtype
        self.timeout_s = timeout_s
        #: server-to-server relay where every node of the chain offers it (each node hands its output
        #: to the next; the client sends once and hears back once per step)
        self.relay = relay
        self.head = load_head(self.model_dir)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir.tokenizer_dir()))
        # ``reputation``: verified reputation by node address (e.g. incentives.reputation.LedgerReputation);
        # it weights the measured latency, and a node at 0 (excluded by the ledger) is never routed to.
        self.router = Router(self.registry, manifest_hash=self.manifest.hash, num_shards=len(self.manifest.shards),
                             domain=self.domain, timeout_s=timeout_s, reputation=reputation)
        self._http: aiohttp.ClientSession | None = None

    @property
    def manifest_hash(self) -> str:
        return self.manifest.hash

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    # ---- routing -------------------------------------------------------------------------
    def _chain(self, plan: list[list[ResolvedPeer]], sink: ReceiptSink, session_id: str | None = None) -> ChainSession:
        return ChainSession(self._session(), plan, manifest_hash=self.manifest_hash, domain=self.domain, sink=sink,
                            router=self.router, timeout_s=self.timeout_s, wire_dtype=self.wire_dtype,
                            session_id=session_id, relay=self.relay)

    # ---- prompts ---------------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("this model's tokenizer has no chat template; use generate() with a plain prompt")
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt).input_ids)

    def _decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text if isinstance(text, str) else "".join(text)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = self.manifest.config.eos_token_id
        ids.update(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    # ---- generation ------------------------------------------------------------------------
    async def stream_ids(self, prompt_ids: Sequence[int], *, max_new_tokens: int = 64,
                         params: SamplingParams | None = None, stop: Sequence[str] = (),
                         return_logits: bool = False, ignore_eos: bool = False,
                         into: Generation | None = None, session_id: str | None = None) -> AsyncIterator[TokenEvent]:
        """Yield each generated token as it arrives. ``into`` (optional) is filled as generation goes:
        token ids, text, route, receipts, failovers, timings; closing the iterator early releases the
        node sessions. ``session_id`` reuses a session id (re-asking the same nodes the same thing, as a
        retry or a probe does); by default each generation gets a fresh random one."""
        params = params or SamplingParams()
        if not prompt_ids:
            raise ConfigError("the prompt is empty")
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be at least 1")
        max_length = len(prompt_ids) + max_new_tokens
        if max_length > self.manifest.config.max_position_embeddings:
            raise ConfigError(f"prompt + max_new_tokens = {max_length} exceeds the model's context of "
                              f"{self.manifest.config.max_position_embeddings}")
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        tee = _Tee(self.sink)
        chain = self._chain(await self.router.plan(self._session()), tee, session_id)
        gen = into if into is not None else Generation("", [], len(prompt_ids), "length", [])
        gen.records = tee.mine.records
        gen.failovers = chain.failovers
        eos = set() if ignore_eos else self._eos_ids()
        t0 = time.perf_counter()
        #: the next step, sent before the current token's text is worked out and handed over
        ahead: asyncio.Task[torch.Tensor] | None = None
        try:
            await chain.open(max_length)
            hidden = self.head.embed_tokens(torch.tensor([list(prompt_ids)]))
            text = ""  # text already yielded
            stopped = False
            for i in range(max_new_tokens):
                if ahead is not None:
                    out, ahead = await ahead, None
                else:
                    out = await chain.step(hidden)
                gen.route = chain.route
                logits = self.head.logits(out[:, -1:])[0, -1]
                if return_logits:
                    gen.step_logits.append(logits.clone())
                token = sample(logits, params, generator)
                if i == 0:
                    gen.ttft_s = time.perf_counter() - t0
                if token in eos:
                    gen.finish_reason = "stop"
                    break
                gen.token_ids.append(token)
                if i + 1 < max_new_tokens:
                    # The nodes compute the next step while this token is decoded to text and handed to the
                    # caller. A stop string found below cancels it (its token is never made; a step that
                    # finished first was still checked, and its receipts go to the sink as work done).
                    ahead = asyncio.create_task(chain.step(self.head.embed_tokens(torch.tensor([[token]]))))
                    await asyncio.sleep(0)  # let it send
                full = self._decode(gen.token_ids)
                hit = _first_stop(full, stop)
                if hit is not None:
                    delta, text = full[:hit][len(text):], full[:hit]
                    gen.finish_reason, stopped = "stop", True
                    yield TokenEvent(token, delta, logits if return_logits else None)
                    break
                # Hold back an unfinished character and any tail that may begin a stop string.
                safe = full[:-1] if full.endswith("\ufffd") else full
                safe = safe[: len(safe) - _stop_prefix_len(safe, stop)]
                delta = safe[len(text):] if len(safe) > len(text) and safe.startswith(text) else ""
                text += delta
                yield TokenEvent(token, delta, logits if return_logits else None)
            if not stopped:
                full = self._decode(gen.token_ids)
                if len(full) > len(text) and full.startswith(text):
                    yield TokenEvent(gen.token_ids[-1], full[len(text):])
                text = full
            gen.text = text
        finally:
            if ahead is not None:  # stopped early (a stop string, an error, the caller closing the stream)
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead
            gen.total_s = time.perf_counter() - t0
            gen.route = chain.route
            gen.relayed_steps = chain.relay_steps
            await chain.close()

    async def prefill_logits(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        """Logits [T, vocab] for every prompt position via stateless forwards (no KV caches)."""
        chain = self._chain(await self.router.plan(self._session()), self.sink)
        hidden = await chain.forward(self.head.embed_tokens(torch.tensor([list(prompt_ids)])))
        return self.head.logits(hidden)[0]

    async def generate_ids(self, prompt_ids: Sequence[int], *, max_new_tokens: int = 64,
                           temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                           stop: Sequence[str] = (), return_logits: bool = False, ignore_eos: bool = False,
                           session_id: str | None = None) -> Generation:
        gen = Generation("", [], len(prompt_ids), "length", [])
        params = SamplingParams(temperature, top_p, top_k, seed)
        async for _ in self.stream_ids(prompt_ids, max_new_tokens=max_new_tokens, params=params, stop=stop,
                                       return_logits=return_logits, ignore_eos=ignore_eos, into=gen,
                                       session_id=session_id):
            pass
        return gen

    async def generate(self, prompt: str, **kwargs: Any) -> Generation:
        """Complete a plain text prompt (no chat template)."""
        return await self.generate_ids(self.encode(prompt), **kwargs)

    async def chat(self, messages: Sequence[dict[str, str]], **kwargs: Any) -> Generation:
        """Answer a chat (list of {"role", "content"}) using the model's chat template."""
        return await self.generate_ids(self.encode_chat(messages), **kwargs)

    async def stream(self, prompt: str | None = None, *, messages: Sequence[dict[str, str]] | None = None,
                     max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                     seed: int | None = None, stop: Sequence[str] = ()) -> AsyncGenerator[str, None]:
        """Yield text pieces as tokens arrive, for a prompt or a chat."""
        if (prompt is None) == (messages is None):
            raise ConfigError("give exactly one of prompt or messages")
        ids = self.encode(prompt) if prompt is not None else self.encode_chat(messages or [])
        params = SamplingParams(temperature, top_p, top_k, seed)
        async for event in self.stream_ids(ids, max_new_tokens=max_new_tokens, params=params, stop=stop):
            if event.text:
                yield event.text


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best


class Client:
    """Blocking facade over :class:`AsyncClient`; runs its own event loop in a background thread."""

    def __init__(self, model_dir: str | Path, registry: Registry | str | list[str], **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="veriswarm-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(model_dir, registry, **kwargs)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def tokenizer(self) -> Any:
        return self._async.tokenizer

    @property
    def manifest_hash(self) -> str:
        return self._async.manifest_hash

    def generate(self, prompt: str, **kwargs: Any) -> Generation:
        result: Generation = self._call(self._async.generate(prompt, **kwargs))
        return result

    def chat(self, messages: Sequence[dict[str, str]], **kwargs: Any) -> Generation:
        result: Generation = self._call(self._async.chat(messages, **kwargs))
        return result

    def prefill_logits(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        result: torch.Tensor = self._call(self._async.prefill_logits(prompt_ids))
        return result

    def generate_ids(self, prompt_ids: Sequence[int], **kwargs: Any) -> Generation:
        result: Generation = self._call(self._async.generate_ids(prompt_ids, **kwargs))
        return result

    def stream(self, prompt: str | None = None, **kwargs: Any) -> Iterator[str]:
        agen = self._async.stream(prompt, **kwargs)
        try:
            while True:
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._call(agen.aclose())

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self._async.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
