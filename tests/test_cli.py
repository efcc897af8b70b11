"""CLI on a tiny model: readable output, JSON, saving, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lmpeek.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_trace_table():
    r = run("trace", "The capital of France is Paris.", "-m", "tiny:llama")
    assert r.exit_code == 0, r.output
    for col in ("token", "p(token)", "loss", "entropy", "top-3 predictions"):
        assert col in r.output
    assert "' capital'" in r.output and "mean loss" in r.output and "first token: no prediction" in r.output


def test_trace_table_reads_the_prediction_that_produced_each_token():
    # the app's convention: row t shows p(token t) from position t - 1 (tests/e2e/test_conventions_errors.py)
    import warnings

    import lmpeek

    text = "The capital of France is Paris."
    r = runner.invoke(app, ["trace", text, "-m", "tiny:llama"], catch_exceptions=False, terminal_width=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t = lmpeek.trace(lmpeek.load("tiny:llama"), text)
    rows = [line for line in r.output.splitlines() if line.strip().startswith("│ 2 ")]
    assert rows, r.output
    cells = [c.strip() for c in rows[0].split("│")[1:-1]]
    assert (
        cells[1] == repr(t.tokens[2])
        and cells[2] == f"{t.true_prob[1]:.3f}"
        and cells[3] == f"{t.loss[1]:.3f}"
    )


def test_trace_json_and_save(tmp_path):
    import lmpeek

    r = run(
        "trace",
        "Hello world",
        "-m",
        "tiny:gpt2",
        "--json",
        "--top-k",
        "3",
        "--save",
        str(tmp_path / "t"),
        "--keep",
        "blocks.0.*",
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(data["topk_ids"][0]) == 3 and data["loss"][-1] is None
    assert set(data) >= {
        "tokens",
        "token_ids",
        "offsets",
        "topk_probs",
        "entropy",
        "loss",
        "true_prob",
        "norms",
        "attn_entropy",
    }
    saved = lmpeek.Trace.load(tmp_path / "t")
    assert saved.tokens == data["tokens"] and "blocks.0.attn.hook_pattern" in saved.kept


def test_generate_prints_the_text_then_a_table():
    r = run("generate", "Hello", "-m", "tiny:llama", "-n", "4", "--seed", "2")
    assert r.exit_code == 0 and r.output.startswith("Hello"), r.output
    first_line = r.output.splitlines()[0]
    assert "[0." not in first_line and "[1." not in first_line  # no numbers between the tokens
    for col in ("token", "p sampled", "entropy", "top-3 predictions"):
        assert col in r.output
    table_rows = [line for line in r.output.splitlines() if line.startswith("│")]
    assert len(table_rows) == 4
    assert "4 tokens" in r.output and "seed 2 (repeat with --seed 2)" in r.output
    r = run(
        "generate", "Hello", "-m", "tiny:llama", "-n", "3", "--json", "--temperature", "0.7", "--seed", "1"
    )
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2] and all(0 < row["prob"] <= 1 for row in rows)
    assert all(0 < row["sampled_prob"] <= 1 and row["seed"] == 1 for row in rows)


def test_generated_text_shows_invisible_characters_as_escapes():
    from rich.console import Console

    from lmpeek.cli import _visible

    console = Console(width=200, color_system=None)
    with console.capture() as cap:
        console.print(_visible("a\u202eb\u200bc\nd\x14é"), end="")
    assert cap.get() == "a\\u202eb\\u200bc\nd\\x14é"  # RTL override, zero-width space, control


def test_small_probabilities_are_not_shown_as_zero():
    from lmpeek.cli import _fmt_prob

    assert _fmt_prob(0.0004) == "4.0e-04" and _fmt_prob(0.93) == "0.93" and _fmt_prob(1.0) == "1.00"


def test_a_random_run_prints_its_seed_and_repeats_with_it():
    r = run("generate", "Hello", "-m", "tiny:llama", "-n", "6", "--json", "--temperature", "1.5")
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    seed = rows[0]["seed"]
    again = _json_tokens(run("generate", "Hello", "-m", "tiny:llama", "-n", "6", "--json",
                             "--temperature", "1.5", "--seed", str(seed)))  # fmt: skip
    assert again == [row["token_id"] for row in rows]


def test_generate_defaults_are_the_pages():
    import re
    from pathlib import Path

    import typer

    view = (Path(__file__).parents[1] / "web/src/views/GenerateView.svelte").read_text()

    def page(name):
        return float(re.search(rf"let {name} = \$state\(([0-9.]+)\)", view).group(1))

    params = {p.name: p.default for p in typer.main.get_command(app).commands["generate"].params}
    assert params["max_new_tokens"] == page("maxNew") and params["temperature"] == page("temperature")
    assert params["top_p"] == page("topP") and params["top_k"] == page("topK")


def test_check_passes_on_a_tiny_model():
    r = run("check", "tiny:gpt_neox")
    assert r.exit_code == 0, r.output
    assert "all" in r.output and "checks passed" in r.output and "hidden_states[l+1]" in r.output


def test_models_lists_architectures_and_cache():
    r = run("models")
    assert r.exit_code == 0
    assert "gpt_neox" in r.output and "gemma3_text" in r.output and "cache:" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["trace", "", "-m", "tiny:llama"], "empty"),
        (["trace", "hello " * 4200, "-m", "tiny:llama"], "at most 4096"),
        (["trace", "hi", "-m", "/no/such/model"], "No such file"),
        (["trace", "hi", "-m", "tiny:nonesuch"], "no tiny model"),
        (["generate", "hi", "-m", "tiny:llama", "--top-p", "3"], "top_p"),
        (
            ["trace", "hi", "-m", "tiny:llama", "--keep", "blocks.99.*", "--save", "never-written"],
            "matches no hook point",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and "Traceback" not in r.output + r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # one message (rich may wrap a long path)


def _json_tokens(result) -> list[int]:
    assert result.exit_code == 0, result.output
    return [json.loads(line)["token_id"] for line in result.stdout.strip().splitlines()]


def test_generate_with_a_vanishing_temperature_is_greedy():
    greedy = _json_tokens(
        run("generate", "Hello", "-m", "tiny:llama", "-n", "5", "--json", "--temperature", "0")
    )
    tiny_t = ["--temperature", "1e-300", "--seed", "3", "--json"]
    assert _json_tokens(run("generate", "Hello", "-m", "tiny:llama", "-n", "5", *tiny_t)) == greedy


def test_generate_prints_nothing_on_stderr():
    # a real process and terminal streams: no transformers warning (FutureWarning, log lines) shows
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "lmpeek.cli", "generate", "Hello", "-m", "tiny:llama", "-n", "4"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("Hello"), r.stderr
    assert r.stderr == ""


def test_library_warnings_are_kept_out_of_the_terminal(monkeypatch):
    import warnings

    from transformers import logging as hf_logging

    import lmpeek.api

    real = lmpeek.api.generate
    seen = {}

    def noisy(*args, **kwargs):
        warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
        seen["verbosity"] = hf_logging.get_verbosity()
        return real(*args, **kwargs)

    monkeypatch.setattr(lmpeek.api, "generate", noisy)
    before = hf_logging.get_verbosity()
    r = runner.invoke(app, ["generate", "Hello", "-m", "tiny:llama", "-n", "2"])
    assert r.exit_code == 0, r.output
    assert r.stderr == "" and seen["verbosity"] == hf_logging.ERROR
    assert hf_logging.get_verbosity() == before  # restored afterwards


def test_usage_errors_are_one_line():
    r = runner.invoke(app, ["trace", "hi", "--no-such-option"])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--no-such-option" in r.stderr and "trace --help" in r.stderr


def test_trace_keep_without_save_is_an_error():
    r = runner.invoke(app, ["trace", "hi", "-m", "tiny:llama", "--keep", "blocks.0.*"])
    assert r.exit_code == 2 and "--keep needs --save" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _serve_without_uvicorn(monkeypatch, *args):
    import uvicorn

    import lmpeek.server.app

    started = []
    monkeypatch.setattr(lmpeek.server.app, "create_app", lambda model, **kw: started.append("app") or "APP")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: started.append("uvicorn"))
    return runner.invoke(app, ["serve", *args]), started


@pytest.mark.parametrize(
    "source, message",
    [
        ("/no/such/model", "No such file"),
        ("tiny:nonesuch", "no tiny model"),
        ("no-such-org/no-such-model", "cache"),
    ],
)
def test_serve_a_bad_source_is_one_line_and_exit_2(monkeypatch, source, message):
    r, started = _serve_without_uvicorn(monkeypatch, source, "--port", "0")
    assert r.exit_code == 2 and message in r.stderr and started == []
    assert "serving" not in r.output and len(r.stderr.strip().splitlines()) <= 2  # rich may wrap a long path


def test_serve_on_a_busy_port_says_so_before_serving(monkeypatch):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r, started = _serve_without_uvicorn(monkeypatch, "tiny:llama", "--port", str(port))
    assert r.exit_code == 2 and f"port {port} on 127.0.0.1 is already in use" in r.stderr
    assert "serving" not in r.output and started == [] and len(r.stderr.strip().splitlines()) == 1
    r, started = _serve_without_uvicorn(monkeypatch, "tiny:llama", "--port", str(port))  # free again
    assert r.exit_code == 0 and "serving tiny:llama" in r.output and started == ["app", "uvicorn"]
