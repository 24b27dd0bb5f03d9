"""The client side of `wan.run_wan`, run inside the client's namespace: greedy generation, timed."""

from __future__ import annotations

import argparse
import json
import statistics

from veriswarm.client import Client


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--peers", required=True)
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--prompt-ids", required=True)
    a = ap.parse_args()
    ids = [int(x) for x in a.prompt_ids.split(",")]
    with Client(a.model_dir, a.peers, timeout_s=60) as client:
        client.generate_ids(ids, max_new_tokens=2, ignore_eos=True)  # warm connections and caches
        per_token, ttft, tokens = [], [], []
        for _ in range(a.runs):
            g = client.generate_ids(ids, max_new_tokens=a.tokens, ignore_eos=True)
            per_token.append((g.total_s - g.ttft_s) / max(1, len(g.token_ids) - 1) * 1000)
            ttft.append(g.ttft_s * 1000)
            tokens = g.token_ids
    print(json.dumps({"token_ids": tokens, "ms_per_token": statistics.median(per_token),
                      "ttft_ms": statistics.median(ttft), "runs": a.runs}))


if __name__ == "__main__":
    main()
