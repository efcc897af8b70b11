"""The feature service against independent computations: listing against the database's manifest,
feature lists against FeatureDB.features, peak tokens and FTS5 search against the top examples read
one by one, quantiles against a bin-by-bin walk of each feature page's histogram and against the
corpus's real activations, online values against lmpeek.features.activations called directly,
rankings and top features against Python sorts; labels round trip (in the file, in a sidecar for a
read-only file, and in a format 1.0 file, whose search index is built in memory); every bad input is
a one-line LmpeekError with the status the server answers."""

from __future__ import annotations

import json
import shutil
import sqlite3
import warnings

import numpy as np
import pytest

from lmpeek import features
from lmpeek.capture.tokens import tokenize
from lmpeek.errors import InvalidInput, LmpeekError
from lmpeek.features import db as dbf
from lmpeek.features import service as svc
from lmpeek.features.service import FeatureService, quantiles
from lmpeek.features.sources import FeatureSourceWarning
from tests.features import feature_db as ref

TEXT = "The capital of France is Paris. def square(x): return x * x"
CHAT = (
    "Hello there, model<eot>Hi! How can I help you<eot>Tell me about Paris"  # no punctuation by a turn's end
)


@pytest.fixture(scope="module")
def built(tmp_path_factory, llama):
    return ref.build_db(tmp_path_factory.mktemp("svc"), llama)


@pytest.fixture(scope="module")
def service(built, llama):
    s = FeatureService([built[0]], model=llama)
    yield s
    s.close()


@pytest.fixture(scope="module")
def db(built):
    with dbf.FeatureDB(built[0]) as d:
        yield d


@pytest.fixture(scope="module")
def pages(db):
    return {name: {f: db.feature(f, name) for f in range(s["n_features"])}
            for name, s in ((s["name"], s) for s in db.sources)}  # fmt: skip


def status(err) -> int:
    return err.value.status_code


# --- listing -------------------------------------------------------------------------------------------


def test_sources_list_the_database(service, db, llama, built):
    out = service.sources()
    assert out["model"] == llama.name
    got = {s["id"]: s for s in out["sources"]}
    assert list(got) == ["neurons:1", "sae"]
    for s in db.sources:
        item = got[s["name"]]
        assert (item["kind"], item["n_features"], item["hooks"]) == (s["kind"], s["n_features"], s["hooks"])
        assert item["online"] is True and "message" not in item
        info = item["database"]
        assert info["path"] == str(built[0]) and info["format_version"] == dbf.FORMAT_VERSION == "1.1"
        assert info["tokens"] == db.manifest["tokens"] and info["model"] == "tiny:llama"
        assert info["documents"] == db.manifest["corpus"]["documents"]


def test_without_a_model_nothing_is_online(built):
    with FeatureService([built[0]]) as s:
        out = s.sources()
        assert out["model"] is None
        assert all(not i["online"] and "no model" in i["message"] for i in out["sources"])
        with pytest.raises(LmpeekError, match="no model") as err:
            s.activations("neurons:1", TEXT)
        assert status(err) == 409
        with pytest.raises(LmpeekError, match="no feature source 'neurons:0'") as err:
            s.activations("neurons:0", TEXT)  # neurons:L on request needs a model
        assert status(err) == 404
        assert s.feature_list("sae", limit=3)["total"] == 32  # the database works without one


def test_another_models_database_is_not_online(built, gpt2):
    with FeatureService([built[0]], model=gpt2) as s:
        item = s.sources()["sources"][0]
        assert not item["online"] and "built on tiny:llama" in item["message"]
        with pytest.raises(LmpeekError, match="built on tiny:llama") as err:
            s.activations("neurons:1", TEXT)
        assert status(err) == 409


def test_given_specs_and_neurons_on_request(built, llama):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureSourceWarning)  # a random SAE does not reconstruct
        s = FeatureService([built[0]], ["neurons:0", str(built[1])], model=llama)
    with s:
        listed = s.sources()["sources"]
        # the SAE given again is the database's own source (computed online with the folder given)
        assert [i["id"] for i in listed] == ["neurons:1", "sae", "neurons:0"]
        item = listed[2]
        assert item["database"] is None and item["online"] and item["n_features"] == llama.bound.d_mlp
        with pytest.raises(LmpeekError, match="has no feature database") as err:
            s.feature_list("neurons:0")
        assert status(err) == 409
    with FeatureService([built[0], built[0]]) as s:
        assert [i["id"] for i in s.sources()["sources"]] == [
            "neurons:1",
            "sae",
            "neurons:1@features",
            "sae@features",
        ]


def test_a_source_whose_files_are_gone_is_offline_saying_so(built, tmp_path, llama):
    moved = tmp_path / "sae-moved"
    shutil.copytree(built[1], moved)
    path = _copy(built, tmp_path, "moved.db")
    with sqlite3.connect(path) as con:
        con.execute("UPDATE sources SET spec = ? WHERE name = 'sae'", (str(moved),))
    with FeatureService([path], model=llama) as s:
        assert {i["id"]: i["online"] for i in s.sources()["sources"]} == {"neurons:1": True, "sae": True}
    shutil.rmtree(moved)
    with FeatureService([path], model=llama) as s:
        item = {i["id"]: i for i in s.sources()["sources"]}["sae"]
        assert not item["online"] and f"read from {moved}, which is not there any more" in item["message"]
    # a registered name (the shipped SAE) is no path and always there; neurons need no files
    assert svc._still_there("default") and svc._still_there("neurons:3")
    assert not svc._still_there(str(moved))


# --- the feature list, peak tokens, search -------------------------------------------------------------


@pytest.mark.parametrize("sort", dbf.SORTS)
@pytest.mark.parametrize("order", [None, "asc", "desc"])
def test_feature_list_pages_through_the_database_order(service, db, sort, order):
    desc = (sort != "feature") if order is None else order == "desc"
    want = db.features(sort=sort, source="sae", descending=desc)
    got = []
    for offset in range(0, 40, 7):
        page = service.feature_list("sae", sort=sort, order=order, offset=offset, limit=7)
        assert page["total"] == 32
        got += page["items"]
    assert [r["feature"] for r in got] == [r["feature"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert (g["density"], g["max"], g["count"]) == (w["density"], w["max"], w["count"])
        assert g["mean"] == pytest.approx(w["mean"])


def test_top_tokens_are_the_peaks_of_the_top_examples(service, db):
    for source in ("neurons:1", "sae"):
        items = service.feature_list(source, limit=1000)["items"]
        for item in items:
            want = list(dict.fromkeys(ref.peak_labels(db, source, item["feature"])))[:5]
            assert item["top_tokens"] == want
        assert sum(bool(i["top_tokens"]) for i in items) > 10


def test_token_search_finds_the_features_peaking_on_a_token(service, db):
    n = {s["name"]: s["n_features"] for s in db.sources}
    for source in ("neurons:1", "sae"):
        peaks = {f: ref.peak_labels(db, source, f) for f in range(n[source])}
        vocabulary = sorted(
            {w for labels in peaks.values() for lab in labels for w in ref.words(lab) if len(w) >= 3}
        )
        assert len(vocabulary) >= 3
        for word in vocabulary[:6]:
            want = {f for f, labels in peaks.items() if any(word in ref.words(lab) for lab in labels)}
            got = service.feature_list(source, q=f"token:{word}", limit=1000)
            assert {i["feature"] for i in got["items"]} == want and got["total"] == len(want), word
            # plain words search the tokens too (nothing is labelled yet)
            assert {i["feature"] for i in service.feature_list(source, q=word, limit=1000)["items"]} == want


def test_bad_search_syntax_is_a_400(service):
    for q in ['"unclosed', "AND", "nosuchcolumn:paris", "a NEAR("]:
        with pytest.raises(InvalidInput, match="not a valid query") as err:
            service.feature_list("sae", q=q)
        assert status(err) == 400 and "\n" not in str(err.value)


def test_bad_list_arguments(service):
    for kw, match in [({"sort": "loudness"}, "sort"), ({"order": "up"}, "order"), ({"offset": -1}, "offset"),
                      ({"limit": 0}, "limit"), ({"limit": 5000}, "limit")]:  # fmt: skip
        with pytest.raises(InvalidInput, match=match):
            service.feature_list("sae", **kw)
    with pytest.raises(LmpeekError, match="no feature source 'nope'") as err:
        service.feature_list("nope")
    assert status(err) == 404


# --- labels --------------------------------------------------------------------------------------------


def _copy(built, tmp_path, name="copy.db"):
    out = tmp_path / name
    shutil.copy(built[0], out)
    return out


def test_labels_round_trip_and_are_searchable(built, tmp_path, llama):
    path = _copy(built, tmp_path)
    s = FeatureService([path], model=llama)
    try:
        assert s.set_label("sae", 7, "Capital cities", "fires on Paris and Rome") == path
        assert s.set_label("neurons:1", 7, "something else") == path
        page = s.feature("sae", 7)
        assert (page["label"], page["notes"]) == ("Capital cities", "fires on Paris and Rome")
        found = s.feature_list("sae", q="capital", limit=100)["items"]
        assert 7 in [i["feature"] for i in found] and found[[i["feature"] for i in found].index(7)]["label"]
        assert [i["feature"] for i in s.feature_list("sae", q="label:capital")["items"]] == [7]
        assert [i["feature"] for i in s.feature_list("sae", q="notes:rome")["items"]] == [7]
        assert s.feature_list("sae", q="label:something")["total"] == 0  # the other source's label
        # best match first
        assert s.feature_list("sae", q="capital OR paris", sort="relevance", limit=100)["total"] >= 1
    finally:
        s.close()
    s = FeatureService([path])  # stored in the file
    try:
        assert s.feature("sae", 7)["label"] == "Capital cities"
        assert s.feature_list("sae", q="label:capital")["items"][0]["feature"] == 7
        s.set_label("sae", 7, "")  # both empty: removed
        assert s.feature("sae", 7)["label"] == "" and s.feature_list("sae", q="label:capital")["total"] == 0
    finally:
        s.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT source, feature, label FROM labels").fetchall() == [
            (0, 7, "something else")
        ]


def test_a_read_only_database_keeps_labels_in_a_sidecar(built, tmp_path, monkeypatch):
    path = _copy(built, tmp_path)
    before = path.read_bytes()
    monkeypatch.setattr(dbf, "_writable", lambda p: False)
    s = FeatureService([path])
    try:
        side = s.set_label("sae", 3, "Numbers", "digits")
        assert side == dbf.labels_sidecar(path) and side.is_file()
        assert json.loads(side.read_text())["labels"] == {
            "sae": {"3": {"label": "Numbers", "notes": "digits"}}
        }
        assert s.feature_list("sae", q="label:numbers")["items"][0]["feature"] == 3
    finally:
        s.close()
    assert path.read_bytes() == before  # the database itself untouched
    s = FeatureService([path])
    try:
        assert s.feature("sae", 3)["notes"] == "digits"
        assert [i["feature"] for i in s.feature_list("sae", q="numbers")["items"]][:1] == [3]
    finally:
        s.close()


def test_a_format_1_0_file_is_searched_in_memory(built, tmp_path, service):
    path = _copy(built, tmp_path, "old.db")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE search")
        conn.execute("DROP TABLE labels")
        conn.execute("UPDATE manifest SET value = '\"1.0\"' WHERE key = 'format_version'")
    s = FeatureService([path])
    try:
        for q in ("token:paris", "the", "x"):
            assert s.feature_list("sae", q=q, limit=100) == service.feature_list("sae", q=q, limit=100)
        s.set_label("sae", 2, "Old file label")
        assert s.feature_list("sae", q="label:old")["items"][0]["feature"] == 2
    finally:
        s.close()
    s = FeatureService([path])
    try:
        assert s.feature("sae", 2)["label"] == "Old file label"
        assert s.sources()["sources"][0]["database"]["format_version"] == "1.0"
    finally:
        s.close()


def test_feature_page_and_document(service, db):
    page = service.feature("neurons:1", 5)
    assert {k: v for k, v in page.items() if k not in ("label", "notes")} == db.feature(5, "neurons:1")
    ex = page["examples"]["top"][0]
    doc = service.document("neurons:1", 5, ex["doc"])
    ids = db.document(ex["doc"])
    assert doc["token_ids"] == ids.tolist() and doc["tokens"] == db.labels(ids)
    assert doc["tokens"][ex["pos"]] == ex["tokens"][ex["index"]]
    with sqlite3.connect(db.path) as conn:
        path, part = conn.execute("SELECT path, part FROM documents WHERE doc = ?", (ex["doc"],)).fetchone()
    assert (doc["path"], doc["part"]) == (path, part)
    for call, match in [(lambda: service.feature("sae", 32), "feature"),
                        (lambda: service.document("sae", 0, 10_000), "no document"),
                        (lambda: service.document("sae", 99, 0), "feature")]:  # fmt: skip
        with pytest.raises(InvalidInput, match=match):
            call()


# --- quantiles -----------------------------------------------------------------------------------------


def test_quantiles_walk_the_histogram(db, pages):
    for name in ("neurons:1", "sae"):
        dist = db.distribution(name)
        for f, page in pages[name].items():
            edges = [e for e in page["histogram"]["edges"] if e is not None]
            probes = [0.0, -1e-3, page["min"] or 0.0, page["max"] or 0.0, (page["max"] or 0.0) * 2]
            probes += edges + [e * 1.07 for e in edges] + [(page["max"] or 0.0) * x for x in (0.1, 0.5, 0.9)]
            got = quantiles(dist, f, probes)
            want = [ref.quantile(page, v) for v in probes]
            np.testing.assert_allclose(
                got, np.array(want, dtype=float), rtol=1e-9, atol=1e-12, err_msg=f"{name} {f}"
            )


def test_quantiles_match_the_corpus(db, pages, llama):
    """Against the real activations of every stored sequence (position 0 left out, as the builder does):
    the interpolated quantile is within the share of the histogram bin the value falls in."""
    docs = [db.document(d) for d in range(db.manifest["corpus"]["documents"])]
    for name in ("neurons:1", "sae"):
        src = features.load("neurons:1" if name == "neurons:1" else db.sources[1]["spec"], llama, check=False)
        A = np.concatenate([features.activations(llama, src, ids.tolist())[1:] for ids in docs])
        assert len(A) == db.manifest["tokens"]
        probe = features.activations(llama, src, TEXT)
        dist = db.distribution(name)
        for f in range(A.shape[1]):
            page = pages[name][f]
            v = np.unique(probe[:, f])
            q = quantiles(dist, f, v)
            empirical = (A[:, f][None, :] < v[:, None]).mean(1)
            b = np.clip(np.searchsorted(dbf.HIST_EDGES, v, side="right") - 1, 0, len(dbf.HIST_EDGES) - 2)
            first = (
                dbf.HIST_EDGES.tolist().index(page["histogram"]["edges"][0])
                if page["histogram"]["counts"]
                else 0
            )
            counts = np.zeros(len(dbf.HIST_EDGES) - 1)
            counts[first : first + len(page["histogram"]["counts"])] = page["histogram"]["counts"]
            share = np.where(v > 0, counts[b], page["count_neg"]) / page["n"]
            assert (np.abs(q - empirical) <= share + 3 / page["n"]).all(), (name, f)


# --- your text -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["neurons:1", "sae"])
@pytest.mark.parametrize("rank", ["activation", "quantile"])
def test_activations_against_a_direct_forward(service, db, pages, llama, source, rank):
    out = service.activations(source, TEXT, [3, 0, 3], rank=rank, top=4)
    tok = tokenize(llama.tokenizer, TEXT, llama.context_length)
    assert [t["id"] for t in out["tokens"]] == tok.token_ids.tolist()
    assert [t["label"] for t in out["tokens"]] == tok.tokens
    assert not any(t["template"] for t in out["tokens"])  # plain text, no BOS in the tiny tokenizer
    spec = source if source == "neurons:1" else db.sources[1]["spec"]
    direct = features.activations(llama, spec, TEXT)  # [T, F], its own forward
    assert out["features"] == [3, 0, 3]
    np.testing.assert_array_equal(out["values"], direct[:, [3, 0, 3]].T)
    p = pages[source]
    want_q = [[ref.quantile(p[f], float(v)) for v in direct[:, f]] for f in (3, 0, 3)]
    np.testing.assert_allclose(out["quantiles"], np.array(want_q, dtype=float), rtol=1e-9, atol=1e-12)
    by_q = rank == "quantile"
    want = ref.ranking(direct, 4, p, by_q)
    got = [[(r["feature"], r["value"], r["quantile"]) for r in row] for row in out["ranking"]]
    assert [[x[0] for x in row] for row in got] == [[x[0] for x in row] for row in want]
    for g_row, w_row in zip(got, want, strict=True):
        for g, w in zip(g_row, w_row, strict=True):
            assert g[1] == w[1] and g[2] == pytest.approx(w[2], rel=1e-9, abs=1e-12)
    top = ref.top_features(direct, list(range(1, len(direct))), p, by_q)  # position 0 left out
    assert [(t["feature"], t["tokens_active"]) for t in out["top_features"]] == [(t[0], t[2]) for t in top]
    np.testing.assert_allclose([t["max"] for t in out["top_features"]], [t[1] for t in top], rtol=1e-6)
    assert len(out["top_features"]) > 0


def test_ranking_by_quantile_differs_from_activation_somewhere(service):
    a = service.activations("neurons:1", TEXT, top=3)["ranking"]
    q = service.activations("neurons:1", TEXT, top=3, rank="quantile")["ranking"]
    assert a != q


def test_neurons_on_request_without_a_database(service, llama):
    out = service.activations("neurons:0", TEXT, [1], top=2)
    direct = features.activations(llama, "neurons:0", TEXT)
    np.testing.assert_array_equal(out["values"][0], direct[:, 1])
    assert out["quantiles"] is None and all(r["quantile"] is None for row in out["ranking"] for r in row)
    assert [[r["feature"] for r in row] for row in out["ranking"]] == [
        [x[0] for x in row] for row in ref.ranking(direct, 2, None, False)
    ]
    with pytest.raises(InvalidInput, match="no feature database") as err:
        service.activations("neurons:0", TEXT, rank="quantile")
    assert status(err) == 400
    with pytest.raises(LmpeekError, match="no feature source 'neurons:2'") as err:
        service.activations("neurons:2", TEXT)  # the tiny model has layers 0 and 1
    assert status(err) == 404


def test_chat_template_tokens_are_flagged(service, llama):
    out = service.activations("neurons:1", CHAT, top=3)
    turns = CHAT.split("<eot>")
    template = "".join(t["label"] for t in out["tokens"] if t["template"])
    own = "".join(t["label"] for t in out["tokens"] if not t["template"])
    assert own == "".join(turns)  # the user's and the assistant's words, every character, in order
    assert template == "<|user|><|end|><|assistant|><|end|><|user|><|end|><|assistant|>"  # tiny's template
    excluded = service.activations("neurons:1", CHAT, top=3, exclude_template=True)
    flags = [t["template"] for t in excluded["tokens"]]
    assert all(row == [] for row, f in zip(excluded["ranking"], flags, strict=True) if f)
    assert all(a == b for a, b, f in zip(excluded["ranking"], out["ranking"], flags, strict=True) if not f)
    values = features.activations(llama, "neurons:1", CHAT)
    rows = [t for t, f in enumerate(flags) if not f and t > 0]
    want = ref.top_features(values, rows, None, False)
    got = excluded["top_features"]
    assert [(t["feature"], t["tokens_active"]) for t in got] == [(t[0], t[2]) for t in want]


def test_bad_online_input(service, monkeypatch):
    for kw, match in [({"rank": "loudest"}, "rank"), ({"top": 0}, "top"), ({"top": 51}, "top"),
                      ({"features": [128]}, "feature"), ({"features": [-1]}, "feature"),
                      ({"features": list(range(33))}, "at most 32")]:  # fmt: skip
        with pytest.raises(InvalidInput, match=match):
            service.activations("neurons:1", TEXT, **kw)
    with pytest.raises(InvalidInput, match="empty"):
        service.activations("neurons:1", "   ")
    monkeypatch.setattr(svc, "MAX_TOKENS", 8)
    with pytest.raises(InvalidInput, match="shorten the text") as err:
        service.activations("neurons:1", TEXT)
    assert "\n" not in str(err.value)
