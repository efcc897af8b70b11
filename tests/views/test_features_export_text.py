"""A features export with texts (`--model M --text …`): the online panel's answers for each text are
recorded under the keys the page asks (POST body included, keys sorted as web/src/lib/transport.ts
postKey writes them: the expected keys are spelled out here, not made with lmpeek's post_key), each
answer equal to FeatureService.activations for that text (computed here by a service of its own), with
each token's bytes joining to the text; without texts nothing is added; --text needs --model."""

from __future__ import annotations

import json
import warnings

import pytest
from typer.testing import CliRunner

import lmpeek
from lmpeek.cli import app as cli
from lmpeek.errors import LmpeekError
from lmpeek.features.service import FeatureService
from lmpeek.views.features_export import export_html, record_pack
from tests.features.feature_db import build_db
from tests.views.test_export import block, body, unpack

CHOSEN = [5, 2]
TEXTS = ["Paris is the capital of France.\n\tdef f(x): 日本 🙂", "A second text<eot>with chat turns"]
PATH = "/api/features/neurons%3A1/activations"


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load("tiny:llama")


@pytest.fixture(scope="module")
def db_file(tmp_path_factory, model):
    return build_db(tmp_path_factory.mktemp("fxt"), model)[0]


def page_key(text: str, rank: str, exclude: bool) -> str:
    """The key of what FeatureOnline posts for a recorded text: its body with the keys sorted."""
    body = {"exclude_template": exclude, "features": CHOSEN, "rank": rank, "text": text, "top": 5}
    return f"POST {PATH} " + json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def test_recorded_answers_are_the_services(db_file, model):
    header, data = unpack(record_pack(db_file, CHOSEN, "neurons:1", model=model, texts=TEXTS))
    posted = sorted(k for k in header["responses"] if k.startswith("POST "))
    ranks, excludes = ("activation", "quantile"), (False, True)
    expected = sorted(page_key(t, r, x) for t in TEXTS for r in ranks for x in excludes)
    assert posted == expected
    listed = json.loads(body(header, data, "GET /api/features"))["sources"][0]
    assert listed["recorded"] == {"texts": TEXTS, "features": CHOSEN, "top": 5}
    with FeatureService([db_file], model=model) as service:
        for text in TEXTS:
            for rank in ("activation", "quantile"):
                for exclude in (False, True):
                    got = json.loads(body(header, data, page_key(text, rank, exclude)))
                    ref = service.activations(
                        "neurons:1", text, CHOSEN, rank=rank, top=5, exclude_template=exclude
                    )
                    assert got["values"] == ref["values"].tolist()  # float32 -> JSON -> the same numbers
                    assert got["quantiles"] == ref["quantiles"].tolist()
                    assert got["ranking"] == ref["ranking"] and got["top_features"] == ref["top_features"]
                    assert got["tokens"] == ref["tokens"] and got["features"] == CHOSEN
                    assert got["token_bytes"] == ref["token_bytes"]
            if "<eot>" not in text:  # the tokens' bytes are the text's (a chat text's are its template's)
                assert b"".join(bytes.fromhex(h) for h in got["token_bytes"]) == text.encode()


def test_without_texts_the_export_is_as_before(db_file, model):
    plain = export_html(db_file, CHOSEN, "neurons:1")
    assert plain == export_html(db_file, CHOSEN, "neurons:1", model=model)  # a model alone adds nothing
    header, _ = unpack(block(plain))
    assert not any(k.startswith("POST ") for k in header["responses"])
    with pytest.raises(LmpeekError, match="--text needs --model"):
        export_html(db_file, CHOSEN, "neurons:1", texts=["hi"])


def test_cli_writes_the_texts(db_file, tmp_path):
    out = tmp_path / "f.html"
    args = ["features", "export", str(db_file), "-f", "5", "-o", str(out), "-s", "neurons:1"]
    r = CliRunner().invoke(cli, [*args, "--model", "tiny:llama", "--text", "hello world", "--text", "bye"])
    assert r.exit_code == 0, r.output
    assert "2 texts" in r.output
    header, _ = unpack(block(out.read_text(encoding="utf-8")))
    assert sum(k.startswith("POST ") for k in header["responses"]) == 8
    r = CliRunner().invoke(cli, [*args, "--text", "hello"])
    assert r.exit_code != 0 and "--text needs --model" in r.output
