"""The dashboard in a real browser (Playwright driving Debian Chromium): the Activations and Token maps pages render
their charts with no exception element and no page error; screenshots are kept as test artifacts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("WORKBENCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = "/usr/bin/chromium"
CHART = '[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model):
    port = _free_port()
    env = os.environ | {"WORKBENCH_APP_MODEL": str(tiny_model.folder), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py"),
                             "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port",
                             str(port), "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.25)
        else:
            raise RuntimeError("the dashboard did not start within 30 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_test_id("stSidebar").get_by_text("layers").wait_for(timeout=60_000)  # the model is loaded
    return page, errors


def _check(page, errors, name: str) -> None:
    page.locator(CHART).first.wait_for(timeout=120_000)
    assert page.get_by_test_id("stException").count() == 0
    assert errors == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_activations_page_in_a_browser(server, browser):
    page, errors = _open(browser, f"{server}/Activations")
    page.get_by_text("Paste", exact=True).click()
    page.get_by_label("One prompt per line").fill("the cat sat on the mat\na quick brown fox\nhello world")
    page.get_by_label("One prompt per line").press("Control+Enter")
    page.get_by_role("button", name="Capture and analyse").click()
    page.get_by_text("Per layer", exact=True).wait_for(timeout=120_000)
    _check(page, errors, "activations")
    page.close()


def test_token_maps_page_in_a_browser(server, browser):
    page, errors = _open(browser, f"{server}/Token_maps")
    page.get_by_role("button", name="Generate and map").click()
    page.get_by_text("Which input explains this output", exact=True).wait_for(timeout=120_000)
    _check(page, errors, "token_maps")
    assert page.locator(CHART).count() >= 1
    page.close()
