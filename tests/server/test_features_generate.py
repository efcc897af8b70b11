"""Generate a response and look at its features (issue 12, tiny-activation-dashboard parity): the
service's and the route's greedy generation against a plain `model.hf.generate(do_sample=False)` on
the tiny random model, their activations against `FeatureService.activations` on the resulting ids and
against lmpeek.features.activations with the brute-force rankings of tests/features/feature_db.py; a
seed repeats a sampled run; the prompt's template flags are the activations route's; every bad input
is a 4xx with a readable detail."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import lmpeek
from lmpeek import features
from lmpeek.capture.generate import _eos_ids
from lmpeek.capture.tokens import tokenize
from lmpeek.errors import InvalidInput
from lmpeek.features import db as dbf
from lmpeek.features import service as svc
from lmpeek.features.service import FeatureService
from lmpeek.server.app import create_app
from lmpeek.server.finite import clean
from tests.features import feature_db as ref

PROMPT = "The capital of France is"
CHAT = "Hello there, model<eot>Hi! How can I help you<eot>Tell me about Paris"


@pytest.fixture(scope="module")
def model():
    return lmpeek.load("tiny:llama")


@pytest.fixture(scope="module")
def path(tmp_path_factory, model):
    built, _ = ref.build_db(tmp_path_factory.mktemp("gen"), model)
    out = built.with_name("served.db")
    shutil.copy(built, out)
    return out


@pytest.fixture(scope="module")
def service(path, model):
    s = FeatureService([path], model=model)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(tmp_path_factory, path, model):
    app = create_app("tiny:llama", background=False, loader=lambda _s: model,
                     store_dir=tmp_path_factory.mktemp("s"), allowed_hosts=["testserver"],
                     features=[path])  # fmt: skip
    with TestClient(app) as c:
        yield c


def hf_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """The plain transformers greedy continuation, cut after the first end-of-sequence token (lmpeek stops
    there; transformers pads after it)."""
    ids = torch.tensor([prompt_ids])
    out = model.hf.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)[0, len(prompt_ids) :]
    new, eos = out.tolist(), set(_eos_ids(model))
    for i, t in enumerate(new):
        if t in eos:
            return new[: i + 1]
    return new


@pytest.mark.parametrize("text", [PROMPT, CHAT])
def test_greedy_generation_is_transformers_and_its_features_are_the_services(service, model, path, text):
    kw = {"features": [4, 1], "rank": "quantile", "top": 3}
    out = service.generate("sae", text, max_new_tokens=12, **kw)
    ids = [t["id"] for t in out["tokens"]]
    P = out["prompt_tokens"]
    prompt = tokenize(model.tokenizer, text, None)
    assert ids[:P] == prompt.token_ids.tolist()
    assert ids[P:] == hf_greedy(model, ids[:P], 12) and len(ids) > P
    assert out["stopped"] == ("eos" if ids[-1] in _eos_ids(model) else "length")
    assert out["response"] == model.tokenizer.decode(ids[P:], skip_special_tokens=True)
    # the same features as the activations of the resulting ids: one forward over the final ids
    on_ids = service.activations("sae", ids, **kw)
    for key in ("features", "ranking", "top_features"):
        assert out[key] == on_ids[key], key
    np.testing.assert_array_equal(out["values"], on_ids["values"])
    np.testing.assert_array_equal(out["quantiles"], on_ids["quantiles"])
    # … and against the features computed here directly, ranked by brute force
    with dbf.FeatureDB(path) as db:
        direct = features.activations(model, db.sources[1]["spec"], ids)
        pages = {f: db.feature(f, "sae") for f in range(32)}
    np.testing.assert_array_equal(out["values"], direct[:, [4, 1]].T)
    want = ref.ranking(direct, 3, pages, True)
    assert [[(r["feature"], r["value"]) for r in row] for row in out["ranking"]] == [
        [(x[0], x[1]) for x in row] for row in want
    ]
    # the prompt's tokens and template flags are those of the activations of the text alone; the
    # response's are the model's (an end-of-turn token it writes is the template's)
    alone = service.activations("sae", text, **kw)
    assert out["tokens"][:P] == alone["tokens"]
    special = set(model.tokenizer.all_special_ids)
    assert [t["template"] for t in out["tokens"][P:]] == [i in special for i in ids[P:]]
    # causal: the prompt's activations do not depend on the response
    np.testing.assert_allclose(out["values"][:, :P], alone["values"], rtol=1e-5, atol=1e-6)
    assert service.generate("sae", text, max_new_tokens=12, **kw)["tokens"] == out["tokens"]  # greedy repeats


def test_a_chat_prompt_opens_the_assistant_turn(service, model):
    out = service.generate("neurons:1", "Hello there, model<eot>", max_new_tokens=3)
    labels = [t["label"] for t in out["tokens"][: out["prompt_tokens"]]]
    assert labels[-1] == "<|assistant|>" and labels[0] == "<|user|>"  # the tiny model's template


def test_a_seed_repeats_a_sampled_run(service):
    kw = {"max_new_tokens": 10, "temperature": 1.5, "top_k": 50}
    a = service.generate("neurons:1", PROMPT, seed=7, **kw)
    b = service.generate("neurons:1", PROMPT, seed=a["seed"], **kw)
    assert a["seed"] == 7 and a["tokens"] == b["tokens"] and a["ranking"] == b["ranking"]
    drawn = service.generate("neurons:1", PROMPT, **kw)
    assert drawn["tokens"] == service.generate("neurons:1", PROMPT, seed=drawn["seed"], **kw)["tokens"]


def test_one_step_per_next_and_an_early_close(service, model):
    steps = service.generation("neurons:1", PROMPT, max_new_tokens=5)
    got = list(steps)  # yields each new token's id; the answer is the generator's return value
    ids = tokenize(model.tokenizer, PROMPT, None).token_ids.tolist()
    assert got == hf_greedy(model, ids, 5)
    steps = service.generation("neurons:1", PROMPT, max_new_tokens=50)
    assert next(steps) == got[0]
    steps.close()  # a cancelled job: nothing more runs, and the next request works
    assert service.generate("neurons:1", PROMPT, max_new_tokens=2)["prompt_tokens"] == len(ids)


def test_bad_generation_input_fails_before_generating(service, monkeypatch):
    for kw, match in [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"),
                      ({"top_p": 0.0}, "top_p"), ({"features": [32]}, "feature"),
                      ({"rank": "loud"}, "rank")]:  # fmt: skip
        with pytest.raises(InvalidInput, match=match):
            service.generation("sae", PROMPT, **kw)
    with pytest.raises(InvalidInput, match="empty"):
        service.generation("sae", "  ")
    monkeypatch.setattr(svc, "MAX_TOKENS", 12)
    with pytest.raises(InvalidInput, match="shorten the text") as err:
        service.generation("sae", PROMPT, max_new_tokens=11)
    assert "\n" not in str(err.value)


def test_the_route_answers_as_the_service(client, service):
    body = {"text": CHAT, "features": [4], "rank": "quantile", "top": 2, "max_new_tokens": 8, "seed": 3}
    r = client.post("/api/features/sae/generate", json=body)
    assert r.status_code == 200, r.text
    want = service.generate("sae", CHAT, **{k: v for k, v in body.items() if k != "text"})
    assert r.json() == clean(want)
    got = r.json()
    assert set(got) == {"tokens", "token_bytes", "features", "values", "quantiles", "ranking", "top_features",
                        "prompt_tokens", "response", "seed", "stopped"}  # fmt: skip


def detail(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    text = r.json()["detail"]
    assert isinstance(text, str) and text and "\n" not in text
    return text


def test_the_routes_bad_input(client, path, monkeypatch):
    url = "/api/features/sae/generate"
    assert "text" in detail(client.post(url, json={"text": ""}), 422)
    assert "empty" in detail(client.post(url, json={"text": "   "}), 400)
    for n in (0, 2049, True):
        assert "max_new_tokens" in detail(client.post(url, json={"text": PROMPT, "max_new_tokens": n}), 422)
    assert "temperature" in detail(client.post(url, json={"text": PROMPT, "temperature": -1}), 422)
    r = client.post("/api/features/neurons:0/generate", json={"text": PROMPT, "rank": "quantile"})
    assert "no feature database" in detail(r, 400)
    assert "no feature source" in detail(client.post("/api/features/nope/generate", json={"text": "a"}), 404)
    monkeypatch.setattr(svc, "MAX_TOKENS", 64)
    assert "shorten the text" in detail(client.post(url, json={"text": PROMPT, "max_new_tokens": 60}), 400)
    app = create_app(None, features=[path], allowed_hosts=["testserver"])
    with TestClient(app) as c:
        assert "no model" in detail(c.post(url, json={"text": PROMPT}), 409)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_the_generate_route(client, mode):
    """Schemathesis over the generate route (test_features_routes.py fuzzes the others): every answer
    below 500, strict JSON, a readable 4xx; half the positive cases name a real source, and every one
    generates at most 8 tokens (random lengths up to 2,048 would only make the test slow)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation.modes import GenerationMode

    from tests.server.test_fuzz import _send, check_answer

    spec = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    (operation,) = [
        r.ok() for r in spec.get_all_operations() if r.ok().path == "/api/features/{source}/generate"
    ]
    codes: set[int] = set()

    @settings(max_examples=25, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])  # fmt: skip
    @given(case=operation.as_strategy(GenerationMode(mode)))
    def run(case):
        if mode == "positive":
            if len(repr(case.path_parameters)) % 2:
                case.path_parameters["source"] = ("sae", "neurons:1")[len(repr(case.body)) % 2]
            if isinstance(case.body, dict) and isinstance(case.body.get("max_new_tokens"), int):
                case.body["max_new_tokens"] = case.body["max_new_tokens"] % 8 + 1
        r = _send(client, case, [])
        check_answer(r)
        codes.add(r.status_code)

    run()
    assert codes and (mode == "negative" or 200 in codes), codes  # positive: some really generated
