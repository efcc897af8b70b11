"""The placement flags on every command that loads a model: --dtype, --device, --device-map,
--max-memory, --force; the memory estimate printed before loading and the refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import lmpeek
from lmpeek.cli import app

runner = CliRunner()
SPLIT = (  # tiny:llama's two layers: one on the CPU, one offloaded to disk
    "model.embed_tokens=cpu,model.layers.0=cpu,model.layers.1=disk,model.norm=cpu,model.rotary_emb=cpu,lm_head=cpu"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import save_tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama-cli")
    save_tiny_llama(path)
    return str(path)


def test_trace_split_over_cpu_and_disk_in_bfloat16(folder):
    r = runner.invoke(app, ["trace", "The cat sat on the mat.", "-m", folder, "--json", "--dtype", "bfloat16",
                            "--device-map", SPLIT])  # fmt: skip
    assert r.exit_code == 0, r.output
    # the estimate, printed before loading because a placement was asked for
    assert "lmpeek: loading" in r.stderr and "bfloat16 weights" in r.stderr and "on disk" in r.stderr
    got = json.loads(r.stdout)
    # independent: the same placement through the Python API
    model = lmpeek.load(folder, dtype="bfloat16", device_map=SPLIT, progress=False)
    want = lmpeek.trace(model, "The cat sat on the mat.").summary()
    np.testing.assert_allclose(
        np.array(got["loss"], dtype=float), np.array(want["loss"], dtype=float), rtol=1e-6
    )


@pytest.mark.parametrize(
    "command", [["trace", "hi"], ["generate", "hi"], ["check"], ["export", "hi", "-o", "x.html"]]
)
def test_every_command_refuses_what_does_not_fit_in_one_line(folder, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*command, folder] if command == ["check"] else [*command, "-m", folder]
    r = runner.invoke(app, [*args, "--max-memory", "cpu=1KiB"])
    assert r.exit_code == 2, r.output
    assert "needs ≈" in r.stderr and "cpu has 1 KiB available" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, [*args, "--max-memory", "cpu=1KiB", "--force"])
    assert r.exit_code == 0, r.output
    assert "loading anyway, as forced" in r.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device-map", "everywhere"], "Unknown device_map"),
        (["--dtype", "int3"], "Unknown dtype 'int3'"),
        (["--device", "tpu"], "Unknown device 'tpu'"),
        (["--max-memory", "cpu=lots"], "a size is a positive number"),
    ],
)
def test_bad_placement_flags_are_one_line(folder, flags, message):
    r = runner.invoke(app, ["trace", "hi", "-m", folder, *flags])
    assert r.exit_code == 2 and message in r.stderr


def test_serve_refuses_before_serving_and_loads_with_the_flags(folder, monkeypatch):
    import uvicorn

    import lmpeek.server.app

    made = []
    monkeypatch.setattr(lmpeek.server.app, "create_app", lambda model, **kw: made.append(kw) or "APP")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    r = runner.invoke(app, ["serve", folder, "--port", "0", "--max-memory", "cpu=1KiB"])
    assert r.exit_code == 2 and "cpu has 1 KiB available" in r.stderr and made == []
    assert "serving" not in r.output
    r = runner.invoke(app, ["serve", folder, "--port", "0", "--dtype", "bfloat16", "--device-map", SPLIT])
    assert r.exit_code == 0, r.output
    assert "note:" in r.stderr and "bfloat16 weights" in r.stderr and "serving" in r.output
    # the app loads the model in the background with the same flags
    model = made[0]["loader"](folder)
    assert set(model.hf.hf_device_map.values()) == {"cpu", "disk"}
    assert next(model.hf.parameters()).dtype.is_floating_point and model.memory.dtype == "bfloat16"
    # without flags the app loads as it always did
    r = runner.invoke(app, ["serve", folder, "--port", "0"])
    assert r.exit_code == 0 and made[-1]["loader"] is None
