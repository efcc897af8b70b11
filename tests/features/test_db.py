"""The feature database's reader: the manifest, sorting, one feature's page, examples with token labels
(from the file or a tokenizer), the version guard (a newer major format is refused, naming the lmpeek
that wrote it), unfinished builds and files that are not feature databases."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

from lmpeek import __version__
from lmpeek.capture.tokens import token_labels_fn
from lmpeek.errors import InvalidInput, SourceNotFound
from lmpeek.features import db as dbf
from lmpeek.features.builder import build

TEXTS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def square(x):\n    return x * x\n\nprint(square(12))",
    "Grüße aus Köln: 日本語 text, emoji 🙂 and tabs\tand newlines\n\nend.",
]


@pytest.fixture(scope="module")
def path(tmp_path_factory, llama):
    out = tmp_path_factory.mktemp("db") / "f.db"
    build(llama, ["neurons:0", "neurons:1"], TEXTS, out, seq_len=16, batch_size=2, k=3, context=(4, 2))
    return out


def test_manifest_and_sources(path, llama):
    with dbf.FeatureDB(path) as db:
        m = db.manifest
        assert (m["format_version"], m["lmpeek_version"], m["status"]) == (
            dbf.FORMAT_VERSION,
            __version__,
            "complete",
        )
        assert (
            m["model"]["name"] == "tiny:llama" and m["model"]["fingerprint"]["id"] == llama.fingerprint["id"]
        )
        assert m["build"]["k"] == 3 and m["build"]["context"] == [4, 2] and m["build"]["seq_len"] == 16
        assert len(m["corpus"]["hash"]) == 32 and m["tokens"] == m["tokens_run"] - m["corpus"]["documents"]
        assert [(s["source"], s["name"], s["kind"], s["n_features"]) for s in db.sources] == [
            (0, "neurons:0", "neurons", 128),
            (1, "neurons:1", "neurons", 128),
        ]
        assert "neurons:0" in repr(db)


@pytest.mark.parametrize("sort", dbf.SORTS)
def test_features_sorted(path, sort):
    with dbf.FeatureDB(path) as db:
        rows = db.features(sort=sort, source="neurons:1")
        assert sorted(r["feature"] for r in rows) == list(range(128))
        values = [r[sort] for r in rows]
        assert values == sorted(values, reverse=sort != "feature")
        assert len(db.features(sort=sort, limit=5)) == 5
        for r in rows[:3]:  # the summary agrees with the feature's page
            page = db.feature(r["feature"], "neurons:1")
            assert (page["count"], page["max"], page["density"]) == (r["count"], r["max"], r["density"])
            assert page["mean"] == pytest.approx(r["mean"])


def test_feature_page_and_examples(path, llama):
    with dbf.FeatureDB(path) as db:
        best = db.features(sort="max", source=1, limit=1)[0]["feature"]
        page = db.feature(best, source=1)
        assert page["source"] == "neurons:1" and page["feature"] == best
        assert (
            sum(page["histogram"]["counts"])
            == page["count"]
            == sum(b["count"] for b in page["quantile_bins"])
        )
        assert len(page["histogram"]["edges"]) == len(page["histogram"]["counts"]) + 1
        assert page["std"] > 0 and len(page["correlated"]) == 5
        assert len(page["logits"]["top"]) == len(page["logits"]["bottom"]) == 10
        top = page["examples"]["top"]
        assert [e["rank"] for e in top] == [0, 1, 2] and top[0]["score"] == page["max"]
        assert top == db.examples(best, "top", 1)
        assert [e["score"] for e in top] == sorted((e["score"] for e in top), reverse=True)
        labels = token_labels_fn(llama.tokenizer)
        for e in top + page["examples"]["quantile"]:
            doc = db.document(e["doc"])
            assert e["token_ids"] == doc[e["start"] : e["start"] + len(e["acts"])].tolist()
            assert e["tokens"] == [labels(t) for t in e["token_ids"]]  # labels stored in the file
            assert e["acts"][e["index"]] == pytest.approx(e["score"])
            assert 1 <= e["start"] <= e["pos"] and len(e["acts"]) <= 4 + 1 + 2
    # the same labels from a tokenizer instead of the file
    with dbf.FeatureDB(path, tokenizer=llama.tokenizer) as db:
        assert db.examples(best, "top", 1) == top


def test_bad_requests(path):
    with dbf.FeatureDB(path) as db:
        for call, match in [
            (lambda: db.feature(128), "feature"),
            (lambda: db.feature(0, source="nope"), "no source"),
            (lambda: db.examples(0, "bottom"), "kind"),
            (lambda: db.features(sort="loudness"), "sort"),
            (lambda: db.document(10_000), "no document"),
        ]:
            with pytest.raises(InvalidInput, match=match) as err:
                call()
            assert "\n" not in str(err.value)


def _edit_manifest(src, dst, **values):
    shutil.copy(src, dst)
    with sqlite3.connect(dst) as conn:
        conn.executemany(
            "UPDATE manifest SET value = ? WHERE key = ?", [(json.dumps(v), k) for k, v in values.items()]
        )
    return dst


def test_newer_major_version_is_refused(path, tmp_path):
    newer = _edit_manifest(path, tmp_path / "newer.db", format_version="2.0", lmpeek_version="3.1.0")
    with pytest.raises(InvalidInput, match=r"format 2\.0, written by lmpeek 3\.1\.0") as err:
        dbf.FeatureDB(newer)
    assert "lmpeek 3.1.0 or newer" in str(err.value) and __version__ in str(err.value)
    minor = _edit_manifest(path, tmp_path / "minor.db", format_version="1.7")  # a newer minor still reads
    with dbf.FeatureDB(minor) as db:
        assert db.feature(0)["n"] > 0


def test_unfinished_and_foreign_files(path, tmp_path):
    unfinished = _edit_manifest(path, tmp_path / "u.db", status="building")
    with pytest.raises(InvalidInput, match="has not finished"):
        dbf.FeatureDB(unfinished)
    (tmp_path / "text.db").write_text("hello")
    with pytest.raises(InvalidInput, match="not an lmpeek feature database"):
        dbf.FeatureDB(tmp_path / "text.db")
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE data_table (key INTEGER PRIMARY KEY, examples TEXT)")
    with pytest.raises(InvalidInput, match="no manifest"):
        dbf.FeatureDB(tmp_path / "other.db")
    with pytest.raises(SourceNotFound, match="does not exist"):
        dbf.FeatureDB(tmp_path / "missing.db")


def test_blobs_are_little_endian():
    data = dbf.blob([1, -2, 300], "<i4")
    assert data == b"\x01\x00\x00\x00\xfe\xff\xff\xff\x2c\x01\x00\x00"
    np.testing.assert_array_equal(dbf.unblob(data, "<i4"), [1, -2, 300])
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = dbf.from_npy(dbf.npy(a))
    assert back.dtype == a.dtype and np.array_equal(back, a)


def test_windows_sparse_and_dense():
    assert dbf.window(4, dbf.blob([1, 3], "<u2"), dbf.blob([2.5, -1], "<f4")).tolist() == [0, 2.5, 0, -1]
    assert dbf.window(3, b"", dbf.blob([1, 2, 3], "<f4")).tolist() == [1, 2, 3]  # dense: no offsets
    assert dbf.window(3, b"", b"").tolist() == [0, 0, 0]  # all zero
