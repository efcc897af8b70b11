"""lmpeek.show(db, feature=…): a widget whose requests a database-only app answers in-process, opening
the Features tab on that feature; its answers equal FeatureDB's, bad arguments fail in one line."""

from __future__ import annotations

import json

import pytest

import lmpeek
from lmpeek.errors import LmpeekError
from lmpeek.features import FeatureDB
from lmpeek.views.widget import Widget, features_app_for, show
from tests.views.test_features_export import db_file, finite, model  # noqa: F401 - fixtures, per module
from tests.views.test_widget import ask


def test_show_opens_the_feature_and_the_app_answers(db_file):  # noqa: F811
    w = lmpeek.show(db_file, feature=7)
    assert isinstance(w, Widget) and w.live and not w.pack
    assert (w.view, w.feature, w.feature_source) == ("features", 7, "neurons:1")
    head, data, _ = ask(w, {"kind": "fetch", "id": "1", "method": "GET", "url": "/api/health"})
    assert json.loads(data)["features_only"] is True and json.loads(data)["model"] is None
    # the page's own URL: encodeURIComponent("neurons:1") (the in-process request decodes the path)
    head, data, _ = ask(
        w, {"kind": "fetch", "id": "2", "method": "GET", "url": "/api/features/neurons%3A1/7"}
    )
    assert head["status"] == 200
    with FeatureDB(db_file) as db:
        assert json.loads(data) == finite({**db.feature(7, "neurons:1"), **db.label(7, "neurons:1")})
    # labels save into the database, as in the app
    put = {"kind": "fetch", "id": "3", "method": "PUT", "url": "/api/features/sae/2/label",
           "headers": {"content-type": "application/json"}}  # fmt: skip
    head, _, _ = ask(w, put, json.dumps({"label": "from the widget"}).encode())
    assert head["status"] == 204
    with FeatureDB(db_file) as db:
        assert db.label(2, "sae")["label"] == "from the widget"


def test_one_app_per_database_and_other_ways_in(db_file):  # noqa: F811
    with FeatureDB(db_file) as db:
        w = show(db, feature=3, source="sae")  # a FeatureDB, a source by name
    assert (w.feature, w.feature_source) == (3, "sae")
    assert w._app is features_app_for(str(db_file)) is features_app_for(db_file)
    w = show(str(db_file), view="features")  # the tab without a page open
    assert (w.view, w.feature, w.feature_source) == ("features", -1, "neurons:1")


@pytest.mark.parametrize(
    ("kwargs", "error", "said"),
    [
        ({"feature": 128}, LmpeekError, "feature 128 is not a feature of neurons:1"),
        ({"feature": 1, "source": "x"}, LmpeekError, "no feature source 'x'"),
        ({"feature": 1, "model": "tiny:llama", "source": "nope:1"}, LmpeekError, "cannot compute"),
    ],
)
def test_bad_arguments_are_one_line(db_file, kwargs, error, said):  # noqa: F811
    with pytest.raises(error, match=said) as err:
        show(db_file, **kwargs)
    assert "\n" not in str(err.value)


def test_not_a_database(tmp_path):
    with pytest.raises(LmpeekError, match="does not exist"):
        show(tmp_path / "nope.db", feature=1)
    with pytest.raises(ValueError, match="feature pages need a database"):
        show(12, feature=1)
