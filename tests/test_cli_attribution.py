"""`lmpeek attribute` and `lmpeek ablate` on a tiny model: the JSON is the library's answer, the table
shows it, and bad input is one line with a non-zero exit."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import lmpeek
from lmpeek.cli import app

runner = CliRunner()
TEXT = "The capital of France is Paris. The capital of Italy is"


def run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False, terminal_width=200)


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load("tiny:llama")


def test_attribute_json_is_the_librarys_answer(model):
    r = run("attribute", TEXT, "-m", "tiny:llama", "--method", "occlusion", "--features", "words", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    want = lmpeek.attribute(model, TEXT, method="occlusion", features="words")
    assert got["method"] == want.method == "occlusion"
    np.testing.assert_allclose(np.asarray(got["scores"], dtype=float), want.scores, rtol=1e-6, atol=1e-9)
    assert len(got["segments"]) == len(want.segments)


def test_attribute_table_names_method_target_and_delta():
    r = run("attribute", TEXT, "--model", "tiny:llama", "--method", "gradient_x_input")
    assert r.exit_code == 0, r.output
    assert "gradient_x_input" in r.output and "delta" in r.output and "F(x)" in r.output


def test_attribute_refuses_bad_input_in_one_line():
    r = runner.invoke(app, ["attribute", TEXT, "--model", "tiny:llama", "--method", "magic"])
    assert r.exit_code == 2 and "magic" in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1


def test_ablate_with_variants(model):
    variants = ["The capital of Italy is", "Paris. The capital of Italy is"]
    args = ["ablate", TEXT, "--model", "tiny:llama", "-n", "3", "--json"]
    r = run(*args, *[a for v in variants for a in ("--variant", v)])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    want = lmpeek.ablate_prompt(model, TEXT, variants, max_new_tokens=3).to_dict()
    assert got == json.loads(json.dumps(want))


def test_ablate_needs_variants():
    r = runner.invoke(app, ["ablate", TEXT, "--model", "tiny:llama"])
    assert r.exit_code == 2 and "--variant" in r.output and "Traceback" not in r.output
