"""The search page in a real browser: Debian's chromium driven headless by Playwright."""

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from test_search import index_dir, page_server, test_clips  # noqa: F401  (module fixtures)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "output" / "test_artifacts"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (preinstall.sh installs Debian's chromium)")
def test_search_play_and_ask_in_chromium(index_dir, test_clips):  # noqa: F811
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is installed by preinstall.sh")
    query = test_clips[1][0]["desc"] if isinstance(test_clips[1][0]["desc"], str) else test_clips[1][0]["desc"][0]
    with page_server(index_dir) as (_, base):
        with urllib.request.urlopen(f"{base}/api/search?q={urllib.request.quote(query)}&group=tvas&k=10") as answer:
            expected = json.loads(answer.read())["hits"][0]["id"]  # what the index ranks first
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
    assert (ARTIFACTS / "search_page.png").stat().st_size > 10_000
