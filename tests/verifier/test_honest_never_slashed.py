"""Over 1,000 audited honest steps on the real model, nodes and verifier at different thread counts:
not one false fault (the tolerance sits well above honest floating-point noise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from veriswarm.client import Client
from veriswarm.deploy.local import LocalSwarm
from veriswarm.manifest import ModelDir
from veriswarm.sinks import MemorySink
from veriswarm.verifier.core import Verifier, VerifierConfig

PROMPTS = ["Tell me about the sea.", "What is 17 times 3?", "Name a famous painter.", "Why do cats purr?",
           "Describe a forest in winter.", "How do airplanes fly?", "Give me a haiku about rain.",
           "What is a prime number?"]


@pytest.mark.slow
def test_thousand_honest_steps_no_false_fault(smollm2: tuple[Any, Any, Path], tmp_path: Path) -> None:
    _, _, model_dir = smollm2
    sink = MemorySink()
    with LocalSwarm(model_dir=model_dir, workdir=tmp_path, torch_threads=1) as swarm, \
            Client(model_dir, swarm.urls, sink=sink) as client:
        for i, prompt in enumerate(PROMPTS):
            client.chat([{"role": "user", "content": prompt}], max_new_tokens=32, ignore_eos=True,
                        temperature=0.7 if i % 2 else 0.0, seed=i)
    assert len(sink.records) >= 1000
    sessions = sorted({r.receipt.session_id for r in sink.records})
    threads = torch.get_num_threads()
    worst, audited = 0.0, 0
    try:
        # Half the sessions re-executed with 2 threads, half with 1; the nodes ran with 1.
        for count, part in ((2, sessions[::2]), (1, sessions[1::2])):
            torch.set_num_threads(count)
            verifier = Verifier(ModelDir.open(model_dir), config=VerifierConfig(audit_rate=1.0))
            for record in sink.records:
                if record.receipt.session_id in part:
                    verifier.submit(record)
            for v in verifier.audit_due(force=True):
                assert v.passed, v.summary()
                worst = max(worst, max(s.max_error / s.tolerance for s in v.steps))
                audited += len(v.steps)
            assert verifier.stats["faults"] == 0
    finally:
        torch.set_num_threads(threads)
    assert audited == len(sink.records) >= 1000
    print(f"audited {len(sink.records)} honest steps; worst error at {worst:.3f} of the tolerance")
    assert worst < 0.5  # honest noise leaves a wide margin
