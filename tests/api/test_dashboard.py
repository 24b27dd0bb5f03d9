"""The dashboard's JSON and page over HTTP, on the tiny swarm's real node processes (gateway in process)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from veriswarm.api import dashboard
from veriswarm.api.gateway import GatewayConfig, make_app
from veriswarm.api.swarm_view import MAX_TEXT, DashboardSources, dashboard_sources
from veriswarm.client import AsyncClient
from veriswarm.client.registry import PeerInfo, StaticRegistry
from veriswarm.deploy.local import LocalSwarm, free_port
from veriswarm.errors import ConfigError
from veriswarm.incentives.ledger import Ledger
from veriswarm.manifest import ModelDir
from veriswarm.protocol import PROTOCOL_VERSION, VERSION_HEADER
from veriswarm.sinks import HttpSink
from veriswarm.verifier.core import Verifier, VerifierConfig
from veriswarm.verifier.service import make_app as verifier_app

from .hostile import IMG, SCRIPT, URL_PATH, hostile_app

Http = TestClient[web.Request, web.Application]


@asynccontextmanager
async def _gateway(client: AsyncClient, sources: DashboardSources | None = None,
                   config: GatewayConfig | None = None) -> AsyncIterator[Http]:
    http: Http = TestClient(TestServer(make_app(client=client, config=config or GatewayConfig(), dashboard=sources)))
    async with http:
        yield http


async def _state(http: Http) -> dict[str, Any]:
    await asyncio.sleep(dashboard.MIN_REFRESH_S)  # past the snapshot cache: see the swarm as it is now
    resp = await http.get("/dashboard/state.json")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await resp.json()
    return body


async def test_state_lists_every_node_by_shard(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    async with AsyncClient(tiny_dir, tiny_swarm.urls) as client:
        async with _gateway(client) as http:
            state = await _state(http)
    assert state["manifest_hash"] == client.manifest_hash
    assert [s["index"] for s in state["shards"]] == [0, 1] and state["unplaced"] == []
    for shard, node in zip(state["shards"], tiny_swarm.nodes, strict=True):
        assert shard["coverage"] == "thin" and shard["live"] == 1  # one replica each: one failure from no route
        [entry] = shard["nodes"]
        assert entry["url"] == node.url and entry["address"] == node.address and entry["state"] == "ok"
        assert entry["layers"] == shard["layers"] and entry["latency_ms"] > 0
        assert 0 <= entry["free_sessions"] <= entry["max_sessions"]
    # sources that were not given are reported as such, not as failures
    assert state["ledger"] == {"configured": False} and state["verifier"] == {"configured": False}
    assert state["stake"] == {"configured": False}
    assert state["throughput"]["requests"] == 0 and state["throughput"]["tokens_per_s"] is None


async def test_page_and_assets_are_local_with_a_strict_csp(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    async with AsyncClient(tiny_dir, tiny_swarm.urls) as client:
        async with _gateway(client) as http:
            page = await http.get("/dashboard")
            html = await page.text()
            csp = page.headers["Content-Security-Policy"]
            assert page.content_type == "text/html" and page.headers["X-Content-Type-Options"] == "nosniff"
            assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
            # no inline script, nothing from another origin
            assert all(re.search(r'src="/dashboard/static/[a-z.]+"', tag) for tag in re.findall(r"<script[^>]*>", html))
            assert "http" not in html.replace('charset="utf-8"', "")
            js = await http.get("/dashboard/static/dashboard.js")
            assert js.status == 200 and js.content_type == "text/javascript"
            source = await js.text()
            assert "innerHTML" not in source and "insertAdjacentHTML" not in source and "eval(" not in source
            assert (await http.get("/dashboard/static/dashboard.css")).status == 200
            moved = await http.get("/dashboard/", allow_redirects=False)
            assert moved.status == 302 and moved.headers["Location"] == "/dashboard"
            for bad in ("/dashboard/static/..%2Fgateway.py", "/dashboard/static/dashboard.html.bak"):
                assert (await http.get(bad)).status == 404


async def test_missing_and_unreachable_nodes_are_shown(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    registry = StaticRegistry([PeerInfo(tiny_swarm.urls[0]), PeerInfo(dead, shard_index=1), PeerInfo(dead + "/x"),
                               PeerInfo("javascript:alert(1)"), PeerInfo("not a url at all")])
    async with AsyncClient(tiny_dir, registry) as client:
        async with _gateway(client) as http:
            state = await _state(http)
    assert state["shards"][0]["coverage"] == "thin"
    shard1 = state["shards"][1]
    assert shard1["coverage"] == "none" and shard1["live"] == 0
    assert [n["state"] for n in shard1["nodes"]] == ["unreachable"] and shard1["nodes"][0]["error"]
    # a peer the registry does not place and that does not answer has no shard
    assert [n["url"] for n in state["unplaced"]] == [dead + "/x", "javascript:alert(1)", "not a url at all"]
    assert all(n["state"] == "unreachable" for n in state["unplaced"])


async def test_node_claims_pass_through_as_data_and_are_clipped(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    manifest_hash = ModelDir.open(tiny_dir).manifest.hash
    async with TestServer(hostile_app(manifest_hash)) as evil:
        evil_url = str(evil.make_url("")).rstrip("/") + URL_PATH
        long_url = str(evil.make_url("")).rstrip("/") + "/" + "a" * 2000
        registry = StaticRegistry([PeerInfo(u) for u in (*tiny_swarm.urls, evil_url, long_url)])
        async with AsyncClient(tiny_dir, registry) as client:
            async with _gateway(client) as http:
                state = await _state(http)
    nodes = {n["url"]: n for n in state["shards"][1]["nodes"]}
    evil_node = nodes[evil_url]
    assert evil_node["state"] == "ok" and evil_node["address"] == SCRIPT + IMG  # the JSON carries the text as is
    assert evil_node["software"] == IMG and evil_node["model"] == SCRIPT
    clipped = next(u for u in nodes if u.endswith("…"))
    assert len(clipped) == MAX_TEXT + 1
    assert state["shards"][1]["coverage"] == "ok"  # three live replicas claim shard 1


async def test_ledger_verifier_and_requests(tiny_swarm: LocalSwarm, tiny_dir: Path, tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.create_schema()
    verifier = Verifier(ModelDir.open(tiny_dir), ledger=ledger, config=VerifierConfig(audit_rate=1.0, idle_s=3600))
    vhttp: Http = TestClient(TestServer(verifier_app(verifier=verifier)))
    async with vhttp:
        vurl = str(vhttp.make_url("")).rstrip("/")
        sink = HttpSink(vurl)
        sources = DashboardSources(ledger=ledger, verifier_url=vurl)
        async with AsyncClient(tiny_dir, tiny_swarm.urls, sink=sink) as client:
            async with _gateway(client, sources) as http:
                model = (await (await http.get("/v1/models")).json())["data"][0]["id"]
                resp = await http.post("/v1/completions", json={"model": model, "prompt": "the quick brown fox",
                                                                 "max_tokens": 5, "temperature": 0})
                assert resp.status == 200
                tokens = (await resp.json())["usage"]["completion_tokens"]
                await asyncio.get_running_loop().run_in_executor(None, sink.flush)
                assert (await vhttp.post("/v1/audit", headers={VERSION_HEADER: PROTOCOL_VERSION})).status == 200
                epoch = ledger.receipt(_any_receipt_id(ledger))["epoch"]
                ledger.allocate_epoch(epoch, 10**18)
                victim = tiny_swarm.nodes[1].address
                ledger.record_slash(victim, "0x" + "ab" * 32, "equivocation", {"test": True})
                state = await _state(http)
        sink.close()
    ledger.close()
    verdicts = state["verifier"]["verdicts"]
    assert len(verdicts) == 2 and all(v["passed"] for v in verdicts)
    assert [s["node_address"] for s in state["ledger"]["slashes"]] == [victim]
    [alloc] = state["ledger"]["epochs"]
    assert alloc["epoch"] == epoch and alloc["pool"] == str(10**18) and set(alloc["amounts"]) == {n.address for n in tiny_swarm.nodes}
    by_address = {n["address"]: n for s in state["shards"] for n in s["nodes"]}
    assert by_address[victim]["state"] == "slashed" and by_address[victim]["ledger"]["status"] == "excluded"
    honest = by_address[tiny_swarm.nodes[0].address]
    assert honest["state"] == "ok" and honest["ledger"]["audits_passed"] == 1
    assert state["shards"][1]["coverage"] == "none"  # its only node is slashed
    tp = state["throughput"]
    assert tp["requests"] == 1 and tp["tokens"] == tokens and tp["tokens_per_s"] > 0


def _any_receipt_id(ledger: Ledger) -> str:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from veriswarm.incentives.models import ReceiptRow

    with Session(ledger.engine) as s:
        return str(s.scalars(select(ReceiptRow.receipt_id).limit(1)).one())


async def test_an_unreachable_verifier_is_reported_not_raised(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    sources = DashboardSources(verifier_url=f"http://127.0.0.1:{free_port()}")
    async with AsyncClient(tiny_dir, tiny_swarm.urls) as client:
        async with _gateway(client, sources) as http:
            state = await _state(http)
    assert state["verifier"]["configured"] is True and "error" in state["verifier"]
    assert all(s["coverage"] == "thin" for s in state["shards"])


async def test_polls_share_one_snapshot(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    async with AsyncClient(tiny_dir, tiny_swarm.urls) as client:
        async with _gateway(client) as http:
            a, b = await asyncio.gather(*(http.get("/dashboard/state.json") for _ in range(2)))
            assert (await a.json())["generated_at"] == (await b.json())["generated_at"]


def test_a_missing_ledger_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        dashboard_sources(ledger_url=f"sqlite:///{tmp_path / 'nope.db'}", verifier_url=None, deployment=None)
    assert not (tmp_path / "nope.db").exists()


async def test_dashboard_can_be_turned_off(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    async with AsyncClient(tiny_dir, tiny_swarm.urls) as client:
        async with _gateway(client, config=GatewayConfig(dashboard=False)) as http:
            assert (await http.get("/dashboard")).status == 404


async def test_cli_prints_the_swarm(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    from typer.testing import CliRunner

    from veriswarm.cli.main import app

    async with AsyncClient(tiny_dir, tiny_swarm.urls) as client, _gateway(client) as http:
        base = str(http.make_url("")).rstrip("/")
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: CliRunner().invoke(app, ["dashboard", "--gateway", base]))
    assert result.exit_code == 0, result.output
    assert f"web dashboard: {base}/dashboard" in result.output
    for node in tiny_swarm.nodes:
        assert re.search(rf"^    ok +{node.address} {node.url} ", result.output, re.M), result.output
    assert "shard 1 (layers 2-3): 1 live  < thin" in result.output and "ledger: not configured" in result.output
