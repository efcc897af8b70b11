"""What the JupyterLab tests share: a notebook executed with nbclient and written as demo.ipynb, JupyterLab
serving its folder (the `lab` fixture: a module defines a `notebook` fixture returning (folder, nb) and
imports this one), and a Chromium page on it with every cell run."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

from tests.e2e.conftest import ARTIFACTS, _free_port


def run_notebook(folder, cells: list[str]):
    """A notebook of `cells` executed in a python3 kernel, written to folder/demo.ipynb (what `lab` opens)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    nbformat.write(nb, folder / "demo.ipynb")
    return nb


@pytest.fixture(scope="module")
def lab(notebook):
    """JupyterLab on the module's notebook folder (no token, its own config and runtime dirs); the
    notebook's URL once the port answers."""
    folder, _ = notebook
    port = _free_port()
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}",
               JUPYTER_CONFIG_DIR=str(folder / ".cfg"), JUPYTER_RUNTIME_DIR=str(folder / ".rt"))  # fmt: skip
    cmd = [os.path.join(bin_dir, "jupyter"), "lab", "--no-browser", f"--port={port}", "--ServerApp.token=",
           "--ServerApp.password=", f"--ServerApp.root_dir={folder}", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.disable_check_xsrf=True", "--allow-root"]  # fmt: skip
    log = open(folder / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(folder / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/lab/tree/demo.ipynb"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def lab_page(browser, url: str, failed_png: str):
    """A Chromium page on the notebook at `url`, its kernel ready and every cell asked to run. On an
    error the page is saved as test-artifacts/`failed_png`; JavaScript errors fail the test."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(url)
        pg.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90_000)
        # not awaited: the command's promise settles only when every cell has run (or never, if a
        # dialog asks something), and page.evaluate has no timeout of its own
        pg.wait_for_function("window.jupyterapp.shell.currentWidget?.sessionContext?.isReady", timeout=90_000)
        pg.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        yield pg
    except Exception:
        pg.screenshot(path=str(ARTIFACTS / failed_png))
        raise
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
