"""Screenshots of the app with the real default model, for the README.

    .venv/bin/python docs/screenshots.py   # docs/generate.png, explore.png, attention.png,
    # export.png, notebook.png

Starts `lmpeek serve default` on a free port and drives Debian's Chromium with Playwright; downloads the
Explore view's export and opens it from disk (network blocked); then opens a notebook in JupyterLab that
shows the default model with `lmpeek.show`.
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
            # the side panels answer one after another on a busy machine: wait until none is loading
            page.wait_for_function("!document.body.innerText.includes('loading #')", timeout=180_000)
            tokens.nth(12).hover()
            page.wait_for_timeout(300)
            page.screenshot(path=str(HERE / "explore.png"))
            attention(page)
            export(browser, page)
            notebook(browser)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)


def attention(page) -> None:
    """The Attention tab on the same text: every layer x head, two heads' lines from " Paris", and the
    q·k products behind one of its scores."""
    page.get_by_test_id("tab-attention").click()
    page.get_by_test_id("attention-thumb").nth(0).wait_for(timeout=120_000)
    page.locator("[data-testid=attention-thumb][data-layer='3'][data-head='2']").click()
    page.locator("[data-testid=attention-head-toggle][data-head='5']").check()
    page.get_by_test_id("attention-key-token").nth(2).click()
    page.wait_for_function("!document.body.innerText.includes('loading ')", timeout=180_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(HERE / "attention.png"), full_page=True)
    page.get_by_test_id("tab-explore").click()


def export(browser, page) -> None:
    """The Export button's file, opened from disk with every network request refused."""
    import tempfile

    with page.expect_download() as info:
        page.get_by_test_id("export-button").click()
    path = pathlib.Path(tempfile.mkdtemp()) / "export.html"
    info.value.save_as(path)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
    offline = context.new_page()
    offline.goto(path.as_uri())
    tokens = offline.get_by_test_id("explore-tokens").get_by_test_id("token")
    tokens.nth(20).wait_for(timeout=60_000)
    tokens.nth(5).click()
    offline.wait_for_timeout(500)
    offline.screenshot(path=str(HERE / "export.png"))
    context.close()


NOTEBOOK_CELLS = [
    "import lmpeek\nmodel = lmpeek.load('default')",
    "lmpeek.show('The capital of France is Paris. The capital of Italy is Rome.', model=model)",
]


def notebook(browser) -> None:
    """A notebook in JupyterLab with the live widget (the kernel's Session answers it)."""
    import os
    import tempfile

    import nbformat

    folder = pathlib.Path(tempfile.mkdtemp())
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS]
    # without a kernelspec JupyterLab asks which kernel to start (a dialog) instead of starting one
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "lmpeek.ipynb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = os.path.dirname(sys.executable)
    path = f"{bin_dir}:{os.environ.get('PATH', '')}"
    env = dict(os.environ, PATH=path, JUPYTER_CONFIG_DIR=str(folder / ".c"))
    lab = subprocess.Popen(
        [os.path.join(bin_dir, "jupyter"), "lab", "--no-browser", f"--port={port}", "--ServerApp.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={folder}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.disable_check_xsrf=True", "--allow-root"],  # fmt: skip
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(240):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/lab/tree/lmpeek.ipynb")
        page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
        ready = "window.jupyterapp?.shell.currentWidget?.sessionContext?.isReady"
        page.wait_for_function(ready, timeout=120_000)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        tokens = page.locator(".jp-OutputArea-output .lmpeek").first.get_by_test_id("token")
        tokens.nth(10).wait_for(timeout=240_000)
        tokens.nth(5).click()
        page.wait_for_timeout(800)
        page.screenshot(path=str(HERE / "notebook.png"))
        page.close()
    finally:
        lab.terminate()
        lab.wait(10)


if __name__ == "__main__":
    main()
