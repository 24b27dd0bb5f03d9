"""``--shard auto`` decision logic (hysteresis), ``--shard`` parsing, per-shard keys, measuring, swarm reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from veriswarm.errors import ConfigError
from veriswarm.manifest import ModelDir
from veriswarm.node.autoplace import Peer, Policy, decide
from veriswarm.node.measure import bytes_per_layer, capacity_layers, measure_speed
from veriswarm.node.shardchoice import ShardChoice, auto_port, shard_key, span_port
from veriswarm.node.swarmview import add_placement_route, file_entries, read_peers
from veriswarm.placement import NodeCapacity
from veriswarm.receipts import address_of
from veriswarm.split.artifacts import load_shard

POLICY = Policy(threshold=0.10, cooldown_s=60.0)
TWO = [1, 1]  # two one-layer shards
LONG_AGO = 0.0
NOW = 1000.0


def me(speed: float, capacity: int = 1) -> NodeCapacity:
    return NodeCapacity("me", speed, capacity)


def test_a_node_serving_nothing_takes_the_best_range_at_once() -> None:
    d = decide(TWO, me(5), None, [Peer("a", 10, (0, 0))], policy=POLICY, now=NOW, last_move_at=NOW)
    assert d.move and d.target == (1, 1)


def test_a_small_gain_does_not_move() -> None:
    # Coverage [10, 20.5]: moving to shard 0 gives [10.5, 20], +5% on the bottleneck, under the 10% threshold.
    d = decide(TWO, me(0.5), (1, 1), [Peer("a", 10, (0, 0)), Peer("b", 20, (1, 1))], policy=POLICY, now=NOW,
               last_move_at=LONG_AGO)
    assert d.target == (0, 0) and not d.move
    assert (d.before, d.after) == (10, 10.5) and "threshold" in d.reason


def test_a_large_gain_moves_and_the_log_line_has_the_numbers() -> None:
    # Coverage [10, 25]: moving to shard 0 gives [15, 20], +50%.
    d = decide(TWO, me(5), (1, 1), [Peer("a", 10, (0, 0)), Peer("b", 20, (1, 1))], policy=POLICY, now=NOW,
               last_move_at=LONG_AGO)
    assert d.move and d.target == (0, 0)
    line = d.line()
    assert line.startswith("placement: move 1-1 -> 0-0") and "10 -> 15" in line and "+50.0%" in line


def test_no_move_during_the_cool_down_even_for_a_large_gain() -> None:
    peers = [Peer("a", 10, (0, 0)), Peer("b", 20, (1, 1))]
    inside = decide(TWO, me(5), (1, 1), peers, policy=POLICY, now=NOW, last_move_at=NOW - 59)
    assert not inside.move and "cool-down" in inside.reason
    after = decide(TWO, me(5), (1, 1), peers, policy=POLICY, now=NOW, last_move_at=NOW - 61)
    assert after.move


def test_filling_a_hole_ignores_the_cool_down() -> None:
    d = decide(TWO, me(10, capacity=2), (0, 0), [Peer("a", 10, (0, 0))], policy=POLICY, now=NOW, last_move_at=NOW)
    assert d.move and d.target == (1, 1) and d.before == 0 and "nobody serves" in d.reason


def test_staying_on_the_best_range_and_nothing_fitting() -> None:
    peers = [Peer("a", 10, (0, 0))]
    assert decide(TWO, me(10), (1, 1), peers, policy=POLICY, now=NOW).reason == "already on the best range"
    d = decide([2, 2], me(10, capacity=1), None, peers, policy=POLICY, now=NOW)
    assert not d.move and d.target is None


def test_noisy_re_measurements_move_without_threshold_but_not_with_it() -> None:
    """Equal nodes, speeds re-measured with ±4% noise on each re-check: on shard 1 beside b, this node's best
    range flips to shard 0 whenever a happens to measure slower than b. Without a threshold that is a move
    (flapping); with the 10% threshold it never is."""
    import random

    rng = random.Random(0)
    flaps = {0.0: 0, 0.10: 0}
    for t in range(200):
        a, b, mine = (10 * rng.uniform(0.96, 1.04) for _ in range(3))
        peers = [Peer("a", a, (0, 0)), Peer("b", b, (1, 1))]
        for threshold in flaps:
            d = decide(TWO, me(mine), (1, 1), peers, policy=Policy(threshold, 0), now=NOW + t)
            flaps[threshold] += d.move
    assert flaps[0.0] > 20 and flaps[0.10] == 0


def test_policy_refuses_negative_numbers() -> None:
    with pytest.raises(ConfigError):
        Policy(threshold=-0.1)


@pytest.mark.parametrize(("text", "single", "span"), [("3", 3, None), ("2-3", None, (2, 3)), (" 1 - 1 ", None, (1, 1)),
                                                      ("auto", None, None), ("AUTO", None, None)])
def test_shard_flag_parses(text: str, single: int | None, span: tuple[int, int] | None) -> None:
    choice = ShardChoice.parse(text)
    assert choice is not None and (choice.single, choice.span) == (single, span)
    assert choice.auto == (single is None and span is None)


@pytest.mark.parametrize("text", ["3-2", "x", "-1", "1-", "1-2-3"])
def test_bad_shard_flags_are_one_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        ShardChoice.parse(text)


def test_shard_keys_are_deterministic_distinct_and_not_the_node_key() -> None:
    node = bytes.fromhex("11" * 32)
    keys = [shard_key(node, s) for s in range(4)]
    assert keys == [shard_key(node, s) for s in range(4)]
    assert len({*keys, node}) == 5 and len({address_of(k) for k in keys}) == 4
    assert shard_key(bytes.fromhex("22" * 32), 0) != keys[0]
    assert [auto_port(9000, s) for s in (0, 2)] == [9000, 9002] and span_port(9000, (2, 3), 3) == 9001


def test_capacity_from_a_memory_budget(tiny_dir: Path) -> None:
    manifest = ModelDir.open(tiny_dir).manifest  # 2 shards of 2 layers
    per_layer = bytes_per_layer(manifest)
    assert capacity_layers(manifest, 4 * per_layer + 1) == 4
    assert capacity_layers(manifest, 2 * per_layer) == 2
    with pytest.raises(ConfigError, match="memory budget"):
        capacity_layers(manifest, per_layer)


def test_measured_speed_is_positive(tiny_dir: Path) -> None:
    md = ModelDir.open(tiny_dir)
    assert measure_speed(load_shard(md, 0), md.manifest.config.hidden_size, tokens=4, repeats=2, min_seconds=0.05) > 0


def test_peers_file_entries_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    path.write_text(json.dumps([{"url": "http://h:1/"}, {"url": "http://h:2", "shard": 1}]))
    assert file_entries(path) == [("http://h:1", None), ("http://h:2", 1)]
    path.write_text('{"url": 1}')
    with pytest.raises(ConfigError, match="JSON list"):
        file_entries(path)
    with pytest.raises(ConfigError, match="not found"):
        file_entries(tmp_path / "missing.json")


def _placement_app(report: dict[str, Any]) -> web.Application:
    app = web.Application()
    add_placement_route(app, lambda: report)
    return app


def _info_app(info: dict[str, Any]) -> web.Application:
    app = web.Application()

    async def handler(_r: web.Request) -> web.Response:
        return web.json_response(info)

    app.router.add_get("/v1/info", handler)
    return app


async def test_reading_peers_groups_hosts_skips_self_dead_and_foreign_endpoints() -> None:
    m = "0x" + "ab" * 32
    host = {"node": "0xHost", "speed": 50.0, "capacity": 4, "range": [1, 2], "manifest_hash": m}
    servers = [TestServer(_placement_app(host)), TestServer(_placement_app(host)),
               TestServer(_placement_app({**host, "node": "0xMe"})),
               TestServer(_info_app({"manifest_hash": m, "shard_index": 0, "address": "0xPlain"})),
               TestServer(_info_app({"manifest_hash": "0x" + "cd" * 32, "shard_index": 0, "address": "0xOther"})),
               TestServer(_info_app({"manifest_hash": m, "shard_index": 2, "address": "0xLiar"}))]
    for s in servers:
        await s.start_server()
    try:
        urls = [str(s.make_url("")).rstrip("/") for s in servers]
        entries: list[tuple[str, int | None]] = [(urls[0], 1), (urls[1], 2), (urls[2], None), (urls[3], None),
                                                 (urls[4], None), (urls[5], 1), ("http://127.0.0.1:9", None)]
        peers = await read_peers(entries, self_id="0xMe", manifest_hash=m, num_shards=3, default_speed=7.0,
                                 timeout_s=2.0)
    finally:
        for s in servers:
            await s.close()
    # The host's two endpoints are one node with its whole range; a plain node counts at our own speed; the
    # endpoint whose shard contradicts the registry, the other manifest, ourselves and the dead one do not count.
    assert peers == [Peer("0xHost", 50.0, (1, 2)), Peer("0xPlain", 7.0, (0, 0))]
