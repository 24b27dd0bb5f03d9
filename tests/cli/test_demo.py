"""The README's main demo, on the tiny model: every stage prints its line and everything stops."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from veriswarm.cli.main import app


def test_demo_runs_every_stage(tiny_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--model-dir", str(tiny_dir), "--max-new-tokens", "6", "--prompt", "hi"],
                                env={"VERISWARM_HOME": str(tmp_path)})
    out = result.output
    assert result.exit_code == 0, out
    for stage in ("[chain]", "[node]", "[verifier]", "[gateway]", "[answer]", "[receipts]", "[audit]", "[ledger]",
                  "[settle]", "[reward]", "[claim]", "[dashboard]", "stopping gateway, verifier, nodes and chain"):
        assert stage in out, f"missing {stage}:\n{out}"
    assert len(re.findall(r"^\[audit\]    pass", out, re.M)) == 2  # one audit per shard, both pass
    assert "settled (sent)" in out and re.search(r"claimed 0\.\d+ ETH", out)
    # the gateway's dashboard sees both nodes, their stake on chain, the verdicts and the settled epoch
    assert re.search(r"^\[dashboard\] 2/2 shards covered, 2 node\(s\) live, 2 with stake on chain, 2 verdict\(s\), "
                     r"1 epoch\(s\), 1 request\(s\)", out, re.M), out
