"""The search page in a real browser: Debian's chromium driven headless by Playwright."""

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from test_search import index_dir, test_clips  # noqa: F401  (module fixtures)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "output" / "test_artifacts"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (preinstall.sh installs Debian's chromium)")
def test_search_play_and_ask_in_chromium(index_dir, test_clips):  # noqa: F811
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is installed by preinstall.sh")
    import uvicorn

    from vast.search.server import create_app, load_for_serving

    index, model = load_for_serving(index_dir)
    server = uvicorn.Server(uvicorn.Config(create_app(index, model), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    query = test_clips[1][0]["desc"] if isinstance(test_clips[1][0]["desc"], str) else test_clips[1][0]["desc"][0]
    with urllib.request.urlopen(f"{base}/api/search?q={urllib.request.quote(query)}&group=tvas&k=10") as response:
        expected = json.loads(response.read())["hits"][0]["id"]  # what the index ranks first
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_selector("#group option[value=tvas]", state="attached")
            page.fill("#query", query)
            page.click("#search button[type=submit]")
            first = page.locator("#results li").first
            first.wait_for(timeout=120_000)
            assert first.get_attribute("data-id") == expected
            first.locator("button.play").click()
            page.wait_for_function("() => { const v = document.querySelector('#results li video');"
                                   " return v && !v.paused && v.readyState >= 2; }", timeout=30_000)
            first.locator("input.question").fill("what word is spoken")
            first.locator("form.ask button").click()
            page.wait_for_function("() => { const a = document.querySelector('#results li .answer');"
                                   " return a && a.textContent && a.textContent !== '…'; }", timeout=120_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "search_page.png"), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert (ARTIFACTS / "search_page.png").stat().st_size > 10_000
