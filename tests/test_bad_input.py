"""Bad input through the Python API and the CLI: always one clear LmpeekError, never a raw exception.

One table of cases (bad model sources, bad texts and token ids, bad numbers) runs through
`lmpeek.load|trace|generate|check`, and the cases a command line can express run through
`lmpeek trace|generate|check`, which must exit 2 with exactly one line on stderr.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lmpeek
from lmpeek.cli import app
from lmpeek.errors import LmpeekError
from lmpeek.models.sources import default_gguf_path

# --- bad model sources, built once ----------------------------------------------------------------


def _tiny_folder(root: pathlib.Path, name: str) -> pathlib.Path:
    from lmpeek.models.tiny import tiny_hf_model

    folder = root / name
    model, tokenizer = tiny_hf_model("llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _edit_config(folder: pathlib.Path, **changes: Any) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _gguf_prefix(path: pathlib.Path, n_bytes: int) -> None:
    with default_gguf_path().open("rb") as src:
        path.write_bytes(src.read(n_bytes))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """name -> a model source that cannot be loaded."""
    root = tmp_path_factory.mktemp("bad-sources")
    good = _tiny_folder(root, "good")
    out: dict[str, str] = {}

    def variant(name: str) -> pathlib.Path:
        folder = root / f"m{len(out)}"  # neutral names: a message must not pass by quoting its path
        shutil.copytree(good, folder)
        out[name] = str(folder)
        return folder

    weights = good / "model.safetensors"
    size = weights.stat().st_size
    rng = np.random.default_rng(0)
    variant("corrupt_safetensors").joinpath("model.safetensors").write_bytes(rng.bytes(size))
    variant("truncated_safetensors").joinpath("model.safetensors").write_bytes(
        weights.read_bytes()[: size // 2]
    )
    variant("empty_safetensors").joinpath("model.safetensors").write_bytes(b"")
    # a valid header whose tensor data is cut short
    variant("safetensors_cut_in_data").joinpath("model.safetensors").write_bytes(weights.read_bytes()[:-100])
    (variant("no_weights") / "model.safetensors").unlink()
    variant("config_not_json").joinpath("config.json").write_text("{not json")
    variant("config_empty").joinpath("config.json").write_text("")
    variant("config_a_list").joinpath("config.json").write_text("[1, 2]")
    variant("config_no_model_type").joinpath("config.json").write_text("{}")
    _edit_config(variant("config_unknown_type"), model_type="nonesuch")
    _edit_config(variant("config_bad_value"), hidden_size="big")
    _edit_config(variant("config_negative_size"), num_attention_heads=-4)
    _edit_config(variant("config_null_vocab"), vocab_size=None)
    _edit_config(variant("config_wrong_shapes"), hidden_size=128, intermediate_size=96)
    _edit_config(variant("config_heads_do_not_divide"), num_attention_heads=5)
    (variant("config_binary") / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    for f in variant("no_tokenizer").glob("tokenizer*"):
        f.unlink()
    variant("tokenizer_garbage").joinpath("tokenizer.json").write_text("{not json")
    out["empty_folder"] = str(root / "e")
    (root / "e").mkdir()

    ggufs = root / "ggufs"
    ggufs.mkdir()
    (ggufs / "empty.gguf").write_bytes(b"")
    (ggufs / "garbage.gguf").write_bytes(rng.bytes(4096))
    (ggufs / "magic_only.gguf").write_bytes(b"GGUF")
    _gguf_prefix(ggufs / "cut_in_header.gguf", 64 * 1024)  # inside the tokenizer's metadata
    _gguf_prefix(ggufs / "cut_in_data.gguf", 20 * 1024**2)  # metadata whole, tensors cut short
    for i, f in enumerate(sorted(ggufs.iterdir())):
        out[f"gguf_{f.stem}"] = str(f.rename(ggufs / f"g{i}.gguf"))
    two = root / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"GGUF")
    (two / "b.gguf").write_bytes(b"GGUF")
    out["two_ggufs"] = str(two)
    (root / "n.txt").write_text("not a model")
    out["text_file"] = str(root / "n.txt")
    return out


@pytest.fixture(scope="module")
def model():
    return lmpeek.load("tiny:llama")


# --- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Any, dict[str, str]], Any]  # (model, sources) -> raises
    says: str  # the message must contain this (case-insensitive)
    cli: list[str] | None = None  # the same case on the command line; "{src:NAME}" names a source


def _load(src: str, **kw: Any) -> Callable[[Any, dict[str, str]], Any]:
    return lambda m, s: lmpeek.load(s[src], progress=False, **kw)


def _load_value(value: Any, **kw: Any) -> Callable[[Any, dict[str, str]], Any]:
    return lambda m, s: lmpeek.load(value, progress=False, **kw)


def _trace(text: Any, **kw: Any) -> Callable[[Any, dict[str, str]], Any]:
    return lambda m, s: lmpeek.trace(m, text, **kw)


def _generate(prompt: Any = "Hello", **kw: Any) -> Callable[[Any, dict[str, str]], Any]:
    return lambda m, s: list(lmpeek.generate(m, prompt, **kw))


def _check(text: Any = "Hello world", **kw: Any) -> Callable[[Any, dict[str, str]], Any]:
    return lambda m, s: lmpeek.check(m, text, **kw)


def _loads(name: str, says: str) -> Case:
    return Case(f"load-{name}", _load(name), says, cli=["trace", "hi", "-m", f"{{src:{name}}}"])


VOCAB = 300  # more than the tiny tokenizer's vocabulary

CASES = [
    # where the model comes from
    Case("load-None", _load_value(None), "source"),
    Case("load-int", _load_value(123), "source"),
    Case("load-empty", _load_value(""), "empty", cli=["trace", "hi", "-m", ""]),
    Case("load-spaces", _load_value("   "), "empty", cli=["check", "   "]),
    Case("load-missing", _load_value("/no/such/model"), "no such", cli=["generate", "hi", "-m", "/no/such"]),
    Case("load-nul-in-path", _load_value("/tmp/a\x00b"), "source"),
    Case("load-surrogate-path", _load_value("/tmp/\udcff"), "no such", cli=["check", "/tmp/\udcff"]),
    Case("load-tiny-unknown", _load_value("tiny:nonesuch"), "no tiny model", cli=["check", "tiny:nonesuch"]),
    Case("load-tiny-empty", _load_value("tiny:"), "tiny", cli=["check", "tiny:"]),
    Case("load-hub-not-cached", _load_value("nobody-here/no-such-model"), "not in the local"),
    Case("load-bad-device", _load_value("tiny:llama", device="nonesuch"), "device"),
    Case("load-bad-dtype", _load_value("tiny:llama", dtype="int8"), "dtype"),
    Case("load-dtype-not-a-name", _load_value("tiny:llama", dtype=3), "dtype"),
    _loads("corrupt_safetensors", "weights"),
    _loads("truncated_safetensors", "weights"),
    _loads("empty_safetensors", "weights"),
    _loads("safetensors_cut_in_data", "weights"),
    _loads("no_weights", "weights"),
    _loads("config_not_json", "config"),
    _loads("config_empty", "config"),
    _loads("config_a_list", "config"),
    _loads("config_no_model_type", "model_type"),
    _loads("config_unknown_type", "nonesuch"),
    _loads("config_bad_value", "config"),
    _loads("config_negative_size", "config"),
    _loads("config_null_vocab", "config"),
    _loads("config_wrong_shapes", "weights"),
    _loads("config_heads_do_not_divide", "config"),
    _loads("config_binary", "config"),
    _loads("no_tokenizer", "tokenizer"),
    _loads("tokenizer_garbage", "tokenizer"),
    _loads("empty_folder", "no config.json"),
    _loads("gguf_empty", "gguf"),
    _loads("gguf_garbage", "gguf"),
    _loads("gguf_magic_only", "gguf"),
    _loads("gguf_cut_in_header", "gguf"),
    _loads("gguf_cut_in_data", "gguf"),
    _loads("two_ggufs", "several"),
    _loads("text_file", "not a model"),
    # what the model reads
    Case("text-empty", _trace(""), "empty", cli=["trace", "", "-m", "tiny:llama"]),
    Case("text-spaces", _trace(" \n\t"), "empty", cli=["trace", " \n", "-m", "tiny:llama"]),
    Case("text-None", _trace(None), "text"),
    Case("text-int", _trace(42), "text"),
    Case("text-bytes", _trace(b"hello"), "text"),
    Case("text-dict", _trace({"a": 1}), "text"),
    Case("text-lone-surrogate", _trace("\ud800"), "surrogate", cli=["trace", "\ud800", "-m", "tiny:llama"]),
    Case(
        "text-undecodable-arg",
        _trace("caf\udce9"),
        "surrogate",
        cli=["trace", "caf\udce9", "-m", "tiny:llama"],
    ),
    Case(
        "text-too-long",
        _trace("hello " * 4200),
        "at most",
        cli=["trace", "hello " * 4200, "-m", "tiny:llama"],
    ),
    Case("ids-empty", _trace([]), "token ids"),
    Case("ids-2d", _trace([[1, 2, 3]]), "token ids"),
    Case("ids-2d-tensor", _trace(torch.tensor([[1, 2, 3]])), "token ids"),
    Case("ids-float", _trace([1.0, 2.0, 3.0]), "integer"),
    Case("ids-float-array", _trace(np.array([1.5, 2.5])), "integer"),
    Case("ids-bool", _trace([True, False]), "integer"),
    Case("ids-str", _trace(["a", "b"]), "token ids"),
    Case("ids-mixed", _trace([1, "a"]), "token ids"),
    Case("ids-negative", _trace([1, -1, 2]), "token ids"),
    Case("ids-too-big", _trace([1, VOCAB * 1000]), "token ids"),
    Case("ids-huge", _trace([2**70]), "token ids"),
    Case("ids-too-many", _trace([1] * 5000), "at most"),
    Case("model-not-loaded", lambda m, s: lmpeek.trace("tiny:llama", "hi"), "lmpeek.load"),
    # numbers
    Case("top_k-True", _trace("hi", top_k=True), "top_k"),
    Case("top_k-0", _trace("hi", top_k=0), "top_k", cli=["trace", "hi", "-m", "tiny:llama", "-k", "0"]),
    Case("top_k--1", _trace("hi", top_k=-1), "top_k", cli=["trace", "hi", "-m", "tiny:llama", "-k", "-1"]),
    Case("top_k-1.5", _trace("hi", top_k=1.5), "top_k", cli=["trace", "hi", "-m", "tiny:llama", "-k", "1.5"]),
    Case("top_k-str", _trace("hi", top_k="3"), "top_k"),
    Case("keep-no-match", _trace("hi", keep=["blocks.99.*"]), "matches no hook point"),
    Case("keep-not-str", _trace("hi", keep=[3]), "keep"),
    Case("gen-prompt-empty", _generate(""), "empty", cli=["generate", "", "-m", "tiny:llama"]),
    Case("gen-prompt-None", _generate(None), "prompt"),
    Case(
        "gen-prompt-surrogate",
        _generate("a\ud800"),
        "surrogate",
        cli=["generate", "a\ud800", "-m", "tiny:llama"],
    ),
    Case("gen-top_k-True", _generate(top_k=True), "top_k"),
    Case(
        "gen-top_k--1",
        _generate(top_k=-1),
        "top_k",
        cli=["generate", "hi", "-m", "tiny:llama", "--top-k", "-1"],
    ),
    Case("gen-top_k-1.5", _generate(top_k=1.5), "top_k"),
    Case("gen-max_new_tokens-True", _generate(max_new_tokens=True), "max_new_tokens"),
    Case(
        "gen-max_new_tokens-0",
        _generate(max_new_tokens=0),
        "max_new_tokens",
        cli=["generate", "hi", "-m", "tiny:llama", "-n", "0"],
    ),  # fmt: skip
    Case("gen-max_new_tokens-2.5", _generate(max_new_tokens=2.5), "max_new_tokens"),
    Case(
        "gen-too-long",
        _generate(max_new_tokens=5000),
        "context length",
        cli=["generate", "hi", "-m", "tiny:llama", "-n", "5000"],
    ),  # fmt: skip
    Case(
        "gen-temperature-negative",
        _generate(temperature=-1.0),
        "temperature",
        cli=["generate", "hi", "-m", "tiny:llama", "--temperature", "-1"],
    ),  # fmt: skip
    Case(
        "gen-temperature-nan",
        _generate(temperature=float("nan")),
        "temperature",
        cli=["generate", "hi", "-m", "tiny:llama", "--temperature", "nan"],
    ),  # fmt: skip
    Case(
        "gen-temperature-inf",
        _generate(temperature=float("inf")),
        "temperature",
        cli=["generate", "hi", "-m", "tiny:llama", "--temperature", "inf"],
    ),  # fmt: skip
    Case("gen-temperature-str", _generate(temperature="hot"), "temperature"),
    Case("gen-temperature-True", _generate(temperature=True), "temperature"),
    Case(
        "gen-top_p-0",
        _generate(temperature=1.0, top_p=0.0),
        "top_p",
        cli=["generate", "hi", "-m", "tiny:llama", "--temperature", "1", "--top-p", "0"],
    ),  # fmt: skip
    Case(
        "gen-top_p-3",
        _generate(top_p=3.0),
        "top_p",
        cli=["generate", "hi", "-m", "tiny:llama", "--top-p", "3"],
    ),
    Case("gen-top_p-nan", _generate(top_p=float("nan")), "top_p"),
    Case("gen-show_k-0", _generate(show_k=0), "show_k"),
    Case("gen-show_k-True", _generate(show_k=True), "show_k"),
    Case("gen-show_k-huge", _generate(show_k=10**9), "show_k"),
    Case(
        "gen-seed-2**64",
        _generate(seed=2**64, temperature=1.0),
        "seed",
        cli=["generate", "hi", "-m", "tiny:llama", "--temperature", "1", "--seed", str(2**64)],
    ),  # fmt: skip
    Case(
        "gen-seed-below",
        _generate(seed=-(2**63) - 1, temperature=1.0),
        "seed",
        cli=["generate", "hi", "-m", "tiny:llama", "--temperature", "1", "--seed", str(-(2**63) - 1)],
    ),  # fmt: skip
    Case("gen-seed-float", _generate(seed=1.5), "seed"),
    Case("gen-seed-True", _generate(seed=True), "seed"),
    Case("gen-seed-str", _generate(seed="1"), "seed"),
    Case("check-text-empty", _check(""), "empty", cli=["check", "tiny:llama", "--text", ""]),
    Case(
        "check-text-surrogate",
        _check("\ud800x"),
        "surrogate",
        cli=["check", "tiny:llama", "--text", "\ud800x"],
    ),
    Case("check-text-int", _check(7), "text"),
    Case("check-rtol-negative", _check(rtol=-1.0), "rtol", cli=["check", "tiny:llama", "--rtol", "-1"]),
    Case("check-rtol-nan", _check(rtol=float("nan")), "rtol", cli=["check", "tiny:llama", "--rtol", "nan"]),
    Case("check-rtol-str", _check(rtol="small"), "rtol"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_python_api_raises_one_clear_error(case: Case, model, sources):
    with pytest.raises(LmpeekError) as caught:
        case.call(model, sources)
    message = str(caught.value)
    assert case.says.lower() in message.lower(), message
    assert message.strip() and "Traceback" not in message


CLI_CASES = [c for c in CASES if c.cli is not None]


def _cli_args(args: list[str], sources: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        if a.startswith("{src:"):
            a = sources[a[len("{src:") : -1]]
        out.append(a)
    return out


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_exits_2_with_one_line(case: Case, sources):
    r = CliRunner().invoke(app, _cli_args(case.cli, sources))
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") and "Traceback" not in r.output, r.stderr


def test_the_table_is_large():
    assert len(CASES) >= 60 and len(CLI_CASES) >= 30


def test_cli_one_line_even_for_unexpected_errors(monkeypatch):
    # a bug (not bad input) is still one line, with the way to get the traceback, and exit code 1
    import lmpeek.api

    def broken(*a, **k):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(lmpeek.api, "trace", broken)
    monkeypatch.delenv("LMPEEK_DEBUG", raising=False)
    r = CliRunner().invoke(app, ["trace", "hi", "-m", "tiny:llama"])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "RuntimeError" in lines[0] and "LMPEEK_DEBUG=1" in lines[0], r.stderr
