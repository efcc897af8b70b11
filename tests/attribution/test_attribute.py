"""lmpeek.attribute against Captum called directly on the plain transformers model, plus completeness,
hand-computed cases and bad input."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.attribution.attribute import attribute, attribute_cli
from lmpeek.attribution.methods import (
    METHODS,
    Problem,
    exact_shapley,
    occlusion_token_share,
    surrogate,
    weighted_least_squares,
)
from lmpeek.attribution.targets import Target
from lmpeek.errors import InvalidInput
from lmpeek.models import hf_compat
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model

TEXT = "The capital of France is"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models():
    return {arch: lmpeek.load(f"tiny:{arch}") for arch in ("llama", "gpt2", "gpt_neox")}


def _plain(model):
    """Independent pieces: ids, the model's top next token, log p(token | prefix) from raw logits."""
    hf = model.hf
    ids = torch.tensor([model.tokenizer.encode(TEXT)])
    top = int(hf(ids).logits[0, -1].argmax())

    def logp(logits, tid=top):
        return torch.log_softmax(logits[:, -1].float(), -1)[:, tid]

    return hf, ids, top, logp


def _close(a, b, tol=1e-5):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max()), (a, b)


@pytest.mark.filterwarnings("ignore:'olmo' has no lmpeek adapter")
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_backward_after_load_equals_fresh_model(arch):
    """After lmpeek.load, loss.backward() works (plain, and through lmpeek's attention kernel) and
    gives the gradient of a fresh transformers model."""
    from lmpeek.capture.hooks import capturing

    loaded = lmpeek.load(f"tiny:{arch}")
    fresh, tok = tiny_hf_model(arch)
    ids = torch.tensor([tok.encode(TEXT)])

    def grads(model, inside=False):
        model.zero_grad()
        if inside:
            with capturing(model):
                loss = model(ids, labels=ids).loss
        else:
            loss = model(ids, labels=ids).loss
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    want = grads(fresh)
    scale = want.abs().max().item()
    assert torch.equal(grads(loaded.hf), want)
    assert (grads(loaded.hf, inside=True) - want).abs().max().item() <= 1e-5 * scale
    loaded.hf.zero_grad()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_integrated_gradients_equals_captum(models, arch):
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    model = models[arch]
    hf, ids, top, logp = _plain(model)
    x = hf.get_input_embeddings()(ids).detach()
    want, delta = IntegratedGradients(lambda e: logp(hf(inputs_embeds=e).logits)).attribute(
        x, baselines=torch.zeros_like(x), n_steps=16, method="gausslegendre", return_convergence_delta=True
    )
    got = attribute(model, TEXT, steps=16)
    _close(got.scores[0], want.sum(-1)[0].detach().numpy())
    _close(got.delta, delta.numpy())
    assert got.steps == 16 and got.baseline.startswith("zeros")
    # a token baseline: Captum's LayerIntegratedGradients on the embedding layer from eos ids
    eos = model.tokenizer.eos_token_id
    lig = LayerIntegratedGradients(lambda i: logp(hf(i).logits), hf.get_input_embeddings())
    want = lig.attribute(ids, baselines=torch.full_like(ids, eos), n_steps=16)
    got = attribute(model, TEXT, steps=16, baseline="eos")
    _close(got.scores[0], want.sum(-1)[0].detach().numpy())


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_x_input"])
def test_gradient_span_rows_share_one_forward_per_step(models, method):
    """A teacher-forced span's rows: each equals Captum run on that row alone (its own forwards), while
    lmpeek runs each step's forward once for all rows and backpropagates each row from it."""
    from captum.attr import InputXGradient, IntegratedGradients

    model = models["llama"]
    hf, tok = model.hf, model.tokenizer
    span = " Paris. The city"
    prompt, cont = tok.encode(TEXT), tok.encode(span)
    ids = torch.tensor([prompt + cont])
    x = hf.get_input_embeddings()(ids).detach()
    got = attribute(model, TEXT, method=method, span=span, steps=8, batch=4)
    assert got.scores.shape == (len(cont), len(prompt)) and len(cont) > 2
    steps = 8 if method == "integrated_gradients" else 1
    assert got.forwards == 1 + 2 + steps  # not + steps x rows
    fixed = torch.zeros_like(x, dtype=torch.bool)
    fixed[:, len(prompt) :] = True  # the span's own tokens are never attributed: held at x
    for t, tid in enumerate(cont):

        def f(e, t=t, tid=tid):
            e = torch.where(fixed, x, e)
            return torch.log_softmax(hf(inputs_embeds=e).logits[:, len(prompt) - 1 + t].float(), -1)[:, tid]

        if method == "integrated_gradients":
            base = torch.where(fixed, x, 0.0)
            want = IntegratedGradients(f).attribute(x, baselines=base, n_steps=8, internal_batch_size=4)
        else:
            want = InputXGradient(f).attribute(x.clone().requires_grad_())
        _close(got.scores[t], want.sum(-1)[0, : len(prompt)].detach().numpy())


def test_ig_delta_shrinks_with_steps(models):
    model = models["gpt2"]
    rel = [attribute(model, TEXT, steps=s).relative_delta[0] for s in (4, 16, 64)]
    assert rel[0] > rel[1] > rel[2]
    auto = attribute(model, TEXT)  # adaptive: 16 -> 32 -> ... until < 5 %
    assert auto.relative_delta[0] < 0.05 and auto.steps >= 16


def test_gradient_x_input_equals_captum(models):
    from captum.attr import InputXGradient

    model = models["llama"]
    hf, ids, top, logp = _plain(model)
    x = hf.get_input_embeddings()(ids).detach().requires_grad_()
    want = InputXGradient(lambda e: logp(hf(inputs_embeds=e).logits)).attribute(x)
    _close(attribute(model, TEXT, method="gradient_x_input").scores[0], want.sum(-1)[0].detach().numpy())


class _Linear(torch.nn.Module):
    """A toy 'language model' linear in its input embeddings: logits = sum_t E_t W."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(7, 3)
        self.emb.weight.data = torch.randn(7, 3, generator=g)
        self.w = torch.randn(3, 5, generator=g)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, use_cache=False, logits_to_keep=1):
        e = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        return type("Out", (), {"logits": (e.sum(1, keepdim=True) @ self.w)})()


def test_gradient_x_input_exact_on_linear_toy():
    toy = _Linear()
    ids = torch.tensor([[1, 4, 2, 6]])
    target = Target("logit", (3,), (2,), None, ("x",), "logit of 2")
    x = toy.emb(ids).detach()
    p = Problem(toy, ids, target, np.array([0, 0, 1, 2]), 3, baseline_embeds=torch.zeros_like(x))
    for method in ("gradient_x_input", "integrated_gradients"):
        r = METHODS[method].run(p)
        per_token = (x[0] @ toy.w[:, 2]).numpy()  # hand: logit_2 = sum_t e_t . w_2
        _close(r.scores[0], [per_token[0] + per_token[1], per_token[2], per_token[3]])
        _close(r.scores.sum(), r.f_input - r.f_baseline)  # completeness exact


def _ids_mask(model, features):
    a = attribute(model, TEXT, method="occlusion", features=features)
    return torch.tensor(a.segments.token_map(len(a.tokens)))[None], a


def test_occlusion_equals_captum(models):
    from captum.attr import FeatureAblation

    model = models["gpt2"]
    hf, ids, top, logp = _plain(model)
    eos = model.tokenizer.eos_token_id
    mask, got = _ids_mask(model, "words")
    want = FeatureAblation(lambda i: logp(hf(i).logits)).attribute(ids, baselines=eos, feature_mask=mask)
    firsts = [a for a, _ in got.segments.ranges]
    _close(got.scores[0], want[0, firsts].numpy())
    assert got.forwards == 1 + 1 + len(got.segments)  # top token (and so F(x)), F(x'), one per segment


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_perturbations_start_from_the_text_prefix(arch):
    """Perturbed rows run `batch` at a time from the text's KV cache up to their first change (latest
    changes first): each row's F equals its own full forward, in the caller's row order, and fewer tokens
    run than rows x length wherever the cache reproduces the full forward (not past gemma3's window)."""
    hf, tok = tiny_hf_model(arch)
    ids = torch.tensor([tok.encode(TEXT + " a city known for its food, its art and its long history")])
    S = ids.shape[1]
    top = int(hf(ids).logits[0, -1].argmax())
    rows = ids.repeat(S, 1)
    rows[torch.arange(S), torch.arange(S).flip(0)] = tok.eos_token_id  # row i: token S-1-i replaced
    rows = rows[torch.randperm(S, generator=torch.Generator().manual_seed(0))]
    problem = Problem(
        hf, ids, Target("log_prob", (S - 1,), (top,), None, ("x",), ""), np.arange(S), S, batch=4
    )
    got = problem.f_ids(rows)[:, 0]
    want = torch.stack([torch.log_softmax(hf(r[None]).logits[0, -1], -1)[top] for r in rows])
    _close(got.numpy(), want.detach().numpy())
    assert problem.forwards == S
    if hf_compat.prefix_cache_exact(hf.config, S):
        assert problem.tokens < 0.7 * S * S, (problem.tokens, S)
    else:
        assert problem.tokens == S * S


@pytest.mark.parametrize("features", ["tokens", "words"])
def test_occlusion_token_share_is_what_runs(models, features):
    """The job estimate's share of tokens (occlusion_token_share) is the tokens occlusion's perturbations
    really run, prefixes included: here the text's first segment in batches of 3."""
    model = models["llama"]
    hf, tok = model.hf, model.tokenizer
    text = TEXT + " a city known for its food, its art and its long history"
    a = attribute(model, text, method="occlusion", features=features)
    ids = torch.tensor([tok.encode(text)])
    S, n = ids.shape[1], len(a.segments)
    segment = np.asarray(a.segments.token_map(S))
    target = Target("log_prob", (S - 1,), (1,), None, ("x",), "")
    problem = Problem(hf, ids, target, segment, n, baseline_id=tok.eos_token_id, batch=3)
    METHODS["occlusion"].run(problem)
    ends = 2 * S  # every segment present and none: one call of 2 rows, no prefix in common
    share = occlusion_token_share(segment, n, 3, S - 1, True)
    assert problem.tokens - ends == round(share * n * S) and share < 0.9


def test_shapley_exact_and_sampled_equal_captum(models):
    from captum.attr import ShapleyValues, ShapleyValueSampling

    model = models["llama"]
    hf, ids, top, logp = _plain(model)
    eos = model.tokenizer.eos_token_id
    f = lambda i: logp(hf(i).logits)  # noqa: E731
    mask, _ = _ids_mask(model, "words")
    got = attribute(model, TEXT, method="shapley", features="words")
    want = ShapleyValues(f).attribute(ids, baselines=eos, feature_mask=mask)  # all n! permutations
    _close(got.scores[0], want[0, [a for a, _ in got.segments.ranges]].numpy())
    assert abs(got.delta[0]) < 1e-5  # efficiency: exact Shapley sums to F(x) - F(x')
    long_text = TEXT + " a city that is known for food and art"
    got = attribute(model, long_text, method="shapley", samples=3, seed=5)
    ids = torch.tensor([model.tokenizer.encode(long_text)])
    top = int(hf(ids).logits[0, -1].argmax())
    assert len(got.segments) > 10
    torch.manual_seed(5)
    want = ShapleyValueSampling(lambda i: logp(hf(i).logits, top)).attribute(ids, baselines=eos, n_samples=3)
    _close(got.scores[0], want[0].numpy())


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_kernel_shap_and_lime_equal_captum(models, method):
    """Captum's KernelShap / Lime on the presence vector of each token (as Captum's LLMAttribution runs
    them), with the same surrogate, samples and seed."""
    from captum.attr import KernelShap, Lime

    model = models["llama"]
    hf, ids, top, logp = _plain(model)
    eos = model.tokenizer.eos_token_id

    def f(presence):
        perturbed = torch.where(presence > 0.5, ids, torch.full_like(ids, eos)).long()
        return logp(hf(perturbed).logits)

    n = ids.shape[1]
    torch.manual_seed(3)
    cls = KernelShap if method == "kernel_shap" else Lime
    explainer = cls(f) if method == "kernel_shap" else Lime(f, interpretable_model=surrogate())
    explainer.interpretable_model = surrogate()
    want = explainer.attribute(torch.ones(1, n), baselines=torch.zeros(1, n), n_samples=40)
    got = attribute(model, TEXT, method=method, samples=40, seed=3)
    _close(got.scores[0], want[0].numpy(), tol=1e-4)  # a least-squares fit of float32 values


def test_weighted_least_squares_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    y = 2 * x[:, 0] - 3 * x[:, 1] + 0.5
    model = surrogate()
    weighted_least_squares(model, [(x, y, torch.tensor([1.0, 2.0, 3.0, 4.0]))], {})
    _close(model.representation().numpy(), [[2.0, -3.0]])
    _close(model.bias().numpy(), [0.5])


def test_exact_shapley_by_hand():
    # v(S) for players {0, 1}: v({})=0, v({0})=1, v({1})=2, v({0,1})=6 (bit j of the index = player j)
    phi = exact_shapley(np.array([[0.0], [1.0], [2.0], [6.0]]), 2)
    _close(phi[0], [(1 + (6 - 2)) / 2, (2 + (6 - 1)) / 2])
    # an additive 3-player game: phi = each player's own value
    vals = np.array([[sum(w for j, w in enumerate([1.0, -2.0, 5.0]) if m >> j & 1)] for m in range(8)])
    _close(exact_shapley(vals, 3)[0], [1.0, -2.0, 5.0])


def test_span_rows_one_pass_per_perturbation(models):
    """A teacher-forced span: row t equals occlusion of the prompt for span token t on its own prefix,
    and all rows cost one forward per perturbation."""
    from captum.attr import FeatureAblation

    model = models["llama"]
    hf, tok = model.hf, model.tokenizer
    span = " Paris. The"
    got = attribute(model, TEXT, method="occlusion", span=span)
    prompt, cont = tok.encode(TEXT), tok.encode(span)
    assert got.scores.shape == (len(cont), len(prompt))
    assert got.forwards == 1 + 2 + len(prompt)
    for t, tid in enumerate(cont):
        ids = torch.tensor([prompt + cont[:t]])
        fixed = torch.tensor([[0] * len(prompt) + [len(prompt)] * t])

        def f(i, tid=tid, ids=ids, fixed=fixed):
            i = torch.where(fixed == len(prompt), ids, i)  # the forced span tokens stay
            return torch.log_softmax(hf(i).logits[:, -1], -1)[:, tid]

        mask = torch.arange(ids.shape[1])[None].clamp(max=len(prompt))
        want = FeatureAblation(f).attribute(ids, baselines=tok.eos_token_id, feature_mask=mask)
        _close(got.scores[t], want[0, : len(prompt)].numpy())


def test_contrast_prob_logit_targets(models):
    model = models["gpt2"]
    hf, ids, top, _ = _plain(model)
    logits = hf(ids).logits[0, -1]
    a_id, b_id = model.tokenizer.encode(" Paris")[0], model.tokenizer.encode(" Lyon")[0]
    lp = torch.log_softmax(logits, -1)
    got = attribute(model, TEXT, target=" Paris", contrast=" Lyon", method="occlusion")
    _close(got.f_input, [(lp[a_id] - lp[b_id]).item()])
    assert "vs" in got.target
    _close(attribute(model, TEXT, score="prob", method="occlusion").f_input, [lp.exp()[top].item()])
    _close(attribute(model, TEXT, score="logit", method="occlusion").f_input, [logits[top].item()])
    at3 = attribute(model, TEXT, position=2, method="occlusion")  # the text's own token 3, read at 2
    _close(at3.f_input, [torch.log_softmax(hf(ids).logits[0, 2], -1)[ids[0, 3]].item()])
    assert np.allclose(at3.scores[0, 3:], 0)  # later tokens cannot change position 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="saliency"), "unknown method"),
        (dict(target=""), "not a token"),
        (dict(text=" "), "empty"),
        (dict(features=[(0, 500)]), "out of range"),
        (dict(method="occlusion", baseline="zeros"), "replaces segments with a token"),
        (dict(score="entropy"), "score must be"),
        (dict(steps=0), "steps"),
        (dict(span=" Paris", target=" x"), "either span"),
    ],
)
def test_bad_input(models, kwargs, message):
    kwargs = {"text": TEXT, **kwargs}
    with pytest.raises(InvalidInput, match=message) as err:
        attribute(models["llama"], **kwargs)
    assert "\n" not in str(err.value)


def test_cli_table_and_json(models):
    out = io.StringIO()
    a = attribute_cli(models["llama"], TEXT, method="occlusion", features="words", file=out)
    text = out.getvalue()
    assert "occlusion" in text and "delta" in text and len(text.splitlines()) == len(a.segments) + 2
    out = io.StringIO()
    attribute_cli(models["llama"], TEXT, method="occlusion", as_json=True, file=out)
    data = json.loads(out.getvalue())
    assert data["method"] == "occlusion" and len(data["scores"][0]) == len(data["segments"])
    assert math.isfinite(data["delta"][0])
