"""The shard code against transformers, for each supported family, on tiny random models."""

from pathlib import Path

import pytest
import torch

from veriswarm.errors import ConfigError
from veriswarm.split.modeling import HeadModel, ShardModel
from veriswarm.split.partition import _strip_prefix, head_tensors, layer_tensors, plan_layers
from veriswarm.split.sources import config_from_hf

from ..tiny import tiny_hf_model

TOL = 1e-4  # max-abs on logits, fp32


def _split(model: torch.nn.Module, shards: int) -> tuple[HeadModel, list[ShardModel]]:
    cfg = config_from_hf(model.config)
    sd = _strip_prefix(model.state_dict())
    parts = [ShardModel(cfg, a, b, layer_tensors(sd, a, b)) for a, b in plan_layers(cfg.num_hidden_layers, shards)]
    return HeadModel(cfg, head_tensors(sd, cfg)), parts


def _run(head: HeadModel, shards: list[ShardModel], ids: torch.Tensor) -> torch.Tensor:
    h = head.embed_tokens(ids)
    for s in shards:
        h = s(h)
    return head.logits(h)


@pytest.mark.parametrize("kind,extra", [
    ("llama", {}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    ("qwen2", {}),
    ("mistral", {"sliding_window": 8}),
])
def test_split_prefill_and_cached_decode_match_transformers(kind: str, extra: dict) -> None:
    model = tiny_hf_model(kind, layers=5, **extra)
    head, shards = _split(model, 3)
    ids = torch.randint(0, 320, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    assert (_run(head, shards, ids) - ref).abs().max().item() < TOL
    # Decode through KV caches (prefill 12, then 8 single steps) equals recomputing the full prefix.
    caches = [s.new_cache(32) for s in shards]
    h = head.embed_tokens(ids[:, :12])
    for s, c in zip(shards, caches, strict=True):
        h = s(h, 0, c)
    for pos in range(12, 20):
        h = head.embed_tokens(ids[:, pos:pos + 1])
        for s, c in zip(shards, caches, strict=True):
            h = s(h, pos, c)
        assert (head.logits(h)[:, -1] - ref[:, pos]).abs().max().item() < TOL


def test_biases_are_used_when_present() -> None:
    model = tiny_hf_model("qwen2", layers=2)
    head, shards = _split(model, 1)
    assert shards[0].layers[0].self_attn.q_proj.bias is not None
    assert shards[0].layers[0].self_attn.o_proj.bias is None


def test_chunked_prefill_through_cache_matches_one_shot() -> None:
    model = tiny_hf_model("llama", layers=3)
    head, shards = _split(model, 1)
    ids = torch.randint(0, 320, (1, 70), generator=torch.Generator().manual_seed(2))
    one = _run(head, shards, ids)
    cache = shards[0].new_cache(128)  # grows past its first 64-slot allocation
    outs = []
    for a, b in [(0, 30), (30, 31), (31, 70)]:
        outs.append(head.logits(shards[0](head.embed_tokens(ids[:, a:b]), a, cache)))
    assert (torch.cat(outs, 1) - one).abs().max().item() < TOL


def test_cache_positions_must_line_up() -> None:
    model = tiny_hf_model("llama", layers=1)
    _, shards = _split(model, 1)
    cache = shards[0].new_cache(8)
    x = torch.randn(1, 4, 64)
    with pytest.raises(ValueError):
        shards[0](x, 2, cache)  # cache is empty: step must start at 0
    shards[0](x, 0, cache)
    with pytest.raises(ValueError):
        shards[0](torch.randn(1, 5, 64), 4, cache)  # 9 positions > max_length 8
    with pytest.raises(ValueError):
        shards[0](x, 3)  # no cache: must start at 0


def test_plan_layers() -> None:
    assert plan_layers(30, 4) == [(0, 8), (8, 16), (16, 23), (23, 30)]
    assert plan_layers(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert plan_layers(5, 1) == [(0, 5)]
    for bad in (0, 31, -1):
        with pytest.raises(ConfigError):
            plan_layers(30, bad)


def test_unsupported_architectures_are_refused(tmp_path: Path) -> None:
    from transformers import GPT2Config

    with pytest.raises(ConfigError, match="not a supported"):
        config_from_hf(GPT2Config())


def _hook_everything(shard: ShardModel, seen: list[str]) -> list[torch.utils.hooks.RemovableHandle]:
    """A forward hook on every projection: the stacked path must step aside so each linear runs itself."""
    handles = []
    for layer in shard.layers:
        for name in ("q_proj", "k_proj", "v_proj"):
            handles.append(getattr(layer.self_attn, name).register_forward_hook(lambda *_a, n=name: seen.append(n)))
        for name in ("gate_proj", "up_proj"):
            handles.append(getattr(layer.mlp, name).register_forward_hook(lambda *_a, n=name: seen.append(n)))
    return handles


def _prefill_and_decode(shard: ShardModel, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    cache = shard.new_cache(32)
    outs = [shard(x, 0, cache)]
    for i in range(steps.shape[1]):
        outs.append(shard(steps[:, i:i + 1], x.shape[1] + i, cache))
    return torch.cat(outs, 1)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_stacked_projections_compute_what_the_separate_ones_do(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from veriswarm.split.modeling import StackedRows

    model = tiny_hf_model(kind, layers=3)
    _, (shard,) = _split(model, 1)
    attn, mlp = shard.layers[0].self_attn, shard.layers[0].mlp
    assert attn.qkv is not None and mlp.gate_up is not None
    # The weights are stored once: each projection is a view into its stack.
    for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert lin.weight.untyped_storage().data_ptr() == attn.qkv.weight.untyped_storage().data_ptr()
        if kind == "qwen2":
            assert attn.qkv.bias is not None
            assert lin.bias.untyped_storage().data_ptr() == attn.qkv.bias.untyped_storage().data_ptr()
    gen = torch.Generator().manual_seed(3)
    x, steps = torch.randn(1, 9, 64, generator=gen), torch.randn(1, 5, 64, generator=gen)
    calls = []
    real_call = StackedRows.__call__
    monkeypatch.setattr(StackedRows, "__call__", lambda self, h: calls.append(1) or real_call(self, h))
    stacked = _prefill_and_decode(shard, x, steps)
    assert len(calls) == 2 * 3 * 6  # two stacks per layer, three layers, prefill + five decode steps
    seen: list[str] = []
    handles = _hook_everything(shard, seen)
    separate = _prefill_and_decode(shard, x, steps)
    for h in handles:
        h.remove()
    assert len(calls) == 2 * 3 * 6 and len(seen) == 5 * 3 * 6  # with hooks, every projection ran itself
    assert (stacked - separate).abs().max().item() < 1e-5


def test_stacked_projections_follow_weight_changes() -> None:
    model = tiny_hf_model("llama", layers=2)
    cfg = config_from_hf(model.config)
    _, (shard,) = _split(model, 1)
    x = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(4))
    before = shard(x)
    attn, mlp = shard.layers[1].self_attn, shard.layers[1].mlp
    with torch.no_grad():
        attn.v_proj.weight.mul_(2.0)  # in place: the stack holds the same memory, so it sees the change
    assert attn.qkv is not None and attn.qkv.usable()
    # A weight replaced by a new tensor is not in the stack any more: the separate linear must run.
    mlp.up_proj.weight = torch.nn.Parameter(torch.zeros_like(mlp.up_proj.weight), requires_grad=False)
    assert mlp.gate_up is not None and not mlp.gate_up.usable()
    sd = dict(_strip_prefix(model.state_dict()))
    sd["layers.1.self_attn.v_proj.weight"] = sd["layers.1.self_attn.v_proj.weight"] * 2.0
    sd["layers.1.mlp.up_proj.weight"] = torch.zeros_like(sd["layers.1.mlp.up_proj.weight"])
    expected = ShardModel(cfg, 0, 2, sd)(x)
    assert (shard(x) - expected).abs().max().item() < 1e-5
    assert (expected - before).abs().max().item() > 1e-3


def test_low_rank_and_fp16_projections_are_not_stacked() -> None:
    from veriswarm.split.modeling import MLP, Attention

    model = tiny_hf_model("llama", layers=1)
    cfg = config_from_hf(model.config)
    sd = dict(_strip_prefix(model.state_dict()))
    w = sd.pop("layers.0.self_attn.k_proj.weight")
    sd["layers.0.self_attn.k_proj.u"], sd["layers.0.self_attn.k_proj.v"] = w[:, :8].clone(), torch.eye(8, 64)
    assert Attention(cfg, sd, "layers.0.self_attn").qkv is None
    sd["layers.0.mlp.up_proj.weight"] = sd["layers.0.mlp.up_proj.weight"].half()
    assert MLP(sd, "layers.0.mlp").gate_up is None


@pytest.fixture
def two_threads():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("rows,cols", [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576), (96, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_rows_linear_is_bitwise_f_linear(rows: int, cols: int, bias: bool, two_threads: None) -> None:
    """Split over the threads, each output row is still the same dot product: equal to the bit, not close."""
    from veriswarm.split.modeling import rows_linear

    gen = torch.Generator().manual_seed(rows + cols)
    w, b = torch.randn(rows, cols, generator=gen), torch.randn(rows, generator=gen) if bias else None
    for shape in ((1, 1, cols), (1, cols), (cols,)):
        x = torch.randn(shape, generator=gen)
        got = rows_linear(x, w, b)
        assert got.shape == torch.nn.functional.linear(x, w, b).shape
        assert torch.equal(got, torch.nn.functional.linear(x, w, b))


def test_rows_linear_splits_only_what_it_can(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from veriswarm.split import modeling

    split = []
    real_bmm = torch.bmm
    monkeypatch.setattr(modeling.torch, "bmm", lambda *a: split.append(1) or real_bmm(*a))
    w = torch.randn(64, 32)
    modeling.rows_linear(torch.randn(1, 1, 32), w)
    assert split == [1]
    # Several positions (a prefill: BLAS threads those itself), an odd number of rows, a strided weight,
    # another dtype: F.linear as it is.
    for x, weight in ((torch.randn(1, 3, 32), w), (torch.randn(1, 1, 32), torch.randn(63, 32)),
                      (torch.randn(1, 1, 32), torch.randn(32, 64).t()), (torch.randn(1, 1, 32).half(), w.half())):
        assert torch.equal(modeling.rows_linear(x, weight), torch.nn.functional.linear(x, weight))
    assert split == [1]
    torch.set_num_threads(1)
    modeling.rows_linear(torch.randn(1, 1, 32), w)
    assert split == [1]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_decode_at_two_threads_matches_one_thread_projections(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole shard's cached decode with the projections split over 2 threads computes what F.linear on
    one thread does (attention itself may round differently with the thread count, so the projections
    are compared, each on the same input)."""
    from veriswarm.split import modeling

    model = tiny_hf_model(kind, layers=2)
    _, (shard,) = _split(model, 1)
    pairs = []
    real = modeling.rows_linear

    def record(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        out = real(x, w, b)
        pairs.append((out, torch.nn.functional.linear(x, w, b)))
        return out

    monkeypatch.setattr(modeling, "rows_linear", record)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(5)
        _prefill_and_decode(shard, torch.randn(1, 4, 64, generator=gen), torch.randn(1, 3, 64, generator=gen))
    finally:
        torch.set_num_threads(before)
    assert len(pairs) == 4 * 2 * 4  # qkv, o, gate_up, down; two layers; prefill + three decode steps
    assert all(torch.equal(a, b) for a, b in pairs)
