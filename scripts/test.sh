#!/usr/bin/env bash
# The whole test suite: Python (unit, integration on real processes, attacks) and, when present, the contracts.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh || exit 1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest: no tests were collected (exit 5); treating as success" >&2
  rc=0
fi
if [ "$rc" -eq 0 ] && [ -f contracts/test.sh ] && [ "$#" -eq 0 ]; then
  bash contracts/test.sh || rc=$?
fi
exit "$rc"
