"""A model folder's own Python runs only with --trust-remote-code / trust_remote_code=True.

Without the flag transformers asks on stdin ("Do you wish to run the custom code? [y/N]") and runs the
code on "y"; lmpeek always passes trust_remote_code explicitly, so nothing asks and nothing runs.
Each check runs in a subprocess whose stdin answers "y", with the module caches in a temporary folder.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

CONFIG_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("the model folder's code ran")
from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "lmpeek_custom"
"""

MODELING_CODE = """
from transformers import LlamaForCausalLM
from .configuration_custom import CustomConfig


class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
"""


@pytest.fixture
def custom_code_folder(tmp_path, save_tiny_llama) -> tuple[pathlib.Path, pathlib.Path]:
    """(a tiny Llama folder whose config asks for its own code, the file that code writes when run)."""
    folder, marker = tmp_path / "custom", tmp_path / "marker.txt"
    save_tiny_llama(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "lmpeek_custom"
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(CONFIG_CODE.format(marker=str(marker)))
    (folder / "modeling_custom.py").write_text(MODELING_CODE)
    return folder, marker


def _run(args: list[str], tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, *args], input="y\ny\n", capture_output=True, text=True, env=env, timeout=300
    )


def test_plain_transformers_would_ask_and_run_it(custom_code_folder, tmp_path):
    # the hazard this guards against: without an explicit flag, "y" on stdin runs the folder's code
    folder, marker = custom_code_folder
    code = f"from transformers import AutoConfig; AutoConfig.from_pretrained({str(folder)!r})"
    r = _run(["-c", code], tmp_path)
    assert marker.exists(), r.stderr[-2000:]
    assert "[y/N]" in r.stdout + r.stderr


def test_python_api_refuses_without_running_it(custom_code_folder, tmp_path):
    folder, marker = custom_code_folder
    code = (
        "import lmpeek\nfrom lmpeek.errors import LmpeekError\n"
        f"try:\n    lmpeek.load({str(folder)!r}, progress=False)\n"
        "except LmpeekError as e:\n    print('LMPEEK_ERROR', e)\n"
    )
    r = _run(["-c", code], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "LMPEEK_ERROR" in r.stdout and "--trust-remote-code" in r.stdout, r.stdout
    assert "[y/N]" not in r.stdout + r.stderr
    assert not marker.exists()


def test_cli_refuses_without_running_it(custom_code_folder, tmp_path):
    folder, marker = custom_code_folder
    r = _run(["-m", "lmpeek.cli", "trace", "hello", "-m", str(folder)], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--trust-remote-code" in lines[0], r.stderr
    assert "[y/N]" not in r.stdout + r.stderr
    assert not marker.exists()


def test_the_flag_lets_it_run(custom_code_folder, tmp_path):
    folder, marker = custom_code_folder
    r = _run(["-m", "lmpeek.cli", "trace", "hello", "-m", str(folder), "--trust-remote-code"], tmp_path)
    assert marker.exists(), r.stderr[-2000:]
    assert "[y/N]" not in r.stdout + r.stderr
