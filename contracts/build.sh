#!/usr/bin/env bash
# Builds the contracts offline and refreshes the committed ABI/bytecode in contracts/abi/.
# Full forge artifacts land in contracts/out/ (git-ignored).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
bash "$ROOT/deploy/tools.sh"
export PATH="$ROOT/.tools/bin:$PATH"
export FOUNDRY_SOLC="$ROOT/.tools/bin/solc" FOUNDRY_OFFLINE=true
cd "$HERE"
forge build --quiet "$@"
node tools/export-abi.js
