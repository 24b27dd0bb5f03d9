"""Wide-area generation: SmolLM2 in 4 shards, client and each node in its own network namespace, every
node's link delayed by 25 ms each way (a delay relay: this kernel has no netem).

limit_ms_per_token = the one-way delays a token must cross on its path + the compute measured for the
same generation on loopback in this run (with relay, the default path). Relay path: client -> n0 -> n1 ->
n2 -> n3 -> client, 5 crossings; client-mediated path: to and from each of the 4 nodes, 8 crossings.
Prints one JSON line: the relay path's figures, with the client-mediated ones under "client_mediated".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from veriswarm.client import Client
from veriswarm.deploy.local import LocalSwarm
from veriswarm.deploy.netlab import available
from veriswarm.deploy.wan import run_wan
from veriswarm.split.partition import split_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--delay-ms", type=float, default=25.0)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    why = available()
    if why:
        raise SystemExit(f"cannot emulate hosts here: {why}")
    tmp = Path(tempfile.mkdtemp())
    model_dir = tmp / "model"
    split_model(None, 4, model_dir)
    with LocalSwarm(model_dir=model_dir, workdir=tmp / "local", torch_threads=1) as swarm, \
            Client(model_dir, swarm.urls) as client:
        ids = client._async.encode_chat([{"role": "user", "content": "Tell me a story about a lighthouse."}])
        client.generate_ids(ids, max_new_tokens=2, ignore_eos=True)
        local = []
        for _ in range(args.runs):
            g = client.generate_ids(ids, max_new_tokens=args.tokens, ignore_eos=True)
            local.append((g.total_s - g.ttft_s) / (len(g.token_ids) - 1) * 1000)
            reference = g.token_ids
    compute = statistics.median(local)
    wan = run_wan(model_dir, tmp / "wan", delay_ms=args.delay_ms, prompt_ids=ids, tokens=args.tokens, runs=args.runs)
    # One-way crossings per token: relay goes client -> n0 -> n1 -> n2 -> n3 -> client (shards + 1);
    # client-mediated goes to and back from every node (2 x shards).
    out = {}
    for path, crossings in (("relay", 4 + 1), ("client_mediated", 2 * 4)):
        limit = crossings * args.delay_ms + compute
        r = wan[path]
        print(f"{path:16s} {r['ms_per_token']:7.1f} ms/token; limit {limit:.1f} ({crossings} x {args.delay_ms:g} ms + "
              f"compute {compute:.1f}); ratio {r['ms_per_token'] / limit:.3f}; same text: {r['token_ids'] == reference}")
        out[path] = {"ms_per_token": round(r["ms_per_token"], 2), "limit_ms_per_token": round(limit, 2),
                     "ratio": round(r["ms_per_token"] / limit, 4), "crossings": crossings,
                     "same_text": r["token_ids"] == reference}
    print(json.dumps({**out["relay"], "client_mediated": out["client_mediated"],
                      "loopback_ms_per_token": round(compute, 2), "delay_ms_one_way": args.delay_ms,
                      "load_avg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
