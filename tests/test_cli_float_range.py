"""`lmpeek trace --save` with values beyond float16 (saved, finite) and with a model that produces
inf/NaN (one line, exit 2, nothing written; --allow-nonfinite saves them)."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

import lmpeek
from lmpeek.cli import app

runner = CliRunner()


def test_values_past_float16_are_saved_finite(tmp_path):
    r = runner.invoke(app, ["trace", "Hello there", "-m", "tiny:llama-big", "--save", str(tmp_path / "t"),
                            "--keep", "blocks.*.hook_resid_post"])  # fmt: skip
    assert r.exit_code == 0, r.output
    t = lmpeek.Trace.load(tmp_path / "t")
    post = t["blocks.1.hook_resid_post"]
    assert np.isfinite(post).all() and np.abs(post).max() > 65504
    assert "warning" not in r.stderr


def test_a_model_producing_inf_is_refused_in_one_line(tmp_path):
    args = ["trace", "Hello there", "-m", "tiny:llama-inf", "--save", str(tmp_path / "t"), "--keep",
            "blocks.*.hook_resid_post"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output + r.stderr
    assert "blocks.0.hook_mlp_out" in r.stderr and "--allow-nonfinite" in r.stderr
    assert not (tmp_path / "t").exists()

    r = runner.invoke(app, [*args, "--allow-nonfinite"])
    assert r.exit_code == 0, r.output
    assert "warning: tiny:llama-inf produced inf or NaN: first at blocks.0.hook_mlp_out" in r.stderr
    assert lmpeek.Trace.load(tmp_path / "t").nonfinite[0] == "blocks.0.hook_mlp_out"
