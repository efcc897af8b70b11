"""The Features routes over HTTP against the database read directly (FeatureDB) and the features computed
directly (lmpeek.features.activations), with the brute-force rankings of tests/features/feature_db.py;
labels round trip; every bad input is a 4xx with a readable detail; an app without a model
(`lmpeek features serve`) serves the databases, says `features_only` in its health and answers the
activations route with 409."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

import lmpeek
from lmpeek import features
from lmpeek.capture.tokens import tokenize
from lmpeek.features import db as dbf
from lmpeek.server.app import create_app
from lmpeek.server.finite import clean
from tests.features import feature_db as ref

TEXT = "The capital of France is Paris. def square(x): return x * x"


@pytest.fixture(scope="module")
def model():
    return lmpeek.load("tiny:llama")


@pytest.fixture(scope="module")
def path(tmp_path_factory, model):
    built, _ = ref.build_db(tmp_path_factory.mktemp("routes"), model)
    out = built.with_name("served.db")
    shutil.copy(built, out)  # labels are written into this one
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory, path, model):
    store = tmp_path_factory.mktemp("s")
    app = create_app("tiny:llama", background=False, loader=lambda _s: model, store_dir=store,
                     allowed_hosts=["testserver"], features=[path])  # fmt: skip
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def db(path):
    with dbf.FeatureDB(path) as d:
        yield d


def detail(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    text = r.json()["detail"]
    assert isinstance(text, str) and text and "\n" not in text
    return text


def test_sources(client, db, path):
    out = client.get("/api/features").json()
    assert out["model"] == "tiny:llama"
    assert [(s["id"], s["kind"], s["n_features"], s["online"]) for s in out["sources"]] == [
        ("neurons:1", "neurons", 128, True), ("sae", "saelens", 32, True)
    ]  # fmt: skip
    info = out["sources"][1]["database"]
    m = db.manifest
    assert info == {"path": str(path), "tokens": m["tokens"], "documents": m["corpus"]["documents"],
                    "model": "tiny:llama", "corpus": info["corpus"], "format_version": "1.1"}  # fmt: skip
    assert out["sources"][0]["hooks"] == ["blocks.1.mlp.hook_post"]


@pytest.mark.parametrize("sort", ["max", "density", "feature"])
def test_list_pages_in_the_database_order(client, db, sort):
    want = db.features(sort=sort, source="neurons:1", descending=True)
    got = []
    for offset in (0, 50, 100):
        r = client.get(
            "/api/features/neurons:1/list", params={"sort": sort, "order": "desc", "offset": offset}
        )
        page = r.json()
        assert page["total"] == 128
        got += page["items"]
    assert [i["feature"] for i in got] == [w["feature"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert (g["max"], g["density"], g["count"]) == pytest.approx((w["max"], w["density"], w["count"]))
        assert g["top_tokens"] == list(dict.fromkeys(ref.peak_labels(db, "neurons:1", g["feature"])))[:5]


def test_search_by_token(client, db):
    peaks = {f: ref.peak_labels(db, "sae", f) for f in range(32)}
    word = sorted({w for labels in peaks.values() for lab in labels for w in ref.words(lab) if len(w) >= 3})[
        0
    ]
    want = {f for f, labels in peaks.items() if any(word in ref.words(lab) for lab in labels)}
    out = client.get("/api/features/sae/list", params={"q": f"token:{word}", "limit": 1000}).json()
    assert {i["feature"] for i in out["items"]} == want and out["total"] == len(want) > 0


def test_feature_page_and_document(client, db):
    page = client.get("/api/features/sae/5").json()
    want = json.loads(json.dumps(clean({**db.feature(5, "sae"), "label": "", "notes": ""})))
    assert page == want
    ex = page["examples"]["top"][0]
    doc = client.get(f"/api/features/sae/5/document/{ex['doc']}").json()
    assert doc == db.document_info(ex["doc"])


def test_labels_round_trip(client):
    r = client.put("/api/features/sae/9/label", json={"label": "Arithmetic", "notes": "x * x"})
    assert r.status_code == 204 and r.content == b""
    page = client.get("/api/features/sae/9").json()
    assert (page["label"], page["notes"]) == ("Arithmetic", "x * x")
    found = client.get("/api/features/sae/list", params={"q": "label:arithmetic"}).json()
    assert [(i["feature"], i["label"]) for i in found["items"]] == [(9, "Arithmetic")]
    assert client.put("/api/features/sae/9/label", json={"label": ""}).status_code == 204
    assert client.get("/api/features/sae/list", params={"q": "label:arithmetic"}).json()["total"] == 0


@pytest.mark.parametrize("rank", ["activation", "quantile"])
def test_activations(client, db, model, rank):
    body = {"text": TEXT, "features": [4, 1], "rank": rank, "top": 3}
    out = client.post("/api/features/sae/activations", json=body).json()
    direct = features.activations(model, db.sources[1]["spec"], TEXT)
    assert out["features"] == [4, 1]
    assert out["values"] == direct[:, [4, 1]].T.astype(np.float64).tolist()
    pages = {f: db.feature(f, "sae") for f in range(32)}
    want_q = [[ref.quantile(pages[f], float(v)) for v in direct[:, f]] for f in (4, 1)]
    np.testing.assert_allclose(
        np.array(out["quantiles"], dtype=float), np.array(want_q, dtype=float), rtol=1e-9
    )
    want = ref.ranking(direct, 3, pages, rank == "quantile")
    assert [[(r["feature"], r["value"]) for r in row] for row in out["ranking"]] == [
        [(x[0], x[1]) for x in row] for row in want
    ]
    top = ref.top_features(direct, list(range(1, len(direct))), pages, rank == "quantile")
    assert [(t["feature"], t["tokens_active"]) for t in out["top_features"]] == [(t[0], t[2]) for t in top]
    assert [t["id"] for t in out["tokens"]] == tokenize(model.tokenizer, TEXT, None).token_ids.tolist()


def test_bad_input(client):
    assert "no feature source 'nope'" in detail(client.get("/api/features/nope/list"), 404)
    assert "feature" in detail(client.get("/api/features/sae/32"), 400)
    assert "sort" in detail(client.get("/api/features/sae/list", params={"sort": "loudness"}), 422)
    assert "not a valid query" in detail(client.get("/api/features/sae/list", params={"q": '"open'}), 400)
    assert "no feature database" in detail(client.get("/api/features/neurons:0/list"), 409)
    r = client.post("/api/features/neurons:0/activations", json={"text": TEXT, "rank": "quantile"})
    assert "no feature database" in detail(r, 400)
    assert "text" in detail(client.post("/api/features/sae/activations", json={"text": "a" * 50_001}), 422)
    assert "features" in detail(
        client.post("/api/features/sae/activations", json={"text": "a", "features": list(range(33))}), 422
    )
    assert "feature" in detail(
        client.post("/api/features/sae/activations", json={"text": "a", "features": [32]}), 400
    )
    assert "top" in detail(client.post("/api/features/sae/activations", json={"text": "a", "top": 0}), 422)
    assert "label" in detail(client.put("/api/features/sae/1/label", json={"label": "x" * 501}), 422)
    assert "no document" in detail(client.get("/api/features/sae/1/document/100000"), 400)
    assert "features_only" not in client.get("/api/health").json()


def test_neurons_of_any_layer_on_request(client, model):
    out = client.post("/api/features/neurons:0/activations", json={"text": TEXT, "features": [7]}).json()
    assert (
        out["values"][0] == features.activations(model, "neurons:0", TEXT)[:, 7].astype(np.float64).tolist()
    )
    assert out["quantiles"] is None


def test_without_a_model(path, tmp_path):
    app = create_app(None, features=[path], allowed_hosts=["testserver"])
    with TestClient(app) as c:
        health = c.get("/api/health").json()
        assert health["features_only"] is True and health["model"] is None and health["status"] == "ready"
        sources = c.get("/api/features").json()
        assert sources["model"] is None and not any(s["online"] for s in sources["sources"])
        assert c.get("/api/features/sae/list", params={"limit": 2}).json()["total"] == 32
        assert "no model" in detail(c.post("/api/features/sae/activations", json={"text": TEXT}), 409)
        paths = c.get("/openapi.json").json()["paths"]
        assert (
            "/api/features/{source}/list" in paths
            and "/api/trace" not in paths
            and "/api/samples" not in paths
        )
        assert c.post("/api/trace", json={"text": TEXT}).status_code in (404, 405)


# --- fuzzing the Features routes with a database behind them (the app-wide fuzz has none) ----------------


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_the_feature_routes(client, mode):
    """Schemathesis over the Features operations only: every answer below 500, strict JSON, a readable
    4xx; half the positive cases name a real source and small indices, so searches (random FTS5
    queries included), pages, labels and activations really run."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation.modes import GenerationMode

    from tests.server.test_fuzz import _send, check_answer

    spec = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    answered: dict[str, set[int]] = {}
    for result in spec.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/api/features"):
            continue
        if operation.path.endswith(("/crosscoder", "/pair")):
            continue  # the crosscoder page's routes: fuzzed with a crosscoder in test_crosscoder_routes.py
        if operation.path.endswith("/generate"):
            continue  # fuzzed with short generations in test_features_generate.py
        if mode == "negative" and not (operation.path_parameters or operation.query or operation.body):
            continue  # nothing to get wrong

        @settings(max_examples=25, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])  # fmt: skip
        @given(case=operation.as_strategy(GenerationMode(mode)))
        def run(case):
            params = case.path_parameters
            if mode == "positive" and params and len(repr(params)) % 2:
                params["source"] = ("sae", "neurons:1", "neurons:0")[len(str(params.get("source"))) % 3]
                for name, n in (("feature", 32), ("doc", 4)):
                    if isinstance(params.get(name), int):
                        params[name] %= n
            r = _send(client, case, [])
            if r.status_code == 204:  # a label stored: no body
                assert r.content == b"" and case.method.upper() == "PUT"
            else:
                check_answer(r)
            answered.setdefault(case.operation.label, set()).add(r.status_code)

        run()
    assert len(answered) == (6 if mode == "positive" else 5), answered
    if mode == "positive":
        assert all(codes & {200, 204} for codes in answered.values()), answered


# --- the commands ---------------------------------------------------------------------------------------


def test_features_serve_command(path, monkeypatch):
    """`lmpeek features serve DB` serves the databases without a model; a missing file is one line."""
    import uvicorn
    from typer.testing import CliRunner

    from lmpeek.cli import app as cli

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda web_app, **kw: served.append(web_app))
    r = CliRunner().invoke(cli, ["features", "serve", str(path), "--port", "0"])
    assert r.exit_code == 0, r.output
    assert "serving feature databases (neurons:1, sae)" in r.output
    with TestClient(served[0], base_url="http://127.0.0.1") as c:
        assert c.get("/api/health").json()["features_only"] is True
    r = CliRunner().invoke(cli, ["features", "serve", str(path.with_name("missing.db")), "--port", "0"])
    assert r.exit_code == 2 and "missing.db" in r.stderr and "does not exist" in r.stderr
    r = CliRunner().invoke(
        cli, ["serve", "tiny:llama", "--features", str(path.with_name("nope.db")), "--port", "0"]
    )
    assert r.exit_code == 2 and "nope.db" in r.stderr and "serving" not in r.output
    r = CliRunner().invoke(cli, ["serve", "tiny:llama", "--features-source", "/no/such/sae", "--port", "0"])
    assert r.exit_code == 2 and "/no/such/sae" in r.stderr and "serving" not in r.output


def test_browsing_a_database_imports_no_torch(path):
    import subprocess
    import sys

    code = (
        "import sys; from fastapi.testclient import TestClient; from lmpeek.server.app import create_app; "
        f"c = TestClient(create_app(None, features=[{str(path)!r}], allowed_hosts=['testserver'])); "
        "assert c.get('/api/features/sae/list', params={'q': 'token:the'}).status_code == 200; "
        "assert c.get('/api/features/sae/3').status_code == 200; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
