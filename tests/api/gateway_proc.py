"""Start ``veriswarm api serve`` as a real process for a test and stop it after (SIGINT, as an operator would)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from veriswarm.deploy.local import free_port


@contextmanager
def gateway_process(args: list[str], log: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """``veriswarm api serve ARGS --port <free>``, its output in ``log``; yields its URL once /health answers."""
    port = free_port()
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "veriswarm.cli", "api", "serve", *args, "--port", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log.read_text()) from None
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
