"""The crosscoder page over HTTP: an app serving a tiny "chat" llama with a tiny "base" llama beside it
(same tokenizer, other weights) and a tiny random dictionary_learning crosscoder (normalised on these
models' values, with a BatchTopK threshold that cuts). Every number is checked against float64 numpy
on hook values traced independently (lmpeek.trace of each model); the base model loads with the chat
model's loader; a pair whose tokenizers differ is refused in one line; without a base model the page's
weights part still works and the model routes answer 409 naming --base-model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fastapi.testclient import TestClient

import lmpeek
from lmpeek.models.tiny import tiny_hf_model
from lmpeek.server.app import create_app
from tests.features.test_crosscoder import between_values, dl_tensors, ref_dl, write

HOOK = "blocks.1.hook_resid_post"
TEXT = "The capital of France is Paris. def square(x): return x * x"
F = 80


@pytest.fixture(scope="module")
def base():
    return lmpeek.load("tiny:llama")


@pytest.fixture(scope="module")
def chat():
    hf, tok = tiny_hf_model("llama", seed=1)
    return lmpeek.wrap(hf, tok, name="tiny-llama-chat")


def trace(model, text):
    return lmpeek.trace(model, text, keep=[HOOK]).tensors[HOOK]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, base, chat):
    t = dl_tensors(seed=4)
    t["decoder.weight"][1, :6] *= 0.02  # base-only features (r < 0.1)
    t["decoder.weight"][0, 6:10] *= 0.02  # chat-only (r > 0.9)
    xb, xc = trace(base, TEXT), trace(chat, TEXT)
    t["activation_mean"] = np.stack([xb.mean(0), xc.mean(0)]).astype(np.float32)
    t["activation_std"] = np.stack([xb.std(0), xc.std(0)]).astype(np.float32) + 0.1
    t["threshold"] = np.array(between_values(ref_dl(xb, xc, t), 0.3), np.float32)
    files = {"model.safetensors": t, "config.json": {"trainer": {"layer": 1}}}
    folder = write(tmp_path_factory.mktemp("xc") / "cc", files)
    return folder, t


def _app(tmp_path_factory, chat, folder, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random crosscoder: the reconstruction guard warns
        return create_app("chat", background=False, loader=kw.pop("loader", lambda _s: chat),
                          store_dir=tmp_path_factory.mktemp("s"), allowed_hosts=["testserver"],
                          feature_sources=[str(folder)], **kw)  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory, base, chat, weights):
    loaded = []

    def loader(source):  # the chat model and the base model load the same way
        loaded.append(source)
        return {"chat": chat, "base": base}[source]

    with TestClient(_app(tmp_path_factory, chat, weights[0], loader=loader, base_model="base")) as c:
        assert loaded == ["chat", "base"]
        yield c


@pytest.fixture(scope="module")
def no_base(tmp_path_factory, chat, weights):
    with TestClient(_app(tmp_path_factory, chat, weights[0])) as c:
        yield c


def detail(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    text = r.json()["detail"]
    assert isinstance(text, str) and text and "\n" not in text
    return text


def ref_rel(t):
    n = np.sqrt((t["decoder.weight"].astype(np.float64) ** 2).sum(-1))  # [2, F]
    return n, n[1] / (n[0] + n[1])


def test_sources_and_summary(client, weights):
    _, t = weights
    src = client.get("/api/features").json()["sources"]
    assert [(s["id"], s["kind"], s["online"], s["n_features"]) for s in src] == [
        ("cc", "crosscoder", True, F)
    ]
    out = client.get("/api/features/cc/crosscoder").json()
    norms, rel = ref_rel(t)
    np.testing.assert_allclose(out["relative_norm"], rel, rtol=1e-6)
    np.testing.assert_allclose(out["decoder_norms"]["base"], norms[0], rtol=1e-6)
    np.testing.assert_allclose(out["decoder_norms"]["chat"], norms[1], rtol=1e-6)
    names = [c["name"] for c in out["classes"]]
    assert names == ["base-only", "shared", "chat-only", "other", "dead"]
    want = np.where(rel < 0.1, 0, np.where(rel > 0.9, 2, np.where((rel >= 0.4) & (rel <= 0.6), 1, 3)))
    assert out["class_of"] == want.tolist()
    assert [c["count"] for c in out["classes"]] == [int((want == k).sum()) for k in range(5)]
    assert min(c["count"] for c in out["classes"][:4]) > 0
    assert out["histogram"]["counts"] == np.histogram(rel, bins=20, range=(0, 1))[0].tolist()
    assert (out["hook"], out["layout"], out["d_model"], out["online"]) == (
        HOOK,
        "dictionary_learning",
        64,
        True,
    )


def test_pair_against_float64(client, base, chat, weights):
    _, t = weights
    idx = [5, 0, 79, 17]
    out = client.post("/api/features/cc/pair", json={"text": TEXT, "features": idx}).json()
    ids = lmpeek.trace(chat, TEXT).token_ids
    assert [tok["id"] for tok in out["tokens"]] == ids.tolist() and out["features"] == idx
    xb, xc = trace(base, TEXT).astype(np.float64), trace(chat, TEXT).astype(np.float64)
    mu, sd = t["activation_mean"].astype(np.float64), t["activation_std"].astype(np.float64)
    s = float(t["target_rms"]) / np.sqrt((sd**2).sum(-1) + 1e-8)
    w = t["encoder.weight"].astype(np.float64)
    want_base = ((xb - mu[0]) * s[0]) @ w[0][:, idx]  # [T, K]
    want_chat = ((xc - mu[1]) * s[1]) @ w[1][:, idx]
    np.testing.assert_allclose(np.array(out["base"]), want_base.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(out["chat"]), want_chat.T, rtol=1e-5, atol=1e-5)
    bias = t["encoder.bias"].astype(np.float64)[idx]
    np.testing.assert_allclose(out["bias"], bias, rtol=1e-7)
    norms, rel = ref_rel(t)
    code = norms.sum(0)[idx]
    np.testing.assert_allclose(out["code"], code, rtol=1e-6)
    f = np.maximum(want_base + want_chat + bias, 0)
    act = np.where(f * code > float(t["threshold"]), f, 0) * code
    np.testing.assert_allclose(np.array(out["activation"]), act.T, rtol=1e-5, atol=1e-5)
    assert 0 < (act > 0).mean() < 1
    np.testing.assert_allclose(out["norms"]["base"], np.linalg.norm(xb, axis=1), rtol=1e-6)
    np.testing.assert_allclose(out["norms"]["chat"], np.linalg.norm(xc, axis=1), rtol=1e-6)
    np.testing.assert_allclose(out["relative_norm"], rel[idx], rtol=1e-6)
    assert out["threshold"] == pytest.approx(float(t["threshold"]))
    # the activations route ranks a crosscoder's features on both models too: the same activations
    online = client.post("/api/features/cc/activations", json={"text": TEXT, "features": idx}).json()
    np.testing.assert_allclose(np.array(online["values"]), np.array(out["activation"]), rtol=1e-6, atol=1e-6)
    assert online["top_features"] and online["ranking"][1]


def test_bad_input(client):
    assert client.post("/api/features/cc/pair", json={"text": " \n", "features": [1]}).status_code == 422
    assert (
        client.post("/api/features/cc/pair", json={"text": "hi", "features": list(range(9))}).status_code
        == 422
    )
    assert "feature" in detail(
        client.post("/api/features/cc/pair", json={"text": "hi", "features": [F]}), 400
    )
    assert "crosscoder" in detail(client.get("/api/features/neurons:1/crosscoder"), 400)
    assert "crosscoder" in detail(client.post("/api/features/neurons:1/pair", json={"text": "hi"}), 400)
    detail(client.get("/api/features/nope/crosscoder"), 404)
    # no features: the tokens and both models' norms only
    out = client.post("/api/features/cc/pair", json={"text": "hi there"}).json()
    assert out["activation"] == out["base"] == [] and len(out["norms"]["base"]) == len(out["tokens"]) > 1


def test_without_a_base_model(no_base):
    src = no_base.get("/api/features").json()["sources"][0]
    assert src["online"] is False and "--base-model" in src["message"]
    out = no_base.get("/api/features/cc/crosscoder").json()  # the weights alone
    assert out["online"] is False and len(out["relative_norm"]) == F
    assert "--base-model" in detail(
        no_base.post("/api/features/cc/pair", json={"text": "hi", "features": [1]}), 409
    )
    assert "--base-model" in detail(no_base.post("/api/features/cc/activations", json={"text": "hi"}), 409)


def test_weights_only_source(weights):
    # a source known by its folder alone (as a database names it): the page's weights part needs no model
    from lmpeek.features.service import Entry, FeatureService

    svc = FeatureService()
    folder, t = weights
    svc._entries["cc"] = Entry("cc", "cc", "crosscoder", F, [], spec=str(folder))
    out = svc.crosscoder("cc")
    np.testing.assert_allclose(out["relative_norm"], ref_rel(t)[1], rtol=1e-6)
    assert out["online"] is False
    with pytest.raises(Exception, match="--base-model"):
        svc.pair("cc", "hi", [1])


def test_tokenizers_must_match(tmp_path_factory, chat, weights):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(["zebra quartz jumping vexed wizard boxing " * 3], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    other = lmpeek.wrap(tiny_hf_model("llama", seed=2)[0], fast, name="other-tokenizer")
    with TestClient(_app(tmp_path_factory, chat, weights[0], base_model=other)) as c:
        health = c.get("/api/health").json()
        assert health["status"] == "error" and "\n" not in health["message"]
        assert "--base-model other-tokenizer cannot be paired with tiny-llama-chat" in health["message"]
        assert "tokenize" in detail(c.post("/api/features/cc/pair", json={"text": "hi"}), 400)


def test_cli_serve_base_model(monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    import lmpeek.server.app
    from lmpeek.cli import app

    got = []
    monkeypatch.setattr(lmpeek.server.app, "create_app", lambda model, **kw: got.append((model, kw)) or "APP")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    r = CliRunner().invoke(app, ["serve", "tiny:llama", "--base-model", "/no/such/base", "--port", "0"])
    assert r.exit_code == 2 and "No such file" in r.stderr and got == []
    r = CliRunner().invoke(app, ["serve", "tiny:llama", "--base-model", "tiny:llama", "--port", "0"])
    assert r.exit_code == 0 and got[0][0] == "tiny:llama" and got[0][1]["base_model"] == "tiny:llama"


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_the_crosscoder_routes(client, mode):
    """Schemathesis over the two routes with a crosscoder behind them: every answer below 500, strict
    JSON, a readable 4xx; half the positive cases name the crosscoder and small feature indices."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation.modes import GenerationMode

    from tests.server.test_fuzz import _send, check_answer

    spec = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    answered: dict[str, set[int]] = {}
    for result in spec.get_all_operations():
        operation = result.ok()
        if not operation.path.endswith(("/crosscoder", "/pair")):
            continue

        @settings(max_examples=20, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])  # fmt: skip
        @given(case=operation.as_strategy(GenerationMode(mode)))
        def run(case):
            if mode == "positive" and len(repr(case.path_parameters)) % 2:
                case.path_parameters["source"] = "cc"
                if isinstance(case.body, dict) and isinstance(case.body.get("features"), list):
                    case.body["features"] = [f % F for f in case.body["features"] if isinstance(f, int)]
            r = _send(client, case, [])
            check_answer(r)
            answered.setdefault(case.operation.label, set()).add(r.status_code)

        run()
    assert len(answered) == 2, answered
    if mode == "positive":
        assert all(200 in codes for codes in answered.values()), answered
