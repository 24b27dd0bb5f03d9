"""The client side of `wan.run_wan`, run inside the client's namespace: greedy generation, timed, over
both paths (server-to-server relay and client-mediated), interleaved run by run so drift hits both."""

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
    results = {}
    with Client(a.model_dir, a.peers, timeout_s=60) as relay, \
            Client(a.model_dir, a.peers, timeout_s=60, relay=False) as direct:
        paths = {"relay": relay, "client_mediated": direct}
        for client in paths.values():
            client.generate_ids(ids, max_new_tokens=2, ignore_eos=True)  # warm connections and caches
        timings: dict[str, dict[str, list[float]]] = {p: {"per_token": [], "ttft": []} for p in paths}
        tokens: dict[str, list[int]] = {}
        relayed: dict[str, int] = {}
        for _ in range(a.runs):
            for name, client in paths.items():
                g = client.generate_ids(ids, max_new_tokens=a.tokens, ignore_eos=True)
                timings[name]["per_token"].append((g.total_s - g.ttft_s) / max(1, len(g.token_ids) - 1) * 1000)
                timings[name]["ttft"].append(g.ttft_s * 1000)
                tokens[name], relayed[name] = g.token_ids, g.relayed_steps
        for name in paths:
            results[name] = {"token_ids": tokens[name], "ms_per_token": statistics.median(timings[name]["per_token"]),
                             "ttft_ms": statistics.median(timings[name]["ttft"]), "relayed_steps": relayed[name]}
    print(json.dumps({**results, "runs": a.runs}))


if __name__ == "__main__":
    main()
