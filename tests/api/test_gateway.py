"""The OpenAI-compatible gateway as a real process, driven by the official `openai` client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from veriswarm.client import Client
from veriswarm.deploy.local import LocalSwarm

from .gateway_proc import gateway_process

KEY = "sk-test-veriswarm"


@pytest.fixture(scope="module")
def gateway(tiny_swarm: LocalSwarm, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = ["--model-dir", str(tiny_dir), "--peers", ",".join(tiny_swarm.urls), "--api-key", KEY, "--rate-limit", "600"]
    with gateway_process(args, tmp_path_factory.mktemp("gw") / "gateway.log") as url:
        yield url


@pytest.fixture(scope="module")
def oai(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def model_id(oai: openai.OpenAI) -> str:
    models = oai.models.list().data
    assert len(models) == 1
    return models[0].id


def test_chat_completion_equals_the_sdk(oai: openai.OpenAI, model_id: str, tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    messages = [{"role": "user", "content": "the quick brown fox"}]
    resp = oai.chat.completions.create(model=model_id, messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    with Client(tiny_dir, tiny_swarm.urls) as sdk:
        ref = sdk.chat(messages, max_new_tokens=12)
    assert resp.choices[0].message.content == ref.text
    assert resp.choices[0].finish_reason == ref.finish_reason
    assert resp.usage is not None and resp.usage.completion_tokens == len(ref.token_ids)
    ext: Any = resp.model_extra["veriswarm"]  # type: ignore[index]
    assert ext["manifest_hash"] == sdk.manifest_hash
    assert [h["shard"] for h in ext["route"]] == [0, 1] and all(h["address"].startswith("0x") for h in ext["route"])
    assert len(ext["receipt_ids"]) == 2 * (len(ref.token_ids) + (ref.finish_reason == "stop"))


def test_streaming_chat_matches_non_streaming(oai: openai.OpenAI, model_id: str) -> None:
    messages = [{"role": "user", "content": "a swarm of nodes"}]
    full = oai.chat.completions.create(model=model_id, messages=messages, max_tokens=10, temperature=0)  # type: ignore[arg-type]
    stream = oai.chat.completions.create(model=model_id, messages=messages, max_tokens=10, temperature=0,  # type: ignore[arg-type]
                                         stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason and usage is not None


def test_completions(oai: openai.OpenAI, model_id: str, tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    resp = oai.completions.create(model=model_id, prompt="the lazy dog", max_tokens=8, temperature=0)
    with Client(tiny_dir, tiny_swarm.urls) as sdk:
        assert resp.choices[0].text == sdk.generate("the lazy dog", max_new_tokens=8).text
    streamed = "".join(c.choices[0].text for c in oai.completions.create(
        model=model_id, prompt="the lazy dog", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == resp.choices[0].text


def _raw(gateway: str, path: str, body: bytes | None, key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(gateway + path, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_openai_errors(gateway: str, model_id: str) -> None:
    good = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({**good, "model": "gpt-9"}).encode(), 404, "model_not_found"),
        (json.dumps({**good, "n": 2}).encode(), 400, "invalid_value"),
        (json.dumps({**good, "tools": []}).encode(), 400, "unsupported_parameter"),
        (json.dumps({**good, "messages": [{"role": "user"}]}).encode(), 400, "invalid_value"),
        (json.dumps({**good, "messages": "hi"}).encode(), 400, "invalid_value"),
        (json.dumps({**good, "max_tokens": 10**6}).encode(), 400, "context_length_exceeded"),
        (json.dumps([1]).encode(), 400, None),
        (b"x" * (2 * 1024 * 1024), 413, None),
    ]
    for body, status, code in cases:
        got, err = _raw(gateway, "/v1/chat/completions", body)
        assert got == status, (body[:60], err)
        assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["code"] == code
    assert _raw(gateway, "/v1/chat/completions", json.dumps(good).encode(), key=None)[0] == 401
    assert _raw(gateway, "/v1/chat/completions", json.dumps(good).encode(), key="wrong")[0] == 401
    assert _raw(gateway, "/v1/chat/completions", json.dumps(good).encode())[0] == 200  # still serving


def test_client_disconnect_mid_stream_releases_node_sessions(gateway: str, model_id: str, tiny_swarm: LocalSwarm) -> None:
    import http.client
    import re

    def tokens_served() -> float:
        text = urllib.request.urlopen(f"{tiny_swarm.nodes[1].url}/metrics").read().decode()
        return float(re.search(r"^veriswarm_node_tokens_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    before = tokens_served()
    host, port = gateway.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "go"}], "max_tokens": 200,
                       "stream": True, "temperature": 0})
    conn.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}",
                                                         "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()  # first event arrived: sessions are open on the nodes
    conn.sock.close()  # the client vanishes mid-stream
    conn.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sessions = [json.loads(urllib.request.urlopen(f"{n.url}/health").read())["sessions"] for n in tiny_swarm.nodes]
        if sessions == [0, 0]:
            # The generation was cut short: far fewer than the 200 requested tokens went through the nodes.
            assert tokens_served() - before < 150
            return
        time.sleep(0.2)
    raise AssertionError(f"node sessions not released: {sessions}")


def test_rate_limit_and_non_loopback_without_keys(tiny_dir: Path) -> None:
    from veriswarm.api.gateway import GatewayConfig, RateLimiter
    from veriswarm.errors import ConfigError

    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.allow("k") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("other")
    with pytest.raises(ConfigError, match="without API keys"):
        GatewayConfig(host="0.0.0.0").check()
    GatewayConfig(host="0.0.0.0", api_keys=("k",)).check()
