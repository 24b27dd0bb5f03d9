#!/usr/bin/env bash
# The main demo: split the packaged SmolLM2 into 4 shards, start 4 node processes on loopback,
# answer a prompt through them and show the checked receipts. Extra arguments go to `veriswarm demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/veriswarm demo "$@"
