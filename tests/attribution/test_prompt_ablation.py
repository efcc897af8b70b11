"""Prompt ablation: every number against plain transformers forwards / generate calls one variant at a
time, lmpeek.capture.activations one text at a time, a numpy KL, and difflib.ndiff."""

from __future__ import annotations

import difflib
import json
import warnings

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.attribution.prompt_ablation import (
    ablate_prompt,
    ablate_prompt_cli,
    drop_span,
    kl_divergence,
    sentence_spans,
    word_diff,
    word_spans,
)
from lmpeek.capture import activations
from lmpeek.errors import InvalidInput
from lmpeek.models.tiny import tiny_hf_model

torch.set_num_threads(1)

PROMPT = "The capital of France is Paris. The capital of Germany is"


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def pair(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load(f"tiny:{request.param}")
    plain, _ = tiny_hf_model(request.param)
    return model, plain


def _plain_logp(plain, ids) -> np.ndarray:
    with torch.no_grad():
        logits = plain(input_ids=torch.tensor([list(ids)])).logits[0, -1].double()
    return torch.log_softmax(logits, -1).numpy()


def _plain_generate(plain, ids, n: int, eos: int) -> list[int]:
    with torch.no_grad():
        out = plain.generate(input_ids=torch.tensor([list(ids)]), max_new_tokens=n, do_sample=False,
                             pad_token_id=eos)[0, len(ids) :].tolist()  # fmt: skip
    return out[: out.index(eos)] if eos in out else out


def test_each_variant_against_plain_model(pair):
    model, plain = pair
    variants = {"short": "The capital of Germany is", "other": "Paris is the capital of", "x": "x"}
    r = ablate_prompt(model, PROMPT, variants, target=" Berlin", top_k=5, max_new_tokens=6, batch_size=2)
    tid = model.tokenizer(" Berlin", add_special_tokens=False)["input_ids"][0]
    assert r.target_id == tid
    orig_ids = model.tokenizer(PROMPT)["input_ids"]
    lp0 = _plain_logp(plain, orig_ids)
    eos = model.tokenizer.eos_token_id
    gen0 = model.tokenizer.decode(_plain_generate(plain, orig_ids, 6, eos))
    hooks = r.resid_hooks
    assert hooks == [f"blocks.{i}.hook_resid_pre" for i in range(model.n_layers)] + [
        f"blocks.{model.n_layers - 1}.hook_resid_post"
    ]
    h0 = np.stack([a[-1] for a in (activations(model, [orig_ids], hooks)[0][h] for h in hooks)])
    assert [v.label for v in r.variants] == list(variants)
    for v, text in zip([r.original, *r.variants], [PROMPT, *variants.values()], strict=True):
        ids = model.tokenizer(text)["input_ids"]
        assert v.token_ids.tolist() == ids
        lp = _plain_logp(plain, ids)
        assert v.target_logprob == pytest.approx(lp[tid], abs=1e-5)
        assert v.target_prob == pytest.approx(np.exp(lp[tid]), abs=1e-6)
        assert v.delta_logprob == pytest.approx(lp[tid] - lp0[tid], abs=1e-5)
        assert v.topk_ids.tolist() == np.argsort(-lp)[:5].tolist()
        np.testing.assert_allclose(v.topk_probs, np.exp(np.sort(lp)[::-1][:5]), atol=1e-6)
        # KL(original ‖ variant) by the plain formula, in float64
        p, q = np.exp(lp0), np.exp(lp)
        assert v.kl == pytest.approx(float(np.sum(p * np.log(p / q))), abs=1e-5)
        gen = _plain_generate(plain, ids, 6, eos)
        assert v.generated_ids.tolist() == gen
        assert v.generation == model.tokenizer.decode(gen)
        assert v.diff == word_diff(gen0, v.generation)
        # residual stream at the last position, one text at a time through lmpeek's batched capture
        h = np.stack([activations(model, [ids], [name])[0][name][-1] for name in hooks]).astype(np.float64)
        np.testing.assert_allclose(v.resid_norms, np.linalg.norm(h, axis=-1), rtol=1e-5)
        tol = 1e-4 * np.linalg.norm(h0, axis=-1).max()
        want = np.linalg.norm(h, axis=-1) - np.linalg.norm(h0, axis=-1)
        np.testing.assert_allclose(v.resid_norm_diff, want, atol=tol)
        np.testing.assert_allclose(v.resid_delta_norm, np.linalg.norm(h - h0, axis=-1), atol=tol)
    assert r.original.kl == pytest.approx(0.0, abs=1e-12) and r.original.delta_logprob == 0.0
    assert r.forwards == 2 and r.generate_calls == 2  # 4 texts, 2 per batch


def test_auto_drop_sentences_and_words(pair):
    model, _ = pair
    r = ablate_prompt(model, PROMPT, auto="sentences", max_new_tokens=0)
    assert [v.text for v in r.variants] == ["The capital of Germany is", "The capital of France is Paris."]
    assert r.forwards == 1 and r.generate_calls == 0
    r = ablate_prompt(model, "The capital of France", auto="words", max_new_tokens=0)
    assert [v.text for v in r.variants] == [
        "capital of France", "The of France", "The capital France", "The capital of",
    ]  # fmt: skip
    # default target: the original's own top-1
    assert r.target_id == int(r.original.topk_ids[0])
    for v in r.variants:
        assert v.token_ids.tolist() == model.tokenizer(v.text)["input_ids"]


def test_auto_replace_pad_and_plausible(pair):
    model, plain = pair
    text = "The capital of France"
    ids = model.tokenizer(text)["input_ids"]
    enc = model.tokenizer(text, return_offsets_mapping=True)
    words = word_spans(text)
    pad = model.tokenizer.eos_token_id  # no pad token in the tiny tokenizer
    r = ablate_prompt(model, text, auto="replace", replace_with="pad", max_new_tokens=0)
    assert len(r.variants) == len(words)
    for v, (s, e) in zip(r.variants, words, strict=True):
        inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < e and b > s]
        assert v.token_ids.tolist() == [pad if i in inside else t for i, t in enumerate(ids)]
    r = ablate_prompt(
        model, text, auto="replace", replace_with="plausible", top_k=3, max_new_tokens=0, seed=5
    )
    with torch.no_grad():
        logits = plain(input_ids=torch.tensor([ids])).logits[0]
    for v, (s, e) in zip(r.variants, words, strict=True):
        inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < e and b > s]
        first = inside[0]
        new = v.token_ids.tolist()
        assert new[:first] == ids[:first] and new[first + 1 :] == ids[inside[-1] + 1 :]
        if first == 0:  # nothing predicts the first token
            assert new[0] == pad
        else:
            top = torch.topk(logits[first - 1], 4).indices.tolist()
            assert new[first] in [t for t in top if t != ids[first]][:3]
    again = ablate_prompt(
        model, text, auto="replace", replace_with="plausible", top_k=3, max_new_tokens=0, seed=5
    )
    assert [v.token_ids.tolist() for v in again.variants] == [v.token_ids.tolist() for v in r.variants]


def test_spans_and_drop():
    assert [PROMPT[s:e] for s, e in sentence_spans(PROMPT)] == [
        "The capital of France is Paris.", "The capital of Germany is",
    ]  # fmt: skip
    text = "Hi there!! How are you?\nFine thanks"
    assert [text[s:e] for s, e in sentence_spans(text)] == ["Hi there!!", "How are you?", "Fine thanks"]
    assert drop_span(text, (0, 10)) == "How are you?\nFine thanks"
    assert drop_span(text, (24, 35)) == "Hi there!! How are you?"
    words = "a  b\nc"
    assert [words[s:e] for s, e in word_spans(words)] == ["a", "b", "c"]


def test_word_diff_against_ndiff():
    a = "the cat sat on the mat and then it slept all day long"
    b = "the dog sat on a mat and then slept all night long"
    d = word_diff(a, b)
    wa, wb = a.split(), b.split()
    # both texts are rebuilt from the diff
    assert " ".join(w for op, w in d if op in "=-").split() == wa
    assert " ".join(w for op, w in d if op in "=+").split() == wb
    # the same kept / removed / added words, in order, as difflib.ndiff on the word lists
    nd = list(difflib.ndiff(wa, wb))
    for op, mark in (("=", "  "), ("-", "- "), ("+", "+ ")):
        assert " ".join(w for o, w in d if o == op).split() == [x[2:] for x in nd if x.startswith(mark)]
    assert word_diff("same words", "same words") == [("=", "same words")]


def test_kl_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    lp, lq = x - np.log(np.exp(x).sum()), y - np.log(np.exp(y).sum())
    p, q = np.exp(lp), np.exp(lq)
    assert kl_divergence(lp, lq) == pytest.approx(float(np.sum(p * np.log(p / q))))
    assert kl_divergence(lp, lp) == 0.0
    # a zero-probability token in p contributes nothing
    with np.errstate(divide="ignore"):
        lp0 = np.log(np.array([0.5, 0.5, 0.0]))
    assert kl_divergence(lp0, np.log(np.array([0.25, 0.25, 0.5]))) == pytest.approx(np.log(2))


def test_cli_table_and_json(pair, capsys):
    model, _ = pair
    lines: list[str] = []
    r = ablate_prompt_cli(model, PROMPT, auto="sentences", max_new_tokens=3, echo=lines.append)
    table = lines[0].splitlines()
    assert table[0].startswith(f"target {r.target_token!r}")
    assert table[2].startswith("original") and len(table) == 2 + 1 + len(r.variants)
    assert f"{r.variants[0].kl:.3f}" in table[3]
    ablate_prompt_cli(model, PROMPT, ["The capital"], max_new_tokens=3, json=True)
    data = json.loads(capsys.readouterr().out)
    assert (
        data["variants"][0]["text"] == "The capital"
        and len(data["original"]["resid_norms"]) == model.n_layers + 1
    )


def test_bad_input(pair):
    model, _ = pair
    with pytest.raises(InvalidInput, match="variants"):
        ablate_prompt(model, PROMPT)
    with pytest.raises(InvalidInput, match="auto"):
        ablate_prompt(model, PROMPT, auto="letters")
    with pytest.raises(InvalidInput, match="replace_with"):
        ablate_prompt(model, PROMPT, auto="replace", replace_with="mask")
    with pytest.raises(InvalidInput):
        ablate_prompt(model, PROMPT, [""])
    with pytest.raises(InvalidInput, match="no variants"):
        ablate_prompt(model, "Hello", auto="sentences")
