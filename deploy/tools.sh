#!/usr/bin/env bash
# Installs the pinned contract toolchain (forge, anvil, cast, solc-js, OpenZeppelin)
# into <repo>/.tools and writes an offline `solc` wrapper for forge.
# Idempotent; prints nothing but errors. Needs only node >= 18 + npm + registry access.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"

FOUNDRY_VERSION="1.7.1"
SOLC_VERSION="0.8.28"
OZ_VERSION="5.7.0"
PKGS=(
  "@foundry-rs/forge@$FOUNDRY_VERSION"
  "@foundry-rs/anvil@$FOUNDRY_VERSION"
  "@foundry-rs/cast@$FOUNDRY_VERSION"
  "solc@$SOLC_VERSION"
  "@openzeppelin/contracts@$OZ_VERSION"
)
STAMP="$TOOLS/.installed"
WANT="${PKGS[*]} wrapper-v3"

have_all() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] || return 1
  local b
  for b in forge anvil cast solc; do [[ -x "$TOOLS/bin/$b" ]] || return 1; done
  [[ -f "$TOOLS/node_modules/@openzeppelin/contracts/package.json" ]] || return 1
}

WRAPPER_SRC="$ROOT/contracts/tools/solc-wrapper.js"
install_wrapper() {
  if ! cmp -s "$WRAPPER_SRC" "$TOOLS/bin/solc-wrapper.js"; then
    cp "$WRAPPER_SRC" "$TOOLS/bin/solc-wrapper.js"
    chmod +x "$TOOLS/bin/solc-wrapper.js"
  fi
  if [[ ! -x "$TOOLS/bin/solc" ]]; then
    cat > "$TOOLS/bin/solc" <<'SH'
#!/bin/sh
# offline solc for forge: delegates to solc-js (see solc-wrapper.js)
exec node "$(dirname "$0")/solc-wrapper.js" "$@"
SH
    chmod +x "$TOOLS/bin/solc"
  fi
}

if have_all; then
  install_wrapper # cheap; picks up wrapper edits
  exit 0
fi

command -v node >/dev/null || { echo "tools.sh: node not found" >&2; exit 1; }
command -v npm >/dev/null || { echo "tools.sh: npm not found" >&2; exit 1; }

mkdir -p "$TOOLS/bin"
# Serialize concurrent first-time installs (several scripts may call this at once).
if command -v flock >/dev/null; then
  exec 9>"$TOOLS/.lock"
  flock 9
  if have_all; then
    install_wrapper
    exit 0
  fi
fi
[[ -f "$TOOLS/package.json" ]] || echo '{"name":"veriswarm-tools","private":true}' > "$TOOLS/package.json"

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
if ! npm install --prefix "$TOOLS" --no-audit --no-fund --save-exact --loglevel=error \
      --no-update-notifier "${PKGS[@]}" >"$LOG" 2>&1; then
  cat "$LOG" >&2
  echo "tools.sh: npm install failed" >&2
  exit 1
fi

# Link the static foundry binaries shipped in the platform packages (bypasses the
# node launcher: faster start, and no download attempt ever happens).
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) PLAT=linux-amd64 ;;
  Linux-aarch64 | Linux-arm64) PLAT=linux-arm64 ;;
  Darwin-arm64) PLAT=darwin-arm64 ;;
  Darwin-x86_64) PLAT=darwin-amd64 ;;
  *) echo "tools.sh: unsupported platform $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
for b in forge anvil cast; do
  bin="$(find "$TOOLS/node_modules/@foundry-rs/$b-$PLAT" -type f -name "$b" -perm -u+x 2>/dev/null | head -n1)"
  if [[ -z "$bin" ]]; then
    # fall back to the npm launcher
    bin="$TOOLS/node_modules/.bin/$b"
  fi
  [[ -x "$bin" ]] || { echo "tools.sh: $b binary not found after install" >&2; exit 1; }
  # relative link so the checkout can move; "../" because links live in bin/
  ln -sfn "../${bin#"$TOOLS"/}" "$TOOLS/bin/$b"
done

# solc wrapper (contracts/tools/solc-wrapper.js): answers `solc --version` and
# `solc --standard-json` like the native compiler, using solc-js (wasm).
install_wrapper
echo "$WANT" > "$STAMP"
