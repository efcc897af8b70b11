"""tiny-activation-dashboard and Neuronpedia formats of a built feature database, checked against the
real tiny-dashboard 0.7.3 code: its SQLite reader (LazyReadDict, tiny_dashboard/utils.py) opens what
lmpeek writes and gives back the same values, and its offline dashboard renders it. Its package
__init__ imports nnsight (not installed, not needed), so utils.py is loaded as a standalone file, and
the dashboard module as part of a stand-in package with a placeholder nnsight module."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import math
import pathlib
import shutil
import sqlite3
import sys
import types

import numpy as np
import pytest

import lmpeek
from lmpeek.errors import InvalidInput
from lmpeek.features import FeatureDB, build
from lmpeek.features.formats import (
    NP_ACTIVATION_KEYS,
    NP_FEATURE_KEYS,
    export_td_cli,
    from_td,
    neuronpedia_json,
    to_td_dict,
    write_td_sqlite,
)

COMPARED = ("bin", "rank", "score", "index", "token_ids", "tokens", "acts")


def pick(example):
    return {k: example[k] for k in COMPARED}


def _td_location() -> pathlib.Path:
    spec = importlib.util.find_spec("tiny_dashboard")  # finds the package without running its __init__
    assert spec is not None, "tiny-dashboard is a dev dependency (pip install --no-deps tiny-dashboard)"
    return pathlib.Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def td_utils():
    spec = importlib.util.spec_from_file_location("_tiny_dashboard_utils", _td_location() / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def db_path(tmp_path_factory, llama):
    folder = tmp_path_factory.mktemp("formats")
    corpus = folder / "corpus"
    shutil.copytree(pathlib.Path(lmpeek.__file__).parent / "samples" / "texts", corpus)
    return build(llama, ["neurons:1"], [corpus], folder / "features.db", tokens=600, k=5, seq_len=48,
                 quantiles=3, per_bin=2, context=(6, 3))  # fmt: skip


@pytest.fixture(scope="module")
def tok(llama):
    return llama.tokenizer


def _fired(db):
    return [r["feature"] for r in db.features() if r["count"] > 0]


# --- the dict --------------------------------------------------------------------------------------------


def test_td_dict_holds_the_databases_top_examples(db_path, tok):
    td = to_td_dict(db_path, tokenizer=tok, negatives="keep")
    with FeatureDB(db_path) as db:
        fired = _fired(db)
        assert len(fired) > 10
        assert sorted(td) == fired  # features that never fired have no examples and are left out
        negative = 0
        for f in fired:
            want = db.examples(f, "top")
            assert len(td[f]) == len(want) > 0
            assert [m for m, _, _ in td[f]] == sorted((m for m, _, _ in td[f]), reverse=True)
            for (max_act, pieces, acts), e in zip(td[f], want, strict=True):
                assert type(max_act) is float and max_act == e["score"] == acts[e["index"]]
                assert all(type(p) is str for p in pieces) and all(type(a) is float for a in acts)
                assert acts == e["acts"] and len(pieces) == len(acts)
                # raw vocabulary pieces, as tokenizer.tokenize gives them: they spell the same text
                assert tok.convert_tokens_to_ids(pieces) == e["token_ids"]
                assert tok.convert_tokens_to_string(pieces) == tok.decode(e["token_ids"])
                negative += sum(a < 0 for a in acts)
        assert negative > 0  # SiLU neurons: the negatives options below are exercised
    assert any(p.startswith("Ġ") for ex in td.values() for _, pieces, _ in ex for p in pieces)

    clipped = to_td_dict(db_path, tokenizer=tok)  # the default: what tiny-dashboard can render
    nan = to_td_dict(db_path, tokenizer=tok, negatives="nan")
    for f, examples in td.items():
        for (m, p, a), (m2, p2, a2), (m3, p3, a3) in zip(examples, clipped[f], nan[f], strict=True):
            assert (m2, p2, m3, p3) == (m, p, m, p)
            assert a2 == [max(x, 0.0) for x in a]
            assert all((math.isnan(y) if x < 0 else y == x) for x, y in zip(a, a3, strict=True))

    few = to_td_dict(db_path, tokenizer=tok, features=[fired[0], fired[-1]], max_examples=2)
    assert list(few) == [fired[0], fired[-1]]
    assert few[fired[0]] == clipped[fired[0]][:2]


# --- the SQLite file, read by tiny-dashboard's own reader -------------------------------------------------


def test_tiny_dashboards_reader_opens_the_sqlite_file(db_path, tok, td_utils, tmp_path):
    td = to_td_dict(db_path, tokenizer=tok, negatives="keep")
    path = write_td_sqlite(db_path, tmp_path / "td.db", tokenizer=tok, negatives="keep")
    lazy = td_utils.LazyReadDict(str(path), "examples")  # what OfflineFeatureCentricDashboard.from_db does
    assert sorted(lazy.keys()) == sorted(td)
    for f in td:
        got = lazy[f]
        assert got == [[m, p, a] for m, p, a in td[f]]  # floats exactly (JSON keeps repr)
        assert all(type(x) is float for _, _, a in got for x in a)
    with pytest.raises(KeyError):
        lazy[10_000]
    with sqlite3.connect(path) as conn:
        cols = conn.execute("PRAGMA table_info(data_table)").fetchall()
    conn.close()
    assert [(c[1], c[2], c[5]) for c in cols] == [("key", "INTEGER", 1), ("examples", "TEXT", 0)]

    # a dict: NaN (no colour) survives, lists are sorted by max_act, string keys are features
    data = {"7": [(0.5, ["Ġa", "b"], [0.5, float("nan")]), (2.0, ["Ċ"], [2.0])], 3: []}
    path2 = write_td_sqlite(data, tmp_path / "d.db")
    lazy2 = td_utils.LazyReadDict(str(path2), "examples")
    assert sorted(lazy2.keys()) == [3, 7] and lazy2[3] == []
    (m0, p0, a0), (m1, p1, a1) = lazy2[7]
    assert (m0, p0, a0, m1, p1, a1[0]) == (2.0, ["Ċ"], [2.0], 0.5, ["Ġa", "b"], 0.5) and math.isnan(a1[1])

    # other table and column names, as from_db(table_name=, column_name=) takes them
    path3 = write_td_sqlite(db_path, tmp_path / "t.db", tokenizer=tok, table_name="t", column_name="ex")
    assert td_utils.LazyReadDict(str(path3), "ex", "t")[sorted(td)[0]] == [
        [m, p, [max(x, 0.0) for x in a]] for m, p, a in td[sorted(td)[0]]
    ]


def test_from_td_gives_back_the_databases_examples(db_path, tok, td_utils, tmp_path):
    td = to_td_dict(db_path, tokenizer=tok, negatives="keep")
    path = write_td_sqlite(td, tmp_path / "td.db")
    with FeatureDB(db_path) as db:
        fired = _fired(db)
        readers = [
            from_td(td, tok),
            from_td(path, tok),
            from_td(td_utils.LazyReadDict(str(path), "examples"), tok),
        ]
        for back in readers:
            assert back.ids == fired and len(back) == len(fired)
            for f in fired:
                want = db.examples(f, "top")
                got = back.examples(f)
                assert [pick(e) for e in got] == [pick(e) for e in want]
                assert all(e["doc"] is None and e["pos"] is None for e in got)
                assert back.examples(f, "quantile") == []
                assert back.feature(f)["max"] == db.feature(f)["max"]
            rows = back.features(sort="max")
            by_max = [r["feature"] for r in db.features(sort="max") if r["count"] > 0]
            assert [r["feature"] for r in rows] == by_max
            back.close()


def test_td_input_errors_are_one_line(db_path, tok, tmp_path):
    other = copy.deepcopy(tok)
    other.add_tokens(["<not-in-the-build>"])
    for call, message in [
        (lambda: to_td_dict(db_path), "pass the tokenizer"),
        (lambda: to_td_dict(db_path, tokenizer=other), "not the one"),
        (lambda: to_td_dict(db_path, tokenizer=tok, negatives="drop"), "negatives must be"),
        (lambda: from_td({1: [(1.0, ["Ġnotapiece"], [1.0])]}, tok).examples(1), "not in this tokenizer"),
        (lambda: from_td({1: [(1.0, ["a", "b"], [1.0])]}, tok).examples(1), "2 tokens but 1"),
        (lambda: from_td({1: [("x", ["a"], [1.0])]}, tok).examples(1), "max_act must be a number"),
        (lambda: from_td({"x": []}, tok), "integers"),
        (lambda: write_td_sqlite({}, tmp_path / "x.db", table_name="t; DROP"), "identifier"),
    ]:
        with pytest.raises(InvalidInput, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    path = write_td_sqlite({}, tmp_path / "e.db")
    with pytest.raises(InvalidInput, match="exists"):
        write_td_sqlite({}, path)
    write_td_sqlite({1: []}, path, overwrite=True)
    assert from_td(path, tok).ids == [1]
    with pytest.raises(InvalidInput, match="not a tiny-dashboard file"):
        from_td(db_path, tok)  # an lmpeek database is not one


# --- tiny-dashboard's offline dashboard renders the file ------------------------------------------------


@pytest.fixture
def td_dashboard(monkeypatch):
    """tiny_dashboard.feature_centric_dashboards, imported as part of a stand-in package (its __init__
    is not run) with a placeholder nnsight (only its LanguageModel type hint is used)."""
    pytest.importorskip("ipywidgets")
    name = "_tiny_dashboard_under_test"
    package = types.ModuleType(name)
    package.__path__ = [str(_td_location())]
    nnsight = types.ModuleType("nnsight")
    nnsight.LanguageModel = object
    monkeypatch.setitem(sys.modules, name, package)
    monkeypatch.setitem(sys.modules, "nnsight", nnsight)
    for sub in ("utils", "html_utils", "feature_centric_dashboards"):
        monkeypatch.delitem(sys.modules, f"{name}.{sub}", raising=False)
    module = importlib.import_module(f"{name}.feature_centric_dashboards")
    yield module
    for sub in ("utils", "html_utils", "feature_centric_dashboards"):
        sys.modules.pop(f"{name}.{sub}", None)


def test_tiny_dashboard_renders_the_exported_file(db_path, tok, td_dashboard, tmp_path):
    said = []
    path = export_td_cli(db_path, tmp_path / "td.db", echo=said.append)  # the model: from the manifest
    assert "features in tiny-dashboard's format" in said[0]
    dash = td_dashboard.OfflineFeatureCentricDashboard.from_db(str(path), tok, window_size=4)
    with FeatureDB(db_path) as db:
        fired = _fired(db)
        assert dash.available_features == fired
        for f in fired[:6]:
            html = dash.generate_html(f, use_absolute_max=True)
            for e in db.examples(f, "top"):
                assert f"Max Activation: {e['score']:.2f}" in html
                for t in e["token_ids"]:
                    assert f"Token {t}: " in html  # its tooltip looked the piece up in the vocabulary
    # negatives kept as they are: its renderer refuses them (why "clip" is the default)
    kept = write_td_sqlite(db_path, tmp_path / "kept.db", tokenizer=tok, negatives="keep")
    dash = td_dashboard.OfflineFeatureCentricDashboard.from_db(str(kept), tok)
    with pytest.raises(ValueError, match="non-negative"):
        for f in fired:
            dash.generate_html(f)


# --- Neuronpedia / SAEDashboard JSON ------------------------------------------------------------------------


def test_neuronpedia_json_holds_the_databases_values(db_path):
    with FeatureDB(db_path) as db:
        f = max(_fired(db), key=lambda i: db.feature(i)["count"])
        want = db.feature(f)
        got = neuronpedia_json(db, f)
        json.dumps(got, allow_nan=False)  # plain JSON
        assert list(got) == [*NP_FEATURE_KEYS, "maxActApprox"]
        assert got["feature_index"] == f and got["maxActApprox"] == want["max"]
        assert got["frac_nonzero"] == want["density"] == want["count"] / want["n"]
        lg = want["logits"]
        assert got["pos_str"] == [t["label"] for t in lg["top"]]
        assert got["pos_values"] == [t["value"] for t in lg["top"]]
        assert got["neg_str"] == [t["label"] for t in lg["bottom"]]
        assert got["neg_values"] == [t["value"] for t in lg["bottom"]]
        assert got["pos_values"] == sorted(got["pos_values"], reverse=True)
        assert got["pos_values"][0] > got["neg_values"][0]
        assert got["logits_hist_data_bar_heights"] == lg["histogram"]["counts"]
        centres = np.asarray(got["logits_hist_data_bar_values"])
        assert len(centres) == 50 and lg["histogram"]["lo"] < centres[0] < centres[-1] < lg["histogram"]["hi"]
        heights = got["freq_hist_data_bar_heights"]
        assert heights == want["histogram"]["counts"] and sum(heights) == want["count"]
        edges = want["histogram"]["edges"]
        centres = got["freq_hist_data_bar_values"]
        tops = [hi if np.isfinite(hi) else want["max"] for hi in edges[1:]]
        assert all(lo <= c <= hi for c, lo, hi in zip(centres, edges[:-1], tops, strict=True))
        assert got["correlated_features_indices"] == [c["feature"] for c in want["correlated"]]
        assert got["correlated_features_pearson"] == [c["pearson"] for c in want["correlated"]]
        assert got["correlated_features_l1"] == [c["cosine"] for c in want["correlated"]]
        assert got["n_prompts_total"] == db.manifest["corpus"]["documents"]
        assert got["n_tokens_in_prompt"] == 48

        top, quantile = want["examples"]["top"], want["examples"]["quantile"]
        assert len(got["activations"]) == len(top) + len(quantile) > len(top)
        bins = {b["bin"]: b for b in want["quantile_bins"]}
        for a, e in zip(got["activations"], top + quantile, strict=True):
            assert a["tokens"] == e["tokens"] and a["values"] == e["acts"]
            assert a["qualifying_token_index"] == e["index"] and a["values"][e["index"]] == e["score"]
            assert a["maxValue"] == max(e["acts"]) and a["minValue"] == min(e["acts"])
            assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"]
            if e in top:
                assert (a["bin_min"], a["bin_max"], a["bin_contains"]) == (-1.0, want["max"], -1.0)
            else:
                b = bins[e["bin"]]
                share = b["count"] / want["n"]
                assert (a["bin_min"], a["bin_max"], a["bin_contains"]) == (b["lo"], b["hi"], share)
                assert b["lo"] <= e["score"] <= b["hi"]
    strict = neuronpedia_json(db_path, f, strict=True)
    assert list(strict) == list(NP_FEATURE_KEYS)
    assert all(list(a) == list(NP_ACTIVATION_KEYS) for a in strict["activations"])
