"""Screenshots of the app with the real default model, for the README.

    .venv/bin/python docs/screenshots.py          # writes docs/generate.png and docs/explore.png

Starts `lmpeek serve default` on a free port and drives Debian's Chromium with Playwright.
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

SAMPLE = """The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
"""
HERE = pathlib.Path(__file__).resolve().parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip


def main() -> None:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "lmpeek.cli", "serve", "default", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if b'"ready"' in urllib.request.urlopen(f"{url}/api/health").read():
                    break
            except OSError:
                pass
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.get_by_test_id("model-status").filter(has_text="ready").wait_for(timeout=60_000)
            page.get_by_test_id("tab-generate").click()
            page.get_by_test_id("gen-prompt").fill("What is the capital of France?<eot>")
            page.get_by_test_id("gen-max-new-tokens").fill("24")
            page.get_by_test_id("gen-temperature").fill("0")
            page.get_by_test_id("gen-submit").click()
            page.get_by_test_id("gen-explore").wait_for(timeout=120_000)  # shown when generation is done
            page.locator("body").click(position={"x": 5, "y": 5})
            page.get_by_test_id("gen-token").nth(5).click()  # " Paris"
            page.wait_for_timeout(300)
            page.screenshot(path=str(HERE / "generate.png"))
            page.get_by_test_id("tab-explore").click()
            page.get_by_test_id("explore-text").fill(SAMPLE)
            with page.expect_response("**/api/trace"):
                page.get_by_test_id("explore-run").click()
            page.get_by_test_id("metric-select").select_option("loss")
            tokens = page.get_by_test_id("explore-tokens").get_by_test_id("token")
            tokens.nth(5).click()
            tokens.nth(12).hover()
            page.wait_for_timeout(300)
            page.screenshot(path=str(HERE / "explore.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
