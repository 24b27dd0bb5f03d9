"""SVD-compressed shards on tiny random models: options, budgets, factor shapes vs manifest, kernels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from veriswarm.errors import ConfigError
from veriswarm.manifest import ModelDir
from veriswarm.split.artifacts import load_head, load_shard
from veriswarm.split.calibration import (
    CALIBRATION_FILE,
    EVALUATION_FILE,
    CalibrationSet,
    evaluation_windows,
    read_text,
    token_ids,
)
from veriswarm.split.evaluation import state_dict_perplexity
from veriswarm.split.modeling import HeadModel, LowRankLinear, ShardModel, build_linear
from veriswarm.split.partition import _strip_prefix, split_model
from veriswarm.split.sources import config_from_hf
from veriswarm.split.svd import (
    LINEARS,
    Compressor,
    MatrixPlan,
    SvdOptions,
    compress_model,
    dense_bytes,
    factorize_corrected,
    factorize_plain,
    factorize_whitened,
    lagrangian_plan,
    plan_bytes,
    shapes_of,
    uniform_plan,
)
from veriswarm.split.svd_kernels import HalfLinear, HalfLowRankLinear

SMALL = "calib-tokens=1024,seq-len=64,val-tokens=512,fisher-tokens=512"


@pytest.fixture(scope="module")
def tiny(tiny_hf: tuple[Any, Any, Path]) -> tuple[Any, dict[str, torch.Tensor], Any]:
    model, tok, _ = tiny_hf
    return config_from_hf(model.config), _strip_prefix(model.state_dict()), tok


@pytest.fixture(scope="module")
def calib(tiny: tuple[Any, dict[str, torch.Tensor], Any]) -> CalibrationSet:
    return CalibrationSet.build(tiny[2], tokens=1024, seq_len=64, val_tokens=512)


def test_parse_options() -> None:
    o = SvdOptions.parse("bytes=0.8")
    assert (o.method, o.bytes, o.storage_dtype, o.allocation_kind, o.is_sequential) == (
        "best", 0.8, "float16", "fisher", True)
    o = SvdOptions.parse("method=whiten, bytes=0.7")
    assert (o.method, o.storage_dtype, o.allocation_kind, o.is_sequential) == ("whiten", "float32", "uniform", False)
    assert SvdOptions.parse("max-ppl-increase=5%").max_ppl_increase == pytest.approx(0.05)
    assert SvdOptions.parse("max-ppl-increase=0.1,dtype=fp32").storage_dtype == "float32"
    for bad, needle in [("bytes=1.5", r"\(0, 1\]"), ("method=magic,bytes=0.5", "method"), ("", "exactly one budget"),
                        ("bytes=0.5,max-ppl-increase=5%", "exactly one"), ("colour=red", "cannot read"),
                        ("bytes=abc", "not a valid"), ("bytes=0.5,dtype=int3", "dtype")]:
        with pytest.raises(ConfigError, match=needle):
            SvdOptions.parse(bad)


def test_data_files_are_disjoint_books() -> None:
    cal, ev = read_text(CALIBRATION_FILE), read_text(EVALUATION_FILE)
    assert "Pride" not in ev[:2000] and "Bennet" in cal and "Frankenstein" not in cal and "Walton" in ev
    for text in (cal, ev):
        assert "Gutenberg" not in text and "*** START" not in text and len(text.encode()) < 300_000
    # No shared paragraph between the two texts.
    paras = {p.strip() for p in cal.split("\n\n") if len(p.strip()) > 80}
    assert not any(p.strip() in paras for p in ev.split("\n\n"))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_budget_plans_meet_their_budget(dtype: str) -> None:
    shapes = {f"m{i}": s for i, s in enumerate([(64, 64), (32, 64), (128, 64), (64, 128)] * 3)}
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.sort(torch.rand(min(s), generator=gen) * (1 + i), descending=True).values
               for i, (k, s) in enumerate(shapes.items())}
    total = dense_bytes(shapes)
    previous = 0
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        for plans in (uniform_plan(shapes, dtype, fraction * total), lagrangian_plan(shapes, weights, dtype,
                                                                                     fraction * total)):
            assert plan_bytes(plans) <= fraction * total
            for p in plans.values():  # a rank is only used where it saves bytes over dense
                assert p.rank is None or p.rank * (p.out_features + p.in_features) < p.out_features * p.in_features
        lag = lagrangian_plan(shapes, weights, dtype, fraction * total)
        assert plan_bytes(lag) >= previous  # more budget never buys fewer bytes
        previous = plan_bytes(lag)
    assert all(p.rank is None for p in uniform_plan(shapes, "float32", total).values())
    assert all(p.rank is None for p in lagrangian_plan(shapes, weights, "float16", 0.5 * total).values())


def test_lagrangian_plan_prefers_cheap_losses() -> None:
    shapes = {"important": (64, 64), "unimportant": (64, 64)}
    weights = {"important": torch.full((64,), 10.0), "unimportant": torch.full((64,), 0.01)}
    plans = lagrangian_plan(shapes, weights, "float32", 0.6 * dense_bytes(shapes))
    assert plans["important"].rank is None and plans["unimportant"].rank is not None


def test_whitening_beats_plain_on_calibration_error() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(48, 32, generator=gen)
    x = torch.randn(2000, 32, generator=gen) * torch.logspace(0, -2, 32)  # anisotropic activations
    gram = (x.T @ x).double()
    errs = {}
    for name, fac in (("plain", factorize_plain(w)), ("whiten", factorize_whitened(w, gram, 1e-6))):
        u, v = fac.factors(8)
        errs[name] = float(((x @ w.T) - x @ (u @ v).T).norm())
    assert errs["whiten"] < 0.8 * errs["plain"]
    # With unchanged inputs the sequential closed form is the whitened SVD.
    a = factorize_whitened(w, gram, 1e-6).factors(8)
    b = factorize_corrected(w, w.double() @ gram, gram, 1e-6).factors(8)
    assert torch.allclose(a[0] @ a[1], b[0] @ b[1], atol=1e-4)
    # Shifted inputs: the corrected fit tracks the original outputs better than the whitened one does.
    xc = x + 0.05 * torch.randn(2000, 32, generator=gen) * torch.logspace(0, -2, 32)
    gram_c, cross = (xc.T @ xc).double(), w.double() @ (x.T @ xc).double()
    fits = {"whiten": factorize_whitened(w, gram, 1e-6).factors(8),
            "corrected": factorize_corrected(w, cross, gram_c, 1e-6).factors(8)}
    err = {k: float((x @ w.T - xc @ (u @ v).T).norm()) for k, (u, v) in fits.items()}
    assert err["corrected"] < err["whiten"]


def test_half_kernels_match_fp16_weights_in_fp32() -> None:
    gen = torch.Generator().manual_seed(2)
    w, b = torch.randn(40, 24, generator=gen).half(), torch.randn(40, generator=gen)
    x = torch.randn(3, 5, 24, generator=gen)
    lin = build_linear({"p.weight": w, "p.bias": b}, "p")
    assert isinstance(lin, HalfLinear)
    assert (lin(x) - F.linear(x, w.float(), b)).abs().max() < 1e-4
    u, v = torch.randn(40, 6, generator=gen).half(), torch.randn(6, 24, generator=gen).half()
    low = build_linear({"p.u": u, "p.v": v}, "p")
    assert isinstance(low, HalfLowRankLinear) and low.rank == 6
    assert (low(x) - F.linear(F.linear(x, v.float()), u.float())).abs().max() < 1e-4
    assert type(build_linear({"p.weight": w.float()}, "p")) is nn.Linear  # fp32 paths unchanged
    assert isinstance(build_linear({"p.u": u.float(), "p.v": v.float()}, "p"), LowRankLinear)


@pytest.mark.parametrize("spec", ["method=plain,bytes=0.6", "method=asvd,bytes=0.6", "method=whiten,bytes=0.6",
                                  "method=best,dtype=fp32,bytes=0.6", "method=best,bytes=0.35"])
def test_methods_meet_the_budget_and_build_the_planned_modules(
        spec: str, tiny: tuple[Any, dict[str, torch.Tensor], Any]) -> None:
    cfg, sd, tok = tiny
    comp = compress_model(cfg, sd, tok, SvdOptions.parse(f"{spec},{SMALL}"))
    assert comp.bytes <= comp.options.bytes * dense_bytes(shapes_of(cfg, sd))
    assert any(p.rank is not None for p in comp.plans.values())
    new = comp.apply(sd)
    shard = ShardModel(cfg, 0, cfg.num_hidden_layers, new)
    for name, plan in comp.plans.items():
        module = shard.layers[int(name.split(".")[1])].get_submodule(name.split(".", 2)[2])
        dt = {"float32": torch.float32, "float16": torch.float16}[plan.dtype]
        if plan.rank is None:
            assert f"{name}.weight" in new and new[f"{name}.weight"].dtype == dt
        else:
            assert f"{name}.weight" not in new
            assert new[f"{name}.u"].shape == (plan.out_features, plan.rank) and new[f"{name}.u"].dtype == dt
            assert new[f"{name}.v"].shape == (plan.rank, plan.in_features) and new[f"{name}.v"].dtype == dt
            assert module.rank == plan.rank
    windows = CalibrationSet.build(tok, tokens=1024, seq_len=64, val_tokens=512).val
    assert torch.isfinite(torch.tensor(state_dict_perplexity(cfg, new, windows)))


def test_max_ppl_increase_search_meets_its_bound(tiny: tuple[Any, dict[str, torch.Tensor], Any],
                                                 calib: CalibrationSet) -> None:
    cfg, sd, _ = tiny
    opts = SvdOptions.parse(f"method=whiten,max-ppl-increase=10%,{SMALL}")
    comp = Compressor(cfg, sd, calib, opts).run()
    dense = state_dict_perplexity(cfg, sd, calib.val)
    assert comp.info["dense_val_ppl"] == pytest.approx(dense)
    assert state_dict_perplexity(cfg, comp.apply(sd), calib.val) <= dense * 1.10
    assert comp.bytes_ratio < 1.0  # it found something smaller than dense


def test_split_with_svd_writes_factors_matching_the_manifest(tiny_hf: tuple[Any, Any, Path], tiny_dir: Path,
                                                             tmp_path: Path) -> None:
    manifest = split_model(tiny_hf[2], 2, tmp_path / "svd", svd=f"method=best,bytes=0.35,{SMALL}")
    md = ModelDir.open(tmp_path / "svd")
    assert md.manifest.hash == manifest.hash != ModelDir.open(tiny_dir).manifest.hash
    assert manifest.source["svd"]["method"] == "best" and manifest.source["svd"]["bytes_ratio"] <= 0.35
    lowrank = 0
    for spec in manifest.shards:
        assert spec.format == "svd-best"
        assert set(spec.matrices) == {f"layers.{i}.{lin}" for i in range(spec.layer_start, spec.layer_end)
                                      for lin in LINEARS}
        tensors = load_file(str(md.artifact_path(spec.artifact)))
        for name, entry in spec.matrices.items():
            m, n = entry["shape"]
            dt = getattr(torch, entry["dtype"])
            if entry["format"] == "dense":
                assert tensors[f"{name}.weight"].shape == (m, n) and tensors[f"{name}.weight"].dtype == dt
            else:
                lowrank += 1
                r = entry["rank"]
                assert tensors[f"{name}.u"].shape == (m, r) and tensors[f"{name}.v"].shape == (r, n)
                assert tensors[f"{name}.u"].dtype == dt and f"{name}.weight" not in tensors
                assert r * (m + n) < m * n
    assert lowrank > 0
    # The shards chained equal the same compressed model run monolithically.
    head = load_head(md)
    ids = torch.tensor([tiny_hf[1]("the quick brown fox jumps over").input_ids])
    h = head.embed_tokens(ids)
    for i in range(len(manifest.shards)):
        h = load_shard(md, i)(h)
    sd = {}
    for spec in manifest.shards:
        sd.update(load_file(str(md.artifact_path(spec.artifact))))
    sd.update(load_file(str(md.artifact_path(manifest.head))))
    mono = ShardModel(manifest.config, 0, manifest.config.num_hidden_layers, sd)
    ref = HeadModel(manifest.config, sd).logits(mono(head.embed_tokens(ids)))
    assert (head.logits(h) - ref).abs().max().item() < 1e-4


def test_bad_svd_option_fails_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one budget"):
        split_model(tmp_path / "nothing", 2, tmp_path / "out", svd="method=plain")


def test_evaluation_windows_are_separate(tiny: tuple[Any, dict[str, torch.Tensor], Any]) -> None:
    tok = tiny[2]
    ev = evaluation_windows(tok, tokens=256, seq_len=64)
    cal = token_ids(tok, read_text(CALIBRATION_FILE))
    assert ev.shape == (4, 64) and not torch.equal(ev[0], cal[:64])


def test_matrix_plan_bytes() -> None:
    p = MatrixPlan(576, 1536, 100, "float16")
    assert p.bytes == 100 * (576 + 1536) * 2 and p.dense_bytes == 576 * 1536 * 4
    assert p.manifest_entry() == {"format": "lowrank", "rank": 100, "dtype": "float16", "shape": [576, 1536]}
    assert MatrixPlan(8, 8, None, "float32").manifest_entry()["format"] == "dense"
