"""The OpenAI-compatible gateway vs the SDK directly, same swarm, same run (SmolLM2, 4 shards).

api_tok_s / sdk_tok_s: a 64-token greedy generation (median of --runs), through `POST /v1/chat/completions`
(non-streaming, the official `openai` client) and through `veriswarm.client.Client`. Then 8 concurrent
streaming clients through the gateway: all must complete; aggregate tokens/s. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import openai

from veriswarm.client import Client
from veriswarm.deploy.local import LocalSwarm, free_port
from veriswarm.split.partition import split_model

MESSAGES = [{"role": "user", "content": "Write a paragraph about the history of bridges."}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    split_model(None, 4, tmp / "model")
    with LocalSwarm(model_dir=tmp / "model", workdir=tmp / "swarm") as swarm:
        port = free_port()
        gw = subprocess.Popen([sys.executable, "-m", "veriswarm.cli", "api", "serve", "--model-dir", str(tmp / "model"),
                               "--peers", ",".join(swarm.urls), "--port", str(port), "--rate-limit", "100000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            oai = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600)
            model = oai.models.list().data[0].id
            # The gateway's greedy chat stops at EOS; the SDK comparison uses the same cap and the same stop.
            with Client(tmp / "model", swarm.urls) as sdk:
                sdk.chat(MESSAGES, max_new_tokens=4)
                oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, temperature=0)  # type: ignore[arg-type]
                api_rates, sdk_rates = [], []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    r = oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=args.tokens,  # type: ignore[arg-type]
                                                    temperature=0)
                    api_rates.append(r.usage.completion_tokens / (time.perf_counter() - t0))  # type: ignore[union-attr]
                    t0 = time.perf_counter()
                    g = sdk.chat(MESSAGES, max_new_tokens=args.tokens)
                    sdk_rates.append(len(g.token_ids) / (time.perf_counter() - t0))
                    same = g.text == r.choices[0].message.content
            done, tokens, errors = [0], [0], []

            def stream_one() -> None:
                try:
                    n = 0
                    for chunk in oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=args.tokens,  # type: ignore[arg-type]
                                                             temperature=0.7, stream=True):
                        if chunk.choices and chunk.choices[0].delta.content:
                            n += 1
                    tokens[0] += n
                    done[0] += 1
                except Exception as exc:
                    errors.append(repr(exc))

            threads = [threading.Thread(target=stream_one) for _ in range(args.concurrent)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        finally:
            gw.terminate()
            gw.wait(timeout=15)
    a, s = statistics.median(api_rates), statistics.median(sdk_rates)
    print(f"api {a:.2f} tok/s, sdk {s:.2f} tok/s, ratio {a / s:.3f}, same text {same}; {done[0]}/{args.concurrent} "
          f"concurrent streams completed, {tokens[0] / wall:.2f} streamed chunks/s aggregate")
    print(json.dumps({"api_tok_s": round(a, 3), "sdk_tok_s": round(s, 3), "ratio": round(a / s, 4), "same_text": same,
                      "concurrent_streams": args.concurrent, "concurrent_completed": done[0],
                      "concurrent_aggregate_chunks_s": round(tokens[0] / wall, 3), "errors": errors[:3]}))


if __name__ == "__main__":
    main()
