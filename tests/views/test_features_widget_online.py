"""lmpeek.show(db, model=m) and lmpeek.show(m, view="features", source=…): the Features tab in a notebook
with its online panel: the widget's requests (as widget messages, answered in-process by the app over the
model's Session) give the same activations and generations as FeatureService and lmpeek.features
computed here directly; one app per Session and arguments; bad arguments fail in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lmpeek
from lmpeek import features
from lmpeek.errors import LmpeekError
from lmpeek.features.service import FeatureService
from lmpeek.server.finite import clean
from lmpeek.views.widget import Widget, session_for, show
from tests.views.test_features_export import db_file, model  # noqa: F401 - fixtures, per module
from tests.views.test_widget import ask

TEXT = "The capital of France is Paris. def square(x): return x * x"
JSON = {"content-type": "application/json"}


def post(w: Widget, url: str, body: dict, rid: str = "1") -> tuple[int, dict]:
    msg = {"kind": "fetch", "id": rid, "method": "POST", "url": url, "headers": JSON}
    head, data, _ = ask(w, msg, json.dumps(body).encode())
    return head["status"], json.loads(data)


def test_a_database_with_a_model_ranks_and_generates(db_file, model):  # noqa: F811
    w = lmpeek.show(db_file, model=model)
    assert isinstance(w, Widget) and w.live and w._session is session_for(model)
    assert (w.view, w.feature, w.feature_source) == ("features", -1, "neurons:1")
    head, data, _ = ask(w, {"kind": "fetch", "id": "0", "method": "GET", "url": "/api/features"})
    listed = {s["id"]: s for s in json.loads(data)["sources"]}
    assert listed["neurons:1"]["online"] and listed["sae"]["online"] and listed["sae"]["database"]
    with FeatureService([db_file], model=model) as service:
        body = {"text": TEXT, "features": [4, 1], "rank": "quantile", "top": 3}
        status, got = post(w, "/api/features/sae/activations", body)
        assert status == 200 and got == clean(service.activations("sae", **body))
        gen = {"text": "Hello there<eot>", "features": [4], "max_new_tokens": 6, "seed": 1}
        status, out = post(w, "/api/features/sae/generate", gen, "2")
        assert status == 200 and out == clean(service.generate("sae", **gen))
    # the numbers themselves, from the features computed here on the generated ids
    ids = [t["id"] for t in out["tokens"]]
    direct = features.activations(model, w._app.state.features._entry("sae").spec, ids)
    assert out["values"] == [direct[:, 4].astype(np.float64).tolist()] and len(ids) > out["prompt_tokens"]


def test_a_feature_page_with_a_model(db_file, model):  # noqa: F811
    w = show(db_file, feature=3, model=model, source="sae")
    assert (w.view, w.feature, w.feature_source) == ("features", 3, "sae") and w.live
    head, data, _ = ask(w, {"kind": "fetch", "id": "1", "method": "GET", "url": "/api/features/sae/3"})
    assert head["status"] == 200 and json.loads(data)["feature"] == 3
    assert show(db_file, model=model)._app is w._app  # one app per Session and database


def test_a_model_alone_with_a_source(model):  # noqa: F811
    w = show(model, view="features", source="neurons:0")
    assert (w.view, w.feature, w.feature_source) == ("features", -1, "neurons:0") and w.live
    head, data, _ = ask(w, {"kind": "fetch", "id": "0", "method": "GET", "url": "/api/features"})
    (src,) = json.loads(data)["sources"]  # listed: the page opens on it
    assert (src["id"], src["online"], src["database"]) == ("neurons:0", True, None)
    status, got = post(w, "/api/features/neurons%3A0/activations", {"text": TEXT, "features": [7]})
    want = features.activations(model, "neurons:0", TEXT)[:, 7].astype(np.float64).tolist()
    assert status == 200 and got["values"] == [want] and got["quantiles"] is None
    status, out = post(w, "/api/features/neurons%3A0/generate", {"text": TEXT, "max_new_tokens": 4}, "2")
    assert status == 200 and len(out["tokens"]) == out["prompt_tokens"] + 4 or out["stopped"] == "eos"
    assert show(model, view="features", source="neurons:0")._app is w._app
    assert show(model, view="features", source="neurons:0", feature=5).feature == 5
    plain = show(model, view="features")  # no source named: the page offers every layer's neurons
    assert plain.feature_source == "" and plain.live


@pytest.mark.parametrize(
    ("kwargs", "error", "said"),
    [
        ({"source": "neurons:9"}, LmpeekError, "cannot compute the feature source 'neurons:9'"),
        ({"source": "neurons:0", "feature": 128}, LmpeekError, "feature 128 is not a feature of neurons:0"),
        ({"feature": 1}, ValueError, "feature= needs a source"),
    ],
)
def test_bad_arguments_are_one_line(model, kwargs, error, said):  # noqa: F811
    with pytest.raises(error, match=said) as err:
        show(model, view="features", **kwargs)
    assert "\n" not in str(err.value)
