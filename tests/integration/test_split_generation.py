"""Real node processes on loopback, the real client: exact against the monolithic model."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from veriswarm.client import AsyncClient, Client
from veriswarm.client.sdk import Generation
from veriswarm.deploy.local import LocalSwarm
from veriswarm.receipts import ReceiptDomain
from veriswarm.sinks import MemorySink

TOL = 1e-4  # max-abs on fp32 logits, split vs monolithic
#: error budgets of the lossy wire formats (max-abs logit vs monolithic fp32; measured 0.038 and 0.245 on a
#: 67-token English prompt, docs/architecture.md; q8 measured 0.47 on this test's chat prompt, in-process)
WIRE_BUDGET = {"float16": 0.1, "bfloat16": 0.5, "q8": 1.0}


def _reference(model: Any, ids: list[int], steps: int) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    x = torch.tensor([ids])
    with torch.no_grad():
        prefill = model(x).logits[0]
        out = model.generate(x, max_new_tokens=steps, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, eos_token_id=None, pad_token_id=0,
                             min_new_tokens=steps)
    return prefill, [lg[0] for lg in out.logits], out.sequences[0, len(ids):].tolist()


def _check_against(client: Client, model: Any, ids: list[int], steps: int) -> None:
    prefill, step_logits, ref_tokens = _reference(model, ids, steps)
    assert (client.prefill_logits(ids) - prefill).abs().max().item() < TOL
    gen = client.generate_ids(ids, max_new_tokens=steps, return_logits=True, ignore_eos=True)
    assert len(gen.step_logits) == steps and gen.finish_reason == "length"
    worst = max((a - b).abs().max().item() for a, b in zip(gen.step_logits, step_logits, strict=True))
    assert worst < TOL, f"max-abs logit error {worst}"
    assert gen.token_ids == ref_tokens


def test_tiny_model_two_processes(tiny_swarm: LocalSwarm, tiny_dir: Path, tiny_hf: tuple[Any, Any, Path]) -> None:
    model, tok, _ = tiny_hf
    sink = MemorySink()
    with Client(tiny_dir, tiny_swarm.urls, sink=sink) as client:
        ids = tok("the quick brown fox jumps").input_ids
        _check_against(client, model, ids, 16)
        assert {r.node_address for r in sink.records} == {n.address for n in tiny_swarm.nodes}
        for r in sink.records:
            assert r.receipt.signer(ReceiptDomain()) == r.node_address


def test_sampling_is_reproducible_with_a_seed(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    with Client(tiny_dir, tiny_swarm.urls) as client:
        a = client.generate_ids([3, 4, 5], max_new_tokens=12, temperature=0.9, top_p=0.9, top_k=50, seed=7)
        b = client.generate_ids([3, 4, 5], max_new_tokens=12, temperature=0.9, top_p=0.9, top_k=50, seed=7)
        assert a.token_ids == b.token_ids and len(a.token_ids) > 0


def test_stream_yields_the_same_text_as_generate(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    with Client(tiny_dir, tiny_swarm.urls) as client:
        full = client.generate("the lazy dog", max_new_tokens=10)
        pieces = list(client.stream("the lazy dog", max_new_tokens=10))
        assert "".join(pieces) == full.text


def test_stop_strings_cut_the_text(tiny_swarm: LocalSwarm, tiny_dir: Path) -> None:
    with Client(tiny_dir, tiny_swarm.urls) as client:
        full = client.generate("the lazy dog", max_new_tokens=12)
        if len(full.text) < 4:
            pytest.skip("random tiny model produced too little text to cut")
        stop = full.text[2:4]
        cut = client.generate("the lazy dog", max_new_tokens=12, stop=[stop])
        assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
        assert "".join(client.stream("the lazy dog", max_new_tokens=12, stop=[stop])) == cut.text


@pytest.mark.slow
def test_smollm2_four_processes_exact(smollm2: tuple[Any, Any, Path], tmp_path: Path) -> None:
    model, tok, model_dir = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with LocalSwarm(model_dir=model_dir, workdir=tmp_path) as swarm:
        assert len(swarm.nodes) == 4 and len({n.proc.pid for n in swarm.nodes}) == 4
        with Client(model_dir, swarm.urls) as client:
            ids = client._async.encode_chat(messages)
            # 32 greedy decode steps after the prefill, each compared with transformers' own decode.
            _check_against(client, model, ids, 33)
            for wire, budget in WIRE_BUDGET.items():
                with Client(model_dir, swarm.urls, wire_dtype=wire) as lossy:
                    err = (lossy.prefill_logits(ids) - _reference(model, ids, 1)[0]).abs().max().item()
                    assert err < budget, f"{wire} wire: max-abs logit error {err} over budget {budget}"
                    assert lossy.chat(messages, max_new_tokens=8).text.startswith("The capital of France")
            text = client.chat(messages, max_new_tokens=24).text
            ref_ids = _reference(model, ids, 24)[2]
            ref_ids = ref_ids[:ref_ids.index(tok.eos_token_id)] if tok.eos_token_id in ref_ids else ref_ids
            assert text == tok.decode(ref_ids, skip_special_tokens=True) and "Paris" in text


async def test_a_stream_closed_early_leaves_no_step_running_and_no_session_open(tiny_swarm: LocalSwarm,
                                                                              tiny_dir: Path) -> None:
    """The next step is sent before a token is handed over; a caller that stops reading, or a stop
    string, must cancel it and close every node's session."""
    def open_sessions() -> list[float]:
        counts = []
        for url in tiny_swarm.urls:
            text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
            counts.append(next(float(line.split()[-1]) for line in text.splitlines()
                               if line.startswith("veriswarm_node_sessions ")))
        return counts

    errors: list[dict[str, Any]] = []  # what asyncio reports, e.g. a step task that failed unobserved
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    async with AsyncClient(tiny_dir, tiny_swarm.urls) as client:
        before = set(asyncio.all_tasks())
        full = await client.generate_ids([3, 4, 5], max_new_tokens=8, ignore_eos=True)
        got = []
        gen = Generation("", [], 3, "length", [])
        async with contextlib.aclosing(client.stream_ids([3, 4, 5], max_new_tokens=8, ignore_eos=True,
                                                         into=gen)) as stream:
            async for event in stream:
                got.append(event.token_id)
                if len(got) == 2:
                    break  # the third step is already on its way to the nodes
        assert got == full.token_ids[:2]
        # Cancelled before any of its answers could be read (no loop turn between its send and the close):
        # only the two steps whose tokens were handed out were checked and recorded.
        assert sorted({r.receipt.step for r in gen.records}) == [0, 1]
        assert len(gen.records) == 2 * len(tiny_swarm.urls)
        assert set(asyncio.all_tasks()) - before == set(), "a step outlived its stream"
        gc.collect()  # a task that failed and was dropped is reported when it is collected
        await asyncio.sleep(0)
        assert errors == []
    assert open_sessions() == [0.0] * len(tiny_swarm.urls)
