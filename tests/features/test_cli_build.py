"""`lmpeek features build` on a tiny model: the database equals the Python API's build."""

from __future__ import annotations

import pathlib
import shutil

from typer.testing import CliRunner

import lmpeek
from lmpeek.cli import app
from lmpeek.features import FeatureDB, build

runner = CliRunner()


def _corpus(tmp_path):
    """The bundled sample texts as a corpus folder."""
    corpus = tmp_path / "corpus"
    shutil.copytree(pathlib.Path(lmpeek.__file__).parent / "samples" / "texts", corpus)
    return corpus


def test_features_build_writes_the_database_the_api_builds(tmp_path):
    corpus = _corpus(tmp_path)
    out = tmp_path / "cli.db"
    args = ["features", "build", "-m", "tiny:llama", "-s", "neurons:1", "-c", str(corpus), "-o", str(out)]
    r = runner.invoke(app, [*args, "--tokens", "600", "--k", "5"])
    assert r.exit_code == 0, r.output
    assert "neurons:1 (128 features)" in r.output
    model = lmpeek.load("tiny:llama")
    want = build(model, ["neurons:1"], [corpus], tmp_path / "api.db", tokens=600, k=5)
    with FeatureDB(out) as got, FeatureDB(want) as ref:
        assert got.manifest["tokens_run"] == ref.manifest["tokens_run"] > 0
        for i in (0, 7, 127):
            assert got.examples(i, "top") == ref.examples(i, "top")
            assert got.feature(i)["max"] == ref.feature(i)["max"]
    # run again: the finished build is kept, not redone
    r = runner.invoke(app, [*args, "--tokens", "600", "--k", "5"])
    assert r.exit_code == 0, r.output


def test_features_build_bad_input_is_one_line(tmp_path):
    corpus = _corpus(tmp_path)
    for extra, message in [
        (["-s", "neurons:9", "-c", str(corpus)], "layers 0 to 1"),
        (["-s", "neurons:1", "-c", str(tmp_path / "nope")], "does not exist"),
    ]:
        r = runner.invoke(
            app, ["features", "build", "-m", "tiny:llama", *extra, "-o", str(tmp_path / "x.db")]
        )
        assert r.exit_code == 2 and message in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_features_export_td_writes_what_the_api_writes(tmp_path):
    import sqlite3

    from lmpeek.features import to_td_dict

    corpus = _corpus(tmp_path)
    db = tmp_path / "f.db"
    model = lmpeek.load("tiny:llama")
    build(model, ["neurons:1"], [corpus], db, tokens=400, k=4)
    r = runner.invoke(
        app, ["features", "export-td", str(db), "-o", str(tmp_path / "td.db"), "-m", "tiny:llama"]
    )
    assert r.exit_code == 0, r.output
    with sqlite3.connect(tmp_path / "td.db") as con:
        rows = dict(con.execute("SELECT key, examples FROM data_table"))
    with FeatureDB(db, tokenizer=model.tokenizer) as fdb:
        want = to_td_dict(fdb)
    assert sorted(rows) == sorted(want) and len(rows) > 10
    import json

    first = json.loads(rows[min(rows)])
    assert [e[1] for e in first] == [list(e[1]) for e in want[min(rows)]]
    r = runner.invoke(app, ["features", "export-td", str(db), "-o", str(tmp_path / "td.db")])
    assert r.exit_code == 2 and "exists" in r.stderr  # never overwritten without --overwrite


def test_features_build_on_the_demo_corpus(tmp_path):
    out = tmp_path / "demo.db"
    r = runner.invoke(app, ["features", "build", "-m", "tiny:llama", "-s", "neurons:0", "-c", "demo",
                            "-o", str(out), "--tokens", "300", "--k", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    with FeatureDB(out) as db:
        assert db.manifest["corpus"]["inputs"] == ["demo:python-docs-3.11.jsonl.gz"]
        assert db.manifest["tokens_run"] >= 300
