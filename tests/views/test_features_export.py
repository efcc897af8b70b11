"""The features export: a pack of a database-only app's answers about some features (their pages, the
list of just those in every sort), inlined into one HTML file; checked against FeatureDB read here
directly, the database's own list order, one-line errors, the size bound and the CLI."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import lmpeek
from lmpeek.cli import app as cli
from lmpeek.errors import LmpeekError
from lmpeek.features import FeatureDB, build
from lmpeek.views.export import page_html, request_key
from lmpeek.views.features_export import HINT, LIST_LIMIT, LIST_SORTS, export_html, list_answers, record_pack
from tests.features.feature_db import build_db
from tests.views.test_export import block, body, unpack

CHOSEN = [5, 2, 5, 9]  # a repeat is exported once, the order kept: the file opens on the first


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load("tiny:llama")


@pytest.fixture(scope="module")
def db_file(tmp_path_factory, model):
    """A database with two sources, neurons:1 and an SAE ("sae"); feature 2 of neurons:1 labelled."""
    path, _ = build_db(tmp_path_factory.mktemp("fx"), model)
    with FeatureDB(path) as db:
        db.set_label(2, "commas & <b>tags</b>", "notes\nover two lines", "neurons:1")
    return path


def finite(x):
    """A FeatureDB page as JSON carries it (server.finite.clean): inf and NaN as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


def answer(header: dict, data: bytes, path: str, params: dict | None = None):
    key = request_key("GET", path, params)
    assert header["responses"][key]["status"] == 200
    return json.loads(body(header, data, key))


def test_request_keys_are_the_pages():
    # web/src/lib/features.ts: encodeURIComponent(source) and query({sort, order, offset, limit})
    # (test/features-export.test.ts asks these very keys)
    assert request_key("GET", "/api/features/neurons%3A10/3") == "GET /api/features/neurons%3A10/3"
    params = {"sort": "density", "order": "desc", "offset": 0, "limit": 50}
    want = "GET /api/features/neurons%3A10/list?limit=50&offset=0&order=desc&sort=density"
    assert request_key("GET", "/api/features/neurons%3A10/list", params) == want
    from lmpeek.views.features_export import segment

    assert segment("neurons:10") == "neurons%3A10" and segment("a b/(c)!*'~") == "a%20b%2F(c)!*'~"


def test_the_pack_holds_exactly_the_recorded_answers(db_file):
    header, data = unpack(record_pack(db_file, CHOSEN))
    assert header["format"] == "lmpeek.export" and header["trace_id"] is None and header["hint"] == HINT
    assert header["open"] == {"source": "neurons:1", "feature": 5}
    base = "/api/features/neurons%3A1"
    lists = [
        request_key("GET", f"{base}/list", {"sort": s, "order": o, "offset": 0, "limit": LIST_LIMIT})
        for s in LIST_SORTS
        for o in ((None,) if s == "relevance" else ("desc", "asc"))
    ]
    pages = [f"GET {base}/{f}" for f in (5, 2, 9)]
    assert sorted(header["responses"]) == sorted(["GET /api/health", "GET /api/features", *pages, *lists])

    health = answer(header, data, "/api/health")
    assert health["model"] is None and health["features_only"] is True and health["status"] == "ready"
    sources = answer(header, data, "/api/features")
    assert [s["id"] for s in sources["sources"]] == ["neurons:1"]  # the SAE source is not exported
    src = sources["sources"][0]
    assert src["online"] is False and "message" not in src and src["database"]["path"] == db_file.name
    assert src["n_features"] == 128 and src["hooks"] == ["blocks.1.mlp.hook_post"]

    with FeatureDB(db_file) as db:
        for f in (5, 2, 9):
            want = finite({**db.feature(f, "neurons:1"), **db.label(f, "neurons:1")})
            assert answer(header, data, f"{base}/{f}") == want
        assert answer(header, data, f"{base}/2")["label"] == "commas & <b>tags</b>"
        for sort in LIST_SORTS:
            for order in (None,) if sort == "relevance" else ("desc", "asc"):
                got = answer(header, data, f"{base}/list",
                             {"sort": sort, "order": order, "offset": 0, "limit": LIST_LIMIT})  # fmt: skip
                # the database's own order of all its features, kept for the exported ones
                _, rows = db.query("neurons:1", "", sort, None if order is None else order == "desc", 0, 1000)
                keep = ("feature", "density", "max", "count", "mean", "label", "top_tokens")
                want = [finite({k: r[k] for k in keep}) for r in rows if r["feature"] in (5, 2, 9)]
                assert got == {"total": 3, "items": want}, (sort, order)


def test_another_source_by_name_and_the_list_in_pages(db_file):
    header, data = unpack(record_pack(db_file, [np.int64(3), 1], source="sae"))  # numpy's ints do
    assert header["open"] == {"source": "sae", "feature": 3}
    with FeatureDB(db_file) as db:
        assert answer(header, data, "/api/features/sae/1") == finite(
            {**db.feature(1, "sae"), **db.label(1, "sae")}
        )
    # more features than a page of the list holds: every page the page can ask
    header, data = unpack(record_pack(db_file, list(range(60)), source="neurons:1"))
    params = {"sort": "max", "order": "desc", "limit": LIST_LIMIT}
    first = answer(header, data, "/api/features/neurons%3A1/list", {**params, "offset": 0})
    second = answer(header, data, "/api/features/neurons%3A1/list", {**params, "offset": 50})
    assert (
        first["total"] == second["total"] == 60 and len(first["items"]) == 50 and len(second["items"]) == 10
    )
    with FeatureDB(db_file) as db:
        _, rows = db.query("neurons:1", "", "max", True, 0, 1000)
    want = [r["feature"] for r in rows if r["feature"] < 60]
    assert [r["feature"] for r in first["items"] + second["items"]] == want


def test_list_order_breaks_ties_by_feature_and_puts_null_lowest():
    rows = [
        {"feature": 4, "max": 1.0},
        {"feature": 1, "max": None},
        {"feature": 3, "max": 1.0},
        {"feature": 2, "max": 2.0},
    ]
    for r in rows:
        r.update(density=0.0, count=0, mean=0.0)
    got = list_answers(rows)
    assert [r["feature"] for r in got[("max", "desc", 0)]["items"]] == [2, 3, 4, 1]
    assert [r["feature"] for r in got[("max", "asc", 0)]["items"]] == [1, 3, 4, 2]
    assert [r["feature"] for r in got[("relevance", None, 0)]["items"]] == [1, 2, 3, 4]
    assert [r["feature"] for r in got[("density", "desc", 0)]["items"]] == [1, 2, 3, 4]  # all tied


def test_the_html_file_holds_the_pack_and_opens_on_features(db_file):
    with FeatureDB(db_file) as db:  # a FeatureDB does as well as its path
        page = export_html(db, CHOSEN)
    assert block(page) == record_pack(db_file, CHOSEN)  # the same answers, byte for byte
    assert 'view: "features"' in page and "<title>lmpeek · neurons:1 · feature #5 (+2 more)</title>" in page
    assert str(db_file.parent) not in page  # no local path in a file to share
    assert lmpeek.features.export_html(db_file, 9) == export_html(db_file, [9])


@pytest.mark.parametrize(
    ("features", "source", "said"),
    [
        ([128], None, "feature 128 is not a feature of neurons:1 (it has features 0..127)"),
        ([-1], None, "feature -1 is not a feature of neurons:1"),
        (["3"], None, "feature '3' is not a feature"),
        ([True], None, "feature True is not a feature"),
        ([], None, "name at least one feature"),
        ([1], "nope", "no feature source 'nope' in this database (sources: neurons:1, sae)"),
        ([40], "sae", "feature 40 is not a feature of sae (it has features 0..31)"),
    ],
)
def test_bad_features_and_sources_are_one_line_errors(db_file, features, source, said):
    with pytest.raises(LmpeekError, match="^" + re.escape(said)) as err:
        export_html(db_file, features, source)
    assert "\n" not in str(err.value)


def test_a_missing_or_foreign_database_is_one_line(tmp_path):
    with pytest.raises(LmpeekError, match="does not exist"):
        export_html(tmp_path / "nope.db", [1])
    (tmp_path / "x.db").write_text("not a database\n" * 10)
    with pytest.raises(LmpeekError, match="is not an lmpeek feature database") as err:
        export_html(tmp_path / "x.db", [1])
    assert "\n" not in str(err.value)


def test_page_html_still_refuses_unknown_views():
    with pytest.raises(LmpeekError, match="an export opens on explore or attention or features"):
        page_html(b"", "t", "generate")


def test_cli_writes_the_file(db_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "f.html"
    r = runner.invoke(cli, ["features", "export", str(db_file), "-f", "5", "--feature", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 feature pages" in r.output and f"wrote {out}" in r.output
    assert block(out.read_text(encoding="utf-8")) == record_pack(db_file, [5, 2])
    r = runner.invoke(cli, ["features", "export", str(db_file), "-f", "3", "-s", "sae", "-o", str(out)])
    assert r.exit_code == 0 and unpack(block(out.read_text()))[0]["open"] == {"source": "sae", "feature": 3}
    for args, said in (
        (["-f", "999"], "error: feature 999 is not a feature of neurons:1"),
        (["-f", "1", "-s", "x"], "error: no feature source 'x'"),
    ):
        r = runner.invoke(cli, ["features", "export", str(db_file), *args, "-o", str(tmp_path / "g.html")])
        assert r.exit_code == 2 and r.output.startswith(said) and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "g.html").exists()


def test_size_per_feature(model, tmp_path):
    """<= 50 kB a feature in the file (gzip + base85) with 20 top and 10 x 5 quantile examples of
    33-token windows (measured on the default model's neurons:10: ~42 kB; the module docstring)."""
    path = build(model, "neurons:1", ["demo"], tmp_path / "big.db", tokens=6000, quantiles=10, per_bin=5)
    with FeatureDB(path) as db:
        rows = [r for r in db.features(sort="count") if r["count"] >= 200][:10]
        assert len(rows) == 10
        feats = [r["feature"] for r in rows]
        for f in feats:
            ex = db.feature(f)["examples"]
            assert len(ex["top"]) == 20 and len(ex["quantile"]) == 50
            assert max(len(e["tokens"]) for e in ex["top"]) == 33  # 24 left, 8 right (fewer at an edge)

    def data_block(features) -> int:
        page = export_html(path, features)
        start = page.index('id="lmpeek-data"')
        return len(page[start : page.index("</script>", start)])

    one, ten = data_block(feats[:1]), data_block(feats)
    assert one <= 50_000 and (ten - one) / 9 <= 50_000, (one, ten)
