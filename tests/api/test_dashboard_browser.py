"""The dashboard in a real headless Chromium: a gateway process on the tiny swarm, a hostile node whose
claims and URL carry script, and a node slashed in the ledger the gateway reads.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (scripts/bootstrap.sh installs them when
run as root) and ``selenium``; skipped with the reason otherwise. The screenshot is written to
tests/artifacts/dashboard.png (git-ignored) and its path printed.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from veriswarm.deploy.local import LocalSwarm, free_port
from veriswarm.incentives.ledger import Ledger
from veriswarm.manifest import ModelDir

from .gateway_proc import gateway_process
from .hostile import IMG, SCRIPT, URL_PATH, ThreadServer, hostile_app

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
NO_BROWSER = ("headless browser test needs /usr/bin/chromium and /usr/bin/chromedriver "
              "(apt-get install chromium chromium-driver; scripts/bootstrap.sh does it as root)")
# Checked before any fixture starts processes; _browser checks again (and for selenium) when it runs.
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason=NO_BROWSER)


def _browser(profile: Path) -> Any:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(NO_BROWSER)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1600", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


@pytest.fixture
def gateway(tiny_swarm: LocalSwarm, tiny_dir: Path, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(gateway URL, hostile node URL, slashed node address)."""
    ledger_file = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{ledger_file}")
    ledger.migrate()
    victim = tiny_swarm.nodes[1].address  # slashed by the test once it has made its request (see below)
    ledger.close()
    hport = free_port()
    hostile = ThreadServer(hostile_app(ModelDir.open(tiny_dir).manifest.hash), hport)
    hostile_url = f"http://127.0.0.1:{hport}{URL_PATH}"
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps([{"url": u} for u in (*tiny_swarm.urls, hostile_url)]))
    log = tmp_path / "gateway.log"
    args = ["--model-dir", str(tiny_dir), "--peers-file", str(peers), "--ledger", f"sqlite:///{ledger_file}"]
    try:
        with gateway_process(args, log) as url:
            assert f"dashboard: {url}/dashboard" in log.read_text()
            yield url, hostile_url, victim
    finally:
        hostile.stop()


def _chat(url: str) -> int:
    model = json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=30).read())["data"][0]["id"]
    body = json.dumps({"model": model, "max_tokens": 6, "temperature": 0,
                       "messages": [{"role": "user", "content": "a swarm of nodes"}]}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    tokens: int = json.loads(urllib.request.urlopen(req, timeout=60).read())["usage"]["completion_tokens"]
    return tokens


def test_dashboard_in_a_real_browser(gateway: tuple[str, str, str], tiny_swarm: LocalSwarm, tmp_path: Path) -> None:
    url, hostile_url, victim = gateway
    driver = _browser(tmp_path / "chromium-profile")
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        tokens = _chat(url)
        # Slashed only now: the gateway routes by the ledger and never through an excluded node, and this
        # swarm has no other replica of shard 1. The dashboard reads the ledger live.
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        ledger.record_slash(victim, "0x" + "cd" * 32, "equivocation", {"by": "test"})
        ledger.close()
        driver.get(f"{url}/dashboard")
        # the page fills itself in from the JSON: wait for a poll that shows the request made above
        WebDriverWait(driver, 30, poll_frequency=0.25).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1"
            and d.find_elements(By.CSS_SELECTOR, "#requests tbody tr"))
        cells = driver.find_elements(By.CSS_SELECTOR, "#requests tbody tr td")
        assert cells[1].text == str(tokens) and float(cells[3].text) > 0  # tokens, tokens/s
        shards = driver.find_element(By.ID, "shards")
        content = shards.get_attribute("textContent") or ""
        for node in tiny_swarm.nodes:
            assert node.address in content and node.url in content
        # the hostile node's claims and URL appear as literal text, and none of their markup ran
        assert SCRIPT + IMG in content and IMG in content and hostile_url in content
        assert driver.execute_script("return typeof window.__pwned") == "undefined"
        assert driver.execute_script("return document.querySelectorAll('img').length") == 0
        assert driver.execute_script("return document.scripts.length") == 1
        # the slashed node is shown as slashed (row and badge), its shard as thin (only the hostile node is live)
        rows = [r for r in shards.find_elements(By.CSS_SELECTOR, "tr.slashed") if victim in r.text]
        assert len(rows) == 1 and rows[0].find_element(By.CSS_SELECTOR, ".badge.slashed").text == "slashed"
        assert "thin" in shards.find_elements(By.CLASS_NAME, "shard")[1].get_attribute("class").split()
        assert victim in driver.find_element(By.ID, "slashes").text
        assert "verifier: not configured" in driver.find_element(By.ID, "verdicts").text
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
        assert errors == []  # e.g. a Content-Security-Policy violation would be logged here
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        shutil.copy(shot, tmp_path / "dashboard.png")
        print(f"\ndashboard screenshot: {shot}")
    finally:
        driver.quit()
