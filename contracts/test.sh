#!/usr/bin/env bash
# Runs the forge test suite offline (unit, fuzz, invariant, reentrancy, EIP-712 vector) and
# checks that the committed contracts/abi/*.json match the sources. Non-zero exit on failure.
# Extra arguments go to `forge test` (e.g. --match-contract SlashingTest, --gas-report).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
bash "$ROOT/deploy/tools.sh"
export PATH="$ROOT/.tools/bin:$PATH"
export FOUNDRY_SOLC="$ROOT/.tools/bin/solc" FOUNDRY_OFFLINE=true
cd "$HERE"
forge build --quiet
node tools/export-abi.js --check
forge test "$@"
